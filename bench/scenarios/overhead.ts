/**
 * Scenario 6, what a reload costs beyond the app's own start-up: the minimal app is started alone
 * (spawn → it printed that it is listening, after `ready()`) and reloaded under baton (signal → new
 * generation active), in alternation, with no load. The difference is what baton itself adds: its
 * reaction to the signal, the spawn through `sh -c exec`, the ready message, the promotion.
 */
import { median } from '../analysis.js';
import { type BenchContext, pick } from '../context.js';
import { HELLO_APP, reload, startBatonApp, startPlainApp, stopProcess } from '../harness.js';
import { ms, ratio, type ScenarioOutcome } from '../report.js';

/** Runs scenario 6. */
export async function reloadOverhead(context: BenchContext): Promise<ScenarioOutcome> {
  const rounds = pick(context, 3, 10);
  context.progress(`scenario 6, reload overhead: ${rounds} app starts and ${rounds} reloads`);
  const appStartMs: number[] = [];
  const signalToActiveMs: number[] = [];
  const signalToStartingMs: number[] = [];
  const workerReadyMs: number[] = [];
  const { baton } = await startBatonApp({ workers: 1, app: { kind: 'hello' } });
  try {
    for (let round = 0; round < rounds; round++) {
      const app = await startPlainApp(HELLO_APP);
      appStartMs.push(app.startMs);
      await stopProcess(app.process);
      const times = await reload(baton, round + 2, { workers: 1 });
      signalToActiveMs.push(times.activeAt - times.signalAt);
      signalToStartingMs.push(times.startingAt - times.signalAt);
      workerReadyMs.push(...times.workerReadyMs);
    }
  } finally {
    await stopProcess(baton);
  }
  const app = median(appStartMs);
  const reloadMs = median(signalToActiveMs);
  const data = { rounds, appStartMs, signalToActiveMs, signalToStartingMs, workerReadyMs };
  return {
    id: 'overhead',
    title: '6. Overhead of a reload',
    data,
    sections: [
      {
        title: '',
        header: ['app alone: spawn → ready', 'baton: signal → new generation active', 'baton adds', 'ratio'],
        rows: [[ms(app), ms(reloadMs), ms(reloadMs - app), ratio(reloadMs / app)]],
        note:
          `Medians of ${rounds} alternating runs, 1 worker, no load. Inside the reload: signal → generation starting ${ms(median(signalToStartingMs))}, ` +
          `the master's spawn → worker ready ${ms(median(workerReadyMs))}.`,
      },
    ],
    checks: [],
  };
}
