/**
 * Workers that misbehave: ignore the drain signal, crash in a loop, flood
 * stderr. The master must stay up, stay quiet and stay fast.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { httpGetJson } from '../helpers/load.js';
import { killAll, processAlive, startBaton } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';
import { askStatus } from './control.js';

const NODE = process.execPath;
let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'baton-faults-'));
});

afterEach(async () => {
  await killAll();
  rmSync(dir, { recursive: true, force: true });
});

/** Writes a worker script into the test's folder and returns its path. */
function worker(name: string, source: string): string {
  const path = join(dir, name);
  writeFileSync(path, source);
  return path;
}

/** CPU seconds (user + system) a process has used, from /proc/<pid>/stat. */
function cpuSeconds(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Resident memory of a process in MiB, from /proc/<pid>/status. */
function rssMiB(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(match?.[1]) / 1024;
}

const HTTP_WORKER = `
const http = require('node:http');
const server = http.createServer((req, res) => res.end(JSON.stringify({ pid: process.pid })));
server.listen({ fd: 3 }, () => process.send('ready'));
`;

describe('a worker that ignores the drain signal', () => {
  test('is killed at the drain deadline, and the master reports it', async () => {
    const stubborn = worker('stubborn.cjs', `${HTTP_WORKER}\nprocess.on('SIGTERM', () => {});\n`);
    const baton = startBaton([
      'start',
      '--listen',
      'tcp://127.0.0.1:0',
      '--drain-timeout',
      '1s',
      '--',
      NODE,
      stubborn,
    ]);
    await baton.waitForLogMsg('generation active', { gen: 1 });
    const [pid] = baton.logs.filter((e) => e.msg === 'worker ready').map((e) => e.pid as number);
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('drain timeout: killing the workers left', { gen: 1 }, 10_000);
    expect(await baton.waitForLogMsg('worker exited', { pid })).toMatchObject({ signal: 'SIGKILL' });
    expect(await baton.waitForLogMsg('generation retired', { gen: 1 })).toMatchObject({ forced: true });
    expect(processAlive(pid as number)).toBe(false);
  });

  test('at a stop, the master kills it at the deadline and exits 5', async () => {
    const stubborn = worker('stubborn.cjs', `${HTTP_WORKER}\nprocess.on('SIGTERM', () => {});\n`);
    const baton = startBaton([
      'start',
      '--listen',
      'tcp://127.0.0.1:0',
      '--drain-timeout',
      '500ms',
      '--',
      NODE,
      stubborn,
    ]);
    await baton.waitForLogMsg('generation active', { gen: 1 });
    baton.signal('SIGTERM');
    expect(await baton.waitForExit(10_000)).toEqual({ exitCode: 5, signal: null });
  });
});

describe('signals during a stop', () => {
  test('SIGUSR2 during a SIGTERM drain is ignored with a log line, and the stop finishes', async () => {
    // A worker that drains until the test opens a gate, so the reload surely arrives mid-stop.
    const gate = join(dir, 'drained');
    const slow = worker(
      'slow.cjs',
      `${HTTP_WORKER}\nprocess.on('SIGTERM', () => setInterval(() => require('node:fs').existsSync(${JSON.stringify(gate)}) && process.exit(0), 20));\n`,
    );
    const baton = startBaton(['start', '--listen', 'tcp://127.0.0.1:0', '--', NODE, slow]);
    await baton.waitForLogMsg('generation active', { gen: 1 });
    baton.signal('SIGTERM');
    await baton.waitForLogMsg('generation draining', { gen: 1 });
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('reload ignored: the master is stopping');
    writeFileSync(gate, '');
    expect(await baton.waitForExit(10_000)).toEqual({ exitCode: 0, signal: null });
    expect(baton.logs.some((e) => e.msg === 'generation starting' && e.gen === 2)).toBe(false);
  });
});

describe('a crash loop in the serving generation', () => {
  test('restarts back off, one log line per step, the old workers keep serving, the master stays idle', async () => {
    const flag = join(dir, 'broken');
    const flaky = worker(
      'flaky.cjs',
      `if (require('node:fs').existsSync(${JSON.stringify(flag)})) { console.error('cannot start: broken'); process.exit(3); }\n${HTTP_WORKER}`,
    );
    const control = join(dir, 'flaky.sock');
    const baton = startBaton([
      'start',
      '--control',
      control,
      '--listen',
      'http=tcp://127.0.0.1:0',
      '--workers',
      '2',
      '--',
      NODE,
      flaky,
    ]);
    const port = await baton.listenPort('http');
    await baton.waitForLogMsg('generation active', { gen: 1 });
    const [victim, survivor] = baton.logs.filter((e) => e.msg === 'worker ready').map((e) => e.pid as number);

    writeFileSync(flag, '');
    const cpuBefore = cpuSeconds(baton.pid);
    const started = Date.now();
    process.kill(victim as number, 'SIGKILL');
    const loop = await baton.waitForLog(
      (e) => e.msg === 'worker crash loop: restarting with backoff' && (e.crashes as number) >= 5,
      15_000,
      'five crashes in a row',
    );
    const elapsedS = (Date.now() - started) / 1000;
    expect(loop).toMatchObject({ gen: 1, delayMs: 2000 });

    const steps = baton.logs.filter(
      (e) => String(e.msg).startsWith('worker restarting') || String(e.msg).startsWith('worker crash loop'),
    );
    expect(steps.map((e) => e.delayMs)).toEqual([0, 250, 500, 1000, 2000]);
    const exits = baton.logs.filter((e) => e.msg === 'worker exited');
    expect(exits).toHaveLength(5);
    // The other worker serves all along.
    expect((await httpGetJson(port)).body).toMatchObject({ pid: survivor });
    // Backing off costs the master almost nothing between restarts: each restart costs a spawn (about
    // 0.1 s of CPU here), and nothing else may add more than a tenth of one core (a spin would cost all).
    expect(cpuSeconds(baton.pid) - cpuBefore).toBeLessThan(elapsedS * 0.1 + exits.length * 0.15);

    // status says so, in a line under the table and in --json.
    const during = await askStatus(control);
    const slot = baton.logs.find((e) => e.msg === 'worker ready' && e.pid === victim)?.worker;
    expect(during.status.generations[0]?.crashLoops).toEqual([{ worker: slot, crashes: expect.any(Number) }]);
    const table = startBaton(['status', '--control', control]);
    await table.waitForExit(10_000);
    expect(table.output).toMatch(
      new RegExp(
        `^generation 1 worker ${slot}: crash loop, \\d+ crashes in a row; restarting with backoff`,
        'm',
      ),
    );

    rmSync(flag);
    await baton.waitForLog(
      (e) => e.msg === 'worker ready' && e.pid !== victim && e.pid !== survivor,
      10_000,
      'the slot refilled once fixed',
    );
    expect((await askStatus(control)).status.generations[0]?.crashLoops).toEqual([]);
  });
});

describe('a worker that floods its output', () => {
  test('megabytes per second on stderr and stdout: the master stays responsive and its memory bounded', async () => {
    const noisy = worker(
      'noisy.cjs',
      `${HTTP_WORKER}
const line = 'x'.repeat(1023) + '\\n';
const block = line.repeat(64);
setInterval(() => { for (let i = 0; i < 8; i++) { process.stderr.write(block); process.stdout.write(block); } }, 10);
`,
    );
    const control = join(dir, 'noisy.sock');
    const baton = startBaton([
      'start',
      '--control',
      control,
      '--listen',
      'http=tcp://127.0.0.1:0',
      '--',
      NODE,
      noisy,
    ]);
    const port = await baton.listenPort('http');
    await baton.waitForLogMsg('generation active', { gen: 1 });
    await waitFor(() => baton.outputBytes > 20 * 1024 * 1024 || undefined, {
      timeoutMs: 20_000,
      what: '20 MB of worker output',
    });
    // status answers on the control socket while the flood goes on.
    const { ms } = await askStatus(control);
    expect(ms).toBeLessThan(2000);
    // A reload still goes through (within --ready-timeout); how fast is not a test's to say on 2 busy cores.
    baton.signal('SIGUSR2');
    // Asked on the control socket, not read in the log: the workers' stdout is the master's, and a log
    // line written in the middle of a 64 KB block of theirs is no line of its own any more.
    await waitFor(
      async () =>
        (await askStatus(control)).status.generations.some((gen) => gen.id === 2 && gen.state === 'active'),
      { timeoutMs: 30_000, what: 'generation 2 active, in status' },
    );
    // This worker has no drain handler (SIGTERM ends it at once): ask until a new worker answers.
    await waitFor(
      async () => ((await httpGetJson(port).catch(() => undefined))?.status === 200 ? true : undefined),
      {
        timeoutMs: 10_000,
        what: 'an answer from the new generation',
      },
    );
    expect(rssMiB(baton.pid)).toBeLessThan(200);
  });
});

describe('what a worker inherits from the environment', () => {
  test("the master's environment plus the documented variables, and nothing baton uses internally", async () => {
    const dump = worker('env.cjs', `console.log('ENV ' + JSON.stringify(process.env));\n${HTTP_WORKER}`);
    const baton = startBaton(['start', '--listen', 'http=tcp://127.0.0.1:0', '--', NODE, dump], {
      env: { MY_SETTING: 'kept', LISTEN_FDS: '7', LISTEN_PID: '1', LISTEN_FDNAMES: 'x' },
    });
    // LISTEN_FDS given to baton for another pid are not for baton: it binds its own and passes its own.
    await baton.waitForLogMsg('generation active', { gen: 1 });
    const env = JSON.parse(/^ENV (.*)$/m.exec(baton.output)?.[1] ?? '{}') as Record<string, string>;
    expect(env.MY_SETTING).toBe('kept');
    expect(env.LISTEN_FDS).toBe('1');
    expect(env.LISTEN_FDNAMES).toBe('http');
    expect(Number(env.LISTEN_PID)).toBe(baton.logs.find((e) => e.msg === 'worker ready')?.pid);
    const added = Object.keys(env).filter((key) => key.startsWith('BATON_') || key.startsWith('LISTEN_'));
    expect(added.sort()).toEqual(
      [
        'BATON_DRAIN_SIGNAL',
        'BATON_DRAIN_TIMEOUT_MS',
        'BATON_FD_CHANNEL',
        'BATON_GENERATION',
        'BATON_LISTENERS',
        'BATON_NOTIFY_FD',
        'BATON_VERSION',
        'BATON_WORKER',
        'LISTEN_FDNAMES',
        'LISTEN_FDS',
        'LISTEN_PID',
      ].sort(),
    );
  });
});
