/**
 * Live session handoff, the master's side (docs/handoff.md). When a new generation becomes active, the
 * old workers that opted in (child API `onHandoff`) are asked to hand off their open connections; each
 * arrives here as a raw handle with its session state, is passed on, never read, to one of the new
 * workers that adopt its listener (`onAdopt`), spread evenly, and the old worker is told whether the
 * adoption took, so that it closes its copy or lets the session go on. A round per old generation
 * counts what moved, what was kept on the old code and what failed.
 *
 * The decisions are pure functions and one small class over plain data; the master feeds it its events
 * (messages, handles, exits, the send callbacks) one at a time, from its dispatcher.
 */
import type { Generation } from './generation.js';
import type { Logger } from './log.js';
import { asRawSocketHandle, closeRawHandle, type RawSocketHandle } from './node-internals.js';
import type { Worker } from './worker.js';

/** How long an old worker may wait for a connection's pending writes to flush before keeping it. */
export const HANDOFF_FLUSH_TIMEOUT_MS = 2_000;

/** The flush wait never takes more than this share of the drain timeout: a connection kept still drains. */
export const HANDOFF_FLUSH_SHARE_OF_DRAIN = 0.25;

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
}

/** The counts an old worker reports once it has handled a handoff request. */
export interface HandoffCounts {
  offered: number;
  moved: number;
  kept: number;
  failed: number;
}

/** The handoff messages a worker may send (child/handoff.ts), by kind. */
export type HandoffMessage =
  | { kind: 'hooks'; hooks: HandoffHooks }
  | { kind: 'connection'; id: number; listener: string; state: unknown }
  | { kind: 'finished'; counts: HandoffCounts }
  | { kind: 'adopted'; relay: number; ok: boolean; reason: string | undefined };

/** Reads a raw IPC message; undefined for anything that is not a handoff message. */
export function parseHandoffMessage(raw: unknown): HandoffMessage | undefined {
  if (typeof raw !== 'object' || raw === null) return undefined;
  const message = raw as Record<string, unknown>;
  switch (message.baton) {
    case 'handoff-hooks':
      if (!isStringArray(message.handsOff) || !isStringArray(message.adopts)) return undefined;
      return {
        kind: 'hooks',
        hooks: { handsOff: new Set(message.handsOff), adopts: new Set(message.adopts) },
      };
    case 'handoff-connection':
      if (!isCount(message.id) || typeof message.listener !== 'string') return undefined;
      return { kind: 'connection', id: message.id, listener: message.listener, state: message.state };
    case 'handoff-finished': {
      const { offered, moved, kept, failed } = message;
      if (!isCount(offered) || !isCount(moved) || !isCount(kept) || !isCount(failed)) return undefined;
      return { kind: 'finished', counts: { offered, moved, kept, failed } };
    }
    case 'adopted':
      if (!isCount(message.relay) || typeof message.ok !== 'boolean') return undefined;
      return {
        kind: 'adopted',
        relay: message.relay,
        ok: message.ok,
        reason: typeof message.reason === 'string' ? message.reason : undefined,
      };
    default:
      return undefined;
  }
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

/** The life of one handoff round. */
export type HandoffRoundState = 'running' | 'finished';

/** One old generation handing its sessions to the generation that replaced it. */
export class HandoffRound {
  state: HandoffRoundState = 'running';
  moved = 0;
  kept = 0;
  failed = 0;
  finishedAt: number | undefined;
  /** The round ended with the old generation, before every worker had reported. */
  incomplete = false;
  /** Old workers asked to hand off that have neither reported nor exited. */
  readonly waitingFor: Set<Worker>;
  /** Connections given to each adopter in this round, on top of what it held when first chosen. */
  private readonly given = new Map<Worker, { baseline: number; count: number }>();

  constructor(
    readonly from: number,
    readonly to: number,
    readonly listeners: readonly string[],
    senders: readonly Worker[],
    readonly startedAt: number,
  ) {
    this.waitingFor = new Set(senders);
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
  from: number;
  to: number;
  listeners: string[];
  state: HandoffRoundState;
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
    message: object,
    handle: RawSocketHandle | undefined,
    onSent: (error: Error | null) => void,
  ): boolean;
  /** Queues the master's event for a relayed handle's send callback (it comes back to `onRelayed`). */
  relayed(relay: number, error: Error | null): void;
  report(progress: SessionsMovedProgress): void;
}

/** A connection between the old worker's send and the new worker's answer. */
interface InFlight {
  readonly round: HandoffRound;
  readonly from: Worker;
  readonly id: number;
  readonly to: Worker;
  readonly handle: RawSocketHandle;
  /** The send to `to` completed or failed (the master's copy of the handle is closed then). */
  written: boolean;
  /** Whether `to` adopted it, once known. */
  adopted: boolean | undefined;
}

/** The master's side of every handoff: which workers take part, the rounds, the connections in flight. */
export class HandoffRelay {
  private readonly hooks = new WeakMap<Worker, HandoffHooks>();
  private readonly rounds: HandoffRound[] = [];
  private readonly inFlight = new Map<number, InFlight>();
  private readonly totals = { moved: 0, kept: 0, failed: 0 };
  private nextRelay = 1;

  constructor(private readonly ports: RelayPorts) {}

  /** Takes in a handoff message that came without a handle. */
  onMessage(worker: Worker, message: HandoffMessage): void {
    if (message.kind === 'hooks') this.hooks.set(worker, message.hooks);
    else if (message.kind === 'finished') this.onFinished(worker, message.counts);
    else if (message.kind === 'adopted') this.onAdopted(worker, message.relay, message.ok, message.reason);
    // A 'connection' here is the copy of a message whose handle came through `onHandle`: already handled.
  }

  /** Takes in a message that came with a handle; `active` is the generation that serves now. */
  onHandle(worker: Worker, raw: unknown, handle: unknown, active: Generation | undefined): void {
    const message = parseHandoffMessage(raw);
    if (message?.kind === 'connection') {
      this.onConnection(worker, message.id, message.listener, message.state, handle, active);
      return;
    }
    // Nothing else in baton's contract carries a handle: close it rather than hold it open here.
    destroyForeign(handle);
    this.ports.logger.debug(
      { gen: worker.generation, worker: worker.index, pid: worker.pid },
      'a handle that came with an unknown message was closed',
    );
  }

  /**
   * Generation `to` became active and `from` drains: asks `from`'s workers to hand off the listeners
   * `to`'s workers adopt. Undefined when nothing can move (nobody opted in on one side).
   */
  start(from: Generation, to: Generation, flushTimeoutMs: number): HandoffRound | undefined {
    const senders = from.liveWorkers.filter((worker) => (this.hooks.get(worker)?.handsOff.size ?? 0) > 0);
    const adopters = to.currentWorkers.filter((worker) => worker.state === 'ready' && this.hooks.has(worker));
    const listeners = listenersToHandOff(
      senders.map((worker) => this.hooks.get(worker) as HandoffHooks),
      adopters.map((worker) => this.hooks.get(worker) as HandoffHooks),
    );
    if (senders.length === 0 || listeners.length === 0) return undefined;
    const round = new HandoffRound(from.id, to.id, listeners, senders, this.ports.now());
    this.rounds.push(round);
    for (const old of this.rounds.filter((r) => r.state === 'finished').slice(0, -HANDOFF_ROUNDS_KEPT)) {
      this.rounds.splice(this.rounds.indexOf(old), 1);
    }
    for (const sender of senders) {
      const asked = this.ports.send(
        sender,
        { baton: 'handoff', listeners, flushTimeoutMs },
        undefined,
        () => {
          // A worker that cannot be reached has exited or is about to: its exit ends its part of the round.
        },
      );
      if (!asked) round.waitingFor.delete(sender);
    }
    this.ports.logger.info(
      { gen: from.id, to: to.id, listeners, workers: round.waitingFor.size, flushTimeoutMs },
      'handoff started',
    );
    this.finishIfDone(round);
    return round;
  }

  /**
   * An old worker sent a connection with `rawHandle`: passes it to the least loaded adopter of `active`,
   * or tells the old worker to keep it.
   */
  onConnection(
    from: Worker,
    id: number,
    listener: string,
    state: unknown,
    rawHandle: unknown,
    active: Generation | undefined,
  ): void {
    const round = this.runningRoundOf(from);
    const handle = asRawSocketHandle(rawHandle);
    const facts = { gen: from.generation, worker: from.index, pid: from.pid, listener };
    if (!handle) {
      // The message arrived without its handle (or with a net.Socket, which has started reading):
      // nothing to pass on. The old worker's copy is intact.
      if (rawHandle !== undefined) destroyForeign(rawHandle);
      this.ports.logger.warn(facts, 'handoff: a connection arrived without a raw socket handle');
      this.settle(from, id, false);
      if (round) this.count(round, 'failed');
      return;
    }
    const adopter =
      round &&
      chooseAdopter(
        this.adoptersOf(active, listener).map((worker) => ({ adopter: worker, load: round.loadOf(worker) })),
      );
    if (!round || !adopter) {
      closeRawHandle(handle);
      this.settle(from, id, false);
      this.ports.logger.debug(facts, 'handoff: no new worker adopts this connection; it stays');
      if (round) {
        this.count(round, 'failed');
        this.finishIfDone(round);
      }
      return;
    }
    const relay = this.nextRelay++;
    round.give(adopter);
    this.inFlight.set(relay, { round, from, id, to: adopter, handle, written: false, adopted: undefined });
    const sent = this.ports.send(adopter, { baton: 'adopt', relay, listener, state }, handle, (error) =>
      this.ports.relayed(relay, error),
    );
    if (!sent) this.onRelayed(relay, new Error('the new worker has no IPC channel'));
  }

  /** The send of relay `relay` to its adopter completed (or failed): the master's copy can go. */
  onRelayed(relay: number, error: Error | null): void {
    const flight = this.inFlight.get(relay);
    if (!flight || flight.written) return;
    flight.written = true;
    closeRawHandle(flight.handle);
    if (error && flight.adopted === undefined) {
      this.ports.logger.debug(
        { gen: flight.to.generation, worker: flight.to.index, pid: flight.to.pid, error: error.message },
        'handoff: could not pass a connection on',
      );
      flight.adopted = false;
    }
    this.settleIfKnown(relay, flight);
  }

  /** A new worker answered whether it adopted relay `relay`. */
  onAdopted(worker: Worker, relay: number, ok: boolean, reason: string | undefined): void {
    const flight = this.inFlight.get(relay);
    if (!flight || flight.to !== worker || flight.adopted !== undefined) return;
    flight.adopted = ok;
    if (!ok) {
      this.ports.logger.warn(
        { gen: worker.generation, worker: worker.index, pid: worker.pid, reason },
        'handoff: the new worker refused a connection; it goes on in its old worker',
      );
    }
    this.settleIfKnown(relay, flight);
  }

  /** An old worker handled its handoff request. */
  onFinished(worker: Worker, counts: HandoffCounts): void {
    const round = this.runningRoundOf(worker);
    if (!round) return;
    this.count(round, 'kept', counts.kept);
    round.waitingFor.delete(worker);
    this.finishIfDone(round);
  }

  /** A worker exited: it no longer hands off, and what it was to adopt goes back to the old workers. */
  onWorkerExited(worker: Worker): void {
    for (const [relay, flight] of this.inFlight) {
      if (flight.to !== worker || flight.adopted !== undefined) continue;
      flight.adopted = false;
      this.settleIfKnown(relay, flight);
    }
    for (const round of this.rounds) {
      if (round.state === 'running' && round.waitingFor.delete(worker)) this.finishIfDone(round);
    }
  }

  /** Generation `id` is gone: its rounds end with what they have. */
  onGenerationRetired(id: number): void {
    for (const round of this.rounds) {
      if (round.state !== 'running' || round.from !== id) continue;
      round.incomplete = round.waitingFor.size > 0 || this.inFlightOf(round) > 0;
      round.waitingFor.clear();
      this.finish(round);
    }
  }

  /** Totals and the last rounds, as plain data. */
  snapshot(): SessionsSnapshot {
    return {
      ...this.totals,
      rounds: this.rounds.map((round) => ({
        from: round.from,
        to: round.to,
        listeners: [...round.listeners],
        state: round.state,
        startedAt: round.startedAt,
        finishedAt: round.finishedAt,
        incomplete: round.incomplete,
        moved: round.moved,
        kept: round.kept,
        failed: round.failed,
        inFlight: this.inFlightOf(round),
      })),
    };
  }

  private adoptersOf(active: Generation | undefined, listener: string): Worker[] {
    if (!active) return [];
    return active.currentWorkers.filter(
      (worker) => worker.state === 'ready' && this.hooks.get(worker)?.adopts.has(listener) === true,
    );
  }

  private runningRoundOf(worker: Worker): HandoffRound | undefined {
    return this.rounds.find((round) => round.state === 'running' && round.waitingFor.has(worker));
  }

  private inFlightOf(round: HandoffRound): number {
    let count = 0;
    for (const flight of this.inFlight.values()) if (flight.round === round) count++;
    return count;
  }

  /** Once the adoption is known and the master's copy closed: tells the old worker, counts, forgets. */
  private settleIfKnown(relay: number, flight: InFlight): void {
    if (flight.adopted === undefined || !flight.written) return;
    this.inFlight.delete(relay);
    this.settle(flight.from, flight.id, flight.adopted);
    this.count(flight.round, flight.adopted ? 'moved' : 'failed');
    this.finishIfDone(flight.round);
  }

  private settle(worker: Worker, id: number, adopted: boolean): void {
    this.ports.send(worker, { baton: 'handoff-settled', id, adopted }, undefined, () => {
      // An old worker that is gone has closed its copy already: nothing is left to tell.
    });
  }

  private count(round: HandoffRound, outcome: 'moved' | 'kept' | 'failed', n = 1): void {
    round[outcome] += n;
    this.totals[outcome] += n;
  }

  private finishIfDone(round: HandoffRound): void {
    if (round.state === 'running' && round.waitingFor.size === 0 && this.inFlightOf(round) === 0) {
      this.finish(round);
    }
  }

  private finish(round: HandoffRound): void {
    round.state = 'finished';
    round.finishedAt = this.ports.now();
    const durationMs = round.finishedAt - round.startedAt;
    const { moved, kept, failed, incomplete } = round;
    this.ports.logger[failed > 0 || incomplete ? 'warn' : 'info'](
      { gen: round.from, to: round.to, moved, kept, failed, durationMs, incomplete },
      'sessions moved',
    );
    this.ports.report({
      kind: 'sessions-moved',
      generation: round.to,
      from: round.from,
      moved,
      kept,
      failed,
      durationMs,
      incomplete,
    });
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

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((item) => typeof item === 'string');
}

function isCount(value: unknown): value is number {
  return Number.isInteger(value) && (value as number) >= 0;
}
