/**
 * Master: owns the listeners and wires the rooms that do the work (docs/architecture.md): the upgrade
 * (upgrade.ts), readiness (readiness.ts), spawning (spawn.ts), the slots of the serving generation
 * (slots.ts), session handoff (handoff.ts), hot patches and their dry runs (inject.ts, dry-run.ts).
 * Everything that changes state is an event, queued and applied one at a time by `dispatch`: a signal
 * handler, a timer or a worker's message only queues. The master itself keeps the stop and the snapshot.
 */

import {
  patchFailure,
  readWorkerMessage,
  type WorkerMessageKind,
  type WorkerWire,
} from '../child/protocol.js';
import {
  type ConfigLabel,
  describeSettings,
  type PendingConfig,
  type StartSettings,
  settingsChange,
} from './config.js';
import { stopWait } from './decisions.js';
import { type DryRunAnswer, DryRunner } from './dry-run.js';
import { EXIT_CODES, type GenerationFailedError } from './errors.js';
import { Generation } from './generation.js';
import { connectionsInBatch, HandoffRelay, parseHandoffMessage } from './handoff.js';
import { type InjectAnswer, InjectRelay, type InjectTarget, type PatchSource } from './inject.js';
import type { Logger } from './log.js';
import type {
  ControlledMaster,
  InheritedListener,
  MasterEvent,
  MasterSnapshot,
  MasterState,
  Progress,
  ReexecAnswer,
  ReexecStep,
  ReloadAnswer,
} from './model.js';
import type { ListenSpec, MasterOptions } from './options.js';
import type { Os } from './os.js';
import { Readiness } from './readiness.js';
import type {
  BatonProgram,
  CarriedConnection,
  CarriedGeneration,
  CarriedMaster,
  CarriedWorker,
  Trial,
} from './reexec.js';
import { SlotKeeper } from './slots.js';
import { Spawner } from './spawn.js';
import { Upgrade } from './upgrade.js';
import { Watchdog } from './watchdog.js';
import { Worker } from './worker.js';

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
  /** The config file the settings came from (`--config`), if any. */
  config?: ConfigLabel;
  /**
   * Reads a config file again (`file`, or the one of `config` when undefined) and merges it with the
   * command line as at the start; throws a UsageError of one line when it does not read or validate.
   */
  readConfig?: (file: string | undefined) => StartSettings;
  /** Binds listeners a config reload adds (each logged as at the start); rejects with one line if one cannot be. */
  bindListeners?: (specs: ListenSpec[]) => Promise<InheritedListener[]>;
  /** `baton reexec` (supervisor/reexec.ts); a master without it refuses one. */
  reexec?: ReexecPorts;
}

/** What a re-exec needs beyond the master: the trial, the exec, and the program that runs now. */
export interface ReexecPorts {
  /** Tries `program` on the master's state now: its version, or a rejection with one line. */
  tryProgram(program: string, master: CarriedMaster): Promise<Trial>;
  /** Replaces the master's program (never returns), or throws with one line and changes nothing. */
  execute(program: string, master: CarriedMaster, connections: CarriedConnection[]): never;
  /** The program the master runs now, when the master started, and how many re-execs came before. */
  program(): BatonProgram & { masterStartedAt: number; reexecs: number };
  /** The entry point a re-exec runs for `asked` (an empty string: the one the master runs, as on disk now). */
  resolveProgram(asked: string): string;
}

/** How long a re-exec waits for the messages sent to workers to be written. */
export const REEXEC_FLUSH_MS = 2_000;

type ReexecEvent = Extract<MasterEvent, { type: 'reexec' }>;
type ReloadEvent = Extract<MasterEvent, { type: 'reload' }>;

/**
 * A SIGINT this soon after the one that started the stop is the same Ctrl-C again (the terminal sends
 * it to the whole process group, and npm passes it on too): ignored. A later one stops at once.
 */
export const REPEATED_INTERRUPT_MS = 1_000;

/** While a stop waits for connections to end, the master says so this often. */
export const STOP_REMINDER_MS = 5_000;

type Handlers = { [K in MasterEvent['type']]: (event: Extract<MasterEvent, { type: K }>) => void };

type WorkerMessageHandlers = {
  [K in WorkerMessageKind]: (worker: Worker, message: WorkerWire[K], handle: unknown) => void;
};

/** The supervisor: one per `baton start`. */
export class Master implements ControlledMaster {
  state: MasterState = 'starting';
  /** Resolves with the exit code once every worker is gone after a stop. */
  readonly finished: Promise<number>;

  private readonly queue: MasterEvent[] = [];
  private dispatching = false;
  private startFailure: GenerationFailedError | undefined;
  /** When the stop began (for a repeated Ctrl-C). */
  private stopStartedAt: number | undefined;
  private resolveFinished: (exitCode: number) => void = () => {};
  /** The settings a new generation starts with: the start's, until a config reload changes them. */
  private settings: MasterOptions;
  /** The config file they came from, if any. */
  private config: ConfigLabel | undefined;
  /** The listeners a new generation's workers inherit, in order: the start's, until a config reload. */
  private listeners: readonly InheritedListener[];
  /** Every listener whose master copy is open (closed at the stop, or once a config reload left it unused). */
  private readonly heldListeners: Set<InheritedListener>;
  /** A config reload waits for the listeners it adds to be bound. */
  private bindingListeners = false;
  private readonly followers = new Set<(progress: Progress) => void>();
  /** The re-exec under way, if any. */
  private reexecution: ReexecEvent | undefined;
  /** Reloads asked during a re-exec: they wait for it. */
  private readonly reloadsWaiting: ReloadEvent[] = [];

  private readonly spawner: Spawner;
  private readonly readiness: Readiness;
  /** Reload → switch → drain → retire: the generations and their life. */
  private readonly upgrade: Upgrade;
  /** Restarts, replacements and scale of the serving generation. */
  private readonly slots: SlotKeeper;
  /** `--watchdog`: serving workers that stop pinging are replaced. */
  private readonly watchdog: Watchdog;
  /** Moves open sessions from old workers to new ones (docs/handoff.md). */
  private readonly handoff: HandoffRelay;
  /** Sends hot patches to workers and keeps what each generation was patched with. */
  private readonly injections: InjectRelay;
  /** Tries patches in scratch workers (`inject --dry-run`), outside every generation. */
  private readonly dryRuns: DryRunner;

  /** The one dispatcher's table: each event kind and the room that takes it. */
  private readonly handlers: Handlers = {
    start: () => {
      this.upgrade.start();
      this.readiness.startSampling();
      this.watchdog.start();
    },
    reload: (event) => {
      if (this.reexecution) {
        this.log.info({ source: event.source }, 'reload waits for the reexec under way');
        this.reloadsWaiting.push(event);
        return;
      }
      const reply = event.reply ?? (() => {});
      if (event.config === undefined) reply(this.upgrade.onReload(event.source));
      else this.onConfigReload(event.config, event.source, reply);
    },
    'config-listeners-bound': (event) =>
      this.onConfigListenersBound(event.pending, event.listeners ?? [], event.error),
    stop: (event) => this.onStop(event.fast, event.source),
    'worker-message': (event) => this.onWorkerMessage(event.worker, event.message, event.handle),
    'worker-exited': (event) => {
      const { worker } = event;
      const stateBefore = worker.state;
      worker.markExited(event.exitCode, event.signal, this.context.os.now());
      this.handoff.onWorkerExited(worker);
      this.injections.onWorkerExited(worker);
      this.upgrade.onWorkerExited(worker, stateBefore);
      this.finishIfStopped();
    },
    'worker-notified': (event) => this.readiness.onNotified(event.worker, event.line),
    'ready-delay-passed': (event) => this.readiness.onSignal(event.worker, 'delay'),
    'ready-probe': (event) => this.readiness.onProbe(event.worker),
    'own-port-check': (event) => this.readiness.onOwnPortCheck(event.worker),
    'connections-sample': () => {
      if (this.state !== 'stopped') this.readiness.onSample();
    },
    'watchdog-check': () => this.watchdog.onCheck(),
    'replace-worker': (event) => this.slots.onReplaceWorker(event.pid, event.reason, event.facts ?? {}),
    scale: (event) => {
      const answer = this.refusedWhileStopping('scale ignored: the master is stopping', {
        source: event.source,
      })
        ? ({ outcome: 'ignored', reason: 'stopping' } as const)
        : this.slots.onScale(event.workers, event.source);
      event.reply?.(answer);
    },
    'ready-timeout': (event) => this.upgrade.onReadyTimeout(event.worker),
    'worker-kill-due': (event) => this.kill(event.worker, 'SIGKILL'),
    'stop-reminder': () => this.remindOfStop(),
    'drain-timeout': (event) => this.upgrade.onDrainTimeout(event.generation),
    'restart-due': (event) => this.slots.onRestartDue(event.generation, event.slot),
    'handoff-relayed': (event) => this.handoff.onRelayed(event.relay, event.error),
    'handoff-deadline': (event) => this.handoff.onDeadline(event.round),
    'handoff-ended': (event) => this.upgrade.onHandoffEnded(event.round),
    inject: (event) => this.onInject(event.patch, event.target, event.source, event.reply ?? (() => {})),
    'inject-timeout': (event) => this.injections.onTimeout(event.round),
    'inject-dry-run': (event) => this.onDryRun(event.patch, event.source, event.reply ?? (() => {})),
    'dry-run': (event) => {
      this.dryRuns.on(event.event);
      this.finishIfStopped();
    },
    reexec: (event) => this.onReexec(event),
    'reexec-tried': (event) => this.onReexecTried(event.trial, event.error),
    'reexec-flushed': (event) => this.onReexecFlushed(event.flushed),
  };

  /** The IPC messages from workers (child/protocol.ts), each kind and the room that takes it. */
  private readonly workerMessageHandlers: WorkerMessageHandlers = {
    ready: (worker) => this.readiness.onSignal(worker, 'ipc'),
    listening: (worker) => this.readiness.onSignal(worker, 'listening'),
    connections: (worker, message) => {
      worker.connections = message.count;
    },
    watchdog: (worker) => this.watchdog.onPing(worker),
    exposed: (worker, message) => this.injections.onExposed(worker, message.names),
    injected: (worker, message) =>
      this.injections.onInjected(worker, message.id, message.ok ? undefined : patchFailure(message.error)),
    'handoff-hooks': (worker, message) => this.toHandoff(worker, message),
    'handoff-connection': (worker, message, handle) => {
      if (handle !== undefined) this.handoff.onHandle(worker, message, handle);
    },
    'handoff-batch': (worker, message) => {
      const batch = worker.process?.descriptors?.take(message.batch);
      this.log.debug(
        {
          gen: worker.generation,
          worker: worker.index,
          pid: worker.pid,
          batch: message.batch,
          connections: batch?.fds.length ?? 0,
          announced: message.ids.length,
        },
        'handoff batch received',
      );
      this.handoff.onBatch(worker, message.ids, batch && connectionsInBatch(batch));
    },
    'handoff-finished': (worker, message) => this.toHandoff(worker, message),
    'handoff-staged': (worker, message) => this.toHandoff(worker, message),
    'handoff-states': (worker, message) => this.toHandoff(worker, message),
    'handoff-prepared': (worker, message) => this.toHandoff(worker, message),
    'adopt-refused': (worker, message) => this.toHandoff(worker, message),
    adoptions: (worker, message) => this.toHandoff(worker, message),
  };

  constructor(
    readonly options: MasterOptions,
    private readonly context: MasterContext,
  ) {
    this.finished = new Promise((resolve) => {
      this.resolveFinished = resolve;
    });
    this.settings = options;
    this.config = context.config;
    this.listeners = context.listeners;
    this.heldListeners = new Set(context.listeners);
    const { os, logger } = context;
    // The rooms read the master's settings and listeners now through these: a config reload replaces them.
    const current = { options: () => this.settings, listeners: () => this.listeners };
    const dispatch = (event: MasterEvent) => this.dispatch(event);
    const masterState = () => this.state;
    const resolveCommand = (generation: Generation) => this.spawner.resolveCommand(generation.settings);
    const startWorker = (generation: Generation, slotIndex: number, command: string) => {
      const worker = this.spawner.spawnWorker(generation, slotIndex, command);
      if (worker) this.readiness.watch(worker, command);
    };
    const kill = (worker: Worker, signal: NodeJS.Signals) => this.kill(worker, signal);
    const report = (progress: Progress) => this.report(progress);
    this.spawner = new Spawner({
      ...context,
      get options() {
        return current.options();
      },
      get listeners() {
        return current.listeners();
      },
      dispatch,
    });
    this.handoff = new HandoffRelay({
      logger,
      now: () => os.now(),
      send: (worker, message, handle, onSent) => {
        if (!worker.alive || !worker.process?.send) return false;
        const link = worker.process.descriptors;
        if (handle && message.baton === 'adopt' && link && this.handoff.usesFdChannel(worker)) {
          // In a batch of the worker's descriptor channel, with the others relayed in this turn.
          const { relay, listener, state, staged } = message;
          link.send(staged ? { relay, listener, staged } : { relay, listener, state }, handle.fd).then(
            () => onSent(null),
            (error: Error) => onSent(error),
          );
          return true;
        }
        worker.process.send(message, handle, onSent);
        return true;
      },
      relayed: (relay, error) => dispatch({ type: 'handoff-relayed', relay, error }),
      deadline: (round, ms) => os.setTimer(ms, () => dispatch({ type: 'handoff-deadline', round })),
      // Queued, not called: the round's end may start a new round, never from inside the relay.
      ended: (round) => dispatch({ type: 'handoff-ended', round }),
      report,
    });
    this.injections = new InjectRelay({
      logger,
      now: () => os.now(),
      send: (worker, message) => {
        if (!worker.alive || !worker.process?.send) return false;
        // A send that fails means the worker is gone or never reads: its exit or the deadline reports it.
        worker.process.send(message, undefined, () => {});
        return true;
      },
      deadline: (round, ms) => os.setTimer(ms, () => dispatch({ type: 'inject-timeout', round })),
    });
    this.dryRuns = new DryRunner({
      logger,
      spawn: (request, callbacks) => os.spawnWorker(request, callbacks),
      setTimer: (ms, fn) => os.setTimer(ms, fn),
      queue: (event) => dispatch({ type: 'dry-run', event }),
      writeStderr: (chunk) => context.writeStderr(chunk),
    });
    this.slots = new SlotKeeper({
      os,
      logger,
      get options() {
        return current.options();
      },
      masterState,
      activeGeneration: () => this.upgrade.activeGeneration,
      resolveCommand,
      startWorker,
      drainWorker: (worker) => this.upgrade.drainWorker(worker),
      dispatch,
      report,
    });
    this.watchdog = new Watchdog({
      os,
      logger,
      watchdogMs: options.watchdogMs,
      masterState,
      activeGeneration: () => this.upgrade.activeGeneration,
      dispatch,
      replace: (pid, reason, facts) => this.slots.onReplaceWorker(pid, reason, facts),
    });
    this.upgrade = new Upgrade({
      os,
      logger,
      get options() {
        return current.options();
      },
      config: () => this.config,
      get listeners() {
        return current.listeners();
      },
      generationEnded: () => this.closeUnusedListeners(),
      handoff: this.handoff,
      masterState,
      targetWorkers: () => this.slots.targetWorkers,
      versionLabel: () => context.versionLabel?.(),
      resolveCommand,
      startWorker,
      started: () => {
        this.state = 'running';
      },
      startFailed: (error) => {
        this.startFailure = error;
        this.onStop(false, 'start failed');
      },
      workerReady: (worker, generation) => {
        this.injections.onWorkerReady(worker, generation);
        this.slots.onWorkerReady(worker, generation);
      },
      servingWorkerExited: (worker, generation, uptimeMs) =>
        this.slots.onServingWorkerExited(worker, generation, uptimeMs),
      report,
      dispatch,
      kill,
    });
    this.readiness = new Readiness({
      os,
      logger,
      get options() {
        return current.options();
      },
      get listeners() {
        return current.listeners();
      },
      dispatch,
      ready: (worker, via) => this.upgrade.onWorkerReady(worker, via),
      listensElsewhere: (worker, ports) => this.upgrade.onListensElsewhere(worker, ports),
      generations: () => this.upgrade.generations,
      kill,
      watchdog: (worker, word) =>
        word === 'watchdog' ? this.watchdog.onPing(worker) : this.watchdog.onTrigger(worker),
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

  /** Every generation the master remembers, oldest first. */
  get generations(): readonly Generation[] {
    return this.upgrade.generations;
  }

  /** The generation that serves new connections, if any. */
  get activeGeneration(): Generation | undefined {
    return this.upgrade.activeGeneration;
  }

  /** Why the first generation failed, if it did (the CLI prints it). */
  get startError(): GenerationFailedError | undefined {
    return this.startFailure;
  }

  private get log(): Logger {
    return this.context.logger;
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
      workers: this.slots.targetWorkers,
      reloadQueued: this.upgrade.queued,
      ...(this.config ? { config: { ...this.config } } : {}),
      sessions: this.handoff.snapshot(),
      ...(this.context.reexec ? { baton: this.batonProgram() } : {}),
      generations: this.upgrade.generations.map((generation) =>
        generation.snapshot(this.injections.patchesOf(generation)),
      ),
    };
  }

  private batonProgram(): NonNullable<MasterSnapshot['baton']> {
    const { version, since, masterStartedAt, reexecs } = (this.context.reexec as ReexecPorts).program();
    return { version, since, masterStartedAt, reexecs };
  }

  private kill(worker: Worker, signal: NodeJS.Signals): void {
    if (worker.alive) worker.process?.kill(signal);
  }

  /** Whether the master is stopping (or stopped), in which case the request is refused with `message`. */
  private refusedWhileStopping(message: string, facts: Record<string, unknown>): boolean {
    if (this.state !== 'stopping' && this.state !== 'stopped') return false;
    this.log.warn(facts, message);
    return true;
  }

  // ---- config reload ------------------------------------------------------

  /**
   * SIGHUP or `baton reload --config`: reads the config file again, then reloads with it. What a new
   * generation is made of takes effect in that reload; listeners the file adds are bound first (the
   * reload waits for them), those it no longer has close once no generation uses them. A file that does
   * not read or validate, or a listener that cannot be bound, refuses the reload with one line and
   * changes nothing. Without a config file, SIGHUP reloads with the same settings.
   */
  private onConfigReload(asked: true | string, source: string, reply: (answer: ReloadAnswer) => void): void {
    const file = asked === true ? this.config?.path : asked;
    if (file === undefined || !this.context.readConfig) {
      if (source !== 'SIGHUP') {
        reply(
          this.refuseConfig(
            source,
            'The master was started without --config: give the file, as baton reload --config FILE',
          ),
        );
        return;
      }
      this.log.info({ source }, 'no --config to read again: reloading with the same settings');
      reply(this.upgrade.onReload(source));
      return;
    }
    if (this.bindingListeners) {
      reply(
        this.refuseConfig(source, 'A config reload is binding its listeners: try again once it has', file),
      );
      return;
    }
    let read: StartSettings;
    try {
      read = this.context.readConfig(file);
    } catch (error) {
      reply(this.refuseConfig(source, (error as Error).message, file));
      return;
    }
    const shown = read.config?.path ?? file;
    const change = settingsChange(this.settings, read.options, shown.slice(shown.lastIndexOf('/') + 1), {
      handedOver: this.listeners.some(
        (listener) => !this.settings.listen.some((spec) => spec.name === listener.name),
      ),
    });
    if (!change.ok) {
      reply(this.refuseConfig(source, change.message, file));
      return;
    }
    const pending: PendingConfig = { read, change, source, file, reply };
    const bind = this.context.bindListeners;
    if (change.added.length === 0) {
      this.applyConfig(pending, []);
      return;
    }
    if (!bind) {
      reply(this.refuseConfig(source, 'This master cannot bind listeners after its start', file));
      return;
    }
    this.bindingListeners = true;
    bind(change.added).then(
      (listeners) => this.dispatch({ type: 'config-listeners-bound', pending, listeners }),
      (error: Error) => this.dispatch({ type: 'config-listeners-bound', pending, error: error.message }),
    );
  }

  /** The listeners a config reload added are bound (or failed to be): its reload starts now. */
  private onConfigListenersBound(
    pending: PendingConfig,
    listeners: readonly InheritedListener[],
    error: string | undefined,
  ): void {
    this.bindingListeners = false;
    if (error !== undefined) {
      pending.reply(this.refuseConfig(pending.source, error, pending.file));
      return;
    }
    if (this.state === 'stopping' || this.state === 'stopped') {
      for (const listener of listeners) listener.close();
      pending.reply(this.upgrade.onReload(pending.source, 'config'));
      return;
    }
    this.applyConfig(pending, listeners);
  }

  private applyConfig(
    { read, change, source, file, reply }: PendingConfig,
    bound: readonly InheritedListener[],
  ): void {
    for (const warning of [...read.warnings, ...change.warnings]) this.log.warn({ config: file }, warning);
    const workersBefore = this.settings.workers;
    const addedNames = new Set(change.added.map((spec) => spec.name));
    const current = new Map(this.listeners.map((listener) => [listener.name, listener]));
    const fresh = new Map(bound.map((listener) => [listener.name, listener]));
    for (const listener of bound) this.heldListeners.add(listener);
    this.listeners = change.options.listen.flatMap((spec) => {
      const listener = addedNames.has(spec.name) ? fresh.get(spec.name) : current.get(spec.name);
      return listener ? [listener] : [];
    });
    this.settings = change.options;
    this.config = read.config;
    this.slots.onSettingsChanged(workersBefore, change.options.workers);
    this.log.info(
      {
        source,
        config: read.config?.path,
        hash: read.config?.hash,
        ...describeSettings(change.options),
        listeners: this.listeners.map((listener) => listener.name),
      },
      'config read: the next generation runs with it',
    );
    this.closeUnusedListeners();
    reply(this.upgrade.onReload(source, 'config'));
  }

  /**
   * Closes the master's copy of each listener that a config reload removed and no generation with
   * workers still uses: the socket closes for good once the last worker holding it exits.
   */
  private closeUnusedListeners(): void {
    const used = new Set<InheritedListener>(this.listeners);
    for (const generation of this.upgrade.generations) {
      if (!generation.ended) for (const listener of generation.listeners ?? []) used.add(listener);
    }
    for (const listener of this.heldListeners) {
      if (used.has(listener)) continue;
      listener.close();
      this.heldListeners.delete(listener);
      this.log.info(
        { listener: listener.name, address: listener.address, port: listener.port },
        'listener closed',
      );
    }
  }

  private refuseConfig(source: string, message: string, file?: string): ReloadAnswer {
    this.log.error({ source, ...(file === undefined ? {} : { config: file }) }, `config refused: ${message}`);
    return { outcome: 'refused', reason: 'config', message };
  }

  // ---- worker messages ----------------------------------------------------

  /** One IPC message from a worker: dispatched by its kind (child/protocol.ts). */
  private onWorkerMessage(worker: Worker, raw: unknown, handle: unknown): void {
    const read = readWorkerMessage(raw);
    if (handle !== undefined && read?.kind !== 'handoff-connection') {
      // Nothing else in baton's contract carries a handle: the relay closes it rather than hold it open.
      this.handoff.onHandle(worker, raw, handle);
    }
    if (read) {
      const handler = this.workerMessageHandlers[read.kind] as (
        worker: Worker,
        message: unknown,
        handle: unknown,
      ) => void;
      handler(worker, read.message, handle);
    } else {
      this.log.debug(
        { gen: worker.generation, worker: worker.index, pid: worker.pid },
        'worker message ignored',
      );
    }
  }

  private toHandoff(worker: Worker, raw: unknown): void {
    const message = parseHandoffMessage(raw);
    if (message) this.handoff.onMessage(worker, message);
  }

  // ---- inject -------------------------------------------------------------

  /** Sends a hot patch to the workers `target` names; `reply` gets how it went in each. */
  private onInject(
    patch: PatchSource,
    target: InjectTarget,
    source: string,
    reply: (answer: InjectAnswer) => void,
  ): void {
    const facts = { source, file: patch.file, hash: patch.hash };
    if (this.refusedWhileStopping('patch refused: the master is stopping', facts)) {
      reply({ outcome: 'ignored', reason: 'stopping', message: 'The master is stopping: nothing to patch.' });
      return;
    }
    this.injections.request(patch, target, source, this.upgrade.generations, reply);
  }

  /**
   * Tries a hot patch in a scratch worker of the active generation's code (docs/control.md): no
   * listener, no notify pipe, BATON_SCRATCH=1; `reply` gets the outcome once the scratch worker is gone.
   */
  private onDryRun(patch: PatchSource, source: string, reply: (answer: DryRunAnswer) => void): void {
    const facts = { source, file: patch.file, hash: patch.hash };
    if (this.refusedWhileStopping('patch dry run refused: the master is stopping', facts)) {
      reply({ outcome: 'ignored', reason: 'stopping', message: 'The master is stopping: no dry run.' });
      return;
    }
    const active = this.upgrade.activeGeneration;
    const settings = active?.settings ?? this.settings;
    this.dryRuns.request(
      patch,
      source,
      {
        generation: active,
        command: settings.command,
        resolveCommand: () => this.spawner.resolveCommand(settings),
        plan: (patch, generation, command) => ({
          patch,
          earlier: this.injections.keptPatches(generation),
          generation: generation.id,
          spawn: this.spawner.request(command, generation, undefined),
          startTimeoutMs: settings.readyTimeoutMs,
          stopSignal: settings.drainSignal,
        }),
      },
      reply,
    );
  }

  // ---- reexec -------------------------------------------------------------

  /**
   * `baton reexec`: tries the new program on the state now; if it takes it, waits until every message
   * sent to the workers is written, then carries the state and executes it (supervisor/reexec.ts).
   * Refused, with one line, while anything is under way that cannot be carried: nothing changes.
   */
  private onReexec(event: ReexecEvent): void {
    const ports = this.context.reexec;
    const refused = ports
      ? this.reexecution
        ? 'a reexec is under way already'
        : this.reexecBlocked()
      : 'this master cannot re-execute itself';
    if (refused !== undefined) {
      this.log.warn({ source: event.source, program: event.program }, `reexec refused: ${refused}`);
      event.reply?.({ outcome: 'refused', message: refused });
      return;
    }
    const program = (ports as ReexecPorts).resolveProgram(event.program);
    this.reexecution = { ...event, program };
    const from = (ports as ReexecPorts).program().version;
    this.log.info({ source: event.source, program, from }, 'reexec: trying the new program');
    this.reexecStep({ step: 'trying', program, from });
    let carried: CarriedMaster;
    try {
      carried = this.carry();
    } catch (error) {
      this.endReexec((error as Error).message);
      return;
    }
    (ports as ReexecPorts).tryProgram(program, carried).then(
      (trial) => this.dispatch({ type: 'reexec-tried', trial }),
      (error: Error) => this.dispatch({ type: 'reexec-tried', error: error.message }),
    );
  }

  private onReexecTried(trial: Trial | undefined, error: string | undefined): void {
    if (!this.reexecution) return;
    if (error !== undefined || !trial) {
      this.endReexec(error ?? 'the new program said nothing');
      return;
    }
    this.log.info({ version: trial.version, node: trial.node }, 'reexec: the new program takes the state');
    this.reexecStep({ step: 'tried', version: trial.version, node: trial.node });
    const blocked = this.reexecBlocked();
    if (blocked !== undefined) {
      this.endReexec(blocked);
      return;
    }
    const written = this.upgrade.generations.flatMap((generation) =>
      generation.liveWorkers.map((worker) => worker.process?.flushed?.() ?? Promise.resolve()),
    );
    const deadline = new Promise<boolean>((resolve) =>
      this.context.os.setTimer(REEXEC_FLUSH_MS, () => resolve(false)),
    );
    void Promise.race([Promise.all(written).then(() => true), deadline]).then((flushed) =>
      this.dispatch({ type: 'reexec-flushed', flushed }),
    );
  }

  private onReexecFlushed(flushed: boolean): void {
    const asked = this.reexecution;
    if (!asked) return;
    const blocked = flushed
      ? this.reexecBlocked()
      : `a worker has not read what the master sent it for ${REEXEC_FLUSH_MS / 1000} s (a blocked event loop?): the exec would cut a message in half; try again`;
    if (blocked !== undefined) {
      this.endReexec(blocked);
      return;
    }
    let carried: CarriedMaster;
    const connections: CarriedConnection[] = [];
    try {
      carried = this.carry();
      const own = asked.carry?.();
      if (own) connections.push(own);
      for (const waiting of this.reloadsWaiting) {
        const connection = waiting.carry?.();
        if (connection) connections.push(connection);
        else {
          carried.reloadsWaiting.push({
            source: waiting.source,
            ...(waiting.config === undefined ? {} : { config: waiting.config }),
          });
        }
      }
    } catch (error) {
      this.endReexec((error as Error).message);
      return;
    }
    const workers = carried.generations.reduce((sum, generation) => sum + generation.workers.length, 0);
    this.reexecStep({
      step: 'executing',
      workers,
      listeners: carried.listeners.length,
      connections: connections.length,
    });
    this.log.info(
      { program: asked.program, workers, listeners: carried.listeners.length },
      'reexec: state carried, executing the new program',
    );
    // Clients following a drain get their answer now: the drain goes on, not followed across the exec.
    this.report({ kind: 'reexecuting' });
    try {
      (this.context.reexec as ReexecPorts).execute(asked.program, carried, connections);
    } catch (error) {
      this.endReexec((error as Error).message);
    }
  }

  private reexecStep(step: ReexecStep): void {
    this.reexecution?.progress?.(step);
  }

  /** The re-exec is over in this program (refused): the reloads that waited run now. */
  private endReexec(refused: string): void {
    const asked = this.reexecution;
    this.reexecution = undefined;
    this.log.warn({ program: asked?.program }, `reexec refused: ${refused}`);
    asked?.reply?.({ outcome: 'refused', message: refused } satisfies ReexecAnswer);
    for (const waiting of this.reloadsWaiting.splice(0)) this.dispatch(waiting);
  }

  /** Why a re-exec cannot be carried now (one line), or undefined when it can. */
  private reexecBlocked(): string | undefined {
    if (this.state !== 'running') return `the master is ${this.state}`;
    const generations = this.upgrade.generations.filter((generation) => !generation.ended);
    if (generations.some((generation) => generation.state === 'starting')) {
      return 'a reload is under way: try again once it is over';
    }
    if (generations.some((generation) => generation.state === 'failed')) {
      return 'a failed generation is still stopping: try again once its workers are gone';
    }
    if (this.bindingListeners) return 'a config reload is binding its listeners: try again once it has';
    if (this.handoff.busy) return 'sessions are being handed off: try again once they are';
    if (this.injections.busy) return 'a patch is being injected: try again once it is';
    if (this.dryRuns.running) return 'a patch dry run is running: try again once it is over';
    for (const generation of generations) {
      for (const slot of generation.slots) {
        if (generation.state === 'active' && !slot.current?.alive) {
          return `worker ${slot.index} of generation ${generation.id} is being restarted: try again once it serves`;
        }
      }
      for (const worker of generation.liveWorkers) {
        if (worker.state === 'starting') {
          return `worker ${worker.index} of generation ${generation.id} is starting: try again once it is ready`;
        }
        if (!worker.process?.carry?.()) {
          return `worker ${worker.index} of generation ${generation.id} (pid ${worker.pid}) cannot be carried: it has no IPC channel`;
        }
      }
    }
    return undefined;
  }

  /** What the new program needs of this master's state (supervisor/reexec.ts). */
  private carry(): CarriedMaster {
    const listeners = [...this.heldListeners];
    const indexOf = (listener: InheritedListener) => {
      const index = listeners.indexOf(listener);
      if (index < 0) throw new Error(`listener ${listener.name} is not held by the master any more`);
      return index;
    };
    const generations = this.upgrade.generations
      .filter(
        (generation) =>
          !generation.ended && (generation.state === 'active' || generation.state === 'draining'),
      )
      .map((generation): CarriedGeneration => {
        const live = generation.liveWorkers;
        const workers = live.map((worker): CarriedWorker => {
          const process = worker.process?.carry?.();
          if (!process) throw new Error(`worker ${worker.index} (pid ${worker.pid}) cannot be carried`);
          const hooks = this.handoff.hooksOf(worker);
          const exposed = this.injections.exposedBy(worker);
          return {
            index: worker.index,
            state: worker.state === 'draining' ? 'draining' : 'ready',
            startedAt: worker.startedAt,
            ...(worker.readyAt === undefined ? {} : { readyAt: worker.readyAt }),
            ...(worker.connections === undefined ? {} : { connections: worker.connections }),
            ...(worker.lastWatchdogAt === undefined ? {} : { lastWatchdogAt: worker.lastWatchdogAt }),
            ...(worker.status === undefined ? {} : { status: worker.status }),
            ...(worker.killAt === undefined ? {} : { killAt: worker.killAt }),
            process,
            ...(hooks ? { hooks } : {}),
            ...(exposed ? { exposed: [...exposed] } : {}),
          };
        });
        return {
          id: generation.id,
          version: generation.version,
          state: generation.state === 'draining' ? 'draining' : 'active',
          startedAt: generation.startedAt,
          ...(generation.activeAt === undefined ? {} : { activeAt: generation.activeAt }),
          ...(generation.drainStartedAt === undefined ? {} : { drainStartedAt: generation.drainStartedAt }),
          ...(generation.forced ? { forced: true } : {}),
          ...(generation.settings ? { settings: generation.settings } : {}),
          ...(generation.config ? { config: generation.config } : {}),
          listeners: (generation.listeners ?? this.listeners).map(indexOf),
          slots: generation.slots.map((slot) => {
            const current = slot.current ? live.indexOf(slot.current) : -1;
            return {
              restarts: slot.restarts,
              consecutiveCrashes: slot.consecutiveCrashes,
              ...(current >= 0 ? { current } : {}),
            };
          }),
          workers,
          replacements: [...generation.replacements],
          patches: this.injections.carry(generation),
        };
      });
    return {
      options: this.settings,
      ...(this.config ? { config: this.config } : {}),
      listeners: listeners.map((listener) => {
        if (!listener.carry) throw new Error(`listener ${listener.name} cannot be carried`);
        return listener.carry();
      }),
      current: this.listeners.map(indexOf),
      generations,
      nextGenerationId: this.upgrade.nextId,
      ...(this.slots.scaled === undefined ? {} : { scaledWorkers: this.slots.scaled }),
      sessions: this.handoff.counts,
      reloadsWaiting: [],
    };
  }

  /**
   * Starts as the master the previous program was (a re-exec): its generations and workers adopted,
   * `listeners` the carried ones opened again, in the carried order. Instead of the `start` event.
   */
  adopt(carried: CarriedMaster, listeners: readonly InheritedListener[]): void {
    this.heldListeners.clear();
    for (const listener of listeners) this.heldListeners.add(listener);
    const at = (index: number) => listeners[index] as InheritedListener;
    const generations = carried.generations.map((entry) => {
      const generation = Generation.adopted(entry, entry.settings, entry.config, entry.listeners.map(at));
      for (const carriedWorker of entry.workers) {
        const worker = new Worker(generation.id, carriedWorker.index, carriedWorker.startedAt);
        worker.state = carriedWorker.state;
        worker.readyAt = carriedWorker.readyAt;
        worker.connections = carriedWorker.connections;
        worker.lastWatchdogAt = carriedWorker.lastWatchdogAt;
        worker.status = carriedWorker.status;
        worker.killAt = carriedWorker.killAt;
        if (worker.killAt !== undefined) {
          const { os } = this.context;
          os.setTimer(Math.max(0, worker.killAt - os.now()), () =>
            this.dispatch({ type: 'worker-kill-due', worker }),
          );
        }
        generation.workers.push(worker);
        this.spawner.adoptWorker(worker, carriedWorker.process);
        if (carriedWorker.hooks) this.handoff.adoptHooks(worker, carriedWorker.hooks);
        if (carriedWorker.exposed) this.injections.onExposed(worker, carriedWorker.exposed);
      }
      entry.slots.forEach((slot, index) => {
        const mine = generation.slots[index];
        if (mine && slot.current !== undefined) mine.current = generation.workers[slot.current];
      });
      this.injections.adopt(generation, entry.patches);
      return generation;
    });
    this.upgrade.adopt(generations, carried.nextGenerationId);
    if (carried.scaledWorkers !== undefined) this.slots.adoptScale(carried.scaledWorkers);
    this.handoff.adoptCounts(carried.sessions);
    this.state = 'running';
    this.readiness.startSampling();
    this.watchdog.start();
    const workers = generations.reduce((sum, generation) => sum + generation.liveWorkers.length, 0);
    this.log.info(
      { generations: generations.map((generation) => generation.id), workers },
      'reexec: workers adopted',
    );
    for (const { source, config } of carried.reloadsWaiting) {
      this.dispatch({ type: 'reload', source, ...(config === undefined ? {} : { config }) });
    }
  }

  // ---- stop ---------------------------------------------------------------

  private onStop(fast: boolean, source: string): void {
    if (this.state === 'stopped') return;
    if (this.state === 'stopping') {
      const sinceStop = this.context.os.now() - (this.stopStartedAt ?? 0);
      if (!fast && source === 'SIGINT' && sinceStop < REPEATED_INTERRUPT_MS) {
        this.log.debug({ source, sinceStopMs: sinceStop }, 'the same Ctrl-C again: ignored');
      } else if (fast || source === 'SIGINT') {
        this.log.warn({ source }, 'fast stop: killing every worker');
        this.upgrade.forceAll();
        this.dryRuns.stopAll(true);
      } else {
        this.log.info({ source }, 'stop already in progress; Ctrl-C again or SIGQUIT stops at once');
      }
      return;
    }
    this.state = 'stopping';
    this.stopStartedAt = this.context.os.now();
    this.log.info({ source, fast }, fast ? 'stopping now' : 'stopping: draining every generation');
    this.report({ kind: 'stopping', fast });
    this.handoff.abortAll('the master is stopping');
    // Close the master's copies: each socket closes for good when its last worker stops accepting.
    for (const listener of this.heldListeners) listener.close();
    this.dryRuns.stopAll(fast);
    this.upgrade.drainAll(fast);
    this.finishIfStopped();
    if (!fast) this.context.os.setTimer(STOP_REMINDER_MS, () => this.dispatch({ type: 'stop-reminder' }));
  }

  /** A stop that takes long says what it waits for, and how to cut it short. */
  private remindOfStop(): void {
    if (this.state !== 'stopping') return;
    const wait = stopWait(this.upgrade.generations, this.context.os.now(), this.settings.drainTimeoutMs);
    if (!wait) return;
    this.log.info(
      { generations: wait.generations, killInMs: wait.killInMs },
      `still stopping: waiting for ${wait.connections} open connection(s) to end, at most ${Math.ceil(wait.killInMs / 1000)} s more (--drain-timeout); Ctrl-C again or SIGQUIT stops at once`,
    );
    this.context.os.setTimer(STOP_REMINDER_MS, () => this.dispatch({ type: 'stop-reminder' }));
  }

  private finishIfStopped(): void {
    if (this.state !== 'stopping') return;
    if (this.upgrade.workersLeft) return;
    if (this.dryRuns.running) return;
    this.state = 'stopped';
    const exitCode = this.startFailure
      ? EXIT_CODES.startFailed
      : this.upgrade.forcedAtStop
        ? EXIT_CODES.drainForced
        : EXIT_CODES.ok;
    this.log.info({ exitCode }, 'stopped');
    this.resolveFinished(exitCode);
  }
}
