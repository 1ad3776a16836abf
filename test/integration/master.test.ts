/**
 * The core promise, end to end: the real CLI, the real example app, real
 * sockets on 127.0.0.1, real signals and real clients.
 */
import http from 'node:http';
import net from 'node:net';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { gameSession, httpGetJson, httpLoad, waitForVersion } from '../helpers/load.js';
import {
  type AppDir,
  type BatonProcess,
  killAll,
  makeAppDir,
  processAlive,
  startBaton,
} from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

const NODE = process.execPath;
let app: AppDir;

beforeEach(() => {
  app = makeAppDir();
});

afterEach(async () => {
  await killAll();
  app.cleanup();
});

/** Starts baton on the example app with an HTTP and a game listener on free ports. */
async function startApp(
  extra: string[] = [],
  env: Record<string, string> = {},
): Promise<{ baton: BatonProcess; httpPort: number; gamePort: number }> {
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
  const httpPort = await baton.listenPort('http');
  const gamePort = await baton.listenPort('game');
  await baton.waitForLogMsg('generation active', { gen: 1 });
  return { baton, httpPort, gamePort };
}

/** Sends SIGUSR2 and waits until generation `gen` is active and `replaced` (by default the one before) has retired. */
async function reloadTo(baton: BatonProcess, gen: number, replaced = gen - 1): Promise<void> {
  baton.signal('SIGUSR2');
  await baton.waitForLogMsg('generation active', { gen }, 20_000);
  await baton.waitForLogMsg('generation retired', { gen: replaced }, 20_000);
}

function workerPids(baton: BatonProcess): number[] {
  return baton.logs.filter((entry) => entry.msg === 'worker ready').map((entry) => entry.pid as number);
}

describe('zero-downtime reload', () => {
  test('five reloads under keep-alive and new-connection load: zero failed requests, new requests on the new version', async () => {
    const { baton, httpPort } = await startApp();
    const keepAlive = httpLoad({
      port: httpPort,
      keepAlive: true,
      concurrency: 4,
      maxRequests: 200_000,
      maxDurationMs: 90_000,
    });
    const fresh = httpLoad({
      port: httpPort,
      keepAlive: false,
      concurrency: 2,
      maxRequests: 100_000,
      maxDurationMs: 90_000,
    });
    await waitFor(() => keepAlive.snapshot().ok > 50 && fresh.snapshot().ok > 20, {
      timeoutMs: 10_000,
      what: 'load flowing',
    });

    for (let gen = 2; gen <= 6; gen++) {
      const version = `2.0.${gen}`;
      app.setVersion(version);
      await reloadTo(baton, gen);
      for (let i = 0; i < 10; i++) {
        const { body } = await httpGetJson(httpPort);
        expect(body).toMatchObject({ version, generation: gen });
      }
    }

    const [kept, opened] = await Promise.all([keepAlive.stop(), fresh.stop()]);
    expect(kept.errors).toEqual([]);
    expect(opened.errors).toEqual([]);
    expect(kept.failed + opened.failed).toBe(0);
    expect(kept.ok).toBeGreaterThan(0);
    expect(opened.ok).toBeGreaterThan(0);
    expect(Object.keys({ ...kept.versions, ...opened.versions })).toEqual(
      expect.arrayContaining(['1.0.0', '2.0.2', '2.0.6']),
    );
  });

  test('slow requests in flight when the reload happens all complete', async () => {
    const { baton, httpPort } = await startApp();
    const agent = new http.Agent({ keepAlive: false });
    let connected = 0;
    const requests = Array.from(
      { length: 10 },
      () =>
        new Promise<{ status: number; version: unknown }>((resolve, reject) => {
          const request = http.get(
            { port: httpPort, host: '127.0.0.1', path: '/slow?ms=1500', agent },
            (response) => {
              let text = '';
              response.on('data', (chunk) => {
                text += chunk;
              });
              response.on('end', () =>
                resolve({ status: response.statusCode ?? 0, version: JSON.parse(text).version }),
              );
            },
          );
          request.on('socket', (socket) => socket.on('connect', () => connected++));
          request.on('error', reject);
        }),
    );
    await waitFor(() => connected === 10, { timeoutMs: 5000, what: 'all slow requests connected' });
    app.setVersion('2.0.0');
    baton.signal('SIGUSR2');
    const results = await Promise.all(requests);
    expect(results).toEqual(Array.from({ length: 10 }, () => ({ status: 200, version: '1.0.0' })));
    await baton.waitForLogMsg('generation retired', { gen: 1 }, 20_000);
    expect((await httpGetJson(httpPort)).body).toMatchObject({ version: '2.0.0' });
    agent.destroy();
  });

  test('long-lived TCP sessions keep their state on the old version; new ones land on the new version', async () => {
    // An app that does not opt into live session handoff (docs/handoff.md): the generation swap alone.
    const { baton, gamePort } = await startApp([], { GAME_HANDOFF: 'off' });
    const old = [gameSession(gamePort), gameSession(gamePort), gameSession(gamePort)];
    for (const session of old) {
      expect(await session.welcome).toMatchObject({ version: '1.0.0' });
      expect(await session.request('work')).toBe('coins 2');
      expect(await session.request('work')).toBe('coins 4');
    }
    app.setVersion('2.0.0');
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('generation active', { gen: 2 }, 20_000);

    // An old worker accepts until it has handled its drain signal, a moment after `generation active`:
    // each try is a new session.
    let fresh = gameSession(gamePort);
    await waitFor(
      async () => {
        const welcome = await fresh.welcome;
        if (welcome.version === '2.0.0') return welcome;
        fresh.close();
        fresh = gameSession(gamePort);
        return undefined;
      },
      { timeoutMs: 5000, what: 'a new session on the new version' },
    );
    expect(await fresh.request('work')).toBe('coins 2');

    for (const session of old) {
      expect(await session.request('work')).toBe('coins 6');
      expect(await session.request('whoami')).toMatch(/^version=1\.0\.0 pid=\d+ coins=6$/);
    }
    // The old generation waits for its players: it has not retired while they are connected.
    expect(baton.logs.some((entry) => entry.msg === 'generation retired' && entry.gen === 1)).toBe(false);

    for (const session of old) {
      expect(await session.request('quit')).toBe('bye');
      await session.closed;
    }
    const retired = await baton.waitForLogMsg('generation retired', { gen: 1 }, 10_000);
    expect(retired.forced).toBe(false);
    fresh.close();
  });
});

describe('a broken release never replaces a working one', () => {
  test('a release that crashes on boot: zero failed requests, the old version serves, the failure is logged, the next good release goes through', async () => {
    const { baton, httpPort } = await startApp();
    const load = httpLoad({
      port: httpPort,
      keepAlive: false,
      concurrency: 2,
      maxRequests: 100_000,
      maxDurationMs: 60_000,
    });
    const goodServer = await import('node:fs').then((fs) => fs.readFileSync(`${app.dir}/server.js`, 'utf8'));

    app.writeFile('server.js', "throw new Error('broken release: missing config');\n");
    baton.signal('SIGUSR2');
    const failure = await baton.waitForLog(
      (entry) => String(entry.msg).startsWith('reload failed'),
      20_000,
      'reload failed',
    );
    expect(failure).toMatchObject({ gen: 2, reason: 'worker-exited', exitCode: 1 });
    expect(String(failure.stderrTail)).toContain('broken release: missing config');
    expect((await httpGetJson(httpPort)).body).toMatchObject({ version: '1.0.0', generation: 1 });

    app.writeFile('server.js', goodServer);
    app.setVersion('3.0.0');
    await reloadTo(baton, 3, 1);
    await waitForVersion(httpPort, '3.0.0', 5000);

    const report = await load.stop();
    expect(report.errors).toEqual([]);
    expect(report.failed).toBe(0);
    expect(report.versions['1.0.0']).toBeGreaterThan(0);
  });

  test('a release that never says ready fails at --ready-timeout and the old version keeps serving', async () => {
    // The deadline holds for generation 1 too: on two busy cores a Node worker took 970 ms to say
    // ready, so 1 s failed the start itself. 5 s leaves room and still fails the stuck release early.
    const { baton, httpPort } = await startApp(['--ready-timeout', '5s']);
    const load = httpLoad({
      port: httpPort,
      keepAlive: true,
      concurrency: 2,
      maxRequests: 100_000,
      maxDurationMs: 60_000,
    });
    app.writeFile('server.js', 'setInterval(() => {}, 1000);\n');
    baton.signal('SIGUSR2');
    const failure = await baton.waitForLog(
      (entry) => String(entry.msg).startsWith('reload failed'),
      20_000,
      'reload failed',
    );
    expect(failure).toMatchObject({ gen: 2, reason: 'ready-timeout' });
    await baton.waitForLog(
      (entry) => entry.msg === 'worker exited' && entry.gen === 2,
      10_000,
      'the stuck workers stopped',
    );
    expect((await httpGetJson(httpPort)).body).toMatchObject({ generation: 1 });
    const report = await load.stop();
    expect(report.errors).toEqual([]);
    expect(report.failed).toBe(0);
  });
});

describe('workers and the master stop as they should', () => {
  test('a worker killed with SIGKILL is replaced; SIGTERM to the master drains, exits 0 and leaves no process', async () => {
    const { baton, httpPort } = await startApp();
    const [victim] = workerPids(baton);
    process.kill(victim as number, 'SIGKILL');
    const exited = await baton.waitForLogMsg('worker exited', { pid: victim });
    expect(exited).toMatchObject({ gen: 1, signal: 'SIGKILL' });
    const replacement = await baton.waitForLog(
      (entry) =>
        entry.msg === 'worker ready' &&
        entry.gen === 1 &&
        entry.pid !== victim &&
        entry.worker === exited.worker,
      10_000,
      'a replacement worker ready',
    );
    expect((await httpGetJson(httpPort)).status).toBe(200);

    const pids = workerPids(baton);
    expect(pids).toContain(replacement.pid);
    baton.signal('SIGTERM');
    expect(await baton.waitForExit(15_000)).toEqual({ exitCode: 0, signal: null });
    for (const pid of pids) expect(processAlive(pid)).toBe(false);
  });

  test('SIGINT also drains and exits 0, with a keep-alive client connected', async () => {
    const { baton, httpPort } = await startApp();
    const load = httpLoad({
      port: httpPort,
      keepAlive: true,
      concurrency: 2,
      maxRequests: 1_000_000,
      maxDurationMs: 30_000,
    });
    await waitFor(() => load.snapshot().ok > 20, { timeoutMs: 5000, what: 'load flowing' });
    load.markCutoff();
    baton.signal('SIGINT');
    expect(await baton.waitForExit(15_000)).toEqual({ exitCode: 0, signal: null });
    const report = await load.stop();
    expect(report.ok).toBeGreaterThan(0);
    // Requests under way all complete: on a connection established before the stop, any failure
    // (a reset or a refusal included) is a failure, as in the reload tests.
    expect({ before: report.cutoff?.establishedBefore, errors: report.errors }).toEqual({
      before: { refused: 0, reset: 0, timeout: 0, http5xx: 0, other: 0 },
      errors: expect.any(Array),
    });
    // A connection that arrives while the server stops is refused, or reset if it was still queued when
    // the last worker closed the socket (as with nginx's graceful stop): a new request after the stop
    // began, not one cut in flight. Nothing else.
    const after = report.cutoff?.openedAfter;
    expect({ timeout: after?.timeout, http5xx: after?.http5xx, other: after?.other }).toEqual({
      timeout: 0,
      http5xx: 0,
      other: 0,
    });
  });
});

describe('a stop that waits for a session', () => {
  test('a repeated Ctrl-C at once is the same one; the master says what it waits for; Ctrl-C again later stops at once', async () => {
    const { baton, gamePort } = await startApp();
    const player = gameSession(gamePort);
    expect(await player.request('work')).toBe('coins 2');
    // What a terminal and npm do: the same SIGINT twice, a moment apart.
    baton.signal('SIGINT');
    baton.signal('SIGINT');
    await baton.waitForLogMsg('stopping: draining every generation');
    const reminder = await waitFor(
      () => baton.logs.find((entry) => String(entry.msg).startsWith('still stopping')),
      { timeoutMs: 10_000, what: 'the master saying what the stop waits for' },
    );
    expect(reminder.msg).toMatch(/waiting for 1 open connection\(s\) to end, at most \d+ s more/);
    expect(reminder.generations).toEqual([{ gen: 1, workers: expect.any(Number), connections: 1 }]);
    expect(baton.logs.some((entry) => entry.msg === 'fast stop: killing every worker')).toBe(false);
    expect(await player.request('work')).toBe('coins 4');

    baton.signal('SIGINT');
    await baton.waitForLogMsg('fast stop: killing every worker');
    // Asked for, as SIGQUIT: the master exits 0 (5 is for workers killed at --drain-timeout).
    expect(await baton.waitForExit(10_000)).toEqual({ exitCode: 0, signal: null });
    await player.closed;
  });
});

describe('bad input gets one clear line and a non-zero exit', () => {
  async function runBad(args: string[], cwd?: string) {
    const baton = startBaton(args, cwd ? { cwd } : {});
    const status = await baton.waitForExit(10_000);
    const lines = baton.output.trim().split('\n');
    return { status, lines };
  }

  test.each([
    [['start', '--bogus', '--listen', 'tcp://127.0.0.1:0', '--', NODE], 2, /Unknown argument: bogus/],
    [['start', '--listen', 'tcp://127.0.0.1:0'], 2, /the worker's command after `--`/],
    // Without `--`, the command is not taken for more --listen values, nor for unknown arguments.
    [
      ['start', '--listen', 'http=tcp://127.0.0.1:0', NODE, 'server.js'],
      2,
      /the worker's command after `--`/,
    ],
    [
      ['start', '--listen', 'http=tcp://127.0.0.1:0', '--workers', '1', NODE, 'server.js'],
      2,
      /the worker's command after `--`/,
    ],
    [['start', '--listen', 'tcp:/127.0.0.1', '--', NODE], 2, /Expected `--listen` to look like/],
    [['start', '--listen', 'tcp://127.0.0.1:0', '--', 'no-such-command-xyz'], 127, /Command not found/],
    [['start', '--listen', 'tcp://127.0.0.1:0', '--workers', '0', '--', NODE], 2, /`--workers`/],
    [['launch'], 2, /Unknown argument: launch/],
  ])('%p', async (args, code, message) => {
    const { status, lines } = await runBad(args as string[]);
    expect(status.exitCode).toBe(code);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^baton: /);
    expect(lines[0]).toMatch(message);
  });

  test('a port already in use', async () => {
    const squatter = net.createServer();
    await new Promise<void>((resolve) => squatter.listen(0, '127.0.0.1', resolve));
    const port = (squatter.address() as net.AddressInfo).port;
    try {
      const { status, lines } = await runBad([
        'start',
        '--listen',
        `tcp://127.0.0.1:${port}`,
        '--',
        NODE,
        '-e',
        '',
      ]);
      expect(status.exitCode).toBe(3);
      expect(lines).toHaveLength(1);
      expect(lines[0]).toMatch(/another process is listening on 127\.0\.0\.1:\d+/);
    } finally {
      squatter.close();
    }
  });

  test('a first release that cannot start: the master says why and exits 4', async () => {
    app.writeFile('server.js', "console.error('cannot open database'); process.exit(7);\n");
    const baton = startBaton(['start', '--listen', 'http=tcp://127.0.0.1:0', '--', NODE, 'server.js'], {
      cwd: app.dir,
    });
    const status = await baton.waitForExit(10_000);
    expect(status.exitCode).toBe(4);
    const failure = baton.logs.find((entry) => String(entry.msg).startsWith('start failed'));
    expect(failure).toMatchObject({ exitCode: 7, stderrTail: 'cannot open database' });
  });
});

describe('what a worker gets', () => {
  test('exactly its standard streams, the listeners at fd 3.., the notify pipe, the descriptor channel and the IPC channel; LISTEN_PID is its own pid; arguments arrive verbatim', async () => {
    // The worker lists its descriptors with readlink only: listing must not open any.
    const script = [
      'import os, sys, time',
      "fds = [n for n in range(256) if os.path.lexists('/proc/self/fd/%d' % n)]",
      "for n in fds: print('fd', n, os.readlink('/proc/self/fd/%d' % n), file=sys.stderr)",
      "print('pid', os.getpid(), 'listen_pid', os.environ['LISTEN_PID'], 'fds', os.environ['LISTEN_FDS'], 'names', os.environ['LISTEN_FDNAMES'], 'notify', os.environ['BATON_NOTIFY_FD'], 'channel', os.environ['BATON_FD_CHANNEL'], 'args', '|'.join(sys.argv[1:]), file=sys.stderr, flush=True)",
      'time.sleep(30)',
    ].join('\n');
    const baton = startBaton([
      'start',
      '--listen',
      'a=tcp://127.0.0.1:0',
      '--listen',
      'b=tcp://[::1]:0',
      '--',
      'python3',
      '-c',
      script,
      "it's $(not run) `either`",
      'two words',
    ]);
    await waitFor(() => /^pid \d+ listen_pid/m.test(baton.output) || undefined, {
      timeoutMs: 10_000,
      what: 'the worker describing itself',
    });
    const fds = [...baton.output.matchAll(/^fd (\d+) (.*)$/gm)].map((match) => [Number(match[1]), match[2]]);
    // 0-2 standard streams, 3-4 the listeners, 5 the notify pipe (BATON_NOTIFY_FD), 6 the descriptor
    // channel (BATON_FD_CHANNEL), 7 the IPC channel.
    expect(fds.map(([fd]) => fd)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(fds[0]?.[1]).toBe('/dev/null');
    expect(fds.slice(3).map(([, target]) => String(target).replace(/\[\d+\]/, ''))).toEqual([
      'socket:',
      'socket:',
      'socket:',
      'socket:',
      'socket:',
    ]);
    const identity =
      /^pid (\d+) listen_pid (\d+) fds (\d+) names (\S+) notify (\d+) channel (\d+) args (.*)$/m.exec(
        baton.output,
      );
    expect(identity?.[1]).toBe(identity?.[2]);
    expect(identity?.slice(3)).toEqual(['2', 'a:b', '5', '6', "it's $(not run) `either`|two words"]);
  });
});

describe('signal storms', () => {
  test('twenty SIGUSR2 at once under load: reloads coalesce, nothing fails, every worker started is serving or gone', async () => {
    const { baton, httpPort } = await startApp();
    const load = httpLoad({
      port: httpPort,
      keepAlive: false,
      concurrency: 2,
      maxRequests: 100_000,
      maxDurationMs: 60_000,
    });
    app.setVersion('9.0.0');
    for (let i = 0; i < 20; i++) baton.signal('SIGUSR2');
    // The kernel merges a signal that is already pending, so the master sees one to twenty of them:
    // one reload runs, at most one more is queued, and a queued one starts as soon as gen 2 is active.
    await baton.waitForLogMsg('generation active', { gen: 2 }, 20_000);
    const starting = baton.logs
      .filter((entry) => entry.msg === 'generation starting')
      .map((entry) => entry.gen);
    const last = starting.at(-1) as number;
    expect([
      [1, 2],
      [1, 2, 3],
    ]).toContainEqual(starting);
    await baton.waitForLogMsg('generation active', { gen: last }, 20_000);
    await baton.waitForLogMsg('generation retired', { gen: last - 1 }, 20_000);
    await waitForVersion(httpPort, '9.0.0', 5000);
    const report = await load.stop();
    expect(report.errors).toEqual([]);
    expect(report.failed).toBe(0);
    const live = baton.logs.filter(
      (entry) =>
        entry.msg === 'worker ready' &&
        !baton.logs.some((e) => e.msg === 'worker exited' && e.pid === entry.pid),
    );
    expect(live.map((entry) => entry.gen)).toEqual([last, last]);
  });
});
