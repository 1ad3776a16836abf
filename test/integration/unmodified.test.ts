/**
 * Node apps as they are (issue #15): Express 5, Fastify 5 and plain node:http that listen on
 * `process.env.PORT || 3000`, with no line of baton in them, reload under load without a failed
 * request through the preload; the same Express app behind `npm start`, whose tree never outlives
 * the master, and in TypeScript behind `npx tsx`; and the one-line diagnostics for apps that baton
 * cannot serve, with the preload and without it.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { httpGetJson } from '../helpers/load.js';
import { descendants, killAll, processAlive, REPO_ROOT, startBaton } from '../helpers/processes.js';
import { reloadsUnderLoad, staleAnswers } from '../helpers/reloads.js';
import { waitFor } from '../helpers/wait.js';

const FIXTURES = join(REPO_ROOT, 'test', 'fixtures', 'unmodified');

let dir: string;
let versionFile: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'baton-unmodified-'));
  versionFile = join(dir, 'VERSION');
  writeFileSync(versionFile, '1');
});

afterEach(async () => {
  await killAll();
  rmSync(dir, { recursive: true, force: true });
});

/** The environment of a test master: the app's version file, and no PORT of the test runner's. */
function appEnv(extra: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return { APP_VERSION_FILE: versionFile, PORT: undefined, ...extra };
}

async function start(
  command: string[],
  { cwd, flags = ['--workers', '2'] }: { cwd?: string; flags?: string[] } = {},
) {
  const baton = startBaton(['start', '--listen', 'http=tcp://127.0.0.1:0', ...flags, '--', ...command], {
    env: appEnv(),
    ...(cwd ? { cwd } : {}),
  });
  const port = await baton.listenPort('http');
  await baton.waitForLogMsg('generation active', { gen: 1 }, 20_000);
  return { baton, port };
}

describe('an unmodified app that listens on process.env.PORT || 3000', () => {
  const apps: Array<[string, string[]]> = [
    ['Express 5', [process.execPath, join(FIXTURES, 'express', 'server.js')]],
    ['Fastify 5', [process.execPath, join(FIXTURES, 'fastify', 'server.mjs')]],
    ['plain node:http', [process.execPath, join(FIXTURES, 'plain', 'server.js')]],
  ];

  test.each(apps)(
    '%s gets baton’s socket, is ready once it listens, and reloads five times under load with 0 failed requests',
    async (_name, command) => {
      const { baton, port } = await start(command);
      const ready = baton.logs.filter((entry) => entry.msg === 'worker ready');
      expect(ready.map((entry) => entry.via)).toEqual(['listening', 'listening']);
      expect((await httpGetJson(port)).body).toMatchObject({ version: '1' });
      const { reports, retiredAt } = await reloadsUnderLoad(baton, port, versionFile, 5);
      for (const report of reports) {
        expect(report.errors).toEqual([]);
        expect(report.failed).toBe(0);
        expect(report.versions['6']).toBeGreaterThan(0);
        expect(staleAnswers(report, retiredAt)).toEqual([]);
      }
      baton.signal('SIGTERM');
      expect(await baton.waitForExit(15_000)).toEqual({ exitCode: 0, signal: null });
    },
    150_000,
  );
});

describe('a PM2 wait_ready app: listen(PORT), warm up, then process.send("ready")', () => {
  test('under --ready ipc its own ready decides when the old version drains; reloads under load with 0 failed', async () => {
    const { baton, port } = await start([process.execPath, join(FIXTURES, 'wait-ready', 'server.js')], {
      flags: ['--workers', '2', '--ready', 'ipc'],
    });
    const ready = baton.logs.filter((entry) => entry.msg === 'worker ready');
    expect(ready.map((entry) => entry.via)).toEqual(['ipc', 'ipc']);
    expect(ready.every((entry) => (entry.durationMs as number) >= 1000)).toBe(true);
    const { reports, retiredAt } = await reloadsUnderLoad(baton, port, versionFile, 3);
    for (const report of reports) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
      expect(staleAnswers(report, retiredAt)).toEqual([]);
    }
  }, 120_000);
});

/** The descendants of `pid`, once there are at least `count` of them (/proc is read, not waited on). */
/** The parent of process `pid`, from /proc. */
function parentOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
}

function treeOf(pid: number, count: number): Promise<number[]> {
  let last: number[] = [];
  return waitFor(
    () => {
      last = descendants(pid);
      return last.length >= count && last;
    },
    { timeoutMs: 5000, what: () => `${count} processes under ${pid} (have ${last.join(', ') || 'none'})` },
  );
}

describe('the same Express app as `npm start`', () => {
  const npmStart = ['npm', 'start'];
  const cwd = join(FIXTURES, 'npm-start');

  test('gets the sockets through npm and sh, reloads under load with 0 failed, and stops with its whole tree', async () => {
    const { baton, port } = await start(npmStart, { cwd });
    const ready = baton.logs.filter((entry) => entry.msg === 'worker ready');
    expect(ready.map((entry) => entry.via)).toEqual(['notify', 'notify']);
    // npm, the shell it starts and node, for each of the two workers.
    const tree = await treeOf(baton.pid, 6);
    const { reports, retiredAt } = await reloadsUnderLoad(baton, port, versionFile, 3);
    for (const report of reports) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
      expect(staleAnswers(report, retiredAt)).toEqual([]);
    }
    const now = descendants(baton.pid);
    baton.signal('SIGTERM');
    expect(await baton.waitForExit(15_000)).toEqual({ exitCode: 0, signal: null });
    expect([...tree, ...now].filter(processAlive)).toEqual([]);
  }, 150_000);

  test('a failed start leaves nothing of the tree behind', async () => {
    // --ready ipc waits for the app's own process.send('ready'), which cannot pass npm: never ready.
    const baton = startBaton(
      [
        'start',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--ready',
        'ipc',
        '--ready-timeout',
        '4s',
        '--',
        ...npmStart,
      ],
      { env: appEnv(), cwd },
    );
    const port = await baton.listenPort('http');
    // The app serves (node behind sh behind npm) before the deadline fails the start.
    await waitFor(async () => (await httpGetJson(port).catch(() => undefined))?.body?.version === '1', {
      timeoutMs: 15_000,
      what: 'the app behind npm to answer',
    });
    const tree = await treeOf(baton.pid, 3);
    expect((await baton.waitForExit(20_000)).exitCode).toBe(4);
    expect(tree.filter(processAlive)).toEqual([]);
  }, 60_000);

  test('within 5 s of a SIGKILL to the master, npm, the shell and node are all gone', async () => {
    const { baton } = await start(npmStart, { cwd });
    const tree = await treeOf(baton.pid, 6);
    process.kill(baton.pid, 'SIGKILL');
    await waitFor(() => tree.every((pid) => !processAlive(pid)), {
      timeoutMs: 5000,
      what: () => `every process of the tree to be gone (alive: ${tree.filter(processAlive).join(', ')})`,
    });
  }, 60_000);
});

describe('an Express app in TypeScript as `npx tsx server.ts`', () => {
  test('gets the sockets through npx, sh and tsx, reloads under load with 0 failed, and stops with its whole tree', async () => {
    // tsx as a project has it (node_modules/.bin, which npx looks in first), pinned in devDependencies.
    const baton = startBaton(
      ['start', '--listen', 'http=tcp://127.0.0.1:0', '--workers', '2', '--', 'npx', 'tsx', 'server.ts'],
      {
        env: appEnv({ PATH: `${join(REPO_ROOT, 'node_modules', '.bin')}:${process.env.PATH}` }),
        cwd: join(FIXTURES, 'tsx'),
      },
    );
    const port = await baton.listenPort('http');
    await baton.waitForLogMsg('generation active', { gen: 1 }, 30_000);
    const ready = baton.logs.filter((entry) => entry.msg === 'worker ready');
    expect(ready.map((entry) => entry.via)).toEqual(['notify', 'notify']);
    // npm exec, the shell it starts, tsx and the node that runs server.ts, for each of the two workers.
    const tree = await treeOf(baton.pid, 8);
    // The descriptor channel is the worker's (npm's) alone: where tsx gives node an IPC channel, that
    // would sit at the number BATON_FD_CHANNEL names.
    const withChannel = tree.filter((pid) =>
      readFileSync(`/proc/${pid}/environ`, 'utf8')
        .split('\0')
        .some((pair) => pair.startsWith('BATON_FD_CHANNEL=')),
    );
    expect(withChannel.sort()).toEqual(tree.filter((pid) => parentOf(pid) === baton.pid).sort());
    const { reports, retiredAt } = await reloadsUnderLoad(baton, port, versionFile, 3);
    for (const report of reports) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
      expect(staleAnswers(report, retiredAt)).toEqual([]);
    }
    const now = descendants(baton.pid);
    baton.signal('SIGTERM');
    expect(await baton.waitForExit(15_000)).toEqual({ exitCode: 0, signal: null });
    expect([...tree, ...now].filter(processAlive)).toEqual([]);
  }, 150_000);
});

describe('what baton cannot serve, said early in one line', () => {
  test('an app that listens on 3000 while baton listens elsewhere fails its start in under 2 s, naming the port and the fix', async () => {
    const baton = startBaton(
      [
        'start',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--',
        process.execPath,
        join(FIXTURES, 'elsewhere', 'server.js'),
      ],
      { env: appEnv() },
    );
    const port = await baton.listenPort('http');
    const starting = await baton.waitForLogMsg('generation starting', { gen: 1 });
    const failed = await baton.waitForLog(
      (entry) => String(entry.msg).startsWith('start failed'),
      10_000,
      'the start to fail',
    );
    // Said at once by the preload, not at --ready-timeout (30 s): how fast is the bench's to measure.
    expect((failed.time as number) - (starting.time as number)).toBeLessThan(10_000);
    expect((await baton.waitForExit(10_000)).exitCode).toBe(4);
    const line = baton.output.split('\n').find((each) => each.includes('listens on port 3000'));
    expect(line).toContain('worker 0 of generation 1');
    expect(line).toContain(`http (tcp://127.0.0.1:${port})`);
    expect(line).toContain(`PORT=${port}`);
  }, 30_000);

  test('without the preload (a Python http.server on a port of its own), /proc names the worker and the port in one warning while it starts, and its --ready-timeout failure names them again', async () => {
    const baton = startBaton(
      [
        'start',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--ready-timeout',
        '4s',
        '--',
        'python3',
        '-m',
        'http.server',
        '0',
        '--bind',
        '127.0.0.1',
      ],
      { env: appEnv() },
    );
    const port = await baton.listenPort('http');
    const warned = await baton.waitForLog(
      (entry) => String(entry.msg).includes('of its own'),
      15_000,
      'the warning about a port of its own',
    );
    expect(warned).toMatchObject({ level: 40, worker: 0 });
    const [ownPort] = warned.ports as number[];
    expect(ownPort).not.toBe(port);
    expect(String(warned.msg)).toContain(
      `worker 0 (pid ${warned.pid}) listens on port ${ownPort} of its own, not on baton's http (tcp://127.0.0.1:${port})`,
    );
    // It may be an admin port before a slow start: the warning decides nothing, the deadline does.
    expect(baton.logs.some((entry) => String(entry.msg).startsWith('start failed'))).toBe(false);
    const failed = await baton.waitForLog(
      (entry) => String(entry.msg).startsWith('start failed'),
      15_000,
      'the start to fail at --ready-timeout',
    );
    expect(failed).toMatchObject({ reason: 'listens-elsewhere', worker: 0, ports: [ownPort] });
    expect((await baton.waitForExit(10_000)).exitCode).toBe(4);
  }, 40_000);

  test('a reload to a release that listens on a port of its own is refused at its ready deadline, the port named, and the old version serves on', async () => {
    const script = join(dir, 'server.sh');
    const python = join(REPO_ROOT, 'test', 'fixtures', 'systemd_http.py');
    writeFileSync(script, `exec python3 ${python}\n`);
    const { baton, port } = await start(['sh', script], {
      flags: ['--workers', '1', '--ready-timeout', '4s'],
    });
    writeFileSync(script, 'exec python3 -m http.server 0 --bind 127.0.0.1\n');
    const reload = startBaton(['reload']);
    expect((await reload.waitForExit(30_000)).exitCode).toBe(6);
    const line = reload.output.split('\n').find((each) => each.includes('of its own'));
    expect(line).toMatch(
      new RegExp(
        `Generation 2 failed to start: worker 0 \\(pid \\d+\\) listens on port \\d+ of its own, not on baton's http \\(tcp://127\\.0\\.0\\.1:${port}\\)`,
      ),
    );
    const failed = await baton.waitForLog(
      (entry) => String(entry.msg).startsWith('reload failed'),
      5_000,
      'the master to log the failed reload',
    );
    expect(failed).toMatchObject({ gen: 2, reason: 'listens-elsewhere' });
    expect((await httpGetJson(port)).body).toMatchObject({ version: '1' });
  }, 60_000);

  test('a worker with no drain handler, killed by SIGTERM mid-request, is named in a warning', async () => {
    const { baton, port } = await start([process.execPath, join(FIXTURES, 'no-drain', 'server.js')], {
      flags: ['--no-preload', '--workers', '1'],
    });
    const slow = httpGetJson(port, '/', { timeoutMs: 20_000 }).catch((error: Error) => error);
    // The master counts the connections of a worker that does not report them, once a second.
    await waitFor(
      async () => {
        const status = startBaton(['status', '--json']);
        await status.waitForExit(10_000);
        return /"connections":\s*1\b/.test(status.output);
      },
      { timeoutMs: 10_000, what: 'the master to see the slow request' },
    );
    baton.signal('SIGUSR2');
    const warning = await baton.waitForLog(
      (entry) => String(entry.msg).includes('does not drain'),
      15_000,
      'the drain warning',
    );
    expect(warning).toMatchObject({ level: 40, gen: 1, worker: 0 });
    expect(String(warning.msg)).toContain(
      'ended by SIGTERM itself while 1 connection(s) were last seen open',
    );
    expect(await slow).toBeInstanceOf(Error);
  }, 60_000);
});
