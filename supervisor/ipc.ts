/**
 * The messages a worker may send over its IPC channel (docs/contract.md):
 * each kind has its guard; the master dispatches on the kind.
 */

/** `process.send('ready')`: the worker serves (the same words as PM2's wait_ready). */
export type ReadyMessage = 'ready';

/** `{ baton: 'connections', count }`: the open connections a worker holds (child API). */
export interface ConnectionsMessage {
  baton: 'connections';
  count: number;
}

/** Every message a worker may send, by kind. */
export type WorkerMessage = { kind: 'ready' } | { kind: 'connections'; count: number };

/** Reads a raw IPC message; undefined for anything that is not part of the contract. */
export function parseWorkerMessage(message: unknown): WorkerMessage | undefined {
  if (message === 'ready') return { kind: 'ready' };
  if (typeof message !== 'object' || message === null) return undefined;
  const candidate = message as Partial<ConnectionsMessage>;
  if (
    candidate.baton === 'connections' &&
    Number.isInteger(candidate.count) &&
    (candidate.count as number) >= 0
  ) {
    return { kind: 'connections', count: candidate.count as number };
  }
  return undefined;
}
