/**
 * Scenario 1, reload under load: the example app under baton (2 workers) takes closed-loop HTTP load,
 * once with keep-alive connections and once with a new connection per request, while it is reloaded
 * N times, each time with a new version on disk. Counts every request and failure, compares latency
 * during reloads with latency outside them, and times how soon every new request gets the new version.
 */
import {
  buckets,
  countLoad,
  type LatencySummary,
  type LoadCounts,
  latencyDuringAndWithout,
  median,
  switchDelayMs,
} from '../analysis.js';
import type { ChartPanel } from '../chart.js';
import type { HttpLoadResult } from '../clients/protocol.js';
import { type BenchContext, pick } from '../context.js';
import {
  type BatonProcess,
  exampleAppCopy,
  type ReloadTimes,
  reload,
  removeAppCopy,
  sleep,
  startBatonApp,
  startHttpLoad,
  stopProcess,
} from '../harness.js';
import { count, failures, ms, ratio, type ScenarioOutcome } from '../report.js';

/** Workers per generation. */
const WORKERS = 2;
/** Client loops sending back to back. */
export const CONCURRENCY = 16;
/** Requests sent in the first moments (connections opening, JIT warming) count in no latency figure. */
const WARM_UP_MS = 300;
/** The pause between one reload's end (old generation retired) and the next signal. */
const GAP_MS = 300;
/** A bound on one reload, for the load's own time limit. */
const RELOAD_BOUND_MS = 15_000;
/** The charted reload: this much before the signal and after the old generation retired. */
const CHART_BEFORE_MS = 800;
const CHART_AFTER_MS = 800;
/** Chart bucket width. */
const BUCKET_MS = 100;

/** How connections are used. */
export type ConnectionMode = 'keep-alive' | 'new connection';

/** A run of the scenario: how clients connect, and whether the workers report their connections. */
interface RunKind {
  mode: ConnectionMode;
  /** bench/apps/plain.js with --no-preload instead of the example app: the master counts connections itself. */
  unreported: boolean;
}

/** The runs, in order; the last is the case issue 17 measured (Python, Go, any server written for systemd). */
const RUNS: RunKind[] = [
  { mode: 'keep-alive', unreported: false },
  { mode: 'new connection', unreported: false },
  { mode: 'new connection', unreported: true },
];

const runLabel = (run: RunKind) => (run.unreported ? `${run.mode}, workers that do not report` : run.mode);

/** One mode's run, as stored in latest.json. */
export interface ReloadRun {
  mode: ConnectionMode;
  label: string;
  reloads: number;
  counts: LoadCounts;
  duringReloads: LatencySummary;
  withoutReloads: LatencySummary;
  /** Per reload: signal → new generation active, → last request that got the old version, → old retired. */
  signalToActiveMs: number[];
  signalToNewVersionOnlyMs: number[];
  signalToRetiredMs: number[];
  errors: string[];
}

/** The version on disk before the `reloadIndex`-th reload (0: the first generation's). */
export const versionOf = (reloadIndex: number) => `1.${reloadIndex}.0`;

/** One load across reloads: what the client recorded, and when each reload's steps happened. */
export interface LoadAcrossReloads {
  result: HttpLoadResult;
  times: ReloadTimes[];
  loadStartedAt: number;
}

/**
 * Sends `mode` load to a running master's `httpPort` and reloads it `reloads` times, writing the next
 * version (`versionOf`) before each signal: a steady phase first, a tail after, `GAP_MS` between reloads.
 */
export async function loadAcrossReloads({
  context,
  mode,
  baton,
  httpPort,
  workers,
  reloads,
  setVersion,
}: {
  context: BenchContext;
  mode: ConnectionMode;
  baton: BatonProcess;
  httpPort: number;
  workers: number;
  reloads: number;
  setVersion(version: string): void;
}): Promise<LoadAcrossReloads> {
  const steadyMs = pick(context, 800, 2000);
  const tailMs = pick(context, 1000, 1500);
  const load = startHttpLoad({
    port: httpPort,
    path: '/',
    keepAliveLoops: mode === 'keep-alive' ? CONCURRENCY : 0,
    newConnectionLoops: mode === 'new connection' ? CONCURRENCY : 0,
    maxRequests: 2_000_000,
    maxDurationMs: steadyMs + reloads * RELOAD_BOUND_MS + tailMs,
    requestTimeoutMs: 10_000,
  });
  const loadStartedAt = await load.started;
  await sleep(steadyMs);
  const times: ReloadTimes[] = [];
  for (let index = 1; index <= reloads; index++) {
    setVersion(versionOf(index));
    times.push(await reload(baton, index + 1, { workers }));
    context.progress(`  ${mode}: reload ${index}/${reloads} done`);
    // The charted (last) reload gets a quiet lead-in, so that its window shows two versions only.
    await sleep(index === reloads - 1 ? GAP_MS + CHART_BEFORE_MS : GAP_MS);
  }
  await sleep(tailMs);
  return { result: await load.stop(), times, loadStartedAt };
}

/**
 * Per reload: how long after its signal the last request that got an older version was sent (each
 * reload's window ends at the next signal).
 */
export function newVersionOnlyMs(result: HttpLoadResult, times: ReloadTimes[]): number[] {
  return times.map((step, index) =>
    switchDelayMs(
      result,
      versionOf(index + 1),
      step.signalAt,
      times[index + 1]?.signalAt ?? Number.POSITIVE_INFINITY,
    ),
  );
}

async function runMode(context: BenchContext, kind: RunKind): Promise<{ run: ReloadRun; panel: ChartPanel }> {
  const { mode } = kind;
  const app = exampleAppCopy();
  app.setVersion(versionOf(0));
  const { baton, httpPort } = await startBatonApp({
    workers: WORKERS,
    app: kind.unreported ? { kind: 'plain', dir: app } : { kind: 'example', dir: app },
    extraArgs: kind.unreported ? ['--no-preload'] : [],
  });
  try {
    const { result, times, loadStartedAt } = await loadAcrossReloads({
      context,
      mode,
      baton,
      httpPort,
      workers: WORKERS,
      reloads: pick(context, 3, 10),
      setVersion: (version) => app.setVersion(version),
    });
    return analyse(kind, result, times, loadStartedAt);
  } finally {
    await stopProcess(baton);
    removeAppCopy(app);
  }
}

function analyse(
  kind: RunKind,
  result: HttpLoadResult,
  times: ReloadTimes[],
  loadStartedAt: number,
): { run: ReloadRun; panel: ChartPanel } {
  const windows = times.map((step) => ({ from: step.signalAt, to: step.retiredAt ?? step.activeAt }));
  const { during, without } = latencyDuringAndWithout(result, windows, loadStartedAt + WARM_UP_MS);
  const run: ReloadRun = {
    mode: kind.mode,
    label: runLabel(kind),
    reloads: times.length,
    counts: countLoad(result),
    duringReloads: during,
    withoutReloads: without,
    signalToActiveMs: times.map((step) => step.activeAt - step.signalAt),
    signalToNewVersionOnlyMs: newVersionOnlyMs(result, times),
    signalToRetiredMs: times.map((step) => (step.retiredAt ?? Number.NaN) - step.signalAt),
    errors: result.errors,
  };
  // The last reload: nothing follows it but the steady tail, so its window is not cut by the next signal.
  const charted = times.at(-1) as ReloadTimes;
  const origin = charted.signalAt;
  const endOf = charted.retiredAt ?? charted.activeAt;
  // Whole buckets only: a bucket cut by the window's edge would look like a drop in traffic.
  const chartFrom = origin - CHART_BEFORE_MS;
  const chartTo = origin + Math.floor((endOf + CHART_AFTER_MS - origin) / BUCKET_MS) * BUCKET_MS;
  const panel: ChartPanel = {
    title: `${run.label}: reload ${times.length} of ${times.length}; the whole run: ${count(run.counts.requests)} requests, ${run.counts.failed} failed`,
    buckets: buckets(result, { origin, from: chartFrom, to: chartTo, bucketMs: BUCKET_MS }),
    marks: [
      { t: 0, label: 'SIGUSR2' },
      { t: charted.activeAt - origin, label: 'new generation active' },
      ...(charted.retiredAt === undefined
        ? []
        : [{ t: charted.retiredAt - origin, label: 'old generation retired' }]),
    ],
    from: chartFrom - origin,
    to: chartTo - origin,
  };
  return { run, panel };
}

/** `182 ms (max 224 ms)`. */
export const medianAndMax = (values: number[]) => `${ms(median(values))} (max ${ms(Math.max(...values))})`;

/** Runs scenario 1 in both connection modes. */
export async function reloadUnderLoad(
  context: BenchContext,
): Promise<ScenarioOutcome & { panels: ChartPanel[] }> {
  const runs: ReloadRun[] = [];
  const panels: ChartPanel[] = [];
  for (const kind of RUNS) {
    context.progress(`scenario 1, reload under load: ${runLabel(kind)}`);
    const { run, panel } = await runMode(context, kind);
    runs.push(run);
    panels.push(panel);
  }
  const row = (label: string, cell: (run: ReloadRun) => string) => [label, ...runs.map(cell)];
  return {
    id: 'reload',
    title: '1. Reload under load',
    data: runs,
    panels,
    sections: [
      {
        title: '',
        header: ['', ...runs.map((run) => run.label)],
        rows: [
          row('reloads, each with a new version', (run) => count(run.reloads)),
          row('requests', (run) => count(run.counts.requests)),
          row('failed (by kind)', (run) => failures(run.counts.failures)),
          row(
            'p50 during reloads / without',
            (run) =>
              `${ms(run.duringReloads.p50)} / ${ms(run.withoutReloads.p50)} (${ratio(run.duringReloads.p50 / run.withoutReloads.p50)})`,
          ),
          row(
            'p99 during reloads / without',
            (run) =>
              `${ms(run.duringReloads.p99)} / ${ms(run.withoutReloads.p99)} (${ratio(run.duringReloads.p99 / run.withoutReloads.p99)})`,
          ),
          row('signal → new generation active', (run) => medianAndMax(run.signalToActiveMs)),
          row('signal → every new request on the new version', (run) =>
            medianAndMax(run.signalToNewVersionOnlyMs),
          ),
          row('signal → old generation retired', (run) => medianAndMax(run.signalToRetiredMs)),
        ],
        note: `${WORKERS} workers of the example app (the last column: bench/apps/plain.js, a plain node:http server on fd 3 that says ready with process.send('ready') and never reports its connections, under --no-preload), ${CONCURRENCY} client loops. "During reloads" is from each signal until the old generation retired; "without" is the rest of the same run. Times are medians over the reloads.`,
      },
    ],
    checks: runs.map((run) => ({
      what: `${run.label}: 0 failed in ${count(run.counts.requests)} requests over ${run.reloads} reloads`,
      ok: run.counts.failed === 0,
    })),
  };
}
