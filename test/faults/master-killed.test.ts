/**
 * SIGKILL to the master: nothing runs its cleanup, yet every worker must
 * notice and drain. Node workers see their IPC channel close; workers in any
 * language get the drain signal from the kernel (parent-death signal, set by
 * the trampoline through util-linux's setpriv).
 */
import { afterEach, describe, expect, test } from '@jest/globals';
import { gameSession } from '../helpers/load.js';
import {
  killAll,
  makeAppDir,
  processAlive,
  processStartTime,
  REPO_ROOT,
  startBaton,
} from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

/** The bound documented in docs/reliability.md: workers with nothing in flight are gone this fast. */
const ORPHAN_EXIT_BOUND_MS = 5000;

/**
 * Workers whose master a test killed: `killAll` cannot find them through the master any more. Each is
 * known by its pid and start time: by the end of the test its pid may be another process's (pids wrap;
 * a PID 1 test's master was once refused connections in a run), which must never be killed.
 */
const orphans: Array<{ pid: number; startTime: number | undefined }> = [];

/** Remembers workers to kill after the test if they outlived it. */
function orphaned(pids: number[]): void {
  for (const pid of pids) orphans.push({ pid, startTime: processStartTime(pid) });
}

afterEach(async () => {
  for (const { pid, startTime } of orphans.splice(0)) {
    if (startTime === undefined || processStartTime(pid) !== startTime) continue; // gone, as it should be
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
  await killAll();
});

function readyPids(logs: Record<string, unknown>[]): number[] {
  return logs.filter((entry) => entry.msg === 'worker ready').map((entry) => entry.pid as number);
}

describe('SIGKILL to the master', () => {
  test('Node workers (child API) and Python workers (no IPC) all drain and exit', async () => {
    const app = makeAppDir();
    try {
      const node = startBaton(
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
          'server.js',
        ],
        { cwd: app.dir },
      );
      const python = startBaton(
        [
          'start',
          '--listen',
          'http=tcp://127.0.0.1:0',
          '--workers',
          '2',
          '--ready',
          'notify',
          '--',
          'python3',
          `${REPO_ROOT}/test/fixtures/systemd_http.py`,
        ],
        { env: { APP_VERSION: 'py' } },
      );
      await node.waitForLogMsg('generation active', { gen: 1 });
      await python.waitForLogMsg('generation active', { gen: 1 });
      const workers = [...readyPids(node.logs), ...readyPids(python.logs)];
      expect(workers).toHaveLength(4);
      orphaned(workers);

      process.kill(node.pid, 'SIGKILL');
      process.kill(python.pid, 'SIGKILL');
      const started = Date.now();
      await waitFor(() => workers.every((pid) => !processAlive(pid)) || undefined, {
        timeoutMs: ORPHAN_EXIT_BOUND_MS,
        what: () => `orphaned workers to exit (alive: ${workers.filter(processAlive).join(', ')})`,
      });
      expect(Date.now() - started).toBeLessThan(ORPHAN_EXIT_BOUND_MS);
    } finally {
      app.cleanup();
    }
  });

  test('a worker with a session in flight keeps serving it, then exits when it ends', async () => {
    const app = makeAppDir();
    try {
      const baton = startBaton(
        [
          'start',
          '--listen',
          'http=tcp://127.0.0.1:0',
          '--listen',
          'game=tcp://127.0.0.1:0',
          '--',
          process.execPath,
          'server.js',
        ],
        { cwd: app.dir },
      );
      const gamePort = await baton.listenPort('game');
      await baton.waitForLogMsg('generation active', { gen: 1 });
      const [worker] = readyPids(baton.logs);
      orphaned([worker as number]);
      const session = gameSession(gamePort);
      await session.welcome;
      expect(await session.request('work')).toBe('coins 2');

      process.kill(baton.pid, 'SIGKILL');
      await waitFor(() => !processAlive(baton.pid) || undefined, {
        timeoutMs: 5000,
        what: 'the master gone',
      });
      expect(await session.request('work')).toBe('coins 4');
      expect(processAlive(worker as number)).toBe(true);
      expect(await session.request('quit')).toBe('bye');
      await waitFor(() => !processAlive(worker as number) || undefined, {
        timeoutMs: ORPHAN_EXIT_BOUND_MS,
        what: 'the worker to exit once its last session ended',
      });
    } finally {
      app.cleanup();
    }
  });
});
