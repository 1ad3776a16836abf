/**
 * Scenario 4, a broken release under load: the example app under baton takes keep-alive and
 * new-connection load while two bad releases are deployed in turn, one that crashes at start and one
 * that listens but never says ready. Every request must succeed, and the old version must go on
 * serving after each failed reload. Then the same app under PM2's cluster mode takes the same load
 * while the release that crashes at start is deployed with `pm2 reload`: what PM2 does with it; and
 * the same under a textbook `node:cluster` primary (bench/apps/cluster.js) reloaded by SIGUSR2.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { countLoad, type LoadCounts } from '../analysis.js';
import type { HttpLoadResult } from '../clients/protocol.js';
import { startClusterPeer } from '../cluster.js';
import { type BenchContext, pick } from '../context.js';
import {
  type AppDir,
  type BatonProcess,
  exampleAppCopy,
  freeFixedPort,
  processAlive,
  RELOAD_TIMEOUT_MS,
  removeAppCopy,
  sleep,
  startBatonApp,
  startHttpLoad,
  stopProcess,
} from '../harness.js';
import { PM2_VERSION, type Pm2Instance, Pm2Peer } from '../pm2.js';
import { count, failures, ms, type ScenarioOutcome, versions } from '../report.js';

const WORKERS = 2;
/** Client loops of each kind (keep-alive and new connection) running together. */
const LOOPS_EACH = 8;
const GOOD_VERSION = '1.0.0';

/** One bad release: how it is made from the good app, and what became of it. */
interface BrokenRelease {
  name: string;
  version: string;
  /** The good server.js turned into this bad one. */
  breakApp(source: string): string;
}

const RELEASES: BrokenRelease[] = [
  {
    name: 'crashes at start',
    version: '2.0.0-crash',
    breakApp: (source) => `throw new Error('broken release: cannot start');\n${source}`,
  },
  {
    name: 'listens, never says ready',
    version: '3.0.0-never-ready',
    breakApp: (source) => source.replace(/^ready\(\);$/m, '// ready() is never called'),
  },
];

/** When one bad release was signalled, declared failed, and gone (its last worker exited). */
interface Step {
  release: BrokenRelease;
  signalAt: number;
  failedAt: number;
  goneAt: number;
  reason: string;
}

/** What one bad release came to, as stored in latest.json. */
export interface BrokenReleaseOutcome {
  name: string;
  reason: string;
  /** Signal → the master's `reload failed`. */
  detectedMs: number;
  /** Signal → the bad generation's last worker exited. */
  goneMs: number;
  /** Requests sent after the bad generation was gone, all of which the old version should have served. */
  afterFailure: LoadCounts;
  /** Requests the bad release itself answered (while it was starting). */
  servedByBadRelease: number;
}

/** What PM2 did with the release that crashes at start, as stored in latest.json. */
export interface Pm2BrokenOutcome {
  name: string;
  /** `pm2 reload`'s exit code, and its spawn → return. */
  reloadExitCode: number | null;
  reloadMs: number;
  /** Of the old workers (their pids before the reload), how many still ran when `pm2 reload` returned. */
  oldWorkersLeft: number;
  /** The instances when `pm2 reload` returned, and at the end of the run. */
  instancesAfterReload: Pm2Instance[];
  instancesAtEnd: Pm2Instance[];
  total: LoadCounts;
  /** Requests sent from the reload's spawn until it returned, and after it (the good source back on disk). */
  duringReload: LoadCounts;
  afterReload: LoadCounts;
  /** The load client's error messages (the first of each kind). */
  errors: string[];
}

/** A supervisor that reloads on SIGUSR2 and says `reload failed` and `worker exited` in baton's words. */
interface Signalled {
  process: BatonProcess;
  httpPort: number;
}

/** Load and bad releases under one such supervisor: what the client recorded, and each release's steps. */
interface SignalledRun {
  result: HttpLoadResult;
  steps: Step[];
}

/** Runs scenario 4: baton with both bad releases, then PM2 and node:cluster with the one that crashes at start. */
export async function brokenRelease(context: BenchContext): Promise<ScenarioOutcome> {
  context.progress('scenario 4, broken release under load');
  const readyTimeoutMs = pick(context, 1000, 2000);
  const baton = await underSignalled(context, RELEASES, async (app) => {
    const { baton, httpPort } = await startBatonApp({
      workers: WORKERS,
      app: { kind: 'example', dir: app },
      extraArgs: ['--ready-timeout', `${readyTimeoutMs}ms`],
    });
    return { process: baton, httpPort };
  });
  context.progress(`scenario 4, broken release under load: PM2 ${PM2_VERSION}`);
  const pm2 = await underPm2(context);
  context.progress('scenario 4, broken release under load: node:cluster');
  // A textbook primary counts a worker as up once it listens: the release that never says ready is
  // a good one to it, so it gets the release that crashes at start only, as PM2 does.
  const cluster = await underSignalled(context, RELEASES.slice(0, 1), async (app) => {
    const { primary, httpPort } = await startClusterPeer(app, WORKERS);
    return { process: primary, httpPort };
  });
  return summarize(baton, pm2, cluster);
}

/**
 * The example app under the supervisor `start` starts, under load while each of `releases` is
 * deployed in turn and SIGUSR2 sent, the good source put back once the reload failed.
 */
async function underSignalled(
  context: BenchContext,
  releases: BrokenRelease[],
  start: (app: AppDir) => Promise<Signalled>,
): Promise<SignalledRun> {
  const holdMs = pick(context, 500, 1500);
  const app = exampleAppCopy();
  app.setVersion(GOOD_VERSION);
  const goodSource = readFileSync(join(app.dir, 'server.js'), 'utf8');
  const { process: supervisor, httpPort } = await start(app);
  try {
    const load = startHttpLoad({
      port: httpPort,
      path: '/',
      keepAliveLoops: LOOPS_EACH,
      newConnectionLoops: LOOPS_EACH,
      maxRequests: 2_000_000,
      maxDurationMs: holdMs + releases.length * (RELOAD_TIMEOUT_MS + holdMs),
      requestTimeoutMs: 10_000,
    });
    await load.started;
    await sleep(holdMs);
    const steps: Step[] = [];
    for (const [index, release] of releases.entries()) {
      deploy(app, release.breakApp(goodSource), release.version);
      const gen = index + 2;
      const signalAt = Date.now();
      supervisor.signal('SIGUSR2');
      const failure = await supervisor.waitForLog(
        (entry) => entry.gen === gen && String(entry.msg).startsWith('reload failed'),
        RELOAD_TIMEOUT_MS,
        `reload of generation ${gen} (${release.name}) to fail`,
      );
      deploy(app, goodSource, GOOD_VERSION);
      // The bad generation drains like any other (a worker that listened may still finish requests).
      let goneAt = failure.time as number;
      for (let worker = 0; worker < WORKERS; worker++) {
        const exited = await supervisor.waitForLog(
          (entry) => entry.msg === 'worker exited' && entry.gen === gen && entry.worker === worker,
          RELOAD_TIMEOUT_MS,
          `worker ${worker} of the failed generation ${gen} to exit`,
        );
        goneAt = Math.max(goneAt, exited.time as number);
      }
      steps.push({
        release,
        signalAt,
        failedAt: failure.time as number,
        goneAt,
        reason: String(failure.reason),
      });
      await sleep(holdMs);
    }
    return { result: await load.stop(), steps };
  } finally {
    await stopProcess(supervisor);
    removeAppCopy(app);
  }
}

/**
 * The example app under `pm2 start server.js -i 2 --wait-ready` (draining on SIGINT, PM2's stop
 * signal), the same load as baton's run; the release that crashes at start is deployed and `pm2
 * reload` run, and, as soon as it returns, the good source is put back on disk (as baton's run does
 * once the reload failed) for PM2's restarts to find. PM2's defaults otherwise (autorestart, kill_timeout).
 */
async function underPm2(context: BenchContext): Promise<Pm2BrokenOutcome> {
  const holdMs = pick(context, 500, 1500);
  const afterMs = pick(context, 2000, 4000);
  const release = RELEASES[0] as BrokenRelease;
  const app = exampleAppCopy();
  app.setVersion(GOOD_VERSION);
  const goodSource = readFileSync(join(app.dir, 'server.js'), 'utf8');
  const httpPort = await freeFixedPort();
  try {
    const peer = await Pm2Peer.start({
      script: join(app.dir, 'server.js'),
      cwd: app.dir,
      instances: WORKERS,
      ports: 2,
      env: { PORT: String(httpPort), GAME_PORT: String(await freeFixedPort()), BATON_DRAIN_SIGNAL: 'SIGINT' },
    });
    try {
      const load = startHttpLoad({
        port: httpPort,
        path: '/',
        keepAliveLoops: LOOPS_EACH,
        newConnectionLoops: LOOPS_EACH,
        maxRequests: 2_000_000,
        maxDurationMs: holdMs + RELOAD_TIMEOUT_MS + afterMs,
        requestTimeoutMs: 10_000,
      });
      await load.started;
      await sleep(holdMs);
      const oldPids = (await peer.list()).map((instance) => instance.pid);
      deploy(app, release.breakApp(goodSource), release.version);
      const reloaded = await peer.reload();
      deploy(app, goodSource, GOOD_VERSION);
      const instancesAfterReload = await peer.list();
      const oldWorkersLeft = oldPids.filter((pid) => processAlive(pid)).length;
      await sleep(afterMs);
      const instancesAtEnd = await peer.list();
      const result = await load.stop();
      return {
        name: release.name,
        reloadExitCode: reloaded.exitCode,
        reloadMs: reloaded.endedAt - reloaded.startedAt,
        oldWorkersLeft,
        instancesAfterReload,
        instancesAtEnd,
        total: countLoad(result),
        duringReload: countLoad(result, (t) => t >= reloaded.startedAt && t < reloaded.endedAt),
        afterReload: countLoad(result, (t) => t >= reloaded.endedAt),
        errors: result.errors,
      };
    } finally {
      await peer.stop();
    }
  } finally {
    removeAppCopy(app);
  }
}

/** `online ×2` or `errored ×1, online ×1`, with the restarts: what `pm2 jlist` said. */
function instancesSummary(instances: Pm2Instance[]): string {
  const byStatus = new Map<string, number>();
  for (const instance of instances) byStatus.set(instance.status, (byStatus.get(instance.status) ?? 0) + 1);
  const restarts = instances.reduce((sum, instance) => sum + instance.restarts, 0);
  return `${[...byStatus].map(([status, n]) => `${status} ×${n}`).join(', ') || 'none'}, ${count(restarts)} restarts`;
}

function deploy(app: AppDir, source: string, version: string): void {
  app.writeFile('server.js', source);
  app.setVersion(version);
}

/** Each bad release of a run: how soon it failed, and what the load got once it was gone. */
function outcomesOf({ result, steps }: SignalledRun): BrokenReleaseOutcome[] {
  const total = countLoad(result);
  return steps.map((step, index) => {
    const until = steps[index + 1]?.signalAt ?? Number.POSITIVE_INFINITY;
    return {
      name: step.release.name,
      reason: step.reason,
      detectedMs: step.failedAt - step.signalAt,
      goneMs: step.goneAt - step.signalAt,
      afterFailure: countLoad(result, (t) => t >= step.goneAt && t < until),
      servedByBadRelease: total.versions[step.release.version] ?? 0,
    };
  });
}

/** The columns of a bad release's row, for baton's and node:cluster's tables. */
const RELEASE_HEADER = [
  'bad release',
  'failure seen',
  'signal → reload failed',
  'answered by the bad release',
  'requests after it was gone',
  'served by',
];

const releaseRow = (outcome: BrokenReleaseOutcome) => [
  outcome.name,
  outcome.reason,
  ms(outcome.detectedMs),
  count(outcome.servedByBadRelease),
  `${count(outcome.afterFailure.requests)}, failed ${failures(outcome.afterFailure.failures)}`,
  versions(outcome.afterFailure.versions),
];

function summarize(baton: SignalledRun, pm2: Pm2BrokenOutcome, cluster: SignalledRun): ScenarioOutcome {
  const { result } = baton;
  const total = countLoad(result);
  const outcomes = outcomesOf(baton);
  const clusterTotal = countLoad(cluster.result);
  const clusterOutcomes = outcomesOf(cluster);
  const oldStillServes = (outcome: BrokenReleaseOutcome) =>
    outcome.afterFailure.failed === 0 &&
    outcome.afterFailure.ok > 0 &&
    Object.keys(outcome.afterFailure.versions).every((version) => version === GOOD_VERSION);
  return {
    id: 'broken',
    title: '4. Broken release under load',
    data: {
      total,
      releases: outcomes,
      errors: result.errors,
      pm2,
      cluster: { total: clusterTotal, releases: clusterOutcomes, errors: cluster.result.errors },
    },
    sections: [
      {
        title: '',
        header: RELEASE_HEADER,
        rows: outcomes.map(releaseRow),
        note:
          `${count(total.requests)} requests in all (${LOOPS_EACH} keep-alive and ${LOOPS_EACH} new-connection loops), failed: ${failures(total.failures)}; ` +
          `by version: ${versions(total.versions)}.`,
      },
      {
        title: `PM2 ${PM2_VERSION}, cluster mode, the same load: \`pm2 reload\` of the release that crashes at start`,
        header: [
          'bad release',
          '`pm2 reload` exit code',
          'signal → it returned',
          'old workers still running then',
          'requests until it returned',
          'requests after it returned',
          'served by, after it returned',
          'PM2 says, after it returned / at the end',
        ],
        rows: [
          [
            pm2.name,
            String(pm2.reloadExitCode),
            ms(pm2.reloadMs),
            `${pm2.oldWorkersLeft} of ${WORKERS}`,
            `${count(pm2.duringReload.requests)}, failed ${failures(pm2.duringReload.failures)}`,
            `${count(pm2.afterReload.requests)}, failed ${failures(pm2.afterReload.failures)}`,
            versions(pm2.afterReload.versions),
            `${instancesSummary(pm2.instancesAfterReload)} / ${instancesSummary(pm2.instancesAtEnd)}`,
          ],
        ],
        note:
          `${count(pm2.total.requests)} requests in all, failed: ${failures(pm2.total.failures)} (baton, same load: ${failures(total.failures)}). ` +
          `\`pm2 start server.js -i ${WORKERS} --wait-ready\` with the example app draining on SIGINT (PM2's stop signal); "signal" is the spawn of \`pm2 reload\`. ` +
          'As soon as it returned the good source went back on disk (as in baton\'s run once its reload failed), for PM2\'s automatic restarts to find; "served by" counts answers by version, whichever process gave them.',
      },
      {
        title:
          'node:cluster, a textbook primary, the same load: SIGUSR2 with the release that crashes at start',
        header: RELEASE_HEADER,
        rows: clusterOutcomes.map(releaseRow),
        note:
          `${count(clusterTotal.requests)} requests in all, failed: ${failures(clusterTotal.failures)} (baton, same load: ${failures(total.failures)}); by version: ${versions(clusterTotal.versions)}. ` +
          `bench/apps/cluster.js over the example app, ${WORKERS} workers: its SIGUSR2 forks new workers and waits until each listens; a new worker that exits first fails the reload (the others are killed) and the old workers serve on. ` +
          'It counts a worker as up once it listens, so the release that never says ready would be a good one to it: it gets the release that crashes at start only.',
      },
    ],
    checks: [
      {
        what: `0 failed in ${count(total.requests)} requests across ${outcomes.length} broken releases`,
        ok: total.failed === 0,
      },
      ...outcomes.map((outcome) => ({
        what: `${outcome.name}: the old version ${GOOD_VERSION} alone serves after the failure`,
        ok: oldStillServes(outcome),
      })),
    ],
  };
}
