/** The config file (supervisor/config.ts): baton's JSON and PM2 ecosystem files, read, merged with flags, re-read. */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { readConfigFile, resolveStartSettings, settingsChange, splitWords } from '../../supervisor/config.js';
import { UsageError } from '../../supervisor/errors.js';
import { DEFAULTS, type RawStartArgs } from '../../supervisor/options.js';

let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'baton-config-'));
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

function write(name: string, contents: unknown): string {
  const file = join(dir, name);
  writeFileSync(file, typeof contents === 'string' ? contents : JSON.stringify(contents));
  return file;
}

const NO_FLAGS: RawStartArgs = { command: [], masterUid: 1000 };

/** The first line of what `fn` throws, which must be a UsageError. */
function refusal(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError);
    const message = (error as Error).message;
    expect(message).not.toContain('\n');
    return message;
  }
  throw new Error('expected a UsageError');
}

describe('baton.json', () => {
  test('every start option under its camelCase name; the command as an array, env as an object', () => {
    const file = write('baton.json', {
      listen: ['http=tcp://127.0.0.1:0'],
      workers: 3,
      readyTimeout: '5s',
      drainTimeout: '10s',
      drainSignal: 'SIGINT',
      maxDraining: 2,
      ready: 'ipc',
      command: ['node', 'server.js', '--flag'],
      env: { NODE_ENV: 'staging', RETRIES: 3, DEBUG: false },
    });
    const { options, config, warnings } = resolveStartSettings(NO_FLAGS, file, '/');
    expect(options).toMatchObject({
      workers: 3,
      readyTimeoutMs: 5000,
      drainTimeoutMs: 10_000,
      drainSignal: 'SIGINT',
      maxDraining: 2,
      ready: { kind: 'ipc' },
      command: 'node',
      args: ['server.js', '--flag'],
      env: { NODE_ENV: 'staging', RETRIES: '3', DEBUG: 'false' },
      cwd: dir,
    });
    expect(options.listen.map((spec) => spec.name)).toEqual(['http']);
    expect(config).toMatchObject({ path: file, format: 'baton' });
    expect(config?.hash).toMatch(/^[0-9a-f]{12}$/);
    expect(warnings).toEqual([]);
  });

  test('flags given win over the file; flags left out take the file, then the defaults', () => {
    const file = write('baton.json', { listen: 'tcp://127.0.0.1:0', workers: 3, command: ['node', 'a.js'] });
    const { options } = resolveStartSettings(
      { ...NO_FLAGS, workers: '2', command: ['python3', 'b.py'] },
      file,
      '/',
    );
    expect(options.workers).toBe(2);
    expect([options.command, ...options.args]).toEqual(['python3', 'b.py']);
    expect(options.drainTimeoutMs).toBe(DEFAULTS.drainTimeoutMs);
    expect(options.listen).toHaveLength(1);
  });

  test('paths start at the folder of the file', () => {
    mkdirSync(join(dir, 'app'));
    const file = write('baton.json', {
      listen: ['tcp://127.0.0.1:0'],
      command: ['node', 'server.js'],
      cwd: 'app',
      versionFile: 'app/VERSION',
    });
    const { options } = resolveStartSettings(NO_FLAGS, file, '/');
    expect(options.cwd).toBe(join(dir, 'app'));
    expect(options.versionFile).toBe(join(dir, 'app', 'VERSION'));
  });

  test.each([
    [{ workers: 'three' }, "baton.json: Expected `workers` to be a whole number from 1 to 1024, got 'three'"],
    [{ drainTimeout: '30' }, 'baton.json: Expected `drainTimeout` to be a duration like 500ms'],
    [{ colour: 'blue' }, 'baton.json: Unknown key `colour`; expected one of listen, workers'],
    [{ command: 'node server.js' }, 'baton.json: Expected `command` to be an array of strings'],
    [{ env: { A: { deep: 1 } } }, 'baton.json: Expected `env.A` to be a string, number or boolean'],
    [{ listen: ['http=ftp://x:1'] }, 'baton.json: Expected `listen` to look like'],
    [{ ready: 'soon' }, 'baton.json: Expected `ready` to be auto, ipc, notify, poll'],
    [{ cwd: 'nowhere' }, 'baton.json: Expected `cwd` to be a folder that exists'],
    [{ preload: 'yes' }, 'baton.json: Expected `preload` to be true or false'],
  ])('%j is refused in one line naming the field', (fields, message) => {
    const file = write('baton.json', {
      listen: ['tcp://127.0.0.1:0'],
      command: ['node', 'server.js'],
      ...fields,
    });
    expect(refusal(() => resolveStartSettings(NO_FLAGS, file, '/'))).toContain(message);
  });

  test('a flag that is wrong is named as the flag, even with a file', () => {
    const file = write('baton.json', { listen: ['tcp://127.0.0.1:0'], command: ['node', 'server.js'] });
    expect(refusal(() => resolveStartSettings({ ...NO_FLAGS, workers: '0' }, file, '/'))).toMatch(
      /^Expected `--workers` to be a whole number/,
    );
  });

  test('bad JSON, a missing file and a non-object are one line each', () => {
    expect(refusal(() => readConfigFile(write('baton.json', '{"workers": 2,'), '/'))).toMatch(
      /^baton\.json: not valid JSON: /,
    );
    expect(refusal(() => readConfigFile(join(dir, 'none.json'), '/'))).toMatch(
      /^Expected `--config` to be a readable file, got '.*none\.json' \(ENOENT\)$/,
    );
    expect(refusal(() => readConfigFile(write('baton.json', '[1]'), '/'))).toBe(
      'baton.json: Expected a JSON object, got an array',
    );
  });
});

describe('PM2 ecosystem files', () => {
  // A file name of its own each time: jest's module registry keeps what it required once (baton itself
  // reads a file afresh at each SIGHUP; test/integration/config.test.ts shows it).
  let files = 0;
  const ecosystem = (app: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
    write(
      `ecosystem-${++files}.config.cjs`,
      `module.exports = ${JSON.stringify({ apps: [app], ...extra })};\n`,
    );

  test('maps script, args, instances, env, cwd, wait_ready, listen_timeout, kill_timeout, max_memory_restart', () => {
    mkdirSync(join(dir, 'srv'));
    const file = ecosystem({
      name: 'api',
      script: 'server.js',
      args: '--port 1 "two words"',
      node_args: '--max-old-space-size=512',
      instances: 4,
      env: { NODE_ENV: 'production' },
      cwd: 'srv',
      wait_ready: true,
      listen_timeout: 8000,
      kill_timeout: 1600,
      max_memory_restart: '300M',
    });
    const { options, raw, config, warnings } = resolveStartSettings(
      { ...NO_FLAGS, listen: ['http=tcp://127.0.0.1:0'] },
      file,
      '/',
    );
    expect(options).toMatchObject({
      command: 'node',
      args: ['--max-old-space-size=512', 'server.js', '--port', '1', 'two words'],
      workers: 4,
      env: { NODE_ENV: 'production' },
      cwd: join(dir, 'srv'),
      ready: { kind: 'ipc' },
      readyTimeoutMs: 8000,
      drainTimeoutMs: 1600,
      maxMemoryBytes: 300 * 1024 ** 2,
    });
    expect(raw.name).toBe('api');
    expect(config?.format).toBe('pm2');
    expect(warnings).toEqual([]);
  });

  test('instances "max" is one per core, -1 one less; the interpreter follows PM2', () => {
    const cores = availableParallelism();
    const workersOf = (app: Record<string, unknown>) =>
      resolveStartSettings({ ...NO_FLAGS, listen: ['tcp://127.0.0.1:0'] }, ecosystem(app), '/').options;
    expect(workersOf({ script: 'a.js', instances: 'max' }).workers).toBe(cores);
    expect(workersOf({ script: 'a.js', instances: -1 }).workers).toBe(Math.max(1, cores - 1));
    expect(workersOf({ script: 'a.py' }).command).toBe('python3');
    expect(workersOf({ script: './bin/server', interpreter: 'none' }).command).toBe('./bin/server');
    expect(workersOf({ script: 'a.js', instances: 0 }).workers).toBe(cores);
  });

  test('names each field it ignores in one warning line, and says when it takes only the first app', () => {
    const file = write(
      'ecosystem.config.js',
      `module.exports = { apps: [
        { name: 'web', script: 'a.js', exec_mode: 'cluster', watch: true, env_production: { A: 1 } },
        { name: 'worker', script: 'b.js' },
      ], deploy: {} };\n`,
    );
    const { warnings, options } = resolveStartSettings(
      { ...NO_FLAGS, listen: ['tcp://127.0.0.1:0'] },
      file,
      '/',
    );
    expect(options.args).toEqual(['a.js']);
    expect(warnings).toEqual([
      'ecosystem.config.js has 2 apps (web, worker): baton runs the first one only; start one baton per app',
      'ecosystem.config.js: `deploy` is ignored: it has no meaning under baton',
      'ecosystem.config.js: `apps[0].exec_mode` is ignored: baton always runs the workers side by side on the shared listening sockets',
      'ecosystem.config.js: `apps[0].watch` is ignored: use --watch (or `watch` under `baton`)',
      'ecosystem.config.js: `apps[0].env_production` is ignored: baton reads `env` only',
    ]);
  });

  test('listeners come from flags or from the app`s `baton` key, which wins over its PM2 counterparts', () => {
    const file = ecosystem({
      script: 'a.js',
      instances: 2,
      baton: { listen: ['http=tcp://127.0.0.1:0'], workers: 3 },
    });
    const { options } = resolveStartSettings(NO_FLAGS, file, '/');
    expect(options.listen.map((spec) => spec.name)).toEqual(['http']);
    expect(options.workers).toBe(3);
  });

  test.each([
    [
      { script: 'a.js', instances: 'many' },
      "ecosystem-N.config.cjs: Expected `apps[0].instances` to be a whole number from 1 to 1024, got 'many'",
    ],
    [
      { script: 'a.js', max_memory_restart: 'lots' },
      'ecosystem-N.config.cjs: Expected `apps[0].max_memory_restart` to be a size',
    ],
    [
      { script: 'a.js', kill_timeout: 'soon' },
      'ecosystem-N.config.cjs: Expected `apps[0].kill_timeout` to be a duration',
    ],
    [
      { script: 'a.js', wait_ready: 'yes' },
      'ecosystem-N.config.cjs: Expected `apps[0].wait_ready` to be true or false',
    ],
    [{ script: 'a.js', baton: { colour: 1 } }, 'ecosystem-N.config.cjs: Unknown key `apps[0].baton.colour`'],
  ])('%j is refused in one line naming the field', (app, message) => {
    const file = ecosystem(app);
    expect(
      refusal(() => resolveStartSettings({ ...NO_FLAGS, listen: ['tcp://127.0.0.1:0'] }, file, '/')),
    ).toContain(message.replace('ecosystem-N', `ecosystem-${files}`));
  });

  test('a module that throws, or no apps, is one line', () => {
    expect(refusal(() => readConfigFile(write('ecosystem.config.cjs', 'throw new Error("boom")'), '/'))).toBe(
      'ecosystem.config.cjs: could not be loaded: boom',
    );
    expect(refusal(() => readConfigFile(write('ecosystem.json', '{"apps": []}'), '/'))).toMatch(
      /^ecosystem\.json: Expected `apps` to be an array of at least one app/,
    );
  });
});

describe('settingsChange', () => {
  const read = (fields: Record<string, unknown>) =>
    resolveStartSettings(
      NO_FLAGS,
      write('baton.json', { listen: ['http=tcp://127.0.0.1:0'], command: ['node', 'a.js'], ...fields }),
      '/',
    ).options;

  test('takes the command, environment, worker count, timeouts and readiness', () => {
    const change = settingsChange(
      read({}),
      read({ workers: 3, env: { A: '1' }, drainTimeout: '5s', ready: 'ipc', command: ['node', 'b.js'] }),
      'baton.json',
    );
    expect(change).toMatchObject({
      ok: true,
      warnings: [],
      options: { workers: 3, env: { A: '1' }, drainTimeoutMs: 5000, ready: { kind: 'ipc' }, args: ['b.js'] },
    });
  });

  test('names the listeners the file adds and removes; refuses them for sockets handed over by systemd', () => {
    const before = read({});
    const after = read({ listen: ['web=tcp://127.0.0.1:0', 'game=tcp://127.0.0.1:0'] });
    const change = settingsChange(before, after, 'baton.json');
    expect(change.ok && change.added.map((spec) => spec.text)).toEqual([
      'web=tcp://127.0.0.1:0',
      'game=tcp://127.0.0.1:0',
    ]);
    expect(change.ok && change.removed.map((spec) => spec.text)).toEqual(['http=tcp://127.0.0.1:0']);
    expect(settingsChange(before, read({}), 'baton.json')).toMatchObject({
      ok: true,
      added: [],
      removed: [],
    });
    expect(settingsChange(before, after, 'baton.json', { handedOver: true })).toEqual({
      ok: false,
      message:
        'baton.json: `listen` changed, but this master serves sockets handed over by systemd (LISTEN_FDS): its listeners change only with a restart; reload refused, nothing changed',
    });
  });

  test("keeps the master's own settings, with one warning each", () => {
    const change = settingsChange(read({}), read({ maxMemory: '512M', workers: 2 }), 'baton.json');
    expect(change).toMatchObject({
      ok: true,
      warnings: [
        'baton.json: `maxMemory` changed: it takes effect only when the master restarts (kept as it was)',
      ],
      options: { workers: 2, maxMemoryBytes: undefined },
    });
  });
});

test('splitWords splits PM2 args as a shell splits plain and quoted words', () => {
  expect(splitWords(`--a 1  "two words" 'it''s' "q\\"uote"`)).toEqual([
    '--a',
    '1',
    'two words',
    'it',
    's',
    'q"uote',
  ]);
});
