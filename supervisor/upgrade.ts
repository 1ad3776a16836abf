/**
 * The upgrade algorithm: reload → switch → drain → retire (docs/architecture.md).
 *
 * A reload starts generation N+1 from the command on disk now. Once every one of its workers is ready
 * (readiness.ts), the sessions the app moves go over first (the `switch` round of handoff.ts), while N
 * still serves; then N+1 becomes active and N drains: its workers get the drain signal, a deadline
 * (`--drain-timeout`) kills what is left, and the generation retires once its last worker is gone. If
 * a new worker exits or misses `--ready-timeout`, N+1 fails and N serves on untouched. A reload asked
 * while one runs is queued (one at most), never run at once.
 *
 * It owns the generations and their life; the master's dispatcher feeds it the events, one at a time,
 * and it reaches the rest of the master through `UpgradePorts`.
 */
import type { ConfigLabel } from './config.js';
import { decideReload, generationsOverDrainLimit, isGenerationReady } from './decisions.js';
import {
  describeOwnPorts,
  GenerationFailedError,
  type OwnPortsFailure,
  type StartFailure,
} from './errors.js';
import { Generation } from './generation.js';
import { type HandoffRelay, type HandoffRound, handoffFlushTimeoutMs } from './handoff.js';
import type { Logger } from './log.js';
import type {
  InheritedListener,
  MasterEvent,
  MasterState,
  Progress,
  ReloadAnswer,
  ReloadTrigger,
} from './model.js';
import { formatDuration, type MasterOptions } from './options.js';
import type { Os } from './os.js';
import type { ReadyVia } from './readiness.js';
import { drainSignalDeathWarning, exitedAtStartHint } from './unmodified.js';
import type { Worker, WorkerState } from './worker.js';

/** How many generations that have ended the master remembers (for status). */
export const RETIRED_GENERATIONS_KEPT = 10;

/** What the upgrade needs from the master. */
export interface UpgradePorts {
  os: Os;
  logger: Logger;
  /** The master's settings now: a new generation starts with them (a config reload changes them). */
  readonly options: MasterOptions;
  /** The config file those settings came from, if any. */
  config(): ConfigLabel | undefined;
  /** The master's listeners now, in order: a new generation's workers inherit them. */
  readonly listeners: readonly InheritedListener[];
  handoff: Pick<HandoffRelay, 'isSwitching' | 'start' | 'onGenerationRetired'>;
  /** The master's own state (a stopping master starts nothing). */
  masterState(): MasterState;
  /** How many workers a new generation gets (`--workers`, or what `scale` made it). */
  targetWorkers(): number;
  /** The version label of a new generation; the generation number when undefined. */
  versionLabel(): string | undefined;
  /** The worker's command of `generation` as an absolute path now, or undefined if it is not found. */
  resolveCommand(generation: Generation): string | undefined;
  /** Starts a worker in a slot of `generation` (spawned and watched for readiness). */
  startWorker(generation: Generation, slotIndex: number, command: string): void;
  /** The first generation serves: the master runs. */
  started(): void;
  /** The first generation failed: the master stops, and exits with the start failure. */
  startFailed(error: GenerationFailedError): void;
  /** A generation has ended (retired, or failed with every worker gone): listeners it alone used may close. */
  generationEnded(generation: Generation): void;
  /** A worker said ready (after the upgrade counted it): the other rooms' turn. */
  workerReady(worker: Worker, generation: Generation): void;
  /** A worker of the active generation exited: its slot's turn (restart, or a failed replacement). */
  servingWorkerExited(worker: Worker, generation: Generation, uptimeMs: number): void;
  report(progress: Progress): void;
  dispatch(event: MasterEvent): void;
  kill(worker: Worker, signal: NodeJS.Signals): void;
}

/** The generations and their life: reload, switch, drain, retire. */
export class Upgrade {
  readonly generations: Generation[] = [];
  private nextGenerationId = 1;
  private reloadQueued = false;
  /** What the queued reload is: a config reload wins over a plain one that joined it. */
  private queuedTrigger: ReloadTrigger = 'reload';
  /** Workers were killed at the drain deadline while the master stopped (its exit code says so). */
  private killedAtStopDeadline = false;
  /** Starting workers seen listening on ports of their own and on none of baton's (readiness.ts). */
  private readonly listeningElsewhere = new WeakMap<Worker, OwnPortsFailure>();

  constructor(private readonly ports: UpgradePorts) {}

  /** The generation that serves new connections, if any. */
  get activeGeneration(): Generation | undefined {
    return this.generations.find((generation) => generation.state === 'active');
  }

  /** Whether a reload waits behind the running one. */
  get queued(): boolean {
    return this.reloadQueued;
  }

  /** Whether a drain deadline killed workers during the stop. */
  get forcedAtStop(): boolean {
    return this.killedAtStopDeadline;
  }

  /** Whether a worker of any generation is still alive. */
  get workersLeft(): boolean {
    return this.generations.some((generation) => generation.liveWorkers.length > 0);
  }

  /** The generation `worker` belongs to. */
  generationOf(worker: Worker): Generation {
    return this.generations.find((generation) => generation.id === worker.generation) as Generation;
  }

  private get log(): Logger {
    return this.ports.logger;
  }

  private get stopping(): boolean {
    return this.ports.masterState() === 'stopping';
  }

  private now(): number {
    return this.ports.os.now();
  }

  /** The settings `generation` was started with: its command, timeouts and drain signal are its own. */
  private settingsOf(generation: Generation | undefined): MasterOptions {
    return generation?.settings ?? this.ports.options;
  }

  // ---- reload -------------------------------------------------------------

  /** Starts the first generation. */
  start(): void {
    this.startGeneration();
  }

  /** A reload was asked for: started now, queued behind the running one, or ignored while stopping. */
  onReload(source: string, trigger: ReloadTrigger = 'reload'): ReloadAnswer {
    const state = this.ports.masterState();
    const decision = decideReload({
      stopping: state === 'stopping' || state === 'stopped',
      reloadRunning: this.generations.some((generation) => generation.state === 'starting'),
      reloadQueued: this.reloadQueued,
    });
    if (decision === 'ignore-stopping') {
      this.log.warn({ source }, 'reload ignored: the master is stopping');
      return { outcome: 'ignored', reason: 'stopping' };
    }
    if (decision === 'start') {
      this.log.info({ source }, 'reload requested');
      const generation = this.nextGenerationId;
      this.startGeneration(trigger);
      return { outcome: 'started', generation };
    }
    // Only one reload waits: it becomes the next generation, whoever else asks meanwhile.
    if (!this.reloadQueued || trigger === 'config') this.queuedTrigger = trigger;
    this.reloadQueued = true;
    this.log.info(
      { source, alreadyQueued: decision === 'already-queued' },
      'reload queued behind the running one',
    );
    return { outcome: decision === 'queue' ? 'queued' : 'joined', generation: this.nextGenerationId };
  }

  /** The id the next generation gets. */
  get nextId(): number {
    return this.nextGenerationId;
  }

  /**
   * Takes on the generations the previous program of this master ran (a re-exec,
   * supervisor/reexec.ts), their workers adopted: each draining one gets what is left of its drain
   * deadline; the next generation is numbered on from theirs.
   */
  adopt(generations: readonly Generation[], nextId: number): void {
    this.generations.push(...generations);
    this.nextGenerationId = Math.max(nextId, ...generations.map((generation) => generation.id + 1));
    for (const generation of generations) {
      if (generation.state !== 'draining') continue;
      if (generation.liveWorkers.length === 0) {
        this.retire(generation);
        continue;
      }
      const { drainTimeoutMs } = this.settingsOf(generation);
      const left = Math.max(0, drainTimeoutMs - (this.now() - (generation.drainStartedAt ?? this.now())));
      generation.drainTimer = this.ports.os.setTimer(left, () =>
        this.ports.dispatch({ type: 'drain-timeout', generation }),
      );
    }
  }

  private startGeneration(trigger: ReloadTrigger = 'reload'): void {
    const id = this.nextGenerationId++;
    const workers = this.ports.targetWorkers();
    const version = this.ports.versionLabel() ?? String(id);
    const config = this.ports.config();
    const generation = new Generation(
      id,
      version,
      workers,
      this.now(),
      this.ports.options,
      config,
      this.ports.listeners,
    );
    this.generations.push(generation);
    this.log.info(
      {
        gen: id,
        workers,
        version: generation.version,
        ...(config ? { config: config.path, hash: config.hash } : {}),
      },
      'generation starting',
    );
    this.ports.report({
      kind: 'generation-starting',
      generation: id,
      workers,
      version: generation.version,
      trigger: this.generations.length === 1 ? 'start' : trigger,
    });
    const command = this.ports.resolveCommand(generation);
    if (command === undefined) {
      this.failGeneration(generation, {
        kind: 'command-not-found',
        command: this.settingsOf(generation).command,
      });
      return;
    }
    for (const slot of generation.slots) this.ports.startWorker(generation, slot.index, command);
  }

  /** A worker is ready (readiness.ts decided it counts); its generation may now be ready too. */
  onWorkerReady(worker: Worker, via: ReadyVia): void {
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
    this.ports.report({
      kind: 'worker-ready',
      generation: generation.id,
      worker: worker.index,
      ready: generation.currentWorkers.filter((current) => current.state === 'ready').length,
      of: generation.slots.length,
    });
    this.ports.workerReady(worker, generation);
    if (generation.state === 'starting' && isGenerationReady(generation.currentWorkers))
      this.onGenerationReady(generation);
  }

  /**
   * A worker missed `--ready-timeout`: a starting generation fails (naming the port of its own the
   * worker was seen listening on instead, if any); a restarted worker is replaced.
   */
  onReadyTimeout(worker: Worker): void {
    if (worker.state !== 'starting') return;
    const generation = this.generationOf(worker);
    const elsewhere = this.listeningElsewhere.get(worker);
    if (generation.state === 'starting') {
      this.failGeneration(
        generation,
        elsewhere ?? {
          kind: 'ready-timeout',
          notReady: generation.currentWorkers.filter((w) => w.state === 'starting').map((w) => w.index),
          timeoutMs: this.settingsOf(generation).readyTimeoutMs,
        },
      );
      return;
    }
    // A restarted worker that never says ready: drain it; its exit refills the slot.
    this.log.warn(
      {
        gen: generation.id,
        worker: worker.index,
        pid: worker.pid,
        readyTimeoutMs: this.settingsOf(generation).readyTimeoutMs,
      },
      elsewhere
        ? `worker not ready in time: replacing it; ${describeOwnPorts(elsewhere)}`
        : 'worker not ready in time: replacing it',
    );
    this.drainWorker(worker);
  }

  /**
   * A starting worker listens on ports of its own and on none of baton's (readiness.ts saw it in /proc).
   * Seen from outside, that may be an admin port opened before a slow start, so it is said at once, in
   * one warning with the fix, and decides nothing: if the worker never waits on baton's listeners, its
   * `--ready-timeout` failure names the port.
   */
  onListensElsewhere(worker: Worker, ports: number[]): void {
    if (worker.state !== 'starting') return;
    const generation = this.generationOf(worker);
    const failure: OwnPortsFailure = {
      kind: 'listens-elsewhere',
      worker: worker.index,
      pid: worker.pid,
      ports,
      listeners: (generation.listeners ?? this.ports.listeners).map(({ name, kind, port, address }) => ({
        name,
        kind,
        port,
        address,
      })),
    };
    this.listeningElsewhere.set(worker, failure);
    this.log.warn(
      { gen: generation.id, worker: worker.index, pid: worker.pid, ports },
      `${describeOwnPorts(failure)}. If that is an admin port and the worker is still starting, wait: it fails at --ready-timeout (${formatDuration(this.settingsOf(generation).readyTimeoutMs)}) only if it never accepts on baton's`,
    );
  }

  // ---- switch -------------------------------------------------------------

  /**
   * Every worker of `generation` is ready. Sessions the app moves go over first, while the old
   * generation still serves, so that a new version that fails to adopt them fails the reload and
   * loses nobody; then it takes over.
   */
  private onGenerationReady(generation: Generation): void {
    const { handoff } = this.ports;
    if (handoff.isSwitching(generation)) return;
    const previous = this.activeGeneration;
    const flushTimeoutMs = handoffFlushTimeoutMs(
      previous ? this.settingsOf(previous).drainTimeoutMs : this.ports.options.drainTimeoutMs,
    );
    const round = previous && handoff.start('switch', previous, generation, flushTimeoutMs);
    if (!round) this.promote(generation);
    // Otherwise the round's end promotes it, or fails it (onHandoffEnded).
  }

  /** A handoff round ended: a switch round lets its generation take over, or fails the reload. */
  onHandoffEnded(round: HandoffRound): void {
    const generation = round.to;
    if (round.kind !== 'switch' || generation.state !== 'starting' || this.stopping) return;
    if (round.outcome === 'committed') this.promote(generation);
    else if (round.abortCause === 'no-answer') {
      // A worker that exited fails the generation through its exit, with its code and stderr.
      this.failGeneration(generation, { kind: 'handoff-failed', reason: round.abortReason ?? 'aborted' });
    }
  }

  private promote(generation: Generation): void {
    const previous = this.generations.filter((other) => other !== generation && other.state === 'active');
    if (!generation.markActive(this.now())) return;
    const activeAt = generation.activeAt as number;
    this.log.info(
      { gen: generation.id, version: generation.version, durationMs: activeAt - generation.startedAt },
      'generation active',
    );
    if (this.ports.masterState() === 'starting') this.ports.started();
    this.ports.report({
      kind: 'generation-active',
      generation: generation.id,
      readyMs: activeAt - generation.startedAt,
      draining: previous.map((old) => old.id),
    });
    for (const old of previous) this.drainGeneration(old);
    // What the old workers accepted during the switch round moves too.
    for (const old of previous) {
      this.ports.handoff.start(
        'sweep',
        old,
        generation,
        handoffFlushTimeoutMs(this.settingsOf(old).drainTimeoutMs),
      );
    }
    this.afterReload();
  }

  private failGeneration(generation: Generation, failure: StartFailure): void {
    if (!generation.markFailed(failure)) return;
    const error = new GenerationFailedError(generation.id, failure);
    const facts =
      failure.kind === 'worker-exited'
        ? { exitCode: failure.exitCode, signal: failure.signal, stderrTail: failure.stderrTail }
        : failure.kind === 'listens-elsewhere'
          ? { worker: failure.worker, pid: failure.pid, ports: failure.ports }
          : {};
    const first = this.ports.masterState() === 'starting';
    this.log.error(
      { gen: generation.id, reason: failure.kind, ...facts },
      first ? `start failed: ${error.message}` : `reload failed: ${error.message}`,
    );
    this.ports.report({ kind: 'reload-failed', generation: generation.id, failure, message: error.message });
    this.signalDrain(generation);
    if (first && (this.settingsOf(generation).watch?.length ?? 0) > 0) {
      // In development a broken first save is no reason to stop: the next save reloads.
      this.log.warn({ gen: generation.id }, 'waiting for a change to start again');
    } else if (first) {
      this.ports.startFailed(error);
      return;
    }
    this.afterReload();
  }

  private afterReload(): void {
    if (!this.reloadQueued || this.stopping) return;
    this.reloadQueued = false;
    this.log.info('queued reload starting');
    this.startGeneration(this.queuedTrigger);
  }

  // ---- drain --------------------------------------------------------------

  private drainGeneration(generation: Generation): void {
    if (!generation.markDraining()) return;
    this.log.info({ gen: generation.id, workers: generation.liveWorkers.length }, 'generation draining');
    this.ports.report({
      kind: 'generation-draining',
      generation: generation.id,
      workers: generation.liveWorkers.length,
    });
    this.signalDrain(generation);
    for (const id of generationsOverDrainLimit(this.generations, this.ports.options.maxDraining)) {
      const oldest = this.generations.find((candidate) => candidate.id === id) as Generation;
      this.log.warn(
        { gen: id, maxDraining: this.ports.options.maxDraining },
        'too many generations draining: cutting the oldest short',
      );
      this.force(oldest);
    }
  }

  /** Asks every live worker of a generation to drain, and starts the generation's drain deadline. */
  private signalDrain(generation: Generation): void {
    generation.cancelTimers();
    generation.drainStartedAt ??= this.now();
    const settings = this.settingsOf(generation);
    const { drainSignal, drainTimeoutMs } = settings;
    for (const worker of generation.liveWorkers) {
      this.lowerIfStarting(worker, settings);
      if (worker.markDraining()) this.ports.kill(worker, drainSignal);
    }
    if (generation.liveWorkers.length === 0) {
      this.retire(generation);
      return;
    }
    generation.drainTimer ??= this.ports.os.setTimer(drainTimeoutMs, () =>
      this.ports.dispatch({ type: 'drain-timeout', generation }),
    );
  }

  /** Drains one worker (scale, replacement), with its own deadline. */
  drainWorker(worker: Worker): void {
    const settings = this.settingsOf(
      this.generations.find((generation) => generation.id === worker.generation),
    );
    this.lowerIfStarting(worker, settings);
    if (!worker.markDraining()) return;
    const { drainSignal, drainTimeoutMs } = settings;
    this.ports.kill(worker, drainSignal);
    worker.killAt = this.now() + drainTimeoutMs;
    this.ports.os.setTimer(drainTimeoutMs, () => this.ports.dispatch({ type: 'worker-kill-due', worker }));
  }

  /**
   * A worker drained before it was ready (its ready timeout, a failed release) gives back a priority
   * above the others' (a negative --start-nice): a start-up stuck in a loop would keep it until killed.
   */
  private lowerIfStarting(worker: Worker, settings: MasterOptions): void {
    if (worker.state === 'starting' && (settings.startNice ?? 0) < 0 && worker.pid !== undefined) {
      this.ports.os.restorePriority?.(worker.pid);
    }
  }

  onDrainTimeout(generation: Generation): void {
    if (generation.liveWorkers.length === 0) return;
    this.log.warn(
      {
        gen: generation.id,
        workers: generation.liveWorkers.length,
        drainTimeoutMs: this.settingsOf(generation).drainTimeoutMs,
      },
      'drain timeout: killing the workers left',
    );
    if (this.stopping) this.killedAtStopDeadline = true;
    this.force(generation);
  }

  private force(generation: Generation): void {
    generation.forced = true;
    for (const worker of generation.liveWorkers) this.ports.kill(worker, 'SIGKILL');
  }

  /** The master stops: nothing more starts, every generation drains (`fast`: is killed). */
  drainAll(fast: boolean): void {
    this.reloadQueued = false;
    for (const generation of this.generations) {
      generation.cancelTimers();
      if (generation.state === 'starting' || generation.state === 'active') this.drainGeneration(generation);
      if (fast) this.force(generation);
    }
  }

  /** A stop cut short (Ctrl-C again, SIGQUIT): every worker is killed. */
  forceAll(): void {
    for (const generation of this.generations) this.force(generation);
  }

  // ---- retire -------------------------------------------------------------

  private retire(generation: Generation): void {
    generation.drainTimer?.cancel();
    const wasDraining = generation.state === 'draining';
    if (!generation.markRetired(this.now())) return;
    this.ports.handoff.onGenerationRetired(generation.id);
    this.ports.generationEnded(generation);
    if (wasDraining) {
      const retiredAt = generation.retiredAt as number;
      const drainMs = retiredAt - (generation.drainStartedAt ?? retiredAt);
      this.log.info({ gen: generation.id, drainMs, forced: generation.forced }, 'generation retired');
      this.ports.report({
        kind: 'generation-retired',
        generation: generation.id,
        drainMs,
        forced: generation.forced,
      });
    }
    const ended = this.generations.filter((candidate) => candidate.ended);
    for (const old of ended.slice(0, Math.max(0, ended.length - RETIRED_GENERATIONS_KEPT))) {
      this.generations.splice(this.generations.indexOf(old), 1);
    }
  }

  /**
   * A worker exited: in a starting generation that fails the reload; in the active one its slot decides
   * (restart); in a draining or failed one, the last exit retires the generation.
   */
  onWorkerExited(worker: Worker, stateBefore: WorkerState): void {
    const generation = this.generationOf(worker);
    const uptimeMs = this.now() - worker.startedAt;
    this.log[stateBefore === 'draining' ? 'info' : 'warn'](
      {
        gen: generation.id,
        worker: worker.index,
        pid: worker.pid,
        exitCode: worker.exitCode,
        signal: worker.signal,
        uptimeMs,
        state: stateBefore,
      },
      'worker exited',
    );
    const drainWarning =
      stateBefore === 'draining' &&
      drainSignalDeathWarning(
        {
          generation: generation.id,
          worker: worker.index,
          pid: worker.pid,
          signal: worker.signal,
          connections: worker.connections ?? worker.observedConnections,
        },
        this.settingsOf(generation).drainSignal,
      );
    if (drainWarning)
      this.log.warn({ gen: generation.id, worker: worker.index, pid: worker.pid }, drainWarning);
    if (generation.state === 'starting') {
      this.failGeneration(generation, {
        kind: 'worker-exited',
        worker: worker.index,
        pid: worker.pid,
        exitCode: worker.exitCode,
        signal: worker.signal,
        stderrTail: worker.stderr.lines().join('\n'),
        ...(stateBefore === 'ready' ? { afterReady: true } : {}),
        ...(stateBefore === 'starting'
          ? { hint: exitedAtStartHint(worker.exitCode, generation.listeners ?? this.ports.listeners) }
          : {}),
      });
    } else if (generation.state === 'active') {
      this.ports.servingWorkerExited(worker, generation, uptimeMs);
    } else if (generation.liveWorkers.length === 0) {
      this.retire(generation);
    }
  }
}
