import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from '@jest/globals';
import { ReloadHistory } from '../../supervisor/control/history.js';
import { LineBuffer } from '../../supervisor/control/lines.js';
import { encodeLine } from '../../supervisor/control/protocol.js';
import { ReloadWatch } from '../../supervisor/control/reload.js';
import { parseRequestLine } from '../../supervisor/control/requests.js';
import {
  controlDirectories,
  defaultName,
  resolveControlSettings,
  userControlDirectory,
} from '../../supervisor/control/socket-path.js';
import { health } from '../../supervisor/control/status.js';
import type { Progress } from '../../supervisor/model.js';

const active = (generation: number, draining: number[] = [], readyMs = 100): Progress => ({
  kind: 'generation-active',
  generation,
  readyMs,
  draining,
});
const retired = (generation: number, forced = false, drainMs = 50): Progress => ({
  kind: 'generation-retired',
  generation,
  drainMs,
  forced,
});
const starting = (generation: number): Progress => ({
  kind: 'generation-starting',
  generation,
  workers: 2,
  version: String(generation),
});

describe('LineBuffer', () => {
  test('joins lines split across chunks, characters split included, and drops a \\r before the \\n', () => {
    const lines = new LineBuffer(100);
    const euro = Buffer.from('€');
    expect(lines.push(Buffer.concat([Buffer.from('{"a":"'), euro.subarray(0, 1)]))).toEqual({
      lines: [],
      tooLong: false,
    });
    expect(lines.push(Buffer.concat([euro.subarray(1), Buffer.from('"}\r\nnext\n\nlast')]))).toEqual({
      lines: ['{"a":"€"}', 'next', ''],
      tooLong: false,
    });
    expect(lines.end()).toBe('last');
    expect(lines.end()).toBeUndefined();
  });

  test('a line past the limit stops the reading, whether it ends in this chunk or not', () => {
    expect(new LineBuffer(4).push(Buffer.from('ok\n12345\nlater\n'))).toEqual({
      lines: ['ok'],
      tooLong: true,
    });
    const lines = new LineBuffer(4);
    expect(lines.push(Buffer.from('123'))).toEqual({ lines: [], tooLong: false });
    expect(lines.push(Buffer.from('45'))).toEqual({ lines: [], tooLong: true });
    expect(new LineBuffer(4).push(Buffer.from('1234\n'))).toEqual({ lines: ['1234'], tooLong: false });
  });
});

describe('parseRequestLine', () => {
  test('reads a request of each kind, with its defaults and its id', () => {
    expect(parseRequestLine('{"kind":"status","id":7}')).toMatchObject({
      ok: true,
      id: 7,
      kind: 'status',
      request: { kind: 'status' },
    });
    expect(parseRequestLine('{"kind":"reload"}')).toMatchObject({
      request: { kind: 'reload', until: 'drained' },
    });
    expect(parseRequestLine('{"kind":"reload","until":"active"}')).toMatchObject({
      request: { until: 'active' },
    });
    expect(parseRequestLine('{"kind":"stop"}')).toMatchObject({ request: { kind: 'stop', fast: false } });
    expect(parseRequestLine('{"kind":"stop","fast":true,"id":"x"}')).toMatchObject({
      id: 'x',
      request: { fast: true },
    });
  });

  test.each([
    ['not json', 'bad-json'],
    ['"status"', 'bad-request'],
    ['null', 'bad-request'],
    ['{}', 'bad-request'],
    ['{"kind":3}', 'bad-request'],
    ['{"kind":"status","id":{"a":1}}', 'bad-request'],
    [`{"kind":"status","id":"${'x'.repeat(129)}"}`, 'bad-request'],
    ['{"kind":"toString"}', 'unknown-kind'],
    ['{"kind":"restart"}', 'unknown-kind'],
    ['{"kind":"status","now":1}', 'bad-request'],
    ['{"kind":"reload","until":"forever"}', 'bad-request'],
    ['{"kind":"stop","fast":1}', 'bad-request'],
  ])('%s is refused with %s', (line, code) => {
    expect(parseRequestLine(line)).toMatchObject({ ok: false, error: { code, message: expect.any(String) } });
  });
});

describe('ReloadWatch', () => {
  test('follows its own generation until every replaced generation has retired, and leaves other reloads out', () => {
    const watch = new ReloadWatch('drained');
    expect(watch.see(starting(3))).toEqual([]); // before the answer: kept until it is known whose it is
    expect(watch.answered({ outcome: 'queued', generation: 3 })).toEqual([
      { progress: { kind: 'reload-accepted', outcome: 'queued', generation: 3 } },
      { progress: starting(3) },
    ]);
    expect(watch.see(active(2, [1]))).toEqual([]);
    expect(watch.see(retired(1))).toEqual([]);
    expect(watch.see(active(3, [2]))).toEqual([{ progress: active(3, [2]) }]);
    expect(watch.see({ kind: 'generation-draining', generation: 2, workers: 2 })).toHaveLength(1);
    expect(watch.see(retired(2))).toEqual([
      { progress: retired(2) },
      {
        done: {
          ok: true,
          result: {
            outcome: 'queued',
            generation: 3,
            until: 'drained',
            readyMs: 100,
            retired: [{ generation: 2, drainMs: 50, forced: false }],
            draining: [],
          },
        },
      },
    ]);
    expect(watch.see(retired(3))).toEqual([]);
  });

  test('with until "active", ends when its generation is active', () => {
    const watch = new ReloadWatch('active');
    watch.answered({ outcome: 'started', generation: 2 });
    expect(watch.see(active(2, [1])).at(-1)).toMatchObject({ done: { ok: true, result: { draining: [1] } } });
  });

  test('a failure, a forced drain and a stop end it with their error codes', () => {
    const failed = new ReloadWatch('drained');
    failed.see({
      kind: 'reload-failed',
      generation: 2,
      failure: { kind: 'ready-timeout', notReady: [0], timeoutMs: 1000 },
      message: 'not ready',
    });
    expect(failed.answered({ outcome: 'started', generation: 2 }).at(-1)).toMatchObject({
      done: { ok: false, error: { code: 'ready-timeout', generation: 2, failure: { notReady: [0] } } },
    });

    const forced = new ReloadWatch('drained');
    forced.answered({ outcome: 'started', generation: 2 });
    forced.see(active(2, [1]));
    expect(forced.see(retired(1, true)).at(-1)).toMatchObject({
      done: { ok: false, error: { code: 'drain-forced', generation: 2, forced: [1] } },
    });

    const stopping = new ReloadWatch('drained');
    expect(stopping.answered({ outcome: 'ignored', reason: 'stopping' })).toMatchObject([
      { done: { ok: false, error: { code: 'stopping' } } },
    ]);
    const interrupted = new ReloadWatch('drained');
    interrupted.answered({ outcome: 'started', generation: 2 });
    expect(interrupted.see({ kind: 'stopping', fast: false }).at(-1)).toMatchObject({
      done: { ok: false, error: { code: 'stopping' } },
    });
  });
});

describe('ReloadHistory', () => {
  test('records starts and reloads: ready and drain times, failures, forced drains, interruptions; keeps the last ten', () => {
    let now = 1000;
    const history = new ReloadHistory(() => now);
    history.see(starting(1));
    history.see(active(1, [], 80));
    history.see(starting(2));
    history.see({
      kind: 'reload-failed',
      generation: 2,
      failure: { kind: 'command-not-found', command: 'x' },
      message: 'gone',
    });
    now = 2000;
    history.see(starting(3));
    history.see(active(3, [1], 120));
    expect(history.records().at(-1)).toMatchObject({ state: 'draining', replaced: [1] });
    history.see(retired(1, false, 40));
    history.see(starting(4));
    history.see(active(4, [3]));
    history.see(retired(3, true, 900));
    history.see(starting(5));
    history.see({ kind: 'stopping', fast: false });
    expect(history.records()).toEqual([
      expect.objectContaining({
        generation: 1,
        trigger: 'start',
        state: 'done',
        readyMs: 80,
        startedAt: 1000,
      }),
      expect.objectContaining({ generation: 2, trigger: 'reload', state: 'failed', failure: 'gone' }),
      expect.objectContaining({ generation: 3, state: 'done', readyMs: 120, drainMs: 40, startedAt: 2000 }),
      expect.objectContaining({ generation: 4, state: 'drain-forced', drainMs: 900 }),
      expect.objectContaining({ generation: 5, state: 'interrupted' }),
    ]);
    for (let generation = 6; generation <= 20; generation++) history.see(starting(generation));
    expect(history.records().map((record) => record.generation)).toEqual([
      11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
    ]);
  });
});

describe('health', () => {
  const worker = (state: 'starting' | 'ready' | 'exited') => ({ state });
  const generation = (state: string, states: Array<'starting' | 'ready' | 'exited'>) =>
    ({ id: 1, state, workers: states.map(worker) }) as never;

  test('healthy only with an active generation whose workers are all ready', () => {
    expect(health({ workers: 2, generations: [] })).toEqual({
      healthy: false,
      health: 'no active generation',
    });
    expect(health({ workers: 2, generations: [generation('starting', ['ready'])] }).healthy).toBe(false);
    expect(health({ workers: 2, generations: [generation('active', ['ready', 'starting'])] })).toEqual({
      healthy: false,
      health: 'generation 1 active, 1/2 workers ready',
    });
    expect(
      health({ workers: 2, generations: [generation('active', ['exited', 'ready', 'ready'])] }).healthy,
    ).toBe(true);
  });
});

describe('names and paths', () => {
  test.each([
    ['node', ['app/server.js'], 'server'],
    ['/usr/bin/python3', ['-u', 'game_server.py', '--port', '1'], 'game_server'],
    ['deno', ['run', '--allow-net', 'main.ts'], 'main'],
    ['node', ['-e', "require('x')"], 'node'],
    ['/bin/sh', ['-c', 'exec sleep 1'], 'sh'],
    ['./bin/my server', [], 'my-server'],
    ['/opt/api.v2/api', [], 'api'],
    ['.hidden', [], 'baton'],
  ])('%s %j is called %s', (command, args, name) => {
    expect(defaultName(command, args)).toBe(name);
  });

  test('XDG_RUNTIME_DIR/baton first, else ~/.baton (or <tmp>/baton-<uid> without a home of ours); --control wins; --name is checked', () => {
    const command = ['node', 'server.js'];
    const uid = process.getuid?.() ?? 0;
    expect(resolveControlSettings({}, command, { XDG_RUNTIME_DIR: '/run/user/7' }, '/srv/app')).toEqual({
      name: 'server',
      path: '/run/user/7/baton/server.sock',
    });
    const home = mkdtempSync(join(tmpdir(), 'baton-home-'));
    try {
      expect(resolveControlSettings({ name: 'api' }, command, { HOME: home }, '/srv/app')).toEqual({
        name: 'api',
        path: join(home, '.baton', 'api.sock'),
      });
      // Clients look there, then in ./.baton where older masters put their sockets.
      expect(controlDirectories({ HOME: home }, '/srv/app')).toEqual([
        join(home, '.baton'),
        '/srv/app/.baton',
      ]);
    } finally {
      rmSync(home, { recursive: true, force: true });
    }
    expect(resolveControlSettings({ name: 'api' }, command, { HOME: '/nonexistent' }, '/srv/app').path).toBe(
      join(tmpdir(), `baton-${uid}`, 'api.sock'),
    );
    expect(userControlDirectory({}, uid)).toBe(join(tmpdir(), `baton-${uid}`));
    expect(resolveControlSettings({ control: 'run/c.sock' }, command, {}, '/srv/app').path).toBe(
      '/srv/app/run/c.sock',
    );
    expect(() => resolveControlSettings({ name: '../x' }, command, {}, '/srv/app')).toThrow(
      /Expected `--name`/,
    );
  });
});

test('encodeLine: one line of JSON, absent facts as null', () => {
  expect(encodeLine({ ok: true, a: undefined, b: [undefined], c: 'x\ny' })).toBe(
    '{"ok":true,"a":null,"b":[null],"c":"x\\ny"}\n',
  );
});
