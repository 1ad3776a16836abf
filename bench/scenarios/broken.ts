/**
 * Scenario 4, a broken release under load: the example app under baton takes keep-alive and
 * new-connection load while two bad releases are deployed in turn, one that crashes at start and one
 * that listens but never says ready. Every request must succeed, and the old version must go on
 * serving after each failed reload.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { countLoad, type LoadCounts } from '../analysis.js';
import type { HttpLoadResult } from '../clients/protocol.js';
import { type BenchContext, pick } from '../context.js';
import {
  type AppDir,
  exampleAppCopy,
  RELOAD_TIMEOUT_MS,
  removeAppCopy,
  sleep,
  startBatonApp,
  startHttpLoad,
  stopProcess,
} from '../harness.js';
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

/** Runs scenario 4. */
export async function brokenRelease(context: BenchContext): Promise<ScenarioOutcome> {
  context.progress('scenario 4, broken release under load');
  const readyTimeoutMs = pick(context, 1000, 2000);
  const holdMs = pick(context, 500, 1500);
  const app = exampleAppCopy();
  app.setVersion(GOOD_VERSION);
  const goodSource = readFileSync(join(app.dir, 'server.js'), 'utf8');
  const { baton, httpPort } = await startBatonApp({
    workers: WORKERS,
    app: { kind: 'example', dir: app },
    extraArgs: ['--ready-timeout', `${readyTimeoutMs}ms`],
  });
  try {
    const load = startHttpLoad({
      port: httpPort,
      path: '/',
      keepAliveLoops: LOOPS_EACH,
      newConnectionLoops: LOOPS_EACH,
      maxRequests: 2_000_000,
      maxDurationMs: holdMs + RELEASES.length * (RELOAD_TIMEOUT_MS + holdMs),
      requestTimeoutMs: 10_000,
    });
    await load.started;
    await sleep(holdMs);
    const steps: Step[] = [];
    for (const [index, release] of RELEASES.entries()) {
      deploy(app, release.breakApp(goodSource), release.version);
      const gen = index + 2;
      const signalAt = Date.now();
      baton.signal('SIGUSR2');
      const failure = await baton.waitForLog(
        (entry) => entry.gen === gen && String(entry.msg).startsWith('reload failed'),
        RELOAD_TIMEOUT_MS,
        `reload of generation ${gen} (${release.name}) to fail`,
      );
      deploy(app, goodSource, GOOD_VERSION);
      // The bad generation drains like any other (a worker that listened may still finish requests).
      let goneAt = failure.time as number;
      for (let worker = 0; worker < WORKERS; worker++) {
        const exited = await baton.waitForLog(
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
    const result = await load.stop();
    return summarize(result, steps);
  } finally {
    await stopProcess(baton);
    removeAppCopy(app);
  }
}

function deploy(app: AppDir, source: string, version: string): void {
  app.writeFile('server.js', source);
  app.setVersion(version);
}

function summarize(result: HttpLoadResult, steps: Step[]): ScenarioOutcome {
  const total = countLoad(result);
  const outcomes: BrokenReleaseOutcome[] = steps.map((step, index) => {
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
  const oldStillServes = (outcome: BrokenReleaseOutcome) =>
    outcome.afterFailure.failed === 0 &&
    outcome.afterFailure.ok > 0 &&
    Object.keys(outcome.afterFailure.versions).every((version) => version === GOOD_VERSION);
  return {
    id: 'broken',
    title: '4. Broken release under load',
    data: { total, releases: outcomes, errors: result.errors },
    sections: [
      {
        title: '',
        header: [
          'bad release',
          'failure seen',
          'signal → reload failed',
          'answered by the bad release',
          'requests after it was gone',
          'served by',
        ],
        rows: outcomes.map((outcome) => [
          outcome.name,
          outcome.reason,
          ms(outcome.detectedMs),
          count(outcome.servedByBadRelease),
          `${count(outcome.afterFailure.requests)}, failed ${failures(outcome.afterFailure.failures)}`,
          versions(outcome.afterFailure.versions),
        ]),
        note:
          `${count(total.requests)} requests in all (${LOOPS_EACH} keep-alive and ${LOOPS_EACH} new-connection loops), failed: ${failures(total.failures)}; ` +
          `by version: ${versions(total.versions)}.`,
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
