/**
 * Live session handoff, the worker's side (docs/handoff.md). Asked by the master, an old worker stops
 * reading each connection of a listener, lets its pending writes flush, asks the app for the session's
 * state and sends the raw handle with that state to the master, which passes it to a new worker; there
 * the app adopts it. The old copy is closed only once the new worker has adopted the connection; until
 * then it stays, not reading, so that a refused or failed adoption lets the session go on here.
 */
import type net from 'node:net';
import {
  hasUndecodedBytes,
  heldByHttpParser,
  isStreamHandle,
  resumeReading,
  type StreamHandle,
  sendWithHandle,
  socketFromHandle,
  stopReading,
} from './node-internals.js';

/**
 * In the old worker: called for each open connection of the listener when the new generation can take
 * it, at a moment the connection neither reads nor has writes pending. Returns the session's state
 * (JSON-serializable) to move it, or `undefined` to keep it here, draining as before. It must not end the
 * session: if the move does not happen, the connection simply goes on in this worker.
 */
export type HandoffHook<State = unknown> = (
  socket: net.Socket,
) => State | undefined | Promise<State | undefined>;

/**
 * In the new worker: called with a moved connection and the state its old worker gave, before anything
 * is read from it. Must set the session up synchronously (attach its 'data' listener); if it throws, the
 * connection goes back to the old worker.
 */
export type AdoptHook<State = unknown> = (socket: net.Socket, state: State) => void;

/** What became of the connections one handoff request covered, as the old worker saw it. */
export interface HandoffCounts {
  /** Connections of the listeners asked for, considered for a move. */
  offered: number;
  /** Adopted by a new worker; this worker's copy is closed. */
  moved: number;
  /** Declined by the app, not quiet in time, or not movable (TLS, HTTP, half closed): draining here. */
  kept: number;
  /** Sent, but the new worker did not adopt them: they went on here. */
  failed: number;
}

/** `{ baton: 'handoff' }` from the master: hand off the connections of these listeners. */
interface HandoffRequest {
  baton: 'handoff';
  listeners: string[];
  flushTimeoutMs: number;
}

/** `{ baton: 'adopt' }` from the master, with a raw handle: a connection to adopt. */
interface AdoptRequest {
  baton: 'adopt';
  relay: number;
  listener: string;
  state: unknown;
}

/** `{ baton: 'handoff-settled' }` from the master: whether the connection sent as `id` was adopted. */
interface SettledNotice {
  baton: 'handoff-settled';
  id: number;
  adopted: boolean;
}

/** What the handoff needs from the rest of the child API (the Drainer). */
export interface ConnectionBook {
  /** Whether this worker drains: it takes no new connection, moved ones included. */
  readonly draining: boolean;
  /** The open connections accepted (or adopted) on `listener`. */
  connectionsOf(listener: string): net.Socket[];
  /** Whether `listener`'s connections are encrypted (TLS: never moved). */
  isEncrypted(listener: string): boolean;
  /** Counts an adopted connection as one of `listener`'s, for reports and the drain. */
  adopt(socket: net.Socket, listener: string): void;
  /** Stops accepting: a worker asked to hand off is being replaced. */
  stopAccepting(): void;
  /** Keeps the process from exiting until the returned function is called. */
  holdExit(): () => void;
}

/** How often a connection is checked while its writes flush. */
export const QUIET_POLL_INTERVAL_MS = 5;
/** How many connections of one worker are between their stop of reading and their adoption at a time. */
export const MOVES_AT_ONCE = 32;

/** Both sides of the handoff for one worker process: hooks, connections moving out, connections adopted. */
export class SessionMover {
  readonly #handoffHooks = new Map<string, HandoffHook>();
  readonly #adoptHooks = new Map<string, AdoptHook>();
  readonly #settling = new Map<number, (adopted: boolean) => void>();
  readonly #movedAway = new WeakSet<net.Socket>();
  /** Connections between the stop of their reads and the answer of the new worker. */
  readonly #moving = new WeakSet<net.Socket>();
  #nextId = 1;
  #listening = false;

  constructor(
    private readonly book: ConnectionBook,
    private readonly underBaton: boolean,
  ) {}

  onHandoff(listener: string, hook: HandoffHook): void {
    this.#handoffHooks.set(listener, hook);
    this.#announce();
  }

  onAdopt(listener: string, hook: AdoptHook): void {
    this.#adoptHooks.set(listener, hook);
    this.#announce();
  }

  /** Whether `socket` was closed here because a new worker adopted it. */
  wasHandedOff(socket: net.Socket): boolean {
    return this.#movedAway.has(socket);
  }

  /** Tells the master which listeners this worker hands off and adopts, and starts listening to it. */
  #announce(): void {
    if (!this.underBaton || !process.send) return;
    if (!this.#listening) {
      this.#listening = true;
      process.on('message', (message: unknown, handle: unknown) => this.#onMessage(message, handle));
    }
    const message = {
      baton: 'handoff-hooks',
      handsOff: [...this.#handoffHooks.keys()],
      adopts: [...this.#adoptHooks.keys()],
    };
    if (process.connected) process.send(message, undefined, undefined, ignoreSendError);
  }

  #onMessage(message: unknown, handle: unknown): void {
    if (typeof message !== 'object' || message === null) return;
    const kind = (message as { baton?: unknown }).baton;
    if (kind === 'handoff') void this.#handOff(message as HandoffRequest);
    else if (kind === 'adopt') this.#adopt(message as AdoptRequest, handle);
    else if (kind === 'handoff-settled') {
      const notice = message as SettledNotice;
      this.#settling.get(notice.id)?.(notice.adopted === true);
      this.#settling.delete(notice.id);
    }
  }

  /** Moves every connection of the listeners asked for, then reports the counts to the master. */
  async #handOff(request: HandoffRequest): Promise<void> {
    const release = this.book.holdExit();
    this.book.stopAccepting();
    const counts: HandoffCounts = { offered: 0, moved: 0, kept: 0, failed: 0 };
    const flushTimeoutMs = Number(request.flushTimeoutMs) || 0;
    const moves: Array<() => Promise<'moved' | 'kept' | 'failed'>> = [];
    for (const listener of Array.isArray(request.listeners) ? request.listeners : []) {
      const hook = this.#handoffHooks.get(listener);
      if (!hook) continue;
      const encrypted = this.book.isEncrypted(listener);
      for (const socket of this.book.connectionsOf(listener)) {
        counts.offered++;
        if (encrypted) counts.kept++;
        else moves.push(() => this.#moveOut(socket, listener, hook, performance.now() + flushTimeoutMs));
      }
    }
    // A connection stops reading only when its turn comes: handles cross the IPC channel one at a time,
    // so stopping every connection at once would make the last one wait for all the others.
    const mover = async () => {
      for (let move = moves.shift(); move; move = moves.shift()) {
        try {
          counts[await move()]++;
        } catch (error) {
          console.error('baton: moving a connection failed; it stays in this worker', error);
          counts.kept++;
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: MOVES_AT_ONCE }, mover));
      if (process.connected && process.send) {
        await new Promise<void>((resolve) =>
          process.send?.({ baton: 'handoff-finished', ...counts }, undefined, undefined, () => resolve()),
        );
      }
    } finally {
      release();
    }
  }

  async #moveOut(
    socket: net.Socket,
    listener: string,
    hook: HandoffHook,
    deadline: number,
  ): Promise<'moved' | 'kept' | 'failed'> {
    if (!isMovable(socket) || this.#moving.has(socket)) return 'kept';
    const stopped = stopReading(socket);
    if (!stopped) return 'kept';
    this.#moving.add(socket);
    const keep = () => {
      this.#moving.delete(socket);
      resumeReading(stopped);
      return 'kept' as const;
    };
    if (!(await waitQuiet(socket, deadline))) return keep();
    let state: unknown;
    try {
      state = await hook(socket);
    } catch (error) {
      console.error('baton: an onHandoff hook failed; the connection stays in this worker', error);
      return keep();
    }
    if (state === undefined || !isMovable(socket)) return keep();
    // The hook may have written a last line: it must reach the client before the handle moves. The
    // check right before cork() and the send runs in the same tick as them.
    do {
      if (!(await waitQuiet(socket, deadline))) return keep();
    } while (!isQuiet(socket));
    // What the app writes from now on belongs to a session that is leaving: held back, and dropped if the
    // connection moves (the new worker writes from here), sent if it stays.
    socket.cork();
    const id = this.#nextId++;
    const adopted = new Promise<boolean>((resolve) => this.#settling.set(id, resolve));
    try {
      await sendWithHandle({ baton: 'handoff-connection', id, listener, state }, stopped.handle);
    } catch {
      this.#settling.delete(id);
      socket.uncork();
      return keep();
    }
    if (!(await adopted)) {
      socket.uncork();
      keep();
      return 'failed';
    }
    this.#moving.delete(socket);
    this.#movedAway.add(socket);
    // Never end(): that shuts the connection the new worker now serves. destroy() closes only this copy.
    socket.destroy();
    return 'moved';
  }

  /** Takes over a connection the master relayed; answers whether it was adopted. */
  #adopt(request: AdoptRequest, handle: unknown): void {
    const answer = (ok: boolean, reason?: string) => {
      if (process.connected && process.send) {
        process.send(
          { baton: 'adopted', relay: request.relay, ok, reason },
          undefined,
          undefined,
          ignoreSendError,
        );
      }
    };
    if (!isStreamHandle(handle)) {
      answer(false, 'no connection came with the message');
      return;
    }
    const hook = this.#adoptHooks.get(request.listener);
    if (!hook || this.book.draining) {
      // Closing this copy leaves the connection open: the old worker still holds its own.
      closeQuietly(handle);
      answer(false, hook ? 'this worker drains' : `no onAdopt hook for '${request.listener}'`);
      return;
    }
    const socket = socketFromHandle(handle);
    this.book.adopt(socket, request.listener);
    try {
      hook(socket, request.state);
    } catch (error) {
      console.error('baton: an onAdopt hook failed; the connection goes back to its old worker', error);
      socket.destroy();
      answer(false, error instanceof Error ? error.message : String(error));
      return;
    }
    answer(true);
  }
}

/** A connection that can move: open both ways, owned by no HTTP parser. */
function isMovable(socket: net.Socket): boolean {
  return !socket.destroyed && !socket.readableEnded && !socket.writableEnded && !heldByHttpParser(socket);
}

/** Nothing waits to be written and nothing read waits for the app: the connection is at a boundary. */
export function isQuiet(socket: net.Socket): boolean {
  return socket.writableLength === 0 && socket.readableLength === 0 && !hasUndecodedBytes(socket);
}

/** Resolves true once `socket` is quiet, false if the deadline (`performance.now()`) passes first or it closes. */
export async function waitQuiet(socket: net.Socket, deadline: number): Promise<boolean> {
  for (;;) {
    if (socket.destroyed) return false;
    if (isQuiet(socket)) return true;
    if (performance.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, QUIET_POLL_INTERVAL_MS));
  }
}

function closeQuietly(handle: StreamHandle): void {
  try {
    handle.close();
  } catch {
    // already closed
  }
}

/** A send that fails because the master is gone needs no handling: 'disconnect' starts the drain. */
function ignoreSendError(): void {}
