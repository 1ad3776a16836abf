/**
 * The container's first process, without a Docker engine: the image's command run as PID 1 of a new
 * PID namespace (`unshare --pid --fork --mount-proc`, which needs root), both as the image runs it
 * (tini, then baton) and with baton itself as PID 1 (`docker run --entrypoint ''`). The command is
 * read from the Dockerfile, with only its ports (127.0.0.1:0) and paths (this checkout's) replaced.
 */
import { accessSync, constants, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import type { MasterStatus } from '../../supervisor/control/status.js';
import { PID1_WARNING } from '../../supervisor/pid1.js';
import { readDockerfile } from '../helpers/dockerfile.js';
import { gameSession, httpGetJson, httpLoad } from '../helpers/load.js';
import {
  type AppDir,
  BATON_BIN,
  BatonProcess,
  type ExitStatus,
  killAll,
  makeAppDir,
  REPO_ROOT,
} from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

const NODE = process.execPath;

/** The worker that leaves orphans behind (see the file). */
const ORPHANS_FIXTURE = join(REPO_ROOT, 'test', 'fixtures', 'orphans.js');

/** How many helpers the orphan test has the worker leave behind. */
const ORPHAN_COUNT = 5;

/** The absolute path of `name` on the PATH, or undefined. */
function findOnPath(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir === '') continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return join(dir, name);
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

const UNSHARE = findOnPath('unshare');
const TINI = findOnPath('tini');
const IS_ROOT = process.getuid?.() === 0;

/**
 * Why these tests cannot run here, or undefined. A missing tini is not a reason to skip: as root,
 * `npm test` installs it (scripts/install-test-deps.sh), so a missing tini fails the tests that need it.
 */
const SKIP_REASON = !IS_ROOT
  ? 'a new PID namespace needs root'
  : UNSHARE === undefined
    ? 'unshare (util-linux) is not on the PATH'
    : undefined;

/** One process of the host's /proc, with what these tests need. */
interface ProcEntry {
  pid: number;
  ppid: number;
  state: string;
  /** The pid inside the innermost PID namespace (the last `NSpid` field). */
  nsPid: number;
}

function readProcEntry(pid: number): ProcEntry | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    // The command name (field 2) is in parentheses and may itself contain spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const nsPids = /^NSpid:\s+(.*)$/m.exec(status)?.[1]?.trim().split(/\s+/) ?? [String(pid)];
    return { pid, ppid: Number(fields[1]), state: fields[0] ?? '', nsPid: Number(nsPids.at(-1)) };
  } catch {
    return undefined; // gone between listing and reading
  }
}

/** Every process of the PID namespace whose first process is `initPid` (host pids), zombies included. */
function namespaceProcesses(initPid: number): ProcEntry[] {
  const entries = readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .flatMap((name) => readProcEntry(Number(name)) ?? []);
  const inside = new Set([initPid]);
  // Parents may be listed after their children: repeat until nothing is added.
  for (let grown = true; grown; ) {
    grown = false;
    for (const entry of entries) {
      if (!inside.has(entry.pid) && inside.has(entry.ppid)) {
        inside.add(entry.pid);
        grown = true;
      }
    }
  }
  return entries.filter((entry) => inside.has(entry.pid));
}

/** `unshare` running a command as PID 1 of a new PID namespace, its output read like baton's. */
class Namespace {
  constructor(readonly unshare: BatonProcess) {}

  /** The host pid of the namespace's PID 1: the one child of `unshare --fork`. */
  initPid(): Promise<number> {
    return waitFor(
      () => {
        const child = readdirSync('/proc')
          .filter((name) => /^\d+$/.test(name))
          .map((name) => readProcEntry(Number(name)))
          .find((entry) => entry?.ppid === this.unshare.pid);
        return child?.pid;
      },
      { timeoutMs: 5_000, what: `the child of unshare (pid ${this.unshare.pid})` },
    );
  }

  /** Sends `sig` to the namespace's PID 1, from outside, as `docker kill` and `docker stop` do. */
  async signal(sig: NodeJS.Signals): Promise<void> {
    process.kill(await this.initPid(), sig);
  }

  /** The namespace's processes (host view) whose pid inside the namespace is one of `nsPids`. */
  async processesByNsPid(nsPids: number[]): Promise<ProcEntry[]> {
    const wanted = new Set(nsPids);
    return namespaceProcesses(await this.initPid()).filter((entry) => wanted.has(entry.nsPid));
  }

  /** How many processes of the namespace are zombies: dead, waiting for a parent to reap them. */
  async zombieCount(): Promise<number> {
    return namespaceProcesses(await this.initPid()).filter((entry) => entry.state === 'Z').length;
  }

  /** How unshare exited: as the namespace's PID 1 did (unshare passes its status on). */
  waitForExit(timeoutMs: number): Promise<ExitStatus> {
    return this.unshare.waitForExit(timeoutMs);
  }
}

/** Namespaces started by the current test, killed after it whatever happened. */
const started = new Set<Namespace>();

/** Runs `command` as PID 1 of a new PID namespace; its stdout is baton's log (`listenPort`, `waitForLog`). */
function startInNamespace(command: string[]): Namespace {
  const subprocess = execa(UNSHARE as string, ['--pid', '--fork', '--mount-proc', ...command], {
    cwd: app.dir,
    env: imageEnv(),
    // Its own process group, so that killing the tree never reaches the test runner.
    detached: true,
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: false,
    reject: false,
  });
  const child = subprocess.nodeChildProcess;
  if (subprocess.pid === undefined || child.stdout === null || child.stderr === null) {
    throw new Error(`could not start ${UNSHARE} ${command.join(' ')}`);
  }
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once('exit', (exitCode, signal) => resolve({ exitCode, signal }));
  });
  const namespace = new Namespace(
    new BatonProcess(subprocess.pid, child.stdout, child.stderr, exited, subprocess),
  );
  started.add(namespace);
  return namespace;
}

/** How the image is started in these tests: as the Dockerfile says, or with baton itself as PID 1. */
type Entrypoint = 'tini' | 'baton';

/**
 * The Dockerfile's ENTRYPOINT and CMD (or CMD alone for `baton`), with the listeners on
 * 127.0.0.1:0, this checkout's baton and Node, and `app/server.js` replaced by `worker` (its
 * VERSION beside it).
 */
function imageCommand(entrypoint: Entrypoint, worker: string): string[] {
  const image = readDockerfile();
  const words = entrypoint === 'tini' ? image.command : image.cmd;
  return words.flatMap((word, index): string[] => {
    if (entrypoint === 'tini' && index === 0) return [TINI as string];
    if (word === 'baton') return [NODE, BATON_BIN];
    if (word === 'node') return [NODE];
    if (word === 'app/server.js') return [worker];
    if (word === 'app/VERSION') return [join(dirname(worker), 'VERSION')];
    const listen = /^(\w+=tcp:\/\/)0\.0\.0\.0:\d+$/.exec(word);
    return listen ? [`${listen[1]}127.0.0.1:0`] : [word];
  });
}

let app: AppDir;
/** This test's stand-in for the image's XDG_RUNTIME_DIR (/run/baton): where the control socket goes. */
let runtimeDir: string;

beforeEach(() => {
  app = makeAppDir();
  runtimeDir = join(app.dir, '.run');
  mkdirSync(runtimeDir, { mode: 0o700 });
});

/** The environment the image sets (ENV), with this test's runtime directory. */
function imageEnv(): Record<string, string> {
  const { env } = readDockerfile();
  if (env.XDG_RUNTIME_DIR === undefined) throw new Error('Expected the Dockerfile to set XDG_RUNTIME_DIR');
  return { ...env, XDG_RUNTIME_DIR: runtimeDir };
}

/** Runs `baton <args>` beside the container's master, as `docker exec` and the HEALTHCHECK do. */
function batonExec(args: string[]) {
  return execa(NODE, [BATON_BIN, ...args], {
    cwd: app.dir,
    env: imageEnv(),
    reject: false,
    timeout: 30_000,
  });
}

afterEach(async () => {
  const namespaces = [...started];
  started.clear();
  try {
    await killAll();
  } finally {
    // Killing a namespace's PID 1 kills everything in it; killTree also waits until all of it is gone.
    await Promise.all(namespaces.map((namespace) => namespace.unshare.killTree()));
    app.cleanup();
  }
});

/** Starts the example app (the image's command) in a new namespace and waits until generation 1 serves. */
async function startImage(
  entrypoint: Entrypoint,
): Promise<{ namespace: Namespace; httpPort: number; gamePort: number }> {
  const namespace = startInNamespace(imageCommand(entrypoint, join(app.dir, 'server.js')));
  const httpPort = await namespace.unshare.listenPort('http');
  const gamePort = await namespace.unshare.listenPort('game');
  await namespace.unshare.waitForLogMsg('generation active', { gen: 1 }, 20_000);
  return { namespace, httpPort, gamePort };
}

/** Fails the test when tini is missing: as root, `npm test` should have installed it. */
function requireTini(): void {
  if (TINI === undefined) {
    throw new Error(
      'tini is not on the PATH: scripts/install-test-deps.sh installs it (npm test runs it first)',
    );
  }
}

// Where these tests cannot run, jest reports each of them as skipped, the reason in its describe's title.
const describeAsRoot = SKIP_REASON === undefined ? describe : describe.skip;
const SKIPPED_BECAUSE = SKIP_REASON === undefined ? '' : ` (skipped: ${SKIP_REASON})`;

describeAsRoot.each<[string, Entrypoint]>([
  ['behind tini, as the image runs it', 'tini'],
  ['with baton itself as PID 1', 'baton'],
])(`in a new PID namespace, %s${SKIPPED_BECAUSE}`, (_title, entrypoint) => {
  beforeEach(() => {
    if (entrypoint === 'tini') requireTini();
  });

  test('SIGTERM to PID 1 drains: an open game session keeps its state to the end, then the exit status is 0', async () => {
    const { namespace, gamePort } = await startImage(entrypoint);
    const session = gameSession(gamePort);
    await session.welcome; // accepted by a worker, so the drain must wait for it
    expect(await session.request('work')).toBe('coins 2');
    await namespace.signal('SIGTERM');
    await namespace.unshare.waitForLogMsg('generation draining', { gen: 1 });
    expect(await session.request('work')).toBe('coins 4');
    expect(await session.request('quit')).toBe('bye');
    await session.closed;
    expect(await namespace.waitForExit(15_000)).toEqual({ exitCode: 0, signal: null });
    expect(await namespace.unshare.waitForLogMsg('generation retired', { gen: 1 })).toMatchObject({
      forced: false,
    });
  });

  test('SIGUSR2 to PID 1 reloads under load with zero failed requests', async () => {
    const { namespace, httpPort } = await startImage(entrypoint);
    const keepAlive = httpLoad({
      port: httpPort,
      keepAlive: true,
      concurrency: 4,
      maxRequests: 100_000,
      maxDurationMs: 60_000,
    });
    const fresh = httpLoad({
      port: httpPort,
      keepAlive: false,
      concurrency: 2,
      maxRequests: 50_000,
      maxDurationMs: 60_000,
    });
    await waitFor(() => keepAlive.snapshot().ok > 50 && fresh.snapshot().ok > 20, {
      timeoutMs: 10_000,
      what: 'load flowing',
    });
    for (const gen of [2, 3]) {
      app.setVersion(`2.0.${gen}`);
      await namespace.signal('SIGUSR2');
      await namespace.unshare.waitForLogMsg('generation active', { gen }, 20_000);
      await namespace.unshare.waitForLogMsg('generation retired', { gen: gen - 1 }, 20_000);
      expect((await httpGetJson(httpPort)).body).toMatchObject({ version: `2.0.${gen}`, generation: gen });
    }
    const [kept, opened] = await Promise.all([keepAlive.stop(), fresh.stop()]);
    expect([...kept.errors, ...opened.errors]).toEqual([]);
    expect(kept.failed + opened.failed).toBe(0);
    expect(kept.ok).toBeGreaterThan(0);
    expect(opened.ok).toBeGreaterThan(0);
    expect(Object.keys({ ...kept.versions, ...opened.versions })).toEqual(
      expect.arrayContaining(['1.0.0', '2.0.2', '2.0.3']),
    );
  });

  test("the image's HEALTHCHECK command says healthy, and baton reload (docker exec) reloads and exits 0", async () => {
    const { httpPort } = await startImage(entrypoint);
    const [, ...healthcheckArgs] = readDockerfile().healthcheck;
    const check = await batonExec(healthcheckArgs);
    expect({ exitCode: check.exitCode, stderr: check.stderr }).toEqual({ exitCode: 0, stderr: '' });
    app.setVersion('3.0.0');
    const reload = await batonExec(['reload']);
    expect({ exitCode: reload.exitCode, stderr: reload.stderr }).toEqual({ exitCode: 0, stderr: '' });
    expect((await httpGetJson(httpPort)).body).toMatchObject({ version: '3.0.0', generation: 2 });
  });

  test('baton reexec (docker exec) under load: the same master and workers, 0 failed; once the adopted workers exit, no zombie is left', async () => {
    const { namespace, httpPort } = await startImage(entrypoint);
    const loads = [true, false].map((keepAlive) =>
      httpLoad({ port: httpPort, keepAlive, concurrency: 2, maxRequests: 100_000, maxDurationMs: 90_000 }),
    );
    await waitFor(() => loads.every((load) => load.snapshot().ok > 20) || undefined, {
      timeoutMs: 10_000,
      what: 'load flowing',
    });
    const statusNow = async () => JSON.parse((await batonExec(['status', '--json'])).stdout) as MasterStatus;
    const livePids = (status: MasterStatus) =>
      status.generations.flatMap((generation) =>
        generation.workers.filter((worker) => worker.state !== 'exited').map((worker) => worker.pid),
      );
    const before = await statusNow();
    const reexec = await batonExec(['reexec']);
    expect({ exitCode: reexec.exitCode, stderr: reexec.stderr }).toEqual({ exitCode: 0, stderr: '' });
    expect(reexec.stdout).toContain('2 worker(s) adopted');
    const after = await statusNow();
    expect(after.pid).toBe(before.pid);
    expect(after.baton?.reexecs).toBe(1);
    expect(livePids(after)).toEqual(livePids(before));
    app.setVersion('4.0.0');
    const reload = await batonExec(['reload']);
    expect({ exitCode: reload.exitCode, stderr: reload.stderr }).toEqual({ exitCode: 0, stderr: '' });
    await namespace.unshare.waitForLogMsg('generation retired', { gen: 1 }, 20_000);
    // The adopted workers were reaped by the master itself: libuv never knew them.
    await waitFor(async () => ((await namespace.zombieCount()) === 0 ? true : undefined), {
      timeoutMs: 10_000,
      what: 'no zombie in the namespace',
    });
    const reports = await Promise.all(loads.map((load) => load.stop()));
    for (const report of reports) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
    }
  });

  test('a first release that cannot start: baton exits 4 and PID 1 passes the status on', async () => {
    app.writeFile('server.js', "console.error('cannot open database'); process.exit(7);\n");
    const namespace = startInNamespace(imageCommand(entrypoint, join(app.dir, 'server.js')));
    expect(await namespace.waitForExit(20_000)).toEqual({ exitCode: 4, signal: null });
    const failure = await namespace.unshare.waitForLog(
      (entry) => String(entry.msg).startsWith('start failed'),
      5_000,
      'log "start failed"',
    );
    expect(failure).toMatchObject({ gen: 1, exitCode: 7, stderrTail: 'cannot open database' });
  });
});

describeAsRoot(`orphaned grandchildren in a new PID namespace${SKIPPED_BECAUSE}`, () => {
  /** Has the fixture's worker leave ORPHAN_COUNT helpers behind; returns their pids inside the namespace. */
  async function leaveOrphans(namespace: Namespace, httpPort: number): Promise<number[]> {
    const { body } = await httpGetJson(httpPort, `/orphans?count=${ORPHAN_COUNT}`);
    const helpers = body?.helpers as number[];
    expect(helpers).toHaveLength(ORPHAN_COUNT);
    // The worker exited after answering; the master starts its replacement.
    await namespace.unshare.waitForLogMsg('worker exited', { pid: body?.pid, exitCode: 0 });
    return helpers;
  }

  async function startFixture(entrypoint: Entrypoint): Promise<{ namespace: Namespace; httpPort: number }> {
    app.writeFile('orphans.js', readFileSync(ORPHANS_FIXTURE, 'utf8'));
    const namespace = startInNamespace(imageCommand(entrypoint, join(app.dir, 'orphans.js')));
    const httpPort = await namespace.unshare.listenPort('http');
    await namespace.unshare.waitForLogMsg('generation active', { gen: 1 }, 20_000);
    return { namespace, httpPort };
  }

  test('behind tini (the image): every orphan is reaped, no zombie is left, and baton does not warn', async () => {
    requireTini();
    const { namespace, httpPort } = await startFixture('tini');
    const helpers = await leaveOrphans(namespace, httpPort);
    // Each helper exits once the worker is gone; tini reaps it, so it leaves no trace at all.
    await waitFor(async () => (await namespace.processesByNsPid(helpers)).length === 0, {
      timeoutMs: 10_000,
      what: `the ${ORPHAN_COUNT} orphaned helpers to exit and be reaped`,
    });
    expect(await namespace.zombieCount()).toBe(0);
    expect(namespace.unshare.logs.filter((entry) => entry.msg === PID1_WARNING)).toEqual([]);
    await namespace.signal('SIGTERM');
    expect(await namespace.waitForExit(15_000)).toEqual({ exitCode: 0, signal: null });
  });

  test('with baton itself as PID 1 (no init): every orphan stays a zombie, which is why the image runs tini', async () => {
    const { namespace, httpPort } = await startFixture('baton');
    const initPid = await namespace.initPid();
    const helpers = await leaveOrphans(namespace, httpPort);
    // Re-parented to baton, which cannot reap what it did not spawn: they end as zombies and stay.
    const zombies = await waitFor(
      async () => {
        const found = await namespace.processesByNsPid(helpers);
        return found.length === ORPHAN_COUNT && found.every((entry) => entry.state === 'Z') && found;
      },
      { timeoutMs: 10_000, what: `the ${ORPHAN_COUNT} orphaned helpers to exit (as zombies)` },
    );
    expect(zombies.map((entry) => entry.ppid)).toEqual(Array(ORPHAN_COUNT).fill(initPid));
    expect(await namespace.zombieCount()).toBe(ORPHAN_COUNT);
    // Still serving, and a graceful stop still works: the kernel clears the zombies with the namespace.
    expect((await httpGetJson(httpPort)).status).toBe(200);
    await namespace.signal('SIGTERM');
    expect(await namespace.waitForExit(15_000)).toEqual({ exitCode: 0, signal: null });
  });

  test('with baton itself as PID 1, the master warns once, naming tini', async () => {
    const { namespace } = await startFixture('baton');
    await namespace.unshare.waitForLogMsg(PID1_WARNING);
    expect(namespace.unshare.logs.filter((entry) => entry.msg === PID1_WARNING)).toHaveLength(1);
  });
});
