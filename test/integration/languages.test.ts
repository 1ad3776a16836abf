/**
 * Workers in other languages and unmodified programs: the systemd
 * socket-activation convention exactly, readiness on the notify pipe, and
 * readiness by delay for programs that cannot say anything.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { httpGetJson, httpLoad, waitForVersion } from '../helpers/load.js';
import { type BatonProcess, killAll, REPO_ROOT, startBaton } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

const PYTHON_SERVER = join(REPO_ROOT, 'test', 'fixtures', 'systemd_http.py');
let dir: string;
let versionFile: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'baton-lang-'));
  versionFile = join(dir, 'VERSION');
  writeFileSync(versionFile, '1');
});

afterEach(async () => {
  await killAll();
  rmSync(dir, { recursive: true, force: true });
});

async function start(readiness: string, command: string[], env: Record<string, string> = {}) {
  const baton = startBaton(
    ['start', '--listen', 'http=tcp://127.0.0.1:0', '--workers', '2', '--ready', readiness, '--', ...command],
    { env: { APP_VERSION_FILE: versionFile, ...env } },
  );
  const port = await baton.listenPort('http');
  await baton.waitForLogMsg('generation active', { gen: 1 }, 15_000);
  return { baton, port };
}

/** Five reloads with a version bump each under keep-alive and new-connection load; returns both reports. */
async function fiveReloadsUnderLoad(baton: BatonProcess, port: number) {
  const keepAlive = httpLoad({
    port,
    keepAlive: true,
    concurrency: 2,
    maxRequests: 100_000,
    maxDurationMs: 90_000,
  });
  const fresh = httpLoad({
    port,
    keepAlive: false,
    concurrency: 2,
    maxRequests: 100_000,
    maxDurationMs: 90_000,
  });
  await waitFor(() => keepAlive.snapshot().ok > 20 && fresh.snapshot().ok > 20, {
    timeoutMs: 10_000,
    what: 'load flowing',
  });
  for (let gen = 2; gen <= 6; gen++) {
    writeFileSync(versionFile, String(gen));
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('generation active', { gen }, 20_000);
    await baton.waitForLogMsg('generation retired', { gen: gen - 1 }, 20_000);
    try {
      await waitForVersion(port, String(gen), 5000);
    } catch (error) {
      // Say what the master saw: a refused connection means nobody held the socket listening.
      throw new Error(`${(error as Error).message}\n--- baton output ---\n${baton.output.slice(-6000)}`);
    }
  }
  const reports = await Promise.all([keepAlive.stop(), fresh.stop()]);
  const errors = reports.flatMap((report) => report.errors);
  if (errors.length > 0) {
    // A request lost across a reload: say what the master saw around it (once seen: a 10 s timeout).
    throw new Error(
      `${errors.length} request(s) failed: ${errors.slice(0, 5).join('; ')}\n--- baton output ---\n${baton.output.slice(-8000)}`,
    );
  }
  return reports;
}

function python(): string[] {
  return ['python3', PYTHON_SERVER];
}

describe('a Python server written for systemd socket activation', () => {
  test('runs unchanged, says ready on BATON_NOTIFY_FD, and reloads five times under load with zero failed requests', async () => {
    const { baton, port } = await start('notify', python());
    expect(baton.logs.filter((entry) => entry.msg === 'worker ready').map((entry) => entry.via)).toEqual([
      'notify',
      'notify',
    ]);
    const { body } = await httpGetJson(port);
    expect(body).toMatchObject({ version: '1', lang: 'python' });
    const reports = await fiveReloadsUnderLoad(baton, port);
    for (const report of reports) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
    }
  });

  test('with no readiness code at all, --ready delay:1s promotes it after a second, and reloads lose nothing', async () => {
    const { baton, port } = await start('delay:1s', python(), { SAY_READY: '0' });
    const ready = baton.logs.find((entry) => entry.msg === 'worker ready');
    expect(ready).toMatchObject({ via: 'delay' });
    expect(ready?.durationMs as number).toBeGreaterThanOrEqual(1000);
    const reports = await fiveReloadsUnderLoad(baton, port);
    for (const report of reports) expect(report.failed).toBe(0);
  });

  test('--ready ipc ignores the notify pipe: a worker that only writes READY=1 never becomes ready', async () => {
    const baton = startBaton(
      [
        'start',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--ready',
        'ipc',
        '--ready-timeout',
        '1s',
        '--',
        ...python(),
      ],
      { env: { APP_VERSION_FILE: versionFile } },
    );
    expect((await baton.waitForExit(15_000)).exitCode).toBe(4);
    // The advice fits any language, and names the worker by its index.
    expect(baton.logs.map((entry) => String(entry.msg))).toContainEqual(
      expect.stringContaining(
        "did not say ready within 1000 ms (worker 0 not ready): a worker says ready with the child API's ready(), process.send('ready') or READY=1 on the pipe in $BATON_NOTIFY_FD, or is taken as ready once it waits for connections on a listener",
      ),
    );
  });
});

describe('--ready poll: readiness seen from outside, for programs that say nothing', () => {
  test('Python http.server (poll()) with no readiness code: ready once it waits on the socket; five reloads, zero failed', async () => {
    const { baton, port } = await start('poll', python(), { SAY_READY: '0' });
    expect(baton.logs.filter((entry) => entry.msg === 'worker ready').map((entry) => entry.via)).toEqual([
      'poll',
      'poll',
    ]);
    const reports = await fiveReloadsUnderLoad(baton, port);
    for (const report of reports) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
    }
  });

  test('the default --ready auto watches a program that is not Node too: an unmodified Python server needs no flag', async () => {
    const baton = startBaton(['start', '--listen', 'http=tcp://127.0.0.1:0', '--', ...python()], {
      env: { APP_VERSION_FILE: versionFile, SAY_READY: '0' },
    });
    const port = await baton.listenPort('http');
    await baton.waitForLogMsg('generation active', { gen: 1 }, 15_000);
    expect(baton.logs.find((entry) => entry.msg === 'worker ready')).toMatchObject({ via: 'poll' });
    expect((await httpGetJson(port)).body).toMatchObject({ lang: 'python' });
  });

  test('Python asyncio (epoll) and a Node server that never says ready are seen polling', async () => {
    const node = join(dir, 'silent.cjs');
    writeFileSync(node, "require('node:http').createServer((q, s) => s.end('{}')).listen({ fd: 3 });\n");
    for (const command of [
      ['python3', join(REPO_ROOT, 'test', 'fixtures', 'asyncio_http.py')],
      [process.execPath, node],
    ]) {
      const { baton, port } = await start('poll', command);
      expect(baton.logs.find((entry) => entry.msg === 'worker ready')).toMatchObject({ via: 'poll' });
      expect((await httpGetJson(port)).status).toBe(200);
      await killAll();
    }
  });

  test('a worker that never listens is never taken for ready', async () => {
    const baton = startBaton([
      'start',
      '--listen',
      'tcp://127.0.0.1:0',
      '--ready',
      'poll',
      '--ready-timeout',
      '1s',
      '--',
      process.execPath,
      '-e',
      'setInterval(() => {}, 1000)',
    ]);
    expect((await baton.waitForExit(15_000)).exitCode).toBe(4);
  });
});

describe('a Node server with no baton import', () => {
  test('server.listen({ fd: 3 }) and process.send("ready"): reloads with zero failed requests', async () => {
    const script = join(dir, 'plain.cjs');
    writeFileSync(
      script,
      `const http = require('node:http');
const fs = require('node:fs');
const version = fs.readFileSync(process.env.APP_VERSION_FILE, 'utf8').trim();
const server = http.createServer((req, res) => res.end(JSON.stringify({ version, pid: process.pid })));
server.listen({ fd: 3 }, () => process.send('ready'));
process.on('SIGTERM', () => { server.close(() => process.exit(0)); });
`,
    );
    const { baton, port } = await start('auto', [process.execPath, script]);
    const fresh = httpLoad({
      port,
      keepAlive: false,
      concurrency: 2,
      maxRequests: 100_000,
      maxDurationMs: 60_000,
    });
    for (let gen = 2; gen <= 4; gen++) {
      writeFileSync(versionFile, String(gen));
      baton.signal('SIGUSR2');
      await baton.waitForLogMsg('generation retired', { gen: gen - 1 }, 20_000);
      await waitForVersion(port, String(gen), 5000);
    }
    const report = await fresh.stop();
    expect(report.errors).toEqual([]);
    expect(report.failed).toBe(0);
  });
});

describe('connections seen from outside', () => {
  test('a program that stops accepting on SIGTERM but never exits is finished once its last connection closes', async () => {
    const script = join(dir, 'lingering.cjs');
    writeFileSync(
      script,
      `const net = require('node:net');
const server = net.createServer((socket) => socket.on('data', (data) => socket.write(data)));
server.listen({ fd: 3 });
process.on('SIGTERM', () => server.close()); // stops accepting, then lingers forever
setInterval(() => {}, 1000);
`,
    );
    const { baton, port } = await start('poll', [process.execPath, script]);
    const client = await new Promise<Socket>((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => resolve(socket));
      socket.on('error', reject);
    });
    // The connection lands on one of the two workers; the other has none.
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('generation active', { gen: 2 }, 15_000);
    await baton.waitForLog(
      (entry) =>
        entry.msg === 'worker finished: it no longer accepts and holds no connection' && entry.gen === 1,
      10_000,
      'the idle old worker finished',
    );
    expect(baton.logs.some((entry) => entry.msg === 'generation retired' && entry.gen === 1)).toBe(false);
    client.destroy();
    // Finished by the master, not killed at the drain deadline (30 s).
    const retired = await baton.waitForLogMsg('generation retired', { gen: 1 }, 20_000);
    expect(retired.forced).toBe(false);
  });
});

describe('status shows connections for workers that do not report them', () => {
  test('a Python worker holding keep-alive connections: counted in /proc, marked observed', async () => {
    const runtime = mkdtempSync(join(tmpdir(), 'baton-run-'));
    try {
      const { port } = await start('notify', python(), { XDG_RUNTIME_DIR: runtime });
      const sockets = await Promise.all(
        [0, 1, 2].map(
          () =>
            new Promise<Socket>((resolve, reject) => {
              const socket = connect(port, '127.0.0.1', () => resolve(socket));
              socket.on('error', reject);
            }),
        ),
      );
      try {
        const status = await waitFor(
          async () => {
            const run = startBaton(['status', '--json'], { env: { XDG_RUNTIME_DIR: runtime } });
            await run.waitForExit(10_000);
            const snapshot = JSON.parse(run.output) as {
              generations: Array<{
                workers: Array<{ connections?: number; connectionsSeen?: string; state: string }>;
              }>;
            };
            const workers = snapshot.generations.flatMap((g) => g.workers).filter((w) => w.state === 'ready');
            const total = workers.reduce((sum, w) => sum + (w.connections ?? 0), 0);
            return total === 3 ? workers : undefined;
          },
          { timeoutMs: 10_000, intervalMs: 500, what: 'status counting 3 connections' },
        );
        expect(status.every((worker) => worker.connectionsSeen === 'observed')).toBe(true);
      } finally {
        for (const socket of sockets) socket.destroy();
      }
    } finally {
      rmSync(runtime, { recursive: true, force: true });
    }
  });
});
