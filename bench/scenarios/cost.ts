/**
 * Scenario 5, cost: steady throughput with no reload, for the same minimal app run alone, under baton
 * with 1 and 2 workers (and 2 workers that do not report their connections, so that the master counts
 * them), and under a textbook `node:cluster` primary with 2 workers, with short connections and with
 * keep-alive, and under PM2's cluster mode with 2 instances. The set-ups take turns in short runs, round after round, and each figure is the median
 * over the rounds, given as a ratio to the lone app. Also the supervisor's own CPU and memory (RSS idle,
 * after load, and its peak, VmHWM), memory as a ratio to an idle Node of the same version and to the app
 * alone in the same run.
 */
import { countLoad, median, throughput } from '../analysis.js';
import { type BenchContext, pick } from '../context.js';
import {
  CLUSTER_APP,
  HELLO_APP,
  measureCpu,
  procUsage,
  REPO_ROOT,
  sleep,
  startBatonApp,
  startHttpLoad,
  startNode,
  startPlainApp,
  stopProcess,
  tcpSocketsOnMachine,
} from '../harness.js';
import { PM2_VERSION, Pm2Peer } from '../pm2.js';
import { count, megabytes, ms, percent, ratio, type ScenarioOutcome } from '../report.js';

const CONCURRENCY = 16;
/** Requests sent in the first moments of each load run are not counted. */
const WARM_UP_MS = 250;

const MODES = ['new connection', 'keep-alive'] as const;
type Mode = (typeof MODES)[number];

/** A server set-up to measure. */
interface Variant {
  name: string;
  /** Whose CPU and memory stand for the supervisor; the app's own for the lone app. */
  start(): Promise<{ port: number; watchedPid: number; stop(): Promise<void> }>;
}

const VARIANTS: Variant[] = [
  {
    name: 'app alone',
    start: async () => {
      const app = await startPlainApp(HELLO_APP);
      return { port: app.port, watchedPid: app.pid, stop: () => stopProcess(app.process) };
    },
  },
  ...[1, 2].map((workers) => ({
    name: `baton, ${workers} worker${workers === 1 ? '' : 's'}`,
    start: async () => {
      const { baton, httpPort } = await startBatonApp({ workers, app: { kind: 'hello' } });
      return { port: httpPort, watchedPid: baton.pid, stop: () => stopProcess(baton) };
    },
  })),
  {
    name: 'baton, 2 workers that do not report',
    start: async () => {
      const { baton, httpPort } = await startBatonApp({
        workers: 2,
        app: { kind: 'plain' },
        extraArgs: ['--no-preload'],
      });
      return { port: httpPort, watchedPid: baton.pid, stop: () => stopProcess(baton) };
    },
  },
  {
    name: 'node:cluster, 2 workers',
    start: async () => {
      const primary = await startPlainApp(CLUSTER_APP, { listeners: 2, env: { BENCH_WORKERS: '2' } });
      return { port: primary.port, watchedPid: primary.pid, stop: () => stopProcess(primary.process) };
    },
  },
  {
    name: `PM2 ${PM2_VERSION} cluster mode, 2 workers`,
    start: async () => {
      // hello.js's ready() sends PM2's 'ready'; its port 0 is one port, bound by the God daemon (the
      // cluster primary), which is the supervisor measured.
      const peer = await Pm2Peer.start({
        script: HELLO_APP,
        cwd: REPO_ROOT,
        instances: 2,
        env: { BENCH_APP_VERSION: 'pm2' },
      });
      return { port: peer.ports()[0] as number, watchedPid: peer.godPid, stop: () => peer.stop() };
    },
  },
];

/** One variant's figures over the rounds. */
interface VariantFigures {
  name: string;
  requestsPerSecond: Record<Mode, number[]>;
  failed: number;
  /** The watched process (supervisor, or the lone app): CPU share of one core, RSS. */
  idleCpuShare: number[];
  loadCpuShare: Record<Mode, number[]>;
  /** RSS with no client (after the idle CPU measure), and after the load. */
  idleRssBytes: number[];
  rssBytes: number[];
  /** The peak RSS of the process's whole life (VmHWM), read at the end. */
  peakRssBytes: number[];
}

/** An idle Node of the same version as the supervisors: the yardstick of their memory. */
const IDLE_NODE_SCRIPT = 'console.log(JSON.stringify({ msg: "idle" })); setInterval(() => {}, 1 << 30);';

/** Runs scenario 5. */
export async function cost(context: BenchContext): Promise<ScenarioOutcome> {
  const rounds = pick(context, 2, 6);
  const measureMs = pick(context, 500, 1500);
  const idleMs = pick(context, 500, 2000);
  const figures = VARIANTS.map(
    (variant): VariantFigures => ({
      name: variant.name,
      requestsPerSecond: { 'new connection': [], 'keep-alive': [] },
      failed: 0,
      idleCpuShare: [],
      loadCpuShare: { 'new connection': [], 'keep-alive': [] },
      idleRssBytes: [],
      rssBytes: [],
      peakRssBytes: [],
    }),
  );
  const idleNode = { rssBytes: 0, peakRssBytes: 0 };
  context.progress(`scenario 5, cost: ${VARIANTS.length} set-ups, ${rounds} rounds`);
  // All set-ups run side by side (idle ones cost nothing) and take turns, so that whatever else the
  // shared machine is doing spreads over all of them instead of landing on one.
  const running: Array<Awaited<ReturnType<Variant['start']>>> = [];
  let tcpSockets = 0;
  const idle = startNode(['-e', IDLE_NODE_SCRIPT]);
  try {
    await idle.waitForLogMsg('idle');
    for (const variant of VARIANTS) running.push(await variant.start());
    tcpSockets = tcpSocketsOnMachine();
    for (const [index, { watchedPid }] of running.entries()) {
      const measured = await measureCpu(watchedPid, () => sleep(idleMs));
      (figures[index] as VariantFigures).idleCpuShare.push(measured.cpuShare);
      (figures[index] as VariantFigures).idleRssBytes.push(measured.rssBytes);
    }
    Object.assign(idleNode, procUsage(idle.pid));
    for (let round = 0; round < rounds; round++) {
      for (let offset = 0; offset < VARIANTS.length; offset++) {
        const index = (offset + round) % VARIANTS.length;
        const { port, watchedPid } = running[index] as (typeof running)[number];
        const figure = figures[index] as VariantFigures;
        for (const mode of round % 2 === 0 ? MODES : [...MODES].reverse()) {
          const load = startHttpLoad({
            port,
            path: '/',
            keepAliveLoops: mode === 'keep-alive' ? CONCURRENCY : 0,
            newConnectionLoops: mode === 'new connection' ? CONCURRENCY : 0,
            maxRequests: 2_000_000,
            maxDurationMs: WARM_UP_MS + measureMs,
            requestTimeoutMs: 10_000,
          });
          const startedAt = await load.started;
          await sleep(WARM_UP_MS);
          const measured = await measureCpu(watchedPid, () => load.result);
          const from = startedAt + WARM_UP_MS;
          figure.requestsPerSecond[mode].push(throughput(measured.value, from, from + measureMs));
          figure.failed += countLoad(measured.value).failed;
          figure.loadCpuShare[mode].push(measured.cpuShare);
        }
      }
    }
    for (const [index, { watchedPid }] of running.entries()) {
      const usage = procUsage(watchedPid);
      (figures[index] as VariantFigures).rssBytes.push(usage.rssBytes);
      (figures[index] as VariantFigures).peakRssBytes.push(usage.peakRssBytes);
    }
  } finally {
    for (const { stop } of running) await stop();
    await stopProcess(idle);
  }
  return summarize(figures, idleNode, rounds, measureMs, idleMs, tcpSockets);
}

/** The median over the rounds of `figure`'s throughput in `mode` divided by the lone app's in the same round. */
function pairedRatio(figure: VariantFigures, alone: VariantFigures, mode: Mode): number {
  return median(
    figure.requestsPerSecond[mode].map(
      (rps, round) => rps / (alone.requestsPerSecond[mode][round] ?? Number.NaN),
    ),
  );
}

function summarize(
  figures: VariantFigures[],
  idleNode: { rssBytes: number; peakRssBytes: number },
  rounds: number,
  measureMs: number,
  idleMs: number,
  tcpSockets: number,
): ScenarioOutcome {
  const alone = figures[0] as VariantFigures;
  const aloneRps = (mode: Mode) => median(alone.requestsPerSecond[mode]);
  const aloneBest = (mode: Mode) => Math.max(...alone.requestsPerSecond[mode]);
  const supervisors = figures.slice(1);
  return {
    id: 'cost',
    title: '5. Cost: throughput with no reload',
    data: {
      rounds,
      measureMs,
      concurrency: CONCURRENCY,
      tcpSocketsWhileIdle: tcpSockets,
      idleNode,
      nodeVersion: process.version,
      variants: figures,
    },
    sections: [
      {
        title: 'Throughput, as a ratio to the app alone (first row: requests per second)',
        header: ['', ...MODES.map((mode) => `${mode}`), 'failed'],
        rows: figures.map((figure) => [
          figure.name,
          ...MODES.map((mode) => {
            const best = Math.max(...figure.requestsPerSecond[mode]);
            const typical = median(figure.requestsPerSecond[mode]);
            if (figure === alone) return `${count(best)} req/s (median ${count(typical)})`;
            return `${ratio(best / aloneBest(mode))} (median ${ratio(typical / aloneRps(mode))}, paired ${ratio(pairedRatio(figure, alone, mode))})`;
          }),
          count(figure.failed),
        ]),
        note:
          `The same minimal app (bench/apps/hello.js) in every row, ${CONCURRENCY} client loops; the load generator shares the machine's 2 cores with the server. ` +
          `Best of ${rounds} rounds of ${(measureMs / 1000).toFixed(1)} s per mode (other work on a shared machine only ever slows a round down), the median in brackets, then "paired": the median over the rounds of each round's ratio to the app alone in the same round (the load of a shared machine drifts between rounds more than within one); every round is in latest.json.`,
      },
      {
        title:
          "The supervisor itself (baton master, cluster primary, PM2's God daemon), CPU in % of one core",
        header: [
          '',
          'CPU idle',
          'CPU, new connections',
          'CPU, keep-alive',
          'RSS idle',
          'RSS after load',
          'peak RSS (VmHWM)',
        ],
        rows: supervisors.map((figure) => [
          figure.name,
          percent(median(figure.idleCpuShare)),
          percent(median(figure.loadCpuShare['new connection'])),
          percent(median(figure.loadCpuShare['keep-alive'])),
          ...(
            [
              [figure.idleRssBytes, alone.idleRssBytes],
              [figure.rssBytes, alone.rssBytes],
              [figure.peakRssBytes, alone.peakRssBytes],
            ] as const
          ).map(
            ([bytes, aloneBytes]) =>
              `${megabytes(median(bytes))} (×${(median(bytes) / idleNode.rssBytes).toFixed(2)}; app ${ratio(median(bytes) / median(aloneBytes))})`,
          ),
        ]),
        note:
          `Memory in brackets: a ratio to an idle Node ${process.version} in the same run (${megabytes(idleNode.rssBytes)} RSS, peak ${megabytes(idleNode.peakRssBytes)}), then ("app") to the app alone at the same moment. ` +
          `The lone app's own RSS: ${megabytes(median(alone.idleRssBytes))} idle, ${megabytes(median(alone.rssBytes))} after load, peak ${megabytes(median(alone.peakRssBytes))}. ` +
          `PM2: \`pm2 start hello.js -i 2 --wait-ready\` in a PM2_HOME of its own; its God daemon is the cluster primary, which accepts every connection. ` +
          `"Idle" is with no client, over ${ms(idleMs)} (CPU is counted in 10 ms ticks), while the machine held ${count(tcpSockets)} TCP sockets ` +
          "(TIME_WAIT included). baton's master counts the connections of workers that do not report theirs (plain.js): their descriptors in /proc, and the sockets established on the listener's port from netlink sock_diag (the kernel filters by state and port), not the whole of /proc/net/tcp.",
      },
    ],
    checks: [],
  };
}
