/**
 * SIGKILL in the middle of things: to a new worker while its reload runs, to an
 * old worker while it drains. The reload ends (never hangs) and `status` tells
 * the truth.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import { gameSession, httpGetJson } from '../helpers/load.js';
import { type AppDir, killAll, makeAppDir, startBaton } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

interface Snapshot {
  generations: Array<{ id: number; state: string; workers: Array<{ pid: number; state: string }> }>;
}

let app: AppDir | undefined;
let runtime: string | undefined;

afterEach(async () => {
  await killAll();
  app?.cleanup();
  if (runtime) rmSync(runtime, { recursive: true, force: true });
});

async function status(env: Record<string, string>): Promise<Snapshot> {
  const run = startBaton(['status', '--json'], { env });
  await run.waitForExit(10_000);
  return JSON.parse(run.output) as Snapshot;
}

async function start(extraEnv: Record<string, string> = {}) {
  app = makeAppDir();
  runtime = mkdtempSync(join(tmpdir(), 'baton-run-'));
  const env = { XDG_RUNTIME_DIR: runtime, ...extraEnv };
  // A new version that takes a while to start while the file `slow` exists: a window to act in.
  app.writeFile(
    'boot.js',
    `import { existsSync } from 'node:fs';\nif (existsSync(new URL('./slow', import.meta.url))) await new Promise((resolve) => setTimeout(resolve, 30_000));\nawait import('./server.js');\n`,
  );
  const baton = startBaton(
    [
      'start',
      '--listen',
      'http=tcp://127.0.0.1:0',
      '--listen',
      'game=tcp://127.0.0.1:0',
      '--workers',
      '2',
      '--',
      process.execPath,
      'boot.js',
    ],
    { cwd: app.dir, env },
  );
  const httpPort = await baton.listenPort('http');
  const gamePort = await baton.listenPort('game');
  await baton.waitForLogMsg('generation active', { gen: 1 });
  return { baton, env, httpPort, gamePort, dir: app.dir };
}

describe('SIGKILL in the middle of a reload', () => {
  test('to a starting worker of the new generation: the reload fails at once, the old version serves, status agrees', async () => {
    const { baton, env, httpPort, dir } = await start();
    app?.writeFile('slow', '');
    expect(existsSync(join(dir, 'slow'))).toBe(true);
    baton.signal('SIGUSR2');
    const starting = await waitFor(
      async () => {
        const snapshot = await status(env);
        const gen2 = snapshot.generations.find((g) => g.id === 2);
        return gen2 && gen2.workers.length === 2 ? gen2.workers : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 200, what: 'generation 2 starting with its workers' },
    );
    process.kill(starting[0]?.pid as number, 'SIGKILL');
    const failure = await baton.waitForLog(
      (e) => String(e.msg).startsWith('reload failed'),
      10_000,
      'the reload failing',
    );
    expect(failure).toMatchObject({ gen: 2, reason: 'worker-exited', signal: 'SIGKILL' });
    expect((await httpGetJson(httpPort)).body).toMatchObject({ generation: 1 });
    // The other new worker is stopped too; status shows generation 2 failed and generation 1 active.
    await baton.waitForLog(
      (e) => e.msg === 'worker exited' && e.gen === 2 && e.pid === starting[1]?.pid,
      40_000,
      'the other new worker gone',
    );
    const snapshot = await status(env);
    expect(snapshot.generations.map((g) => [g.id, g.state])).toEqual([
      [1, 'active'],
      [2, 'failed'],
    ]);
    expect(snapshot.generations[1]?.workers.every((w) => w.state === 'exited')).toBe(true);
  });

  test('to an old worker while it drains a session: the generation retires, status agrees', async () => {
    const { baton, env, gamePort } = await start({ GAME_HANDOFF: 'off' });
    const session = gameSession(gamePort);
    const { pid } = await session.welcome;
    expect(await session.request('work')).toBe('coins 2');
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('generation active', { gen: 2 }, 20_000);
    const draining = await waitFor(
      async () => {
        const gen1 = (await status(env)).generations.find((g) => g.id === 1);
        return gen1?.state === 'draining' ? gen1 : undefined;
      },
      { timeoutMs: 10_000, intervalMs: 200, what: 'generation 1 draining' },
    );
    expect(draining.workers.find((w) => w.pid === Number(pid))?.state).toBe('draining');
    process.kill(Number(pid), 'SIGKILL');
    expect(await baton.waitForLogMsg('generation retired', { gen: 1 }, 10_000)).toMatchObject({
      forced: false,
    });
    await session.closed;
    const snapshot = await status(env);
    expect(snapshot.generations.map((g) => [g.id, g.state])).toEqual([
      [1, 'retired'],
      [2, 'active'],
    ]);
  });
});
