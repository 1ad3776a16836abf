/**
 * `--user`/`--group`: the master, started as root, binds a privileged port and
 * keeps its control socket; the workers run unprivileged.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, readFileSync } from 'node:fs';
import { afterEach, describe, expect, test } from '@jest/globals';
import { httpGetJson } from '../helpers/load.js';
import { type AppDir, type BatonProcess, killAll, makeAppDir, startBaton } from '../helpers/processes.js';

const NOBODY = 65534;
const asRoot = process.getuid?.() === 0;
let app: AppDir | undefined;

afterEach(async () => {
  await killAll();
  app?.cleanup();
});

function uidOf(pid: number): number {
  return Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]);
}

/** Starts baton on the first free port below 1024 (a port in use makes it exit 3: try the next). */
async function startOnPrivilegedPort(dir: string): Promise<{ baton: BatonProcess; port: number }> {
  for (let port = 901; port < 1024; port++) {
    const baton = startBaton(
      [
        'start',
        '--user',
        'nobody',
        '--listen',
        `http=tcp://127.0.0.1:${port}`,
        '--listen',
        'game=tcp://127.0.0.1:0',
        '--workers',
        '2',
        '--',
        process.execPath,
        'server.js',
      ],
      { cwd: dir },
    );
    const outcome = await Promise.race([
      baton.waitForLogMsg('generation active', { gen: 1 }, 20_000).then(() => 'active'),
      baton.waitForExit(20_000).then((status) => `exit ${status.exitCode}`),
    ]);
    if (outcome === 'active') return { baton, port };
    if (outcome !== 'exit 3') throw new Error(`baton did not start: ${outcome}\n${baton.output}`);
  }
  throw new Error('no free port below 1024');
}

describe('--user', () => {
  (asRoot ? test : test.skip)(
    'workers run as nobody while the root master binds port < 1024; a worker cannot signal the master; reloads work',
    async () => {
      app = makeAppDir();
      chmodSync(app.dir, 0o755); // the app must be readable by the workers' user
      const { baton, port } = await startOnPrivilegedPort(app.dir);
      expect(port).toBeLessThan(1024);
      expect((await httpGetJson(port)).status).toBe(200);
      const workers = () => baton.logs.filter((e) => e.msg === 'worker ready').map((e) => e.pid as number);
      for (const pid of workers()) expect(uidOf(pid)).toBe(NOBODY);
      expect(uidOf(baton.pid)).toBe(0);

      // What a compromised worker could try: signal the master.
      const attempt = spawnSync(process.execPath, ['-e', `process.kill(${baton.pid}, 'SIGTERM')`], {
        uid: NOBODY,
        gid: NOBODY,
        encoding: 'utf8',
      });
      expect(attempt.status).not.toBe(0);
      expect(attempt.stderr).toContain('EPERM');

      app.setVersion('2.0.0');
      baton.signal('SIGUSR2');
      await baton.waitForLogMsg('generation retired', { gen: 1 }, 20_000);
      expect((await httpGetJson(port)).body).toMatchObject({ version: '2.0.0' });
      for (const pid of workers().slice(2)) expect(uidOf(pid)).toBe(NOBODY);
    },
  );
});
