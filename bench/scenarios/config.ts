/**
 * Scenario 8, config reload under load: the example app under `baton start --config baton.json` takes
 * keep-alive and new-connection load while it is reloaded in alternation with SIGUSR2 (the same
 * settings: the baseline) and with SIGHUP after the file changed (2 ↔ 3 workers, a new environment).
 * Reading, validating and applying the file should cost next to nothing beside the reload itself: the
 * table compares signal → new generation active for both, in the same run.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { countLoad, median } from '../analysis.js';
import { type BenchContext, pick } from '../context.js';
import {
  exampleAppCopy,
  NODE,
  type ReloadTimes,
  reload,
  removeAppCopy,
  sleep,
  startBatonApp,
  startHttpLoad,
  stopProcess,
} from '../harness.js';
import { count, failures, ms, ratio, type ScenarioOutcome } from '../report.js';

/** Client loops of each kind (keep-alive, new connection). */
const LOOPS_EACH = 4;
/** The pause between one reload's end (old generation retired) and the next signal. */
const GAP_MS = 300;
/** A bound on one reload, for the load's own time limit. */
const RELOAD_BOUND_MS = 15_000;

/** baton.json of the example app copy, with `workers` workers and STAGE=`stage` in their environment. */
function configText(workers: number, stage: string): string {
  return JSON.stringify({
    listen: ['http=tcp://127.0.0.1:0', 'game=tcp://127.0.0.1:0'],
    workers,
    command: [NODE, 'server.js'],
    env: { STAGE: stage },
  });
}

/** Runs scenario 9. */
export async function configReload(context: BenchContext): Promise<ScenarioOutcome> {
  const pairs = pick(context, 2, 5);
  context.progress(`scenario 9, config reload: ${pairs} SIGUSR2 and ${pairs} SIGHUP reloads under load`);
  const app = exampleAppCopy();
  const file = join(app.dir, 'baton.json');
  writeFileSync(file, configText(2, 'stage-0'));
  const { baton, httpPort } = await startBatonApp({
    workers: 2,
    app: { kind: 'example', dir: app },
    configFile: 'baton.json',
  });
  const usr2: ReloadTimes[] = [];
  const hup: ReloadTimes[] = [];
  const workersAsked: number[] = [];
  const workersStarted: number[] = [];
  try {
    const load = startHttpLoad({
      port: httpPort,
      path: '/',
      keepAliveLoops: LOOPS_EACH,
      newConnectionLoops: LOOPS_EACH,
      maxRequests: 2_000_000,
      maxDurationMs: 2 * pairs * RELOAD_BOUND_MS + 5000,
      requestTimeoutMs: 10_000,
    });
    await load.started;
    await sleep(500);
    let gen = 1;
    let workers = 2;
    for (let pair = 1; pair <= pairs; pair++) {
      usr2.push(await reload(baton, ++gen, { workers }));
      await sleep(GAP_MS);
      workers = workers === 2 ? 3 : 2;
      writeFileSync(file, configText(workers, `stage-${pair}`));
      const times = await reload(baton, ++gen, { workers, signal: 'SIGHUP' });
      hup.push(times);
      workersAsked.push(workers);
      const starting = baton.logs.find((entry) => entry.msg === 'generation starting' && entry.gen === gen);
      workersStarted.push(Number(starting?.workers));
      context.progress(`  config reload: pair ${pair}/${pairs} done`);
      await sleep(GAP_MS);
    }
    const result = await load.stop();
    const counts = countLoad(result);
    const activeMs = (times: ReloadTimes[]) => times.map((step) => step.activeAt - step.signalAt);
    const usr2Ms = median(activeMs(usr2));
    const hupMs = median(activeMs(hup));
    return {
      id: 'config',
      title: '9. Config reload under load',
      data: { pairs, counts, usr2Ms: activeMs(usr2), hupMs: activeMs(hup), workersAsked, workersStarted },
      sections: [
        {
          title: '',
          header: ['SIGUSR2: signal → new generation active', 'SIGHUP (file read again): the same', 'ratio'],
          rows: [[ms(usr2Ms), ms(hupMs), ratio(hupMs / usr2Ms)]],
          note:
            `Medians of ${pairs} reloads each, alternating, the SIGHUP ones switching between 2 and 3 workers with a new environment; ` +
            `${count(counts.requests)} requests (${LOOPS_EACH} keep-alive and ${LOOPS_EACH} new-connection loops), failed: ${failures(counts.failures)}.`,
        },
      ],
      checks: [
        {
          what: `0 failed in ${count(counts.requests)} requests across ${2 * pairs} reloads`,
          ok: counts.failed === 0,
        },
        {
          what: 'each SIGHUP generation started with the worker count its file asked for',
          ok: workersStarted.every((started, index) => started === workersAsked[index]),
        },
      ],
    };
  } finally {
    await stopProcess(baton);
    removeAppCopy(app);
  }
}
