/**
 * What a test started and must stop even when it fails: load loops, client sockets.
 * `killAll` (processes.ts) runs these before it kills the process trees, so an `afterEach`
 * needs one call. Each test file gets its own copy of this module (Jest isolates modules per file).
 */

type Cleanup = () => void | Promise<void>;

const pending = new Set<Cleanup>();

/** Remembers `cleanup` until `runCleanups`; returns a function that forgets it (call it when done normally). */
export function registerCleanup(cleanup: Cleanup): () => void {
  pending.add(cleanup);
  return () => {
    pending.delete(cleanup);
  };
}

/** Runs and forgets every registered cleanup; throws an AggregateError if any of them failed. */
export async function runCleanups(): Promise<void> {
  const cleanups = [...pending];
  pending.clear();
  const results = await Promise.allSettled(cleanups.map(async (cleanup) => cleanup()));
  const errors = results.flatMap((result) => (result.status === 'rejected' ? [result.reason] : []));
  if (errors.length > 0) throw new AggregateError(errors, 'cleanup failed');
}
