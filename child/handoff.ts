/**
 * Live session handoff, the worker's side (docs/handoff.md). Asked by the master, an old worker stops
 * reading each connection of a listener, lets its pending writes flush, asks the app for the session's
 * state and sends the raw handle with that state to the master, which passes it to a new worker. The new
 * worker hands it to the app's hook as it arrives, reads and writes held back, and holds it so until the
 * master asks what became of all it holds; the worker answers once every hook is done. Only once every
 * new worker has answered does the master commit: the new worker lets the connection go, the old one
 * closes its copy. If anything fails before that, the new worker drops its copies and the old one reads
 * on from where it stopped.
 *
 * In a staged round (both sides with the descriptor channel), the old worker first sends a copy of each
 * connection while it still serves it and the new worker wraps it; only when the master says freeze does
 * the old worker stop each at a boundary and send its state, which the new worker's hook then adopts.
 */
import { fstatSync } from 'node:fs';
import type net from 'node:net';
import type { BatchInbox, BatchOutbox } from '../supervisor/fd-channel.js';
import { onMasterMessage, sendToMaster } from './channel.js';
import {
  type HandleOpener,
  type HeldSocket,
  handleOpenerLike,
  hasUndecodedBytes,
  heldByHttpParser,
  holdSocketFromFd,
  holdSocketFromHandle,
  isStreamHandle,
  resumeReading,
  type StoppedReading,
  type StreamHandle,
  sendWithHandle,
  stopReading,
  streamHandleOf,
} from './node-internals.js';
import type { HandoffCounts, MasterWire, SessionState, WorkerWire } from './protocol.js';

type HandoffRequest = MasterWire['handoff'];
type AdoptRequest = MasterWire['adopt'];

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
 * In the new worker: called with a moved connection and the state its old worker gave. Must set the
 * session up synchronously (attach its 'data' listener). Nothing is read from the connection, and what
 * the hook writes is held back, until every new worker has adopted its share; if the hook throws, or
 * anything fails before that, the connection goes on in the old worker and this socket is destroyed.
 */
export type AdoptHook<State = unknown> = (socket: net.Socket, state: State) => void;

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
/**
 * How many connections of one worker wait for their writes to flush at a time, over IPC (one connection
 * per message). Over the descriptor channel every connection starts at once: those quiet now are all in
 * the batches of the same turn, and one waiting for its writes holds none of the others.
 */
export const MOVES_AT_ONCE = 32;

/** How many frozen connections' states go to the master in one message, at most. */
const STATES_PER_MESSAGE = 128;

/** A connection in a batch the old worker sends on its descriptor channel. */
interface OutgoingEntry {
  id: number;
  listener: string;
  state?: unknown;
  /** Staged: the state follows once frozen (`handoff-states`). */
  staged?: true;
}

/**
 * This worker's descriptor channel (BATON_FD_CHANNEL), loaded only by a worker that takes part in a
 * handoff: batches of connections out, batches of relays in.
 */
interface DescriptorLink {
  outbox: BatchOutbox<OutgoingEntry>;
  inbox: BatchInbox;
  entriesOf: typeof import('../supervisor/fd-channel.js').batchEntries;
  closeDescriptor(fd: number): void;
  duplicate(fd: number): number;
}

/** A connection sent to the master; `settled` resolves once the round decided what became of it. */
interface Sent {
  settled: Promise<void>;
}

/** A connection of a listener asked for, with the app's hook that takes its state. */
interface Candidate {
  socket: net.Socket;
  listener: string;
  hook: HandoffHook;
}

/**
 * A connection staged in a round: its descriptor went out while this worker still serves it. `staged`
 * until the freeze, `freezing` while it waits for a boundary and its state, `sent` once its state went
 * out (corked, reads stopped), `done` once its fate is known here.
 */
class Staged {
  phase: 'staged' | 'freezing' | 'sent' | 'done' = 'staged';
  /** The round ended while the connection was freezing: it stays here. */
  cancelled = false;
  readonly settled: Promise<void>;
  #resolve: () => void = () => {};
  #stopped: StoppedReading | undefined;
  #leaving: (() => void) | undefined;

  constructor(
    readonly id: number,
    readonly candidate: Candidate,
  ) {
    this.settled = new Promise((resolve) => {
      this.#resolve = resolve;
    });
  }

  freezing(stopped: StoppedReading): void {
    this.phase = 'freezing';
    this.#stopped = stopped;
  }

  /** Its state went out; `leaving` runs once its fate is known. */
  sent(leaving: () => void): void {
    this.phase = 'sent';
    this.#leaving = leaving;
  }

  /** It stays here, reading again (or it closed meanwhile). */
  kept(): void {
    this.phase = 'done';
    this.#resolve();
  }

  /** The master's word on it: closed here if a new worker adopted it, else it reads on. */
  onSettled(adopted: boolean, movedAway: WeakSet<net.Socket>): void {
    if (this.phase === 'freezing') {
      // #freeze sees it and keeps the connection here once the app's hook is done.
      this.cancelled = true;
      return;
    }
    if (this.phase === 'sent' && this.#stopped) {
      const { socket } = this.candidate;
      this.#leaving?.();
      if (adopted) {
        movedAway.add(socket);
        // Never end(): that shuts the connection the new worker now serves.
        socket.destroy();
      } else {
        socket.uncork();
        resumeReading(this.#stopped);
      }
    }
    // `staged`: it never stopped reading; the new worker's copy is dropped there.
    this.kept();
  }
}

/** The states of frozen connections and the ids kept after all, sent to the master once per turn. */
class StatesOutbox {
  #states: SessionState[] = [];
  #kept: number[] = [];
  #scheduled = false;

  send(id: number, state: unknown): void {
    this.#states.push({ id, state });
    // The new workers adopt a part while the rest is still being stopped here.
    if (this.#states.length >= STATES_PER_MESSAGE) this.flush();
    else this.#schedule();
  }

  keep(id: number): void {
    this.#kept.push(id);
    this.#schedule();
  }

  flush(): void {
    if (this.#states.length === 0 && this.#kept.length === 0) return;
    sendToMaster({ baton: 'handoff-states', states: this.#states, kept: this.#kept });
    this.#states = [];
    this.#kept = [];
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.flush();
    });
  }
}

/** This worker's copy of a relayed connection, as it came: a libuv handle over IPC, or a bare descriptor. */
interface HeldCopy {
  /** Wraps it in a net.Socket that reads nothing until released. */
  wrap(): HeldSocket;
  /** Closes this copy only; the connection stays open in its old worker. */
  close(): void;
}

/** A connection the master relayed, held here until the round commits or aborts. */
interface Held {
  readonly listener: string;
  state: unknown;
  readonly copy: HeldCopy;
  /** Set once wrapped: as it came when staged, else when the app adopts it (reads and writes held back). */
  adopted?: HeldSocket;
  /** Staged: its state comes later (`adopt-states`). */
  staged?: boolean;
}

/** Both sides of the handoff for one worker process: hooks, connections moving out, connections adopted. */
export class SessionMover {
  readonly #handoffHooks = new Map<string, HandoffHook>();
  readonly #adoptHooks = new Map<string, AdoptHook>();
  readonly #settling = new Map<number, (adopted: boolean) => void>();
  readonly #movedAway = new WeakSet<net.Socket>();
  /**
   * Connections offered since the last switch round: the sweep that follows it (same reload) does not
   * ask the app about them again; the next reload's switch round does.
   */
  #offered = new WeakSet<net.Socket>();
  /** Connections between the stop of their reads and the answer of the round. */
  readonly #moving = new WeakSet<net.Socket>();
  /** Connections relayed to this worker, by relay number, until the round commits or aborts. */
  readonly #held = new Map<number, Held>();
  /**
   * What the app's hook made of each connection held (run as it arrived): true once adopted, else why
   * not. Kept until the round commits or aborts, so that the answer to `handoff-commit` can say why.
   */
  readonly #adoptions = new Map<number, Promise<true | string>>();
  #nextId = 1;
  #listening = false;
  /** Set while a staged round of this worker waits for `handoff-freeze`. */
  #awaitingFreeze: (() => void) | undefined;
  /** The descriptor channel once loaded; until then (or without one) connections travel over IPC. */
  #link: DescriptorLink | undefined;
  #linkAsked = false;
  /**
   * For each listener whose connections are TCP, how to open a handle on a received descriptor: learnt
   * from the first one wrapped, so that the rest skip net.Socket's probe of what the fd is.
   */
  readonly #openers = new Map<string, HandleOpener>();

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
      onMasterMessage('handoff', (request) => void this.#handOff(request));
      onMasterMessage('adopt', (request, handle) => this.#hold(request, handle));
      onMasterMessage('adopt-batch', (notice) => this.#holdBatch(notice));
      onMasterMessage('adopt-states', (notice) => this.#takeStates(notice));
      onMasterMessage('handoff-prepare', () => sendToMaster({ baton: 'handoff-prepared' }));
      onMasterMessage('handoff-freeze', () => {
        this.#awaitingFreeze?.();
        this.#awaitingFreeze = undefined;
      });
      onMasterMessage('handoff-commit', (notice) => void this.#answerCommit(relaysOf(notice)));
      onMasterMessage('handoff-go', (notice) => this.#go(relaysOf(notice)));
      onMasterMessage('handoff-abort', (notice) => this.#drop(relaysOf(notice)));
      onMasterMessage('handoff-settled', (notice) => {
        // `id`: one connection per message, as a master before batched settlements sent it.
        const ids = Array.isArray(notice.ids) ? notice.ids : typeof notice.id === 'number' ? [notice.id] : [];
        for (const id of ids) {
          this.#settling.get(id)?.(notice.adopted === true);
          this.#settling.delete(id);
        }
      });
      // With the master gone no round ends: every connection goes on where it was.
      process.once('disconnect', () => {
        for (const settle of this.#settling.values()) settle(false);
        this.#settling.clear();
        this.#drop([...this.#held.keys()]);
      });
    }
    if (!this.#linkAsked) {
      this.#linkAsked = true;
      // Announced again once the channel is open: from then on the master relays over it.
      void this.#openLink().then((opened) => {
        if (opened) this.#announce();
      });
    }
    sendToMaster({
      baton: 'handoff-hooks',
      handsOff: [...this.#handoffHooks.keys()],
      adopts: [...this.#adoptHooks.keys()],
      ...(this.#link ? { fdChannel: true, stages: true } : {}),
    });
  }

  /**
   * Opens the descriptor channel the master passed (BATON_FD_CHANNEL): loaded here, by a worker that
   * uses handoff, and by no other. False where there is none or it cannot be used (a wrapper such as
   * npm passes only fds 0-2 on; no koffi): connections then travel over IPC, one per message.
   */
  async #openLink(): Promise<boolean> {
    const fd = Number(process.env.BATON_FD_CHANNEL);
    if (!Number.isInteger(fd) || fd < 3) return false;
    try {
      if (!fstatSync(fd).isSocket()) return false;
      const [channels, linux] = await Promise.all([
        import('../supervisor/fd-channel.js'),
        import('../supervisor/linux.js'),
      ]);
      // What this worker spawns must not hold the channel open after it is gone.
      linux.setCloseOnExec(fd, true);
      const channel = new channels.FdChannel(fd);
      this.#link = {
        inbox: new channels.BatchInbox(channel),
        outbox: new channels.BatchOutbox<OutgoingEntry>(
          channel,
          (batch, entries) =>
            new Promise((resolve, reject) => {
              const notice: WorkerWire['handoff-batch'] = {
                baton: 'handoff-batch',
                batch,
                ids: entries.map((entry) => entry.id),
              };
              if (!sendToMaster(notice, (error) => (error ? reject(error) : resolve()))) {
                reject(new Error('no IPC channel to the master'));
              }
            }),
        ),
        entriesOf: channels.batchEntries,
        closeDescriptor: linux.closeDescriptor,
        duplicate: linux.duplicateDescriptor,
      };
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Sends every connection of the listeners asked for that can move, reports the counts to the master,
   * then waits for the round's answer about each before letting the process exit.
   */
  async #handOff(request: HandoffRequest): Promise<void> {
    const release = this.book.holdExit();
    const sweep = request.stopAccepting === true;
    if (sweep) this.book.stopAccepting();
    else this.#offered = new WeakSet();
    const counts: HandoffCounts = { offered: 0, sent: 0, kept: 0 };
    const flushTimeoutMs = Number(request.flushTimeoutMs) || 0;
    const candidates: Candidate[] = [];
    for (const listener of Array.isArray(request.listeners) ? request.listeners : []) {
      const hook = this.#handoffHooks.get(listener);
      if (!hook) continue;
      const encrypted = this.book.isEncrypted(listener);
      for (const socket of this.book.connectionsOf(listener)) {
        if (sweep && this.#offered.has(socket)) continue;
        this.#offered.add(socket);
        counts.offered++;
        if (encrypted) counts.kept++;
        else candidates.push({ socket, listener, hook });
      }
    }
    try {
      const link = this.#link;
      if (request.stage === true && link) await this.#handOffStaged(candidates, counts, flushTimeoutMs, link);
      else await this.#handOffEach(candidates, counts, flushTimeoutMs);
    } finally {
      release();
    }
  }

  /** Moves each candidate on its own: stopped, its state taken, and sent with it. */
  async #handOffEach(candidates: Candidate[], counts: HandoffCounts, flushTimeoutMs: number): Promise<void> {
    const settled: Array<Promise<void>> = [];
    // A connection stops reading only when its turn comes, so that one waiting for its writes to flush
    // does not hold the others.
    let next = 0;
    const mover = async () => {
      for (let candidate = candidates[next++]; candidate; candidate = candidates[next++]) {
        const { socket, listener, hook } = candidate;
        try {
          const outcome = await this.#moveOut(socket, listener, hook, performance.now() + flushTimeoutMs);
          if (outcome === 'kept') counts.kept++;
          else {
            counts.sent++;
            settled.push(outcome.settled);
          }
        } catch (error) {
          console.error('baton: moving a connection failed; it stays in this worker', error);
          counts.kept++;
        }
      }
    };
    await Promise.all(Array.from({ length: this.#link ? candidates.length : MOVES_AT_ONCE }, mover));
    await this.#sendFinished(counts);
    await Promise.all(settled);
  }

  /**
   * A staged round (docs/handoff.md): every candidate's descriptor goes out at once while this worker
   * still serves it, so that the new workers wrap them meanwhile; only when the master says so
   * (`handoff-freeze`) does each stop at a boundary and its state follow, which is all a session waits
   * for.
   */
  async #handOffStaged(
    candidates: Candidate[],
    counts: HandoffCounts,
    flushTimeoutMs: number,
    link: DescriptorLink,
  ): Promise<void> {
    let askedToFreeze: () => void = () => {};
    const freezeAsked = new Promise<true>((resolve) => {
      askedToFreeze = () => resolve(true);
    });
    this.#awaitingFreeze = askedToFreeze;
    const sends: Array<Promise<Staged | undefined>> = [];
    for (const candidate of candidates) {
      const fd = isMovable(candidate.socket) ? streamHandleOf(candidate.socket)?.fd : undefined;
      if (fd === undefined || fd < 0 || this.#moving.has(candidate.socket)) {
        counts.kept++;
        continue;
      }
      // A copy under a number of its own: the app serves the connection on, and may close it before
      // the batch goes out, which must not free the number that is sent.
      let copy: number;
      try {
        copy = link.duplicate(fd);
      } catch {
        counts.kept++;
        continue;
      }
      const staged = new Staged(this.#nextId++, candidate);
      this.#settling.set(staged.id, (adopted) => staged.onSettled(adopted, this.#movedAway));
      sends.push(
        link.outbox.send({ id: staged.id, listener: candidate.listener, staged: true }, copy).then(
          () => {
            link.closeDescriptor(copy);
            return staged;
          },
          () => {
            link.closeDescriptor(copy);
            // Never sent: nothing to settle, the connection simply goes on here.
            this.#settling.delete(staged.id);
            counts.kept++;
            return undefined;
          },
        ),
      );
    }
    const staged = (await Promise.all(sends)).filter((entry): entry is Staged => entry !== undefined);
    if (staged.length === 0) {
      // Nothing to freeze: this worker's part of the round is over now.
      if (this.#awaitingFreeze === askedToFreeze) this.#awaitingFreeze = undefined;
      await this.#sendFinished(counts);
      return;
    }
    sendToMaster({ baton: 'handoff-staged', staged: staged.length });
    const allSettled = Promise.all(staged.map((entry) => entry.settled));
    const frozen = await Promise.race([freezeAsked, allSettled.then(() => false as const)]);
    if (!frozen) {
      // Every connection was settled before the freeze (refused by its new worker, or the round was
      // aborted): a freeze that still comes is answered with the counts.
      if (this.#awaitingFreeze === askedToFreeze) {
        this.#awaitingFreeze = () => void this.#sendFinished(counts);
      }
    } else {
      const deadline = performance.now() + flushTimeoutMs;
      const outbox = new StatesOutbox();
      await Promise.all(
        staged.map(async (entry) => {
          // Settled before the freeze (its new worker refused it): the master counted it already.
          if (entry.phase === 'done') return;
          const state = await this.#freeze(entry, deadline).catch((error: unknown) => {
            console.error('baton: moving a connection failed; it stays in this worker', error);
            return undefined;
          });
          if (state === undefined) {
            counts.kept++;
            entry.kept();
            this.#settling.delete(entry.id);
            outbox.keep(entry.id);
          } else {
            counts.sent++;
            outbox.send(entry.id, state.value);
          }
        }),
      );
      outbox.flush();
      await this.#sendFinished(counts);
    }
    await allSettled;
  }

  /**
   * Stops a staged connection at a boundary and takes its state from the app: `{ value }` once it is
   * ready to go (corked, its reads stopped), undefined if it stays (reading again).
   */
  async #freeze(entry: Staged, deadline: number): Promise<{ value: unknown } | undefined> {
    const { socket, hook } = entry.candidate;
    if (entry.phase !== 'staged' || entry.cancelled || !isMovable(socket) || this.#moving.has(socket))
      return undefined;
    const stopped = stopReading(socket);
    if (!stopped) return undefined;
    this.#moving.add(socket);
    entry.freezing(stopped);
    const keep = () => {
      this.#moving.delete(socket);
      resumeReading(stopped);
      return undefined;
    };
    // A quiet connection and a hook that answers at once go through without a turn of the event loop.
    if (!isQuiet(socket) && !(await waitQuiet(socket, deadline))) return keep();
    let state: unknown;
    try {
      state = hook(socket);
      if (state instanceof Promise) state = await state;
    } catch (error) {
      console.error('baton: an onHandoff hook failed; the connection stays in this worker', error);
      return keep();
    }
    if (state === undefined || !isMovable(socket)) return keep();
    if (!isSerializable(state)) {
      console.error(
        'baton: an onHandoff hook returned a state that JSON cannot carry; the connection stays in this worker',
      );
      return keep();
    }
    while (!isQuiet(socket)) {
      if (!(await waitQuiet(socket, deadline))) return keep();
    }
    // The round may have ended while the hook ran: then nothing moves.
    if (entry.cancelled) return keep();
    socket.cork();
    entry.sent(() => this.#moving.delete(socket));
    return { value: state };
  }

  async #sendFinished(counts: HandoffCounts): Promise<void> {
    await new Promise<void>((resolve) => {
      if (!sendToMaster({ baton: 'handoff-finished', ...counts }, () => resolve())) resolve();
    });
  }

  /**
   * Stops `socket`'s reads and sends it; 'kept' when it cannot move now (it goes on here at once), else
   * what settles once the round decided: closed here if it moved, reading again if not.
   */
  async #moveOut(
    socket: net.Socket,
    listener: string,
    hook: HandoffHook,
    deadline: number,
  ): Promise<Sent | 'kept'> {
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
      if (this.#link) await this.#link.outbox.send({ id, listener, state }, stopped.handle.fd);
      else {
        const message: WorkerWire['handoff-connection'] = {
          baton: 'handoff-connection',
          id,
          listener,
          state,
        };
        await sendWithHandle(message, stopped.handle);
      }
    } catch {
      this.#settling.delete(id);
      socket.uncork();
      return keep();
    }
    const settled = adopted.then((moved) => {
      if (!moved) {
        socket.uncork();
        keep();
        return;
      }
      this.#moving.delete(socket);
      this.#movedAway.add(socket);
      // Never end(): that shuts the connection the new worker now serves. destroy() closes only this copy.
      socket.destroy();
    });
    return { settled };
  }

  /** Holds a connection the master relayed, reading nothing, until the round asks to adopt it. */
  #hold(request: AdoptRequest, handle: unknown): void {
    if (request.staged === true && isStreamHandle(handle)) closeQuietly(handle);
    if (request.staged === true || !isStreamHandle(handle)) {
      sendToMaster({
        baton: 'adopt-refused',
        relay: request.relay,
        // A staged connection's state comes later: only a worker that stages may take one.
        reason:
          request.staged === true
            ? 'a staged connection came over IPC'
            : 'no connection came with the message',
      });
      return;
    }
    this.#keep(request.relay, request.listener, request.state, {
      wrap: () => holdSocketFromHandle(handle),
      close: () => closeQuietly(handle),
    });
  }

  /** Holds the connections of a batch the master announced on the descriptor channel. */
  #holdBatch(notice: MasterWire['adopt-batch']): void {
    const link = this.#link;
    const batch = link?.inbox.take(Number(notice.batch));
    const entries = batch && link?.entriesOf(batch);
    const byRelay = new Map<number, { fd: number; listener: string; state: unknown; staged: boolean }>();
    for (const [index, raw] of (entries ?? []).entries()) {
      const entry = raw as { relay?: unknown; listener?: unknown; state?: unknown; staged?: unknown };
      const fd = batch?.fds[index] as number;
      if (Number.isInteger(entry?.relay) && typeof entry.listener === 'string') {
        const staged = entry.staged === true;
        byRelay.set(entry.relay as number, { fd, listener: entry.listener, state: entry.state, staged });
      } else link?.closeDescriptor(fd);
    }
    if (batch && !entries) for (const fd of batch.fds) link?.closeDescriptor(fd);
    for (const relay of relaysOf(notice)) {
      const entry = byRelay.get(relay);
      byRelay.delete(relay);
      if (!entry || !link) {
        sendToMaster({ baton: 'adopt-refused', relay, reason: 'the connection never arrived' });
        continue;
      }
      const copy = {
        wrap: () => this.#wrapDescriptor(entry.listener, entry.fd),
        close: () => link.closeDescriptor(entry.fd),
      };
      if (entry.staged) this.#keepStaged(relay, entry.listener, copy);
      else this.#keep(relay, entry.listener, entry.state, copy);
    }
    for (const stray of byRelay.values()) link?.closeDescriptor(stray.fd);
  }

  /** A held net.Socket over a descriptor of `listener` received on the descriptor channel. */
  #wrapDescriptor(listener: string, fd: number): HeldSocket {
    const open = this.#openers.get(listener);
    if (open) return holdSocketFromHandle(open(fd));
    const held = holdSocketFromFd(fd);
    const opener = handleOpenerLike(held.socket);
    if (opener) this.#openers.set(listener, opener);
    return held;
  }

  /** Keeps `copy` of relay `relay` until the round decides, or refuses it now (no hook, or draining). */
  #keep(relay: number, listener: string, state: unknown, copy: HeldCopy): void {
    if (!this.#adoptHooks.has(listener) || this.book.draining) {
      // Closing this copy leaves the connection open: the old worker still holds its own.
      copy.close();
      const reason = this.book.draining ? 'this worker drains' : `no onAdopt hook for '${listener}'`;
      sendToMaster({ baton: 'adopt-refused', relay, reason });
      return;
    }
    this.#held.set(relay, { listener, state, copy });
    // The app sets the session up now, while the rest of the round is still on its way: its reads and
    // writes stay held back until the round commits, and an abort destroys this copy as before.
    this.#adoptions.set(relay, this.#adoptOne(relay));
  }

  /**
   * Keeps a staged connection, wrapped now (its old worker still serves it), until its state comes
   * (`adopt-states`) or the round decides; refused now if it cannot be adopted here.
   */
  #keepStaged(relay: number, listener: string, copy: HeldCopy): void {
    if (!this.#adoptHooks.has(listener) || this.book.draining) {
      this.#keep(relay, listener, undefined, copy);
      return;
    }
    const held: Held = { listener, state: undefined, copy, staged: true };
    this.#held.set(relay, held);
    try {
      held.adopted = copy.wrap();
      held.adopted.socket.cork();
    } catch (error) {
      this.#held.delete(relay);
      copy.close();
      const reason = error instanceof Error ? error.message : String(error);
      sendToMaster({ baton: 'adopt-refused', relay, reason });
    }
  }

  /** The states of staged connections: the app adopts each now, reads and writes still held back. */
  #takeStates(notice: MasterWire['adopt-states']): void {
    for (const entry of Array.isArray(notice.states) ? notice.states : []) {
      const relay = (entry as { relay?: unknown } | null)?.relay;
      if (!Number.isInteger(relay)) continue;
      const held = this.#held.get(relay as number);
      if (!held?.staged || this.#adoptions.has(relay as number)) continue;
      held.state = entry.state;
      this.#adoptions.set(relay as number, this.#adoptOne(relay as number));
    }
  }

  /** Answers `handoff-commit`: what the app's hook made of each connection held, once every hook is done. */
  async #answerCommit(relays: number[]): Promise<void> {
    const outcomes = await Promise.all(
      relays.map(
        (relay) =>
          this.#adoptions.get(relay) ??
          (this.#held.has(relay) ? 'its state never came' : 'the connection never arrived'),
      ),
    );
    const adopted = relays.filter((_, index) => outcomes[index] === true);
    const refused = relays.flatMap((relay, index) => {
      const outcome = outcomes[index];
      return typeof outcome === 'string' ? [{ relay, reason: outcome }] : [];
    });
    // What is not adopted goes on in its old worker: this worker's copy (a staged one whose state never
    // came) is closed now, whatever the round decides.
    for (const { relay } of refused) this.#closeHeld(relay);
    sendToMaster({ baton: 'adoptions', adopted, refused });
  }

  /** Runs the hook for one held connection: true if the app adopted it, else why not. */
  async #adoptOne(relay: number): Promise<true | string> {
    const held = this.#held.get(relay);
    const hook = held && this.#adoptHooks.get(held.listener);
    if (!held || !hook) return held ? 'no onAdopt hook' : 'the connection never arrived';
    try {
      let wrapped = held.adopted;
      if (!wrapped) {
        wrapped = held.copy.wrap();
        // Written only once the round commits: until then the session may still go on in its old worker.
        wrapped.socket.cork();
        held.adopted = wrapped;
      }
      const answer: unknown = await hook(wrapped.socket, held.state);
      if (answer === false) {
        this.#closeHeld(relay);
        return 'declined by onAdopt';
      }
      return true;
    } catch (error) {
      console.error('baton: an onAdopt hook failed; the connection goes back to its old worker', error);
      this.#closeHeld(relay);
      return error instanceof Error ? error.message : String(error);
    }
  }

  /** The round committed: these connections are this worker's now. */
  #go(relays: number[]): void {
    for (const relay of relays) {
      const held = this.#held.get(relay);
      this.#held.delete(relay);
      this.#adoptions.delete(relay);
      if (!held?.adopted) continue;
      const { socket, release } = held.adopted;
      this.book.adopt(socket, held.listener);
      socket.uncork();
      release();
    }
  }

  /** These connections go on in their old workers: closes this worker's copies, nothing written. */
  #drop(relays: number[]): void {
    for (const relay of relays) {
      this.#adoptions.delete(relay);
      this.#closeHeld(relay);
    }
  }

  /** Closes this worker's copy of relay `relay`, if it holds one; the old worker's stays open. */
  #closeHeld(relay: number): void {
    const held = this.#held.get(relay);
    this.#held.delete(relay);
    // destroy() drops the held-back writes and closes only this copy of the connection.
    if (held?.adopted) held.adopted.socket.destroy();
    else if (held) held.copy.close();
  }
}

/** The relay numbers of a notice from the master (anything else in the list is ignored). */
function relaysOf(notice: { relays: unknown }): number[] {
  return Array.isArray(notice.relays) ? notice.relays.filter((relay) => Number.isInteger(relay)) : [];
}

/** Whether `state` survives the IPC channel's JSON (no BigInt, no cycle). */
function isSerializable(state: unknown): boolean {
  try {
    JSON.stringify(state);
    return true;
  } catch {
    return false;
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
