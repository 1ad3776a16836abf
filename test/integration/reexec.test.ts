/**
 * `baton reexec` (docs/reexec.md): the master replaces its own program with another baton on disk,
 * under keep-alive and new-connection load with open game sessions, keeping its pid, its sockets and
 * its workers; a broken new baton is refused and nothing changes.
 */
import {
  cpSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import type { MasterStatus } from '../../supervisor/control/status.js';
import { flowingLoads, type GameSession, gameSession, stopLoads } from '../helpers/load.js';
import {
  type AppDir,
  type BatonProcess,
  killAll,
  makeAppDir,
  REPO_ROOT,
  startBaton,
} from '../helpers/processes.js';
import { pythonServers } from '../helpers/python.js';
import { waitFor } from '../helpers/wait.js';

const NODE = process.execPath;
/** This file's masters, named: the user's ~/.baton may hold another master. */
const NAME = 'reexec-test';
/** Open game sessions across the re-execs. */
const SESSIONS = 50;
/** Servers nobody here wrote: an Express app as its authors wrote it, gunicorn from PyPI (pinned). */
const UNMODIFIED = join(REPO_ROOT, 'test', 'fixtures', 'unmodified');
const PYTHON_FIXTURES = join(REPO_ROOT, 'test', 'fixtures', 'python');
const servers = pythonServers();

let app: AppDir | undefined;
const folders: string[] = [];

afterEach(async () => {
  await killAll();
  app?.cleanup();
  app = undefined;
  for (const folder of folders.splice(0)) rmSync(folder, { recursive: true, force: true });
});

function tempFolder(prefix: string): string {
  const folder = mkdtempSync(join(tmpdir(), prefix));
  folders.push(folder);
  return folder;
}

/**
 * A copy of this baton (bin/, dist/, package.json; node_modules linked) that says `version`, with
 * `edit` applied to its files: the "new baton on disk" of an upgrade. Returns its entry point.
 */
function batonCopy(version: string, edit: (root: string) => void = () => {}): string {
  const root = tempFolder('baton-copy-');
  cpSync(join(REPO_ROOT, 'bin'), join(root, 'bin'), { recursive: true });
  cpSync(join(REPO_ROOT, 'dist'), join(root, 'dist'), { recursive: true });
  symlinkSync(join(REPO_ROOT, 'node_modules'), join(root, 'node_modules'));
  const manifest = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as Record<
    string,
    unknown
  >;
  writeFileSync(join(root, 'package.json'), JSON.stringify({ ...manifest, version }));
  edit(root);
  return join(root, 'bin', 'baton.js');
}

/** The inodes of the sockets process `pid` holds, besides its stdio (which workers inherit by design). */
function socketInodes(pid: number): Set<string> {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    if (Number(fd) <= 2) continue;
    try {
      const target = readlinkSync(`/proc/${pid}/fd/${fd}`);
      if (target.startsWith('socket:')) inodes.add(target);
    } catch {
      // closed meanwhile
    }
  }
  return inodes;
}

/**
 * A copy of this baton whose trial waits for the test's word (`open`), so that the test can act while
 * a re-exec runs (the gate is a file; the trial checks for it every 20 ms).
 */
function gatedCopy(version: string): { program: string; open: () => void } {
  const gate = join(tempFolder('baton-gate-'), 'go');
  const program = batonCopy(version, (root) => {
    const file = join(root, 'dist', 'supervisor', 'resume.js');
    const source = readFileSync(file, 'utf8');
    const entry = 'export async function tryState(file) {';
    expect(source).toContain(entry);
    writeFileSync(
      file,
      source.replace(
        entry,
        `${entry}\n  const { existsSync } = await import('node:fs');\n  while (!existsSync(${JSON.stringify(gate)})) await new Promise((resolve) => setTimeout(resolve, 20));`,
      ),
    );
  });
  return { program, open: () => writeFileSync(gate, '') };
}

async function statusOf(env: Record<string, string>): Promise<MasterStatus> {
  const run = startBaton(['status', '--json', '--name', NAME], { env });
  expect((await run.waitForExit(10_000)).exitCode).toBe(0);
  return JSON.parse(run.output) as MasterStatus;
}

/** The live workers' pids, generation by generation. */
function workerPids(status: MasterStatus): number[] {
  return status.generations.flatMap((generation) =>
    generation.workers.filter((worker) => worker.state !== 'exited').map((worker) => worker.pid as number),
  );
}

async function startApp(
  env: Record<string, string>,
  {
    flags = ['--workers', '2'],
    appEnv = {},
    config,
  }: { flags?: string[]; appEnv?: Record<string, string>; config?: object } = {},
): Promise<{ baton: BatonProcess; http: number; game: number }> {
  app = makeAppDir();
  if (config) {
    app.writeFile('baton.json', JSON.stringify(config));
    flags = [...flags, '--config', 'baton.json'];
  }
  const baton = startBaton(
    [
      'start',
      '--name',
      NAME,
      '--listen',
      'http=tcp://127.0.0.1:0',
      '--listen',
      'game=tcp://127.0.0.1:0',
      ...flags,
      '--ready-timeout',
      '20s',
      '--',
      NODE,
      'server.js',
    ],
    { cwd: app.dir, env: { ...env, ...appEnv } },
  );
  const http = await baton.listenPort('http');
  const game = await baton.listenPort('game');
  await baton.waitForLogMsg('generation active', { gen: 1 }, 20_000);
  return { baton, http, game };
}

/** Game sessions, each answering a numbered ping in turn: a session cut or confused fails here. */
class Players {
  private readonly sessions: GameSession[] = [];
  private sent = 0;

  async open(port: number, count: number): Promise<void> {
    for (let i = 0; i < count; i++) this.sessions.push(gameSession(port));
    await Promise.all(this.sessions.map((session) => session.welcome));
  }

  /** One more ping on every session; each must answer its own number. */
  async round(): Promise<void> {
    this.sent++;
    const n = this.sent;
    const answers = await Promise.all(this.sessions.map((session) => session.request(`ping ${n}`)));
    expect(answers).toEqual(this.sessions.map(() => `pong ${n}`));
  }
}

async function reexec(
  env: Record<string, string>,
  program?: string,
): Promise<{ exitCode: number | null; output: string }> {
  const run = startBaton(['reexec', '--name', NAME, ...(program ? ['--program', program] : [])], { env });
  const exit = await run.waitForExit(60_000);
  return { exitCode: exit.exitCode, output: run.output };
}

/**
 * A third-party server under baton: reexec under keep-alive and new-connection load (the workers are
 * the same processes, so nothing may fail), then a reload with a new version: the adopted workers
 * drain the way the server drains.
 */
async function reexecThirdParty(
  command: string[],
  cwd: string,
  { resetsByServer = false } = {},
): Promise<void> {
  const env = { XDG_RUNTIME_DIR: tempFolder('baton-run-') };
  const folder = tempFolder('baton-app-');
  const versionFile = join(folder, 'VERSION');
  writeFileSync(versionFile, '1');
  const baton = startBaton(
    ['start', '--name', NAME, '--listen', 'http=tcp://127.0.0.1:0', '--workers', '2', '--', ...command],
    { cwd, env: { ...env, APP_VERSION_FILE: versionFile } },
  );
  const port = await baton.listenPort('http');
  await baton.waitForLogMsg('generation active', { gen: 1 }, 30_000);
  const loads = await flowingLoads(port);
  const before = await statusOf(env);
  const run = await reexec(env, batonCopy('9.7.0-reexec'));
  expect(run.output).toContain('runs baton 9.7.0-reexec');
  expect(run.exitCode).toBe(0);
  expect(workerPids(await statusOf(env))).toEqual(workerPids(before));
  const duringReexec = await Promise.all(loads.map((load) => load.stop()));
  for (const report of duringReexec) {
    expect(report.errors).toEqual([]);
    expect(report.failed).toBe(0);
  }
  const again = await flowingLoads(port);
  writeFileSync(versionFile, '2');
  const reload = startBaton(['reload', '--name', NAME], { env });
  expect((await reload.waitForExit(60_000)).exitCode).toBe(0);
  await waitFor(async () => ((await statusOf(env)).generations.length === 2 ? true : undefined), {
    timeoutMs: 10_000,
    what: 'generation 2',
  });
  const afterReload = await Promise.all(again.map((load) => load.stop()));
  for (const report of afterReload) {
    expect(report.ok).toBeGreaterThan(0);
    expect(report.versions['2']).toBeGreaterThan(0);
    if (resetsByServer)
      expect({ ...report.failures, reset: 0 }).toEqual({
        refused: 0,
        reset: 0,
        timeout: 0,
        http5xx: 0,
        other: 0,
      });
    else expect(report.failed).toBe(0);
  }
}

describe('baton reexec with servers nobody here wrote', () => {
  test('an Express 5 app as its authors wrote it (the preload gives it the socket): reexec under load, 0 failed; then a reload, 0 failed', async () => {
    await reexecThirdParty([NODE, join(UNMODIFIED, 'express', 'server.js')], UNMODIFIED);
  }, 120_000);

  (servers.bin ? test : test.skip)(
    `gunicorn with 2 workers of its own (LISTEN_FDS, NOTIFY_SOCKET): reexec under load, 0 failed; then a reload, no request refused or timed out${servers.skip ? ` [skipped: ${servers.skip}]` : ''}`,
    async () => {
      // gunicorn's own shutdown resets keep-alive connections it holds (test/integration/python-servers.test.ts).
      const gunicorn = [
        join(servers.bin ?? '', 'gunicorn'),
        '--workers',
        '2',
        '--graceful-timeout',
        '20',
        'wsgi_app:app',
      ];
      await reexecThirdParty(gunicorn, PYTHON_FIXTURES, { resetsByServer: true });
    },
    120_000,
  );
});

describe('baton reexec', () => {
  test('three re-execs into a new baton under load with 50 game sessions: same master pid, same workers, 0 failed, 0 cut; then a reload replaces the adopted workers', async () => {
    const env = { XDG_RUNTIME_DIR: tempFolder('baton-run-') };
    const { baton, http, game } = await startApp(env);
    const loads = await flowingLoads(http);
    const players = new Players();
    await players.open(game, SESSIONS);
    await players.round();
    const before = await statusOf(env);
    expect(before.pid).toBe(baton.pid);
    const pids = workerPids(before);
    expect(pids).toHaveLength(2);

    for (let i = 1; i <= 3; i++) {
      const version = `9.${i}.0-reexec`;
      const run = await reexec(env, batonCopy(version));
      expect(run.output).toContain('tried: baton');
      expect(run.output).toContain(`master ${baton.pid} runs baton ${version}`);
      expect(run.exitCode).toBe(0);
      const after = await statusOf(env);
      expect(after.pid).toBe(baton.pid);
      expect(after.baton?.version).toBe(version);
      expect(after.baton?.reexecs).toBe(i);
      expect(workerPids(after)).toEqual(pids);
      await players.round();
    }
    await baton.waitForLogMsg('reexec: workers adopted', {}, 10_000);

    const reload = startBaton(['reload', '--name', NAME], { env });
    expect((await reload.waitForExit(60_000)).exitCode).toBe(0);
    const reloaded = await statusOf(env);
    expect(reloaded.pid).toBe(baton.pid);
    const fresh = workerPids(reloaded);
    expect(fresh).toHaveLength(2);
    for (const pid of fresh) expect(pids).not.toContain(pid);
    // A worker spawned after the re-execs shares no socket with the master but the two listeners: not
    // the control socket, nor the channels of other workers (kept open across the exec only).
    const masterSockets = socketInodes(baton.pid);
    for (const pid of fresh) {
      const shared = [...socketInodes(pid)].filter((inode) => masterSockets.has(inode));
      expect(shared).toHaveLength(2);
    }
    // The sessions were handed off from the adopted workers to the new ones, still answering in turn.
    await players.round();
    expect(reloaded.sessions.moved).toBeGreaterThanOrEqual(SESSIONS);
    // The reload history crossed the three re-execs.
    expect(reloaded.reloads.map((record) => [record.generation, record.trigger, record.state])).toEqual([
      [1, 'start', 'done'],
      [2, 'reload', 'done'],
    ]);
    expect(await stopLoads(loads)).toEqual({ errors: [], failed: 0, eachServed: true });
  }, 240_000);

  test('reloads asked during a reexec (SIGUSR2, baton reload) wait for it; the new program carries them out and answers the client', async () => {
    const env = { XDG_RUNTIME_DIR: tempFolder('baton-run-') };
    const { baton, http } = await startApp(env);
    const loads = await flowingLoads(http);
    // The new baton's trial waits for the test's word, so that the reloads come while it runs.
    const { program: gated, open } = gatedCopy('9.8.0-reexec');
    const running = startBaton(['reexec', '--name', NAME, '--program', gated], { env });
    await baton.waitForLogMsg('reexec: trying the new program', {}, 20_000);
    baton.signal('SIGUSR2');
    const reload = startBaton(['reload', '--name', NAME], { env });
    await waitFor(
      () =>
        baton.logs.filter((entry) => entry.msg === 'reload waits for the reexec under way').length === 2 ||
        undefined,
      { timeoutMs: 20_000, what: 'both reloads waiting' },
    );
    open();
    expect((await running.waitForExit(60_000)).exitCode).toBe(0);
    const answered = await reload.waitForExit(60_000);
    // The new program starts the SIGUSR2's reload as it adopts the workers (generation 2), then reads
    // the client's, which queues behind it (generation 3), as two reloads in a row always do.
    expect(reload.output).toContain('reload done: generation 3 serves');
    expect(answered.exitCode).toBe(0);
    const status = await statusOf(env);
    expect(status.pid).toBe(baton.pid);
    expect(status.baton?.version).toBe('9.8.0-reexec');
    expect(status.generations.find((generation) => generation.state === 'active')?.id).toBe(3);
    expect(await stopLoads(loads)).toEqual({ errors: [], failed: 0, eachServed: true });
  }, 120_000);

  test('a SIGHUP during a reexec: the new program reads the config file again (workers 2 → 3), as the old one would have', async () => {
    const env = { XDG_RUNTIME_DIR: tempFolder('baton-run-') };
    const { baton, http } = await startApp(env, { flags: [], config: { workers: 2 } });
    const config = join((app as AppDir).dir, 'baton.json');
    const loads = await flowingLoads(http);
    const { program, open } = gatedCopy('9.6.0-reexec');
    const running = startBaton(['reexec', '--name', NAME, '--program', program], { env });
    await baton.waitForLogMsg('reexec: trying the new program', {}, 20_000);
    writeFileSync(config, JSON.stringify({ workers: 3 }));
    baton.signal('SIGHUP');
    await baton.waitForLogMsg('reload waits for the reexec under way', { source: 'SIGHUP' }, 20_000);
    open();
    expect((await running.waitForExit(60_000)).exitCode).toBe(0);
    expect(await baton.waitForLogMsg('generation active', { gen: 2 }, 30_000)).toBeDefined();
    const status = await statusOf(env);
    const active = status.generations.find((generation) => generation.state === 'active');
    expect(active?.id).toBe(2);
    expect(active?.workers.filter((worker) => worker.state === 'ready')).toHaveLength(3);
    expect(status.reloads.at(-1)).toMatchObject({ generation: 2, trigger: 'config' });
    expect(await stopLoads(loads)).toEqual({ errors: [], failed: 0, eachServed: true });
  }, 120_000);

  test('a baton reload following a drain when a reexec executes is answered first (exit 0, the drain not followed across the exec); the adopted draining worker retires after', async () => {
    const env = { XDG_RUNTIME_DIR: tempFolder('baton-run-') };
    // Sessions stay on the version that accepted them: generation 1 drains while one is open.
    const { baton, game } = await startApp(env, {
      flags: ['--workers', '1', '--drain-timeout', '60s'],
      appEnv: { GAME_HANDOFF: 'off' },
    });
    const session = gameSession(game);
    await session.welcome;
    expect(await session.request('ping 1')).toBe('pong 1');
    const reload = startBaton(['reload', '--name', NAME], { env });
    await baton.waitForLogMsg('generation draining', { gen: 1 }, 30_000);
    const run = await reexec(env, batonCopy('9.5.0-reexec'));
    expect(run.exitCode).toBe(0);
    expect((await reload.waitForExit(30_000)).exitCode).toBe(0);
    expect(reload.output).toContain(
      'reload done: generation 2 serves; generation 1 still draining; the master re-executed itself',
    );
    const status = await statusOf(env);
    expect(status.generations.find((generation) => generation.id === 1)?.state).toBe('draining');
    // The session is still served by the adopted, draining worker; when it ends, the worker exits and
    // the new program reaps it and retires its generation.
    expect(await session.request('ping 2')).toBe('pong 2');
    expect(await session.request('quit')).toBe('bye');
    await baton.waitForLogMsg('generation retired', { gen: 1 }, 30_000);
  }, 120_000);

  test('a hot patch survives a reexec: status still lists it, and a worker killed after the reexec comes back patched by the new program', async () => {
    const env = { XDG_RUNTIME_DIR: tempFolder('baton-run-') };
    const { baton, game } = await startApp(env, { flags: ['--workers', '1'] });
    const fix = join(REPO_ROOT, 'test', 'fixtures', 'fix-reward.mjs');
    const inject = startBaton(['inject', '--name', NAME, fix], { env });
    expect((await inject.waitForExit(30_000)).exitCode).toBe(0);
    const first = gameSession(game);
    const { pid } = await first.welcome;
    expect(await first.request('work')).toBe('coins 3');
    expect((await reexec(env, batonCopy('9.4.0-reexec'))).exitCode).toBe(0);
    expect(await first.request('work')).toBe('coins 6');
    const patches = (await statusOf(env)).generations.find((generation) => generation.id === 1)?.patches;
    expect(patches).toEqual([expect.objectContaining({ file: 'fix-reward.mjs', scope: 'generation' })]);

    process.kill(pid, 'SIGKILL');
    await baton.waitForLogMsg('patch reapplied', { file: 'fix-reward.mjs', outcome: 'patched' }, 30_000);
    const again = gameSession(game);
    expect((await again.welcome).pid).not.toBe(pid);
    expect(await again.request('work')).toBe('coins 3');
  }, 120_000);

  test('a new baton with a syntax error in its entry point, or one that reads another state format, is refused: one line, exit 12, and the master serves on unchanged', async () => {
    const env = { XDG_RUNTIME_DIR: tempFolder('baton-run-') };
    const { baton, http } = await startApp(env);
    const loads = await flowingLoads(http);
    const before = await statusOf(env);

    const broken = batonCopy('9.9.9-broken', (root) => {
      const entry = join(root, 'bin', 'baton.js');
      writeFileSync(entry, `${readFileSync(entry, 'utf8')}\nconst = ;\n`);
    });
    const syntax = await reexec(env, broken);
    expect(syntax.exitCode).toBe(12);
    expect(syntax.output).toMatch(/^baton: baton reexec refused, nothing changed: .*SyntaxError.*$/m);

    const otherFormat = batonCopy('9.9.9-format', (root) => {
      const file = join(root, 'dist', 'supervisor', 'reexec.js');
      writeFileSync(file, readFileSync(file, 'utf8').replace(/STATE_FORMAT = 1;/, 'STATE_FORMAT = 2;'));
    });
    const format = await reexec(env, otherFormat);
    expect(format.exitCode).toBe(12);
    expect(format.output).toMatch(/refused, nothing changed: .*format 1.*reads format 2/);

    const missing = await reexec(env, join(tempFolder('baton-none-'), 'bin', 'baton.js'));
    expect(missing.exitCode).toBe(12);

    const after = await statusOf(env);
    expect(after.pid).toBe(baton.pid);
    expect(after.baton?.version).toBe(before.baton?.version);
    expect(after.baton?.reexecs).toBe(0);
    expect(workerPids(after)).toEqual(workerPids(before));
    expect(await stopLoads(loads)).toEqual({ errors: [], failed: 0, eachServed: true });
  }, 120_000);
});
