/**
 * Scenario 7, scale: reload time and the master's CPU with 1, 4 and 16 workers (no load), and with
 * many idle keep-alive connections held by the old generation, which its drain must close.
 */
import { median } from '../analysis.js';
import { type BenchContext, pick } from '../context.js';
import {
  measureCpu,
  RELOAD_TIMEOUT_MS,
  reload,
  sleep,
  startBatonApp,
  startIdle,
  stopProcess,
  tcpSocketsOnMachine,
  withDeadline,
} from '../harness.js';
import { count, ms, percent, ratio, type ScenarioOutcome } from '../report.js';

/** How many idle connections open at once (the listen backlog is 511). */
const IDLE_CONNECT_BATCH = 250;

/** One row: a set-up and its reloads. */
interface ScaleRow {
  label: string;
  workers: number;
  idleConnections: number;
  signalToActiveMs: number[];
  activeToRetiredMs: number[];
  masterCpuMs: number[];
  /** The master's CPU share of one core with the workers idle, after the reloads. */
  masterIdleCpuShare: number;
  idle?: { answered: number; closedByServer: number; errors: number; connectFailed: number };
}

async function measureRow(
  context: BenchContext,
  workers: number,
  reloads: number,
  idleConnections: number,
): Promise<ScaleRow> {
  const idleMs = pick(context, 500, 2000);
  const label =
    idleConnections === 0
      ? `${workers} worker${workers === 1 ? '' : 's'}`
      : `${workers} worker, ${count(idleConnections)} idle connections`;
  context.progress(`scenario 7, scale: ${label}`);
  const row: ScaleRow = {
    label,
    workers,
    idleConnections,
    signalToActiveMs: [],
    activeToRetiredMs: [],
    masterCpuMs: [],
    masterIdleCpuShare: Number.NaN,
  };
  const { baton, httpPort } = await startBatonApp({ workers, app: { kind: 'hello' } });
  try {
    for (let index = 0; index < reloads; index++) {
      const idle =
        idleConnections === 0
          ? undefined
          : startIdle({
              port: httpPort,
              connections: idleConnections,
              connectBatch: IDLE_CONNECT_BATCH,
              maxDurationMs: 2 * RELOAD_TIMEOUT_MS,
            });
      if (idle) {
        const ready = await withDeadline(
          idle.ready,
          RELOAD_TIMEOUT_MS,
          `${idleConnections} idle connections`,
        );
        if (ready.connected !== idleConnections) {
          throw new Error(`only ${ready.connected} of ${idleConnections} idle connections were answered`);
        }
      }
      const measured = await measureCpu(baton.pid, () => reload(baton, index + 2, { workers }));
      const times = measured.value;
      row.signalToActiveMs.push(times.activeAt - times.signalAt);
      row.activeToRetiredMs.push((times.retiredAt as number) - times.activeAt);
      row.masterCpuMs.push(measured.cpuMs);
      if (idle) row.idle = await idle.stop();
    }
    row.masterIdleCpuShare = (await measureCpu(baton.pid, () => sleep(idleMs))).cpuShare;
  } finally {
    await stopProcess(baton);
  }
  return row;
}

/** Runs scenario 7. */
export async function scale(context: BenchContext): Promise<ScenarioOutcome> {
  const reloads = pick(context, 1, 3);
  const workerCounts = pick(context, [1, 4], [1, 4, 16]);
  const idleConnections = pick(context, 2000, 10_000);
  const rows: ScaleRow[] = [];
  const tcpSockets = tcpSocketsOnMachine();
  for (const workers of workerCounts) rows.push(await measureRow(context, workers, reloads, 0));
  rows.push(await measureRow(context, 1, 1, idleConnections));
  const base = rows[0] as ScaleRow;
  const idleRow = rows.at(-1) as ScaleRow;
  return {
    id: 'scale',
    title: '7. Scale',
    data: { tcpSocketsAtStart: tcpSockets, rows },
    sections: [
      {
        title: '',
        header: [
          '',
          'signal → new generation active',
          'ratio to 1 worker',
          'old generation: active → retired',
          'master CPU per reload',
          'master CPU idle, after',
        ],
        rows: rows.map((row) => [
          row.label,
          ms(median(row.signalToActiveMs)),
          ratio(median(row.signalToActiveMs) / median(base.signalToActiveMs)),
          ms(median(row.activeToRetiredMs)),
          ms(median(row.masterCpuMs)),
          percent(row.masterIdleCpuShare),
        ]),
        note:
          `The minimal app, no load, median of ${reloads} reload${reloads === 1 ? '' : 's'} per row (1 with idle connections). ` +
          `The idle connections (one request each, then silence) are closed by the old generation's drain after its grace period: ` +
          `${count(idleRow.idle?.closedByServer ?? 0)} of ${count(idleRow.idle?.answered ?? 0)} closed by the server, ${count(idleRow.idle?.errors ?? 0)} errors. ` +
          `Master CPU is counted in 10 ms ticks (/proc); "idle" is in % of one core, with ${count(tcpSockets)} TCP sockets on the machine (TIME_WAIT included), ` +
          'which the master reads once a second (one read for all workers) only while some worker does not report its connection count; these workers use the child API, which reports.',
      },
    ],
    checks: [],
  };
}
