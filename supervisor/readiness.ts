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
  OWN_PORT_CHECK_INTERVAL_MS,
  OWN_PORT_GRACE_MS,
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

/**
 * Whether the master looks in /proc for a starting worker of `command` that listens on a port of its own
 * instead of baton's. A Node app with the preload says so itself (child/take-over.ts); anything else
 * (another language, `--no-preload`) is seen from outside.
 */
export function checksOwnPorts(command: string, preload: boolean): boolean {
  return !(preload && (speaksIpc(command) || startsNode(command)));
}

/** What readiness needs from the master. */
export interface ReadinessPorts {
  os: Os;
  logger: Logger;
  /** The master's settings now; a worker's generation has its own (`Generation.settings`). */
  readonly options: Pick<MasterOptions, 'ready' | 'readyTimeoutMs' | 'preload' | 'startNice'>;
  /** The master's listeners now; a worker's generation has its own (`Generation.listeners`). */
  readonly listeners: readonly InheritedListener[];
  /** Queues an event in the master's dispatcher (timers only queue). */
  dispatch(event: MasterEvent): void;
  /** A worker is ready, seen `via` a signal its `--ready` mode counts. */
  ready(worker: Worker, via: ReadyVia): void;
  /** A starting worker listens on these TCP ports of its own, and has waited on none of baton's for OWN_PORT_GRACE_MS. */
  listensElsewhere(worker: Worker, ports: number[]): void;
  /** Every generation the master knows, for the connection sample. */
  generations(): readonly Generation[];
  kill(worker: Worker, signal: NodeJS.Signals): void;
  /** WATCHDOG=1 or WATCHDOG=trigger, for the watchdog (watchdog.ts). */
  watchdog(worker: Worker, word: 'watchdog' | 'watchdog-trigger'): void;
}

/** The master's readiness watch over each starting worker, and its /proc sample of every worker. */
export class Readiness {
  /** Since when each starting worker has been seen listening on a port of its own and on none of baton's. */
  private readonly ownPortSince = new WeakMap<Worker, number>();
  /** Whether the fallback of the connection count to /proc/net/tcp was logged (once per master). */
  private fallbackLogged = false;
  /** Whether a worker kept its `--start-nice` priority once ready was logged (once per master). */
  private niceKeptLogged = false;

  constructor(private readonly ports: ReadinessPorts) {}

  /** The readiness settings of the worker's generation (a config reload changes the next one's only). */
  private settingsOf(worker: Worker): ReadinessPorts['options'] {
    return this.generationOf(worker)?.settings ?? this.ports.options;
  }

  /** The listeners the worker inherited: its generation's. */
  private listenersOf(worker: Worker): readonly InheritedListener[] {
    return this.generationOf(worker)?.listeners ?? this.ports.listeners;
  }

  private generationOf(worker: Worker): Generation | undefined {
    return this.ports.generations().find((candidate) => candidate.id === worker.generation);
  }

  /** Watches a worker just spawned from `command`: its ready deadline, and the delay or /proc probe. */
  watch(worker: Worker, command: string): void {
    const { os, dispatch } = this.ports;
    const options = this.settingsOf(worker);
    worker.readyTimer = os.setTimer(options.readyTimeoutMs, () =>
      dispatch({ type: 'ready-timeout', worker }),
    );
    const mode = options.ready;
    if (mode.kind === 'delay') {
      os.setTimer(mode.ms, () => dispatch({ type: 'ready-delay-passed', worker }));
    } else if (probesProc(mode.kind, command, options.preload === true)) {
      this.scheduleProbe(worker);
    }
    if (inodesOf(this.listenersOf(worker)).size > 0 && checksOwnPorts(command, options.preload === true)) {
      this.scheduleOwnPortCheck(worker);
    }
  }

  /** A worker said ready one way; whether that counts depends on `--ready`. */
  onSignal(worker: Worker, via: ReadyVia): void {
    const settings = this.settingsOf(worker);
    if (!countsAsReady(settings.ready.kind, via)) return;
    if (worker.state === 'starting' && settings.startNice) this.restorePriority(worker, settings.startNice);
    this.ports.ready(worker, via);
  }

  /** A worker started at `--start-nice` is ready: it serves at its normal priority from now on. */
  private restorePriority(worker: Worker, startNice: number): void {
    if (worker.pid === undefined) return;
    const refused = this.ports.os.restorePriority?.(worker.pid);
    if (refused === undefined || this.niceKeptLogged) return;
    this.niceKeptLogged = true;
    this.ports.logger.warn(
      { gen: worker.generation, worker: worker.index, pid: worker.pid, startNice, reason: refused },
      "workers keep their --start-nice priority on their threads once ready: giving it back needs CAP_SYS_NICE (root) or a RLIMIT_NICE that allows it (where autogroups are on, the session's priority that counts is given back)",
    );
  }

  /**
   * sd_notify words, from NOTIFY_SOCKET or the notify pipe (sd-notify.ts; docs/contract.md lists them):
   * READY=1 says ready, EXTEND_TIMEOUT_USEC= pushes the ready deadline, WATCHDOG= goes to the watchdog,
   * the others are logged (STATUS= is also kept for status).
   */
  onNotified(worker: Worker, line: string): void {
    const notice = parseNotifyLine(line);
    const { logger, os, dispatch } = this.ports;
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
            Math.max(notice.ms, this.settingsOf(worker).readyTimeoutMs - (os.now() - worker.startedAt)),
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
    if (this.serves(worker)) this.onSignal(worker, 'poll');
    else this.scheduleProbe(worker);
  }

  /**
   * While a worker starts: does its process tree listen on a TCP port of its own while it waits on none
   * of baton's listeners? Held for OWN_PORT_GRACE_MS, it is said once (upgrade.ts warns, and names the
   * port if the worker then misses `--ready-timeout`); the check stops there.
   */
  onOwnPortCheck(worker: Worker): void {
    if (worker.state !== 'starting' || worker.pid === undefined) {
      this.ownPortSince.delete(worker);
      return;
    }
    const { os } = this.ports;
    const ports = os.ownListeningPorts(worker.pid, inodesOf(this.listenersOf(worker)));
    if (ports.length === 0 || this.serves(worker)) {
      this.ownPortSince.delete(worker);
    } else {
      const since = this.ownPortSince.get(worker) ?? os.now();
      this.ownPortSince.set(worker, since);
      if (os.now() - since >= OWN_PORT_GRACE_MS) {
        this.ownPortSince.delete(worker);
        this.ports.listensElsewhere(worker, ports);
        return;
      }
    }
    this.scheduleOwnPortCheck(worker);
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
      const listeners = generation.listeners ?? this.ports.listeners;
      for (const worker of generation.liveWorkers) {
        if (worker.connections !== undefined || worker.pid === undefined) continue;
        worker.observedConnections = this.countConnections(worker.pid, listeners);
        const idle =
          worker.state === 'draining' &&
          worker.observedConnections === 0 &&
          !os.pollsListeners(worker.pid, inodesOf(listeners));
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

  /**
   * Whether the worker's process or one it forked waits for connections on its listeners, or holds one it accepted
   * there: a worker busy serving is seldom caught waiting in accept (a pre-forking server under load
   * takes its share of the queue at once).
   */
  private serves(worker: Worker): boolean {
    const { os } = this.ports;
    const listeners = this.listenersOf(worker);
    if (worker.pid === undefined) return false;
    return (
      os.pollsListeners(worker.pid, inodesOf(listeners)) ||
      (this.countConnections(worker.pid, listeners) ?? 0) > 0
    );
  }

  private scheduleOwnPortCheck(worker: Worker): void {
    this.ports.os.setTimer(OWN_PORT_CHECK_INTERVAL_MS, () =>
      this.ports.dispatch({ type: 'own-port-check', worker }),
    );
  }

  /** The connections process `pid` holds on the listeners, from /proc and netlink (proc.ts). */
  private countConnections(pid: number, listeners: readonly InheritedListener[]): number | undefined {
    const { os, logger } = this.ports;
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
}

/** The inodes of listeners, for what /proc shows a process polling. */
function inodesOf(listeners: readonly InheritedListener[]): Set<number> {
  return new Set(listeners.flatMap((listener) => (listener.inode === undefined ? [] : [listener.inode])));
}
