import { spawnSync } from 'node:child_process';
import { getPriority } from 'node:os';
import { describe, expect, test } from '@jest/globals';
import { UsageError } from '../../supervisor/errors.js';
import {
  parseDuration,
  parseInteger,
  parseListen,
  parseReadiness,
  parseSignal,
  parseSize,
  parseStartOptions,
  parseWorkerUser,
} from '../../supervisor/options.js';
import { mayRaisePriority } from '../../supervisor/priority.js';

describe('parseDuration', () => {
  test('reads every unit', () => {
    expect(parseDuration('--x', '500ms')).toBe(500);
    expect(parseDuration('--x', '30s')).toBe(30_000);
    expect(parseDuration('--x', '1.5m')).toBe(90_000);
    expect(parseDuration('--x', '2h')).toBe(7_200_000);
    expect(parseDuration('--x', '1d')).toBe(86_400_000);
  });

  test.each(['abc', '30', '-1s', '1.5', '', '5 s', '10y', '30d'])(
    'refuses %p with one clear line',
    (text) => {
      expect(() => parseDuration('--drain-timeout', text)).toThrow(UsageError);
      expect(() => parseDuration('--drain-timeout', text)).toThrow(
        /Expected `--drain-timeout` to be a duration/,
      );
    },
  );

  test('zero only where allowed', () => {
    expect(() => parseDuration('--ready-timeout', '0s')).toThrow(/more than zero/);
    expect(parseDuration('--drain-timeout', '0s', { allowZero: true })).toBe(0);
  });
});

describe('parseListen', () => {
  test('named and unnamed, IPv4, IPv6 and localhost', () => {
    expect(parseListen('http=tcp://127.0.0.1:8080', 0)).toMatchObject({
      name: 'http',
      host: '127.0.0.1',
      port: 8080,
      family: 4,
    });
    expect(parseListen('tcp://[::1]:0', 1)).toMatchObject({
      name: 'listen1',
      host: '::1',
      port: 0,
      family: 6,
    });
    expect(parseListen('game=tcp://localhost:9000', 0)).toMatchObject({ host: '127.0.0.1' });
    expect(parseListen('tcp://:9000', 0)).toMatchObject({ host: '0.0.0.0' });
  });

  test.each([
    ['http://127.0.0.1:53', /scheme 'http' is not supported/],
    ['tcp://127.0.0.1:70000', /port must be from 0 to 65535/],
    ['tcp://example.com:80', /IP address or localhost/],
    ['tcp://::1:80', /./],
    ['bad name=tcp://127.0.0.1:1', /name may use/],
    ['127.0.0.1:8080', /Expected `--listen`/],
    ['tcp://127.0.0.1', /Expected `--listen`/],
  ])('refuses %p', (text, message) => {
    expect(() => parseListen(text, 0)).toThrow(UsageError);
    expect(() => parseListen(text, 0)).toThrow(message);
  });
});

describe('parseSignal', () => {
  test('accepts names with or without SIG, refuses what cannot be handled', () => {
    expect(parseSignal('--drain-signal', 'term')).toBe('SIGTERM');
    expect(parseSignal('--drain-signal', 'SIGINT')).toBe('SIGINT');
    expect(() => parseSignal('--drain-signal', 'SIGKILL')).toThrow(UsageError);
    expect(() => parseSignal('--drain-signal', 'SIGNOPE')).toThrow(UsageError);
  });
});

describe('parseStartOptions', () => {
  const base = { listen: ['tcp://127.0.0.1:0'], command: ['node', 'app.js'] };

  test('applies the defaults', () => {
    expect(parseStartOptions(base)).toMatchObject({
      workers: 1,
      readyTimeoutMs: 30_000,
      drainTimeoutMs: 30_000,
      drainSignal: 'SIGTERM',
      command: 'node',
      args: ['app.js'],
    });
  });

  test.each([
    [{ workers: '0' }, /`--workers` to be a whole number from 1/],
    [{ workers: 'two' }, /`--workers`/],
    [{ workers: '2.5' }, /`--workers`/],
    [{ workers: '100000' }, /`--workers`/],
    [{ listen: [] }, /at least one `--listen`/],
    [{ listen: ['a=tcp://127.0.0.1:1', 'a=tcp://127.0.0.1:2'] }, /name once/],
    [{ command: [] }, /the worker's command after `--`/],
    [{ readyTimeout: 'soon' }, /`--ready-timeout`/],
  ])('refuses %p', (change, message) => {
    expect(() => parseStartOptions({ ...base, ...change })).toThrow(message);
  });
});

describe('parseReadiness', () => {
  test('auto, ipc, notify and delay:<duration>', () => {
    expect(parseReadiness('auto')).toEqual({ kind: 'auto' });
    expect(parseReadiness('notify')).toEqual({ kind: 'notify' });
    expect(parseReadiness('delay:1.5s')).toEqual({ kind: 'delay', ms: 1500 });
  });

  test.each(['soon', 'delay:', 'delay:abc', 'poll-ish', ''])('refuses %p', (text) => {
    expect(() => parseReadiness(text)).toThrow(UsageError);
  });
});

describe('parseListen: Unix sockets and UDP', () => {
  test('unix paths with mode, owner and group', () => {
    expect(parseListen('api=unix:/run/app.sock?mode=660&owner=www&group=web', 0)).toMatchObject({
      name: 'api',
      scheme: 'unix',
      path: '/run/app.sock',
      mode: 0o660,
      owner: 'www',
      group: 'web',
    });
    expect(parseListen('unix:/tmp/a.sock', 2)).toMatchObject({
      name: 'listen2',
      path: '/tmp/a.sock',
      mode: undefined,
    });
  });

  test('udp addresses', () => {
    expect(parseListen('dns=udp://[::1]:5353', 0)).toMatchObject({
      scheme: 'udp',
      host: '::1',
      port: 5353,
      family: 6,
    });
  });

  test.each([
    ['unix:relative.sock', /absolute file path/],
    ['unix:/tmp/a.sock?mode=999', /octal/],
    ['unix:/tmp/a.sock?perm=600', /not 'perm'/],
    [`unix:/${'x'.repeat(120)}`, /at most 107 bytes/],
    ['sctp://127.0.0.1:1', /'sctp' is not supported/],
  ])('refuses %p', (text, message) => {
    expect(() => parseListen(text, 0)).toThrow(message);
  });
});

describe('parseWorkerUser', () => {
  test('names and numbers; a user alone runs with its primary group', () => {
    expect(parseWorkerUser('nobody', undefined, 0)).toEqual({ uid: 65534, gid: 65534 });
    expect(parseWorkerUser('1234', '4321', 0)).toEqual({ uid: 1234, gid: 4321 });
    expect(parseWorkerUser(undefined, undefined, 1000)).toEqual({});
  });

  test('refuses unknown names, and any change of user when the master is not root', () => {
    expect(() => parseWorkerUser('no-such-user-xyz', undefined, 0)).toThrow(
      /`--user` to be a user name or number/,
    );
    expect(() => parseWorkerUser(undefined, 'no-such-group-xyz', 0)).toThrow(/`--group`/);
    expect(() => parseWorkerUser('nobody', undefined, 1000)).toThrow(/to run as root/);
  });
});

describe('parseSize', () => {
  test('binary units', () => {
    expect(parseSize('--max-memory', '512M')).toBe(512 * 1024 ** 2);
    expect(parseSize('--max-memory', '1.5G')).toBe(1.5 * 1024 ** 3);
    expect(parseSize('--max-memory', '300000k')).toBe(300_000 * 1024);
    expect(parseSize('--max-memory', '2GiB')).toBe(2 * 1024 ** 3);
  });

  test.each(['512', '1M', 'lots', '-5M', '2T'])('refuses %p', (text) => {
    expect(() => parseSize('--max-memory', text)).toThrow(/`--max-memory` to be a size from 16M to 1024G/);
  });
});

describe('strict where lenient would surprise', () => {
  test.each(['0x10', '1e1', '+5', '0b11', ' ', '4.0'])('parseInteger refuses %p', (text) => {
    expect(() => parseInteger('--workers', text, 1, 1024)).toThrow(UsageError);
  });

  test('a Unix path with a control character, and a repeated option, are refused', () => {
    expect(() => parseListen('unix:/tmp/a\nb.sock', 0)).toThrow(/control characters/);
    expect(() => parseListen('unix:/tmp/a.sock?mode=600&mode=644', 0)).toThrow(/give 'mode' once/);
  });
});

/** Whether this machine lets `unshare -r` make a user namespace (where root's capabilities are its own). */
const inUserNamespace = spawnSync('unshare', ['-r', 'true']).status === 0;

describe('--start-nice', () => {
  const base = { listen: ['tcp://127.0.0.1:0'], command: ['node', 'server.js'] };
  test('from -20 to 19; below 0 only where the priority may be raised (root or CAP_SYS_NICE)', () => {
    expect(parseStartOptions(base).startNice).toBe(0);
    expect(parseStartOptions({ ...base, startNice: '10' }).startNice).toBe(10);
    expect(parseStartOptions({ ...base, startNice: '-10', mayRaisePriority: true }).startNice).toBe(-10);
    expect(() => parseStartOptions({ ...base, startNice: '-10', mayRaisePriority: false })).toThrow(
      "`--start-nice` -10 asks for a priority above baton's own, which needs CAP_SYS_NICE (root has it, unless a container or a user namespace leaves it out: `docker run --cap-add SYS_NICE`) or a RLIMIT_NICE that allows it (systemd's LimitNICE=): give baton one of them, or a value from 0 to 19",
    );
    expect(() => parseStartOptions({ ...base, startNice: '-21', mayRaisePriority: true })).toThrow(
      "Expected `--start-nice` to be a whole number from -20 to 19, got '-21'",
    );
  });

  test('whether a priority may be raised is asked of the kernel, which leaves this thread as it was', () => {
    const before = getPriority(0);
    const may = mayRaisePriority(before - 1);
    expect(getPriority(0)).toBe(before);
    expect(mayRaisePriority(before)).toBe(true);
    expect(mayRaisePriority(19)).toBe(true);
    if (process.getuid?.() !== 0) expect(may).toBe(false);
  });

  (inUserNamespace ? test : test.skip)(
    `in a user namespace (a rootless container), root without the host's CAP_SYS_NICE may not${inUserNamespace ? '' : ' (skipped: `unshare -r` cannot make one here)'}`,
    () => {
      const priority = new URL('../../supervisor/priority.js', import.meta.url).href;
      const script = `const m = await import(${JSON.stringify(priority)}); process.stdout.write(String(m.mayRaisePriority(-5)));`;
      const run = spawnSync('unshare', ['-r', process.execPath, '--input-type=module', '-e', script], {
        encoding: 'utf8',
        timeout: 10_000,
      });
      expect(run.stdout).toBe('false');
      // The namespace's root has every capability on paper.
      const status = spawnSync('unshare', ['-r', 'cat', '/proc/self/status'], { encoding: 'utf8' }).stdout;
      expect(/^CapEff:\s*0*1f+/m.test(status)).toBe(true);
    },
  );
});

describe('--watchdog', () => {
  const base = { listen: ['tcp://127.0.0.1:0'], command: ['node', 'server.js'] };
  test('is off by default, and a duration of at least 200ms', () => {
    expect(parseStartOptions(base).watchdogMs).toBeUndefined();
    expect(parseStartOptions({ ...base, watchdog: '10s' }).watchdogMs).toBe(10_000);
    expect(() => parseStartOptions({ ...base, watchdog: '100ms' })).toThrow(
      "Expected `--watchdog` to be a duration of at least 200ms, like 10s, got '100ms'",
    );
    expect(() => parseStartOptions({ ...base, watchdog: 'soon' })).toThrow(
      /Expected `--watchdog` to be a duration/,
    );
  });
});
