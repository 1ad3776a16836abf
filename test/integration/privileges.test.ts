/**
 * `--user`/`--group`: the master, started as root, binds a privileged port and
 * keeps its control socket; the workers run unprivileged. They run a copy of Node and of the app
 * that every user can reach, wherever the repository sits (a clone in a private folder, say).
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, test } from '@jest/globals';
import { httpGetJson } from '../helpers/load.js';
import {
  type AppDir,
  type BatonProcess,
  copyNodeForAllUsers,
  killAll,
  makeAppDir,
  type NodeForAllUsers,
  startBaton,
} from '../helpers/processes.js';

const NOBODY = 65534;
const IS_ROOT = process.getuid?.() === 0;
let app: AppDir | undefined;
let publicNode: NodeForAllUsers | undefined;
const scratch: string[] = [];

beforeAll(() => {
  if (IS_ROOT) publicNode = copyNodeForAllUsers();
});

afterAll(() => {
  publicNode?.cleanup();
});

afterEach(async () => {
  await killAll();
  app?.cleanup();
  for (const dir of scratch.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** The Node that the workers (uid 65534) can execute. */
function workerNode(): string {
  if (!publicNode) throw new Error('the copy of Node for all users was not made');
  return publicNode.node;
}

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
        workerNode(),
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

// Only root can start processes as another user: elsewhere these tests are reported as skipped, and say why.
const describeAsRoot = IS_ROOT ? describe : describe.skip;
const ROOT_ONLY = IS_ROOT ? '' : ' (skipped: only root can start workers as another user)';

describeAsRoot(`--user${ROOT_ONLY}`, () => {
  test('workers run as nobody while the root master binds port < 1024; a worker cannot signal the master; reloads work', async () => {
    app = makeAppDir({ forAllUsers: true });
    const { baton, port } = await startOnPrivilegedPort(app.dir);
    expect(port).toBeLessThan(1024);
    expect((await httpGetJson(port)).status).toBe(200);
    const workers = () => baton.logs.filter((e) => e.msg === 'worker ready').map((e) => e.pid as number);
    for (const pid of workers()) expect(uidOf(pid)).toBe(NOBODY);
    expect(uidOf(baton.pid)).toBe(0);

    // What a compromised worker could try: signal the master.
    const attempt = spawnSync(workerNode(), ['-e', `process.kill(${baton.pid}, 'SIGTERM')`], {
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
  });

  test('a command the user cannot execute (a folder on its path it cannot enter): one line naming the folder, exit 126, nothing bound', async () => {
    app = makeAppDir({ forAllUsers: true });
    // Node reached through a folder only root can enter, as under a clone made in `mktemp -d`.
    const hidden = mkdtempSync(join(tmpdir(), 'baton-hidden-')); // mode 0700
    scratch.push(hidden);
    const node = join(hidden, 'node');
    symlinkSync(workerNode(), node);
    const baton = startBaton(
      ['start', '--user', 'nobody', '--listen', 'http=tcp://127.0.0.1:0', '--', node, 'server.js'],
      { cwd: app.dir },
    );
    expect(await baton.waitForExit(10_000)).toEqual({ exitCode: 126, signal: null });
    expect(baton.output).toBe(
      `baton: The workers' user (uid ${NOBODY}, gid ${NOBODY}) cannot execute '${node}': it cannot enter the folder ${hidden} (mode 0700, owner 0:0). Give that user access, or put the command where it can reach it.\n`,
    );
    expect(baton.logs.filter((entry) => entry.msg === 'listener bound')).toEqual([]);
  });
});
