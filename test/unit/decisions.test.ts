import { describe, expect, test } from '@jest/globals';
import {
  crashesAfterExit,
  decideReload,
  generationsOverDrainLimit,
  isCrashLoop,
  isGenerationReady,
  restartDelayMs,
  watchdogVerdict,
} from '../../supervisor/decisions.js';
import { RESTART_BACKOFF_MAX_MS, STABLE_UPTIME_MS } from '../../supervisor/options.js';

describe('isGenerationReady', () => {
  test('needs every worker ready, and at least one worker', () => {
    expect(isGenerationReady([])).toBe(false);
    expect(isGenerationReady([{ state: 'ready' }, { state: 'starting' }])).toBe(false);
    expect(isGenerationReady([{ state: 'ready' }, { state: 'ready' }])).toBe(true);
    expect(isGenerationReady([{ state: 'ready' }, { state: 'exited' }])).toBe(false);
  });
});

describe('restart backoff', () => {
  test('the first crash restarts at once, then the delay doubles up to the cap', () => {
    const delays = [1, 2, 3, 4, 5].map(restartDelayMs);
    expect(delays).toEqual([0, 250, 500, 1000, 2000]);
    expect(restartDelayMs(40)).toBe(RESTART_BACKOFF_MAX_MS);
  });

  test('a worker that ran long enough starts the count again', () => {
    expect(crashesAfterExit(5, STABLE_UPTIME_MS)).toBe(1);
    expect(crashesAfterExit(5, STABLE_UPTIME_MS - 1)).toBe(6);
  });

  test('three quick crashes in a row are a crash loop', () => {
    expect(isCrashLoop(2)).toBe(false);
    expect(isCrashLoop(3)).toBe(true);
  });
});

describe('generationsOverDrainLimit', () => {
  const draining = (id: number, forced = false) => ({ id, state: 'draining' as const, forced });

  test('cuts the oldest draining generations beyond the limit', () => {
    const generations = [
      draining(4),
      draining(2),
      draining(3),
      { id: 5, state: 'active' as const, forced: false },
    ];
    expect(generationsOverDrainLimit(generations, 2)).toEqual([2]);
    expect(generationsOverDrainLimit(generations, 3)).toEqual([]);
  });

  test('does not count generations already cut short', () => {
    expect(generationsOverDrainLimit([draining(1, true), draining(2), draining(3)], 2)).toEqual([]);
  });
});

describe('decideReload', () => {
  test('starts when idle, queues one behind a running reload, never two', () => {
    expect(decideReload({ stopping: false, reloadRunning: false, reloadQueued: false })).toBe('start');
    expect(decideReload({ stopping: false, reloadRunning: true, reloadQueued: false })).toBe('queue');
    expect(decideReload({ stopping: false, reloadRunning: true, reloadQueued: true })).toBe('already-queued');
    expect(decideReload({ stopping: true, reloadRunning: false, reloadQueued: false })).toBe(
      'ignore-stopping',
    );
  });
});

describe('watchdogVerdict', () => {
  const period = 1000;
  test('a worker not ready yet, or ready for less than a period without a ping, is not judged yet', () => {
    expect(watchdogVerdict({ readyAt: undefined, lastWatchdogAt: undefined }, 5000, period)).toBe('not-yet');
    expect(watchdogVerdict({ readyAt: 4500, lastWatchdogAt: undefined }, 5000, period)).toBe('not-yet');
  });
  test('one that never pinged a whole period after it became ready is reported, not expired', () => {
    expect(watchdogVerdict({ readyAt: 3000, lastWatchdogAt: undefined }, 5000, period)).toBe('never-pinged');
  });
  test('one that pinged is alive within a period of its last ping, expired past it', () => {
    expect(watchdogVerdict({ readyAt: 1000, lastWatchdogAt: 4200 }, 5000, period)).toBe('alive');
    expect(watchdogVerdict({ readyAt: 1000, lastWatchdogAt: 4000 }, 5000, period)).toBe('alive');
    expect(watchdogVerdict({ readyAt: 1000, lastWatchdogAt: 3999 }, 5000, period)).toBe('expired');
  });
});
