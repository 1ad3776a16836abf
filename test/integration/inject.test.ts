/** `baton inject`: hot patches reach what the app exposes in running workers, without a restart. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import type { MasterStatus } from '../../supervisor/control/status.js';
import { EXIT_CODES } from '../../supervisor/errors.js';
import { type GameSession, gameSession, httpGetJson, httpLoad } from '../helpers/load.js';
import {
  type AppDir,
  type BatonProcess,
  descendants,
  killAll,
  makeAppDir,
  REPO_ROOT,
  startBaton,
} from '../helpers/processes.js';

/** The fix for the example app's reward: one `work` earns 3 coins instead of 2. */
const FIX_REWARD = join(REPO_ROOT, 'test', 'fixtures', 'fix-reward.mjs');
/** A patch whose own check fails: it throws before it changes anything. */
const PATCH_THROWS = join(REPO_ROOT, 'test', 'fixtures', 'patch-throws.mjs');
/** How long a `baton` command may take (a patch's answer deadline is 10 s). */
const COMMAND_TIMEOUT_MS = 20_000;

let app: AppDir | undefined;
let runtime: string | undefined;

afterEach(async () => {
  await killAll();
  app?.cleanup();
  app = undefined;
  if (runtime) rmSync(runtime, { recursive: true, force: true });
  runtime = undefined;
});

/** Starts the example app (or `script` in its folder) under a master whose control socket is in a fresh runtime dir. */
async function startApp(workers: number, script = 'server.js') {
  app ??= makeAppDir();
  runtime = mkdtempSync(join(tmpdir(), 'baton-run-'));
  const env = { XDG_RUNTIME_DIR: runtime };
  const baton = startBaton(
    [
      'start',
      '--workers',
      String(workers),
      '--listen',
      'http=tcp://127.0.0.1:0',
      '--listen',
      'game=tcp://127.0.0.1:0',
      '--',
      process.execPath,
      script,
    ],
    { cwd: app.dir, env },
  );
  const httpPort = await baton.listenPort('http');
  const gamePort = await baton.listenPort('game');
  await baton.waitForLogMsg('generation active', { gen: 1 });
  return { baton, env, httpPort, gamePort };
}

/** Runs `baton <args>` against the test's master; resolves with its exit code and output. */
async function batonCommand(args: string[], env: Record<string, string>) {
  const run = startBaton(args, { env });
  const { exitCode } = await run.waitForExit(COMMAND_TIMEOUT_MS);
  return { exitCode, output: run.output };
}

async function statusOf(env: Record<string, string>): Promise<MasterStatus> {
  const { exitCode, output } = await batonCommand(['status', '--json'], env);
  expect(exitCode).toBe(0);
  return JSON.parse(output) as MasterStatus;
}

/** Opens `count` game sessions and has each earn coins twice (2 each, before any fix). */
async function openSessions(port: number, count: number): Promise<GameSession[]> {
  const sessions = Array.from({ length: count }, () => gameSession(port));
  for (const session of sessions) {
    await session.welcome;
    expect(await session.request('work')).toBe('coins 2');
    expect(await session.request('work')).toBe('coins 4');
  }
  return sessions;
}

describe('inject', () => {
  test('inject --all under HTTP load and open game sessions: 0 failed requests, every session keeps its coins and earns the fixed reward next', async () => {
    const { baton, env, httpPort, gamePort } = await startApp(2);
    const sessions = await openSessions(gamePort, 8);
    const loads = [
      httpLoad({
        port: httpPort,
        keepAlive: true,
        concurrency: 2,
        maxRequests: 100_000,
        maxDurationMs: 60_000,
      }),
      httpLoad({
        port: httpPort,
        keepAlive: false,
        concurrency: 2,
        maxRequests: 100_000,
        maxDurationMs: 60_000,
      }),
    ];

    const { exitCode, output } = await batonCommand(['inject', '--all', FIX_REWARD], env);
    // The output in the message, if it fails.
    expect({ exitCode, output }).toEqual({ exitCode: 0, output });
    expect(output.match(/^generation 1 worker \d \(pid \d+\): patched$/gm)).toHaveLength(2);
    expect(output).toMatch(/^patch fix-reward\.mjs \(sha256 [0-9a-f]{12}\) applied to 2 worker\(s\)$/m);

    for (const session of sessions) expect(await session.request('work')).toBe('coins 7');
    expect(await gameSession(gamePort).request('work')).toBe('coins 3');
    for (const report of await Promise.all(loads.map((load) => load.stop()))) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
    }

    // Who injected: the uid of the `baton inject` process, as the master found it with ss and /proc.
    const uid = process.getuid?.();
    const logged = await baton.waitForLogMsg('patch injected', {
      file: 'fix-reward.mjs',
      outcome: 'patched',
    });
    expect(logged.hash).toMatch(/^[0-9a-f]{64}$/);
    expect(logged.uid).toBe(uid);
    expect(logged.workers).toHaveLength(2);
    const [generation] = (await statusOf(env)).generations;
    expect(generation?.patches).toEqual([
      expect.objectContaining({ file: 'fix-reward.mjs', hash: logged.hash, scope: 'generation', uid }),
    ]);
    const table = await batonCommand(['status'], env);
    expect(table.output).toMatch(
      new RegExp(
        `^generation 1 patched with fix-reward\\.mjs \\(sha256 [0-9a-f]{12}\\) at [0-9:]{8} by uid ${uid}$`,
        'm',
      ),
    );
    expect(baton.logs.some((entry) => entry.msg === 'worker exited')).toBe(false);
  });

  test('a patch that throws, and one that does not parse: every worker unchanged, the CLI exits 11 with the error', async () => {
    const { env, gamePort } = await startApp(2);
    const sessions = await openSessions(gamePort, 4);

    const throws = await batonCommand(['inject', PATCH_THROWS], env);
    expect(throws.exitCode).toBe(EXIT_CODES.injectFailed);
    expect(
      throws.output.match(
        /^generation 1 worker \d \(pid \d+\): failed: Error: expected a reward of 1000 coins: this patch does not fit$/gm,
      ),
    ).toHaveLength(2);
    expect(throws.output).toMatch(/^ {4}at refuse \(patch-throws\.mjs:\d+:\d+\)$/m);
    expect(throws.output).toMatch(
      /^baton: The patch patch-throws\.mjs .* did not go through on 2 of 2 worker\(s\)\.$/m,
    );

    const unparsable = join(runtime as string, 'unparsable.mjs');
    writeFileSync(
      unparsable,
      'export default function broken({ rewards }) {\n  rewards.coinsPerWork = ;\n}\n',
    );
    const broken = await batonCommand(['inject', unparsable], env);
    expect(broken.exitCode).toBe(EXIT_CODES.injectFailed);
    expect(broken.output.match(/^generation 1 worker \d \(pid \d+\): failed: SyntaxError: /gm)).toHaveLength(
      2,
    );

    for (const session of sessions) expect(await session.request('work')).toBe('coins 6');
    expect(await gameSession(gamePort).request('work')).toBe('coins 2');
    expect((await statusOf(env)).generations[0]?.patches).toEqual([]);
  });

  test('a worker killed with SIGKILL comes back patched; after a reload the new generation is unpatched', async () => {
    const { baton, env, gamePort } = await startApp(1);
    expect((await batonCommand(['inject', FIX_REWARD], env)).exitCode).toBe(0);
    const first = gameSession(gamePort);
    const { pid } = await first.welcome;
    expect(await first.request('work')).toBe('coins 3');

    process.kill(pid, 'SIGKILL');
    const reapplied = await baton.waitForLogMsg('patch reapplied', {
      file: 'fix-reward.mjs',
      outcome: 'patched',
    });
    expect(reapplied.workers).toEqual([expect.objectContaining({ gen: 1, worker: 0, outcome: 'patched' })]);
    const afterCrash = gameSession(gamePort);
    expect((await afterCrash.welcome).pid).not.toBe(pid);
    expect(await afterCrash.request('work')).toBe('coins 3');

    // Without sessions left, generation 1 retires at once: the next session can only be generation 2's.
    afterCrash.close();
    await afterCrash.closed;
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('generation retired', { gen: 1 });
    const afterReload = gameSession(gamePort);
    const newWorker = (await afterReload.welcome).pid;
    expect(await afterReload.request('work')).toBe('coins 2');
    const generations = (await statusOf(env)).generations;
    expect(generations.find((generation) => generation.id === 2)?.patches).toEqual([]);
    expect(generations.find((generation) => generation.id === 1)?.patches).toHaveLength(1);

    // One worker by its pid: patched, and listed as that worker's own.
    const one = await batonCommand(['inject', '--worker', String(newWorker), FIX_REWARD], env);
    expect(one.exitCode).toBe(0);
    expect(one.output).toContain(`generation 2 worker 0 (pid ${newWorker}): patched`);
    expect(await afterReload.request('work')).toBe('coins 5');
    expect((await statusOf(env)).generations.find((generation) => generation.id === 2)?.patches).toEqual([
      expect.objectContaining({ file: 'fix-reward.mjs', scope: 'worker', pids: [newWorker] }),
    ]);
  });

  test('inject into a worker that is not Node is refused with one clear line', async () => {
    runtime = mkdtempSync(join(tmpdir(), 'baton-run-'));
    const env = { XDG_RUNTIME_DIR: runtime };
    const baton = startBaton(
      [
        'start',
        '--name',
        'shell',
        '--ready',
        'delay:300ms',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--',
        '/bin/sh',
        '-c',
        'exec sleep 600',
      ],
      { env },
    );
    await baton.waitForLogMsg('generation active', { gen: 1 });
    const { exitCode, output } = await batonCommand(['inject', FIX_REWARD], env);
    expect(exitCode).toBe(EXIT_CODES.injectFailed);
    expect(output).toMatch(
      /^generation 1 worker 0 \(pid \d+\): refused: the worker takes no patches \(not a Node worker, or it exposes nothing/m,
    );
    expect((await statusOf(env)).generations[0]?.patches).toEqual([]);
  });
});

/** The pids that answered HTTP requests and game sessions, each on a new connection, until `until` settles. */
async function answeringPids(
  httpPort: number,
  gamePort: number,
  until: Promise<unknown>,
): Promise<Set<number>> {
  const pids = new Set<number>();
  let done = false;
  void until.finally(() => {
    done = true;
  });
  const http = async () => {
    while (!done) pids.add((await httpGetJson(httpPort)).body?.pid as number);
  };
  const game = async () => {
    while (!done) {
      const session = gameSession(gamePort);
      pids.add((await session.welcome).pid);
      session.destroy();
      await session.closed;
    }
  };
  await Promise.all([http(), http(), game()]);
  return pids;
}

/** The pids of the live workers, from status. */
async function servingPids(env: Record<string, string>): Promise<number[]> {
  const workers = (await statusOf(env)).generations.flatMap((generation) => generation.workers);
  return workers.filter((worker) => worker.state === 'ready').map((worker) => worker.pid as number);
}

/** The scratch worker of the dry run logged last: it is gone, and only the serving workers are left. */
async function expectScratchGone(baton: BatonProcess, file: string, serving: number[]) {
  const logged = await baton.waitForLogMsg('patch dry run', { file });
  expect(typeof logged.pid).toBe('number');
  expect(serving).not.toContain(logged.pid);
  expect(descendants(baton.pid).sort()).toEqual([...serving].sort());
  return logged;
}

describe('inject --dry-run', () => {
  test('a patch that loads: exit 0 and one line; the scratch worker answers no request, leaves nothing, applies nothing', async () => {
    const { baton, env, httpPort, gamePort } = await startApp(2);
    const serving = await servingPids(env);
    const session = gameSession(gamePort);
    await session.welcome;

    const dryRun = batonCommand(['inject', '--dry-run', FIX_REWARD], env);
    const answered = await answeringPids(httpPort, gamePort, dryRun);
    const { exitCode, output } = await dryRun;
    expect(exitCode).toBe(0);
    expect(output).toMatch(
      /^dry run: patch fix-reward\.mjs \(sha256 [0-9a-f]{12}\) loaded and ran in a scratch worker of generation 1 \(pid \d+\); applied nowhere\n$/,
    );

    const logged = await expectScratchGone(baton, 'fix-reward.mjs', serving);
    expect(logged).toMatchObject({ outcome: 'ran', uid: process.getuid?.(), gen: 1 });
    expect(logged.hash).toMatch(/^[0-9a-f]{64}$/);
    // Every connection made while the scratch worker lived was answered by a serving worker.
    expect(answered.size).toBeGreaterThan(0);
    expect([...answered].filter((pid) => !serving.includes(pid))).toEqual([]);
    // The serving workers play by the old rules, and nothing is listed as applied.
    expect(await session.request('work')).toBe('coins 2');
    const status = await statusOf(env);
    expect(status.generations.map((generation) => generation.patches)).toEqual([[]]);
    expect(await servingPids(env)).toEqual(serving);
    expect(baton.logs.some((entry) => entry.msg === 'patch injected')).toBe(false);
  });

  test('a patch that throws, and one that does not parse: exit 11 with the error on one line', async () => {
    const { baton, env } = await startApp(1);
    const serving = await servingPids(env);

    const throws = await batonCommand(['inject', '--dry-run', PATCH_THROWS], env);
    expect(throws.exitCode).toBe(EXIT_CODES.injectFailed);
    expect(throws.output).toMatch(
      /^baton: Dry run of patch-throws\.mjs \(sha256 [0-9a-f]{12}\) in a scratch worker of generation 1 \(pid \d+\): failed: Error: expected a reward of 1000 coins: this patch does not fit \(at refuse \(patch-throws\.mjs:\d+:\d+\)\)\n$/,
    );
    expect(await expectScratchGone(baton, 'patch-throws.mjs', serving)).toMatchObject({ outcome: 'failed' });

    const unparsable = join(runtime as string, 'unparsable.mjs');
    writeFileSync(
      unparsable,
      'export default function broken({ rewards }) {\n  rewards.coinsPerWork = ;\n}\n',
    );
    const broken = await batonCommand(['inject', '--dry-run', unparsable], env);
    expect(broken.exitCode).toBe(EXIT_CODES.injectFailed);
    expect(broken.output).toMatch(
      /^baton: Dry run of unparsable\.mjs \(sha256 [0-9a-f]{12}\) in a scratch worker of generation 1 \(pid \d+\): failed: SyntaxError: [^\n]+\n$/,
    );
    expect(await expectScratchGone(baton, 'unparsable.mjs', serving)).toMatchObject({ outcome: 'failed' });
    expect((await statusOf(env)).generations[0]?.patches).toEqual([]);
  });

  test('a scratch worker that cannot start: exit 11, why, and the end of its stderr', async () => {
    // A server that listens by itself: listenOptions() refuses in a scratch worker, which exits.
    app = makeAppDir();
    app.writeFile(
      'listens-itself.mjs',
      [
        "import http from 'node:http';",
        "import { expose, listenOptions, ready } from 'baton-supervisor/child';",
        "expose('rewards', { coinsPerWork: 2 });",
        'const reply = (_request, response) => response.end(String(process.pid));',
        "http.createServer(reply).listen(listenOptions('http'));",
        "http.createServer(reply).listen(listenOptions('game'), () => ready());",
        '',
      ].join('\n'),
    );
    const { baton, env } = await startApp(1, 'listens-itself.mjs');
    const serving = await servingPids(env);
    const { exitCode, output } = await batonCommand(['inject', '--dry-run', FIX_REWARD], env);
    expect(exitCode).toBe(EXIT_CODES.injectFailed);
    expect(output).toMatch(
      /^baton: Dry run of fix-reward\.mjs .*: the scratch worker exited with code 1 before it (took the patch|answered); its stderr ended: .*Cannot listen as 'http' in the scratch worker of baton inject --dry-run/m,
    );
    expect(output.trimEnd().split('\n')).toHaveLength(1);
    expect(await expectScratchGone(baton, 'fix-reward.mjs', serving)).toMatchObject({
      outcome: 'exited',
      exitCode: 1,
    });
  });

  test('--dry-run with a target is a usage error', async () => {
    const { exitCode, output } = await batonCommand(['inject', '--dry-run', '--all', FIX_REWARD], {
      XDG_RUNTIME_DIR: tmpdir(),
    });
    expect(exitCode).toBe(EXIT_CODES.usage);
    expect(output).toMatch(/^baton: Arguments all and dry-run are mutually exclusive/m);
  });
});
