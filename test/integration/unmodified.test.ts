/**
 * Node apps as they are (issue #15): Express 5, Fastify 5 and plain node:http that listen on
 * `process.env.PORT || 3000`, with no line of baton in them, reload under load without a failed
 * request through the preload; the same Express app behind `npm start`, whose tree never outlives
 * the master; and the one-line diagnostics for apps that baton cannot serve.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { httpGetJson, httpLoad, type LoadReport, waitForVersion } from '../helpers/load.js';
import {
  type BatonProcess,
  descendants,
  killAll,
  processAlive,
  REPO_ROOT,
  startBaton,
} from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

const FIXTURES = join(REPO_ROOT, 'test', 'fixtures', 'unmodified');
/** A response may arrive this long after the log line that says its worker's generation retired. */
const RETIRED_SLACK_MS = 250;

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

/**
 * `reloads` reloads with a version bump each, under keep-alive and new-connection load. Returns both
 * reports (with timelines) and, for each generation, when (ms since the load started) the log said
 * that the generation before it retired.
 */
async function reloadsUnderLoad(baton: BatonProcess, port: number, reloads: number) {
  const loadStartedAt = performance.now();
  const load = (keepAlive: boolean) =>
    httpLoad({
      port,
      keepAlive,
      concurrency: 2,
      maxRequests: 100_000,
      maxDurationMs: 120_000,
      recordTimeline: true,
    });
  const keepAlive = load(true);
  const fresh = load(false);
  await waitFor(() => keepAlive.snapshot().ok > 20 && fresh.snapshot().ok > 20, {
    timeoutMs: 10_000,
    what: 'load flowing',
  });
  const retiredAt = new Map<number, number>();
  for (let gen = 2; gen <= reloads + 1; gen++) {
    writeFileSync(versionFile, String(gen));
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('generation active', { gen }, 20_000);
    await baton.waitForLogMsg('generation retired', { gen: gen - 1 }, 20_000);
    retiredAt.set(gen, performance.now() - loadStartedAt);
    await waitForVersion(port, String(gen), 5000);
  }
  const reports = await Promise.all([keepAlive.stop(), fresh.stop()]);
  return { reports, retiredAt };
}

/** Responses of an older version that arrived after the generation serving it had retired. */
function staleAnswers(report: LoadReport, retiredAt: Map<number, number>): string[] {
  return (report.byTime ?? []).flatMap(({ t, version }) => {
    const newest = Math.max(
      1,
      ...[...retiredAt].filter(([, at]) => t > at + RETIRED_SLACK_MS).map(([gen]) => gen),
    );
    return Number(version) < newest
      ? [`version ${version} at ${t} ms, after generation ${newest} took over`]
      : [];
  });
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
      const { reports, retiredAt } = await reloadsUnderLoad(baton, port, 5);
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
    const { reports, retiredAt } = await reloadsUnderLoad(baton, port, 3);
    for (const report of reports) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
      expect(staleAnswers(report, retiredAt)).toEqual([]);
    }
  }, 120_000);
});

describe('the same Express app as `npm start`', () => {
  const npmStart = ['npm', 'start'];
  const cwd = join(FIXTURES, 'npm-start');

  test('gets the sockets through npm and sh, reloads under load with 0 failed, and stops with its whole tree', async () => {
    const { baton, port } = await start(npmStart, { cwd });
    const ready = baton.logs.filter((entry) => entry.msg === 'worker ready');
    expect(ready.map((entry) => entry.via)).toEqual(['notify', 'notify']);
    const tree = descendants(baton.pid);
    // npm, the shell it starts and node, for each of the two workers.
    expect(tree.length).toBeGreaterThanOrEqual(6);
    const { reports, retiredAt } = await reloadsUnderLoad(baton, port, 3);
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
    const tree = descendants(baton.pid);
    expect(tree.length).toBeGreaterThanOrEqual(3);
    expect((await baton.waitForExit(20_000)).exitCode).toBe(4);
    expect(tree.filter(processAlive)).toEqual([]);
  }, 60_000);

  test('within 5 s of a SIGKILL to the master, npm, the shell and node are all gone', async () => {
    const { baton } = await start(npmStart, { cwd });
    const tree = descendants(baton.pid);
    expect(tree.length).toBeGreaterThanOrEqual(6);
    process.kill(baton.pid, 'SIGKILL');
    await waitFor(() => tree.every((pid) => !processAlive(pid)), {
      timeoutMs: 5000,
      what: () => `every process of the tree to be gone (alive: ${tree.filter(processAlive).join(', ')})`,
    });
  }, 60_000);
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
    expect((failed.time as number) - (starting.time as number)).toBeLessThan(2000);
    expect((await baton.waitForExit(10_000)).exitCode).toBe(4);
    const line = baton.output.split('\n').find((each) => each.includes('listens on port 3000'));
    expect(line).toContain('worker 0 of generation 1');
    expect(line).toContain(`http (tcp://127.0.0.1:${port})`);
    expect(line).toContain(`PORT=${port}`);
  }, 30_000);

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
    expect(String(warning.msg)).toContain('killed by SIGTERM with 1 connection(s) open');
    expect(await slow).toBeInstanceOf(Error);
  }, 60_000);
});
