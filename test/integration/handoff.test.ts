/**
 * Live session handoff, end to end (docs/handoff.md): the real CLI, the example app's game sessions
 * on real sockets, numbered commands flowing through the reload, and what the master logs.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { registerCleanup } from '../helpers/cleanup.js';
import { type GameSession, gameSession } from '../helpers/load.js';
import { type AppDir, type BatonProcess, killAll, makeAppDir, startBaton } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

const NODE = process.execPath;
/** Shorter than the sessions live in these tests: whatever is not moved is cut at this deadline. */
const DRAIN_TIMEOUT_MS = 2_000;
/** How often each player sends a numbered `ping` and a `work`. */
const TICK_MS = 20;
/** The example app's reward line, and the one a new version ships with. */
const REWARD_V1 = 'const COINS_PER_WORK = 2;';
const REWARD_V2 = 'const COINS_PER_WORK = 3;';
/** The example app's handoff hooks (one statement each), as a test rewrites them. */
const HANDOFF_HOOK = /onHandoff\('game',[\s\S]*?\);\n/;
const ADOPT_HOOK = /onAdopt\('game',[\s\S]*?\);\n/;

let app: AppDir;

beforeEach(() => {
  app = makeAppDir();
});

afterEach(async () => {
  await killAll();
  app.cleanup();
});

/** Starts baton on the example app, 2 workers, an HTTP and a game listener on free ports. */
async function startApp(
  extra: string[] = [],
  env: Record<string, string> = {},
): Promise<{ baton: BatonProcess; gamePort: number }> {
  const baton = startBaton(
    [
      'start',
      '--listen',
      'http=tcp://127.0.0.1:0',
      '--listen',
      'game=tcp://127.0.0.1:0',
      '--workers',
      '2',
      ...extra,
      '--',
      NODE,
      'server.js',
    ],
    { cwd: app.dir, env },
  );
  const gamePort = await baton.listenPort('game');
  await baton.waitForLogMsg('generation active', { gen: 1 });
  return { baton, gamePort };
}

/** Replaces `from` with `to` in the app copy's server.js; fails if `from` is not there. */
function editServer(from: string | RegExp, to: string): void {
  const source = readFileSync(join(app.dir, 'server.js'), 'utf8');
  const edited = source.replace(from, to);
  expect(edited).not.toBe(source);
  app.writeFile('server.js', edited);
}

/** The pids of generation `gen`'s workers, from the master's log. */
function pidsOf(baton: BatonProcess, gen: number): number[] {
  return baton.logs
    .filter((entry) => entry.msg === 'worker ready' && entry.gen === gen)
    .map((entry) => entry.pid as number);
}

/** What one player saw of its numbered traffic. */
interface TrafficReport {
  sent: number;
  /** Numbers sent and never answered. */
  lost: number;
  /** Answers seen more than once. */
  duplicated: number;
  /** Answers that came after a higher number, or out of the ping/work alternation. */
  reordered: number;
  /** The reward of each `work`, in order: 2 on version 1, 3 on version 2. */
  rewards: number[];
  coins: number;
  /** Lines that answer nothing sent. */
  unexpected: string[];
  closed: boolean;
}

/**
 * A player that sends `ping <n>` and `work` every tick without waiting for answers (pipelined, as a
 * game client streams input), and checks each answer against what it sent.
 */
class Player {
  readonly welcome: Promise<string>;
  private readonly socket: net.Socket;
  private partial = '';
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly pongs: number[] = [];
  private readonly rewards: number[] = [];
  private coins = 0;
  private outOfTurn = 0;
  private readonly unexpected: string[] = [];
  private expectPong = true;
  private closed = false;
  private welcomed: ((line: string) => void) | undefined;
  private readonly replies: Array<(line: string) => void> = [];

  constructor(port: number) {
    this.socket = net.connect({ host: '127.0.0.1', port });
    this.socket.setEncoding('utf8');
    this.welcome = new Promise((resolve) => {
      this.welcomed = resolve;
    });
    this.socket.on('data', (chunk: string) => {
      const lines = (this.partial + chunk).split('\n');
      this.partial = lines.pop() ?? '';
      for (const line of lines) this.take(line);
    });
    this.socket.on('error', () => {});
    this.socket.once('close', () => {
      this.closed = true;
      this.stop();
    });
    registerCleanup(() => {
      this.stop();
      this.socket.destroy();
    });
  }

  start(): void {
    this.timer = setInterval(() => {
      if (!this.socket.writable) return;
      this.seq++;
      this.socket.write(`ping ${this.seq}\nwork\n`);
    }, TICK_MS);
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Answers received so far (pong and coins lines). */
  get answered(): number {
    return this.pongs.length + this.rewards.length;
  }

  /** Every number sent has had both its answers. */
  get settled(): boolean {
    return this.timer === undefined && this.pongs.length >= this.seq && this.rewards.length >= this.seq;
  }

  /** Sends one command once the traffic is settled, and resolves with its answer. */
  request(line: string): Promise<string> {
    return new Promise((resolve) => {
      this.replies.push(resolve);
      this.socket.write(`${line}\n`);
    });
  }

  report(): TrafficReport {
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
      rewards: this.rewards,
      coins: this.coins,
      unexpected: this.unexpected,
      closed: this.closed,
    };
  }

  private take(line: string): void {
    if (this.welcomed) {
      this.welcomed(line);
      this.welcomed = undefined;
      return;
    }
    const reply = this.replies.shift();
    if (reply) {
      reply(line);
      return;
    }
    const pong = /^pong (\d+)$/.exec(line);
    const coins = /^coins (\d+)$/.exec(line);
    // Each tick sends a ping then a work: the answers must alternate pong, coins, pong, coins...
    if (pong) {
      if (!this.expectPong) this.outOfTurn++;
      this.expectPong = false;
      this.pongs.push(Number(pong[1]));
    } else if (coins) {
      if (this.expectPong) this.outOfTurn++;
      this.expectPong = true;
      this.rewards.push(Number(coins[1]) - this.coins);
      this.coins = Number(coins[1]);
    } else {
      this.unexpected.push(line);
    }
  }
}

/**
 * Waits until every player has had 10 more answers than now and, when `notBefore` is given
 * (`performance.now()` time), until that moment has passed too.
 */
async function everyPlayerStreams(players: Player[], what: string, notBefore = 0): Promise<void> {
  const before = players.map((player) => player.answered);
  await waitFor(
    () =>
      performance.now() > notBefore &&
      players.every((player, i) => player.answered >= (before[i] as number) + 10),
    { timeoutMs: 15_000, what },
  );
}

/** The rewards seen by one player were 2 (version 1) up to one switch, then 3 (version 2) to the end. */
function switchedOnce(rewards: number[]): boolean {
  const firstNew = rewards.indexOf(3);
  return (
    firstNew > 0 &&
    rewards.slice(0, firstNew).every((reward) => reward === 2) &&
    rewards.slice(firstNew).every((reward) => reward === 3)
  );
}

describe('live session handoff', () => {
  test('50 sessions streaming numbered commands through a reload: all move with their coins to the new version, 0 lost, 0 duplicated, 0 reordered; the old generation retires at once', async () => {
    const { baton, gamePort } = await startApp(['--drain-timeout', `${DRAIN_TIMEOUT_MS}ms`]);
    const players = Array.from({ length: 50 }, () => new Player(gamePort));
    for (const welcome of await Promise.all(players.map((player) => player.welcome))) {
      expect(welcome).toMatch(/^welcome version=1\.0\.0 pid=\d+$/);
    }
    for (const player of players) player.start();
    await everyPlayerStreams(players, 'every player earning coins on version 1');

    editServer(REWARD_V1, REWARD_V2);
    app.setVersion('2.0.0');
    const reloadedAt = performance.now();
    baton.signal('SIGUSR2');
    const moved = await baton.waitForLogMsg('sessions moved', { gen: 1 }, 20_000);
    expect(moved).toMatchObject({ to: 2, moved: 50, kept: 0, failed: 0, incomplete: false });
    const retired = await baton.waitForLogMsg('generation retired', { gen: 1 }, 5_000);
    expect(retired.forced).toBe(false);
    expect(retired.drainMs as number).toBeLessThan(1_000);

    // Past the drain deadline the sessions still stream: had they stayed, they would have been cut.
    await everyPlayerStreams(
      players,
      'every player streaming past the drain deadline',
      reloadedAt + DRAIN_TIMEOUT_MS + 500,
    );
    for (const player of players) player.stop();
    await waitFor(() => players.every((player) => player.settled), {
      timeoutMs: 10_000,
      what: 'every command answered',
    });

    const newPids = pidsOf(baton, 2);
    const perWorker = new Map<number, number>();
    for (const player of players) {
      const report = player.report();
      expect({ ...report, rewards: undefined }).toEqual({
        sent: report.sent,
        lost: 0,
        duplicated: 0,
        reordered: 0,
        rewards: undefined,
        coins: report.coins,
        unexpected: [],
        closed: false,
      });
      expect(switchedOnce(report.rewards)).toBe(true);
      const whoami = await player.request('whoami');
      const match = /^version=2\.0\.0 pid=(\d+) coins=(\d+)$/.exec(whoami);
      expect(match).not.toBeNull();
      expect(Number(match?.[2])).toBe(report.coins);
      const pid = Number(match?.[1]);
      expect(newPids).toContain(pid);
      perWorker.set(pid, (perWorker.get(pid) ?? 0) + 1);
      expect(await player.request('work')).toBe(`coins ${report.coins + 3}`);
    }
    // Spread evenly over the two new workers.
    expect([...perWorker.values()].sort()).toEqual([25, 25]);
  });

  test("a staged round where one old worker holds no session: the other's session moves without waiting for a deadline", async () => {
    const { baton, gamePort } = await startApp();
    const player = gameSession(gamePort);
    expect(await player.request('work')).toBe('coins 2');
    app.setVersion('2.0.0');
    baton.signal('SIGUSR2');
    const started = await baton.waitForLogMsg('handoff started', { gen: 1 }, 20_000);
    expect(started).toMatchObject({ staged: true, workers: 2 });
    const moved = await baton.waitForLogMsg('sessions moved', { gen: 1 }, 20_000);
    // A round that waited for its deadline says incomplete.
    expect(moved).toMatchObject({ moved: 1, kept: 0, failed: 0, incomplete: false, outcome: 'committed' });
    expect(typeof moved.frozenMs).toBe('number');
    expect(await player.request('whoami')).toMatch(/^version=2\.0\.0 pid=\d+ coins=2$/);
    player.close();
  });

  test('a session whose state JSON cannot carry (a BigInt) stays on the old version; the old worker serves on', async () => {
    editServer(
      HANDOFF_HOOK,
      "onHandoff('game', (socket) => { const state = sessions.get(socket)?.(); return state && state.coins >= 4 ? { ...state, big: 1n } : state; });\n",
    );
    const { baton, gamePort } = await startApp();
    const plain = gameSession(gamePort);
    const odd = gameSession(gamePort);
    expect(await plain.request('work')).toBe('coins 2');
    expect(await odd.request('work')).toBe('coins 2');
    expect(await odd.request('work')).toBe('coins 4');
    app.setVersion('2.0.0');
    baton.signal('SIGUSR2');
    const moved = await baton.waitForLogMsg('sessions moved', { gen: 1 }, 20_000);
    expect(moved).toMatchObject({ moved: 1, kept: 1, failed: 0, outcome: 'committed' });
    expect(await plain.request('whoami')).toMatch(/^version=2\.0\.0 pid=\d+ coins=2$/);
    const whoami = await odd.request('whoami');
    expect(whoami).toMatch(/^version=1\.0\.0 pid=\d+ coins=4$/);
    expect(await odd.request('work')).toBe('coins 6');
    // The old worker that holds it did not crash on that state (an old worker holding nothing exits).
    const pid = Number(/pid=(\d+)/.exec(whoami)?.[1]);
    expect(baton.logs.some((entry) => entry.msg === 'worker exited' && entry.pid === pid)).toBe(false);
    plain.close();
    odd.close();
  });

  test('sessions the old version declines stay on it and drain as before; the others move', async () => {
    // Version 1 keeps its rich players (10 coins or more) on the code that made them rich.
    const original = readFileSync(join(app.dir, 'server.js'), 'utf8');
    editServer(
      HANDOFF_HOOK,
      "onHandoff('game', (socket) => { const state = sessions.get(socket)?.(); return state && state.coins < 10 ? state : undefined; });\n",
    );
    const { baton, gamePort } = await startApp();
    const poor = [gameSession(gamePort), gameSession(gamePort), gameSession(gamePort)];
    const rich = [gameSession(gamePort), gameSession(gamePort), gameSession(gamePort)];
    for (const session of poor) expect(await session.request('work')).toBe('coins 2');
    for (const session of rich) {
      for (let coins = 2; coins <= 10; coins += 2)
        expect(await session.request('work')).toBe(`coins ${coins}`);
    }
    const oldPids = pidsOf(baton, 1);

    app.writeFile('server.js', original);
    app.setVersion('2.0.0');
    baton.signal('SIGUSR2');
    const moved = await baton.waitForLogMsg('sessions moved', { gen: 1 }, 20_000);
    expect(moved).toMatchObject({ to: 2, moved: 3, kept: 3, failed: 0 });

    for (const session of poor) {
      expect(await session.request('whoami')).toMatch(/^version=2\.0\.0 pid=\d+ coins=2$/);
      expect(await session.request('work')).toBe('coins 4');
    }
    for (const session of rich) {
      const whoami = await session.request('whoami');
      expect(whoami).toMatch(/^version=1\.0\.0 pid=\d+ coins=10$/);
      expect(oldPids).toContain(Number(/pid=(\d+)/.exec(whoami)?.[1]));
      expect(await session.request('work')).toBe('coins 12');
    }
    // The old generation waits for the players it kept.
    expect(baton.logs.some((entry) => entry.msg === 'generation retired' && entry.gen === 1)).toBe(false);
    for (const session of rich) {
      expect(await session.request('quit')).toBe('bye');
      await session.closed;
    }
    const retired = await baton.waitForLogMsg('generation retired', { gen: 1 }, 10_000);
    expect(retired.forced).toBe(false);
    for (const session of poor) session.close();
  });

  test.each([
    ['throws', "onAdopt('game', () => { throw new Error('this version cannot adopt'); });\n"],
    ['rejects', "onAdopt('game', async () => { throw new Error('this version cannot adopt'); });\n"],
    ['declines (false)', "onAdopt('game', () => false);\n"],
  ])(
    'a new version whose onAdopt %s: every session goes back to its old worker with its state, counted as failed',
    async (_how, hook) => {
      const { baton, gamePort } = await startApp();
      const sessions: GameSession[] = [0, 1, 2, 3].map(() => gameSession(gamePort));
      for (const session of sessions) expect(await session.request('work')).toBe('coins 2');

      editServer(ADOPT_HOOK, hook);
      app.setVersion('2.0.0');
      baton.signal('SIGUSR2');
      const moved = await baton.waitForLogMsg('sessions moved', { gen: 1 }, 20_000);
      expect(moved).toMatchObject({ to: 2, moved: 0, kept: 0, failed: 4 });

      for (const session of sessions) {
        expect(await session.request('whoami')).toMatch(/^version=1\.0\.0 pid=\d+ coins=2$/);
        expect(await session.request('work')).toBe('coins 4');
      }
      // A new player lands on version 2 once the old workers stopped accepting (they log it as they drain).
      await waitFor(() => baton.output.split('app draining version=1.0.0').length - 1 >= 2, {
        timeoutMs: 10_000,
        what: 'both old workers draining',
      });
      const fresh = gameSession(gamePort);
      expect((await fresh.welcome).version).toBe('2.0.0');
      for (const session of sessions) {
        expect(await session.request('quit')).toBe('bye');
        await session.closed;
      }
      expect((await baton.waitForLogMsg('generation retired', { gen: 1 }, 10_000)).forced).toBe(false);
      fresh.close();
    },
  );

  test('a new version that crashes while adopting fails the reload: the old generation keeps every session, streaming, 0 lost; the next release moves them all', async () => {
    const { baton, gamePort } = await startApp(['--drain-timeout', `${DRAIN_TIMEOUT_MS}ms`]);
    const players = Array.from({ length: 20 }, () => new Player(gamePort));
    await Promise.all(players.map((player) => player.welcome));
    for (const player of players) player.start();
    await everyPlayerStreams(players, 'every player earning coins on version 1');
    const oldPids = pidsOf(baton, 1);

    // Version 2 adopts a few sessions, then dies in the middle of the handoff.
    const original = readFileSync(join(app.dir, 'server.js'), 'utf8');
    editServer(
      ADOPT_HOOK,
      "let adoptions = 0;\nonAdopt('game', (socket, state) => { if (++adoptions === 3) process.exit(70); play(socket, state); });\n",
    );
    app.setVersion('2.0.0');
    const reload = startBaton(['reload']);
    expect((await reload.waitForExit(30_000)).exitCode).toBe(6);
    expect(reload.output).toMatch(
      /sessions not moved from generation 1 to 2: new worker \d exited with code 70/,
    );
    expect(reload.output).toContain('reload failed: Generation 2 did not take over: worker');
    const failed = await baton.waitForLogMsg('sessions moved', { gen: 1 }, 5_000);
    expect(failed).toMatchObject({ to: 2, moved: 0, outcome: 'aborted' });
    expect(baton.logs.some((entry) => entry.msg === 'generation active' && entry.gen === 2)).toBe(false);

    // Every player streams on, on version 1, past the drain deadline a cut session would have hit.
    await everyPlayerStreams(
      players,
      'every player streaming on version 1 after the failed reload',
      performance.now() + DRAIN_TIMEOUT_MS + 500,
    );

    // A good release then moves every one of them.
    app.writeFile('server.js', original.replace(REWARD_V1, REWARD_V2));
    app.setVersion('3.0.0');
    baton.signal('SIGUSR2');
    const moved = await baton.waitForLogMsg('sessions moved', { gen: 1, to: 3 }, 20_000);
    expect(moved).toMatchObject({ moved: 20, kept: 0, failed: 0, outcome: 'committed' });
    await everyPlayerStreams(players, 'every player streaming on version 3');
    for (const player of players) player.stop();
    await waitFor(() => players.every((player) => player.settled), {
      timeoutMs: 10_000,
      what: 'every command answered',
    });
    for (const player of players) {
      const report = player.report();
      expect({ lost: report.lost, duplicated: report.duplicated, reordered: report.reordered }).toEqual({
        lost: 0,
        duplicated: 0,
        reordered: 0,
      });
      expect(report.unexpected).toEqual([]);
      expect(report.closed).toBe(false);
      // Version 1 all along, then version 3: version 2 never answered a single command.
      expect(switchedOnce(report.rewards)).toBe(true);
      const whoami = await player.request('whoami');
      expect(whoami).toMatch(new RegExp(`^version=3\\.0\\.0 pid=\\d+ coins=${report.coins}$`));
      expect(oldPids).not.toContain(Number(/pid=(\d+)/.exec(whoami)?.[1]));
    }
  });

  test('an app that does not opt in (GAME_HANDOFF=off) keeps its sessions on the old version, draining', async () => {
    const { baton, gamePort } = await startApp([], { GAME_HANDOFF: 'off' });
    const session = gameSession(gamePort);
    expect(await session.request('work')).toBe('coins 2');
    app.setVersion('2.0.0');
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('generation draining', { gen: 1 }, 20_000);
    expect(await session.request('whoami')).toMatch(/^version=1\.0\.0 pid=\d+ coins=2$/);
    expect(baton.logs.some((entry) => entry.msg === 'handoff started')).toBe(false);
    expect(await session.request('quit')).toBe('bye');
    expect((await baton.waitForLogMsg('generation retired', { gen: 1 }, 10_000)).forced).toBe(false);
  });
});
