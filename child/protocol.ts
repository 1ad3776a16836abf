/**
 * The IPC protocol between the master and its workers, both directions, as one table: every message
 * kind with its wire type and its guard (docs/contract.md, docs/handoff.md). The worker side
 * (child/channel.ts) and the master (supervisor/master.ts, handoff.ts, inject.ts, dry-run.ts) both import
 * it, so that a kind cannot exist as a string literal in one file only. A message is the bare string
 * `'ready'` (PM2's word) or an object whose `baton` field names its kind.
 *
 * This module is part of the child API: it imports nothing, not even a Node module.
 *
 * To add a message kind: add its wire type to `WorkerWire` (or `MasterWire`), its guard to
 * `WORKER_GUARDS` (or `MASTER_GUARDS`), then a handler in the table of the side that receives it (the
 * master's `workerMessageHandlers` in supervisor/master.ts, or `onMasterMessage` in child/channel.ts).
 */

/** What one handoff request came to, as the old worker reports it once it has sent what it could. */
export interface HandoffCounts {
  /** Connections of the listeners asked for, considered for a move (each connection once). */
  offered: number;
  /** Sent to the master; whether each moved is settled when the round ends. */
  sent: number;
  /** Declined by the app, not quiet in time, or not movable (TLS, HTTP, half closed): draining here. */
  kept: number;
}

/** A connection a new worker did not adopt, and why. */
export interface Refusal {
  relay: number;
  reason: string;
}

/** A staged connection's session state, as its old worker sends it once frozen. */
export interface SessionState {
  id: number;
  state: unknown;
}

/** The same, as the master relays it to the new worker that holds the connection. */
export interface RelayedState {
  relay: number;
  state: unknown;
}

/** Why a patch failed in a worker, as the worker said it. */
export interface PatchFailure {
  message: string;
  stack: string | undefined;
}

/** Every message a worker sends the master, by kind, as it travels. */
export interface WorkerWire {
  /** `process.send('ready')`: the worker serves (the same words as PM2's wait_ready). */
  ready: 'ready';
  /** baton's preload saw the app listen on every listener (child/take-over.ts): ready under `--ready auto` only. */
  listening: { baton: 'listening' };
  /** The open connections the worker holds (child API). */
  connections: { baton: 'connections'; count: number };
  /** The worker's event loop still turns (the child API's ping under `--watchdog`, as WATCHDOG=1). */
  watchdog: { baton: 'watchdog' };
  /** The worker takes patches and exposes these names (child API `expose`). */
  exposed: { baton: 'exposed'; names: string[] };
  /** How applying patch `id` went in the worker. */
  injected: { baton: 'injected'; id: number; ok: boolean; error?: { message: string; stack?: string } };
  /**
   * The listeners this worker hands off (old side) and adopts (new side); `fdChannel` when it reads and
   * writes connections on its descriptor channel (BATON_FD_CHANNEL) too.
   */
  'handoff-hooks': {
    baton: 'handoff-hooks';
    handsOff: string[];
    adopts: string[];
    fdChannel?: boolean;
    /** The worker takes part in staged rounds (`stage`, `handoff-freeze`, `adopt-states`). */
    stages?: boolean;
  };
  /** A connection handed off, with its raw handle alongside. */
  'handoff-connection': { baton: 'handoff-connection'; id: number; listener: string; state: unknown };
  /**
   * Connections `ids` handed off in `batch` of the descriptor channel, which is written already (its
   * payload: one `{ id, listener, state }` per descriptor).
   */
  'handoff-batch': { baton: 'handoff-batch'; batch: number; ids: number[] };
  /**
   * A staged round: the old worker sent every connection it could move on its descriptor channel, still
   * serving them (each entry `{ id, listener, staged: true }`, no state yet).
   */
  'handoff-staged': { baton: 'handoff-staged'; staged: number };
  /**
   * After `handoff-freeze`: the state of connections it stopped at a boundary (`states`), and those it
   * keeps after all (`kept`: declined, not quiet in time, closed meanwhile).
   */
  'handoff-states': { baton: 'handoff-states'; states: SessionState[]; kept: number[] };
  /** The new worker has wrapped every staged connection it was sent before `handoff-prepare`. */
  'handoff-prepared': { baton: 'handoff-prepared' };
  /** The old worker sent all it could. */
  'handoff-finished': { baton: 'handoff-finished' } & HandoffCounts;
  /** The new worker turned down a relayed connection as it arrived (no hook, or it drains). */
  'adopt-refused': { baton: 'adopt-refused'; relay: number; reason?: string };
  /** The new worker's answer to `handoff-commit`. */
  adoptions: { baton: 'adoptions'; adopted: number[]; refused: Refusal[] };
}

/** Every message the master sends a worker, by kind, as it travels. */
export interface MasterWire {
  /** Apply this patch (`baton inject`). */
  inject: { baton: 'inject'; id: number; source: string; hash: string; file: string };
  /** Hand off the connections of these listeners; a sweep (`stopAccepting`) also stops accepting. */
  handoff: {
    baton: 'handoff';
    listeners: string[];
    flushTimeoutMs: number;
    stopAccepting: boolean;
    /**
     * Stage first: send the connections now, still serving them, and their states only once told
     * (`handoff-freeze`). Only to a worker that said `stages`, with a descriptor channel.
     */
    stage?: boolean;
  };
  /**
   * A relayed connection, with its raw handle alongside: hold it until asked to adopt. `staged`: its state
   * comes later (`adopt-states`), while its old worker still serves it.
   */
  adopt: { baton: 'adopt'; relay: number; listener: string; state: unknown; staged?: boolean };
  /**
   * Relays `relays` are in `batch` of the descriptor channel, written already (its payload: one
   * `{ relay, listener, state }` per descriptor): hold them until asked to adopt.
   */
  'adopt-batch': { baton: 'adopt-batch'; batch: number; relays: number[] };
  /** Answer `handoff-prepared` once every staged connection sent before this is wrapped. */
  'handoff-prepare': { baton: 'handoff-prepare' };
  /** Stop the connections staged in this round at a boundary and send their states (`handoff-states`). */
  'handoff-freeze': { baton: 'handoff-freeze' };
  /** The states of staged connections you hold: adopt them (reads and writes still held back). */
  'adopt-states': { baton: 'adopt-states'; states: RelayedState[] };
  /** Answer with `adoptions`: what became of these relays (adopted as they arrived, or refused). */
  'handoff-commit': { baton: 'handoff-commit'; relays: number[] };
  /** The round committed: these connections are yours. */
  'handoff-go': { baton: 'handoff-go'; relays: number[] };
  /** The round was aborted: drop what you hold of these relays. */
  'handoff-abort': { baton: 'handoff-abort'; relays: number[] };
  /** Whether the connections the old worker sent as `ids` were adopted (one notice for all that were, one for the rest). */
  'handoff-settled': {
    baton: 'handoff-settled';
    ids: number[];
    adopted: boolean;
    /** One connection, as a master before batched settlements sent it (read for compatibility). */
    id?: number;
  };
}

/** The kind of a message from a worker. */
export type WorkerMessageKind = keyof WorkerWire;

/** The kind of a message from the master. */
export type MasterMessageKind = keyof MasterWire;

type Guards<Wire> = { [K in keyof Wire]: (fields: Record<string, unknown>) => boolean };

/** The guards of worker messages: whether an object whose `baton` is the kind has the fields it needs. */
const WORKER_GUARDS: Guards<Omit<WorkerWire, 'ready'>> = {
  listening: () => true,
  connections: (m) => isCount(m.count),
  watchdog: () => true,
  exposed: (m) => isStringArray(m.names),
  injected: (m) => Number.isInteger(m.id) && typeof m.ok === 'boolean',
  'handoff-hooks': (m) => isStringArray(m.handsOff) && isStringArray(m.adopts),
  'handoff-connection': (m) => isCount(m.id) && typeof m.listener === 'string',
  'handoff-batch': (m) => isCount(m.batch) && Array.isArray(m.ids) && m.ids.every(isCount),
  'handoff-staged': (m) => isCount(m.staged),
  'handoff-states': (m) =>
    Array.isArray(m.states) &&
    m.states.every(
      (entry: unknown) => typeof entry === 'object' && entry !== null && isCount((entry as SessionState).id),
    ) &&
    Array.isArray(m.kept) &&
    m.kept.every(isCount),
  'handoff-prepared': () => true,
  'handoff-finished': (m) => isCount(m.offered) && isCount(m.sent) && isCount(m.kept),
  'adopt-refused': (m) => isCount(m.relay),
  adoptions: (m) =>
    Array.isArray(m.adopted) &&
    m.adopted.every(isCount) &&
    Array.isArray(m.refused) &&
    m.refused.every(
      (entry: unknown) =>
        typeof entry === 'object' &&
        entry !== null &&
        isCount((entry as Refusal).relay) &&
        typeof (entry as Refusal).reason === 'string',
    ),
};

/**
 * The guards of master messages. A worker reads them leniently (a missing list is an empty one, see
 * child/handoff.ts): the guard checks only what tells the kinds apart.
 */
const MASTER_GUARDS: Guards<MasterWire> = {
  inject: (m) => Number.isInteger(m.id),
  handoff: () => true,
  adopt: () => true,
  'adopt-batch': (m) => Number.isInteger(m.batch),
  'handoff-prepare': () => true,
  'handoff-freeze': () => true,
  'adopt-states': (m) => Array.isArray(m.states),
  'handoff-commit': () => true,
  'handoff-go': () => true,
  'handoff-abort': () => true,
  'handoff-settled': () => true,
};

/** A worker message of a known kind, with its kind. */
export type WorkerMessage = {
  [K in WorkerMessageKind]: { kind: K; message: WorkerWire[K] };
}[WorkerMessageKind];

/** A master message of a known kind, with its kind. */
export type MasterMessage = {
  [K in MasterMessageKind]: { kind: K; message: MasterWire[K] };
}[MasterMessageKind];

/** Reads a raw IPC message from a worker: its kind if it is part of the contract and well formed. */
export function readWorkerMessage(raw: unknown): WorkerMessage | undefined {
  if (raw === 'ready') return { kind: 'ready', message: 'ready' };
  const kind = kindOf(raw, WORKER_GUARDS);
  return kind && ({ kind, message: raw } as WorkerMessage);
}

/** Reads a raw IPC message from the master: its kind if it is part of the contract. */
export function readMasterMessage(raw: unknown): MasterMessage | undefined {
  const kind = kindOf(raw, MASTER_GUARDS);
  return kind && ({ kind, message: raw } as MasterMessage);
}

function kindOf<K extends string>(
  raw: unknown,
  guards: { [key in K]: (fields: Record<string, unknown>) => boolean },
): K | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const fields = raw as Record<string, unknown>;
  const kind = fields.baton;
  if (typeof kind !== 'string' || !Object.hasOwn(guards, kind)) return undefined;
  return guards[kind as K](fields) ? (kind as K) : undefined;
}

/** The worker messages the master itself acts on (readiness, counts, patches), in the master's terms. */
export type CoreWorkerMessage =
  | { kind: 'ready' }
  | { kind: 'listening' }
  | { kind: 'connections'; count: number }
  | { kind: 'exposed'; names: string[] }
  | { kind: 'injected'; id: number; error: PatchFailure | undefined };

/** Reads a raw IPC message; undefined for anything that is not one of the core kinds (handoff has its own). */
export function parseWorkerMessage(raw: unknown): CoreWorkerMessage | undefined {
  const read = readWorkerMessage(raw);
  switch (read?.kind) {
    case 'ready':
      return { kind: 'ready' };
    case 'listening':
      return { kind: 'listening' };
    case 'connections':
      return { kind: 'connections', count: read.message.count };
    case 'exposed':
      return { kind: 'exposed', names: read.message.names };
    case 'injected':
      return {
        kind: 'injected',
        id: read.message.id,
        error: read.message.ok ? undefined : patchFailure(read.message.error),
      };
    default:
      return undefined;
  }
}

/** The message patch `id`'s answer is made of: ok, or the error it failed with. */
export function injectedMessage(id: number, error: PatchFailure | undefined): WorkerWire['injected'] {
  return error === undefined
    ? { baton: 'injected', id, ok: true }
    : { baton: 'injected', id, ok: false, error };
}

/** The error a worker reported with `injected`, whatever shape it came in. */
export function patchFailure(error: unknown): PatchFailure {
  const reported = (typeof error === 'object' && error !== null ? error : {}) as Record<string, unknown>;
  return {
    message: typeof reported.message === 'string' ? reported.message : 'the patch failed (no message)',
    stack: typeof reported.stack === 'string' ? reported.stack : undefined,
  };
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((item) => typeof item === 'string');
}

function isCount(value: unknown): value is number {
  return Number.isInteger(value) && (value as number) >= 0;
}
