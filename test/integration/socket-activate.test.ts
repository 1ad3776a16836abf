/**
 * baton behind systemd's socket hand-over (`systemd-socket-activate`, what a `.socket` unit does): a
 * socket handed over without a name serves whatever name the app asks for, and a `--listen` for the
 * same address adopts it instead of failing; reloads under load lose nothing.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { httpGetJson } from '../helpers/load.js';
import {
  type AppDir,
  BATON_BIN,
  type BatonProcess,
  killAll,
  makeAppDir,
  startProcess,
} from '../helpers/processes.js';
import { reloadsUnderLoad } from '../helpers/reloads.js';
import { waitFor } from '../helpers/wait.js';

const activator = (() => {
  try {
    return execFileSync('sh', ['-c', 'command -v systemd-socket-activate'], { encoding: 'utf8' }).trim();
  } catch {
    return undefined;
  }
})();
const withActivator = activator ? test : test.skip;
const title = (text: string) => (activator ? text : `${text} [skipped: no systemd-socket-activate here]`);

/** An app that asks for its socket by the name 'http', as the child API's users do. */
const SOLO_APP = `
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { generation, ready, serve } from 'baton-supervisor/child';
const version = readFileSync(new URL('./VERSION', import.meta.url), 'utf8').trim();
const server = http.createServer((request, response) => {
  response.setHeader('content-type', 'application/json');
  response.end(JSON.stringify({ version, generation, pid: process.pid, names: process.env.LISTEN_FDNAMES ?? null }));
});
await serve(server, 'http');
ready();
`;

let app: AppDir;

beforeEach(() => {
  app = makeAppDir();
  app.writeFile('solo.mjs', SOLO_APP);
  app.setVersion('1');
});

afterEach(async () => {
  await killAll();
  app.cleanup();
});

/**
 * Starts `systemd-socket-activate -l 127.0.0.1:PORT <command>` and returns the port it listens on. It
 * takes no port 0: a random port is tried, and another while the one tried is taken (never a port
 * bound, closed and reused).
 */
async function activate(command: string[]): Promise<{ activated: BatonProcess; port: number }> {
  for (let attempt = 1; ; attempt++) {
    const tried = 20_000 + Math.floor(Math.random() * 20_000);
    const activated = startProcess(
      activator as string,
      ['-l', `127.0.0.1:${tried}`, ...command.map((arg) => arg.replace('{port}', String(tried)))],
      { cwd: app.dir, env: { XDG_RUNTIME_DIR: app.dir } },
    );
    const outcome = await waitFor(
      () =>
        activated.output.includes(`Listening on 127.0.0.1:${tried} as 3`)
          ? 'listening'
          : /Address already in use/.test(activated.output)
            ? 'taken'
            : undefined,
      { timeoutMs: 5000, what: () => `systemd-socket-activate to listen (output: ${activated.output})` },
    );
    if (outcome === 'listening') return { activated, port: tried };
    await activated.killTree();
    if (attempt === 5) throw new Error(`5 random ports were taken: ${activated.output}`);
  }
}

/** Five reloads with a version bump each under keep-alive and new-connection load: zero failed. */
async function fiveReloadsUnderLoad(baton: BatonProcess, port: number): Promise<void> {
  const { reports } = await reloadsUnderLoad(baton, port, join(app.dir, 'VERSION'), 5);
  for (const report of reports) {
    expect(report.errors).toEqual([]);
    expect(report.failed).toBe(0);
  }
}

describe('systemd-socket-activate in front of baton', () => {
  withActivator(
    title('without --fdname: the unnamed socket serves the name the app asks for, and reloads lose nothing'),
    async () => {
      const { activated, port } = await activate([
        process.execPath,
        BATON_BIN,
        'start',
        '--',
        'node',
        'solo.mjs',
      ]);
      // systemd-socket-activate starts baton at the first connection: this request waits in the backlog.
      const first = await httpGetJson(port, '/', { timeoutMs: 15_000 });
      expect(first.body).toMatchObject({ version: '1', generation: 1, names: null });
      expect(activated.logs.find((entry) => entry.msg === 'listener bound')).toMatchObject({
        listener: 'listen0',
        origin: 'inherited',
        port,
      });
      await fiveReloadsUnderLoad(activated, port);
    },
    90_000,
  );

  withActivator(
    title(
      'with --listen http= for the same address: that socket is adopted under the name, nothing else is bound',
    ),
    async () => {
      const { activated, port } = await activate([
        process.execPath,
        BATON_BIN,
        'start',
        '--listen',
        'http=tcp://127.0.0.1:{port}',
        '--',
        'node',
        'solo.mjs',
      ]);
      const first = await httpGetJson(port, '/', { timeoutMs: 15_000 });
      expect(first.body).toMatchObject({ version: '1', names: 'http' });
      const bound = activated.logs.filter((entry) => entry.msg === 'listener bound');
      expect(bound).toEqual([expect.objectContaining({ listener: 'http', origin: 'inherited', port })]);
      await fiveReloadsUnderLoad(activated, port);
    },
    90_000,
  );
});
