/**
 * The serving generation's slots, kept filled (einhorn's `replenish`): a worker that crashes is
 * restarted with exponential backoff (a crash loop is reported, never hidden); a worker over
 * `--max-memory` or silent past `--watchdog` is replaced without dropping anyone (its replacement starts in the same slot and, once
 * ready, the old one drains); `scale` adds or drains slots. The master's dispatcher feeds it the events.
 */
import { crashesAfterExit, isCrashLoop, restartDelayMs } from './decisions.js';
import type { Generation, Slot } from './generation.js';
import type { Logger } from './log.js';
import type { MasterEvent, MasterState, Progress, ScaleAnswer } from './model.js';
import { MAX_WORKERS, type MasterOptions, STABLE_UPTIME_MS } from './options.js';
import type { Os } from './os.js';
import type { Worker } from './worker.js';

/** How many exited workers a serving generation remembers (for status); a long crash loop forgets the oldest. */
export const EXITED_WORKERS_KEPT = 20;

/** What the slot keeper needs from the master. */
export interface SlotPorts {
  os: Os;
  logger: Logger;
  /** The master's settings now (a config reload changes them). */
  readonly options: MasterOptions;
  masterState(): MasterState;
  /** The generation that serves new connections, if any. */
  activeGeneration(): Generation | undefined;
  /** The worker's command of `generation` as an absolute path now, or undefined if it is not found. */
  resolveCommand(generation: Generation): string | undefined;
  /** Starts a worker in a slot of `generation` (spawned and watched for readiness). */
  startWorker(generation: Generation, slotIndex: number, command: string): void;
  /** Drains one worker, with its own deadline. */
  drainWorker(worker: Worker): void;
  dispatch(event: MasterEvent): void;
  report(progress: Progress): void;
}

/** Restarts, replacements and scale of the serving generation. */
export class SlotKeeper {
  /** Replacement workers starting (key), and the serving worker each one will replace (value). */
  private readonly replacements = new Map<Worker, Worker>();
  /** Workers per generation once `scale` changed it; `--workers` until then. */
  private scaledWorkers: number | undefined;

  constructor(private readonly ports: SlotPorts) {}

  /** How many workers a generation gets now. */
  get targetWorkers(): number {
    return this.scaledWorkers ?? this.ports.options.workers;
  }

  /** Workers per generation as `scale` set it, if it did (carried by a re-exec). */
  get scaled(): number | undefined {
    return this.scaledWorkers;
  }

  /** The scale the previous program of this master had set. */
  adoptScale(workers: number): void {
    this.scaledWorkers = workers;
  }

  private get log(): Logger {
    return this.ports.logger;
  }

  private get stopping(): boolean {
    return this.ports.masterState() === 'stopping';
  }

  /** A worker of the active generation exited: a failed replacement gives the slot back, else it restarts. */
  onServingWorkerExited(worker: Worker, generation: Generation, uptimeMs: number): void {
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
  }

  /** A worker said ready: if it replaces another, that one may now drain. */
  onWorkerReady(worker: Worker, generation: Generation): void {
    const replaced = this.replacements.get(worker);
    if (!replaced) return;
    this.replacements.delete(worker);
    this.log.info(
      { gen: generation.id, worker: worker.index, pid: worker.pid, replaced: replaced.pid },
      'worker replaced',
    );
    this.ports.drainWorker(replaced);
  }

  private scheduleRestart(generation: Generation, slotIndex: number, uptimeMs: number): void {
    generation.forgetExitedWorkers(EXITED_WORKERS_KEPT);
    const slot = generation.slots[slotIndex];
    if (!slot || this.stopping) return;
    slot.consecutiveCrashes = crashesAfterExit(slot.consecutiveCrashes, uptimeMs);
    const delayMs = restartDelayMs(slot.consecutiveCrashes);
    const facts = { gen: generation.id, worker: slotIndex, crashes: slot.consecutiveCrashes, delayMs };
    if (isCrashLoop(slot.consecutiveCrashes))
      this.log.error(facts, 'worker crash loop: restarting with backoff');
    else this.log.warn(facts, 'worker restarting');
    slot.restartTimer = this.ports.os.setTimer(delayMs, () =>
      this.ports.dispatch({ type: 'restart-due', generation, slot: slotIndex }),
    );
  }

  onRestartDue(generation: Generation, slotIndex: number): void {
    const slot = generation.slots[slotIndex];
    if (!slot || generation.state !== 'active' || this.stopping) return;
    slot.restartTimer = undefined;
    slot.restarts++;
    const command = this.ports.resolveCommand(generation);
    if (command === undefined) {
      this.log.error(
        {
          gen: generation.id,
          worker: slotIndex,
          command: (generation.settings ?? this.ports.options).command,
        },
        'worker not restarted: command not found',
      );
      this.scheduleRestart(generation, slotIndex, 0);
      return;
    }
    this.ports.startWorker(generation, slotIndex, command);
  }

  /**
   * Replaces a serving worker without dropping anyone (`--max-memory`, `--watchdog`): its
   * replacement starts in the same slot and, once ready, the old one drains.
   * A worker over --max-memory that ran less than STABLE_UPTIME_MS is left alone, so that an app
   * whose baseline is over the limit is not replaced in a loop.
   */
  onReplaceWorker(pid: number, reason: string, facts: Record<string, unknown>): void {
    const generation = this.ports.activeGeneration();
    const worker = generation?.currentWorkers.find(
      (candidate) => candidate.pid === pid && candidate.state === 'ready',
    );
    if (!generation || !worker || this.ports.masterState() !== 'running') return;
    if ([...this.replacements.values()].includes(worker)) return;
    // An app whose baseline is over --max-memory must not be replaced in a loop; a silent watchdog
    // says the worker is stuck, however young it is.
    if (reason === 'memory' && this.ports.os.now() - worker.startedAt < STABLE_UPTIME_MS) return;
    const command = this.ports.resolveCommand(generation);
    if (command === undefined) {
      this.log.error(
        { gen: generation.id, worker: worker.index, pid },
        'worker not replaced: command not found',
      );
      return;
    }
    this.log.warn({ gen: generation.id, worker: worker.index, pid, reason, ...facts }, 'replacing worker');
    generation.recordReplacement({ worker: worker.index, pid, reason, at: this.ports.os.now() });
    this.ports.report({
      kind: 'worker-replacing',
      generation: generation.id,
      worker: worker.index,
      pid,
      reason,
    });
    this.ports.startWorker(generation, worker.index, command);
    const replacement = generation.slots[worker.index]?.current;
    if (replacement && replacement !== worker) this.replacements.set(replacement, worker);
  }

  /**
   * A config reload brought a worker count: a `scale` made earlier gives way to it if it differs from
   * the count before (a file that keeps its `workers` keeps what `scale` made).
   */
  onSettingsChanged(workersBefore: number, workersAfter: number): void {
    if (workersBefore !== workersAfter) this.scaledWorkers = undefined;
  }

  /** Changes the number of workers of the serving generation (and of the next ones), without a reload. */
  onScale(request: number | 'more' | 'fewer', source: string): ScaleAnswer {
    const from = this.targetWorkers;
    const wanted = request === 'more' ? from + 1 : request === 'fewer' ? from - 1 : request;
    const to = Math.max(1, Math.min(MAX_WORKERS, wanted));
    this.scaledWorkers = to;
    const active = this.ports.activeGeneration();
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
      if (worker) this.ports.drainWorker(worker);
    }
    if (generation.slots.length >= size) return;
    const command = this.ports.resolveCommand(generation);
    if (command === undefined) {
      this.log.error(
        { gen: generation.id, command: (generation.settings ?? this.ports.options).command },
        'workers not added: command not found',
      );
      return;
    }
    while (generation.slots.length < size) this.ports.startWorker(generation, generation.addSlot(), command);
  }
}
