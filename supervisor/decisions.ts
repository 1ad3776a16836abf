/**
 * The master's decisions as pure functions over snapshots: testable without a
 * process, a clock or a socket.
 */

import type { GenerationState } from './generation.js';
import {
  CRASH_LOOP_THRESHOLD,
  RESTART_BACKOFF_BASE_MS,
  RESTART_BACKOFF_MAX_MS,
  STABLE_UPTIME_MS,
} from './options.js';
import type { WorkerState } from './worker.js';

/** A generation is ready when it has workers and every one of them said ready. */
export function isGenerationReady(workers: ReadonlyArray<{ state: WorkerState }>): boolean {
  return workers.length > 0 && workers.every((worker) => worker.state === 'ready');
}

/** Crashes in a row after this one: a worker that ran long enough starts the count again. */
export function crashesAfterExit(previousCrashes: number, uptimeMs: number): number {
  return uptimeMs >= STABLE_UPTIME_MS ? 1 : previousCrashes + 1;
}

/** How long to wait before restarting a slot that crashed `crashes` times in a row (exponential, capped). */
export function restartDelayMs(crashes: number): number {
  if (crashes <= 1) return 0;
  return Math.min(RESTART_BACKOFF_BASE_MS * 2 ** (crashes - 2), RESTART_BACKOFF_MAX_MS);
}

/** Whether a slot's crashes in a row make a crash loop worth reporting as such. */
export function isCrashLoop(crashes: number): boolean {
  return crashes >= CRASH_LOOP_THRESHOLD;
}

/**
 * Which draining generations to cut short so that at most `maxDraining` drain
 * at once: the oldest go first.
 */
export function generationsOverDrainLimit(
  generations: ReadonlyArray<{ id: number; state: GenerationState; forced: boolean }>,
  maxDraining: number,
): number[] {
  const draining = generations
    .filter((generation) => generation.state === 'draining' && !generation.forced)
    .map((generation) => generation.id)
    .sort((a, b) => a - b);
  return draining.slice(0, Math.max(0, draining.length - maxDraining));
}

/** What a reload request does, given what the master is doing. */
export type ReloadDecision = 'start' | 'queue' | 'already-queued' | 'ignore-stopping';

/** A reload starts now, or is coalesced into one more after the running one: never two at once. */
export function decideReload(state: {
  stopping: boolean;
  reloadRunning: boolean;
  reloadQueued: boolean;
}): ReloadDecision {
  if (state.stopping) return 'ignore-stopping';
  if (!state.reloadRunning) return 'start';
  return state.reloadQueued ? 'already-queued' : 'queue';
}

/** What a stop still waits for: the generations with live workers, their connections, the time left. */
export interface StopWait {
  generations: Array<{ gen: number; workers: number; connections: number }>;
  connections: number;
  /** How long until the last drain deadline kills what is left. */
  killInMs: number;
}

/** What a stop waits for now; undefined when no worker is left. */
export function stopWait(
  generations: ReadonlyArray<{
    id: number;
    drainStartedAt: number | undefined;
    liveWorkers: ReadonlyArray<{ connections: number | undefined }>;
  }>,
  now: number,
  drainTimeoutMs: number,
): StopWait | undefined {
  const waiting = generations.filter((generation) => generation.liveWorkers.length > 0);
  if (waiting.length === 0) return undefined;
  const rows = waiting.map((generation) => ({
    gen: generation.id,
    workers: generation.liveWorkers.length,
    connections: generation.liveWorkers.reduce((sum, worker) => sum + (worker.connections ?? 0), 0),
  }));
  const killInMs = Math.max(
    0,
    ...waiting.map((generation) => (generation.drainStartedAt ?? now) + drainTimeoutMs - now),
  );
  return { generations: rows, connections: rows.reduce((sum, row) => sum + row.connections, 0), killInMs };
}

/** What `--watchdog` makes of a serving worker now. */
export type WatchdogVerdict = 'alive' | 'expired' | 'never-pinged' | 'not-yet';

/**
 * A serving worker that pinged and then stayed silent past the watchdog has expired; one that never
 * pinged within a watchdog period after it became ready is reported (not replaced: it may simply not
 * know the protocol, and replacing it would loop).
 */
export function watchdogVerdict(
  worker: { readyAt: number | undefined; lastWatchdogAt: number | undefined },
  now: number,
  watchdogMs: number,
): WatchdogVerdict {
  if (worker.readyAt === undefined) return 'not-yet';
  if (worker.lastWatchdogAt === undefined)
    return now - worker.readyAt > watchdogMs ? 'never-pinged' : 'not-yet';
  return now - worker.lastWatchdogAt > watchdogMs ? 'expired' : 'alive';
}
