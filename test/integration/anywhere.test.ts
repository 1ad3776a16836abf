/**
 * The operator's CLI from any folder: with XDG_RUNTIME_DIR unset, a master keeps its control socket in
 * the user's ~/.baton, where `baton status`, `reload` and `list` find it from anywhere; another user
 * neither sees nor reaches it. A mistyped option is answered with the right one.
 */
import { execFileSync } from 'node:child_process';
import { accessSync, chmodSync, constants, mkdtempSync, rmdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, sep } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { type AppDir, killAll, makeAppDir, REPO_ROOT, startBaton } from '../helpers/processes.js';

const NODE = process.execPath;
let app: AppDir;
let home: string;
let elsewhere: string;

beforeEach(() => {
  app = makeAppDir();
  home = mkdtempSync(join(tmpdir(), 'baton-home-'));
  elsewhere = mkdtempSync(join(tmpdir(), 'baton-elsewhere-'));
});

afterEach(async () => {
  await killAll();
  app.cleanup();
  rmSync(home, { recursive: true, force: true });
  rmSync(elsewhere, { recursive: true, force: true });
});

/** The environment of a user's shell with no XDG_RUNTIME_DIR (a plain `ssh`, `su`, a cron job). */
function shell(): Record<string, string | undefined> {
  return { XDG_RUNTIME_DIR: undefined, HOME: home };
}

async function runCli(args: string[], cwd: string, env = shell()) {
  const run = startBaton(args, { cwd, env });
  const { exitCode } = await run.waitForExit(20_000);
  return { exitCode, output: run.output };
}

/** Runs setpriv's arguments as uid 65534 (nobody): stdout on success, or the exit code and stderr. */
type AsNobody = (args: string[]) => { exitCode: number; output: string };

const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];

function runAs(command: string, args: string[]): { exitCode: number; output: string } {
  try {
    return {
      exitCode: 0,
      output: execFileSync(command, args, {
        cwd: '/',
        env: { PATH: process.env.PATH, HOME: '/nonexistent' },
        encoding: 'utf8',
        stdio: 'pipe',
      }),
    };
  } catch (error) {
    const failed = error as { status: number | null; stderr: string | null };
    // A command that could not be spawned at all (no unshare here) has neither status nor stderr.
    return { exitCode: failed.status ?? -1, output: failed.stderr ?? String(error) };
  }
}

/**
 * What the CLI reads from the clone: its entry point, the build, the dependencies (the pinned Node
 * among them) and package.json (the module type, the version).
 */
const CLI_ENTRIES = ['bin', 'dist', 'node_modules', 'package.json'];

/**
 * Lays the CLI_ENTRIES of clone "$1" out in folder "$2" for another user: a tmpfs anyone can enter on
 * "$2", and each entry bind-mounted into it; then runs setpriv with the rest of the arguments.
 */
const OPEN_CLONE = `clone=$1; open=$2; shift 2
mount -t tmpfs -o mode=755 baton-open "$open" || exit
for entry in ${CLI_ENTRIES.join(' ')}; do
  if [ -d "$clone/$entry" ]; then mkdir "$open/$entry"; else : > "$open/$entry"; fi
  mount --bind "$clone/$entry" "$open/$entry" || exit
done
exec setpriv "$@"`;

/**
 * How uid 65534 runs this repository's CLI (`baton …` as another user), or why it cannot here. From a
 * clone in a private folder (a 0700 `mktemp -d`, or the clone itself made 0700), which nobody can
 * enter, what the CLI needs is bind-mounted on a folder anyone can enter, in a mount namespace of its
 * own that goes with the command: nothing is mounted on the host.
 */
function nobodysCli(): AsNobody | string {
  if (process.getuid?.() !== 0) return 'switching to another user needs root';
  const direct: AsNobody = (args) =>
    runAs('setpriv', [...NOBODY, NODE, join(REPO_ROOT, 'bin', 'baton.js'), ...args]);
  if (direct(['--version']).exitCode === 0) return direct;
  const open = mkdtempSync('/tmp/baton-open-');
  chmodSync(open, 0o755);
  afterAll(() => rmdirSync(open)); // never recursive: it is a mount point while a command runs
  // A path inside the clone, seen through the mount; one outside it (a Node installed elsewhere) as it is.
  const inOpen = (path: string) =>
    path.startsWith(REPO_ROOT + sep) ? join(open, relative(REPO_ROOT, path)) : path;
  const mounted: AsNobody = (args) =>
    runAs('unshare', [
      '--mount',
      '--',
      'sh',
      '-c',
      OPEN_CLONE,
      'as-nobody',
      REPO_ROOT,
      open,
      ...NOBODY,
      inOpen(NODE),
      inOpen(join(REPO_ROOT, 'bin', 'baton.js')),
      ...args,
    ]);
  const tried = mounted(['--version']);
  if (tried.exitCode === 0) return mounted;
  return `uid 65534 cannot run ${NODE} and ${REPO_ROOT}/bin/baton.js from here, nor through a bind mount in a new mount namespace (${tried.output.trim()})`;
}

describe('the CLI from any folder', () => {
  test('status, reload and list find the master from another folder through ~/.baton', async () => {
    app.setVersion('1.0.0');
    const master = startBaton(
      [
        'start',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--listen',
        'game=tcp://127.0.0.1:0',
        '--version-file',
        'VERSION',
        '--',
        NODE,
        'server.js',
      ],
      {
        cwd: app.dir,
        env: { ...shell(), PORT: undefined },
      },
    );
    await master.waitForLogMsg('generation active', { gen: 1 }, 15_000);
    accessSync(join(home, '.baton', 'server.sock'), constants.F_OK);

    const status = await runCli(['status', '--json'], elsewhere);
    expect(status.exitCode).toBe(0);
    expect(JSON.parse(status.output)).toMatchObject({ pid: master.pid, name: 'server', cwd: app.dir });

    const listed = await runCli(['list', '--json'], elsewhere);
    expect(listed.exitCode).toBe(0);
    expect(JSON.parse(listed.output)).toEqual([
      {
        name: 'server',
        pid: master.pid,
        cwd: app.dir,
        control: join(home, '.baton', 'server.sock'),
        state: 'running',
        version: '1.0.0',
        ready: 1,
        workers: 1,
      },
    ]);
    const table = await runCli(['list'], elsewhere);
    expect(table.output.split('\n')[0]).toMatch(/^NAME +PID +STATE +VERSION +WORKERS +FOLDER +CONTROL$/);
    expect(table.output).toContain(`server  ${master.pid}  running  1.0.0    1/1      ${app.dir}`);

    app.setVersion('1.1.0');
    const reload = await runCli(['reload'], elsewhere);
    expect(reload.exitCode).toBe(0);
    expect(JSON.parse((await runCli(['list', '--json'], elsewhere)).output)[0]).toMatchObject({
      version: '1.1.0',
    });
  }, 60_000);

  test('with no master, list says where it looked and exits 0', async () => {
    const listed = await runCli(['list'], elsewhere);
    expect(listed).toEqual({
      exitCode: 0,
      output: `no baton master is running (looked in ${join(home, '.baton')}, ${join(elsewhere, '.baton')})\n`,
    });
  });

  const nobody = nobodysCli();
  const reason = typeof nobody === 'string' ? nobody : undefined;
  (reason ? test.skip : test)(
    `another user neither sees nor reaches the master${reason ? ` [skipped: ${reason}]` : ''}`,
    async () => {
      const master = startBaton(
        [
          'start',
          '--listen',
          'http=tcp://127.0.0.1:0',
          '--listen',
          'game=tcp://127.0.0.1:0',
          '--',
          NODE,
          'server.js',
        ],
        {
          cwd: app.dir,
          env: shell(),
        },
      );
      await master.waitForLogMsg('generation active', { gen: 1 }, 15_000);
      const socket = join(home, '.baton', 'server.sock');
      const as = nobody as AsNobody;
      expect(as(['list', '--json'])).toEqual({ exitCode: 0, output: '[]\n' });
      const reached = as(['status', '--control', socket]);
      expect(reached.exitCode).toBe(8);
      expect(reached.output).toMatch(/permission denied/);
    },
    30_000,
  );

  test('a mistyped option or command is answered with the right one', async () => {
    expect(
      await runCli(
        ['start', '--worker', '2', '--listen', 'tcp://127.0.0.1:0', '--', NODE, 'x.js'],
        elsewhere,
      ),
    ).toEqual({
      exitCode: 2,
      output: "baton: Unknown argument: worker; did you mean --workers? (see 'baton --help')\n",
    });
    expect((await runCli(['stauts'], elsewhere)).output).toBe(
      "baton: Unknown argument: stauts; did you mean status? (see 'baton --help')\n",
    );
    expect((await runCli(['status', '--jsn'], elsewhere)).output).toBe(
      "baton: Unknown argument: jsn; did you mean --json? (see 'baton --help')\n",
    );
    // A flag without its value: one line and exit 2, not an internal error with yargs' stack.
    expect(await runCli(['start', '--workers'], elsewhere)).toEqual({
      exitCode: 2,
      output: "baton: Not enough arguments following: workers (see 'baton --help')\n",
    });
  });
});
