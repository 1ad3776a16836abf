/**
 * `--watchdog`: a serving worker that stops saying WATCHDOG=1 is replaced the way `--max-memory`
 * replaces one (its replacement ready first, then it drains), under load with zero failed requests; a
 * Node worker whose event loop is stuck goes silent by itself (the child API pings from the loop); a
 * worker that never pings is reported once and left alone.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { httpGetJson, httpLoad } from '../helpers/load.js';
import { type AppDir, killAll, makeAppDir, REPO_ROOT, startBaton } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

const PYTHON_SERVER = join(REPO_ROOT, 'test', 'fixtures', 'systemd_http.py');

/** A child API app that hangs its event loop for good on SIGUSR1. */
const STUCK_APP = `
import http from 'node:http';
import { ready, serve } from 'baton-supervisor/child';
const server = http.createServer((request, response) => {
  response.setHeader('content-type', 'application/json');
  response.end(JSON.stringify({ pid: process.pid, watchdogPid: process.env.WATCHDOG_PID, usec: process.env.WATCHDOG_USEC }));
});
await serve(server, 'http');
ready();
process.on('SIGUSR1', () => {
  for (;;) {}
});
`;

let dir: string;
let app: AppDir;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'baton-watchdog-'));
  writeFileSync(join(dir, 'VERSION'), '1');
  app = makeAppDir();
  app.writeFile('stuck.mjs', STUCK_APP);
});

afterEach(async () => {
  await killAll();
  rmSync(dir, { recursive: true, force: true });
  app.cleanup();
});

function startPython(watchdog: string, env: Record<string, string>) {
  return startBaton(
    [
      'start',
      '--listen',
      'http=tcp://127.0.0.1:0',
      '--workers',
      '2',
      '--watchdog',
      watchdog,
      '--',
      'python3',
      PYTHON_SERVER,
    ],
    { env: { APP_VERSION_FILE: join(dir, 'VERSION'), ...env } },
  );
}

describe('--watchdog', () => {
  test('a worker that stops pinging is replaced under load: its replacement first, then it drains; zero failed', async () => {
    const baton = startPython('600ms', { PING_WATCHDOG: '1' });
    const port = await baton.listenPort('http');
    await baton.waitForLogMsg('generation active', { gen: 1 }, 15_000);
    const loads = [true, false].map((keepAlive) =>
      httpLoad({ port, keepAlive, concurrency: 2, maxRequests: 100_000, maxDurationMs: 60_000 }),
    );
    await waitFor(() => loads.every((load) => load.snapshot().ok > 10), {
      timeoutMs: 10_000,
      what: 'load flowing',
    });
    const silenced = baton.logs.find((entry) => entry.msg === 'worker ready' && entry.worker === 0)
      ?.pid as number;
    process.kill(silenced, 'SIGUSR1');
    const replacing = await baton.waitForLogMsg('replacing worker', { pid: silenced }, 10_000);
    expect(replacing).toMatchObject({ reason: 'watchdog', worker: 0, watchdogMs: 600 });
    expect(replacing.silentMs as number).toBeGreaterThan(600);
    await baton.waitForLogMsg('worker replaced', { replaced: silenced }, 10_000);
    await baton.waitForLogMsg('worker exited', { pid: silenced, state: 'draining' }, 15_000);
    // The other worker kept pinging: nothing else was replaced.
    expect(baton.logs.filter((entry) => entry.msg === 'replacing worker')).toHaveLength(1);
    for (const report of await Promise.all(loads.map((load) => load.stop()))) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
    }
  }, 60_000);

  test('a Node worker whose event loop is stuck goes silent by itself (the child API pings) and is replaced', async () => {
    const baton = startBaton(
      [
        'start',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--watchdog',
        '500ms',
        '--drain-timeout',
        '1s',
        '--',
        'node',
        'stuck.mjs',
      ],
      { cwd: app.dir },
    );
    const port = await baton.listenPort('http');
    await baton.waitForLogMsg('generation active', { gen: 1 }, 15_000);
    const { body } = await httpGetJson(port);
    expect(body).toMatchObject({ usec: '500000' });
    expect(body?.watchdogPid).toBe(String(body?.pid));
    process.kill(body?.pid as number, 'SIGUSR1');
    expect(await baton.waitForLogMsg('replacing worker', { pid: body?.pid }, 10_000)).toMatchObject({
      reason: 'watchdog',
    });
    // It cannot drain (its loop is stuck): the drain deadline kills it, and the replacement serves.
    await baton.waitForLogMsg('worker exited', { pid: body?.pid, signal: 'SIGKILL' }, 10_000);
    const after = await httpGetJson(port);
    expect(after.body?.pid).not.toBe(body?.pid);
  }, 60_000);

  test('a worker that never pings is reported once and left serving, not replaced in a loop', async () => {
    const baton = startPython('300ms', {});
    const port = await baton.listenPort('http');
    await baton.waitForLogMsg('generation active', { gen: 1 }, 15_000);
    const warning = /never sent WATCHDOG=1/;
    await waitFor(() => baton.logs.filter((entry) => warning.test(String(entry.msg))).length === 2, {
      timeoutMs: 5000,
      what: 'a warning for each of the two silent workers',
    });
    // Proving that something does not happen takes a wait: ten watchdog periods.
    await new Promise((resolve) => setTimeout(resolve, 3000));
    expect(baton.logs.filter((entry) => warning.test(String(entry.msg)))).toHaveLength(2);
    expect(baton.logs.filter((entry) => entry.msg === 'replacing worker')).toEqual([]);
    expect((await httpGetJson(port)).status).toBe(200);
  }, 30_000);
});
