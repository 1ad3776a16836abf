/**
 * The config file (docs/config.md): `baton start --config`, SIGHUP and `baton reload --config` read it
 * again and reload with it under load; a bad file changes nothing; the example app's PM2 ecosystem file
 * runs as it is.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import type { MasterStatus } from '../../supervisor/control/status.js';
import { flowingLoads, httpGetJson, stopLoads, waitForVersion } from '../helpers/load.js';
import {
  type AppDir,
  type BatonProcess,
  killAll,
  makeAppDir,
  REPO_ROOT,
  startBaton,
} from '../helpers/processes.js';
import { reloadsUnderLoad } from '../helpers/reloads.js';

let app: AppDir | undefined;
let runtime: string | undefined;

afterEach(async () => {
  await killAll();
  app?.cleanup();
  app = undefined;
  if (runtime) rmSync(runtime, { recursive: true, force: true });
  runtime = undefined;
});

/** A private runtime folder for the control socket, so that `baton status` finds this master only. */
function runtimeEnv(): Record<string, string> {
  runtime = mkdtempSync(join(tmpdir(), 'baton-run-'));
  return { XDG_RUNTIME_DIR: runtime };
}

/** baton.json for the example app copy: two listeners on free ports, the test's own node. */
function batonJson(fields: Record<string, unknown>): string {
  return `${JSON.stringify(
    {
      listen: ['http=tcp://127.0.0.1:0', 'game=tcp://127.0.0.1:0'],
      command: [process.execPath, 'server.js'],
      readyTimeout: '20s',
      drainTimeout: '10s',
      ...fields,
    },
    null,
    2,
  )}\n`;
}

/**
 * The name of this file's masters: client commands name it, since the user's ~/.baton may hold another
 * master that answers (a shared machine).
 */
const NAME = 'config-test';

async function statusOf(env: Record<string, string>, name = NAME): Promise<MasterStatus> {
  const run = startBaton(['status', '--json', '--name', name], { env });
  expect((await run.waitForExit(10_000)).exitCode).toBe(0);
  return JSON.parse(run.output) as MasterStatus;
}

/** One variable of a live process's environment, from /proc. */
function environOf(pid: number, name: string): string | undefined {
  const entries = readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0');
  return entries.find((entry) => entry.startsWith(`${name}=`))?.slice(name.length + 1);
}

async function startWithConfig(
  args: string[],
  env: Record<string, string>,
): Promise<{ baton: BatonProcess; port: number }> {
  const baton = startBaton(['start', ...args], { cwd: (app as AppDir).dir, env });
  const port = await baton.listenPort('http');
  await baton.waitForLogMsg('generation active', { gen: 1 }, 20_000);
  return { baton, port };
}

describe('config file', () => {
  test('SIGHUP: workers 1 → 3 and a new environment under keep-alive and new-connection load, 0 failed', async () => {
    app = makeAppDir();
    const env = runtimeEnv();
    const file = join(app.dir, 'baton.json');
    writeFileSync(file, batonJson({ workers: 1, env: { STAGE: 'one' } }));
    const { baton, port } = await startWithConfig(['--config', 'baton.json', '--name', NAME], env);
    const before = await statusOf(env);
    const first = before.generations.find((generation) => generation.id === 1);
    expect(first?.config?.path).toBe(file);
    expect(first?.workers.map((worker) => environOf(worker.pid as number, 'STAGE'))).toEqual(['one']);

    const loads = await flowingLoads(port);
    writeFileSync(file, batonJson({ workers: 3, env: { STAGE: 'two' } }));
    app.setVersion('2');
    baton.signal('SIGHUP');
    expect(await baton.waitForLogMsg('generation starting', { gen: 2 }, 10_000)).toMatchObject({
      workers: 3,
      config: file,
    });
    await baton.waitForLogMsg('generation active', { gen: 2 }, 20_000);
    await baton.waitForLogMsg('generation retired', { gen: 1 }, 20_000);
    await waitForVersion(port, '2', 5000);
    expect(await stopLoads(loads)).toEqual({ errors: [], failed: 0, eachServed: true });

    const after = await statusOf(env);
    const serving = after.generations.find((generation) => generation.state === 'active');
    expect(serving?.id).toBe(2);
    const workers = serving?.workers.filter((worker) => worker.state === 'ready') ?? [];
    expect(workers).toHaveLength(3);
    expect(workers.map((worker) => environOf(worker.pid as number, 'STAGE'))).toEqual(['two', 'two', 'two']);
    expect(serving?.config?.path).toBe(file);
    expect(serving?.config?.hash).not.toBe(first?.config?.hash);
    expect(after.workers).toBe(3);

    const text = startBaton(['status', '--name', NAME], { env });
    expect((await text.waitForExit(10_000)).exitCode).toBe(0);
    expect(text.output).toContain(`generation 2 runs config ${file} (sha256 ${serving?.config?.hash}`);
  });

  test('a bad field, an unknown key or bad JSON refuses the reload in one line; the old generation serves on, 0 failed', async () => {
    app = makeAppDir();
    const env = runtimeEnv();
    const file = join(app.dir, 'baton.json');
    writeFileSync(file, batonJson({ workers: 1 }));
    const { baton, port } = await startWithConfig(['--config', 'baton.json', '--name', NAME], env);
    const loads = await flowingLoads(port);

    writeFileSync(file, batonJson({ workers: 'three' }));
    const field = "baton.json: Expected `workers` to be a whole number from 1 to 1024, got 'three'";
    baton.signal('SIGHUP');
    await baton.waitForLogMsg(`config refused: ${field}`, { source: 'SIGHUP' }, 10_000);

    const reload = startBaton(['reload', '--config', '--name', NAME], { env });
    const exit = await reload.waitForExit(10_000);
    expect(reload.output.trim()).toBe(`baton: ${field}`);
    expect(exit.exitCode).toBe(2);

    const unknown = join(app.dir, 'other.json');
    writeFileSync(unknown, batonJson({ workers: 2, colour: 'blue' }));
    const other = startBaton(['reload', '--config', unknown, '--name', NAME], { env });
    expect((await other.waitForExit(10_000)).exitCode).toBe(2);
    expect(other.output.trim()).toMatch(
      /^baton: other\.json: Unknown key `colour`; expected one of listen, /,
    );

    writeFileSync(file, '{ "workers": 2,\n');
    baton.signal('SIGHUP');
    await baton.waitForLog(
      (entry) =>
        typeof entry.msg === 'string' && entry.msg.startsWith('config refused: baton.json: not valid JSON'),
      10_000,
      'the bad JSON refused',
    );

    // A listener the file adds that cannot be bound (the port is taken): refused too.
    writeFileSync(
      file,
      batonJson({
        workers: 1,
        listen: ['http=tcp://127.0.0.1:0', 'game=tcp://127.0.0.1:0', `admin=tcp://127.0.0.1:${port}`],
      }),
    );
    const taken = startBaton(['reload', '--config', '--name', NAME], { env });
    expect((await taken.waitForExit(10_000)).exitCode).toBe(2);
    expect(taken.output.trim()).toMatch(new RegExp(`^baton: .*admin=tcp://127\\.0\\.0\\.1:${port}.*$`));
    expect(taken.output.trim().split('\n')).toHaveLength(1);

    expect(await stopLoads(loads)).toEqual({ errors: [], failed: 0, eachServed: true });
    expect(baton.logs.some((entry) => entry.msg === 'generation starting' && entry.gen === 2)).toBe(false);
    const status = await statusOf(env);
    expect(status.generations.find((generation) => generation.state === 'active')?.id).toBe(1);
    // And the file, fixed, goes through.
    writeFileSync(file, batonJson({ workers: 2 }));
    const fixed = startBaton(['reload', '--config', '--name', NAME], { env });
    expect((await fixed.waitForExit(20_000)).exitCode).toBe(0);
    expect(await baton.waitForLogMsg('generation starting', { gen: 2 })).toMatchObject({ workers: 2 });
    // status tells a reload that read the file again from a plain one.
    const reloads = (await statusOf(env)).reloads.map((record) => [record.generation, record.trigger]);
    expect(reloads).toEqual([
      [1, 'start'],
      [2, 'config'],
    ]);
  });

  test("the example app's PM2 ecosystem file runs under baton start --config and reloads with 0 failed", async () => {
    app = makeAppDir();
    const env = runtimeEnv();
    const { baton, port } = await startWithConfig(
      [
        '--config',
        'ecosystem.config.cjs',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--listen',
        'game=tcp://127.0.0.1:0',
      ],
      env,
    );
    expect(baton.logs.find((entry) => entry.msg === 'generation starting')).toMatchObject({ workers: 2 });
    expect(baton.logs.filter((entry) => entry.level === 40).map((entry) => entry.msg)).toContain(
      'ecosystem.config.cjs: `apps[0].exec_mode` is ignored: baton always runs the workers side by side on the shared listening sockets',
    );
    const { reports } = await reloadsUnderLoad(baton, port, join(app.dir, 'VERSION'), 2);
    for (const report of reports) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
    }
    // The file is read again on SIGHUP: one instance from now on.
    const file = join(app.dir, 'ecosystem.config.cjs');
    writeFileSync(file, readFileSync(file, 'utf8').replace('instances: 2', 'instances: 1'));
    const loads = await flowingLoads(port);
    baton.signal('SIGHUP');
    expect(await baton.waitForLogMsg('generation starting', { gen: 4 }, 10_000)).toMatchObject({
      workers: 1,
    });
    await baton.waitForLogMsg('generation retired', { gen: 3 }, 20_000);
    expect(await stopLoads(loads)).toEqual({ errors: [], failed: 0, eachServed: true });
    const status = await statusOf(env, 'example');
    expect(status.name).toBe('example');
    const serving = status.generations.find((generation) => generation.state === 'active');
    expect(serving?.workers.filter((worker) => worker.state === 'ready')).toHaveLength(1);
    expect(serving?.workers.map((worker) => environOf(worker.pid as number, 'NODE_ENV'))).toEqual([
      'production',
    ]);
  });

  test('SIGHUP adds a listener (bound before the new generation starts) and removes one (closed once no generation uses it), 0 failed', async () => {
    app = makeAppDir();
    const env = runtimeEnv();
    const file = join(app.dir, 'baton.json');
    const config = (listen: string[]) =>
      `${JSON.stringify({
        listen,
        workers: 2,
        command: [process.execPath, join(REPO_ROOT, 'test', 'fixtures', 'every-listener.mjs')],
        readyTimeout: '20s',
        drainTimeout: '10s',
      })}\n`;
    writeFileSync(file, config(['http=tcp://127.0.0.1:0']));
    const { baton, port } = await startWithConfig(['--config', 'baton.json', '--name', NAME], env);
    const loads = await flowingLoads(port);

    writeFileSync(file, config(['http=tcp://127.0.0.1:0', 'admin=tcp://127.0.0.1:0']));
    baton.signal('SIGHUP');
    const adminPort = await baton.listenPort('admin');
    await baton.waitForLogMsg('generation active', { gen: 2 }, 20_000);
    expect(
      baton.logs.find((entry) => entry.msg === 'listener bound' && entry.listener === 'admin')?.time,
    ).toBeLessThan(
      baton.logs.find((entry) => entry.msg === 'generation starting' && entry.gen === 2)?.time as number,
    );
    const admin = await httpGetJson(adminPort, '/');
    expect(admin.body).toMatchObject({ listener: 'admin', generation: 2 });
    await baton.waitForLogMsg('generation retired', { gen: 1 }, 20_000);

    writeFileSync(file, config(['http=tcp://127.0.0.1:0']));
    baton.signal('SIGHUP');
    await baton.waitForLogMsg('generation active', { gen: 3 }, 20_000);
    await baton.waitForLogMsg('generation retired', { gen: 2 }, 20_000);
    await baton.waitForLogMsg('listener closed', { listener: 'admin' }, 10_000);
    await expect(httpGetJson(adminPort, '/')).rejects.toThrow(/ECONNREFUSED/);
    expect(await stopLoads(loads)).toEqual({ errors: [], failed: 0, eachServed: true });
    // The listener that stayed is the same socket throughout.
    expect(
      baton.logs.filter((entry) => entry.msg === 'listener bound' && entry.listener === 'http'),
    ).toHaveLength(1);
  });
});
