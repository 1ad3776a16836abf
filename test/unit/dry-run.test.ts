/**
 * `inject --dry-run` without a process: a scratch worker's life (starting → patching → stopping →
 * exited) against fake ports, each outcome, the deadlines, and the answer that comes only once the
 * scratch worker is gone.
 */
import { createHash } from 'node:crypto';
import { describe, expect, test } from '@jest/globals';
import { pino } from 'pino';
import {
  type DryRunAnswer,
  type DryRunEvent,
  DryRunner,
  type DryRunPlan,
  SCRATCH_KILL_AFTER_MS,
} from '../../supervisor/dry-run.js';
import { INJECT_ANSWER_TIMEOUT_MS, type PatchSource } from '../../supervisor/inject.js';
import type { SpawnRequest, WorkerCallbacks } from '../../supervisor/os.js';

function patch(file: string, source = `export default () => {}; // ${file}`): PatchSource {
  return { file, source, hash: createHash('sha256').update(source).digest('hex'), uid: 1000 };
}

const PLAN: DryRunPlan = {
  patch: patch('fix.mjs'),
  earlier: [],
  generation: 3,
  spawn: {
    command: '/usr/bin/node',
    args: ['server.js'],
    env: { LISTEN_FDS: '0', BATON_SCRATCH: '1' },
    listenerFds: [],
    notifyPipe: false,
    cwd: '/srv',
    parentDeathSignal: 'SIGTERM',
  },
  startTimeoutMs: 30_000,
  stopSignal: 'SIGTERM',
};

/** A runner whose scratch worker, timers and dispatcher are in the test's hands. */
function fakeRunner() {
  const spawned: Array<{ request: SpawnRequest; callbacks: WorkerCallbacks }> = [];
  const signals: NodeJS.Signals[] = [];
  const sent: Array<Record<string, unknown>> = [];
  const timers: Array<{ ms: number; fire: () => void; cancelled: boolean }> = [];
  const logs: Array<Record<string, unknown>> = [];
  const answers: DryRunAnswer[] = [];
  const runner: DryRunner = new DryRunner({
    logger: pino({ level: 'info' }, { write: (line: string) => logs.push(JSON.parse(line)) }),
    spawn: (request, callbacks) => {
      spawned.push({ request, callbacks });
      return {
        pid: 4242,
        kill: (signal) => {
          signals.push(signal);
          return true;
        },
        send: (message, _handle, onSent) => {
          sent.push(message as Record<string, unknown>);
          onSent(null);
        },
      };
    },
    setTimer: (ms, fn) => {
      const timer = { ms, fire: fn, cancelled: false };
      timers.push(timer);
      return { cancel: () => (timer.cancelled = true) };
    },
    // Straight back to the runner, as the master's dispatcher hands it.
    queue: (event: DryRunEvent) => runner.on(event),
    writeStderr: () => {},
  });
  const worker = () => spawned[0]?.callbacks as WorkerCallbacks;
  return {
    runner,
    spawned,
    signals,
    sent,
    logs,
    answers,
    start: (plan: DryRunPlan = PLAN) => runner.start(plan, (answer) => answers.push(answer)),
    worker,
    /** The timer set last and still pending. */
    lastTimer: () => timers.filter((timer) => !timer.cancelled).at(-1),
  };
}

describe('a dry run', () => {
  test('the patch goes once the scratch worker exposed its values; the caller hears "ran" once it has exited', () => {
    const dry = fakeRunner();
    dry.start();
    expect(dry.spawned[0]?.request).toMatchObject({ listenerFds: [], notifyPipe: false });
    expect(dry.runner.running).toBe(true);
    dry.worker().onMessage({ baton: 'exposed', names: ['rewards'] });
    expect(dry.sent).toEqual([
      { baton: 'inject', id: 1, source: PLAN.patch.source, hash: PLAN.patch.hash, file: 'fix.mjs' },
    ]);
    expect(dry.lastTimer()?.ms).toBe(INJECT_ANSWER_TIMEOUT_MS);
    dry.worker().onMessage({ baton: 'injected', id: 1, ok: true });
    expect(dry.signals).toEqual(['SIGTERM']);
    expect(dry.answers).toEqual([]);
    dry.worker().onExit(0, null);
    expect(dry.answers).toEqual([{ outcome: 'done', result: { generation: 3, pid: 4242, outcome: 'ran' } }]);
    expect(dry.runner.running).toBe(false);
    expect(dry.logs.at(-1)).toMatchObject({
      msg: 'patch dry run',
      file: 'fix.mjs',
      hash: PLAN.patch.hash,
      uid: 1000,
      gen: 3,
      pid: 4242,
      outcome: 'ran',
    });
  });

  test('a patch that throws: "failed" with its error', () => {
    const dry = fakeRunner();
    dry.start();
    dry.worker().onMessage({ baton: 'exposed', names: ['rewards'] });
    const error = { message: 'Error: does not fit', stack: 'Error: does not fit\n    at fix.mjs:2:9' };
    dry.worker().onMessage({ baton: 'injected', id: 1, ok: false, error });
    dry.worker().onExit(0, null);
    expect(dry.answers).toEqual([
      { outcome: 'done', result: { generation: 3, pid: 4242, outcome: 'failed', error } },
    ]);
  });

  test("the generation's patches go first, in order; one that fails in the scratch worker fails the dry run", () => {
    const dry = fakeRunner();
    dry.start({ ...PLAN, earlier: [patch('first.mjs'), patch('second.mjs')] });
    dry.worker().onMessage({ baton: 'exposed', names: ['rewards'] });
    expect(dry.sent.map((message) => [message.id, message.file])).toEqual([
      [1, 'first.mjs'],
      [2, 'second.mjs'],
      [3, 'fix.mjs'],
    ]);
    dry.worker().onMessage({ baton: 'injected', id: 1, ok: true });
    dry.worker().onMessage({ baton: 'injected', id: 2, ok: false, error: { message: 'TypeError: x' } });
    dry.worker().onExit(0, null);
    const [answer] = dry.answers;
    expect(answer?.outcome === 'done' && answer.result).toMatchObject({
      outcome: 'failed',
      error: {
        message:
          'second.mjs, a patch generation 3 already runs, failed in the scratch worker first: TypeError: x',
      },
    });
  });

  test('a scratch worker that exits before it takes the patch: "exited", with its stderr', () => {
    const dry = fakeRunner();
    dry.start();
    dry.worker().onStderr(Buffer.from('Error: cannot open the database\n    at main (server.js:3:9)\n'));
    dry.worker().onExit(1, null);
    expect(dry.signals).toEqual([]);
    expect(dry.answers).toEqual([
      {
        outcome: 'done',
        result: {
          generation: 3,
          pid: 4242,
          outcome: 'exited',
          error: {
            message: 'the scratch worker exited with code 1 before it took the patch',
            stack: undefined,
          },
          exitCode: 1,
          signal: null,
          stderrTail: 'Error: cannot open the database\n    at main (server.js:3:9)',
        },
      },
    ]);
  });

  test('ready without exposing anything: "refused" at once', () => {
    const dry = fakeRunner();
    dry.start();
    dry.worker().onMessage('ready');
    expect(dry.sent).toEqual([]);
    expect(dry.signals).toEqual(['SIGTERM']);
    dry.worker().onExit(0, null);
    const [answer] = dry.answers;
    expect(answer?.outcome === 'done' && answer.result.outcome).toBe('refused');
  });

  test('deadlines: not started in time, then not gone in time: "no-answer", SIGKILL, and the answer at the exit', () => {
    const dry = fakeRunner();
    dry.start();
    const start = dry.lastTimer();
    expect(start?.ms).toBe(PLAN.startTimeoutMs);
    start?.fire();
    expect(dry.signals).toEqual(['SIGTERM']);
    const kill = dry.lastTimer();
    expect(kill?.ms).toBe(SCRATCH_KILL_AFTER_MS);
    kill?.fire();
    expect(dry.signals).toEqual(['SIGTERM', 'SIGKILL']);
    expect(dry.answers).toEqual([]);
    dry.worker().onExit(null, 'SIGKILL');
    const [answer] = dry.answers;
    expect(answer?.outcome === 'done' && answer.result).toMatchObject({
      outcome: 'no-answer',
      error: { message: expect.stringMatching(/neither exposed its values nor said ready within 30 s/) },
    });
  });

  test('the master stops: the caller hears "stopping"; a fast stop kills the scratch worker', () => {
    const dry = fakeRunner();
    dry.start();
    dry.runner.stopAll(false);
    expect(dry.signals).toEqual(['SIGTERM']);
    dry.runner.stopAll(true);
    expect(dry.signals).toEqual(['SIGTERM', 'SIGKILL']);
    dry.worker().onExit(null, 'SIGKILL');
    expect(dry.answers).toEqual([
      {
        outcome: 'ignored',
        reason: 'stopping',
        message: 'The master is stopping: the dry run was cut short.',
      },
    ]);
    expect(dry.logs.at(-1)).toMatchObject({ msg: 'patch dry run', outcome: 'interrupted' });
  });
});
