/**
 * Development: `--watch` reloads on save without dropping anyone, survives a
 * broken save, and `npm start`'s Ctrl-C stops the whole tree (through npm
 * itself, which has changed how it forwards signals).
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { httpGetJson, httpLoad, waitForVersion } from '../helpers/load.js';
import {
  type AppDir,
  BATON_BIN,
  descendants,
  killAll,
  makeAppDir,
  processAlive,
  REPO_ROOT,
  startBaton,
  startProcess,
} from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

const NODE = process.execPath;
let app: AppDir;

beforeEach(() => {
  app = makeAppDir();
});

afterEach(async () => {
  await killAll();
  app.cleanup();
});

function startWatching() {
  return startBaton(
    [
      'start',
      '--watch',
      '.',
      '--listen',
      'http=tcp://127.0.0.1:0',
      '--listen',
      'game=tcp://127.0.0.1:0',
      '--workers',
      '2',
      '--',
      NODE,
      'server.js',
    ],
    { cwd: app.dir },
  );
}

describe('--watch', () => {
  test('a save reloads under load with zero failed requests; a broken save keeps the old version and shows the error; the next good save goes through', async () => {
    const baton = startWatching();
    const port = await baton.listenPort('http');
    await baton.waitForLogMsg('watching for changes');
    await baton.waitForLogMsg('generation active', { gen: 1 });
    const load = httpLoad({
      port,
      keepAlive: true,
      concurrency: 2,
      maxRequests: 100_000,
      maxDurationMs: 60_000,
    });
    const fresh = httpLoad({
      port,
      keepAlive: false,
      concurrency: 1,
      maxRequests: 100_000,
      maxDurationMs: 60_000,
    });

    app.setVersion('1.1.0');
    await baton.waitForLogMsg('file changed: reloading', { file: 'VERSION' });
    await waitForVersion(port, '1.1.0', 10_000);
    // 1.1.0 answering once does not mean 1.0.0 has stopped: only once generation 1 is retired does
    // every request get 1.1.0, which the broken save below must leave serving.
    await baton.waitForLogMsg('generation retired', { gen: 1 }, 15_000);

    const good = readFileSync(join(app.dir, 'server.js'), 'utf8');
    app.writeFile('server.js', `${good}\nconst broken = ;\n`);
    const failure = await baton.waitForLog(
      (e) => String(e.msg).startsWith('reload failed'),
      15_000,
      'the broken save failing',
    );
    expect(String(failure.stderrTail)).toContain('SyntaxError');
    expect(baton.output).toContain('SyntaxError');
    expect((await httpGetJson(port)).body).toMatchObject({ version: '1.1.0' });

    app.writeFile('server.js', good);
    app.setVersion('1.2.0');
    await waitForVersion(port, '1.2.0', 10_000);

    const reports = await Promise.all([load.stop(), fresh.stop()]);
    for (const report of reports) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
    }
  });

  test('a first version that does not start keeps the master waiting for the next save', async () => {
    const good = readFileSync(join(app.dir, 'server.js'), 'utf8');
    app.writeFile('server.js', 'throw new Error("half-written");\n');
    const baton = startWatching();
    const port = await baton.listenPort('http');
    await baton.waitForLogMsg('waiting for a change to start again');
    app.writeFile('server.js', good);
    await baton.waitForLog((e) => e.msg === 'generation active', 15_000, 'a generation active after the fix');
    expect((await httpGetJson(port)).status).toBe(200);
  });
});

describe('npm start', () => {
  test('Ctrl-C (SIGINT to the foreground process group) stops the whole tree through npm', async () => {
    // The same shape as the project's own start script, on free ports.
    writeFileSync(
      join(app.dir, 'package.json'),
      JSON.stringify({
        name: 'baton-dev-test',
        private: true,
        scripts: {
          start: `exec "${NODE}" "${BATON_BIN}" start --pretty --watch . --workers 2 --listen http=tcp://127.0.0.1:0 --listen game=tcp://127.0.0.1:0 -- "${NODE}" server.js`,
        },
      }),
    );
    const npm = startProcess('npm', ['start'], { cwd: app.dir });
    await waitFor(() => (npm.output.match(/worker ready/g)?.length ?? 0) >= 2 || undefined, {
      timeoutMs: 20_000,
      what: 'two workers ready under npm start',
    });
    const tree = [npm.pid, ...descendants(npm.pid)];
    expect(tree.length).toBeGreaterThanOrEqual(4); // npm, the master, two workers
    // A terminal's Ctrl-C: SIGINT to every process of the foreground group (npm's, here).
    process.kill(-npm.pid, 'SIGINT');
    await npm.waitForExit(15_000);
    await waitFor(() => tree.every((pid) => !processAlive(pid)) || undefined, {
      timeoutMs: 10_000,
      what: () => `the tree gone (alive: ${tree.filter(processAlive).join(', ')})`,
    });
    expect(npm.output).toMatch(/stopped/);
  });

  test("PORT and GAME_PORT choose the ports of the project's own start script", async () => {
    // The real script, less its build (the tests run on the build already made); port 0 picks free ports.
    const { scripts } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8'));
    const build = 'npm run build --silent && ';
    expect(scripts.start.startsWith(build)).toBe(true);
    const master = startProcess('/bin/sh', ['-c', scripts.start.slice(build.length)], {
      cwd: REPO_ROOT,
      env: {
        PORT: '0',
        GAME_PORT: '0',
        PATH: `${dirname(NODE)}:${process.env.PATH}`,
        XDG_RUNTIME_DIR: app.dir,
      },
    });
    // --pretty: `listener bound {"listener":"http",...,"port":41235}`.
    const ports = await waitFor(
      () => {
        const bound = [...master.output.matchAll(/listener bound (\{.*\})/g)].map(
          (match) => JSON.parse(match[1] as string) as { listener: string; port: number },
        );
        return bound.length === 2 ? new Map(bound.map((entry) => [entry.listener, entry.port])) : undefined;
      },
      { timeoutMs: 10_000, what: 'both listeners bound' },
    );
    expect(ports.get('http')).not.toBe(8080);
    expect(ports.get('game')).not.toBe(9000);
    await waitFor(() => /generation active/.test(master.output) || undefined, {
      timeoutMs: 20_000,
      what: 'the first generation active',
    });
    expect((await httpGetJson(ports.get('http') as number)).body).toMatchObject({ generation: 1 });
  });
});
