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

/** `{ baton: 'exposed', names }`: the worker takes patches and exposes these names (child API `expose`). */
export interface ExposedMessage {
  baton: 'exposed';
  names: string[];
}

/** `{ baton: 'injected', id, ok, error? }`: how applying patch `id` went in the worker. */
export interface InjectedMessage {
  baton: 'injected';
  id: number;
  ok: boolean;
  error?: { message: string; stack?: string };
}

/** Why a patch failed in a worker, as the worker said it. */
export interface PatchFailure {
  message: string;
  stack: string | undefined;
}

/** Every message a worker may send, by kind. */
export type WorkerMessage =
  | { kind: 'ready' }
  | { kind: 'connections'; count: number }
  | { kind: 'exposed'; names: string[] }
  | { kind: 'injected'; id: number; error: PatchFailure | undefined };

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
  const exposed = message as Partial<ExposedMessage>;
  if (
    exposed.baton === 'exposed' &&
    Array.isArray(exposed.names) &&
    exposed.names.every((name) => typeof name === 'string')
  ) {
    return { kind: 'exposed', names: exposed.names };
  }
  const injected = message as Partial<InjectedMessage>;
  if (injected.baton === 'injected' && Number.isInteger(injected.id) && typeof injected.ok === 'boolean') {
    return {
      kind: 'injected',
      id: injected.id as number,
      error: injected.ok ? undefined : patchFailure(injected.error),
    };
  }
  return undefined;
}

/** The error a worker reported, whatever shape it came in. */
function patchFailure(error: unknown): PatchFailure {
  const reported = (typeof error === 'object' && error !== null ? error : {}) as Record<string, unknown>;
  return {
    message: typeof reported.message === 'string' ? reported.message : 'the patch failed (no message)',
    stack: typeof reported.stack === 'string' ? reported.stack : undefined,
  };
}
