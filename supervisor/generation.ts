/**
 * Generation: the workers of one release.
 * starting → active → draining → retired, or starting → failed; a failed generation keeps its state
 * once its workers are gone (status shows why it failed), and is `ended` like a retired one.
 */
import type { ConfigLabel } from './config.js';
import { isCrashLoop } from './decisions.js';
import { describeStartFailure, type StartFailure } from './errors.js';
import type { AppliedPatch } from './inject.js';
import type { GenerationSnapshot, InheritedListener, Replacement } from './model.js';
import type { MasterOptions } from './options.js';
import type { TimerHandle } from './os.js';
import type { Worker } from './worker.js';

/** The life of one generation. */
export type GenerationState = 'starting' | 'active' | 'draining' | 'failed' | 'retired';

/** How many replacements a generation remembers (for status). */
export const REPLACEMENTS_KEPT = 10;

/** One worker position of a generation, refilled when its worker crashes. */
export interface Slot {
  readonly index: number;
  current: Worker | undefined;
  /** Crashes in a row without a stable run in between (drives the backoff). */
  consecutiveCrashes: number;
  restarts: number;
  restartTimer: TimerHandle | undefined;
}

/** The workers of one release and where they are in their life; its transitions are its own. */
export class Generation {
  #state: GenerationState = 'starting';
  readonly slots: Slot[];
  /** Every worker this generation ever had, restarted ones included. */
  readonly workers: Worker[] = [];
  #activeAt: number | undefined;
  /** When its workers were first asked to drain (a failed generation's too). */
  drainStartedAt: number | undefined;
  #retiredAt: number | undefined;
  /** Workers had to be killed at the drain deadline. */
  forced = false;
  #failure: StartFailure | undefined;
  drainTimer: TimerHandle | undefined;
  /** Serving workers replaced without a reload (`--max-memory`, `--watchdog`), the last few. */
  readonly replacements: Replacement[] = [];

  constructor(
    readonly id: number,
    readonly version: string,
    size: number,
    readonly startedAt: number,
    /**
     * The settings it was started with (command, environment, timeouts, readiness): a config reload
     * changes the next generation's, never a running one's. The master's own when undefined.
     */
    readonly settings?: MasterOptions,
    /** The config file those settings came from, if any (for status). */
    readonly config?: ConfigLabel,
    /**
     * The listeners its workers inherit, in order: a config reload may add or remove some for the next
     * generation; this one keeps its own. The master's own when undefined.
     */
    readonly listeners?: readonly InheritedListener[],
  ) {
    this.slots = Array.from({ length: size }, (_, index) => ({
      index,
      current: undefined,
      consecutiveCrashes: 0,
      restarts: 0,
      restartTimer: undefined,
    }));
  }

  /**
   * A generation the previous program of this master ran (a re-exec, supervisor/reexec.ts), in the
   * state it had there; its workers are added by the caller.
   */
  static adopted(
    carried: {
      id: number;
      version: string;
      startedAt: number;
      state: GenerationState;
      activeAt?: number;
      drainStartedAt?: number;
      forced?: boolean;
      slots: Array<{ restarts: number; consecutiveCrashes: number }>;
      replacements?: Replacement[];
    },
    settings: MasterOptions | undefined,
    config: ConfigLabel | undefined,
    listeners: readonly InheritedListener[] | undefined,
  ): Generation {
    const generation = new Generation(
      carried.id,
      carried.version,
      carried.slots.length,
      carried.startedAt,
      settings,
      config,
      listeners,
    );
    generation.#state = carried.state;
    generation.#activeAt = carried.activeAt;
    generation.drainStartedAt = carried.drainStartedAt;
    generation.forced = carried.forced === true;
    carried.slots.forEach((slot, index) => {
      const mine = generation.slots[index] as Slot;
      mine.restarts = slot.restarts;
      mine.consecutiveCrashes = slot.consecutiveCrashes;
    });
    generation.replacements.push(...(carried.replacements ?? []));
    return generation;
  }

  get state(): GenerationState {
    return this.#state;
  }

  get activeAt(): number | undefined {
    return this.#activeAt;
  }

  /** When the last worker of a draining or failed generation was gone. */
  get retiredAt(): number | undefined {
    return this.#retiredAt;
  }

  /** Why the generation failed to start, if it did. */
  get failure(): StartFailure | undefined {
    return this.#failure;
  }

  /** Whether the generation is over: retired, or failed with every worker gone. */
  get ended(): boolean {
    return this.#retiredAt !== undefined;
  }

  /** starting → active; false (and nothing changes) from any other state. */
  markActive(now: number): boolean {
    if (this.#state !== 'starting') return false;
    this.#state = 'active';
    this.#activeAt = now;
    return true;
  }

  /** starting → failed, with the reason; false from any other state. */
  markFailed(failure: StartFailure): boolean {
    if (this.#state !== 'starting') return false;
    this.#state = 'failed';
    this.#failure = failure;
    this.cancelTimers();
    return true;
  }

  /** starting|active → draining; false from any other state. */
  markDraining(): boolean {
    if (this.#state !== 'starting' && this.#state !== 'active') return false;
    this.#state = 'draining';
    return true;
  }

  /**
   * draining → retired, or failed → ended (the state stays `failed`), once no worker is left; false if
   * it has ended already or is in no state to end.
   */
  markRetired(now: number): boolean {
    if (this.ended || (this.#state !== 'draining' && this.#state !== 'failed')) return false;
    if (this.#state === 'draining') this.#state = 'retired';
    this.#retiredAt = now;
    return true;
  }

  /** Forgets the oldest exited workers past `kept`, so that a long crash loop does not grow the list. */
  forgetExitedWorkers(kept: number): void {
    const exited = this.workers.filter((worker) => !worker.alive);
    for (const worker of exited.slice(0, Math.max(0, exited.length - kept))) {
      this.workers.splice(this.workers.indexOf(worker), 1);
    }
  }

  /** Remembers a replacement, keeping the last REPLACEMENTS_KEPT. */
  recordReplacement(replacement: Replacement): void {
    this.replacements.push(replacement);
    if (this.replacements.length > REPLACEMENTS_KEPT) this.replacements.shift();
  }

  /** Adds one worker position (scale); returns its index. */
  addSlot(): number {
    const index = this.slots.length;
    this.slots.push({
      index,
      current: undefined,
      consecutiveCrashes: 0,
      restarts: 0,
      restartTimer: undefined,
    });
    return index;
  }

  /** The workers that have not exited. */
  get liveWorkers(): Worker[] {
    return this.workers.filter((worker) => worker.alive);
  }

  /** The workers currently filling the slots. */
  get currentWorkers(): Worker[] {
    return this.slots.flatMap((slot) => (slot.current ? [slot.current] : []));
  }

  /** Leaves a state for good: cancels what was pending for the old one. */
  cancelTimers(): void {
    for (const slot of this.slots) {
      slot.restartTimer?.cancel();
      slot.restartTimer = undefined;
    }
    for (const worker of this.workers) worker.readyTimer?.cancel();
  }

  /** The generation as `status` shows it, with the hot patches applied to it. */
  snapshot(patches: readonly AppliedPatch[]): GenerationSnapshot {
    return {
      id: this.id,
      version: this.version,
      state: this.state,
      startedAt: this.startedAt,
      activeAt: this.activeAt,
      drainStartedAt: this.drainStartedAt,
      retiredAt: this.retiredAt,
      forced: this.forced,
      failure: this.failure && describeStartFailure(this.id, this.failure),
      restarts: this.slots.reduce((sum, slot) => sum + slot.restarts, 0),
      crashLoops: this.slots
        .filter((slot) => isCrashLoop(slot.consecutiveCrashes) && slot.current?.state !== 'ready')
        .map((slot) => ({ worker: slot.index, crashes: slot.consecutiveCrashes })),
      workers: this.workers.map((worker) => ({
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
          this.slots[worker.index]?.current === worker ? (this.slots[worker.index]?.restarts ?? 0) : 0,
        status: worker.status,
        connectionsSeen:
          worker.connections !== undefined
            ? 'reported'
            : worker.observedConnections !== undefined
              ? 'observed'
              : undefined,
      })),
      patches: [...patches],
      replacements: [...this.replacements],
      ...(this.config ? { config: { ...this.config } } : {}),
    };
  }
}
