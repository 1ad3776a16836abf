/**
 * `--start-nice`: a worker starts at the lower CPU priority, every thread of it (the threads Node
 * starts inherit it) and its session where autogroups are on, and gets its own back once it is ready;
 * a value out of range is one clear line and exit 2.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { mayRaisePriority } from '../../supervisor/priority.js';
import { httpGetJson } from '../helpers/load.js';
import { type AppDir, killAll, makeAppDir, startBaton } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

/** A plain server that says ready only when it gets SIGUSR1, so that its start can be looked at. */
const SLOW_READY_APP = `
import http from 'node:http';
const server = http.createServer((request, response) => response.end(JSON.stringify({ pid: process.pid })));
server.listen({ fd: 3 });
process.once('SIGUSR1', () => process.send('ready'));
process.once('SIGTERM', () => server.close());
`;

/** The same, but it ignores the drain signal: a start-up that hangs, still there while it drains. */
const STUBBORN_APP = `
import http from 'node:http';
const server = http.createServer((request, response) => response.end(JSON.stringify({ pid: process.pid })));
server.listen({ fd: 3 });
process.once('SIGUSR1', () => process.send('ready'));
process.on('SIGTERM', () => {});
`;

let app: AppDir;

beforeEach(() => {
  app = makeAppDir();
  app.writeFile('slow-ready.mjs', SLOW_READY_APP);
});

afterEach(async () => {
  await killAll();
  app.cleanup();
});

/** The nice value of every thread of `pid` (field 19 of /proc/<pid>/task/<tid>/stat). */
function threadNices(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((tid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      return [Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16])];
    } catch {
      return []; // the thread ended meanwhile
    }
  });
}

/** The nice of `pid`'s autogroup (its session), where the kernel has autogroups. */
function autogroupNice(pid: number): number | undefined {
  const file = `/proc/${pid}/autogroup`;
  if (!existsSync(file)) return undefined;
  return Number(/nice (-?\d+)/.exec(readFileSync(file, 'utf8'))?.[1]);
}

/** baton on `script` (one of the apps above) under `--ready ipc`, with `extra` flags. */
function startSlow(script: string, extra: string[]) {
  return startBaton(
    [
      'start',
      '--listen',
      'http=tcp://127.0.0.1:0',
      '--no-preload',
      '--ready',
      'ipc',
      ...extra,
      '--',
      process.execPath,
      script,
    ],
    { cwd: app.dir },
  );
}

/** Whether this process may start workers above its own priority (root or CAP_SYS_NICE here). */
const mayRaise = mayRaisePriority(-5);

describe('--start-nice', () => {
  test('a worker starts at the lower priority, every thread of it, and serves at its own once ready', async () => {
    const baton = startSlow('slow-ready.mjs', ['--start-nice', '10', '--log-level', 'debug']);
    const port = await baton.listenPort('http');
    const pid = (await baton.waitForLogMsg('worker spawned', { gen: 1 })).pid as number;
    // Node has started its threads once it serves: each of them inherited the lower priority.
    const answer = await waitFor(() => httpGetJson(port, '/').catch(() => undefined), {
      timeoutMs: 10_000,
      what: 'the starting worker to answer',
    });
    expect(answer?.body).toEqual({ pid });
    const starting = threadNices(pid);
    expect(starting.length).toBeGreaterThan(1);
    expect(new Set(starting)).toEqual(new Set([10]));
    const group = autogroupNice(pid);
    if (group !== undefined) expect(group).toBe(10);

    process.kill(pid, 'SIGUSR1');
    await baton.waitForLogMsg('worker ready', { gen: 1, pid });
    // Giving the threads their priority back needs CAP_SYS_NICE (or a RLIMIT_NICE that allows it):
    // without it they keep the lower one, and the master says so once, before the worker counts as ready.
    const kept = baton.logs.find(
      (entry) =>
        typeof entry.msg === 'string' && entry.msg.startsWith('workers keep their --start-nice priority'),
    );
    if (process.getuid?.() === 0) expect(kept).toBeUndefined();
    expect(new Set(threadNices(pid))).toEqual(new Set([kept ? 10 : 0]));
    if (group !== undefined) {
      // Without CAP_SYS_ADMIN the kernel takes one autogroup change per 100 ms: it may come a little later.
      await waitFor(() => autogroupNice(pid) === 0, { timeoutMs: 5_000, what: 'the session nice back to 0' });
    }
  });

  test('below 0, where the priority may be raised (root or CAP_SYS_NICE), a worker starts ahead of the others and serves at its own once ready; elsewhere, one clear line and exit 2', async () => {
    const baton = startSlow('slow-ready.mjs', ['--start-nice', '-5']);
    if (!mayRaisePriority(-5)) {
      expect((await baton.waitForExit(10_000)).exitCode).toBe(2);
      expect(baton.output.trim()).toBe(
        "baton: `--start-nice` -5 asks for a priority above baton's own, which needs CAP_SYS_NICE (root has it, unless a container or a user namespace leaves it out: `docker run --cap-add SYS_NICE`) or a RLIMIT_NICE that allows it (systemd's LimitNICE=): give baton one of them, or a value from 0 to 19 (see 'baton --help')",
      );
      return;
    }
    const port = await baton.listenPort('http');
    const answer = await waitFor(() => httpGetJson(port, '/').catch(() => undefined), {
      timeoutMs: 10_000,
      what: 'the starting worker to answer',
    });
    const pid = (answer?.body as { pid?: number } | undefined)?.pid as number;
    expect(new Set(threadNices(pid))).toEqual(new Set([-5]));
    const group = autogroupNice(pid);
    if (group !== undefined) expect(group).toBe(-5);
    process.kill(pid, 'SIGUSR1');
    await baton.waitForLogMsg('worker ready', { gen: 1, pid });
    expect(new Set(threadNices(pid))).toEqual(new Set([0]));
    if (group !== undefined) {
      await waitFor(() => autogroupNice(pid) === 0, { timeoutMs: 5_000, what: 'the session nice back to 0' });
    }
  });

  (mayRaise ? test : test.skip)(
    `a new worker at a higher priority that never says ready gives it back when it is drained at its ready timeout${mayRaise ? '' : ' (skipped: this process may not raise a priority, so --start-nice below 0 is refused at start, as the test above checks)'}`,
    async () => {
      app.writeFile('stubborn.mjs', STUBBORN_APP);
      const baton = startSlow('stubborn.mjs', [
        '--ready-timeout',
        '2s',
        '--drain-timeout',
        '20s',
        '--start-nice',
        '-5',
        '--log-level',
        'debug',
      ]);
      const port = await baton.listenPort('http');
      const first = (await baton.waitForLogMsg('worker spawned', { gen: 1 })).pid as number;
      // Once it answers, its SIGUSR1 handler is in place (before that, SIGUSR1 would start Node's inspector).
      await waitFor(() => httpGetJson(port, '/').catch(() => undefined), {
        timeoutMs: 10_000,
        what: 'the first worker to answer',
      });
      process.kill(first, 'SIGUSR1');
      await baton.waitForLogMsg('generation active', { gen: 1 });
      baton.signal('SIGUSR2');
      const second = (await baton.waitForLogMsg('worker spawned', { gen: 2 })).pid as number;
      await waitFor(() => threadNices(second).length > 1, {
        timeoutMs: 10_000,
        what: 'the new worker to start',
      });
      expect(new Set(threadNices(second))).toEqual(new Set([-5]));
      // It never says ready: at its ready timeout the reload fails and it drains, ignoring the signal.
      await waitFor(() => baton.logs.some((entry) => entry.gen === 2 && entry.reason === 'ready-timeout'), {
        timeoutMs: 10_000,
        what: 'the reload to fail at the ready timeout',
      });
      await waitFor(() => threadNices(second).every((nice) => nice === 0), {
        timeoutMs: 5_000,
        what: "the drained worker's threads back to nice 0",
      });
      if (autogroupNice(second) !== undefined) {
        await waitFor(() => autogroupNice(second) === 0, {
          timeoutMs: 5_000,
          what: 'the session nice back to 0',
        });
      }
    },
  );

  test('a value out of range is one clear line and exit 2', async () => {
    const baton = startBaton([
      'start',
      '--listen',
      'tcp://127.0.0.1:0',
      '--start-nice',
      '20',
      '--',
      process.execPath,
      '-e',
      '',
    ]);
    expect((await baton.waitForExit(10_000)).exitCode).toBe(2);
    expect(baton.output.trim()).toBe(
      "baton: Expected `--start-nice` to be a whole number from -20 to 19, got '20' (see 'baton --help')",
    );
  });
});
