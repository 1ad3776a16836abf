/**
 * Scenario 1, reload under load: the example app under baton (2 workers) takes closed-loop HTTP load,
 * once with keep-alive connections and once with a new connection per request, while it is reloaded
 * N times, each time with a new version on disk; then the same under PM2's cluster mode (`pm2 reload`)
 * and under a textbook `node:cluster` primary (bench/apps/cluster.js, a rolling reload on SIGUSR2).
 * Counts every request and failure, compares latency during reloads with latency outside them, times
 * how soon every new request gets the new version, and gives throughput, that time and the
 * supervisor's memory as ratios to the app alone, measured first in the same run.
 */
import { join } from 'node:path';
import { mayRaisePriority } from '../../supervisor/priority.js';
import {
  buckets,
  countLoad,
  type LatencySummary,
  type LoadCounts,
  latencyDuringAndWithout,
  median,
  switchDelayMs,
  throughput,
  throughputOutside,
} from '../analysis.js';
import type { ChartPanel } from '../chart.js';
import type { HttpLoadResult } from '../clients/protocol.js';
import { startClusterPeer } from '../cluster.js';
import { type BenchContext, pick } from '../context.js';
import {
  type AppDir,
  exampleAppCopy,
  freeFixedPort,
  NODE,
  procUsage,
  type ReloadTimes,
  reload,
  removeAppCopy,
  START_TIMEOUT_MS,
  sleep,
  startBatonApp,
  startHttpLoad,
  startListeningAlone,
  startUpAloneMs,
  stopProcess,
} from '../harness.js';
import { PM2_VERSION, Pm2Peer } from '../pm2.js';
import { count, failures, megabytes, ms, ratio, type ScenarioOutcome } from '../report.js';

/** Workers per generation. */
const WORKERS = 2;
/** The `--start-nice` of the runs whose new generation starts ahead of the serving one. */
const HIGHER_START_NICE = -10;
/** Client loops sending back to back. */
export const CONCURRENCY = 16;
/** Requests sent in the first moments (connections opening, JIT warming) count in no latency figure. */
const WARM_UP_MS = 300;
/** The runs this process can make: a negative `--start-nice` needs root or CAP_SYS_NICE. */
function runKinds(): RunKind[] {
  return RUNS.filter((kind) => (kind.startNice ?? 0) >= 0 || mayRaisePriority(kind.startNice ?? 0));
}

/** How many times a generation's worth of the app alone is started beside each run's load. */
const START_UP_SAMPLES = 3;
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

/** Who reloads the app: baton, PM2 in cluster mode (`pm2 reload`), or a textbook node:cluster primary (SIGUSR2). */
type Supervisor = 'baton' | 'pm2' | 'cluster';

/** A run of the scenario: how clients connect, who supervises, and whether the workers report their connections. */
interface RunKind {
  mode: ConnectionMode;
  supervisor: Supervisor;
  /** bench/apps/plain.js with --no-preload instead of the example app: the master counts connections itself. */
  unreported: boolean;
  /** `--start-nice`: the new generation starts at this CPU priority until it is ready. */
  startNice?: number;
}

/**
 * The runs, in order; the third is the case issue 17 measured (Python, Go, any server written for
 * systemd), the fourth the same with `--start-nice 10` (issue 17: with and without in the same run),
 * the next two the first two with the new generation at a higher priority, the next two the same
 * example app under PM2, the last two under a textbook node:cluster primary.
 */
const RUNS: RunKind[] = [
  { mode: 'keep-alive', supervisor: 'baton', unreported: false },
  { mode: 'new connection', supervisor: 'baton', unreported: false },
  { mode: 'new connection', supervisor: 'baton', unreported: true },
  { mode: 'new connection', supervisor: 'baton', unreported: true, startNice: 10 },
  // A higher priority for the new generation: root or CAP_SYS_NICE only (left out elsewhere, and said).
  { mode: 'keep-alive', supervisor: 'baton', unreported: false, startNice: HIGHER_START_NICE },
  { mode: 'new connection', supervisor: 'baton', unreported: false, startNice: HIGHER_START_NICE },
  { mode: 'keep-alive', supervisor: 'pm2', unreported: false },
  { mode: 'new connection', supervisor: 'pm2', unreported: false },
  { mode: 'keep-alive', supervisor: 'cluster', unreported: false },
  { mode: 'new connection', supervisor: 'cluster', unreported: false },
];

const runLabel = (run: RunKind) =>
  run.supervisor === 'pm2'
    ? `PM2 ${PM2_VERSION}, ${run.mode}`
    : run.supervisor === 'cluster'
      ? `node:cluster, ${run.mode}`
      : `${run.unreported ? `${run.mode}, workers that do not report` : run.mode}${run.startNice ? `, --start-nice ${run.startNice}` : ''}`;

/** One mode's run, as stored in latest.json. */
export interface ReloadRun {
  mode: ConnectionMode;
  supervisor: Supervisor;
  label: string;
  reloads: number;
  counts: LoadCounts;
  duringReloads: LatencySummary;
  withoutReloads: LatencySummary;
  /** Per reload: signal → new generation active, → last request that got the old version, → old retired. */
  signalToActiveMs: number[];
  signalToNewVersionOnlyMs: number[];
  signalToRetiredMs: number[];
  /** Requests per second answered over the whole run, reloads included (after the warm-up), and outside the reloads. */
  requestsPerSecond: number;
  requestsPerSecondWithout: number;
  /** The app alone's, under the same load just before this run. */
  aloneRequestsPerSecond: number;
  /** Spawn → listening of a generation's worth of the app alone, started beside the same load (AppAlone). */
  aloneStartUpUnderLoadMs: number[];
  /** The supervisor (baton's master, PM2's God daemon, the cluster primary): RSS before the load, and its peak (VmHWM) at the end. */
  supervisorRssIdleBytes: number;
  supervisorPeakRssBytes: number;
  errors: string[];
}

/** The version on disk before the `reloadIndex`-th reload (0: the first generation's). */
export const versionOf = (reloadIndex: number) => `1.${reloadIndex}.0`;

/** One load across reloads: what the client recorded, and when each reload's steps happened. */
export interface LoadAcrossReloads {
  result: HttpLoadResult;
  times: ReloadTimes[];
  loadStartedAt: number;
  /** When the load was asked to stop (epoch ms): the end of its throughput window. */
  loadStoppedAt: number;
}

/**
 * Sends `mode` load to a running server's `httpPort` and reloads it `reloads` times with `reloadOnce`,
 * writing the next version (`versionOf`) before each: a steady phase first, a tail after, `GAP_MS`
 * between reloads. `label` names the run in the progress lines.
 */
export async function loadAcrossReloads({
  context,
  label,
  mode,
  httpPort,
  reloads,
  reloadOnce,
  setVersion,
}: {
  context: BenchContext;
  label: string;
  mode: ConnectionMode;
  httpPort: number;
  reloads: number;
  /** Reloads to generation `gen` (2 for the first reload) and says when its steps happened. */
  reloadOnce(gen: number): Promise<ReloadTimes>;
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
    times.push(await reloadOnce(index + 1));
    context.progress(`  ${label}: reload ${index}/${reloads} done`);
    // The charted (last) reload gets a quiet lead-in, so that its window shows two versions only.
    await sleep(index === reloads - 1 ? GAP_MS + CHART_BEFORE_MS : GAP_MS);
  }
  await sleep(tailMs);
  const loadStoppedAt = Date.now();
  return { result: await load.stop(), times, loadStartedAt, loadStoppedAt };
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

/**
 * The example app alone, with no supervisor: the yardstick of the same run. It stays up, idle, while
 * the supervised runs go, and takes each run's load for a moment just before it: on a shared machine
 * a baseline measured once, minutes away, can be off by half.
 */
interface AppAlone {
  /** Spawn → both listeners open, as /proc shows them; one per start. */
  startUpMs: number[];
  /** RSS once it listens. */
  rssIdleBytes: number;
  /** Requests per second under `mode`'s load now, no reload. */
  throughput(mode: ConnectionMode): Promise<number>;
  /**
   * Spawn → listening of as many copies as a generation has workers, started at once while this app
   * serves `mode`'s load: a reload's new generation starts on cores that busy. One figure per sample:
   * the slowest copy's (a generation is ready when its last worker is).
   */
  startUpUnderLoad(mode: ConnectionMode): Promise<number[]>;
  /** Its peak RSS (VmHWM) so far. */
  peakRssBytes(): number;
  stop(): Promise<void>;
}

/** A free port not among `taken` (and taken from now on). */
async function distinctPort(taken: Set<number>): Promise<number> {
  for (;;) {
    const port = await freeFixedPort();
    if (taken.has(port)) continue;
    taken.add(port);
    return port;
  }
}

/** Starts the example app alone (its own ports, as `PORT=... node server.js`) after timing its start-up. */
async function startAppAlone(context: BenchContext): Promise<AppAlone> {
  const app = exampleAppCopy();
  app.setVersion(versionOf(0));
  const env = { PORT: String(await freeFixedPort()), GAME_PORT: String(await freeFixedPort()) };
  const command = [NODE, 'server.js'];
  const startUpMs: number[] = [];
  for (let index = 0; index < pick(context, 1, 3); index++) {
    startUpMs.push(await startUpAloneMs(command, app.dir, { env, listeners: 2 }));
  }
  const { started } = await startListeningAlone(command, app.dir, { env, listeners: 2 });
  const measureMs = pick(context, 1000, 2000);
  const loadOn = (mode: ConnectionMode, maxDurationMs: number) =>
    startHttpLoad({
      port: Number(env.PORT),
      path: '/',
      keepAliveLoops: mode === 'keep-alive' ? CONCURRENCY : 0,
      newConnectionLoops: mode === 'new connection' ? CONCURRENCY : 0,
      maxRequests: 2_000_000,
      maxDurationMs,
      requestTimeoutMs: 10_000,
    });
  return {
    startUpMs,
    rssIdleBytes: procUsage(started.pid).rssBytes,
    throughput: async (mode) => {
      const load = loadOn(mode, WARM_UP_MS + measureMs);
      const from = (await load.started) + WARM_UP_MS;
      return throughput(await load.result, from, from + measureMs);
    },
    startUpUnderLoad: async (mode) => {
      const samples: number[] = [];
      // Bounded by the copies' own start deadline, so that no sample is taken once the load has ended.
      const load = loadOn(mode, WARM_UP_MS + START_UP_SAMPLES * START_TIMEOUT_MS);
      try {
        await load.started;
        await sleep(WARM_UP_MS);
        for (let sample = 0; sample < START_UP_SAMPLES; sample++) {
          const ports = new Set<number>([Number(env.PORT), Number(env.GAME_PORT)]);
          const copies: Array<Record<string, string>> = [];
          for (let copy = 0; copy < WORKERS; copy++) {
            const pair = [await distinctPort(ports), await distinctPort(ports)];
            copies.push({ PORT: String(pair[0]), GAME_PORT: String(pair[1]) });
          }
          // Each copy is killed once it listens or fails; one failing fails the sample after both ended.
          const startUps = await Promise.allSettled(
            copies.map((copyEnv) => startUpAloneMs(command, app.dir, { env: copyEnv, listeners: 2 })),
          );
          const failed = startUps.find((outcome) => outcome.status === 'rejected');
          if (failed) throw failed.reason;
          samples.push(
            Math.max(...startUps.map((outcome) => (outcome as PromiseFulfilledResult<number>).value)),
          );
        }
      } finally {
        await load.stop().catch(() => load.kill());
      }
      return samples;
    },
    peakRssBytes: () => procUsage(started.pid).peakRssBytes,
    stop: async () => {
      await started.killTree();
      removeAppCopy(app);
    },
  };
}

/** A supervisor running the example app, ready for load and reloads. */
interface Supervised {
  httpPort: number;
  /** The process whose memory is the supervisor's. */
  supervisorPid: number;
  reloadOnce(gen: number): Promise<ReloadTimes>;
  stop(): Promise<void>;
}

/** The example app (or plain.js) under baton, 2 workers. */
async function underBaton(kind: RunKind, app: AppDir): Promise<Supervised> {
  const { baton, httpPort } = await startBatonApp({
    workers: WORKERS,
    app: kind.unreported ? { kind: 'plain', dir: app } : { kind: 'example', dir: app },
    extraArgs: [
      ...(kind.unreported ? ['--no-preload'] : []),
      ...(kind.startNice ? ['--start-nice', String(kind.startNice)] : []),
    ],
  });
  return {
    httpPort,
    supervisorPid: baton.pid,
    reloadOnce: (gen) => reload(baton, gen, { workers: WORKERS }),
    stop: () => stopProcess(baton),
  };
}

/**
 * The example app under PM2's cluster mode, 2 instances, as its users run it: `--wait-ready` (the
 * app's ready() sends PM2's 'ready'), ports it is told (PM2 binds them in the daemon), and its drain
 * on PM2's stop signal (SIGINT; the child API drains on BATON_DRAIN_SIGNAL). A reload is `pm2 reload`,
 * from the command's spawn until it returns.
 */
async function underPm2(app: AppDir): Promise<Supervised> {
  const httpPort = await freeFixedPort();
  const peer = await Pm2Peer.start({
    script: join(app.dir, 'server.js'),
    cwd: app.dir,
    instances: WORKERS,
    ports: 2,
    env: { PORT: String(httpPort), GAME_PORT: String(await freeFixedPort()), BATON_DRAIN_SIGNAL: 'SIGINT' },
  });
  return {
    httpPort,
    supervisorPid: peer.godPid,
    reloadOnce: async (gen) => {
      const reloaded = await peer.reload();
      if (reloaded.exitCode !== 0)
        throw new Error(`pm2 reload exited ${reloaded.exitCode}:\n${reloaded.output}`);
      return {
        gen,
        signalAt: reloaded.startedAt,
        startingAt: reloaded.startedAt,
        activeAt: reloaded.endedAt,
        retiredAt: reloaded.endedAt,
        workerReadyMs: [],
      };
    },
    stop: () => peer.stop(),
  };
}

/**
 * The example app under a textbook node:cluster primary (bench/apps/cluster.js), 2 workers on ports
 * it is told (the primary binds them and accepts, round-robin). A reload is SIGUSR2: fork the new
 * workers, wait until each listens on both ports, then disconnect the old ones (kill() after 2 s);
 * the primary's lines give its steps in baton's words.
 */
async function underCluster(app: AppDir): Promise<Supervised> {
  const { primary, httpPort } = await startClusterPeer(app, WORKERS);
  return {
    httpPort,
    supervisorPid: primary.pid,
    reloadOnce: (gen) => reload(primary, gen, { workers: WORKERS }),
    stop: () => stopProcess(primary),
  };
}

/** The app alone's figures under a run's load, measured just before that run. */
interface AloneUnderLoad {
  requestsPerSecond: number;
  startUpMs: number[];
}

async function runMode(
  context: BenchContext,
  kind: RunKind,
  alone: AloneUnderLoad,
): Promise<{ run: ReloadRun; panel: ChartPanel }> {
  const { mode } = kind;
  const app = exampleAppCopy();
  app.setVersion(versionOf(0));
  try {
    const supervised =
      kind.supervisor === 'pm2'
        ? await underPm2(app)
        : kind.supervisor === 'cluster'
          ? await underCluster(app)
          : await underBaton(kind, app);
    try {
      const rssIdleBytes = procUsage(supervised.supervisorPid).rssBytes;
      const across = await loadAcrossReloads({
        context,
        label: runLabel(kind),
        mode,
        httpPort: supervised.httpPort,
        // A run at a lower priority takes seconds per reload: fewer of them keep the bench in its time.
        reloads: (kind.startNice ?? 0) > 0 ? pick(context, 2, 5) : pick(context, 3, 10),
        reloadOnce: supervised.reloadOnce,
        setVersion: (version) => app.setVersion(version),
      });
      const memory = { rssIdleBytes, peakRssBytes: procUsage(supervised.supervisorPid).peakRssBytes };
      return analyse(kind, across, memory, alone);
    } finally {
      await supervised.stop();
    }
  } finally {
    removeAppCopy(app);
  }
}

function analyse(
  kind: RunKind,
  { result, times, loadStartedAt, loadStoppedAt }: LoadAcrossReloads,
  memory: { rssIdleBytes: number; peakRssBytes: number },
  alone: AloneUnderLoad,
): { run: ReloadRun; panel: ChartPanel } {
  const windows = times.map((step) => ({ from: step.signalAt, to: step.retiredAt ?? step.activeAt }));
  const { during, without } = latencyDuringAndWithout(result, windows, loadStartedAt + WARM_UP_MS);
  const pm2 = kind.supervisor === 'pm2';
  const run: ReloadRun = {
    mode: kind.mode,
    supervisor: kind.supervisor,
    label: runLabel(kind),
    reloads: times.length,
    counts: countLoad(result),
    duringReloads: during,
    withoutReloads: without,
    // PM2 says nothing between its command's start and its return.
    signalToActiveMs: times.map((step) => (pm2 ? Number.NaN : step.activeAt - step.signalAt)),
    signalToNewVersionOnlyMs: newVersionOnlyMs(result, times),
    signalToRetiredMs: times.map((step) => (step.retiredAt ?? Number.NaN) - step.signalAt),
    requestsPerSecond: throughput(result, loadStartedAt + WARM_UP_MS, loadStoppedAt),
    requestsPerSecondWithout: throughputOutside(result, windows, loadStartedAt + WARM_UP_MS, loadStoppedAt),
    aloneRequestsPerSecond: alone.requestsPerSecond,
    aloneStartUpUnderLoadMs: alone.startUpMs,
    supervisorRssIdleBytes: memory.rssIdleBytes,
    supervisorPeakRssBytes: memory.peakRssBytes,
    errors: result.errors,
  };
  // The last reload: nothing follows it but the steady tail, so its window is not cut by the next signal.
  const charted = times.at(-1) as ReloadTimes;
  const origin = charted.signalAt;
  const endOf = charted.retiredAt ?? charted.activeAt;
  // Whole buckets only: a bucket cut by the window's edge would look like a drop in traffic.
  const chartFrom = origin - CHART_BEFORE_MS;
  const chartTo = origin + Math.floor((endOf + CHART_AFTER_MS - origin) / BUCKET_MS) * BUCKET_MS;
  const marks = pm2
    ? [
        { t: 0, label: 'pm2 reload' },
        { t: endOf - origin, label: 'pm2 reload returned' },
      ]
    : [
        { t: 0, label: 'SIGUSR2' },
        { t: charted.activeAt - origin, label: 'new generation active' },
        ...(charted.retiredAt === undefined
          ? []
          : [{ t: charted.retiredAt - origin, label: 'old generation retired' }]),
      ];
  const panel: ChartPanel = {
    title: `${run.label}: reload ${times.length} of ${times.length}; the whole run: ${count(run.counts.requests)} requests, ${run.counts.failed} failed`,
    buckets: buckets(result, { origin, from: chartFrom, to: chartTo, bucketMs: BUCKET_MS }),
    marks,
    from: chartFrom - origin,
    to: chartTo - origin,
  };
  return { run, panel };
}

/** `182 ms (max 224 ms)`. */
export const medianAndMax = (values: number[]) => `${ms(median(values))} (max ${ms(Math.max(...values))})`;

/** Runs scenario 1: baton in each run kind, then PM2, and the example app alone as their yardstick. */
export async function reloadUnderLoad(
  context: BenchContext,
): Promise<ScenarioOutcome & { panels: ChartPanel[] }> {
  context.progress('scenario 1, reload under load: the example app alone');
  const alone = await startAppAlone(context);
  const aloneStartUpMs = median(alone.startUpMs);
  const runs: ReloadRun[] = [];
  const panels: ChartPanel[] = [];
  let alonePeakRssBytes: number;
  try {
    for (const kind of runKinds()) {
      context.progress(`scenario 1, reload under load: the app alone, then ${runLabel(kind)}`);
      const requestsPerSecond = await alone.throughput(kind.mode);
      const startUpMs = await alone.startUpUnderLoad(kind.mode);
      const { run, panel } = await runMode(context, kind, { requestsPerSecond, startUpMs });
      runs.push(run);
      panels.push(panel);
    }
    alonePeakRssBytes = alone.peakRssBytes();
  } finally {
    await alone.stop();
  }
  const row = (label: string, cell: (run: ReloadRun) => string) => [label, ...runs.map(cell)];
  const baton = runs.filter((run) => run.supervisor === 'baton');
  return {
    id: 'reload',
    title: '1. Reload under load',
    data: {
      alone: {
        startUpMs: alone.startUpMs,
        rssIdleBytes: alone.rssIdleBytes,
        peakRssBytes: alonePeakRssBytes,
      },
      runs,
    },
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
            'req/s over the run (ratio to the app alone)',
            (run) =>
              `${count(run.requestsPerSecond)} (${ratio(run.requestsPerSecond / run.aloneRequestsPerSecond)})`,
          ),
          row(
            'req/s outside reloads (ratio to the app alone)',
            (run) =>
              `${count(run.requestsPerSecondWithout)} (${ratio(run.requestsPerSecondWithout / run.aloneRequestsPerSecond)})`,
          ),
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
          row('signal → new generation active', (run) =>
            run.supervisor === 'pm2' ? 'n/a' : medianAndMax(run.signalToActiveMs),
          ),
          row('signal → every new request on the new version', (run) =>
            medianAndMax(run.signalToNewVersionOnlyMs),
          ),
          row(
            '… as a ratio to the app alone: spawn → listening',
            (run) => `${ratio(median(run.signalToNewVersionOnlyMs) / aloneStartUpMs)}`,
          ),
          row(
            '… as a ratio to the app alone started beside the same load',
            (run) =>
              `${ratio(median(run.signalToNewVersionOnlyMs) / median(run.aloneStartUpUnderLoadMs))} (${ms(median(run.aloneStartUpUnderLoadMs))})`,
          ),
          row('signal → old generation retired (PM2: `pm2 reload` returned)', (run) =>
            medianAndMax(run.signalToRetiredMs),
          ),
          row(
            'supervisor RSS idle (ratio to the app alone)',
            (run) =>
              `${megabytes(run.supervisorRssIdleBytes)} (${ratio(run.supervisorRssIdleBytes / alone.rssIdleBytes)})`,
          ),
          row(
            'supervisor peak RSS, VmHWM (ratio to the app alone)',
            (run) =>
              `${megabytes(run.supervisorPeakRssBytes)} (${ratio(run.supervisorPeakRssBytes / alonePeakRssBytes)})`,
          ),
        ],
        note:
          `${WORKERS} workers of the example app (the third and fourth columns: bench/apps/plain.js, a plain node:http server on fd 3 that says ready with process.send('ready') and never reports its connections, under --no-preload; the fourth with --start-nice 10, each new worker at nice 10 until it is ready; the columns with --start-nice ${HIGHER_START_NICE}: the example app, each new worker at nice ${HIGHER_START_NICE} until it is ready, which needs root or CAP_SYS_NICE${runKinds().length < RUNS.length ? ' (left out of this run: this bench runs without them)' : ''}), ${CONCURRENCY} client loops. ` +
          `PM2: the same example app under \`pm2 start server.js -i ${WORKERS} --wait-ready\` (cluster mode: the God daemon accepts every connection and passes it to a worker; its ready() sends PM2's 'ready'; it drains on SIGINT, PM2's stop signal; default kill_timeout), reloaded with \`pm2 reload\`, whose "signal" is the command's spawn (its own start-up included) and whose end is the command's return; the supervisor is the God daemon. ` +
          `node:cluster: the same example app under bench/apps/cluster.js, a textbook primary (round-robin: it accepts every connection and passes it to a worker) whose SIGUSR2 forks ${WORKERS} new workers, waits until each listens on both ports, then disconnect()s the old ones (kill() after 2 s, as Node's documentation shows; the example app drains on that SIGTERM); the supervisor is the primary. ` +
          `"During reloads" is from each signal until the old generation retired (PM2: the command returned); "without" is the rest of the same run. Times are medians over the reloads. ` +
          `The app alone (\`node server.js\` with ports of its own, no supervisor, no reload, idle beside the runs): spawn → both listeners open ${ms(aloneStartUpMs)} (median of ${alone.startUpMs.length}, /proc), RSS ${megabytes(alone.rssIdleBytes)} listening, peak ${megabytes(alonePeakRssBytes)} after its loads; its req/s under each run's load, measured just before that run: ${runs.map((run) => `${count(run.aloneRequestsPerSecond)}`).join(', ')}. ` +
          `Beside the same load, just before each run, ${WORKERS} more copies of the example app alone started at once, ${START_UP_SAMPLES} times, while the first served the load, as a reload's new generation starts while the old one serves: spawn → both listeners open of the slower copy, median of ${START_UP_SAMPLES}. One process serves that load where a reload has ${WORKERS} serving workers (and the columns of plain.js run another app than the yardstick's), so it is a lower bound of a start-up on cores that busy.`,
      },
    ],
    checks: baton.map((run) => ({
      what: `${run.label}: 0 failed in ${count(run.counts.requests)} requests over ${run.reloads} reloads`,
      ok: run.counts.failed === 0,
    })),
  };
}
