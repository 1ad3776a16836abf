/**
 * Master: owns the listeners and the generations, and turns signals and
 * requests into operations. Everything that changes state is an event, queued
 * and applied one at a time by `dispatch`: a signal handler or a timer only
 * queues.
 */

import path from 'node:path';
import {
  crashesAfterExit,
  decideReload,
  generationsOverDrainLimit,
  isCrashLoop,
  isGenerationReady,
  restartDelayMs,
} from './decisions.js';
import { type DryRunAnswer, type DryRunEvent, DryRunner } from './dry-run.js';
import { describeStartFailure, EXIT_CODES, GenerationFailedError, type StartFailure } from './errors.js';
import { Generation, type Slot } from './generation.js';
import {
  HandoffRelay,
  type HandoffRound,
  handoffFlushTimeoutMs,
  parseHandoffMessage,
  type SessionsMovedProgress,
  type SessionsSnapshot,
} from './handoff.js';
import {
  type AppliedPatch,
  chooseWorkers,
  type InjectAnswer,
  InjectRelay,
  type InjectTarget,
  type PatchSource,
} from './inject.js';
import { parseWorkerMessage } from './ipc.js';
import type { Logger } from './log.js';
import {
  CONNECTION_SAMPLE_INTERVAL_MS,
  IDLE_DRAIN_SAMPLES,
  MAX_WORKERS,
  type MasterOptions,
  POLL_READINESS_INTERVAL_MS,
  STABLE_UPTIME_MS,
} from './options.js';
import { notifyFd, type Os } from './os.js';
import { Worker } from './worker.js';

/** Everything that can happen to a master. */
export type MasterEvent =
  | { type: 'start' }
  | { type: 'reload'; source: string; reply?: (answer: ReloadAnswer) => void }
  | { type: 'stop'; fast: boolean; source: string }
  | { type: 'worker-message'; worker: Worker; message: unknown }
  | { type: 'worker-exited'; worker: Worker; exitCode: number | null; signal: NodeJS.Signals | null }
  | { type: 'worker-notified'; worker: Worker; line: string }
  | { type: 'ready-delay-passed'; worker: Worker }
  | { type: 'ready-probe'; worker: Worker }
  | { type: 'connections-sample' }
  | { type: 'replace-worker'; pid: number; reason: string; facts?: Record<string, unknown> }
  | {
      type: 'scale';
      workers: number | 'more' | 'fewer';
      source: string;
      reply?: (answer: ScaleAnswer) => void;
    }
  | { type: 'ready-timeout'; worker: Worker }
  | { type: 'worker-kill-due'; worker: Worker }
  | { type: 'stop-reminder' }
  | { type: 'drain-timeout'; generation: Generation }
  | { type: 'restart-due'; generation: Generation; slot: number }
  | { type: 'handoff-connection'; worker: Worker; message: unknown; handle: unknown }
  | { type: 'handoff-relayed'; relay: number; error: Error | null }
  | { type: 'handoff-deadline'; round: HandoffRound }
  | {
      type: 'inject';
      patch: PatchSource;
      target: InjectTarget;
      source: string;
      reply?: (answer: InjectAnswer) => void;
    }
  | { type: 'inject-timeout'; round: number }
  | { type: 'inject-dry-run'; patch: PatchSource; source: string; reply?: (answer: DryRunAnswer) => void }
  | { type: 'dry-run'; event: DryRunEvent };

/** What a reload request became: the generation that will carry it, or nothing while stopping. */
export type ReloadAnswer =
  | { outcome: 'started' | 'queued' | 'joined'; generation: number }
  | { outcome: 'ignored'; reason: 'stopping' };

/** What the master reports as an upgrade goes, for whoever follows it (the control socket). */
export type Progress =
  | { kind: 'generation-starting'; generation: number; workers: number; version: string }
  | { kind: 'worker-ready'; generation: number; worker: number; ready: number; of: number }
  | { kind: 'generation-active'; generation: number; readyMs: number; draining: number[] }
  | { kind: 'reload-failed'; generation: number; failure: StartFailure; message: string }
  | { kind: 'generation-draining'; generation: number; workers: number }
  | { kind: 'generation-retired'; generation: number; drainMs: number; forced: boolean }
  | { kind: 'stopping'; fast: boolean }
  | SessionsMovedProgress;

/** A worker as `status` shows it. */
export interface WorkerSnapshot {
  index: number;
  pid: number | undefined;
  state: Worker['state'];
  startedAt: number;
  readyAt: number | undefined;
  exitedAt: number | undefined;
  exitCode: number | null;
  signal: string | null;
  connections: number | undefined;
  /** Whether the worker reported its connections (child API) or the master counted them in /proc. */
  connectionsSeen: 'reported' | 'observed' | undefined;
  /** How often this worker's slot was refilled after a crash (the current worker of the slot only). */
  restarts: number;
}

/** A generation as `status` shows it. */
export interface GenerationSnapshot {
  id: number;
  version: string;
  state: Generation['state'];
  startedAt: number;
  activeAt: number | undefined;
  drainStartedAt: number | undefined;
  retiredAt: number | undefined;
  forced: boolean;
  failure: string | undefined;
  restarts: number;
  /** Worker slots in a crash loop now: crashed at least CRASH_LOOP_THRESHOLD times in a row, not serving. */
  crashLoops: Array<{ worker: number; crashes: number }>;
  workers: WorkerSnapshot[];
  /** The hot patches applied to this generation (`baton inject`), oldest first. */
  patches: AppliedPatch[];
}

/** The master's state as plain data. */
export interface MasterSnapshot {
  state: MasterState;
  pid: number;
  workers: number;
  reloadQueued: boolean;
  generations: GenerationSnapshot[];
  /** Live session handoff: sessions moved, kept and failed, and the last rounds (docs/handoff.md). */
  sessions: SessionsSnapshot;
}

/** What a scale request became. */
export type ScaleAnswer =
  | { outcome: 'scaled'; from: number; to: number }
  | { outcome: 'ignored'; reason: 'stopping' };

/** How a worker's readiness was seen. */
type ReadyVia = 'ipc' | 'notify' | 'delay' | 'poll';

/** starting (first generation not ready yet) → running → stopping → stopped. */
export type MasterState = 'starting' | 'running' | 'stopping' | 'stopped';

/** A socket the master hands to every worker. */
export interface InheritedListener {
  readonly name: string;
  readonly fd: number;
  /** The socket's inode, for readiness seen in /proc (`--ready poll`); undefined where there is no /proc. */
  readonly inode: number | undefined;
  readonly kind: 'tcp' | 'udp' | 'unix';
  readonly port: number;
  /** The IP address, or the Unix socket's path. */
  readonly address: string;
  close(): void;
}

/** What a master needs from the world around it. */
export interface MasterContext {
  os: Os;
  logger: Logger;
  listeners: readonly InheritedListener[];
  /** The environment workers start from (the master's own). */
  env: Record<string, string | undefined>;
  cwd: string;
  /** Where workers' stderr goes once the master has kept its tail. */
  writeStderr(chunk: Buffer): void;
  /** The version label of a new generation (read anew at each reload); the generation number when undefined. */
  versionLabel?: () => string | undefined;
}

/** Runtimes whose programs say ready over the IPC channel (`process.send('ready')`, the child API). */
const IPC_RUNTIMES = new Set(['node', 'nodejs', 'bun']);

/** Whether `command` (resolved) is a runtime whose workers say ready over IPC. */
export function speaksIpc(command: string): boolean {
  return IPC_RUNTIMES.has(path.basename(command).replace(/\.exe$/, ''));
}

/** How many exited workers a serving generation remembers (for status); a long crash loop forgets the oldest. */
export const EXITED_WORKERS_KEPT = 20;

/** How many generations that have ended the master remembers (for status). */
export const RETIRED_GENERATIONS_KEPT = 10;

/**
 * A SIGINT this soon after the one that started the stop is the same Ctrl-C again (the terminal sends
 * it to the whole process group, and npm passes it on too): ignored. A later one stops at once.
 */
export const REPEATED_INTERRUPT_MS = 1_000;

/** While a stop waits for connections to end, the master says so this often. */
export const STOP_REMINDER_MS = 5_000;

/** Environment variables the master never passes on: they describe the master's own parent, not the worker's. */
const ENV_NOT_INHERITED = [
  'LISTEN_FDS',
  'LISTEN_FDNAMES',
  'LISTEN_PID',
  'NODE_CHANNEL_FD',
  'NODE_CHANNEL_SERIALIZATION_MODE',
  'NODE_UNIQUE_ID',
];

type Handlers = { [K in MasterEvent['type']]: (event: Extract<MasterEvent, { type: K }>) => void };

/** The supervisor: one per `baton start`. */
export class Master {
  state: MasterState = 'starting';
  readonly generations: Generation[] = [];
  /** Resolves with the exit code once every worker is gone after a stop. */
  readonly finished: Promise<number>;

  private nextGenerationId = 1;
  private readonly queue: MasterEvent[] = [];
  private dispatching = false;
  private reloadQueued = false;
  private startFailure: GenerationFailedError | undefined;
  private killedAtStopDeadline = false;
  /** When the stop began (for a repeated Ctrl-C). */
  private stopStartedAt: number | undefined;
  private resolveFinished: (exitCode: number) => void = () => {};
  /** Replacement workers starting (key), and the serving worker each one will replace (value). */
  private readonly replacements = new Map<Worker, Worker>();
  /** Workers per generation once `scale` changed it; `--workers` until then. */
  private scaledWorkers: number | undefined;
  private readonly followers = new Set<(progress: Progress) => void>();
  private readonly handlers: Handlers = {
    start: () => {
      this.startGeneration();
      this.scheduleConnectionsSample();
    },
    reload: (event) => {
      const answer = this.onReload(event.source);
      event.reply?.(answer);
    },
    stop: (event) => this.onStop(event.fast, event.source),
    'worker-message': (event) => this.onWorkerMessage(event.worker, event.message),
    'worker-exited': (event) => this.onWorkerExited(event.worker, event.exitCode, event.signal),
    'worker-notified': (event) => this.onWorkerNotified(event.worker, event.line),
    'ready-delay-passed': (event) => this.onReadySignal(event.worker, 'delay'),
    'ready-probe': (event) => this.onReadyProbe(event.worker),
    'connections-sample': () => this.onConnectionsSample(),
    'replace-worker': (event) => this.onReplaceWorker(event.pid, event.reason, event.facts ?? {}),
    scale: (event) => {
      const answer = this.onScale(event.workers, event.source);
      event.reply?.(answer);
    },
    'ready-timeout': (event) => this.onReadyTimeout(event.worker),
    'worker-kill-due': (event) => this.kill(event.worker, 'SIGKILL'),
    'stop-reminder': () => this.remindOfStop(),
    'drain-timeout': (event) => this.onDrainTimeout(event.generation),
    'restart-due': (event) => this.onRestartDue(event.generation, event.slot),
    'handoff-connection': (event) => this.handoff.onHandle(event.worker, event.message, event.handle),
    'handoff-relayed': (event) => this.handoff.onRelayed(event.relay, event.error),
    'handoff-deadline': (event) => this.handoff.onDeadline(event.round),
    inject: (event) => this.onInject(event.patch, event.target, event.source, event.reply ?? (() => {})),
    'inject-timeout': (event) => this.injections.onTimeout(event.round),
    'inject-dry-run': (event) => this.onDryRun(event.patch, event.source, event.reply ?? (() => {})),
    'dry-run': (event) => {
      this.dryRuns.on(event.event);
      this.finishIfStopped();
    },
  };
  /** Moves open sessions from old workers to new ones (docs/handoff.md). */
  private readonly handoff: HandoffRelay;
  /** Sends hot patches to workers and keeps what each generation was patched with. */
  private readonly injections: InjectRelay;
  /** Tries patches in scratch workers (`inject --dry-run`), outside every generation. */
  private readonly dryRuns: DryRunner;

  constructor(
    readonly options: MasterOptions,
    private readonly context: MasterContext,
  ) {
    this.finished = new Promise((resolve) => {
      this.resolveFinished = resolve;
    });
    this.handoff = new HandoffRelay({
      logger: context.logger,
      now: () => this.now(),
      send: (worker, message, handle, onSent) => {
        if (!worker.alive || !worker.process?.send) return false;
        worker.process.send(message, handle, onSent);
        return true;
      },
      relayed: (relay, error) => this.dispatch({ type: 'handoff-relayed', relay, error }),
      deadline: (round, ms) =>
        this.context.os.setTimer(ms, () => this.dispatch({ type: 'handoff-deadline', round })),
      ended: (round) => this.onHandoffEnded(round),
      report: (progress) => this.report(progress),
    });
    this.injections = new InjectRelay({
      logger: context.logger,
      now: () => this.now(),
      send: (worker, message) => {
        if (!worker.alive || !worker.process?.send) return false;
        // A send that fails means the worker is gone or never reads: its exit or the deadline reports it.
        worker.process.send(message, undefined, () => {});
        return true;
      },
      deadline: (round, ms) =>
        this.context.os.setTimer(ms, () => this.dispatch({ type: 'inject-timeout', round })),
    });
    this.dryRuns = new DryRunner({
      logger: context.logger,
      spawn: (request, callbacks) => this.context.os.spawnWorker(request, callbacks),
      setTimer: (ms, fn) => this.context.os.setTimer(ms, fn),
      queue: (event) => this.dispatch({ type: 'dry-run', event }),
      writeStderr: (chunk) => this.context.writeStderr(chunk),
    });
  }

  /** Queues an event; events are applied one at a time, in order. */
  dispatch(event: MasterEvent): void {
    this.queue.push(event);
    if (this.dispatching) return;
    this.dispatching = true;
    try {
      for (let next = this.queue.shift(); next; next = this.queue.shift()) {
        (this.handlers[next.type] as (event: MasterEvent) => void)(next);
      }
    } finally {
      this.dispatching = false;
    }
  }

  /** The generation that serves new connections, if any. */
  get activeGeneration(): Generation | undefined {
    return this.generations.find((generation) => generation.state === 'active');
  }

  private get log(): Logger {
    return this.context.logger;
  }

  private get reloadRunning(): boolean {
    return this.generations.some((generation) => generation.state === 'starting');
  }

  private now(): number {
    return this.context.os.now();
  }

  private generationOf(worker: Worker): Generation {
    return this.generations.find((generation) => generation.id === worker.generation) as Generation;
  }

  // ---- reload -------------------------------------------------------------

  private onReload(source: string): ReloadAnswer {
    const decision = decideReload({
      stopping: this.state === 'stopping' || this.state === 'stopped',
      reloadRunning: this.reloadRunning,
      reloadQueued: this.reloadQueued,
    });
    if (decision === 'ignore-stopping') {
      this.log.warn({ source }, 'reload ignored: the master is stopping');
      return { outcome: 'ignored', reason: 'stopping' };
    }
    if (decision === 'start') {
      this.log.info({ source }, 'reload requested');
      const generation = this.nextGenerationId;
      this.startGeneration();
      return { outcome: 'started', generation };
    }
    // Only one reload waits: it becomes the next generation, whoever else asks meanwhile.
    this.reloadQueued = true;
    this.log.info(
      { source, alreadyQueued: decision === 'already-queued' },
      'reload queued behind the running one',
    );
    return { outcome: decision === 'queue' ? 'queued' : 'joined', generation: this.nextGenerationId };
  }

  /** Calls `follower` with every progress report until the returned function is called. */
  follow(follower: (progress: Progress) => void): () => void {
    this.followers.add(follower);
    return () => this.followers.delete(follower);
  }

  private report(progress: Progress): void {
    for (const follower of this.followers) follower(progress);
  }

  /** The master's state as plain data, for `status`. */
  snapshot(): MasterSnapshot {
    return {
      state: this.state,
      pid: process.pid,
      workers: this.targetWorkers,
      reloadQueued: this.reloadQueued,
      sessions: this.handoff.snapshot(),
      generations: this.generations.map((generation) => ({
        id: generation.id,
        version: generation.version,
        state: generation.state,
        startedAt: generation.startedAt,
        activeAt: generation.activeAt,
        drainStartedAt: generation.drainStartedAt,
        retiredAt: generation.retiredAt,
        forced: generation.forced,
        failure: generation.failure && describeStartFailure(generation.id, generation.failure),
        restarts: generation.slots.reduce((sum, slot) => sum + slot.restarts, 0),
        crashLoops: generation.slots
          .filter((slot) => isCrashLoop(slot.consecutiveCrashes) && slot.current?.state !== 'ready')
          .map((slot) => ({ worker: slot.index, crashes: slot.consecutiveCrashes })),
        workers: generation.workers.map((worker) => ({
          index: worker.index,
          pid: worker.pid,
          state: worker.state,
          startedAt: worker.startedAt,
          readyAt: worker.readyAt,
          exitedAt: worker.exitedAt,
          exitCode: worker.exitCode,
          signal: worker.signal,
          connections: worker.connections ?? worker.observedConnections,
          restarts:
            generation.slots[worker.index]?.current === worker
              ? (generation.slots[worker.index]?.restarts ?? 0)
              : 0,
          connectionsSeen:
            worker.connections !== undefined
              ? 'reported'
              : worker.observedConnections !== undefined
                ? 'observed'
                : undefined,
        })),
        patches: [...this.injections.patchesOf(generation)],
      })),
    };
  }

  private startGeneration(): void {
    const id = this.nextGenerationId++;
    const version = this.context.versionLabel?.() ?? String(id);
    const generation = new Generation(id, version, this.targetWorkers, this.now());
    this.generations.push(generation);
    this.log.info(
      { gen: id, workers: this.targetWorkers, version: generation.version },
      'generation starting',
    );
    this.report({
      kind: 'generation-starting',
      generation: id,
      workers: this.targetWorkers,
      version: generation.version,
    });
    let command: string;
    try {
      command = this.context.os.resolveCommand(this.options.command, this.context.env, this.context.cwd);
    } catch {
      this.failGeneration(generation, { kind: 'command-not-found', command: this.options.command });
      return;
    }
    for (const slot of generation.slots) this.spawnWorker(generation, slot.index, command);
  }

  private spawnWorker(generation: Generation, slotIndex: number, command: string): void {
    const slot = generation.slots[slotIndex];
    if (!slot) return;
    const worker = new Worker(generation.id, slotIndex, this.now());
    slot.current = worker;
    generation.workers.push(worker);
    worker.process = this.context.os.spawnWorker(
      {
        command,
        args: this.options.args,
        env: this.workerEnv(generation, slotIndex),
        listenerFds: this.context.listeners.map((listener) => listener.fd),
        cwd: this.context.cwd,
        parentDeathSignal: this.options.drainSignal,
        ...(this.options.uid === undefined ? {} : { uid: this.options.uid }),
        ...(this.options.gid === undefined ? {} : { gid: this.options.gid }),
      },
      {
        onMessage: (message) => this.dispatch({ type: 'worker-message', worker, message }),
        onNotify: (line) => this.dispatch({ type: 'worker-notified', worker, line }),
        onStderr: (chunk) => {
          worker.stderr.push(chunk);
          this.context.writeStderr(chunk);
        },
        onExit: (exitCode, signal) => this.dispatch({ type: 'worker-exited', worker, exitCode, signal }),
        onHandle: (message, handle) => this.dispatch({ type: 'handoff-connection', worker, message, handle }),
      },
    );
    worker.readyTimer = this.context.os.setTimer(this.options.readyTimeoutMs, () =>
      this.dispatch({ type: 'ready-timeout', worker }),
    );
    const readiness = this.options.ready;
    if (readiness.kind === 'delay') {
      this.context.os.setTimer(readiness.ms, () => this.dispatch({ type: 'ready-delay-passed', worker }));
    } else if (readiness.kind === 'poll' || (readiness.kind === 'auto' && !speaksIpc(command))) {
      // `auto` also watches a program that is not Node accept, so that an unmodified server (one
      // written for a systemd .socket unit) is ready without a flag. Node workers say ready over IPC:
      // one that listens before it is ready (warming a cache) must not be taken for ready early.
      this.scheduleReadyProbe(worker);
    }
    this.log.debug({ gen: generation.id, worker: slotIndex, pid: worker.pid }, 'worker spawned');
  }

  /** The master's environment as workers inherit it. */
  private inheritedEnv(): Record<string, string> {
    const env: Record<string, string> = {};
    for (const [key, value] of Object.entries(this.context.env)) {
      if (value !== undefined && !ENV_NOT_INHERITED.includes(key)) env[key] = value;
    }
    return env;
  }

  private workerEnv(generation: Generation, slotIndex: number): Record<string, string> {
    return {
      ...this.inheritedEnv(),
      LISTEN_FDS: String(this.context.listeners.length),
      LISTEN_FDNAMES: this.context.listeners.map((listener) => listener.name).join(':'),
      BATON_GENERATION: String(generation.id),
      BATON_WORKER: String(slotIndex),
      BATON_VERSION: generation.version,
      BATON_DRAIN_SIGNAL: this.options.drainSignal,
      BATON_DRAIN_TIMEOUT_MS: String(this.options.drainTimeoutMs),
      BATON_NOTIFY_FD: String(notifyFd(this.context.listeners.length)),
    };
  }

  private onWorkerMessage(worker: Worker, raw: unknown): void {
    const message = parseWorkerMessage(raw);
    const handoff = parseHandoffMessage(raw);
    if (message?.kind === 'ready') this.onReadySignal(worker, 'ipc');
    else if (message?.kind === 'connections') worker.connections = message.count;
    else if (message?.kind === 'exposed') this.injections.onExposed(worker, message.names);
    else if (message?.kind === 'injected') this.injections.onInjected(worker, message.id, message.error);
    else if (handoff) this.handoff.onMessage(worker, handoff);
    else
      this.log.debug(
        { gen: worker.generation, worker: worker.index, pid: worker.pid },
        'worker message ignored',
      );
  }

  /** sd_notify words on the notify pipe: READY=1 says ready; STATUS= is logged. */
  private onWorkerNotified(worker: Worker, line: string): void {
    if (line === 'READY=1') this.onReadySignal(worker, 'notify');
    else if (line.startsWith('STATUS=')) {
      this.log.info(
        { gen: worker.generation, worker: worker.index, pid: worker.pid, status: line.slice(7) },
        'worker status',
      );
    }
  }

  private scheduleReadyProbe(worker: Worker): void {
    this.context.os.setTimer(POLL_READINESS_INTERVAL_MS, () =>
      this.dispatch({ type: 'ready-probe', worker }),
    );
  }

  private scheduleConnectionsSample(): void {
    this.context.os.setTimer(CONNECTION_SAMPLE_INTERVAL_MS, () =>
      this.dispatch({ type: 'connections-sample' }),
    );
  }

  /**
   * Counts, in /proc, the connections of workers that do not report theirs (for
   * status), and finishes a draining one that stopped accepting and holds none:
   * an unmodified program may close its listener on the drain signal and wait.
   */
  private onConnectionsSample(): void {
    if (this.state === 'stopped') return;
    for (const generation of this.generations) {
      for (const worker of generation.liveWorkers) {
        if (worker.connections !== undefined || worker.pid === undefined) continue;
        worker.observedConnections = this.context.os.countConnections(worker.pid, this.context.listeners);
        const idle =
          worker.state === 'draining' &&
          worker.observedConnections === 0 &&
          !this.context.os.pollsListeners(worker.pid, this.listenerInodes);
        worker.idleSamples = idle ? worker.idleSamples + 1 : 0;
        if (worker.idleSamples >= IDLE_DRAIN_SAMPLES) {
          this.log.info(
            { gen: generation.id, worker: worker.index, pid: worker.pid },
            'worker finished: it no longer accepts and holds no connection',
          );
          this.kill(worker, 'SIGKILL');
        }
      }
    }
    this.scheduleConnectionsSample();
  }

  /** `--ready poll`: a worker is ready once /proc shows it waiting for connections on the listeners. */
  private onReadyProbe(worker: Worker): void {
    if (worker.state !== 'starting' || worker.pid === undefined) return;
    if (this.context.os.pollsListeners(worker.pid, this.listenerInodes)) this.onReadySignal(worker, 'poll');
    else this.scheduleReadyProbe(worker);
  }

  private get listenerInodes(): Set<number> {
    return new Set(
      this.context.listeners.flatMap((listener) => (listener.inode === undefined ? [] : [listener.inode])),
    );
  }

  /** A worker said ready one way; whether that counts depends on `--ready`. */
  private onReadySignal(worker: Worker, via: ReadyVia): void {
    const mode = this.options.ready.kind;
    if (mode === via || (mode === 'auto' && via !== 'delay')) this.onWorkerReady(worker, via);
  }

  private onWorkerReady(worker: Worker, via: ReadyVia): void {
    if (!worker.markReady(this.now())) return;
    const generation = this.generationOf(worker);
    this.log.info(
      {
        gen: generation.id,
        worker: worker.index,
        pid: worker.pid,
        durationMs: this.now() - worker.startedAt,
        via,
      },
      'worker ready',
    );
    this.report({
      kind: 'worker-ready',
      generation: generation.id,
      worker: worker.index,
      ready: generation.currentWorkers.filter((current) => current.state === 'ready').length,
      of: generation.slots.length,
    });
    this.injections.onWorkerReady(worker, generation);
    const replaced = this.replacements.get(worker);
    if (replaced) {
      // The replacement serves: now the worker it replaces may drain.
      this.replacements.delete(worker);
      this.log.info(
        { gen: generation.id, worker: worker.index, pid: worker.pid, replaced: replaced.pid },
        'worker replaced',
      );
      this.drainWorker(replaced);
    }
    if (generation.state === 'starting' && isGenerationReady(generation.currentWorkers))
      this.onGenerationReady(generation);
  }

  /**
   * Every worker of `generation` is ready. Sessions the app moves go over first, while the old
   * generation still serves, so that a new version that fails to adopt them fails the reload and
   * loses nobody; then it takes over.
   */
  private onGenerationReady(generation: Generation): void {
    if (this.handoff.isSwitching(generation)) return;
    const previous = this.activeGeneration;
    const flushTimeoutMs = handoffFlushTimeoutMs(this.options.drainTimeoutMs);
    const round = previous && this.handoff.start('switch', previous, generation, flushTimeoutMs);
    if (!round) this.promote(generation);
    // Otherwise the round's end promotes it, or fails it (onHandoffEnded).
  }

  /** A handoff round ended: a switch round lets its generation take over, or fails the reload. */
  private onHandoffEnded(round: HandoffRound): void {
    const generation = round.to;
    if (round.kind !== 'switch' || generation.state !== 'starting' || this.state === 'stopping') return;
    if (round.outcome === 'committed') this.promote(generation);
    else if (round.abortCause === 'no-answer') {
      // A worker that exited fails the generation through its exit, with its code and stderr.
      this.failGeneration(generation, { kind: 'handoff-failed', reason: round.abortReason ?? 'aborted' });
    }
  }

  private promote(generation: Generation): void {
    const previous = this.generations.filter((other) => other !== generation && other.state === 'active');
    generation.state = 'active';
    generation.activeAt = this.now();
    this.log.info(
      {
        gen: generation.id,
        version: generation.version,
        durationMs: generation.activeAt - generation.startedAt,
      },
      'generation active',
    );
    if (this.state === 'starting') this.state = 'running';
    this.report({
      kind: 'generation-active',
      generation: generation.id,
      readyMs: generation.activeAt - generation.startedAt,
      draining: previous.map((old) => old.id),
    });
    for (const old of previous) this.drainGeneration(old);
    // What the old workers accepted during the switch round moves too.
    for (const old of previous) {
      this.handoff.start('sweep', old, generation, handoffFlushTimeoutMs(this.options.drainTimeoutMs));
    }
    this.afterReload();
  }

  private failGeneration(generation: Generation, failure: StartFailure): void {
    generation.state = 'failed';
    generation.failure = failure;
    generation.cancelTimers();
    const error = new GenerationFailedError(generation.id, failure);
    const facts =
      failure.kind === 'worker-exited'
        ? { exitCode: failure.exitCode, signal: failure.signal, stderrTail: failure.stderrTail }
        : {};
    const first = this.state === 'starting';
    this.log.error(
      { gen: generation.id, reason: failure.kind, ...facts },
      first ? `start failed: ${error.message}` : `reload failed: ${error.message}`,
    );
    this.report({ kind: 'reload-failed', generation: generation.id, failure, message: error.message });
    this.signalDrain(generation);
    if (first && (this.options.watch?.length ?? 0) > 0) {
      // In development a broken first save is no reason to stop: the next save reloads.
      this.log.warn({ gen: generation.id }, 'waiting for a change to start again');
    } else if (first) {
      this.startFailure = error;
      this.onStop(false, 'start failed');
      return;
    }
    this.afterReload();
  }

  private afterReload(): void {
    if (!this.reloadQueued || this.state === 'stopping') return;
    this.reloadQueued = false;
    this.log.info('queued reload starting');
    this.startGeneration();
  }

  // ---- replace one worker -------------------------------------------------

  /**
   * Replaces a serving worker without dropping anyone (`--max-memory`): its
   * replacement starts in the same slot and, once ready, the old one drains.
   * A worker that ran less than STABLE_UPTIME_MS is left alone, so that an app
   * whose baseline is over the limit is not replaced in a loop.
   */
  private onReplaceWorker(pid: number, reason: string, facts: Record<string, unknown>): void {
    const generation = this.activeGeneration;
    const worker = generation?.currentWorkers.find(
      (candidate) => candidate.pid === pid && candidate.state === 'ready',
    );
    if (!generation || !worker || this.state !== 'running') return;
    if ([...this.replacements.values()].includes(worker) || this.now() - worker.startedAt < STABLE_UPTIME_MS)
      return;
    let command: string;
    try {
      command = this.context.os.resolveCommand(this.options.command, this.context.env, this.context.cwd);
    } catch {
      this.log.error(
        { gen: generation.id, worker: worker.index, pid },
        'worker not replaced: command not found',
      );
      return;
    }
    this.log.warn({ gen: generation.id, worker: worker.index, pid, reason, ...facts }, 'replacing worker');
    this.spawnWorker(generation, worker.index, command);
    const replacement = generation.slots[worker.index]?.current;
    if (replacement && replacement !== worker) this.replacements.set(replacement, worker);
  }

  /** Drains one worker, with its own deadline. */
  private drainWorker(worker: Worker): void {
    if (!worker.markDraining()) return;
    this.kill(worker, this.options.drainSignal);
    this.context.os.setTimer(this.options.drainTimeoutMs, () =>
      this.dispatch({ type: 'worker-kill-due', worker }),
    );
  }

  // ---- scale --------------------------------------------------------------

  private get targetWorkers(): number {
    return this.scaledWorkers ?? this.options.workers;
  }

  /** Changes the number of workers of the serving generation (and of the next ones), without a reload. */
  private onScale(request: number | 'more' | 'fewer', source: string): ScaleAnswer {
    if (this.state === 'stopping' || this.state === 'stopped') {
      this.log.warn({ source }, 'scale ignored: the master is stopping');
      return { outcome: 'ignored', reason: 'stopping' };
    }
    const from = this.targetWorkers;
    const wanted = request === 'more' ? from + 1 : request === 'fewer' ? from - 1 : request;
    const to = Math.max(1, Math.min(MAX_WORKERS, wanted));
    this.scaledWorkers = to;
    const active = this.activeGeneration;
    if (active) this.resizeGeneration(active, to);
    this.log.info({ source, from, to, gen: active?.id }, 'workers scaled');
    return { outcome: 'scaled', from, to };
  }

  private resizeGeneration(generation: Generation, size: number): void {
    while (generation.slots.length > size) {
      const slot = generation.slots.pop() as Slot;
      slot.restartTimer?.cancel();
      const worker = slot.current;
      // Its slot is gone, so its exit restarts nothing; the drain deadline still holds.
      if (worker) this.drainWorker(worker);
    }
    if (generation.slots.length >= size) return;
    let command: string;
    try {
      command = this.context.os.resolveCommand(this.options.command, this.context.env, this.context.cwd);
    } catch {
      this.log.error(
        { gen: generation.id, command: this.options.command },
        'workers not added: command not found',
      );
      return;
    }
    while (generation.slots.length < size) this.spawnWorker(generation, generation.addSlot(), command);
  }

  // ---- inject -------------------------------------------------------------

  /** Sends a hot patch to the workers `target` names; `reply` gets how it went in each. */
  private onInject(
    patch: PatchSource,
    target: InjectTarget,
    source: string,
    reply: (answer: InjectAnswer) => void,
  ): void {
    if (this.state === 'stopping' || this.state === 'stopped') {
      this.log.warn({ source, file: patch.file, hash: patch.hash }, 'patch refused: the master is stopping');
      reply({ outcome: 'ignored', reason: 'stopping', message: 'The master is stopping: nothing to patch.' });
      return;
    }
    const chosen = chooseWorkers(target, this.generations);
    if ('message' in chosen) {
      this.log.warn(
        { source, file: patch.file, hash: patch.hash, target },
        `patch refused: ${chosen.message}`,
      );
      reply({ outcome: 'ignored', reason: 'no-workers', message: chosen.message });
      return;
    }
    this.log.info(
      {
        source,
        file: patch.file,
        hash: patch.hash,
        gen: chosen.generation.id,
        workers: chosen.workers.length,
      },
      'patch sent',
    );
    this.injections.inject(patch, chosen, reply);
  }

  /**
   * Tries a hot patch in a scratch worker of the active generation's code (docs/control.md): no
   * listener, no notify pipe, BATON_SCRATCH=1; `reply` gets the outcome once the scratch worker is gone.
   */
  private onDryRun(patch: PatchSource, source: string, reply: (answer: DryRunAnswer) => void): void {
    const facts = { source, file: patch.file, hash: patch.hash };
    if (this.state === 'stopping' || this.state === 'stopped') {
      this.log.warn(facts, 'patch dry run refused: the master is stopping');
      reply({ outcome: 'ignored', reason: 'stopping', message: 'The master is stopping: no dry run.' });
      return;
    }
    const generation = this.activeGeneration;
    if (!generation) {
      this.log.warn(facts, 'patch dry run refused: no generation is active');
      reply({
        outcome: 'ignored',
        reason: 'no-workers',
        message: 'No generation is active: there is no code to try the patch in.',
      });
      return;
    }
    let command: string;
    try {
      command = this.context.os.resolveCommand(this.options.command, this.context.env, this.context.cwd);
    } catch {
      this.log.error({ ...facts, command: this.options.command }, 'patch dry run refused: command not found');
      reply({
        outcome: 'ignored',
        reason: 'command-not-found',
        message: `Command not found or not executable: '${this.options.command}': no scratch worker to try the patch in.`,
      });
      return;
    }
    this.log.info({ ...facts, gen: generation.id }, 'patch dry run starting');
    this.dryRuns.start(
      {
        patch,
        earlier: this.injections.keptPatches(generation),
        generation: generation.id,
        spawn: {
          command,
          args: this.options.args,
          env: {
            ...this.inheritedEnv(),
            // No socket: serve() in the child API resolves without listening, and nobody can connect.
            LISTEN_FDS: '0',
            BATON_SCRATCH: '1',
            BATON_GENERATION: String(generation.id),
            BATON_VERSION: generation.version,
            BATON_DRAIN_SIGNAL: this.options.drainSignal,
            BATON_DRAIN_TIMEOUT_MS: String(this.options.drainTimeoutMs),
          },
          listenerFds: [],
          notifyPipe: false,
          cwd: this.context.cwd,
          parentDeathSignal: this.options.drainSignal,
          ...(this.options.uid === undefined ? {} : { uid: this.options.uid }),
          ...(this.options.gid === undefined ? {} : { gid: this.options.gid }),
        },
        startTimeoutMs: this.options.readyTimeoutMs,
        stopSignal: this.options.drainSignal,
      },
      reply,
    );
  }

  // ---- drain --------------------------------------------------------------

  private drainGeneration(generation: Generation): void {
    generation.state = 'draining';
    this.log.info({ gen: generation.id, workers: generation.liveWorkers.length }, 'generation draining');
    this.report({
      kind: 'generation-draining',
      generation: generation.id,
      workers: generation.liveWorkers.length,
    });
    this.signalDrain(generation);
    for (const id of generationsOverDrainLimit(this.generations, this.options.maxDraining)) {
      const oldest = this.generations.find((candidate) => candidate.id === id) as Generation;
      this.log.warn(
        { gen: id, maxDraining: this.options.maxDraining },
        'too many generations draining: cutting the oldest short',
      );
      this.force(oldest);
    }
  }

  /** Asks every live worker of a generation to drain, and starts the generation's drain deadline. */
  private signalDrain(generation: Generation): void {
    generation.cancelTimers();
    generation.drainStartedAt ??= this.now();
    for (const worker of generation.liveWorkers) {
      if (worker.markDraining()) this.kill(worker, this.options.drainSignal);
    }
    if (generation.liveWorkers.length === 0) {
      this.retire(generation);
      return;
    }
    generation.drainTimer ??= this.context.os.setTimer(this.options.drainTimeoutMs, () =>
      this.dispatch({ type: 'drain-timeout', generation }),
    );
  }

  private onDrainTimeout(generation: Generation): void {
    if (generation.liveWorkers.length === 0) return;
    this.log.warn(
      {
        gen: generation.id,
        workers: generation.liveWorkers.length,
        drainTimeoutMs: this.options.drainTimeoutMs,
      },
      'drain timeout: killing the workers left',
    );
    if (this.state === 'stopping') this.killedAtStopDeadline = true;
    this.force(generation);
  }

  private force(generation: Generation): void {
    generation.forced = true;
    for (const worker of generation.liveWorkers) this.kill(worker, 'SIGKILL');
  }

  private retire(generation: Generation): void {
    generation.drainTimer?.cancel();
    if (generation.retiredAt !== undefined) return;
    generation.retiredAt = this.now();
    this.handoff.onGenerationRetired(generation.id);
    if (generation.state === 'draining') {
      generation.state = 'retired';
      this.log.info(
        {
          gen: generation.id,
          drainMs: generation.retiredAt - (generation.drainStartedAt ?? generation.retiredAt),
          forced: generation.forced,
        },
        'generation retired',
      );
      this.report({
        kind: 'generation-retired',
        generation: generation.id,
        drainMs: generation.retiredAt - (generation.drainStartedAt ?? generation.retiredAt),
        forced: generation.forced,
      });
    }
    const ended = this.generations.filter((candidate) => candidate.retiredAt !== undefined);
    for (const old of ended.slice(0, Math.max(0, ended.length - RETIRED_GENERATIONS_KEPT))) {
      this.generations.splice(this.generations.indexOf(old), 1);
    }
  }

  // ---- workers that exit --------------------------------------------------

  private onWorkerExited(worker: Worker, exitCode: number | null, signal: NodeJS.Signals | null): void {
    const stateBefore = worker.state;
    worker.markExited(exitCode, signal, this.now());
    this.handoff.onWorkerExited(worker);
    this.injections.onWorkerExited(worker);
    const generation = this.generationOf(worker);
    const uptimeMs = this.now() - worker.startedAt;
    const expected = stateBefore === 'draining';
    this.log[expected ? 'info' : 'warn'](
      {
        gen: generation.id,
        worker: worker.index,
        pid: worker.pid,
        exitCode,
        signal,
        uptimeMs,
        state: stateBefore,
      },
      'worker exited',
    );
    if (generation.state === 'starting') {
      this.failGeneration(generation, {
        kind: 'worker-exited',
        worker: worker.index,
        pid: worker.pid,
        exitCode,
        signal,
        stderrTail: worker.stderr.lines().join('\n'),
        ...(stateBefore === 'ready' ? { afterReady: true } : {}),
      });
    } else if (generation.state === 'active') {
      const slot = generation.slots[worker.index];
      const replaced = this.replacements.get(worker);
      if (replaced && slot?.current === worker && replaced.alive) {
        // A replacement that never served: the worker it was to replace goes on serving.
        this.replacements.delete(worker);
        slot.current = replaced;
        this.log.warn(
          { gen: generation.id, worker: worker.index, pid: replaced.pid },
          'worker replacement failed: keeping the old one',
        );
      } else if (slot?.current === worker) {
        this.replacements.delete(worker);
        this.scheduleRestart(generation, worker.index, uptimeMs);
      }
    } else if (generation.liveWorkers.length === 0) {
      this.retire(generation);
    }
    this.finishIfStopped();
  }

  private scheduleRestart(generation: Generation, slotIndex: number, uptimeMs: number): void {
    generation.forgetExitedWorkers(EXITED_WORKERS_KEPT);
    const slot = generation.slots[slotIndex];
    if (!slot || this.state === 'stopping') return;
    slot.consecutiveCrashes = crashesAfterExit(slot.consecutiveCrashes, uptimeMs);
    const delayMs = restartDelayMs(slot.consecutiveCrashes);
    const facts = { gen: generation.id, worker: slotIndex, crashes: slot.consecutiveCrashes, delayMs };
    if (isCrashLoop(slot.consecutiveCrashes))
      this.log.error(facts, 'worker crash loop: restarting with backoff');
    else this.log.warn(facts, 'worker restarting');
    slot.restartTimer = this.context.os.setTimer(delayMs, () =>
      this.dispatch({ type: 'restart-due', generation, slot: slotIndex }),
    );
  }

  private onRestartDue(generation: Generation, slotIndex: number): void {
    const slot = generation.slots[slotIndex];
    if (!slot || generation.state !== 'active' || this.state === 'stopping') return;
    slot.restartTimer = undefined;
    slot.restarts++;
    let command: string;
    try {
      command = this.context.os.resolveCommand(this.options.command, this.context.env, this.context.cwd);
    } catch {
      this.log.error(
        { gen: generation.id, worker: slotIndex, command: this.options.command },
        'worker not restarted: command not found',
      );
      this.scheduleRestart(generation, slotIndex, 0);
      return;
    }
    this.spawnWorker(generation, slotIndex, command);
  }

  private onReadyTimeout(worker: Worker): void {
    if (worker.state !== 'starting') return;
    const generation = this.generationOf(worker);
    if (generation.state === 'starting') {
      this.failGeneration(generation, {
        kind: 'ready-timeout',
        notReady: generation.currentWorkers.filter((w) => w.state === 'starting').map((w) => w.index),
        timeoutMs: this.options.readyTimeoutMs,
      });
      return;
    }
    // A restarted worker that never says ready: drain it; its exit refills the slot.
    this.log.warn(
      {
        gen: generation.id,
        worker: worker.index,
        pid: worker.pid,
        readyTimeoutMs: this.options.readyTimeoutMs,
      },
      'worker not ready in time: replacing it',
    );
    if (worker.markDraining()) this.kill(worker, this.options.drainSignal);
    this.context.os.setTimer(this.options.drainTimeoutMs, () =>
      this.dispatch({ type: 'worker-kill-due', worker }),
    );
  }

  private kill(worker: Worker, signal: NodeJS.Signals): void {
    if (worker.alive) worker.process?.kill(signal);
  }

  // ---- stop ---------------------------------------------------------------

  private onStop(fast: boolean, source: string): void {
    if (this.state === 'stopped') return;
    if (this.state === 'stopping') {
      const sinceStop = this.now() - (this.stopStartedAt ?? 0);
      if (!fast && source === 'SIGINT' && sinceStop < REPEATED_INTERRUPT_MS) {
        this.log.debug({ source, sinceStopMs: sinceStop }, 'the same Ctrl-C again: ignored');
      } else if (fast || source === 'SIGINT') {
        this.log.warn({ source }, 'fast stop: killing every worker');
        for (const generation of this.generations) this.force(generation);
        this.dryRuns.stopAll(true);
      } else {
        this.log.info({ source }, 'stop already in progress; Ctrl-C again or SIGQUIT stops at once');
      }
      return;
    }
    this.state = 'stopping';
    this.stopStartedAt = this.now();
    this.reloadQueued = false;
    this.log.info({ source, fast }, fast ? 'stopping now' : 'stopping: draining every generation');
    this.report({ kind: 'stopping', fast });
    this.handoff.abortAll('the master is stopping');
    // Close the master's copies: each socket closes for good when its last worker stops accepting.
    for (const listener of this.context.listeners) listener.close();
    this.dryRuns.stopAll(fast);
    for (const generation of this.generations) {
      generation.cancelTimers();
      if (generation.state === 'starting' || generation.state === 'active') this.drainGeneration(generation);
      if (fast) this.force(generation);
    }
    this.finishIfStopped();
    if (!fast) this.context.os.setTimer(STOP_REMINDER_MS, () => this.dispatch({ type: 'stop-reminder' }));
  }

  /** A stop that takes long says what it waits for, and how to cut it short. */
  private remindOfStop(): void {
    if (this.state !== 'stopping') return;
    const waiting = this.generations.filter((generation) => generation.liveWorkers.length > 0);
    if (waiting.length === 0) return;
    const connections = (generation: Generation) =>
      generation.liveWorkers.reduce((sum, worker) => sum + (worker.connections ?? 0), 0);
    const killInMs = Math.max(
      0,
      ...waiting.map(
        (generation) => (generation.drainStartedAt ?? this.now()) + this.options.drainTimeoutMs - this.now(),
      ),
    );
    this.log.info(
      {
        generations: waiting.map((generation) => ({
          gen: generation.id,
          workers: generation.liveWorkers.length,
          connections: connections(generation),
        })),
        killInMs,
      },
      `still stopping: waiting for ${waiting.reduce((sum, generation) => sum + connections(generation), 0)} open connection(s) to end, at most ${Math.ceil(killInMs / 1000)} s more (--drain-timeout); Ctrl-C again or SIGQUIT stops at once`,
    );
    this.context.os.setTimer(STOP_REMINDER_MS, () => this.dispatch({ type: 'stop-reminder' }));
  }

  private finishIfStopped(): void {
    if (this.state !== 'stopping') return;
    if (this.generations.some((generation) => generation.liveWorkers.length > 0)) return;
    if (this.dryRuns.running) return;
    this.state = 'stopped';
    const exitCode = this.startFailure
      ? EXIT_CODES.startFailed
      : this.killedAtStopDeadline
        ? EXIT_CODES.drainForced
        : EXIT_CODES.ok;
    this.log.info({ exitCode }, 'stopped');
    this.resolveFinished(exitCode);
  }

  /** Why the first generation failed, if it did (the CLI prints it). */
  get startError(): GenerationFailedError | undefined {
    return this.startFailure;
  }
}
