/**
 * Scenario 2, in-flight requests: slow requests (`GET /slow`) are in flight, half on keep-alive
 * connections and half on connections of their own, when the reload is signalled. Every one of them
 * must complete, on the old version, while the new version is already active.
 */
import { countLoad } from '../analysis.js';
import { type BenchContext, pick } from '../context.js';
import {
  exampleAppCopy,
  RELOAD_TIMEOUT_MS,
  reload,
  removeAppCopy,
  sleep,
  startBatonApp,
  startHttpLoad,
  stopProcess,
  withDeadline,
} from '../harness.js';
import { count, failures, ms, type ScenarioOutcome, versions } from '../report.js';

const WORKERS = 2;
/** Slow requests of each kind (keep-alive, new connection). */
const SLOW_EACH = 50;
/** How long after the requests were sent the reload is signalled (they are all in flight by then). */
const SIGNAL_AFTER_MS = 300;

/** Runs scenario 2. */
export async function inFlight(context: BenchContext): Promise<ScenarioOutcome> {
  context.progress('scenario 2, slow requests in flight across a reload');
  const slowMs = pick(context, 1500, 3000);
  const app = exampleAppCopy();
  app.setVersion('1.0.0');
  const { baton, httpPort } = await startBatonApp({ workers: WORKERS, app: { kind: 'example', dir: app } });
  try {
    const started = SLOW_EACH * 2;
    const load = startHttpLoad({
      port: httpPort,
      path: `/slow?ms=${slowMs}`,
      keepAliveLoops: SLOW_EACH,
      newConnectionLoops: SLOW_EACH,
      // One request per loop: each loop sends one slow request and stops.
      maxRequests: started,
      maxDurationMs: slowMs + RELOAD_TIMEOUT_MS,
      requestTimeoutMs: slowMs + RELOAD_TIMEOUT_MS,
    });
    const loadStartedAt = await load.started;
    await sleep(SIGNAL_AFTER_MS);
    app.setVersion('1.1.0');
    const times = await reload(baton, 2, { workers: WORKERS, awaitRetired: false });
    const result = await withDeadline(load.result, slowMs + RELOAD_TIMEOUT_MS, 'the slow requests to end');
    const lastAnswerAt = Math.max(
      ...Array.from(result.startedAt, (sentAt, index) => sentAt + (result.latencyMs[index] as number)),
    );
    const retired = await baton.waitForLogMsg('generation retired', { gen: 1 }, RELOAD_TIMEOUT_MS);
    const counts = countLoad(result);
    const data = {
      slowMs,
      started: result.count,
      completed: counts.ok,
      failures: counts.failures,
      versions: counts.versions,
      signalAfterSendMs: times.signalAt - loadStartedAt,
      signalToActiveMs: times.activeAt - times.signalAt,
      signalToLastAnswerMs: lastAnswerAt - times.signalAt,
      signalToRetiredMs: (retired.time as number) - times.signalAt,
      errors: result.errors,
    };
    return {
      id: 'inflight',
      title: '2. In-flight requests across a reload',
      data,
      sections: [
        {
          title: '',
          header: [
            'slow requests',
            'completed / started',
            'failed',
            'served by',
            'signal → new active',
            'signal → last slow answer',
            'signal → old retired',
          ],
          rows: [
            [
              `${SLOW_EACH} keep-alive + ${SLOW_EACH} new connection, ${ms(slowMs)} each`,
              `${count(counts.ok)} / ${count(result.count)}`,
              failures(counts.failures),
              versions(counts.versions),
              ms(data.signalToActiveMs),
              ms(data.signalToLastAnswerMs),
              ms(data.signalToRetiredMs),
            ],
          ],
          note:
            `The reload is signalled ${ms(data.signalAfterSendMs)} after the requests were sent; the new generation takes new requests while these finish on the old one, ` +
            'which retires as soon as the last of them is answered (the client and the master each read their own clock: a few ms either way).',
        },
      ],
      checks: [
        {
          what: `${count(counts.ok)} of ${count(result.count)} slow requests completed`,
          ok: counts.ok === started && result.count === started,
        },
        {
          what: 'every slow request was answered by the old version 1.0.0',
          ok: Object.keys(counts.versions).every((version) => version === '1.0.0'),
        },
        {
          what: 'the new generation was active before the slow requests ended',
          ok: data.signalToActiveMs < slowMs - SIGNAL_AFTER_MS,
        },
      ],
    };
  } finally {
    await stopProcess(baton);
    removeAppCopy(app);
  }
}
