/**
 * Live session handoff without a process or a socket: the pure decisions (which listeners, which new
 * worker, how long to wait), the relay's bookkeeping against fake ports, the master's wiring against a
 * fake OS, and the old worker's wait for a connection to be quiet under fake timers.
 */
import { fstatSync, openSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import { pino } from 'pino';
import { isQuiet, QUIET_POLL_INTERVAL_MS, waitQuiet } from '../../child/handoff.js';
import type { Batch } from '../../supervisor/fd-channel.js';
import { Generation, type Slot } from '../../supervisor/generation.js';
import {
  chooseAdopter,
  HANDOFF_ADOPT_TIMEOUT_MS,
  HANDOFF_FLUSH_TIMEOUT_MS,
  HANDOFF_SEND_GRACE_MS,
  HandoffRelay,
  type HandoffRound,
  handoffFlushTimeoutMs,
  listenersToHandOff,
  parseHandoffMessage,
  type SessionsMovedProgress,
} from '../../supervisor/handoff.js';
import { Master } from '../../supervisor/master.js';
import { type MasterOptions, parseStartOptions } from '../../supervisor/options.js';
import type {
  AdoptEntry,
  DescriptorLink,
  Os,
  SpawnRequest,
  WorkerCallbacks,
  WorkerProcess,
} from '../../supervisor/os.js';
import { Worker } from '../../supervisor/worker.js';

/** A connection handle as the master receives one: a bare object with an fd, never a net.Socket. */
class FakeHandle {
  closed = false;
  constructor(readonly fd: number) {}
  readStart(): number {
    return 0;
  }
  close(): void {
    this.closed = true;
  }
}

/** One connection named in a `handoff-settled` notice, and what became of it. */
interface Settled {
  id: number;
  adopted: boolean;
}

/** The connections the `handoff-settled` notices among `messages` name, in order. */
function settledIn(messages: readonly unknown[]): Settled[] {
  return messages.flatMap((message) => {
    const notice = message as { baton?: string; ids?: number[]; adopted?: boolean };
    if (notice.baton !== 'handoff-settled') return [];
    return (notice.ids ?? []).map((id) => ({ id, adopted: notice.adopted === true }));
  });
}

function hooks(handsOff: string[], adopts: string[]) {
  return { handsOff: new Set(handsOff), adopts: new Set(adopts) };
}

describe('decisions', () => {
  test('the flush wait is 2 s, but never more than a quarter of the drain timeout', () => {
    expect(handoffFlushTimeoutMs(30_000)).toBe(HANDOFF_FLUSH_TIMEOUT_MS);
    expect(handoffFlushTimeoutMs(2_000)).toBe(500);
    expect(handoffFlushTimeoutMs(0)).toBe(1);
  });

  test('only listeners handed off on one side and adopted on the other move', () => {
    expect(
      listenersToHandOff([hooks(['game', 'chat'], [])], [hooks([], ['game']), hooks([], ['http'])]),
    ).toEqual(['game']);
    expect(listenersToHandOff([hooks(['game'], [])], [hooks([], [])])).toEqual([]);
    expect(listenersToHandOff([], [hooks([], ['game'])])).toEqual([]);
  });

  test('the least loaded adopter takes the next connection; the first of equals', () => {
    expect(chooseAdopter([])).toBeUndefined();
    expect(
      chooseAdopter([
        { adopter: 'a', load: 3 },
        { adopter: 'b', load: 1 },
        { adopter: 'c', load: 1 },
      ]),
    ).toBe('b');
  });

  test('spreading: 50 connections over 2 idle workers is 25 each; a busy worker gets fewer', () => {
    const spread = (baseline: number[], connections: number) => {
      const given = baseline.map(() => 0);
      for (let i = 0; i < connections; i++) {
        const index = chooseAdopter(
          baseline.map((load, adopter) => ({ adopter, load: load + (given[adopter] ?? 0) })),
        );
        given[index as number] = (given[index as number] ?? 0) + 1;
      }
      return given;
    };
    expect(spread([0, 0], 50)).toEqual([25, 25]);
    expect(spread([10, 0], 50)).toEqual([20, 30]);
    expect(spread([0, 0, 0], 10)).toEqual([4, 3, 3]);
  });

  test('messages: each kind has its guard; anything else is not a handoff message', () => {
    expect(parseHandoffMessage({ baton: 'handoff-hooks', handsOff: ['game'], adopts: [] })).toEqual({
      kind: 'hooks',
      hooks: hooks(['game'], []),
    });
    expect(
      parseHandoffMessage({ baton: 'handoff-connection', id: 3, listener: 'game', state: { coins: 4 } }),
    ).toEqual({ kind: 'connection', id: 3, listener: 'game', state: { coins: 4 } });
    expect(parseHandoffMessage({ baton: 'handoff-staged', staged: 3 })).toEqual({ kind: 'staged' });
    expect(parseHandoffMessage({ baton: 'handoff-prepared' })).toEqual({ kind: 'prepared' });
    expect(
      parseHandoffMessage({ baton: 'handoff-states', states: [{ id: 1, state: { coins: 2 } }], kept: [4] }),
    ).toEqual({ kind: 'states', states: [{ id: 1, state: { coins: 2 } }], kept: [4] });
    expect(
      parseHandoffMessage({ baton: 'handoff-states', states: [{ state: 1 }], kept: [] }),
    ).toBeUndefined();
    expect(parseHandoffMessage({ baton: 'handoff-states', states: [], kept: ['x'] })).toBeUndefined();
    expect(parseHandoffMessage({ baton: 'handoff-finished', offered: 2, sent: 1, kept: 1 })).toEqual({
      kind: 'finished',
      counts: { offered: 2, sent: 1, kept: 1 },
    });
    expect(parseHandoffMessage({ baton: 'adopt-refused', relay: 1, reason: 'no hook' })).toEqual({
      kind: 'refused',
      relay: 1,
      reason: 'no hook',
    });
    expect(
      parseHandoffMessage({ baton: 'adoptions', adopted: [1, 2], refused: [{ relay: 3, reason: 'threw' }] }),
    ).toEqual({ kind: 'adoptions', adopted: [1, 2], refused: [{ relay: 3, reason: 'threw' }] });
    expect(parseHandoffMessage('ready')).toBeUndefined();
    expect(parseHandoffMessage({ baton: 'connections', count: 1 })).toBeUndefined();
    expect(parseHandoffMessage({ baton: 'handoff-hooks', handsOff: 'game', adopts: [] })).toBeUndefined();
    expect(parseHandoffMessage({ baton: 'handoff-connection', id: -1, listener: 'game' })).toBeUndefined();
    expect(parseHandoffMessage({ baton: 'adopt-refused' })).toBeUndefined();
    expect(
      parseHandoffMessage({ baton: 'adoptions', adopted: [1], refused: [{ relay: 2 }] }),
    ).toBeUndefined();
    expect(parseHandoffMessage({ baton: 'adoptions', adopted: ['1'], refused: [] })).toBeUndefined();
  });
});

/** What the relay sent, to whom, with which handle. */
interface Sent {
  to: Worker;
  message: Record<string, unknown>;
  handle: unknown;
  onSent: (error: Error | null) => void;
}

describe('HandoffRelay', () => {
  let sent: Sent[];
  let relayed: Array<[number, Error | null]>;
  let reports: SessionsMovedProgress[];
  let logs: Array<Record<string, unknown>>;
  let ended: HandoffRound[];
  let deadlines: Array<{ round: HandoffRound; ms: number; cancelled: boolean }>;
  let unreachable: Set<Worker>;
  let relay: HandoffRelay;
  let clock: number;

  beforeEach(() => {
    sent = [];
    relayed = [];
    reports = [];
    logs = [];
    ended = [];
    deadlines = [];
    unreachable = new Set();
    clock = 1_000;
    relay = new HandoffRelay({
      logger: pino({ level: 'debug' }, { write: (line: string) => logs.push(JSON.parse(line)) }),
      now: () => clock,
      send: (to, message, handle, onSent) => {
        if (unreachable.has(to)) return false;
        sent.push({ to, message: message as Record<string, unknown>, handle, onSent });
        return true;
      },
      relayed: (id, error) => relayed.push([id, error]),
      deadline: (round, ms) => {
        const entry = { round, ms, cancelled: false };
        deadlines.push(entry);
        return { cancel: () => (entry.cancelled = true) };
      },
      ended: (round) => ended.push(round),
      report: (progress) => reports.push(progress),
    });
  });

  /** Generation 1 (active, 1 worker that hands off `game`) and 2 (ready, 2 workers adopting `game`). */
  function generations(): { old: Generation; fresh: Generation; sender: Worker; adopters: Worker[] } {
    const old = new Generation(1, '1', 1, 0);
    const fresh = new Generation(2, '2', 2, 0);
    const sender = new Worker(1, 0, 0);
    old.workers.push(sender);
    (old.slots[0] as Slot).current = sender;
    sender.markReady(0);
    old.markActive(0);
    const adopters = [new Worker(2, 0, 0), new Worker(2, 1, 0)];
    adopters.forEach((worker, index) => {
      fresh.workers.push(worker);
      (fresh.slots[index] as Slot).current = worker;
      worker.markReady(0);
      relay.onMessage(worker, { kind: 'hooks', hooks: hooks([], ['game']) });
    });
    relay.onMessage(sender, { kind: 'hooks', hooks: hooks(['game'], ['game']) });
    return { old, fresh, sender, adopters };
  }

  function connection(id: number) {
    return { baton: 'handoff-connection', id, listener: 'game', state: { coins: id } };
  }

  function messagesTo(worker: Worker, kind: string): Record<string, unknown>[] {
    return sent
      .filter((entry) => entry.to === worker && entry.message.baton === kind)
      .map((entry) => entry.message);
  }

  function settledTo(worker: Worker): Settled[] {
    return settledIn(messagesTo(worker, 'handoff-settled'));
  }

  /** Relays `count` connections from `sender` and completes their sends; returns their handles. */
  function relayConnections(sender: Worker, count: number): FakeHandle[] {
    const handles = Array.from({ length: count }, (_, index) => new FakeHandle(index + 10));
    for (const [index, handle] of handles.entries()) relay.onHandle(sender, connection(index + 1), handle);
    for (const entry of sent.filter((candidate) => candidate.message.baton === 'adopt')) entry.onSent(null);
    for (const [id, error] of relayed.splice(0)) relay.onRelayed(id, error);
    return handles;
  }

  test('a switch round: connections are spread and held; the adopters adopt once all is in; nothing moves before every adopter answered', () => {
    const { old, fresh, sender, adopters } = generations();
    const round = relay.start('switch', old, fresh, 500);
    expect(round).toBeDefined();
    // The old worker keeps accepting: the old generation still serves until the round commits.
    expect(messagesTo(sender, 'handoff')).toEqual([
      { baton: 'handoff', listeners: ['game'], flushTimeoutMs: 500, stopAccepting: false },
    ]);
    expect(deadlines.map((entry) => entry.ms)).toEqual([500 + HANDOFF_SEND_GRACE_MS]);

    const handles = relayConnections(sender, 4);
    expect(
      sent
        .filter((entry) => entry.message.baton === 'adopt')
        .map((entry) => [entry.to, entry.message.state, entry.handle]),
    ).toEqual([
      [adopters[0], { coins: 1 }, handles[0]],
      [adopters[1], { coins: 2 }, handles[1]],
      [adopters[0], { coins: 3 }, handles[2]],
      [adopters[1], { coins: 4 }, handles[3]],
    ]);
    // Written, but the old worker has not reported yet: nobody adopts. The master's copies are of no
    // more use once written, whatever the round decides: closed already, out of the commit.
    expect(sent.some((entry) => entry.message.baton === 'handoff-commit')).toBe(false);
    expect(handles.every((handle) => handle.closed)).toBe(true);

    relay.onFinished(sender, { offered: 5, sent: 4, kept: 1 });
    expect(messagesTo(adopters[0] as Worker, 'handoff-commit')).toEqual([
      { baton: 'handoff-commit', relays: [1, 3] },
    ]);
    expect(messagesTo(adopters[1] as Worker, 'handoff-commit')).toEqual([
      { baton: 'handoff-commit', relays: [2, 4] },
    ]);
    expect(deadlines[0]?.cancelled).toBe(true);
    expect(deadlines[1]?.ms).toBe(HANDOFF_ADOPT_TIMEOUT_MS);

    relay.onMessage(adopters[0] as Worker, { kind: 'adoptions', adopted: [1, 3], refused: [] });
    expect(settledTo(sender)).toEqual([]);

    clock += 40;
    relay.onMessage(adopters[1] as Worker, { kind: 'adoptions', adopted: [2, 4], refused: [] });
    expect(messagesTo(adopters[0] as Worker, 'handoff-go')).toEqual([
      { baton: 'handoff-go', relays: [1, 3] },
    ]);
    expect(messagesTo(adopters[1] as Worker, 'handoff-go')).toEqual([
      { baton: 'handoff-go', relays: [2, 4] },
    ]);
    expect(settledTo(sender)).toEqual([1, 2, 3, 4].map((id) => ({ id, adopted: true })));
    expect(handles.every((handle) => handle.closed)).toBe(true);
    expect(ended).toEqual([round]);
    expect(round?.outcome).toBe('committed');
    expect(reports).toEqual([
      {
        kind: 'sessions-moved',
        generation: 2,
        from: 1,
        moved: 4,
        kept: 1,
        failed: 0,
        durationMs: 40,
        incomplete: false,
      },
    ]);
    expect(logs.find((entry) => entry.msg === 'sessions moved')).toMatchObject({
      gen: 1,
      to: 2,
      moved: 4,
      kept: 1,
      outcome: 'committed',
    });
    expect(relay.snapshot()).toMatchObject({
      moved: 4,
      kept: 1,
      failed: 0,
      rounds: [
        { kind: 'switch', from: 1, to: 2, state: 'finished', moved: 4, kept: 1, failed: 0, inFlight: 0 },
      ],
    });
  });

  test('10,000 connections: the round waits for the last one written, then one commit per adopter and one settled notice per old worker', () => {
    const { old, fresh, sender, adopters } = generations();
    const round = relay.start('switch', old, fresh, 500);
    const count = 10_000;
    const handles = Array.from({ length: count }, (_, index) => new FakeHandle(index + 10));
    for (const [index, handle] of handles.entries()) relay.onHandle(sender, connection(index + 1), handle);
    relay.onFinished(sender, { offered: count, sent: count, kept: 0 });
    const adopts = sent.filter((entry) => entry.message.baton === 'adopt');
    // Written in reverse order: the round goes on only once the last of them is.
    for (const entry of adopts.reverse()) entry.onSent(null);
    const written = relayed.splice(0);
    for (const [id, error] of written.slice(0, -1)) relay.onRelayed(id, error);
    expect(sent.some((entry) => entry.message.baton === 'handoff-commit')).toBe(false);
    expect(relay.snapshot().rounds[0]?.inFlight).toBe(count);
    for (const [id, error] of written.slice(-1)) relay.onRelayed(id, error);

    for (const adopter of adopters) {
      const commits = messagesTo(adopter, 'handoff-commit') as Array<{ relays: number[] }>;
      expect(commits).toHaveLength(1);
      expect(commits[0]?.relays).toHaveLength(count / 2);
      relay.onMessage(adopter, { kind: 'adoptions', adopted: commits[0]?.relays ?? [], refused: [] });
    }
    expect(messagesTo(sender, 'handoff-settled')).toEqual([
      {
        baton: 'handoff-settled',
        ids: Array.from({ length: count }, (_, index) => index + 1),
        adopted: true,
      },
    ]);
    expect(handles.every((handle) => handle.closed)).toBe(true);
    expect(round?.outcome).toBe('committed');
    expect(relay.snapshot()).toMatchObject({ moved: count, failed: 0, rounds: [{ inFlight: 0 }] });
  });

  test('an aborted round tells each old worker in one notice, and closes what is written only once its send is done', () => {
    const { old, fresh, sender, adopters } = generations();
    const round = relay.start('switch', old, fresh, 500);
    const handles = Array.from({ length: 6 }, (_, index) => new FakeHandle(index + 10));
    for (const [index, handle] of handles.entries()) relay.onHandle(sender, connection(index + 1), handle);
    const adopts = sent.filter((entry) => entry.message.baton === 'adopt');
    // Relays 1-4 are written; 5 and 6 are still on their way when the round ends.
    for (const entry of adopts.slice(0, 4)) entry.onSent(null);
    for (const [id, error] of relayed.splice(0)) relay.onRelayed(id, error);
    relay.abortAll('the master is stopping');

    expect(messagesTo(sender, 'handoff-settled')).toEqual([
      { baton: 'handoff-settled', ids: [1, 2, 3, 4, 5, 6], adopted: false },
    ]);
    expect(handles.map((handle) => handle.closed)).toEqual([true, true, true, true, false, false]);
    // The adopters drop what reached them; what had not is dropped once it has, never before it.
    const aborted = () =>
      adopters
        .flatMap((adopter) => messagesTo(adopter, 'handoff-abort'))
        .flatMap((message) => (message as { relays: number[] }).relays)
        .sort();
    expect(aborted()).toEqual([1, 2, 3, 4]);
    for (const entry of adopts.slice(4)) entry.onSent(null);
    for (const [id, error] of relayed.splice(0)) relay.onRelayed(id, error);
    expect(handles.every((handle) => handle.closed)).toBe(true);
    expect(round?.outcome).toBe('aborted');
    expect(aborted()).toEqual([1, 2, 3, 4, 5, 6]);
    expect(relay.snapshot()).toMatchObject({ moved: 0, failed: 6, rounds: [{ inFlight: 0 }] });
  });

  test('a new worker that exits before the commit aborts the round: every connection goes back, the other adopters drop theirs', () => {
    const { old, fresh, sender, adopters } = generations();
    const round = relay.start('switch', old, fresh, 500);
    const handles = relayConnections(sender, 4);
    relay.onFinished(sender, { offered: 4, sent: 4, kept: 0 });
    // One adopter answered: its connections are adopted, still held back, and must not stay there.
    relay.onMessage(adopters[0] as Worker, { kind: 'adoptions', adopted: [1, 3], refused: [] });
    (adopters[1] as Worker).markExited(70, null, 0);
    relay.onWorkerExited(adopters[1] as Worker);

    expect(settledTo(sender)).toEqual([1, 2, 3, 4].map((id) => ({ id, adopted: false })));
    expect(messagesTo(adopters[0] as Worker, 'handoff-abort')).toEqual([
      { baton: 'handoff-abort', relays: [1, 3] },
    ]);
    expect(sent.some((entry) => entry.message.baton === 'handoff-go')).toBe(false);
    expect(handles.every((handle) => handle.closed)).toBe(true);
    expect(round).toMatchObject({ outcome: 'aborted', abortCause: 'worker-exited' });
    expect(round?.abortReason).toBe('new worker 1 exited with code 70');
    expect(ended).toEqual([round]);
    expect(reports[0]).toMatchObject({ moved: 0, failed: 4, aborted: 'new worker 1 exited with code 70' });
  });

  test('a handle is closed only once its send is done, even when the round ends first', () => {
    const { old, fresh, sender, adopters } = generations();
    relay.start('switch', old, fresh, 500);
    const handle = new FakeHandle(7);
    relay.onHandle(sender, connection(1), handle);
    (adopters[1] as Worker).markExited(1, null, 0);
    relay.onWorkerExited(adopters[1] as Worker);
    expect(settledTo(sender)).toEqual([{ id: 1, adopted: false }]);
    // The send may still be queued in Node: closing now would free the fd number for another socket.
    expect(handle.closed).toBe(false);
    relay.onRelayed(1, null);
    expect(handle.closed).toBe(true);
  });

  test('an adopter that refuses a connection, as it arrives or when asked to adopt: it goes back to its old worker, counted as failed', () => {
    const { old, fresh, sender, adopters } = generations();
    relay.start('switch', old, fresh, 500);
    relay.onHandle(sender, connection(1), new FakeHandle(1));
    relay.onHandle(sender, connection(2), new FakeHandle(2));
    relay.onMessage(adopters[0] as Worker, { kind: 'refused', relay: 1, reason: 'no onAdopt hook' });
    // Settled once its send is done.
    expect(settledTo(sender)).toEqual([]);
    relay.onRelayed(1, null);
    expect(settledTo(sender)).toEqual([{ id: 1, adopted: false }]);
    relay.onRelayed(2, null);
    relay.onFinished(sender, { offered: 2, sent: 2, kept: 0 });
    expect(messagesTo(adopters[0] as Worker, 'handoff-commit')).toEqual([]);
    relay.onMessage(adopters[1] as Worker, {
      kind: 'adoptions',
      adopted: [],
      refused: [{ relay: 2, reason: 'this version cannot adopt' }],
    });
    expect(settledTo(sender)).toEqual([
      { id: 1, adopted: false },
      { id: 2, adopted: false },
    ]);
    expect(reports[0]).toMatchObject({ moved: 0, kept: 0, failed: 2 });
    expect(reports[0]?.aborted).toBeUndefined();
  });

  test('a send to the adopter that fails: the old worker keeps the connection', () => {
    const { old, fresh, sender } = generations();
    relay.start('switch', old, fresh, 500);
    const handle = new FakeHandle(1);
    relay.onHandle(sender, connection(1), handle);
    relay.onRelayed(1, new Error('channel closed'));
    expect(handle.closed).toBe(true);
    expect(settledTo(sender)).toEqual([{ id: 1, adopted: false }]);
  });

  test('no adopter left in the new generation: the handle is closed here and the old worker keeps it', () => {
    const { old, fresh, sender, adopters } = generations();
    relay.start('switch', old, fresh, 500);
    for (const adopter of adopters) adopter.markDraining();
    const handle = new FakeHandle(1);
    relay.onHandle(sender, connection(1), handle);
    expect(handle.closed).toBe(true);
    expect(sent.some((entry) => entry.message.baton === 'adopt')).toBe(false);
    expect(settledTo(sender)).toEqual([{ id: 1, adopted: false }]);
  });

  test('a net.Socket-like handle (it would have started reading) is never passed on', () => {
    const { old, fresh, sender } = generations();
    relay.start('switch', old, fresh, 500);
    let destroyed = false;
    relay.onHandle(sender, connection(1), { destroy: () => (destroyed = true) });
    expect(destroyed).toBe(true);
    expect(sent.some((entry) => entry.message.baton === 'adopt')).toBe(false);
    expect(settledTo(sender)).toEqual([{ id: 1, adopted: false }]);
  });

  test('no round when nobody opted in on one side; a sweep tells the old workers to stop accepting, and one that finds nothing says nothing', () => {
    const { old, fresh, sender, adopters } = generations();
    for (const adopter of adopters) relay.onMessage(adopter, { kind: 'hooks', hooks: hooks([], []) });
    expect(relay.start('switch', old, fresh, 500)).toBeUndefined();
    expect(sent).toEqual([]);

    for (const adopter of adopters) relay.onMessage(adopter, { kind: 'hooks', hooks: hooks([], ['game']) });
    const sweep = relay.start('sweep', old, fresh, 500);
    expect(messagesTo(sender, 'handoff')).toEqual([
      { baton: 'handoff', listeners: ['game'], flushTimeoutMs: 500, stopAccepting: true },
    ]);
    relay.onFinished(sender, { offered: 0, sent: 0, kept: 0 });
    expect(sweep?.outcome).toBe('committed');
    expect(reports).toEqual([]);
    expect(relay.snapshot().rounds).toEqual([]);
  });

  test('deadlines: an old worker that does not report is not waited for; adopters that do not answer abort the round', () => {
    const { old, fresh, sender, adopters } = generations();
    const round = relay.start('switch', old, fresh, 500) as HandoffRound;
    relayConnections(sender, 2);
    relay.onDeadline(round);
    expect(round.incomplete).toBe(true);
    expect(messagesTo(adopters[0] as Worker, 'handoff-commit')).toEqual([
      { baton: 'handoff-commit', relays: [1] },
    ]);
    // What the old worker sends after the deadline stays with it.
    const late = new FakeHandle(99);
    relay.onHandle(sender, connection(3), late);
    expect(late.closed).toBe(true);
    expect(settledTo(sender)).toEqual([{ id: 3, adopted: false }]);

    relay.onMessage(adopters[0] as Worker, { kind: 'adoptions', adopted: [1], refused: [] });
    relay.onDeadline(round);
    expect(round).toMatchObject({ outcome: 'aborted', abortCause: 'no-answer' });
    expect(settledTo(sender)).toEqual([
      { id: 3, adopted: false },
      { id: 1, adopted: false },
      { id: 2, adopted: false },
    ]);
  });

  /** The same generations, every worker with a descriptor channel and able to stage. */
  function stagingGenerations() {
    const generationsMade = generations();
    const staging = (handsOff: string[], adopts: string[]) => ({
      ...hooks(handsOff, adopts),
      fdChannel: true,
      stages: true,
    });
    for (const adopter of generationsMade.adopters) {
      relay.onMessage(adopter, { kind: 'hooks', hooks: staging([], ['game']) });
    }
    relay.onMessage(generationsMade.sender, { kind: 'hooks', hooks: staging(['game'], ['game']) });
    return generationsMade;
  }

  /** Stages `count` connections of `sender` in one batch and completes their sends; returns their handles. */
  function stageConnections(sender: Worker, count: number): FakeHandle[] {
    const handles = Array.from({ length: count }, (_, index) => new FakeHandle(index + 10));
    relay.onBatch(
      sender,
      handles.map((_, index) => index + 1),
      handles.map((handle, index) => ({
        handle,
        id: index + 1,
        listener: 'game',
        state: undefined,
        staged: true,
      })),
    );
    for (const entry of sent.filter((candidate) => candidate.message.baton === 'adopt')) entry.onSent(null);
    for (const [id, error] of relayed.splice(0)) relay.onRelayed(id, error);
    return handles;
  }

  test('a staged round: the connections go out while their old worker serves them, the new workers confirm they wrapped them, and only then are they frozen; their states follow them, what the old worker keeps is dropped, the commit is as before', () => {
    const { old, fresh, sender, adopters } = stagingGenerations();
    const [first, second] = adopters as [Worker, Worker];
    const round = relay.start('switch', old, fresh, 500) as HandoffRound;
    expect(messagesTo(sender, 'handoff')).toEqual([
      { baton: 'handoff', listeners: ['game'], flushTimeoutMs: 500, stopAccepting: false, stage: true },
    ]);
    expect(round.state).toBe('staging');

    const handles = stageConnections(sender, 4);
    expect(sent.filter((entry) => entry.message.baton === 'adopt').map((entry) => entry.message)).toEqual([
      { baton: 'adopt', relay: 1, listener: 'game', state: undefined, staged: true },
      { baton: 'adopt', relay: 2, listener: 'game', state: undefined, staged: true },
      { baton: 'adopt', relay: 3, listener: 'game', state: undefined, staged: true },
      { baton: 'adopt', relay: 4, listener: 'game', state: undefined, staged: true },
    ]);
    expect(handles.every((handle) => handle.closed)).toBe(true);
    // Until the old worker says it staged all it could, nobody is asked anything more.
    expect(sent.some((entry) => entry.message.baton === 'handoff-prepare')).toBe(false);

    relay.onMessage(sender, { kind: 'staged' });
    expect(messagesTo(first, 'handoff-prepare')).toHaveLength(1);
    expect(messagesTo(second, 'handoff-prepare')).toHaveLength(1);
    relay.onMessage(first, { kind: 'prepared' });
    // One new worker may still be wrapping: the sessions are not stopped yet.
    expect(messagesTo(sender, 'handoff-freeze')).toEqual([]);
    clock += 30;
    relay.onMessage(second, { kind: 'prepared' });
    expect(messagesTo(sender, 'handoff-freeze')).toEqual([{ baton: 'handoff-freeze' }]);
    expect(round.state).toBe('sending');

    relay.onMessage(sender, {
      kind: 'states',
      states: [
        { id: 1, state: { coins: 1 } },
        { id: 2, state: { coins: 2 } },
        { id: 4, state: { coins: 4 } },
        // Not a connection of this round: ignored.
        { id: 99, state: {} },
      ],
      kept: [3],
    });
    expect(messagesTo(first, 'adopt-states')).toEqual([
      { baton: 'adopt-states', states: [{ relay: 1, state: { coins: 1 } }] },
    ]);
    expect(messagesTo(second, 'adopt-states')).toEqual([
      {
        baton: 'adopt-states',
        states: [
          { relay: 2, state: { coins: 2 } },
          { relay: 4, state: { coins: 4 } },
        ],
      },
    ]);
    expect(messagesTo(first, 'handoff-abort')).toEqual([{ baton: 'handoff-abort', relays: [3] }]);

    relay.onFinished(sender, { offered: 4, sent: 3, kept: 1 });
    expect(messagesTo(first, 'handoff-commit')).toEqual([{ baton: 'handoff-commit', relays: [1] }]);
    expect(messagesTo(second, 'handoff-commit')).toEqual([{ baton: 'handoff-commit', relays: [2, 4] }]);
    clock += 20;
    relay.onMessage(first, { kind: 'adoptions', adopted: [1], refused: [] });
    relay.onMessage(second, { kind: 'adoptions', adopted: [2, 4], refused: [] });
    expect(messagesTo(second, 'handoff-go')).toEqual([{ baton: 'handoff-go', relays: [2, 4] }]);
    // The kept one is the old worker's to count and resume: it is told only about the rest.
    expect(settledTo(sender)).toEqual([1, 2, 4].map((id) => ({ id, adopted: true })));
    expect(reports[0]).toMatchObject({ moved: 3, kept: 1, failed: 0, durationMs: 50 });
    expect(logs.find((entry) => entry.msg === 'sessions moved')).toMatchObject({
      durationMs: 50,
      frozenMs: 20,
    });
    expect(relay.snapshot()).toMatchObject({ moved: 3, kept: 1, failed: 0, rounds: [{ inFlight: 0 }] });
  });

  test('a staged round aborted before the freeze stops nobody: a new worker that exits while wrapping, or one that never confirms', () => {
    const { old, fresh, sender, adopters } = stagingGenerations();
    const round = relay.start('switch', old, fresh, 500) as HandoffRound;
    stageConnections(sender, 2);
    (adopters[1] as Worker).markExited(1, null, 0);
    relay.onWorkerExited(adopters[1] as Worker);
    expect(round).toMatchObject({ outcome: 'aborted', abortCause: 'worker-exited' });
    expect(messagesTo(sender, 'handoff-freeze')).toEqual([]);
    expect(settledTo(sender)).toEqual([1, 2].map((id) => ({ id, adopted: false })));
    expect(messagesTo(adopters[0] as Worker, 'handoff-abort')).toEqual([
      { baton: 'handoff-abort', relays: [1] },
    ]);

    sent = [];
    const alive = generations();
    relay.onMessage(alive.adopters[0] as Worker, {
      kind: 'hooks',
      hooks: { ...hooks([], ['game']), fdChannel: true, stages: true },
    });
    relay.onMessage(alive.adopters[1] as Worker, {
      kind: 'hooks',
      hooks: { ...hooks([], ['game']), fdChannel: true, stages: true },
    });
    relay.onMessage(alive.sender, {
      kind: 'hooks',
      hooks: { ...hooks(['game'], ['game']), fdChannel: true, stages: true },
    });
    const next = relay.start('switch', alive.old, alive.fresh, 500) as HandoffRound;
    stageConnections(alive.sender, 2);
    relay.onMessage(alive.sender, { kind: 'staged' });
    relay.onMessage(alive.adopters[0] as Worker, { kind: 'prepared' });
    expect(deadlines.at(-1)?.ms).toBe(HANDOFF_ADOPT_TIMEOUT_MS);
    relay.onDeadline(next);
    expect(next).toMatchObject({ outcome: 'aborted', abortCause: 'no-answer' });
    expect(next.abortReason).toMatch(/new worker 1 did not take the staged sessions/);
    expect(messagesTo(alive.sender, 'handoff-freeze')).toEqual([]);
  });

  test('a staged round keeps its promises when a new worker changes its mind: a staged connection goes only to a worker that stages, and one adopted without its state does not move', () => {
    const { old, fresh, sender, adopters } = stagingGenerations();
    const [first, second] = adopters as [Worker, Worker];
    relay.start('switch', old, fresh, 500);
    // The second adopter says its hooks again, without a descriptor channel (it would take a staged
    // connection over IPC, without its state).
    relay.onMessage(second, { kind: 'hooks', hooks: hooks([], ['game']) });
    stageConnections(sender, 2);
    expect(sent.filter((entry) => entry.message.baton === 'adopt').map((entry) => entry.to)).toEqual([
      first,
      first,
    ]);
    relay.onMessage(sender, { kind: 'staged' });
    relay.onMessage(first, { kind: 'prepared' });
    relay.onMessage(sender, { kind: 'states', states: [{ id: 1, state: { coins: 1 } }], kept: [] });
    relay.onFinished(sender, { offered: 2, sent: 2, kept: 0 });
    // The adopter says it adopted both, though the second's state never came: that one stays.
    relay.onMessage(first, { kind: 'adoptions', adopted: [1, 2], refused: [] });
    expect(messagesTo(first, 'handoff-go')).toEqual([{ baton: 'handoff-go', relays: [1] }]);
    expect(messagesTo(first, 'handoff-abort')).toEqual([{ baton: 'handoff-abort', relays: [2] }]);
    expect(settledTo(sender)).toEqual([
      { id: 1, adopted: true },
      { id: 2, adopted: false },
    ]);
  });

  test('a staged round whose connections are never written (a new worker that does not read) gets one more deadline, then is aborted', () => {
    const { old, fresh, sender } = stagingGenerations();
    const round = relay.start('switch', old, fresh, 500) as HandoffRound;
    relay.onBatch(
      sender,
      [1],
      [{ handle: new FakeHandle(5), id: 1, listener: 'game', state: undefined, staged: true }],
    );
    relay.onMessage(sender, { kind: 'staged' });
    relay.onDeadline(round);
    expect(round.state).toBe('staging');
    expect(deadlines.at(-1)).toMatchObject({ ms: HANDOFF_ADOPT_TIMEOUT_MS, cancelled: false });
    relay.onDeadline(round);
    expect(round).toMatchObject({ outcome: 'aborted', abortCause: 'no-answer' });
    expect(settledTo(sender)).toEqual([{ id: 1, adopted: false }]);
  });

  test('no staging unless the old worker and every adopter can: the request asks for none, and connections come whole', () => {
    const { old, fresh, sender, adopters } = stagingGenerations();
    // One adopter from before staging existed: it would take a connection without its state.
    relay.onMessage(adopters[1] as Worker, {
      kind: 'hooks',
      hooks: { ...hooks([], ['game']), fdChannel: true },
    });
    const round = relay.start('switch', old, fresh, 500) as HandoffRound;
    expect(messagesTo(sender, 'handoff')).toEqual([
      { baton: 'handoff', listeners: ['game'], flushTimeoutMs: 500, stopAccepting: false },
    ]);
    expect(round.state).toBe('sending');
    relayConnections(sender, 2);
    relay.onFinished(sender, { offered: 2, sent: 2, kept: 0 });
    expect(sent.some((entry) => entry.message.baton === 'handoff-prepare')).toBe(false);
    expect(messagesTo(adopters[0] as Worker, 'handoff-commit')).toEqual([
      { baton: 'handoff-commit', relays: [1] },
    ]);
  });

  test('the master stopping aborts the rounds under way; an old worker that cannot be asked does not hold a round', () => {
    const { old, fresh, sender } = generations();
    const round = relay.start('switch', old, fresh, 500);
    relayConnections(sender, 1);
    relay.abortAll('the master is stopping');
    expect(round).toMatchObject({ outcome: 'aborted', abortCause: 'stopping' });
    expect(settledTo(sender)).toEqual([{ id: 1, adopted: false }]);

    unreachable.add(sender);
    const next = relay.start('switch', old, fresh, 500);
    expect(next?.outcome).toBe('committed');
  });
});

describe('the master runs a handoff when a new generation becomes active', () => {
  class FakeProcess implements WorkerProcess {
    readonly messages: Array<{ message: object; handle: unknown }> = [];
    constructor(
      readonly pid: number,
      readonly request: SpawnRequest,
      readonly callbacks: WorkerCallbacks,
    ) {}
    kill(): boolean {
      return true;
    }
    send(message: object, handle: unknown, onSent: (error: Error | null) => void): void {
      this.messages.push({ message, handle });
      setTimeout(() => onSent(null), 0);
    }
    say(message: unknown, handle?: unknown): void {
      this.callbacks.onMessage(message, handle);
    }
  }

  /** A worker with a descriptor channel: batches it is given to take, and what the master sends on it. */
  class ChannelProcess extends FakeProcess {
    readonly waiting = new Map<number, Batch>();
    readonly sentOnChannel: Array<{ entry: AdoptEntry; fd: number }> = [];
    readonly descriptors: DescriptorLink = {
      take: (id) => {
        const batch = this.waiting.get(id);
        this.waiting.delete(id);
        return batch;
      },
      send: (entry, fd) => {
        this.sentOnChannel.push({ entry, fd });
        return Promise.resolve();
      },
    };
  }

  const OPTIONS: MasterOptions = parseStartOptions({
    listen: 'game=tcp://127.0.0.1:0',
    workers: 2,
    command: ['node', 'app.js'],
  });

  beforeEach(() => {
    jest.useFakeTimers();
  });

  afterEach(() => {
    jest.useRealTimers();
  });

  function startMaster({ channel = false } = {}) {
    const processes: FakeProcess[] = [];
    const os: Os = {
      spawnWorker(request, callbacks) {
        const process = new (channel ? ChannelProcess : FakeProcess)(
          1000 + processes.length,
          request,
          callbacks,
        );
        processes.push(process);
        return process;
      },
      resolveCommand: (command) => `/usr/bin/${command}`,
      pollsListeners: () => false,
      countConnections: () => undefined,
      ownListeningPorts: () => [],
      now: () => Date.now(),
      setTimer(ms, fn) {
        const timer = setTimeout(fn, ms);
        return { cancel: () => clearTimeout(timer) };
      },
    };
    const logs: Array<Record<string, unknown>> = [];
    const master = new Master(OPTIONS, {
      os,
      logger: pino({ level: 'debug' }, { write: (line: string) => logs.push(JSON.parse(line)) }),
      listeners: [],
      env: { PATH: '/usr/bin' },
      cwd: '/srv',
      writeStderr: () => {},
    });
    const ofGeneration = (gen: number) =>
      processes.filter((p) => p.request.env.BATON_GENERATION === String(gen));
    const both = {
      baton: 'handoff-hooks',
      handsOff: ['game'],
      adopts: ['game'],
      ...(channel ? { fdChannel: true } : {}),
    };
    master.dispatch({ type: 'start' });
    for (const p of ofGeneration(1)) {
      p.say(both);
      p.say('ready');
    }
    master.dispatch({ type: 'reload', source: 'test' });
    for (const p of ofGeneration(2)) {
      p.say(both);
      p.say('ready');
    }
    const [oldA, oldB] = ofGeneration(1) as [FakeProcess, FakeProcess];
    const state = (gen: number) => master.snapshot().generations.find((g) => g.id === gen)?.state;
    return { master, logs, ofGeneration, oldA, oldB, state };
  }

  test("over the descriptor channel: a batch is relayed on the adopters' channels, an announced id that did not come stays, and every descriptor of the master is closed", async () => {
    const { ofGeneration, oldA, oldB, state } = startMaster({ channel: true });
    const fds = [openSync('/dev/null', 'r'), openSync('/dev/null', 'r')];
    (oldA as ChannelProcess).waiting.set(7, {
      id: 7,
      fds,
      payload: Buffer.from(
        JSON.stringify([
          { id: 1, listener: 'game', state: { coins: 2 } },
          { id: 2, listener: 'game', state: { coins: 4 } },
        ]),
      ),
    });
    oldA.say({ baton: 'handoff-batch', batch: 7, ids: [1, 2, 3] });
    // Id 3 never came: its connection goes on in its old worker.
    expect(settledIn(oldA.messages.map((m) => m.message))).toContainEqual({ id: 3, adopted: false });
    const adopters = ofGeneration(2) as ChannelProcess[];
    const relayed = adopters.flatMap((p) => p.sentOnChannel);
    expect(relayed.map(({ entry }) => entry.state)).toEqual([{ coins: 2 }, { coins: 4 }]);
    expect(relayed.map(({ fd }) => fd).sort()).toEqual([...fds].sort());
    // Nothing went over IPC with a handle.
    expect(adopters.flatMap((p) => p.messages).filter((m) => m.handle !== undefined)).toEqual([]);
    await jest.advanceTimersByTimeAsync(1);
    oldA.say({ baton: 'handoff-finished', offered: 3, sent: 3, kept: 0 });
    oldB.say({ baton: 'handoff-finished', offered: 0, sent: 0, kept: 0 });
    for (const adopter of adopters) {
      const commit = adopter.messages.at(-1)?.message as { baton: string; relays: number[] } | undefined;
      if (commit?.baton === 'handoff-commit')
        adopter.say({ baton: 'adoptions', adopted: commit.relays, refused: [] });
    }
    expect([state(1), state(2)]).toEqual(['draining', 'active']);
    expect(settledIn(oldA.messages.map((m) => m.message))).toEqual(
      expect.arrayContaining([
        { id: 1, adopted: true },
        { id: 2, adopted: true },
      ]),
    );
    // The master's copies are closed: the numbers are free again.
    for (const fd of fds) expect(() => fstatSync(fd)).toThrow(/EBADF/);
  });

  test('the new generation takes over only once the old workers handed their sessions over; status counts them', () => {
    const { master, logs, ofGeneration, oldA, oldB, state } = startMaster();
    expect(oldA.messages.map((m) => m.message)).toEqual([
      { baton: 'handoff', listeners: ['game'], flushTimeoutMs: 2_000, stopAccepting: false },
    ]);
    expect([state(1), state(2)]).toEqual(['active', 'starting']);

    const handle = new FakeHandle(42);
    oldA.say({ baton: 'handoff-connection', id: 1, listener: 'game', state: { coins: 8 } }, handle);
    const adopter = ofGeneration(2).find((p) => p.messages.length > 0) as FakeProcess;
    expect(adopter.messages).toEqual([
      { message: { baton: 'adopt', relay: 1, listener: 'game', state: { coins: 8 } }, handle },
    ]);
    jest.advanceTimersByTime(1);
    oldA.say({ baton: 'handoff-finished', offered: 1, sent: 1, kept: 0 });
    oldB.say({ baton: 'handoff-finished', offered: 2, sent: 0, kept: 2 });
    expect(adopter.messages.at(-1)?.message).toEqual({ baton: 'handoff-commit', relays: [1] });
    expect(state(2)).toBe('starting');

    adopter.say({ baton: 'adoptions', adopted: [1], refused: [] });
    expect(adopter.messages.at(-1)?.message).toEqual({ baton: 'handoff-go', relays: [1] });
    expect(settledIn(oldA.messages.map((m) => m.message))).toContainEqual({ id: 1, adopted: true });
    expect(handle.closed).toBe(true);
    expect([state(1), state(2)]).toEqual(['draining', 'active']);
    expect(logs.find((entry) => entry.msg === 'sessions moved')).toMatchObject({
      gen: 1,
      to: 2,
      moved: 1,
      kept: 2,
    });
    expect(master.snapshot().sessions).toMatchObject({ moved: 1, kept: 2, failed: 0 });
    // The sweep after the switch: the old workers stop accepting and send what came meanwhile.
    expect(oldB.messages.at(-1)?.message).toEqual({
      baton: 'handoff',
      listeners: ['game'],
      flushTimeoutMs: 2_000,
      stopAccepting: true,
    });
  });

  test('a new worker that exits while adopting fails the reload: the old generation serves on with every session', () => {
    const { master, logs, ofGeneration, oldA, oldB, state } = startMaster();
    const handle = new FakeHandle(42);
    oldA.say({ baton: 'handoff-connection', id: 1, listener: 'game', state: { coins: 8 } }, handle);
    jest.advanceTimersByTime(1);
    oldA.say({ baton: 'handoff-finished', offered: 1, sent: 1, kept: 0 });
    oldB.say({ baton: 'handoff-finished', offered: 0, sent: 0, kept: 0 });
    const adopter = ofGeneration(2).find((p) => p.messages.length > 0) as FakeProcess;
    adopter.callbacks.onExit(70, null);

    expect(oldA.messages.at(-1)?.message).toEqual({ baton: 'handoff-settled', ids: [1], adopted: false });
    expect([state(1), state(2)]).toEqual(['active', 'failed']);
    expect(logs.find((entry) => String(entry.msg).startsWith('reload failed'))?.msg).toContain(
      'did not take over: worker',
    );
    expect(master.snapshot().sessions).toMatchObject({ moved: 0, failed: 1 });
  });

  test('new workers that never answer: the round is aborted at its deadline and the reload fails', () => {
    const { master, ofGeneration, oldA, oldB, state } = startMaster();
    oldA.say({ baton: 'handoff-connection', id: 1, listener: 'game', state: {} }, new FakeHandle(42));
    jest.advanceTimersByTime(1);
    oldA.say({ baton: 'handoff-finished', offered: 1, sent: 1, kept: 0 });
    oldB.say({ baton: 'handoff-finished', offered: 0, sent: 0, kept: 0 });
    expect(
      ofGeneration(2).some((p) =>
        p.messages.some((m) => (m.message as { baton?: string }).baton === 'handoff-commit'),
      ),
    ).toBe(true);
    jest.advanceTimersByTime(HANDOFF_ADOPT_TIMEOUT_MS);
    expect([state(1), state(2)]).toEqual(['active', 'failed']);
    expect(oldA.messages.at(-1)?.message).toEqual({ baton: 'handoff-settled', ids: [1], adopted: false });
    expect(master.snapshot().generations.find((g) => g.id === 2)?.failure).toContain(
      'did not adopt the sessions within',
    );
  });
});

describe('the old worker waits for a connection to be quiet', () => {
  beforeEach(() => {
    jest.useFakeTimers();
  });

  afterEach(() => {
    jest.useRealTimers();
  });

  /** The parts of a net.Socket the wait reads. */
  function socket(writableLength: number) {
    return { writableLength, readableLength: 0, destroyed: false } as unknown as import('node:net').Socket & {
      writableLength: number;
      destroyed: boolean;
    };
  }

  test('at once when nothing is pending', async () => {
    const quiet = socket(0);
    expect(isQuiet(quiet)).toBe(true);
    await expect(waitQuiet(quiet, performance.now())).resolves.toBe(true);
  });

  test('until the pending writes are flushed, within the deadline', async () => {
    const busy = socket(5_800_000);
    const result = waitQuiet(busy, performance.now() + 500);
    await jest.advanceTimersByTimeAsync(QUIET_POLL_INTERVAL_MS * 3);
    busy.writableLength = 0;
    await jest.advanceTimersByTimeAsync(QUIET_POLL_INTERVAL_MS);
    await expect(result).resolves.toBe(true);
  });

  test('false once the deadline passes (a slow reader), or when the connection closes', async () => {
    const slow = socket(5_800_000);
    const result = waitQuiet(slow, performance.now() + 500);
    await jest.advanceTimersByTimeAsync(500 + QUIET_POLL_INTERVAL_MS);
    await expect(result).resolves.toBe(false);

    const closing = socket(10);
    const closed = waitQuiet(closing, performance.now() + 500);
    closing.destroyed = true;
    await jest.advanceTimersByTimeAsync(QUIET_POLL_INTERVAL_MS);
    await expect(closed).resolves.toBe(false);
  });
});
