/**
 * Servers written for systemd, from PyPI, run unchanged: gunicorn reads LISTEN_FDS by itself and says
 * ready through NOTIFY_SOCKET; its forked workers, not the process baton started, are the ones that
 * accept, which `--ready poll` sees through the process tree. A stdlib ForkingMixIn server that says
 * nothing at all is seen the same way, and so is uvicorn on `--fd 3`. Each reloads five times under
 * load with zero failed requests.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { httpGetJson } from '../helpers/load.js';
import { type BatonProcess, killAll, REPO_ROOT, startBaton } from '../helpers/processes.js';
import { pythonServers } from '../helpers/python.js';
import { reloadsUnderLoad } from '../helpers/reloads.js';
import { waitFor } from '../helpers/wait.js';

const FIXTURES = join(REPO_ROOT, 'test', 'fixtures', 'python');
const servers = pythonServers();
/** The tests of servers from PyPI (gunicorn, uvicorn): skipped, with the reason, where the venv cannot be made. */
const withGunicorn = servers.bin ? test : test.skip;
const gunicornTitle = (title: string) => (servers.skip ? `${title} [skipped: ${servers.skip}]` : title);

let dir: string;
let versionFile: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'baton-py-'));
  versionFile = join(dir, 'VERSION');
  writeFileSync(versionFile, '1');
});

afterEach(async () => {
  await killAll();
  rmSync(dir, { recursive: true, force: true });
});

async function start(batonArgs: string[], command: string[]) {
  const baton = startBaton(['start', '--listen', 'http=tcp://127.0.0.1:0', ...batonArgs, '--', ...command], {
    cwd: FIXTURES,
    env: { APP_VERSION_FILE: versionFile },
  });
  const port = await baton.listenPort('http');
  await baton.waitForLogMsg('generation active', { gen: 1 }, 20_000);
  return { baton, port };
}

function gunicorn(): string[] {
  // No --bind: gunicorn takes LISTEN_FDS by itself (--bind fd://3 on top would count fd 3 twice).
  return [join(servers.bin ?? '', 'gunicorn'), '--workers', '2', '--graceful-timeout', '20', 'wsgi_app:app'];
}

/**
 * Five reloads with a version bump each under keep-alive and new-connection load: zero failed
 * requests, or with `resetsByServer`, none but the resets a server's own shutdown makes (never a
 * refusal, a timeout or a 5xx: the socket stayed open and every reload went through).
 */
async function fiveReloadsUnderLoad(baton: BatonProcess, port: number, { resetsByServer = false } = {}) {
  const { reports } = await reloadsUnderLoad(baton, port, versionFile, 5);
  for (const report of reports) {
    expect(report.ok).toBeGreaterThan(0);
    if (resetsByServer) {
      expect({ ...report.failures, reset: 0 }).toEqual({
        refused: 0,
        reset: 0,
        timeout: 0,
        http5xx: 0,
        other: 0,
      });
      console.log(
        `resets by the server's own shutdown: ${report.failures.reset} of ${report.requests} requests`,
      );
    } else {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
    }
  }
}

/** The readiness each worker of generation `gen` was seen by. */
function readyVia(baton: BatonProcess, gen: number): unknown[] {
  return baton.logs
    .filter((entry) => entry.msg === 'worker ready' && entry.gen === gen)
    .map((entry) => entry.via);
}

describe('gunicorn, unchanged', () => {
  withGunicorn(
    gunicornTitle(
      'with the defaults: ready through NOTIFY_SOCKET, its STATUS= in status, five reloads under load, zero failed',
    ),
    async () => {
      const { baton, port } = await start([], gunicorn());
      expect(readyVia(baton, 1)).toEqual(['notify']);
      const { body } = await httpGetJson(port);
      expect(body).toMatchObject({ version: '1', lang: 'gunicorn' });
      const status = await waitFor(
        () => baton.logs.find((entry) => entry.msg === 'worker status' && entry.gen === 1),
        { timeoutMs: 5000, what: "gunicorn's STATUS= in the log" },
      );
      expect(status).toMatchObject({ status: 'Gunicorn arbiter booted' });
      await fiveReloadsUnderLoad(baton, port);
      expect(readyVia(baton, 6)).toEqual(['notify']);
    },
    120_000,
  );

  withGunicorn(
    gunicornTitle('--ready poll sees it ready through the workers it forks, and reloads with zero failed'),
    async () => {
      const { baton, port } = await start(['--ready', 'poll'], gunicorn());
      expect(readyVia(baton, 1)).toEqual(['poll']);
      await fiveReloadsUnderLoad(baton, port);
    },
    120_000,
  );
});

describe('uvicorn, unchanged', () => {
  withGunicorn(
    gunicornTitle(
      "uvicorn --fd 3 with the defaults: seen ready by poll; five reloads under load lose no request to baton (only resets by uvicorn's own shutdown)",
    ),
    async () => {
      const { baton, port } = await start(
        ['--workers', '2'],
        // A drain bounded by uvicorn itself, as an operator would run it (it waits for every connection).
        [
          join(servers.bin ?? '', 'uvicorn'),
          '--fd',
          '3',
          '--no-access-log',
          '--timeout-graceful-shutdown',
          '5',
          'asgi_app:app',
        ],
      );
      expect(readyVia(baton, 1)).toEqual(['poll', 'poll']);
      const { body } = await httpGetJson(port);
      expect(body).toMatchObject({ version: '1', lang: 'uvicorn' });
      // uvicorn's shutdown closes at once the connections it holds that are idle (keep-alive between
      // requests, or accepted a moment before and not read yet), racing clients that send on them: a
      // few resets per reload, as a bare http.Server.close() makes. Nothing else may fail.
      await fiveReloadsUnderLoad(baton, port, { resetsByServer: true });
    },
    120_000,
  );
});

describe('a stdlib ForkingMixIn server that says nothing', () => {
  test('is ready under the defaults (its tree polls the socket) and reloads five times under load, zero failed', async () => {
    const { baton, port } = await start(['--workers', '2'], ['python3', join(FIXTURES, 'forking_http.py')]);
    expect(readyVia(baton, 1)).toEqual(['poll', 'poll']);
    const { body } = await httpGetJson(port);
    expect(body).toMatchObject({ version: '1', lang: 'forking' });
    await fiveReloadsUnderLoad(baton, port);
  }, 120_000);
});
