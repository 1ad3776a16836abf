/**
 * Readiness: how the master learns that a worker serves, in each `--ready` mode (docs/contract.md):
 * the IPC message `'ready'` (or the preload's `listening`), `READY=1` on NOTIFY_SOCKET or the notify pipe, the worker seen polling its listeners in
 * /proc, or a delay; and the /proc connection sample, which counts the connections of workers that do
 * not report theirs and finishes a draining one that holds none. A new way to say ready is a new
 * `ReadyVia`, a line in `countsAsReady`, and the event that brings it to `onSignal`.
 *
 * The master's dispatcher feeds it the events; it arms its timers through the dispatcher too.
 */
import path from 'node:path';
import type { Generation } from './generation.js';
import type { Logger } from './log.js';
import type { InheritedListener, MasterEvent } from './model.js';
import {
  CONNECTION_SAMPLE_INTERVAL_MS,
  IDLE_DRAIN_SAMPLES,
  type MasterOptions,
  POLL_READINESS_INTERVAL_MS,
  type ReadinessMode,
} from './options.js';
import type { Os } from './os.js';
import { parseNotifyLine } from './sd-notify.js';
import type { Worker } from './worker.js';

/** How a worker's readiness was seen; `listening`: baton's preload saw it listen (counts under `auto` only). */
export type ReadyVia = 'ipc' | 'notify' | 'delay' | 'poll' | 'listening';

/** Runtimes whose programs say ready over the IPC channel (`process.send('ready')`, the child API). */
const IPC_RUNTIMES = new Set(['node', 'nodejs', 'bun']);

/** Whether `command` (resolved) is a runtime whose workers say ready over IPC. */
export function speaksIpc(command: string): boolean {
  return IPC_RUNTIMES.has(path.basename(command).replace(/\.exe$/, ''));
}

/** Whether a worker that said ready `via` counts as ready under `--ready mode`. */
export function countsAsReady(mode: ReadinessMode['kind'], via: ReadyVia): boolean {
  // The preload's `listening` is no mode of its own: `--ready ipc` waits for the app's own 'ready'.
  if (via === 'listening') return mode === 'auto';
  return mode === via || (mode === 'auto' && via !== 'delay');
}

/**
 * Whether the master watches `command`'s workers in /proc for readiness. `auto` also watches a program
 * that is not Node accept, so that an unmodified server (one written for a systemd .socket unit) is ready
 * without a flag. Node workers say ready over IPC: one that listens before it is ready (warming a cache)
 * must not be taken for ready early.
 */
export function probesProc(mode: ReadinessMode['kind'], command: string, preload = false): boolean {
  return mode === 'poll' || (mode === 'auto' && !speaksIpc(command) && !(preload && startsNode(command)));
}

/** Package runners that start a Node app (`npm start`, `npx tsx server.ts`): with the preload, it says ready. */
const NODE_LAUNCHERS = new Set(['npm', 'npx', 'pnpm', 'yarn', 'tsx']);

/**
 * Whether `command` (resolved) starts a Node app behind it: the preload in that app says ready (on the
 * notify pipe) once it listens on every listener, so /proc must not take it for ready at its first.
 */
export function startsNode(command: string): boolean {
  return NODE_LAUNCHERS.has(path.basename(command).replace(/\.(exe|cmd)$/, ''));
}

/** What readiness needs from the master. */
export interface ReadinessPorts {
  os: Os;
  logger: Logger;
  options: Pick<MasterOptions, 'ready' | 'readyTimeoutMs' | 'preload'>;
  listeners: readonly InheritedListener[];
  /** Queues an event in the master's dispatcher (timers only queue). */
  dispatch(event: MasterEvent): void;
  /** A worker is ready, seen `via` a signal its `--ready` mode counts. */
  ready(worker: Worker, via: ReadyVia): void;
  /** Every generation the master knows, for the connection sample. */
  generations(): readonly Generation[];
  kill(worker: Worker, signal: NodeJS.Signals): void;
  /** WATCHDOG=1 or WATCHDOG=trigger, for the watchdog (watchdog.ts). */
  watchdog(worker: Worker, word: 'watchdog' | 'watchdog-trigger'): void;
}

/** The master's readiness watch over each starting worker, and its /proc sample of every worker. */
export class Readiness {
  /** Whether the fallback of the connection count to /proc/net/tcp was logged (once per master). */
  private fallbackLogged = false;

  constructor(private readonly ports: ReadinessPorts) {}

  /** Watches a worker just spawned from `command`: its ready deadline, and the delay or /proc probe. */
  watch(worker: Worker, command: string): void {
    const { os, dispatch, options } = this.ports;
    worker.readyTimer = os.setTimer(options.readyTimeoutMs, () =>
      dispatch({ type: 'ready-timeout', worker }),
    );
    const mode = options.ready;
    if (mode.kind === 'delay') {
      os.setTimer(mode.ms, () => dispatch({ type: 'ready-delay-passed', worker }));
    } else if (probesProc(mode.kind, command, options.preload === true)) {
      this.scheduleProbe(worker);
    }
  }

  /** A worker said ready one way; whether that counts depends on `--ready`. */
  onSignal(worker: Worker, via: ReadyVia): void {
    if (countsAsReady(this.ports.options.ready.kind, via)) this.ports.ready(worker, via);
  }

  /**
   * sd_notify words, from NOTIFY_SOCKET or the notify pipe (sd-notify.ts; docs/contract.md lists them):
   * READY=1 says ready, EXTEND_TIMEOUT_USEC= pushes the ready deadline, WATCHDOG= goes to the watchdog,
   * the others are logged (STATUS= is also kept for status).
   */
  onNotified(worker: Worker, line: string): void {
    const notice = parseNotifyLine(line);
    const { logger, os, options, dispatch } = this.ports;
    const facts = { gen: worker.generation, worker: worker.index, pid: worker.pid };
    switch (notice?.kind) {
      case 'ready':
        this.onSignal(worker, 'notify');
        break;
      case 'status':
        worker.status = notice.text;
        logger.info({ ...facts, status: notice.text }, 'worker status');
        break;
      case 'stopping':
        logger.info(facts, 'worker stopping');
        break;
      case 'errno':
        logger.warn({ ...facts, errno: notice.errno }, 'worker reported an error number');
        break;
      case 'mainpid':
        logger.info({ ...facts, mainPid: notice.pid }, 'worker named its main pid');
        break;
      case 'watchdog':
      case 'watchdog-trigger':
        this.ports.watchdog(worker, notice.kind);
        break;
      case 'extend-timeout':
        if (worker.state === 'starting') {
          worker.readyTimer?.cancel();
          worker.readyTimer = os.setTimer(
            Math.max(notice.ms, options.readyTimeoutMs - (os.now() - worker.startedAt)),
            () => dispatch({ type: 'ready-timeout', worker }),
          );
          logger.info({ ...facts, extendMs: notice.ms }, 'worker extended its ready deadline');
        }
        break;
      default:
        logger.debug({ ...facts, line }, 'worker notification ignored');
    }
  }

  /**
   * `--ready poll`: a worker is ready once /proc shows it, or a process it forked, waiting for
   * connections on the listeners, or holding one it accepted there.
   */
  onProbe(worker: Worker): void {
    if (worker.state !== 'starting' || worker.pid === undefined) return;
    const { os } = this.ports;
    // A worker busy serving is seldom caught waiting in accept: one that holds a connection accepted on
    // a listener serves too (a pre-forking server under load takes its share of the queue at once).
    const serves =
      os.pollsListeners(worker.pid, this.listenerInodes) || (this.countConnections(worker.pid) ?? 0) > 0;
    if (serves) this.onSignal(worker, 'poll');
    else this.scheduleProbe(worker);
  }

  /** Starts the /proc connection sample (every CONNECTION_SAMPLE_INTERVAL_MS, for as long as the master runs). */
  startSampling(): void {
    this.ports.os.setTimer(CONNECTION_SAMPLE_INTERVAL_MS, () =>
      this.ports.dispatch({ type: 'connections-sample' }),
    );
  }

  /**
   * Counts, in /proc, the connections of workers that do not report theirs (for
   * status), and finishes a draining one that stopped accepting and holds none:
   * an unmodified program may close its listener on the drain signal and wait.
   */
  onSample(): void {
    const { os, logger } = this.ports;
    for (const generation of this.ports.generations()) {
      for (const worker of generation.liveWorkers) {
        if (worker.connections !== undefined || worker.pid === undefined) continue;
        worker.observedConnections = this.countConnections(worker.pid);
        const idle =
          worker.state === 'draining' &&
          worker.observedConnections === 0 &&
          !os.pollsListeners(worker.pid, this.listenerInodes);
        worker.idleSamples = idle ? worker.idleSamples + 1 : 0;
        if (worker.idleSamples >= IDLE_DRAIN_SAMPLES) {
          logger.info(
            { gen: generation.id, worker: worker.index, pid: worker.pid },
            'worker finished: it no longer accepts and holds no connection',
          );
          this.ports.kill(worker, 'SIGKILL');
        }
      }
    }
    this.startSampling();
  }

  /** The connections process `pid` holds on the listeners, from /proc and netlink (proc.ts). */
  private countConnections(pid: number): number | undefined {
    const { os, listeners, logger } = this.ports;
    const count = os.countConnections(pid, listeners);
    const fallback = this.fallbackLogged ? undefined : os.connectionCountFallback?.();
    if (fallback !== undefined) {
      this.fallbackLogged = true;
      logger.warn(
        { reason: fallback },
        'counting connections from /proc/net/tcp: netlink sock_diag is unavailable (slower on a host with many sockets)',
      );
    }
    return count;
  }

  private scheduleProbe(worker: Worker): void {
    this.ports.os.setTimer(POLL_READINESS_INTERVAL_MS, () =>
      this.ports.dispatch({ type: 'ready-probe', worker }),
    );
  }

  private get listenerInodes(): Set<number> {
    return new Set(
      this.ports.listeners.flatMap((listener) => (listener.inode === undefined ? [] : [listener.inode])),
    );
  }
}
