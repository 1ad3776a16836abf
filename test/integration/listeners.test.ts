/**
 * Listeners other than TCP: Unix sockets (with mode, stale files and live
 * owners), UDP, and sockets handed over by a parent (systemd socket activation).
 */
import dgram from 'node:dgram';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { httpGetJson } from '../helpers/load.js';
import {
  type AppDir,
  BATON_BIN,
  killAll,
  makeAppDir,
  REPO_ROOT,
  startBaton,
  startNode,
  startProcess,
} from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

const NODE = process.execPath;
let app: AppDir;
let dir: string;

beforeEach(() => {
  app = makeAppDir();
  dir = mkdtempSync(join(tmpdir(), 'baton-sock-'));
});

afterEach(async () => {
  await killAll();
  app.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

/** GET / over a Unix socket, on a new connection. */
function getOverUnix(socketPath: string): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const request = http.get({ socketPath, path: '/', agent: false }, (response) => {
      let text = '';
      response.on('data', (chunk) => {
        text += chunk;
      });
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }));
    });
    request.setTimeout(5000, () => request.destroy(new Error('timeout')));
    request.on('error', reject);
  });
}

describe('Unix socket listeners', () => {
  test('serve across reloads with no failed request, with the mode asked for; the file goes away at stop', async () => {
    const path = join(dir, 'http.sock');
    const baton = startBaton(
      [
        'start',
        '--listen',
        `http=unix:${path}?mode=600`,
        '--listen',
        'game=tcp://127.0.0.1:0',
        '--workers',
        '2',
        '--',
        NODE,
        'server.js',
      ],
      { cwd: app.dir },
    );
    await baton.waitForLogMsg('generation active', { gen: 1 });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    let failures = 0;
    let served = 0;
    let running = true;
    const loop = (async () => {
      const deadline = Date.now() + 30_000;
      while (running && Date.now() < deadline && served < 50_000) {
        try {
          await getOverUnix(path);
          served++;
        } catch {
          failures++;
        }
      }
    })();
    for (let gen = 2; gen <= 3; gen++) {
      app.setVersion(`u${gen}`);
      baton.signal('SIGUSR2');
      await baton.waitForLogMsg('generation retired', { gen: gen - 1 }, 20_000);
    }
    expect((await getOverUnix(path)).body).toMatchObject({ version: 'u3' });
    running = false;
    await loop;
    expect(failures).toBe(0);
    expect(served).toBeGreaterThan(0);
    baton.signal('SIGTERM');
    expect((await baton.waitForExit(15_000)).exitCode).toBe(0);
    expect(existsSync(path)).toBe(false);
  });

  test('a stale socket file left by a crash is replaced; one that a live process answers on is refused', async () => {
    const path = join(dir, 'stale.sock');
    // A process that listens on the path and dies by SIGKILL leaves the file behind.
    const owner = startNode([
      '-e',
      `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`,
    ]);
    await waitFor(() => owner.output.includes('up') || undefined, {
      timeoutMs: 5000,
      what: 'the first owner listening',
    });

    const refused = startBaton(['start', '--listen', `http=unix:${path}`, '--', NODE, '-e', '']);
    const status = await refused.waitForExit(10_000);
    expect(status.exitCode).toBe(3);
    expect(refused.output.trim()).toMatch(/^baton: Cannot listen on .*another process answers on/);

    await owner.killTree();
    expect(statSync(path).isSocket()).toBe(true);
    const baton = startBaton(
      [
        'start',
        '--listen',
        `http=unix:${path}`,
        '--listen',
        'game=tcp://127.0.0.1:0',
        '--',
        NODE,
        'server.js',
      ],
      { cwd: app.dir },
    );
    await baton.waitForLogMsg('generation active', { gen: 1 });
    expect((await getOverUnix(path)).status).toBe(200);
  });
});

describe('a Unix listener that cannot be had', () => {
  test('in a folder that does not exist: one line, exit 3, nothing started', async () => {
    const path = join(dir, 'missing', 'app.sock');
    const baton = startBaton([
      'start',
      '--listen',
      `http=unix:${path}`,
      '--',
      NODE,
      '-e',
      'setInterval(() => {}, 1000)',
    ]);
    expect((await baton.waitForExit(10_000)).exitCode).toBe(3);
    expect(baton.output.trim()).toBe(
      `baton: Cannot listen on http=unix:${path}: the directory of ${path} does not exist.`,
    );
  });
});

describe('UDP listeners', () => {
  test('after the reload the new generation answers, and no datagram is answered twice', async () => {
    const baton = startBaton([
      'start',
      '--listen',
      'udp=udp://127.0.0.1:0',
      '--workers',
      '2',
      '--',
      NODE,
      join(REPO_ROOT, 'test', 'fixtures', 'udp_echo.mjs'),
    ]);
    const port = await baton.listenPort('udp');
    await baton.waitForLogMsg('generation active', { gen: 1 });
    const workersOf = (gen: number) =>
      new Set(
        baton.logs
          .filter((entry) => entry.msg === 'worker ready' && entry.gen === gen)
          .map((entry) => String(entry.pid)),
      );

    const client = dgram.createSocket('udp4');
    const answeredBy = new Map<number, string[]>();
    client.on('message', (message) => {
      const [, pid, seq] = String(message).split(' ');
      answeredBy.set(Number(seq), [...(answeredBy.get(Number(seq)) ?? []), pid as string]);
    });
    await new Promise<void>((resolve) => client.bind(0, '127.0.0.1', resolve));
    let seq = 0;
    const sender = setInterval(() => client.send(String(seq++), port, '127.0.0.1'), 2);
    try {
      await waitFor(() => answeredBy.size > 50 || undefined, {
        timeoutMs: 5000,
        what: 'answers from generation 1',
      });
      baton.signal('SIGUSR2');
      await baton.waitForLogMsg('generation retired', { gen: 1 }, 20_000);
      const firstAfter = seq;
      await waitFor(() => answeredBy.has(firstAfter + 50) || undefined, {
        timeoutMs: 5000,
        what: 'answers after the reload',
      });
      clearInterval(sender);
      const [oldWorkers, newWorkers] = [workersOf(1), workersOf(2)];
      expect(newWorkers.size).toBe(2);
      expect([...answeredBy.values()].filter((pids) => pids.length > 1)).toEqual([]);
      const after = [...answeredBy.entries()]
        .filter(([n]) => n >= firstAfter)
        .map(([, pids]) => pids[0] as string);
      expect(after.every((pid) => newWorkers.has(pid))).toBe(true);
      expect([...answeredBy.values()].some(([pid]) => oldWorkers.has(pid as string))).toBe(true);
    } finally {
      clearInterval(sender);
      client.close();
    }
  });
});

describe('sockets from systemd (LISTEN_FDS given to baton)', () => {
  test('baton adopts the socket it was handed, serves on it and binds nothing of its own', async () => {
    const activator = join(REPO_ROOT, 'test', 'fixtures', 'socket_activate.py');
    const baton = startProcess(
      'python3',
      [activator, NODE, BATON_BIN, 'start', '--listen', 'game=tcp://127.0.0.1:0', '--', NODE, 'server.js'],
      { cwd: app.dir },
    );
    const activated = await waitFor(() => /activated port (\d+)/.exec(baton.output)?.[1], {
      timeoutMs: 5000,
      what: 'the activator binding a port',
    });
    const bound = await baton.waitForLogMsg('listener bound', { listener: 'http' });
    expect(bound).toMatchObject({ origin: 'inherited', port: Number(activated) });
    await baton.waitForLogMsg('generation active', { gen: 1 });
    expect((await httpGetJson(Number(activated))).body).toMatchObject({ version: '1.0.0', generation: 1 });
    app.setVersion('2.0.0');
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('generation retired', { gen: 1 }, 20_000);
    expect((await httpGetJson(Number(activated))).body).toMatchObject({ version: '2.0.0' });
  });
});
