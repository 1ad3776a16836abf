/** Waiting on events with a deadline: the only way tests wait (a fixed sleep is a bug). */

/** How `waitFor` polls and what its timeout error says. */
export interface WaitOptions {
  timeoutMs: number;
  /** What is awaited, for the error ("worker 0 of gen 2 to exit"); a function is read when the wait fails. */
  what: string | (() => string);
  intervalMs?: number;
}

/** The default pause between two probes of `waitFor`. */
export const DEFAULT_POLL_INTERVAL_MS = 25;

/** The error of every deadline in the helpers: says how long was waited and for what. */
export class WaitTimeoutError extends Error {
  constructor(
    readonly timeoutMs: number,
    readonly what: string,
  ) {
    super(`timed out after ${timeoutMs}ms waiting for ${what}`);
    this.name = 'WaitTimeoutError';
  }
}

const TIMED_OUT = Symbol('timed out');

/** Resolves with `TIMED_OUT` after `ms`, or with the promise's value if it settles first. */
async function raceTimer<T>(promise: Promise<T>, ms: number): Promise<T | typeof TIMED_OUT> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<typeof TIMED_OUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMED_OUT), Math.max(0, ms));
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `probe` until it returns something other than `undefined` or `false` and returns that,
 * or throws `timed out after Xms waiting for <what>`. A probe that throws ends the wait with its error;
 * a probe that hangs is abandoned at the deadline.
 */
export async function waitFor<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  { timeoutMs, what, intervalMs = DEFAULT_POLL_INTERVAL_MS }: WaitOptions,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const result = await raceTimer(Promise.resolve(probe()), deadline - performance.now());
    if (result !== TIMED_OUT && result !== undefined && result !== false) return result;
    const remaining = deadline - performance.now();
    if (result === TIMED_OUT || remaining <= 0) {
      throw new WaitTimeoutError(timeoutMs, typeof what === 'function' ? what() : what);
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(intervalMs, remaining)));
  }
}

/** Resolves or rejects as `promise` does, or rejects with a `WaitTimeoutError` for `what` after `ms`. */
export async function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  const result = await raceTimer(promise, ms);
  if (result === TIMED_OUT) throw new WaitTimeoutError(ms, what);
  return result;
}
