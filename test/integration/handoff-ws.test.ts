/**
 * Live session handoff of WebSocket sessions served with `ws` (docs/handoff.md, "WebSocket"): the real
 * CLI, test/fixtures/ws-game.mjs on an inherited HTTP listener, `ws` clients streaming numbered messages
 * through a reload.
 */
import { randomBytes } from 'node:crypto';
import type net from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import WebSocket from 'ws';
import { registerCleanup } from '../helpers/cleanup.js';
import {
  type AppDir,
  type BatonProcess,
  killAll,
  makeAppDir,
  REPO_ROOT,
  startBaton,
} from '../helpers/processes.js';
import { waitFor, withDeadline } from '../helpers/wait.js';

const NODE = process.execPath;
const FIXTURE = join(REPO_ROOT, 'test', 'fixtures', 'ws-game.mjs');
/** Shorter than the sessions live here: whatever is not moved is cut at this deadline. */
const DRAIN_TIMEOUT_MS = 3_000;
/** How often each client sends a numbered `ping` and a `work`. */
const TICK_MS = 20;

let app: AppDir;

beforeEach(() => {
  app = makeAppDir();
});

afterEach(async () => {
  await killAll();
  app.cleanup();
});

async function startGame(): Promise<{ baton: BatonProcess; port: number }> {
  app.setVersion('1.0.0');
  const baton = startBaton(
    [
      'start',
      '--listen',
      'http=tcp://127.0.0.1:0',
      '--workers',
      '2',
      '--drain-timeout',
      `${DRAIN_TIMEOUT_MS}ms`,
      '--version-file',
      'VERSION',
      '--',
      NODE,
      FIXTURE,
    ],
    { cwd: app.dir },
  );
  const port = await baton.listenPort('http');
  await baton.waitForLogMsg('generation active', { gen: 1 });
  return { baton, port };
}

/** A client-to-server text frame, masked as a client must send it. */
function maskedTextFrame(text: string): Buffer {
  const payload = Buffer.from(text);
  const mask = randomBytes(4);
  const masked = payload.map((byte, i) => byte ^ (mask[i % 4] as number));
  return Buffer.concat([Buffer.from([0x81, 0x80 | payload.length]), mask, masked]);
}

function pidsOf(baton: BatonProcess, gen: number): number[] {
  return baton.logs
    .filter((entry) => entry.msg === 'worker ready' && entry.gen === gen)
    .map((entry) => entry.pid as number);
}

/** A `ws` client that sends `ping <n>` and `work` every tick, pipelined, and checks every answer. */
class Player {
  readonly opened: Promise<void>;
  readonly socket: WebSocket;
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;
  readonly pongs: number[] = [];
  /** The pid that answered each message, in order. */
  readonly pids: number[] = [];
  readonly rewards: number[] = [];
  coins = 0;
  outOfTurn = 0;
  private expectPong = true;
  readonly unexpected: string[] = [];
  closed = false;
  private readonly replies: Array<(text: string) => void> = [];

  constructor(port: number, options: WebSocket.ClientOptions = { perMessageDeflate: false }) {
    this.socket = new WebSocket(`ws://127.0.0.1:${port}/`, options);
    this.opened = new Promise((resolve, reject) => {
      this.socket.once('open', () => resolve());
      this.socket.once('error', reject);
    });
    this.socket.on('error', () => {});
    this.socket.on('message', (data) => this.take(data.toString()));
    this.socket.once('close', () => {
      this.closed = true;
      this.stop();
    });
    registerCleanup(() => {
      this.stop();
      this.socket.terminate();
    });
  }

  start(): void {
    this.timer = setInterval(() => {
      if (this.socket.readyState !== WebSocket.OPEN) return;
      this.seq++;
      this.socket.send(`ping ${this.seq}`);
      this.socket.send('work');
    }, TICK_MS);
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  get answered(): number {
    return this.pongs.length + this.rewards.length;
  }

  get settled(): boolean {
    return this.timer === undefined && this.pongs.length >= this.seq && this.rewards.length >= this.seq;
  }

  request(text: string): Promise<string> {
    return withDeadline(
      new Promise((resolve) => {
        this.replies.push(resolve);
        this.socket.send(text);
      }),
      5_000,
      `an answer to '${text}'`,
    );
  }

  report() {
    const seen = new Set(this.pongs);
    let reordered = this.outOfTurn;
    for (let i = 1; i < this.pongs.length; i++) {
      if ((this.pongs[i] as number) < (this.pongs[i - 1] as number)) reordered++;
    }
    let lost = 0;
    for (let n = 1; n <= this.seq; n++) if (!seen.has(n)) lost++;
    return {
      sent: this.seq,
      lost,
      duplicated: this.pongs.length - seen.size,
      reordered,
      unexpected: this.unexpected,
      closed: this.closed,
    };
  }

  private take(text: string): void {
    const reply = this.replies.shift();
    if (reply) {
      reply(text);
      return;
    }
    const pong = /^pong (\d+) (\d+)$/.exec(text);
    const coins = /^coins (\d+) (\d+)$/.exec(text);
    if (pong) {
      if (!this.expectPong) this.outOfTurn++;
      this.expectPong = false;
      this.pongs.push(Number(pong[1]));
      this.pids.push(Number(pong[2]));
    } else if (coins) {
      if (this.expectPong) this.outOfTurn++;
      this.expectPong = true;
      this.rewards.push(Number(coins[1]) - this.coins);
      this.coins = Number(coins[1]);
      this.pids.push(Number(coins[2]));
    } else {
      this.unexpected.push(text);
    }
  }
}

describe('live session handoff of WebSocket sessions (ws)', () => {
  test('20 WebSocket sessions streaming numbered messages through a reload: all move with their coins to the new version, 0 lost, 0 duplicated, 0 reordered; a compressed one stays and drains', async () => {
    const { baton, port } = await startGame();
    const players = Array.from({ length: 20 }, () => new Player(port));
    // permessage-deflate negotiated: its compression state cannot move.
    const compressed = new Player(port, { perMessageDeflate: true });
    // One more sends the first 5 bytes of a frame (`ping 1`) and the rest only once it has moved: the
    // reload catches it in the middle of a frame.
    const cut = new Player(port);
    await Promise.all([...players, compressed, cut].map((player) => player.opened));
    const cutFrame = maskedTextFrame('ping 1');
    const cutSocket = (cut.socket as unknown as { _socket: net.Socket })._socket;
    cutSocket.write(cutFrame.subarray(0, 5));
    expect(await compressed.request('whoami')).toMatch(
      /^version=1\.0\.0 pid=\d+ coins=0 ext=permessage-deflate left=0$/,
    );
    const oldPids = pidsOf(baton, 1);
    for (const player of players) player.start();
    await waitFor(() => players.every((player) => player.answered >= 10), {
      timeoutMs: 10_000,
      what: 'every player earning coins on version 1',
    });

    app.setVersion('2.0.0');
    const reloadedAt = performance.now();
    baton.signal('SIGUSR2');
    const moved = await baton.waitForLogMsg('sessions moved', { gen: 1 }, 20_000);
    expect(moved).toMatchObject({ to: 2, moved: 21, kept: 1, failed: 0 });

    // The compressed session stayed on version 1, draining: it is answered there until its client leaves.
    const stayed = await compressed.request('whoami');
    expect(stayed).toMatch(/^version=1\.0\.0 pid=\d+ coins=0 ext=permessage-deflate left=0$/);
    expect(oldPids).toContain(Number(/pid=(\d+)/.exec(stayed)?.[1]));
    expect(baton.logs.some((entry) => entry.msg === 'generation retired' && entry.gen === 1)).toBe(false);
    compressed.socket.close();
    const retired = await baton.waitForLogMsg('generation retired', { gen: 1 }, 10_000);
    expect(retired.forced).toBe(false);
    expect(performance.now()).toBeLessThan(reloadedAt + DRAIN_TIMEOUT_MS);

    // Past the drain deadline the sessions still stream: had they stayed, they would have been cut.
    const answeredBefore = players.map((player) => player.answered);
    await waitFor(
      () =>
        performance.now() > reloadedAt + DRAIN_TIMEOUT_MS + 500 &&
        players.every((player, i) => player.answered >= (answeredBefore[i] as number) + 10),
      { timeoutMs: 15_000, what: 'every player streaming past the drain deadline' },
    );
    for (const player of players) player.stop();
    await waitFor(() => players.every((player) => player.settled), {
      timeoutMs: 10_000,
      what: 'every message answered',
    });

    const newPids = pidsOf(baton, 2);
    expect(newPids).toHaveLength(2);
    cutSocket.write(cutFrame.subarray(5));
    await waitFor(() => cut.pongs.length === 1, {
      timeoutMs: 5_000,
      what: 'the frame cut by the reload answered',
    });
    expect(cut.pongs).toEqual([1]);
    expect(newPids).toContain(cut.pids[0]);
    expect(cut.closed).toBe(false);
    for (const player of players) {
      expect(player.report()).toEqual({
        sent: player.report().sent,
        lost: 0,
        duplicated: 0,
        reordered: 0,
        unexpected: [],
        closed: false,
      });
      // Answered by version 1 (2 coins a work), then, from one message on, by version 2 (3 coins).
      const firstNew = player.rewards.indexOf(3);
      expect(firstNew).toBeGreaterThan(0);
      expect(player.rewards.slice(0, firstNew).every((reward) => reward === 2)).toBe(true);
      expect(player.rewards.slice(firstNew).every((reward) => reward === 3)).toBe(true);
      const lastPid = player.pids.at(-1) as number;
      expect(newPids).toContain(lastPid);
      expect(oldPids).toContain(player.pids[0]);
      const whoami = await player.request('whoami');
      expect(whoami).toBe(`version=2.0.0 pid=${lastPid} coins=${player.coins} ext=none left=0`);
      expect(await player.request('work')).toBe(`coins ${player.coins + 3} ${lastPid}`);
    }

    for (const player of players) expect(player.closed).toBe(false);
  });
});
