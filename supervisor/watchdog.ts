/**
 * The watchdog (`--watchdog`, systemd's WatchdogSec): workers get WATCHDOG_USEC and WATCHDOG_PID and say
 * WATCHDOG=1 (sd_notify, or the child API's ping from the event loop) at least once a period. A serving
 * worker that pinged and then went silent for a whole period is replaced the way `--max-memory`
 * replaces one: its replacement ready first, then it drains, then the drain deadline. One that never
 * pinged is said once and left alone (it may not know the protocol; replacing it would loop).
 *
 * The master's dispatcher feeds it the pings and its check event; it arms its timer through it too.
 */
import { watchdogVerdict } from './decisions.js';
import type { Generation } from './generation.js';
import type { Logger } from './log.js';
import type { MasterEvent, MasterState } from './model.js';
import type { Os } from './os.js';
import type { Worker } from './worker.js';

/** How often the watchdog looks, at most: a quarter of the period, and never more than 20 times a second. */
const MIN_CHECK_INTERVAL_MS = 50;

/** What the watchdog needs from the master. */
export interface WatchdogPorts {
  os: Os;
  logger: Logger;
  /** The period, or undefined when there is no watchdog. */
  watchdogMs: number | undefined;
  masterState(): MasterState;
  activeGeneration(): Generation | undefined;
  dispatch(event: MasterEvent): void;
  /** Replaces a serving worker, its replacement ready first (slots.ts). */
  replace(pid: number, reason: 'watchdog', facts: Record<string, unknown>): void;
}

/** Watches the serving workers' pings. */
export class Watchdog {
  constructor(private readonly ports: WatchdogPorts) {}

  /** Starts the periodic check (nothing without `--watchdog`). */
  start(): void {
    const { watchdogMs, os, dispatch } = this.ports;
    if (watchdogMs === undefined) return;
    os.setTimer(Math.max(MIN_CHECK_INTERVAL_MS, Math.floor(watchdogMs / 4)), () =>
      dispatch({ type: 'watchdog-check' }),
    );
  }

  /** WATCHDOG=1, or the child API's ping. */
  onPing(worker: Worker): void {
    worker.lastWatchdogAt = this.ports.os.now();
  }

  /** WATCHDOG=trigger: the worker asks to be replaced now. */
  onTrigger(worker: Worker): void {
    if (this.ports.watchdogMs === undefined || worker.pid === undefined) return;
    this.ports.replace(worker.pid, 'watchdog', { trigger: true });
  }

  /** Replaces the serving workers gone silent, and says once of each one that never pinged. */
  onCheck(): void {
    const { watchdogMs, os, logger } = this.ports;
    const state = this.ports.masterState();
    if (watchdogMs === undefined || state === 'stopping' || state === 'stopped') return;
    for (const worker of this.ports.activeGeneration()?.currentWorkers ?? []) {
      if (worker.state !== 'ready' || worker.pid === undefined) continue;
      const verdict = watchdogVerdict(worker, os.now(), watchdogMs);
      if (verdict === 'expired') {
        this.ports.replace(worker.pid, 'watchdog', {
          silentMs: os.now() - (worker.lastWatchdogAt ?? os.now()),
          watchdogMs,
        });
      } else if (verdict === 'never-pinged' && !worker.watchdogSilenceReported) {
        worker.watchdogSilenceReported = true;
        logger.warn(
          { gen: worker.generation, worker: worker.index, pid: worker.pid, watchdogMs },
          'worker never sent WATCHDOG=1: the watchdog does not watch it (send WATCHDOG=1 to NOTIFY_SOCKET or the notify pipe at least every WATCHDOG_USEC/2, or use the child API)',
        );
      }
    }
    this.start();
  }
}
