/**
 * `{ "kind": "status" }`: the master's state as plain data, each worker with its
 * latest CPU and memory sample, whether it is healthy, and the last reloads.
 */
import type { GenerationSnapshot, MasterSnapshot, MasterState, WorkerSnapshot } from '../model.js';
import type { ControlContext, RequestKind } from './context.js';
import { unknownField } from './context.js';
import type { ReloadRecord } from './history.js';

/** A status request has no field but `kind` (and `id`). */
export interface StatusRequest {
  kind: 'status';
}

/** A worker with its usage; `cpu` (percent of one core), `memory` (bytes) and the open files are null until sampled. */
export interface WorkerStatus extends WorkerSnapshot {
  /** How many times its slot was refilled before it (restarts after crashes). */
  restarts: number;
  cpu: number | undefined;
  memory: number | undefined;
  /** Its open file descriptors. */
  fds: number | undefined;
  /** Its soft limit on open files (`ulimit -n`). */
  fdLimit: number | undefined;
}

/** A generation and its workers, as `status` answers. */
export interface GenerationStatus extends Omit<GenerationSnapshot, 'workers'> {
  workers: WorkerStatus[];
}

/** The answer to `status`. */
export interface MasterStatus {
  name: string;
  control: string;
  /** The folder the master runs in (its workers' working directory). */
  cwd: string;
  pid: number;
  state: MasterState;
  /** The master's clock when it answered (ms since the epoch): uptimes are `now - startedAt`. */
  now: number;
  /** Workers per generation. */
  workers: number;
  reloadQueued: boolean;
  /** The config file the next generation's settings come from (`--config`); each generation has its own. */
  config?: MasterSnapshot['config'];
  /** The baton the master runs, since when (its start, or its last `baton reexec`), and how many re-execs. */
  baton?: MasterSnapshot['baton'];
  /** An active generation has every one of its workers ready (what `status --check` tests). */
  healthy: boolean;
  /** Why it is or is not healthy, in a few words. */
  health: string;
  /** The master's own CPU and memory. */
  cpu: number | undefined;
  memory: number | undefined;
  usage: { intervalMs: number; sampledAt: number | undefined };
  generations: GenerationStatus[];
  /** The last starts and reloads, oldest first. */
  reloads: ReloadRecord[];
  /** Live session handoff: sessions moved, kept and failed since the start, and the last rounds. */
  sessions: MasterSnapshot['sessions'];
}

/** Whether an active generation has all its workers ready, and a few words that say so. */
export function health(snapshot: Pick<MasterSnapshot, 'workers' | 'generations'>): {
  healthy: boolean;
  health: string;
} {
  const active = snapshot.generations.find((generation) => generation.state === 'active');
  if (!active) {
    const starting = snapshot.generations.find((generation) => generation.state === 'starting');
    return {
      healthy: false,
      health: starting
        ? `no active generation yet (generation ${starting.id} starting)`
        : 'no active generation',
    };
  }
  const ready = active.workers.filter((worker) => worker.state === 'ready').length;
  return {
    healthy: ready >= snapshot.workers,
    health: `generation ${active.id} active, ${ready}/${snapshot.workers} workers ready`,
  };
}

/** Assembles the answer to `status` from the master's snapshot, the usage samples and the history. */
export function buildStatus(context: ControlContext): MasterStatus {
  const snapshot = context.master.snapshot();
  const own = context.usage.of(snapshot.pid);
  return {
    name: context.name,
    control: context.path,
    cwd: process.cwd(),
    pid: snapshot.pid,
    state: snapshot.state,
    now: context.now(),
    workers: snapshot.workers,
    reloadQueued: snapshot.reloadQueued,
    ...(snapshot.config ? { config: snapshot.config } : {}),
    ...(snapshot.baton ? { baton: snapshot.baton } : {}),
    ...health(snapshot),
    cpu: own?.cpu,
    memory: own?.memory,
    usage: { intervalMs: context.usage.intervalMs, sampledAt: context.usage.sampledAt },
    generations: snapshot.generations.map((generation) => ({
      ...generation,
      workers: generation.workers.map((worker) => {
        const usage = worker.state === 'exited' ? undefined : context.usage.of(worker.pid);
        return {
          ...worker,
          cpu: usage?.cpu,
          memory: usage?.memory,
          fds: usage?.fds,
          fdLimit: usage?.fdLimit,
        };
      }),
    })),
    reloads: context.history.records(),
    sessions: snapshot.sessions,
  };
}

/** Whether a worker had every descriptor its limit allows at the last sample: it then refuses new connections. */
export function atOpenFileLimit(worker: Pick<WorkerStatus, 'fds' | 'fdLimit'>): boolean {
  return worker.fds != null && worker.fdLimit != null && worker.fds >= worker.fdLimit;
}

/** The pids worth sampling: the master and every worker alive. */
export function livePids(snapshot: MasterSnapshot): number[] {
  const workers = snapshot.generations.flatMap((generation) =>
    generation.workers.flatMap((worker) =>
      worker.state !== 'exited' && worker.pid !== undefined ? [worker.pid] : [],
    ),
  );
  return [snapshot.pid, ...workers];
}

/** `status`: answered at once, from what the master knows now. */
export const status: RequestKind<StatusRequest> = {
  check(fields) {
    const unknown = unknownField(fields, []);
    return unknown ? { ok: false, message: unknown } : { ok: true, request: { kind: 'status' } };
  },
  handle(_request, exchange, context) {
    exchange.answer(buildStatus(context));
  },
};
