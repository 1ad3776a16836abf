/**
 * Generation: the workers of one release.
 * starting → active → draining → retired, or starting → failed (→ retired once its workers are gone).
 */
import type { StartFailure } from './errors.js';
import type { TimerHandle } from './os.js';
import type { Worker } from './worker.js';

/** The life of one generation. */
export type GenerationState = 'starting' | 'active' | 'draining' | 'failed' | 'retired';

/** One worker position of a generation, refilled when its worker crashes. */
export interface Slot {
  readonly index: number;
  current: Worker | undefined;
  /** Crashes in a row without a stable run in between (drives the backoff). */
  consecutiveCrashes: number;
  restarts: number;
  restartTimer: TimerHandle | undefined;
}

/** The workers of one release and where they are in their life. */
export class Generation {
  state: GenerationState = 'starting';
  readonly slots: Slot[];
  /** Every worker this generation ever had, restarted ones included. */
  readonly workers: Worker[] = [];
  activeAt: number | undefined;
  drainStartedAt: number | undefined;
  retiredAt: number | undefined;
  /** Workers had to be killed at the drain deadline. */
  forced = false;
  failure: StartFailure | undefined;
  drainTimer: TimerHandle | undefined;

  constructor(
    readonly id: number,
    readonly version: string,
    size: number,
    readonly startedAt: number,
  ) {
    this.slots = Array.from({ length: size }, (_, index) => ({
      index,
      current: undefined,
      consecutiveCrashes: 0,
      restarts: 0,
      restartTimer: undefined,
    }));
  }

  /** Forgets the oldest exited workers past `kept`, so that a long crash loop does not grow the list. */
  forgetExitedWorkers(kept: number): void {
    const exited = this.workers.filter((worker) => !worker.alive);
    for (const worker of exited.slice(0, Math.max(0, exited.length - kept))) {
      this.workers.splice(this.workers.indexOf(worker), 1);
    }
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
}
