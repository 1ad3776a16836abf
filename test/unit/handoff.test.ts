/**
 * Live session handoff without a process or a socket: the pure decisions (which listeners, which new
 * worker, how long to wait), the relay's bookkeeping against fake ports, the master's wiring against a
 * fake OS, and the old worker's wait for a connection to be quiet under fake timers.
 */
import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import { pino } from 'pino';
import { isQuiet, QUIET_POLL_INTERVAL_MS, waitQuiet } from '../../child/handoff.js';
import { Generation, type Slot } from '../../supervisor/generation.js';
import {
  chooseAdopter,
  HANDOFF_FLUSH_TIMEOUT_MS,
  HandoffRelay,
  handoffFlushTimeoutMs,
  listenersToHandOff,
  parseHandoffMessage,
  type SessionsMovedProgress,
} from '../../supervisor/handoff.js';
import { Master } from '../../supervisor/master.js';
import { type MasterOptions, parseStartOptions } from '../../supervisor/options.js';
import type { Os, SpawnRequest, WorkerCallbacks, WorkerProcess } from '../../supervisor/os.js';
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
    expect(
      parseHandoffMessage({ baton: 'handoff-finished', offered: 2, moved: 1, kept: 1, failed: 0 }),
    ).toEqual({
      kind: 'finished',
      counts: { offered: 2, moved: 1, kept: 1, failed: 0 },
    });
    expect(parseHandoffMessage({ baton: 'adopted', relay: 1, ok: false, reason: 'no hook' })).toEqual({
      kind: 'adopted',
      relay: 1,
      ok: false,
      reason: 'no hook',
    });
    expect(parseHandoffMessage('ready')).toBeUndefined();
    expect(parseHandoffMessage({ baton: 'connections', count: 1 })).toBeUndefined();
    expect(parseHandoffMessage({ baton: 'handoff-hooks', handsOff: 'game', adopts: [] })).toBeUndefined();
    expect(parseHandoffMessage({ baton: 'handoff-connection', id: -1, listener: 'game' })).toBeUndefined();
    expect(parseHandoffMessage({ baton: 'adopted', relay: 1 })).toBeUndefined();
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
  let unreachable: Set<Worker>;
  let relay: HandoffRelay;
  let clock: number;

  beforeEach(() => {
    sent = [];
    relayed = [];
    reports = [];
    logs = [];
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
      report: (progress) => reports.push(progress),
    });
  });

  /** Generation 1 (draining, 1 worker that hands off `game`) and 2 (active, 2 workers adopting `game`). */
  function generations(): { old: Generation; fresh: Generation; sender: Worker; adopters: Worker[] } {
    const old = new Generation(1, '1', 1, 0);
    const fresh = new Generation(2, '2', 2, 0);
    const sender = new Worker(1, 0, 0);
    old.workers.push(sender);
    (old.slots[0] as Slot).current = sender;
    sender.markReady(0);
    sender.markDraining();
    old.state = 'draining';
    const adopters = [new Worker(2, 0, 0), new Worker(2, 1, 0)];
    adopters.forEach((worker, index) => {
      fresh.workers.push(worker);
      (fresh.slots[index] as Slot).current = worker;
      worker.markReady(0);
      relay.onMessage(worker, { kind: 'hooks', hooks: hooks([], ['game']) });
    });
    fresh.state = 'active';
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

  test('a round: the old worker is asked, each connection goes to the least loaded adopter, the old worker learns it was adopted, the counts are logged', () => {
    const { old, fresh, sender, adopters } = generations();
    const round = relay.start(old, fresh, 500);
    expect(round).toBeDefined();
    expect(messagesTo(sender, 'handoff')).toEqual([
      { baton: 'handoff', listeners: ['game'], flushTimeoutMs: 500 },
    ]);

    const handles = [1, 2, 3, 4].map((fd) => new FakeHandle(fd));
    for (const [index, handle] of handles.entries())
      relay.onHandle(sender, connection(index + 1), handle, fresh);
    const adopts = sent.filter((entry) => entry.message.baton === 'adopt');
    expect(adopts.map((entry) => [entry.to, entry.message.state, entry.handle])).toEqual([
      [adopters[0], { coins: 1 }, handles[0]],
      [adopters[1], { coins: 2 }, handles[1]],
      [adopters[0], { coins: 3 }, handles[2]],
      [adopters[1], { coins: 4 }, handles[3]],
    ]);

    // Each handle is written, then the master's copy is closed; the adopter's answer settles it.
    for (const entry of adopts) entry.onSent(null);
    expect(relayed.map(([id]) => id)).toEqual([1, 2, 3, 4]);
    for (const [id, error] of relayed) relay.onRelayed(id, error);
    expect(handles.every((handle) => handle.closed)).toBe(true);
    for (const entry of adopts) relay.onAdopted(entry.to, entry.message.relay as number, true, undefined);
    expect(messagesTo(sender, 'handoff-settled')).toEqual(
      [1, 2, 3, 4].map((id) => ({ baton: 'handoff-settled', id, adopted: true })),
    );

    expect(reports).toEqual([]);
    clock += 40;
    relay.onFinished(sender, { offered: 5, moved: 4, kept: 1, failed: 0 });
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
    });
    expect(relay.snapshot()).toMatchObject({
      moved: 4,
      kept: 1,
      failed: 0,
      rounds: [{ from: 1, to: 2, state: 'finished', moved: 4, kept: 1, failed: 0, inFlight: 0 }],
    });
  });

  test('an answer that comes before the send callback still closes the handle once, then settles', () => {
    const { old, fresh, sender, adopters } = generations();
    relay.start(old, fresh, 500);
    const handle = new FakeHandle(7);
    relay.onHandle(sender, connection(1), handle, fresh);
    relay.onAdopted(adopters[0] as Worker, 1, true, undefined);
    expect(messagesTo(sender, 'handoff-settled')).toEqual([]);
    relay.onRelayed(1, null);
    expect(handle.closed).toBe(true);
    expect(messagesTo(sender, 'handoff-settled')).toEqual([
      { baton: 'handoff-settled', id: 1, adopted: true },
    ]);
  });

  test('an adopter that refuses, or exits before it answers: the connection goes back to its old worker, counted as failed', () => {
    const { old, fresh, sender, adopters } = generations();
    relay.start(old, fresh, 500);
    relay.onHandle(sender, connection(1), new FakeHandle(1), fresh);
    relay.onHandle(sender, connection(2), new FakeHandle(2), fresh);
    relay.onRelayed(1, null);
    relay.onRelayed(2, null);
    relay.onAdopted(adopters[0] as Worker, 1, false, 'no onAdopt hook');
    (adopters[1] as Worker).markExited(1, null, 0);
    relay.onWorkerExited(adopters[1] as Worker);
    expect(messagesTo(sender, 'handoff-settled')).toEqual([
      { baton: 'handoff-settled', id: 1, adopted: false },
      { baton: 'handoff-settled', id: 2, adopted: false },
    ]);
    relay.onFinished(sender, { offered: 2, moved: 0, kept: 0, failed: 2 });
    expect(reports[0]).toMatchObject({ moved: 0, kept: 0, failed: 2 });
  });

  test('a send to the adopter that fails: the old worker keeps the connection', () => {
    const { old, fresh, sender } = generations();
    relay.start(old, fresh, 500);
    const handle = new FakeHandle(1);
    relay.onHandle(sender, connection(1), handle, fresh);
    relay.onRelayed(1, new Error('channel closed'));
    expect(handle.closed).toBe(true);
    expect(messagesTo(sender, 'handoff-settled')).toEqual([
      { baton: 'handoff-settled', id: 1, adopted: false },
    ]);
  });

  test('no adopter left in the active generation: the handle is closed here and the old worker keeps it', () => {
    const { old, fresh, sender, adopters } = generations();
    relay.start(old, fresh, 500);
    for (const adopter of adopters) adopter.markDraining();
    const handle = new FakeHandle(1);
    relay.onHandle(sender, connection(1), handle, fresh);
    expect(handle.closed).toBe(true);
    expect(sent.some((entry) => entry.message.baton === 'adopt')).toBe(false);
    expect(messagesTo(sender, 'handoff-settled')).toEqual([
      { baton: 'handoff-settled', id: 1, adopted: false },
    ]);
  });

  test('a net.Socket-like handle (it would have started reading) is never passed on', () => {
    const { old, fresh, sender } = generations();
    relay.start(old, fresh, 500);
    let destroyed = false;
    relay.onHandle(sender, connection(1), { destroy: () => (destroyed = true) }, fresh);
    expect(destroyed).toBe(true);
    expect(sent.some((entry) => entry.message.baton === 'adopt')).toBe(false);
    expect(messagesTo(sender, 'handoff-settled')).toEqual([
      { baton: 'handoff-settled', id: 1, adopted: false },
    ]);
  });

  test('no round when nobody opted in on one side; an old worker that exits ends its part', () => {
    const { old, fresh, sender, adopters } = generations();
    for (const adopter of adopters) relay.onMessage(adopter, { kind: 'hooks', hooks: hooks([], []) });
    expect(relay.start(old, fresh, 500)).toBeUndefined();
    expect(sent).toEqual([]);

    for (const adopter of adopters) relay.onMessage(adopter, { kind: 'hooks', hooks: hooks([], ['game']) });
    relay.start(old, fresh, 500);
    sender.markExited(0, null, 0);
    relay.onWorkerExited(sender);
    expect(reports).toEqual([expect.objectContaining({ moved: 0, kept: 0, failed: 0, incomplete: false })]);
  });

  test('an old worker that cannot be asked does not hold the round; the generation retiring ends a round left open', () => {
    const { old, fresh, sender } = generations();
    unreachable.add(sender);
    relay.start(old, fresh, 500);
    expect(reports).toHaveLength(1);

    unreachable.clear();
    const second = new Generation(3, '3', 1, 0);
    relay.start(old, fresh, 500);
    relay.onGenerationRetired(second.id);
    expect(reports).toHaveLength(1);
    relay.onGenerationRetired(old.id);
    expect(reports[1]).toMatchObject({ from: 1, incomplete: true });
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
      this.callbacks.onMessage(message);
      if (handle !== undefined) this.callbacks.onHandle?.(message, handle);
    }
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

  test('old workers are asked, connections reach the new workers, and status counts them', () => {
    const processes: FakeProcess[] = [];
    const os: Os = {
      spawnWorker(request, callbacks) {
        const process = new FakeProcess(1000 + processes.length, request, callbacks);
        processes.push(process);
        return process;
      },
      resolveCommand: (command) => `/usr/bin/${command}`,
      pollsListeners: () => false,
      countConnections: () => undefined,
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
    const both = { baton: 'handoff-hooks', handsOff: ['game'], adopts: ['game'] };

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
    expect(oldA.messages.map((m) => m.message)).toEqual([
      { baton: 'handoff', listeners: ['game'], flushTimeoutMs: 2_000 },
    ]);

    const handle = new FakeHandle(42);
    oldA.say({ baton: 'handoff-connection', id: 1, listener: 'game', state: { coins: 8 } }, handle);
    const adopter = ofGeneration(2).find((p) => p.messages.length > 0) as FakeProcess;
    expect(adopter.messages).toEqual([
      { message: { baton: 'adopt', relay: 1, listener: 'game', state: { coins: 8 } }, handle },
    ]);
    jest.advanceTimersByTime(1);
    expect(handle.closed).toBe(true);
    adopter.say({ baton: 'adopted', relay: 1, ok: true });
    expect(oldA.messages.at(-1)?.message).toEqual({ baton: 'handoff-settled', id: 1, adopted: true });
    oldA.say({ baton: 'handoff-finished', offered: 1, moved: 1, kept: 0, failed: 0 });
    oldB.say({ baton: 'handoff-finished', offered: 2, moved: 0, kept: 2, failed: 0 });

    expect(logs.find((entry) => entry.msg === 'sessions moved')).toMatchObject({
      gen: 1,
      to: 2,
      moved: 1,
      kept: 2,
    });
    expect(master.snapshot().sessions).toMatchObject({ moved: 1, kept: 2, failed: 0 });
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
