/** The integration-test toolkit itself, against tiny real servers and processes made here. */
import { existsSync, lstatSync, readFileSync, realpathSync, statSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import { gameSession, httpGetJson, httpLoad, waitForVersion } from '../helpers/load.js';
import {
  copyNodeForAllUsers,
  descendants,
  killAll,
  makeAppDir,
  OUTPUT_TAIL_BYTES,
  PACKAGE_NAME,
  processAlive,
  processGroupAlive,
  REPO_ROOT,
  startNode,
} from '../helpers/processes.js';
import { waitFor, withDeadline } from '../helpers/wait.js';

const servers: Array<http.Server | net.Server> = [];
const serverSockets = new Set<net.Socket>();

afterEach(async () => {
  await killAll();
  for (const socket of serverSockets) socket.destroy();
  serverSockets.clear();
  await Promise.all(servers.splice(0).map((server) => new Promise((resolve) => server.close(resolve))));
});

/** Listens on 127.0.0.1 port 0 and reads the port back. */
async function listen<S extends http.Server | net.Server>(server: S): Promise<{ server: S; port: number }> {
  servers.push(server);
  server.on('connection', (socket: net.Socket) => {
    serverSockets.add(socket);
    socket.once('close', () => serverSockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as net.AddressInfo).port };
}

function jsonServer(version: string) {
  return listen(
    http.createServer((_request, response) => {
      response.setHeader('content-type', 'application/json');
      response.end(JSON.stringify({ version }));
    }),
  );
}

/** Stops accepting and drops every open connection, so that the port refuses from now on. */
async function shutDown(server: http.Server): Promise<void> {
  const closed = new Promise((resolve) => server.close(resolve));
  server.closeAllConnections();
  await closed;
}

describe('waitFor and withDeadline', () => {
  test('waitFor returns the first value that is neither undefined nor false', async () => {
    let probes = 0;
    const value = await waitFor(
      () => {
        probes++;
        if (probes < 3) return probes === 1 ? undefined : false;
        return { probes };
      },
      { timeoutMs: 1000, what: 'the third probe', intervalMs: 1 },
    );
    expect(value).toEqual({ probes: 3 });
  });

  test('waitFor times out with a message that says what did not happen', async () => {
    await expect(waitFor(() => undefined, { timeoutMs: 50, what: 'a miracle' })).rejects.toThrow(
      'timed out after 50ms waiting for a miracle',
    );
  });

  test('waitFor abandons a probe that hangs at the deadline', async () => {
    await expect(
      waitFor(() => new Promise<undefined>(() => {}), { timeoutMs: 50, what: () => 'a hanging probe' }),
    ).rejects.toThrow('timed out after 50ms waiting for a hanging probe');
  });

  test('withDeadline passes a value through and rejects a promise that does not settle', async () => {
    await expect(withDeadline(Promise.resolve(7), 50, 'seven')).resolves.toBe(7);
    await expect(withDeadline(new Promise(() => {}), 50, 'never')).rejects.toThrow(
      'timed out after 50ms waiting for never',
    );
  });
});

describe('httpLoad', () => {
  test.each([true, false])(
    'counts ok responses by version (keepAlive %s) and stops at maxRequests',
    async (keepAlive) => {
      const { port } = await jsonServer('7');
      const report = await httpLoad({
        port,
        keepAlive,
        concurrency: 4,
        maxRequests: 50,
        maxDurationMs: 3000,
        recordTimeline: true,
      }).done;
      expect(report).toMatchObject({ requests: 50, ok: 50, failed: 0, errors: [], versions: { '7': 50 } });
      expect(report.byTime).toHaveLength(50);
      expect(report.byTime?.every(({ version }) => version === '7')).toBe(true);
    },
  );

  test('stops by itself at maxDurationMs', async () => {
    const { port } = await jsonServer('1');
    const report = await withDeadline(
      httpLoad({ port, keepAlive: true, concurrency: 2, maxRequests: 1e9, maxDurationMs: 200 }).done,
      2000,
      'the load to stop at its duration',
    );
    expect(report.durationMs).toBeGreaterThanOrEqual(200);
    expect(report.requests).toBeGreaterThan(0);
    expect(report.requests).toBe(report.ok);
    expect(report.byTime).toBeUndefined();
  });

  test('counts refused connections once the server is gone, and stop() ends it', async () => {
    const { server, port } = await jsonServer('1');
    const load = httpLoad({ port, keepAlive: false, concurrency: 2, maxRequests: 1e6, maxDurationMs: 4000 });
    await waitFor(() => load.snapshot().ok > 0, { timeoutMs: 2000, what: 'a first ok response' });
    await shutDown(server);
    await waitFor(() => load.snapshot().failures.refused > 0, { timeoutMs: 2000, what: 'a refused request' });
    const report = await load.stop();
    expect(report.ok).toBeGreaterThan(0);
    expect(report.failures.refused).toBeGreaterThan(0);
    expect(report.ok + report.failed).toBe(report.requests);
    expect(report.errors.length).toBeLessThanOrEqual(20);
    expect(report.errors).toContainEqual(expect.stringMatching(/^refused: .*ECONNREFUSED/));
  });

  test('markCutoff: failures on connections established before it are told from those opened after it', async () => {
    const { server, port } = await jsonServer('1');
    const load = httpLoad({ port, keepAlive: true, concurrency: 2, maxRequests: 1e6, maxDurationMs: 4000 });
    await waitFor(() => load.snapshot().ok > 0, { timeoutMs: 2000, what: 'a first ok response' });
    expect(load.snapshot().cutoff).toBeUndefined();
    load.markCutoff();
    await shutDown(server);
    await waitFor(() => (load.snapshot().cutoff?.openedAfter.refused ?? 0) > 0, {
      timeoutMs: 2000,
      what: 'a refused request on a new connection',
    });
    const report = await load.stop();
    const { establishedBefore, openedAfter } = report.cutoff ?? {};
    // A refused connection was never established; the ones cut by the shutdown were.
    expect(establishedBefore?.refused).toBe(0);
    const split = Object.values({ ...establishedBefore }).concat(Object.values({ ...openedAfter }));
    expect(split.reduce((sum, count) => sum + count, 0)).toBe(report.failed);
  });

  test('classifies resets, 5xx, other statuses, non-JSON bodies and timeouts', async () => {
    const reset = await listen(http.createServer((request) => request.socket.destroy()));
    const unavailable = await listen(
      http.createServer((_request, response) => response.writeHead(503).end('draining')),
    );
    const notFound = await listen(http.createServer((_request, response) => response.writeHead(404).end()));
    const notJson = await listen(http.createServer((_request, response) => response.end('hello')));
    const silent = await listen(http.createServer(() => {}));
    const run = (port: number, requestTimeoutMs?: number) =>
      httpLoad({
        port,
        keepAlive: false,
        concurrency: 2,
        maxRequests: 4,
        maxDurationMs: 3000,
        requestTimeoutMs,
      }).done;

    const [resets, fives, fours, texts, timeouts] = await Promise.all([
      run(reset.port),
      run(unavailable.port),
      run(notFound.port),
      run(notJson.port),
      run(silent.port, 100),
    ]);
    expect(resets).toMatchObject({ requests: 4, ok: 0, failed: 4, failures: { reset: 4 } });
    expect(fives).toMatchObject({ failed: 4, failures: { http5xx: 4 } });
    expect(fours).toMatchObject({ failed: 4, failures: { other: 4 } });
    expect(fours.errors[0]).toBe('other: HTTP 404');
    expect(texts).toMatchObject({ failed: 4, failures: { other: 4 } });
    expect(timeouts).toMatchObject({ requests: 4, failed: 4, failures: { timeout: 4 } });
  });
});

describe('single requests', () => {
  test('httpGetJson returns status, headers and the parsed body, and rejects once the server is gone', async () => {
    const { server, port } = await jsonServer('3');
    const response = await httpGetJson(port, '/anything');
    expect(response.status).toBe(200);
    expect(response.headers['content-type']).toBe('application/json');
    expect(response.body).toEqual({ version: '3' });
    await shutDown(server);
    await expect(httpGetJson(port)).rejects.toThrow(/ECONNREFUSED/);
  });

  test('waitForVersion polls until the version changes, and says what it last saw', async () => {
    let served = 0;
    const { port } = await listen(
      http.createServer((_request, response) => {
        served++;
        response.end(JSON.stringify({ version: served <= 3 ? '1' : '2' }));
      }),
    );
    const response = await waitForVersion(port, '2', 2000);
    expect(response.body?.version).toBe('2');
    expect(served).toBe(4);
    await expect(waitForVersion(port, '9', 150)).rejects.toThrow(
      `timed out after 150ms waiting for port ${port} to serve version 9 (last: HTTP 200 version 2)`,
    );
  });
});

describe('gameSession', () => {
  /** A fake of the example app's game listener, with a `crash` command that drops the connection. */
  function fakeGameServer() {
    return listen(
      net.createServer((socket) => {
        let coins = 0;
        let partial = '';
        socket.write(`welcome version=3 pid=${process.pid}\n`);
        socket.setEncoding('utf8');
        socket.on('data', (chunk: string) => {
          const lines = (partial + chunk).split('\n');
          partial = lines.pop() ?? '';
          for (const line of lines) {
            if (line === 'work') socket.write(`coins ${++coins}\n`);
            else if (line === 'whoami') socket.write(`version=3 pid=${process.pid} coins=${coins}\n`);
            else if (line === 'quit') socket.end('bye\n');
            else if (line === 'crash') socket.destroy();
          }
        });
      }),
    );
  }

  test('reads the welcome, pairs replies with requests in order, and sees the server close', async () => {
    const { port } = await fakeGameServer();
    const session = gameSession(port);
    await expect(session.welcome).resolves.toEqual({ version: '3', pid: process.pid });
    await expect(Promise.all([session.request('work'), session.request('work')])).resolves.toEqual([
      'coins 1',
      'coins 2',
    ]);
    await expect(session.request('whoami')).resolves.toBe(`version=3 pid=${process.pid} coins=2`);
    await expect(session.request('quit')).resolves.toBe('bye');
    await withDeadline(session.closed, 1000, 'the server to close the session');
  });

  test('rejects a pending request when the connection drops, and a welcome from a closed port', async () => {
    const { server, port } = await fakeGameServer();
    const session = gameSession(port);
    await session.welcome;
    await expect(session.request('crash')).rejects.toThrow("connection closed before the reply to 'crash'");
    await session.closed;
    await new Promise((resolve) => server.close(resolve));
    await expect(gameSession(port).welcome).rejects.toThrow(
      /connection closed before the welcome line.*ECONNREFUSED/,
    );
  });
});

describe('processes', () => {
  /** A stand-in master: logs JSON and plain lines, and starts one worker in its group and one in a group of its own. */
  const FAKE_MASTER = `
    const { spawn } = require('node:child_process');
    const log = (entry) => console.log(JSON.stringify({ level: 30, ...entry }));
    log({ msg: 'listener bound', listener: 'http', port: 4321 });
    console.log('plain worker line');
    console.error('a line on stderr');
    const idle = ['-e', 'setInterval(() => {}, 1000)'];
    const inGroup = spawn(process.execPath, idle, { stdio: 'inherit' });
    const ownGroup = spawn(process.execPath, idle, { stdio: 'inherit', detached: true });
    log({ msg: 'worker started', gen: 1, worker: 0, pid: inGroup.pid });
    log({ msg: 'worker started', gen: 1, worker: 1, pid: ownGroup.pid });
    setInterval(() => {}, 1000);
  `;

  test('reads the log, finds the tree, and killTree leaves no process of it', async () => {
    const master = startNode(['-e', FAKE_MASTER]);
    expect(await master.listenPort('http')).toBe(4321);
    const first = await master.waitForLogMsg('worker started', { gen: 1, worker: 0 });
    const second = await master.waitForLogMsg('worker started', { worker: 1 });
    const workers = [first.pid, second.pid] as number[];
    await waitFor(() => master.output.includes('a line on stderr'), {
      timeoutMs: 2000,
      what: 'the stderr line',
    });
    expect(master.output).toContain('plain worker line');
    expect(master.logs.map((entry) => entry.msg)).toEqual([
      'listener bound',
      'worker started',
      'worker started',
    ]);
    expect(descendants(master.pid)).toEqual(expect.arrayContaining(workers));
    expect(processGroupAlive(master.pid)).toBe(true);

    await master.killTree();
    expect(processGroupAlive(master.pid)).toBe(false);
    expect(workers.filter(processAlive)).toEqual([]);
    expect(processAlive(master.pid)).toBe(false);
  });

  test('waitForExit reports an exit code or a signal, and a log wait fails once stdout is closed', async () => {
    const exits = startNode(['-e', 'process.exit(3)']);
    await expect(exits.waitForExit(2000)).resolves.toEqual({ exitCode: 3, signal: null });
    await expect(exits.waitForLogMsg('never', {}, 2000)).rejects.toThrow(
      `baton's stdout closed before log "never"`,
    );

    const idles = startNode([
      '-e',
      'console.log(JSON.stringify({ msg: "up" })); setInterval(() => {}, 1000)',
    ]);
    await idles.waitForLogMsg('up');
    await expect(idles.waitForLogMsg('never', { gen: 2 }, 50)).rejects.toThrow(
      'timed out after 50ms waiting for log "never" with {"gen":2}',
    );
    idles.signal('SIGTERM');
    await expect(idles.waitForExit(2000)).resolves.toEqual({ exitCode: null, signal: 'SIGTERM' });
  });

  test('killAll kills what a test left running', async () => {
    const left = startNode(['-e', FAKE_MASTER]);
    const worker = (await left.waitForLogMsg('worker started', { worker: 1 })).pid as number;
    await killAll();
    expect(processGroupAlive(left.pid)).toBe(false);
    expect(processAlive(worker)).toBe(false);
  });

  test('makeAppDir copies app/ and links baton to the repository', () => {
    expect(JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')).name).toBe(PACKAGE_NAME);
    const app = makeAppDir();
    try {
      expect(realpathSync(join(app.dir, 'node_modules', PACKAGE_NAME))).toBe(realpathSync(REPO_ROOT));
      app.setVersion('2');
      expect(readFileSync(join(app.dir, 'VERSION'), 'utf8')).toBe('2');
      app.writeFile('lib/extra.js', 'export {};\n');
      expect(readFileSync(join(app.dir, 'lib', 'extra.js'), 'utf8')).toBe('export {};\n');
    } finally {
      app.cleanup();
    }
    expect(() => readFileSync(join(app.dir, 'VERSION'))).toThrow(/ENOENT/);
  });

  test('a process that floods its output: only the last OUTPUT_TAIL_BYTES are kept, every byte is counted, log lines are still read', async () => {
    const flood = startNode([
      '-e',
      "const block = 'x'.repeat(1023) + '\\n'; for (let i = 0; i < 8192; i++) process.stdout.write(block); console.log(JSON.stringify({ msg: 'done' }));",
    ]);
    await flood.waitForLogMsg('done', {}, 20_000);
    await flood.waitForExit(5000);
    const total = 8192 * 1024 + '{"msg":"done"}\n'.length;
    expect(flood.outputBytes).toBe(total);
    expect(flood.output.length).toBe(OUTPUT_TAIL_BYTES);
    expect(flood.output.endsWith('x\n{"msg":"done"}\n')).toBe(true);
    expect(flood.outputSince(total - 15)).toBe('{"msg":"done"}\n');
  });

  test('for all users: makeAppDir copies baton/child instead of linking, every folder 0755; Node is copied to a 0755 folder', () => {
    const app = makeAppDir({ forAllUsers: true });
    const node = copyNodeForAllUsers();
    try {
      const linked = join(app.dir, 'node_modules', PACKAGE_NAME);
      expect(lstatSync(linked).isDirectory()).toBe(true); // a folder of its own, not a link
      expect(realpathSync(linked).startsWith(realpathSync(REPO_ROOT))).toBe(false);
      expect(existsSync(join(linked, 'dist', 'child', 'index.js'))).toBe(true);
      for (const dir of [app.dir, linked, join(linked, 'dist', 'child')]) {
        expect(statSync(dir).mode & 0o777).toBe(0o755);
      }
      expect(statSync(join(app.dir, 'server.js')).mode & 0o444).toBe(0o444);
      expect(statSync(node.node).mode & 0o777).toBe(0o755);
      expect(statSync(join(node.node, '..')).mode & 0o777).toBe(0o755);
    } finally {
      app.cleanup();
      node.cleanup();
    }
    expect(existsSync(node.node)).toBe(false);
  });
});
