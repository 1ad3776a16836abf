/**
 * Live session handoff, the master's side (docs/handoff.md). When a new generation is ready and before
 * it takes over, the old workers that opted in (child API `onHandoff`) are asked to hand off their open
 * connections; each arrives here as a raw handle with its session state and is passed on, never read,
 * to one of the new workers that adopt its listener (`onAdopt`), spread evenly. Nothing moves for real
 * until the whole round is in: the new workers hold the handles without reading, then adopt them all
 * (the app's hook runs, reads and writes still held back), and only once every new worker has answered
 * does the round commit: the new workers start reading, the old ones close their copies. A new worker
 * that exits or hangs before that aborts the round: every old worker resumes every connection where it
 * stopped, nothing read twice or lost, and the reload fails. A second round after the switch moves what
 * the old workers accepted meanwhile. A staged round first passes the connections while their old
 * workers still serve them, and asks for their states (the freeze) only once every new worker holds
 * its share, so that the sessions wait for the states and the commit alone.
 *
 * The decisions are pure functions and one small class over plain data; the master feeds it its events
 * (messages, handles, exits, the send callbacks, deadlines) one at a time, from its dispatcher.
 */
import {
  type HandoffCounts,
  type MasterWire,
  type Refusal,
  type RelayedState,
  readWorkerMessage,
  type SessionState,
} from '../child/protocol.js';
import { optimizeFromNowOn } from './engine.js';
import { type Batch, batchEntries } from './fd-channel.js';
import type { Generation } from './generation.js';
import { closeDescriptor } from './linux.js';
import type { Logger } from './log.js';
import { asRawSocketHandle, closeRawHandle, type RawSocketHandle } from './node-internals.js';
import type { TimerHandle } from './os.js';
import type { Worker } from './worker.js';

/** How long an old worker may wait for a connection's pending writes to flush before keeping it. */
export const HANDOFF_FLUSH_TIMEOUT_MS = 2_000;

/** The flush wait never takes more than this share of the drain timeout: a connection kept still drains. */
export const HANDOFF_FLUSH_SHARE_OF_DRAIN = 0.25;

/**
 * How long after the flush wait the master still waits for old workers to send their connections; then
 * the round goes on with what came, and what comes later stays in its old worker.
 */
export const HANDOFF_SEND_GRACE_MS = 3_000;

/** How long the new workers have to adopt the connections they hold, before the round is aborted. */
export const HANDOFF_ADOPT_TIMEOUT_MS = 5_000;

/** How many handoff rounds the master remembers (for status). */
export const HANDOFF_ROUNDS_KEPT = 10;

/** How long an old worker waits for writes to flush per handoff, given the drain timeout. */
export function handoffFlushTimeoutMs(drainTimeoutMs: number): number {
  return Math.max(
    1,
    Math.min(HANDOFF_FLUSH_TIMEOUT_MS, Math.floor(drainTimeoutMs * HANDOFF_FLUSH_SHARE_OF_DRAIN)),
  );
}

/** The listeners a worker hands off (old side) and adopts (new side), as it announced them. */
export interface HandoffHooks {
  handsOff: ReadonlySet<string>;
  adopts: ReadonlySet<string>;
  /** The worker reads and writes connections on its descriptor channel (supervisor/fd-channel.ts). */
  fdChannel?: boolean;
  /** The worker takes part in staged rounds. */
  stages?: boolean;
}

/** A connection that came in a batch of a worker's descriptor channel: its descriptor, and what it said. */
export interface ConnectionInBatch {
  handle: RawSocketHandle;
  id: number;
  listener: string;
  state: unknown;
  /** Staged: its old worker still serves it, and its state comes later. */
  staged?: boolean;
}

/** A worker's handoff hooks as plain data: the listeners it hands off and adopts. */
export interface CarriedHooks {
  handsOff: string[];
  adopts: string[];
  fdChannel?: boolean;
  stages?: boolean;
}

/** The handoff messages a worker may send (child/handoff.ts), by kind. */
export type HandoffMessage =
  | { kind: 'hooks'; hooks: HandoffHooks }
  | { kind: 'connection'; id: number; listener: string; state: unknown }
  | { kind: 'finished'; counts: HandoffCounts }
  | { kind: 'staged' }
  | { kind: 'states'; states: SessionState[]; kept: number[] }
  | { kind: 'prepared' }
  | { kind: 'refused'; relay: number; reason: string | undefined }
  | { kind: 'adoptions'; adopted: number[]; refused: Refusal[] };

/** Reads a raw IPC message (child/protocol.ts); undefined for anything that is not a handoff message. */
export function parseHandoffMessage(raw: unknown): HandoffMessage | undefined {
  const read = readWorkerMessage(raw);
  switch (read?.kind) {
    case 'handoff-hooks':
      return {
        kind: 'hooks',
        hooks: {
          handsOff: new Set(read.message.handsOff),
          adopts: new Set(read.message.adopts),
          ...(read.message.fdChannel === true ? { fdChannel: true } : {}),
          ...(read.message.stages === true ? { stages: true } : {}),
        },
      };
    case 'handoff-staged':
      return { kind: 'staged' };
    case 'handoff-states':
      return { kind: 'states', states: read.message.states, kept: read.message.kept };
    case 'handoff-prepared':
      return { kind: 'prepared' };
    case 'handoff-connection': {
      const { id, listener, state } = read.message;
      return { kind: 'connection', id, listener, state };
    }
    case 'handoff-finished': {
      const { offered, sent, kept } = read.message;
      return { kind: 'finished', counts: { offered, sent, kept } };
    }
    case 'adopt-refused':
      return {
        kind: 'refused',
        relay: read.message.relay,
        reason: typeof read.message.reason === 'string' ? read.message.reason : undefined,
      };
    case 'adoptions':
      return { kind: 'adoptions', adopted: read.message.adopted, refused: read.message.refused };
    default:
      return undefined;
  }
}

/**
 * The connections a batch of an old worker's descriptor channel brought: each descriptor with the
 * `{ id, listener, state }` the payload gives it. Undefined, every descriptor closed, when the payload
 * does not say that (the worker's copies are intact: those connections stay with it).
 */
export function connectionsInBatch(batch: Batch): ConnectionInBatch[] | undefined {
  const entries = batchEntries(batch);
  const valid = entries?.every(
    (entry) =>
      typeof entry === 'object' &&
      entry !== null &&
      Number.isInteger((entry as { id?: unknown }).id) &&
      typeof (entry as { listener?: unknown }).listener === 'string',
  );
  if (!entries || !valid) {
    for (const fd of batch.fds) closeDescriptor(fd);
    return undefined;
  }
  return entries.map((raw, index) => {
    const entry = raw as { id: number; listener: string; state?: unknown; staged?: unknown };
    return {
      handle: descriptorHandle(batch.fds[index] as number),
      id: entry.id,
      listener: entry.listener,
      state: entry.state,
      ...(entry.staged === true ? { staged: true } : {}),
    };
  });
}

/** A descriptor received on the channel, as the relay holds connections: closed once, by `close`. */
function descriptorHandle(fd: number): RawSocketHandle {
  let open = true;
  return {
    fd,
    close: () => {
      if (open) closeDescriptor(fd);
      open = false;
    },
  };
}

/** The listeners whose connections can move: handed off by some old worker and adopted by some new one. */
export function listenersToHandOff(
  senders: readonly HandoffHooks[],
  adopters: readonly HandoffHooks[],
): string[] {
  const adopted = new Set(adopters.flatMap((hooks) => [...hooks.adopts]));
  const handedOff = new Set(senders.flatMap((hooks) => [...hooks.handsOff]));
  return [...handedOff].filter((listener) => adopted.has(listener)).sort();
}

/** A new worker that can take a connection, and how many it holds or was given already. */
export interface AdopterLoad<T> {
  adopter: T;
  load: number;
}

/** Where the next connection goes: the least loaded adopter, the first of equals; undefined if none. */
export function chooseAdopter<T>(candidates: readonly AdopterLoad<T>[]): T | undefined {
  let best: AdopterLoad<T> | undefined;
  for (const candidate of candidates) if (!best || candidate.load < best.load) best = candidate;
  return best?.adopter;
}

/**
 * The life of one handoff round: in a staged round, old workers first send their connections while still
 * serving them and the new workers wrap them (`staging`); then old workers send their connections, or
 * in a staged round only the states of the connections they stop (`sending`), the new workers adopt
 * what they hold (`adopting`), and the round is `finished`, committed or aborted.
 */
export type HandoffRoundState = 'staging' | 'sending' | 'adopting' | 'finished';

/** How a round ended: every adoption took effect at once, or none did. */
export type HandoffOutcome = 'committed' | 'aborted';

/**
 * Why a round is held: `switch`, the round that runs before the new generation takes over (its abort
 * fails the reload); `sweep`, the one right after, for what the old workers accepted meanwhile.
 */
export type HandoffRoundKind = 'switch' | 'sweep';

/** What aborted a round. */
export type AbortCause = 'worker-exited' | 'no-answer' | 'stopping';

/** One old generation handing its sessions to the generation that replaces it. */
export class HandoffRound {
  state: HandoffRoundState;
  outcome: HandoffOutcome | undefined;
  /** Why the round was aborted (a new worker exited, or did not answer in time). */
  abortReason: string | undefined;
  /** What aborted it: a new worker's exit is reported by the exit itself. */
  abortCause: AbortCause | undefined;
  offered = 0;
  moved = 0;
  kept = 0;
  failed = 0;
  finishedAt: number | undefined;
  /** The old workers did not all report before the round went on without them. */
  incomplete = false;
  /** Old workers asked to hand off that have neither reported nor exited. */
  readonly waitingFor: Set<Worker>;
  /** New workers asked to adopt what they hold that have not answered yet. */
  readonly answering = new Set<Worker>();
  timer: TimerHandle | undefined;
  /** The old workers that staged their connections (told to freeze them once staging is over). */
  readonly stagers = new Set<Worker>();
  /** The new workers were asked to confirm that they wrapped what was staged. */
  prepareAsked = false;
  /** When the staged connections were frozen: from then on their sessions wait for the commit. */
  frozenAt: number | undefined;
  /** The phase whose deadline passed already (its next one aborts the round). */
  overdue: HandoffRoundState | undefined;
  /** Connections given to each adopter in this round, on top of what it held when first chosen. */
  private readonly given = new Map<Worker, { baseline: number; count: number }>();

  constructor(
    readonly kind: HandoffRoundKind,
    readonly from: Generation,
    readonly to: Generation,
    readonly listeners: readonly string[],
    senders: readonly Worker[],
    readonly startedAt: number,
    /** How long an old worker may wait for a connection to be quiet. */
    readonly flushTimeoutMs = 0,
    /** Some old workers stage their connections first (docs/handoff.md). */
    readonly staged = false,
  ) {
    this.waitingFor = new Set(senders);
    this.state = staged ? 'staging' : 'sending';
  }

  /** How loaded `adopter` counts as: its connections when the round first saw it, plus those given since. */
  loadOf(adopter: Worker): number {
    const given = this.given.get(adopter);
    return given ? given.baseline + given.count : (adopter.connections ?? 0);
  }

  give(adopter: Worker): void {
    const given = this.given.get(adopter) ?? { baseline: adopter.connections ?? 0, count: 0 };
    given.count++;
    this.given.set(adopter, given);
  }
}

/** One handoff round as plain data, for status. */
export interface HandoffRoundSnapshot {
  kind: HandoffRoundKind;
  from: number;
  to: number;
  listeners: string[];
  state: HandoffRoundState;
  outcome: HandoffOutcome | undefined;
  abortReason: string | undefined;
  startedAt: number;
  finishedAt: number | undefined;
  incomplete: boolean;
  moved: number;
  kept: number;
  failed: number;
  /** Connections relayed and not yet adopted or refused. */
  inFlight: number;
}

/** Live session handoff as `status` shows it: totals since the master started, and the last rounds. */
export interface SessionsSnapshot {
  moved: number;
  kept: number;
  failed: number;
  rounds: HandoffRoundSnapshot[];
}

/** The progress report of a finished round (part of the master's `Progress`). */
export interface SessionsMovedProgress {
  kind: 'sessions-moved';
  /** The generation the sessions moved to. */
  generation: number;
  from: number;
  moved: number;
  kept: number;
  failed: number;
  durationMs: number;
  incomplete: boolean;
  /** Why nothing moved, when the round was aborted. */
  aborted?: string;
}

/** What the relay needs from the master. */
export interface RelayPorts {
  logger: Logger;
  now(): number;
  /**
   * Sends a message, with a connection's handle if given, to `worker`; `onSent` runs once it is written
   * or failed. False when the worker has no channel to send on (then `onSent` never runs).
   */
  send(
    worker: Worker,
    message: MasterWire[keyof MasterWire],
    handle: RawSocketHandle | undefined,
    onSent: (error: Error | null) => void,
  ): boolean;
  /** Queues the master's event for a relayed handle's send callback (it comes back to `onRelayed`). */
  relayed(relay: number, error: Error | null): void;
  /** Arms the master's timer for `round`'s current phase (it comes back to `onDeadline`). */
  deadline(round: HandoffRound, ms: number): TimerHandle;
  /** A round ended (a `switch` round that committed lets its generation take over). */
  ended(round: HandoffRound): void;
  report(progress: SessionsMovedProgress): void;
}

/**
 * Where a relayed connection is between the old worker's send and the end of its round:
 * `sending` (the send to the new worker is under way), `refused-while-sending` (the new worker turned it
 * down before the send was done), `held` (the new worker holds it), `adopted` or `refused` (the new
 * worker's answer to `handoff-commit`), `settled-while-sending` (the old worker was told, the send is not
 * done yet). Once the old worker is told and the send is done, the master's copy is closed and the
 * connection leaves the relay.
 */
export type FlightState =
  | 'sending'
  | 'refused-while-sending'
  | 'held'
  | 'adopted'
  | 'refused'
  | 'settled-while-sending';

/** A connection between the old worker's send and the end of its round. */
interface InFlight {
  readonly round: HandoffRound;
  readonly from: Worker;
  readonly id: number;
  readonly to: Worker;
  /** The master's copy; closed once the send is done and the connection settled, never before. */
  readonly handle: RawSocketHandle;
  state: FlightState;
  /** Staged: its state comes after the freeze; `hasState` once it was passed on. */
  readonly staged: boolean;
  hasState: boolean;
}

/** Whether the send of `flight` to its new worker is done (completed or failed). */
function isWritten(flight: InFlight): boolean {
  return flight.state === 'held' || flight.state === 'adopted' || flight.state === 'refused';
}

/** The master's side of every handoff: which workers take part, the rounds, the connections in flight. */
export class HandoffRelay {
  private readonly hooks = new WeakMap<Worker, HandoffHooks>();
  private readonly rounds: HandoffRound[] = [];
  private readonly inFlight = new Map<number, InFlight>();
  /**
   * Each round's connections in flight that are not settled yet (`flightsOf`), and how many of them are
   * still being written to their new worker: kept as the flights change, so that the check after each
   * written connection costs the same at 10,000 connections as at 10.
   */
  private readonly roundFlights = new Map<HandoffRound, RoundIndex>();
  private readonly totals = { moved: 0, kept: 0, failed: 0 };
  private nextRelay = 1;

  constructor(private readonly ports: RelayPorts) {}

  /** Takes in a handoff message that came without a handle. */
  onMessage(worker: Worker, message: HandoffMessage): void {
    if (message.kind === 'hooks') this.hooks.set(worker, message.hooks);
    else if (message.kind === 'finished') this.onFinished(worker, message.counts);
    else if (message.kind === 'refused') this.onRefused(worker, message.relay, message.reason);
    else if (message.kind === 'adoptions') this.onAdoptions(worker, message.adopted, message.refused);
    else if (message.kind === 'staged') this.onStaged(worker);
    else if (message.kind === 'states') this.onStates(worker, message.states, message.kept);
    else if (message.kind === 'prepared') this.onPrepared(worker);
    // A 'connection' here is the copy of a message whose handle came through `onHandle`: already handled.
  }

  /** Takes in a message that came with a handle. */
  onHandle(worker: Worker, raw: unknown, handle: unknown): void {
    const message = parseHandoffMessage(raw);
    if (message?.kind === 'connection') {
      this.onConnection(worker, message.id, message.listener, message.state, handle);
      return;
    }
    // Nothing else in baton's contract carries a handle: close it rather than hold it open here.
    destroyForeign(handle);
    this.ports.logger.debug(
      { gen: worker.generation, worker: worker.index, pid: worker.pid },
      'a handle that came with an unknown message was closed',
    );
  }

  /** Whether a `switch` round into generation `to` is under way. */
  isSwitching(to: Generation): boolean {
    return this.rounds.some(
      (round) => round.kind === 'switch' && round.to === to && round.state !== 'finished',
    );
  }

  /**
   * Asks `from`'s workers to hand off the listeners `to`'s ready workers adopt. Undefined when nothing
   * can move (nobody opted in on one side). A `sweep` round also tells the old workers to stop accepting.
   */
  start(
    kind: HandoffRoundKind,
    from: Generation,
    to: Generation,
    flushTimeoutMs: number,
  ): HandoffRound | undefined {
    const senders = from.liveWorkers.filter((worker) => (this.hooks.get(worker)?.handsOff.size ?? 0) > 0);
    const adopters = to.currentWorkers.filter((worker) => worker.state === 'ready' && this.hooks.has(worker));
    const listeners = listenersToHandOff(
      senders.map((worker) => this.hooks.get(worker) as HandoffHooks),
      adopters.map((worker) => this.hooks.get(worker) as HandoffHooks),
    );
    if (senders.length === 0 || listeners.length === 0) return undefined;
    // Thousands of sessions may go through the code below: worth V8's optimizing compilers from now on.
    optimizeFromNowOn();
    // Staged only when every adopter knows it, so that none takes a connection without its state.
    const adoptersStage = adopters.every((worker) => this.stages(worker));
    const stages = (worker: Worker) => adoptersStage && this.stages(worker);
    const staged = senders.some(stages);
    const now = this.ports.now();
    const round = new HandoffRound(kind, from, to, listeners, senders, now, flushTimeoutMs, staged);
    this.rounds.push(round);
    for (const sender of senders) {
      const request: MasterWire['handoff'] = {
        baton: 'handoff',
        listeners,
        flushTimeoutMs,
        stopAccepting: kind === 'sweep',
        ...(stages(sender) ? { stage: true } : {}),
      };
      const asked = this.ports.send(sender, request, undefined, () => {
        // A worker that cannot be reached has exited or is about to: its exit ends its part of the round.
      });
      if (!asked) round.waitingFor.delete(sender);
    }
    this.ports.logger[kind === 'switch' ? 'info' : 'debug'](
      { gen: from.id, to: to.id, kind, listeners, workers: round.waitingFor.size, flushTimeoutMs, staged },
      'handoff started',
    );
    round.timer = this.ports.deadline(round, flushTimeoutMs + HANDOFF_SEND_GRACE_MS);
    this.advance(round);
    return round;
  }

  /** Whether a round is under way (a re-exec of the master waits for none). */
  get busy(): boolean {
    return this.rounds.some((round) => round.state !== 'finished') || this.inFlight.size > 0;
  }

  /** What `worker` said it hands off and adopts, as plain data (carried by a re-exec). */
  hooksOf(worker: Worker): CarriedHooks | undefined {
    const hooks = this.hooks.get(worker);
    if (!hooks) return undefined;
    return {
      handsOff: [...hooks.handsOff],
      adopts: [...hooks.adopts],
      ...(hooks.fdChannel ? { fdChannel: true } : {}),
      ...(hooks.stages ? { stages: true } : {}),
    };
  }

  /** A worker adopted after a re-exec, with the hooks it had said it has. */
  adoptHooks(worker: Worker, hooks: CarriedHooks): void {
    this.hooks.set(worker, {
      handsOff: new Set(hooks.handsOff),
      adopts: new Set(hooks.adopts),
      ...(hooks.fdChannel ? { fdChannel: true } : {}),
      ...(hooks.stages ? { stages: true } : {}),
    });
  }

  /** The totals of sessions moved, kept and failed (carried by a re-exec). */
  get counts(): { moved: number; kept: number; failed: number } {
    return { ...this.totals };
  }

  /** Counts carried from the previous program of this master. */
  adoptCounts(counts: { moved: number; kept: number; failed: number }): void {
    this.totals.moved += counts.moved;
    this.totals.kept += counts.kept;
    this.totals.failed += counts.failed;
  }

  /** Whether `worker` takes part in staged rounds: it said so, with its descriptor channel open. */
  private stages(worker: Worker): boolean {
    const hooks = this.hooks.get(worker);
    return hooks?.stages === true && hooks.fdChannel === true;
  }

  /** Whether `worker` takes connections on its descriptor channel (it said so with its hooks). */
  usesFdChannel(worker: Worker): boolean {
    return this.hooks.get(worker)?.fdChannel === true;
  }

  /** An old worker sent a connection with `rawHandle`: passes it to the least loaded adopter, or keeps it. */
  onConnection(from: Worker, id: number, listener: string, state: unknown, rawHandle: unknown): void {
    const handle = asRawSocketHandle(rawHandle);
    if (!handle) {
      // The message arrived without its handle (or with a net.Socket, which has started reading):
      // nothing to pass on. The old worker's copy is intact.
      if (rawHandle !== undefined) destroyForeign(rawHandle);
      this.ports.logger.warn(
        { gen: from.generation, worker: from.index, pid: from.pid, listener },
        'handoff: a connection arrived without a raw socket handle',
      );
      this.settle(from, id, false);
      const round = this.sendingRound(from);
      if (round) this.count(round, 'failed');
      return;
    }
    this.pass(from, id, listener, state, handle);
  }

  /**
   * An old worker announced connections `ids` in a batch of its descriptor channel; `connections` is
   * what the batch brought (undefined if it never came). Each is passed on like one sent alone; an id
   * without its descriptor stays in its old worker.
   */
  onBatch(from: Worker, ids: readonly number[], connections: readonly ConnectionInBatch[] | undefined): void {
    const byId = new Map((connections ?? []).map((connection) => [connection.id, connection]));
    const batch = this.passContext(from);
    for (const id of ids) {
      const connection = byId.get(id);
      byId.delete(id);
      if (connection) {
        const { listener, state, handle, staged } = connection;
        this.pass(from, id, listener, state, handle, batch, staged === true);
      } else {
        this.settle(from, id, false);
        if (batch.round) this.count(batch.round, 'failed');
      }
    }
    // Descriptors the announcement did not name belong to nothing: closed here.
    for (const stray of byId.values()) closeRawHandle(stray.handle);
  }

  /** The round `from` sends its connections in (staging them, or sending them whole). */
  private sendingRound(from: Worker): HandoffRound | undefined {
    return this.rounds.find(
      (candidate) =>
        (candidate.state === 'staging' || candidate.state === 'sending') && candidate.waitingFor.has(from),
    );
  }

  /**
   * What the connections `from` sends at once share: its round, and the adopters of each listener
   * (looked up once per batch, not once per connection).
   */
  private passContext(from: Worker): PassContext {
    const round = this.sendingRound(from);
    const adopters = new Map<string, Worker[]>();
    return {
      round,
      adoptersOf: (listener) => {
        let found = adopters.get(listener);
        if (!found) {
          found = round ? this.adoptersOf(round.to, listener) : [];
          adopters.set(listener, found);
        }
        return found;
      },
    };
  }

  /** Passes a connection `from` sent on to the least loaded adopter, or keeps it in `from`. */
  private pass(
    from: Worker,
    id: number,
    listener: string,
    state: unknown,
    handle: RawSocketHandle,
    batch: PassContext = this.passContext(from),
    staged = false,
  ): void {
    const { round } = batch;
    // A staged connection's state comes later: only a worker that stages may take it.
    const candidates = batch.adoptersOf(listener);
    const adopter =
      round &&
      chooseAdopter(
        (staged ? candidates.filter((worker) => this.stages(worker)) : candidates).map((worker) => ({
          adopter: worker,
          load: round.loadOf(worker),
        })),
      );
    if (!round || !adopter) {
      closeRawHandle(handle);
      this.settle(from, id, false);
      this.ports.logger.debug(
        { gen: from.generation, worker: from.index, pid: from.pid, listener },
        'handoff: no new worker adopts this connection now; it stays',
      );
      if (round) this.count(round, 'failed');
      return;
    }
    const relay = this.nextRelay++;
    round.give(adopter);
    const flight: InFlight = {
      round,
      from,
      id,
      to: adopter,
      handle,
      state: 'sending',
      staged,
      hasState: !staged,
    };
    this.inFlight.set(relay, flight);
    const index = this.indexOf(round);
    index.flights.set(relay, flight);
    index.unwritten++;
    if (staged) index.relayOf(from).set(id, relay);
    const message: MasterWire['adopt'] = staged
      ? { baton: 'adopt', relay, listener, state: undefined, staged: true }
      : { baton: 'adopt', relay, listener, state };
    const sent = this.ports.send(adopter, message, handle, (error) => this.ports.relayed(relay, error));
    if (!sent) this.onRelayed(relay, new Error('the new worker has no IPC channel'));
  }

  /** The send of relay `relay` to its adopter completed (or failed). */
  onRelayed(relay: number, error: Error | null): void {
    const flight = this.inFlight.get(relay);
    if (flight?.state === 'settled-while-sending') {
      this.close(relay, flight);
      // Its round ended (aborted) before it reached its adopter, which holds it now: dropped there too.
      if (!error) {
        this.ports.send(flight.to, { baton: 'handoff-abort', relays: [relay] }, undefined, () => {
          // A new worker that is gone has closed its copy already.
        });
      }
      return;
    }
    if (flight?.state !== 'sending' && flight?.state !== 'refused-while-sending') return;
    const refused = flight.state === 'refused-while-sending';
    flight.state = refused ? 'refused' : 'held';
    this.indexOf(flight.round).unwritten--;
    // Written (or failed): the master's copy is of no more use, whatever the round decides (the old
    // worker resumes its own if it does not move). Closed now, not in the commit, which sessions wait for.
    closeRawHandle(flight.handle);
    if (error) {
      this.ports.logger.debug(
        { gen: flight.to.generation, worker: flight.to.index, pid: flight.to.pid, error: error.message },
        'handoff: could not pass a connection on',
      );
      this.settleFlight(relay, flight, false);
    } else if (refused) this.settleFlight(relay, flight, false);
    else this.advance(flight.round);
  }

  /** A new worker turned a connection down as it arrived (no hook, or it drains): it stays where it was. */
  onRefused(worker: Worker, relay: number, reason: string | undefined): void {
    const flight = this.inFlight.get(relay);
    if (!flight || flight.to !== worker || (flight.state !== 'sending' && flight.state !== 'held')) return;
    this.ports.logger.warn(
      { gen: worker.generation, worker: worker.index, pid: worker.pid, reason },
      'handoff: the new worker refused a connection; it goes on in its old worker',
    );
    if (flight.state === 'sending') flight.state = 'refused-while-sending';
    else {
      flight.state = 'refused';
      this.settleFlight(relay, flight, false);
    }
  }

  /** A new worker adopted what it held (its answer to `handoff-commit`). */
  onAdoptions(worker: Worker, adopted: readonly number[], refused: readonly Refusal[]): void {
    const round = this.rounds.find(
      (candidate) => candidate.state === 'adopting' && candidate.answering.has(worker),
    );
    if (!round) return;
    for (const relay of adopted) {
      const flight = this.inFlight.get(relay);
      if (flight?.to === worker && flight.round === round) flight.state = 'adopted';
    }
    for (const { relay, reason } of refused) {
      const flight = this.inFlight.get(relay);
      if (flight?.to !== worker || flight.round !== round) continue;
      flight.state = 'refused';
      this.ports.logger.warn(
        { gen: worker.generation, worker: worker.index, pid: worker.pid, reason },
        'handoff: the new worker refused a connection; it goes on in its old worker',
      );
    }
    round.answering.delete(worker);
    this.advance(round);
  }

  /** An old worker sent all it could. */
  onFinished(worker: Worker, counts: HandoffCounts): void {
    const round = this.sendingRound(worker);
    if (!round) return;
    round.offered += counts.offered;
    this.count(round, 'kept', counts.kept);
    round.waitingFor.delete(worker);
    this.advance(round);
  }

  /** An old worker staged every connection it could: it serves them until told to freeze them. */
  onStaged(worker: Worker): void {
    const round = this.stagingRound((candidate) => candidate.waitingFor.has(worker));
    if (!round) return;
    round.stagers.add(worker);
    round.waitingFor.delete(worker);
    this.advance(round);
  }

  /** A new worker wrapped every staged connection it was sent. */
  onPrepared(worker: Worker): void {
    const round = this.stagingRound((candidate) => candidate.answering.has(worker));
    if (!round) return;
    round.answering.delete(worker);
    this.advance(round);
  }

  /** The round in its staging phase that waits for what `waits` says. */
  private stagingRound(waits: (round: HandoffRound) => boolean): HandoffRound | undefined {
    return this.rounds.find((candidate) => candidate.state === 'staging' && waits(candidate));
  }

  /**
   * An old worker froze staged connections: their states go to the new workers that hold them; those it
   * keeps after all (it counts them) are dropped there.
   */
  onStates(worker: Worker, states: readonly SessionState[], kept: readonly number[]): void {
    const round = this.rounds.find(
      (candidate) => candidate.state === 'sending' && candidate.stagers.has(worker),
    );
    const index = round && this.roundFlights.get(round);
    if (!round || !index) return;
    const relayOf = index.relayOf(worker);
    const flightOf = (id: number): [number, InFlight] | undefined => {
      const relay = relayOf.get(id);
      const flight = relay === undefined ? undefined : index.flights.get(relay);
      return relay !== undefined && flight?.staged && !flight.hasState && flight.state === 'held'
        ? [relay, flight]
        : undefined;
    };
    const toAdopt = new Map<Worker, RelayedState[]>();
    for (const { id, state } of states) {
      const found = flightOf(id);
      if (!found) continue;
      const [relay, flight] = found;
      flight.hasState = true;
      const list = toAdopt.get(flight.to);
      if (list) list.push({ relay, state });
      else toAdopt.set(flight.to, [{ relay, state }]);
    }
    const dropped = new Map<Worker, number[]>();
    for (const id of kept) {
      const found = flightOf(id);
      if (!found) continue;
      const [relay, flight] = found;
      // Its old worker reads it again and counts it as kept: only this copy and the new worker's go.
      index.flights.delete(relay);
      this.close(relay, flight);
      const list = dropped.get(flight.to);
      if (list) list.push(relay);
      else dropped.set(flight.to, [relay]);
    }
    for (const [adopter, relayed] of toAdopt) {
      this.ports.send(adopter, { baton: 'adopt-states', states: relayed }, undefined, () => {
        // A new worker that cannot read it exits: its exit aborts the round.
      });
    }
    for (const [adopter, relays] of dropped) {
      this.ports.send(adopter, { baton: 'handoff-abort', relays }, undefined, () => {
        // A new worker that is gone has closed its copies already.
      });
    }
  }

  /** The timer of `round`'s current phase fired. */
  onDeadline(round: HandoffRound): void {
    if (round.state === 'staging' && round.prepareAsked) {
      const late = [...round.answering].map((worker) => worker.index);
      this.abort(
        round,
        `new worker ${late.join(', ')} did not take the staged sessions within ${HANDOFF_ADOPT_TIMEOUT_MS} ms`,
        'no-answer',
      );
    } else if (round.state === 'staging' || round.state === 'sending') {
      const phase = round.state;
      if (round.overdue === phase) {
        // Past a second deadline, connections are still being written: a new worker does not read.
        this.abort(round, 'the new workers did not take the connections in time', 'no-answer');
        return;
      }
      round.overdue = phase;
      // Old workers that are still busy keep what they have not sent yet.
      round.incomplete ||= round.waitingFor.size > 0;
      round.waitingFor.clear();
      const timer = round.timer;
      this.advance(round);
      // Still in this phase with nothing else armed: what is being written gets one more deadline.
      if (round.state === phase && round.timer === timer) {
        round.timer = this.ports.deadline(round, HANDOFF_ADOPT_TIMEOUT_MS);
      }
    } else if (round.state === 'adopting') {
      const late = [...round.answering].map((worker) => worker.index);
      this.abort(
        round,
        `new worker ${late.join(', ')} did not adopt the sessions within ${HANDOFF_ADOPT_TIMEOUT_MS} ms`,
        'no-answer',
      );
    }
  }

  /**
   * A worker exited. An old one no longer sends; a new one in a round that has not committed aborts it,
   * so that every connection goes on in its old worker.
   */
  onWorkerExited(worker: Worker): void {
    for (const round of this.rounds) {
      if (round.state === 'finished') continue;
      if (round.to.workers.includes(worker)) {
        const how = worker.signal ? `was killed by ${worker.signal}` : `exited with code ${worker.exitCode}`;
        this.abort(round, `new worker ${worker.index} ${how}`, 'worker-exited');
      } else if (round.waitingFor.delete(worker)) {
        this.advance(round);
      }
    }
  }

  /** Generation `id` is gone: its rounds go on without waiting for its workers. */
  onGenerationRetired(id: number): void {
    for (const round of this.rounds) {
      if ((round.state !== 'staging' && round.state !== 'sending') || round.from.id !== id) continue;
      round.incomplete = round.incomplete || round.waitingFor.size > 0;
      round.waitingFor.clear();
      this.advance(round);
    }
  }

  /** The master stops: every round under way is aborted, so that each connection drains where it was. */
  abortAll(reason: string): void {
    for (const round of this.rounds) if (round.state !== 'finished') this.abort(round, reason, 'stopping');
  }

  /** Totals and the last rounds, as plain data. */
  snapshot(): SessionsSnapshot {
    return {
      ...this.totals,
      rounds: this.rounds.map((round) => ({
        kind: round.kind,
        from: round.from.id,
        to: round.to.id,
        listeners: [...round.listeners],
        state: round.state,
        outcome: round.outcome,
        abortReason: round.abortReason,
        startedAt: round.startedAt,
        finishedAt: round.finishedAt,
        incomplete: round.incomplete,
        moved: round.moved,
        kept: round.kept,
        failed: round.failed,
        inFlight: this.flightsOf(round).size,
      })),
    };
  }

  private adoptersOf(to: Generation, listener: string): Worker[] {
    return to.currentWorkers.filter(
      (worker) => worker.state === 'ready' && this.hooks.get(worker)?.adopts.has(listener) === true,
    );
  }

  /** `round`'s connections in flight that are not settled yet, by relay. */
  private flightsOf(round: HandoffRound): ReadonlyMap<number, InFlight> {
    return this.roundFlights.get(round)?.flights ?? new Map();
  }

  private indexOf(round: HandoffRound): RoundIndex {
    let index = this.roundFlights.get(round);
    if (!index) {
      index = new RoundIndex();
      this.roundFlights.set(round, index);
    }
    return index;
  }

  /**
   * Moves `round` on as far as it can: once every old worker has reported and every handle is written,
   * the new workers are asked to adopt what they hold; once they have all answered, the round commits.
   */
  private advance(round: HandoffRound): void {
    if (round.state === 'staging' && !this.advanceStaging(round)) return;
    if (round.state === 'sending') {
      if (round.waitingFor.size > 0 || (this.roundFlights.get(round)?.unwritten ?? 0) > 0) return;
      round.state = 'adopting';
      round.timer?.cancel();
      const byAdopter = relaysByAdopter(this.flightsOf(round));
      for (const [adopter, relays] of byAdopter) {
        round.answering.add(adopter);
        const asked = this.ports.send(adopter, { baton: 'handoff-commit', relays }, undefined, () => {
          // A new worker that cannot read it exits: its exit aborts the round.
        });
        if (!asked) {
          this.abort(round, `new worker ${adopter.index} cannot be reached`, 'no-answer');
          return;
        }
      }
      if (round.answering.size > 0) round.timer = this.ports.deadline(round, HANDOFF_ADOPT_TIMEOUT_MS);
    }
    if (round.state === 'adopting' && round.answering.size === 0) this.commit(round);
  }

  /**
   * Staging is over once every old worker staged and every connection is written: the new workers are
   * asked to confirm they wrapped them all, then the old workers freeze them (`sending`). False while
   * the round waits.
   */
  private advanceStaging(round: HandoffRound): boolean {
    if (round.waitingFor.size > 0 || (this.roundFlights.get(round)?.unwritten ?? 0) > 0) return false;
    if (!round.prepareAsked) {
      round.prepareAsked = true;
      for (const adopter of relaysByAdopter(this.flightsOf(round)).keys()) {
        round.answering.add(adopter);
        const asked = this.ports.send(adopter, { baton: 'handoff-prepare' }, undefined, () => {
          // A new worker that cannot read it exits: its exit aborts the round.
        });
        if (!asked) {
          this.abort(round, `new worker ${adopter.index} cannot be reached`, 'no-answer');
          return false;
        }
      }
      if (round.answering.size > 0) {
        round.timer?.cancel();
        round.timer = this.ports.deadline(round, HANDOFF_ADOPT_TIMEOUT_MS);
      }
    }
    if (round.answering.size > 0) return false;
    round.state = 'sending';
    round.overdue = undefined;
    round.frozenAt = this.ports.now();
    round.timer?.cancel();
    for (const sender of round.stagers) {
      round.waitingFor.add(sender);
      const told = this.ports.send(sender, { baton: 'handoff-freeze' }, undefined, () => {
        // An old worker that cannot be reached has exited or is about to: its exit ends its part.
      });
      if (!told) round.waitingFor.delete(sender);
    }
    round.timer = this.ports.deadline(round, round.flushTimeoutMs + HANDOFF_SEND_GRACE_MS);
    return true;
  }

  /** Every adopter answered: the adopted connections start in their new workers and leave the old ones. */
  private commit(round: HandoffRound): void {
    const flights = [...this.flightsOf(round)];
    // A staged connection adopted without its state cannot be: it stays in its old worker, and the new
    // worker drops its copy.
    const stateless = flights.filter(([, flight]) => flight.state === 'adopted' && !flight.hasState);
    for (const [, flight] of stateless) flight.state = 'refused';
    for (const [adopter, relays] of relaysByAdopter(new Map(stateless))) {
      this.ports.send(adopter, { baton: 'handoff-abort', relays }, undefined, () => {
        // A new worker that is gone has closed its copies already.
      });
    }
    const go = relaysByAdopter(new Map(flights.filter(([, flight]) => flight.state === 'adopted')));
    const settled = new SettledNotices();
    for (const [relay, flight] of flights) {
      this.settleFlight(relay, flight, flight.state === 'adopted', settled);
    }
    this.sendSettled(settled);
    for (const [adopter, relays] of go) {
      this.ports.send(adopter, { baton: 'handoff-go', relays }, undefined, () => {
        // Its copy of each connection is all there is now: a new worker that is gone took them along.
      });
    }
    this.finish(round, 'committed');
  }

  /** Nothing of `round` moves: the new workers drop what they hold, the old ones resume everything. */
  private abort(round: HandoffRound, reason: string, cause: AbortCause): void {
    round.abortReason = reason;
    round.abortCause = cause;
    const flights = [...this.flightsOf(round)];
    // Only what reached its adopter is dropped there now; the rest is, once written (onRelayed), so that
    // the abort never overtakes the batch that carries it.
    const dropped = relaysByAdopter(new Map(flights.filter(([, flight]) => isWritten(flight))));
    const settled = new SettledNotices();
    for (const [relay, flight] of flights) this.settleFlight(relay, flight, false, settled);
    this.sendSettled(settled);
    for (const [adopter, relays] of dropped) {
      this.ports.send(adopter, { baton: 'handoff-abort', relays }, undefined, () => {
        // A new worker that is gone has closed its copies already.
      });
    }
    this.ports.logger.warn(
      { gen: round.from.id, to: round.to.id, reason },
      'handoff aborted: every session goes on in its old worker',
    );
    this.finish(round, 'aborted');
  }

  /**
   * Tells the old worker whether its connection moved (in `batch`, sent by the caller, when given), and
   * counts it.
   */
  private settleFlight(relay: number, flight: InFlight, adopted: boolean, batch?: SettledNotices): void {
    if (flight.state === 'settled-while-sending') return;
    if (batch) batch.add(flight.from, flight.id, adopted);
    else this.settle(flight.from, flight.id, adopted);
    this.count(flight.round, adopted ? 'moved' : 'failed');
    const index = this.indexOf(flight.round);
    index.flights.delete(relay);
    if (isWritten(flight)) this.close(relay, flight);
    else {
      flight.state = 'settled-while-sending';
      index.unwritten--;
    }
  }

  /**
   * Forgets a settled connection and closes the master's copy, if not closed already once its send was
   * done (onRelayed); never before that: a handle
   * closed while its send may still be queued lets its fd number go to another socket (a control
   * connection, say), which would then be the one sent.
   */
  private close(relay: number, flight: InFlight): void {
    this.inFlight.delete(relay);
    closeRawHandle(flight.handle);
  }

  private settle(worker: Worker, id: number, adopted: boolean): void {
    const one = new SettledNotices();
    one.add(worker, id, adopted);
    this.sendSettled(one);
  }

  /** One `handoff-settled` per old worker and outcome, however many connections it names. */
  private sendSettled(settled: SettledNotices): void {
    for (const [worker, ids, adopted] of settled.notices()) {
      this.ports.send(worker, { baton: 'handoff-settled', ids, adopted }, undefined, () => {
        // An old worker that is gone has closed its copy already: nothing is left to tell.
      });
    }
  }

  private count(round: HandoffRound, outcome: 'moved' | 'kept' | 'failed', n = 1): void {
    round[outcome] += n;
    this.totals[outcome] += n;
  }

  private finish(round: HandoffRound, outcome: HandoffOutcome): void {
    round.state = 'finished';
    // Connections still being written when the round ended are settled already: only their close is left.
    this.roundFlights.delete(round);
    round.outcome = outcome;
    round.timer?.cancel();
    round.finishedAt = this.ports.now();
    const durationMs = round.finishedAt - round.startedAt;
    // In a staged round, how long its sessions waited: from the freeze to the commit.
    const frozenMs = round.frozenAt === undefined ? undefined : round.finishedAt - round.frozenAt;
    const { moved, kept, failed, incomplete, offered } = round;
    // A sweep that found nothing new is not worth a line, a report or a place in status.
    const silent = round.kind === 'sweep' && outcome === 'committed' && offered + moved + kept + failed === 0;
    if (silent) this.rounds.splice(this.rounds.indexOf(round), 1);
    else {
      this.ports.logger[failed > 0 || incomplete || outcome === 'aborted' ? 'warn' : 'info'](
        {
          gen: round.from.id,
          to: round.to.id,
          kind: round.kind,
          moved,
          kept,
          failed,
          durationMs,
          ...(frozenMs === undefined ? {} : { frozenMs }),
          incomplete,
          outcome,
        },
        'sessions moved',
      );
      this.ports.report({
        kind: 'sessions-moved',
        generation: round.to.id,
        from: round.from.id,
        moved,
        kept,
        failed,
        durationMs,
        incomplete,
        ...(round.abortReason === undefined ? {} : { aborted: round.abortReason }),
      });
    }
    const finished = this.rounds.filter((candidate) => candidate.state === 'finished');
    for (const old of finished.slice(0, -HANDOFF_ROUNDS_KEPT))
      this.rounds.splice(this.rounds.indexOf(old), 1);
    this.ports.ended(round);
  }
}

/** A round's connections in flight, how many are still being written, and the staged ones by origin. */
class RoundIndex {
  readonly flights = new Map<number, InFlight>();
  unwritten = 0;
  private readonly relays = new Map<Worker, Map<number, number>>();

  /** The relay of each connection `from` staged, by the id it gave it. */
  relayOf(from: Worker): Map<number, number> {
    let relays = this.relays.get(from);
    if (!relays) {
      relays = new Map();
      this.relays.set(from, relays);
    }
    return relays;
  }
}

/** What the connections of one batch share as the relay passes them on. */
interface PassContext {
  readonly round: HandoffRound | undefined;
  adoptersOf(listener: string): Worker[];
}

/** The relays of `flights`, grouped by the new worker each went to. */
function relaysByAdopter(flights: ReadonlyMap<number, InFlight>): Map<Worker, number[]> {
  const byAdopter = new Map<Worker, number[]>();
  for (const [relay, flight] of flights) {
    const relays = byAdopter.get(flight.to);
    if (relays) relays.push(relay);
    else byAdopter.set(flight.to, [relay]);
  }
  return byAdopter;
}

/** The connections whose fate the old workers are told at once, grouped by worker and outcome. */
class SettledNotices {
  private readonly byWorker = new Map<Worker, { moved: number[]; kept: number[] }>();

  add(worker: Worker, id: number, adopted: boolean): void {
    let ids = this.byWorker.get(worker);
    if (!ids) {
      ids = { moved: [], kept: [] };
      this.byWorker.set(worker, ids);
    }
    (adopted ? ids.moved : ids.kept).push(id);
  }

  /** `[worker, ids, adopted]` for each non-empty group. */
  *notices(): Generator<[Worker, number[], boolean]> {
    for (const [worker, { moved, kept }] of this.byWorker) {
      if (moved.length > 0) yield [worker, moved, true];
      if (kept.length > 0) yield [worker, kept, false];
    }
  }
}

/** Something other than a raw handle came with a message: close it so that it holds nothing open here. */
function destroyForeign(handle: unknown): void {
  const candidate = handle as { destroy?: () => void; close?: () => void };
  try {
    if (typeof candidate.destroy === 'function') candidate.destroy();
    else if (typeof candidate.close === 'function') candidate.close();
  } catch {
    // already closed
  }
}
