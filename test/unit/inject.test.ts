/**
 * Hot patches without a process: which workers a target names, the relay's answers against fake ports
 * (patched, failed, refused, no answer, exited), what a generation keeps and sends again, and the
 * control request's checks.
 */
import { createHash } from 'node:crypto';
import { describe, expect, test } from '@jest/globals';
import { pino } from 'pino';
import { parseWorkerMessage } from '../../child/protocol.js';
import { inject } from '../../supervisor/control/inject.js';
import { Generation } from '../../supervisor/generation.js';
import { chooseWorkers, type InjectAnswer, InjectRelay, type PatchSource } from '../../supervisor/inject.js';
import { Worker } from '../../supervisor/worker.js';

const PATCH_SOURCE = 'export default ({ rewards }) => { rewards.coinsPerWork = 3; };';
const PATCH: PatchSource = {
  file: 'fix.mjs',
  hash: createHash('sha256').update(PATCH_SOURCE).digest('hex'),
  source: PATCH_SOURCE,
};

/** A generation of `size` workers, each with a pid (1000 + its index) and in `state`. */
function generation(id: number, size: number, state: Generation['state'], workerState: Worker['state']) {
  const made = new Generation(id, String(id), size, 0);
  if (state === 'active' || state === 'draining') made.markActive(0);
  if (state === 'draining') made.markDraining();
  if (state !== made.state) throw new Error(`The test cannot make a generation '${state}'`);
  for (const slot of made.slots) {
    const worker = new Worker(id, slot.index, 0);
    worker.state = workerState;
    worker.process = { pid: id * 1000 + slot.index, kill: () => true };
    slot.current = worker;
    made.workers.push(worker);
  }
  return made;
}

/** A relay whose sends are recorded and whose deadlines fire when the test says. */
function fakeRelay() {
  const sent: Array<{ pid: number | undefined; message: Record<string, unknown> }> = [];
  const deadlines = new Map<number, boolean>();
  const logger = pino({ level: 'silent' });
  const relay = new InjectRelay({
    logger,
    now: () => 42,
    send: (worker, message) => {
      sent.push({ pid: worker.pid, message: message as Record<string, unknown> });
      return true;
    },
    deadline: (round) => {
      deadlines.set(round, true);
      return { cancel: () => deadlines.set(round, false) };
    },
  });
  return { relay, sent, deadlines };
}

describe('choosing workers', () => {
  test('--all is the ready workers of the active generation; a draining generation is not chosen', () => {
    const old = generation(1, 2, 'draining', 'draining');
    const active = generation(2, 2, 'active', 'ready');
    const chosen = chooseWorkers({ kind: 'all' }, [old, active]);
    expect('workers' in chosen && chosen.workers.map((worker) => worker.pid)).toEqual([2000, 2001]);
    expect('scope' in chosen && chosen.scope).toBe('generation');
  });

  test('--generation N takes its draining workers too; --worker PID one worker, scoped to it', () => {
    const old = generation(1, 2, 'draining', 'draining');
    const chosen = chooseWorkers({ kind: 'generation', generation: 1 }, [old]);
    expect('workers' in chosen && chosen.workers).toHaveLength(2);
    const one = chooseWorkers({ kind: 'pid', pid: 1001 }, [old]);
    expect('workers' in one && one.workers.map((worker) => worker.pid)).toEqual([1001]);
    expect('scope' in one && one.scope).toBe('worker');
  });

  test('nothing to patch is a sentence, never an empty list', () => {
    expect(chooseWorkers({ kind: 'all' }, [])).toEqual({
      message: 'No generation is active: nothing to patch.',
    });
    expect(chooseWorkers({ kind: 'generation', generation: 7 }, [])).toEqual({
      message: 'No generation 7 is known.',
    });
    expect(chooseWorkers({ kind: 'pid', pid: 5 }, [generation(1, 1, 'active', 'ready')])).toEqual({
      message: 'No live worker has pid 5.',
    });
    const starting = generation(1, 1, 'active', 'starting');
    expect(chooseWorkers({ kind: 'all' }, [starting])).toEqual({
      message: 'Generation 1 has no live worker to patch.',
    });
  });
});

describe('the relay', () => {
  test('answers once every worker has: patched, failed with its error, refused when it exposes nothing', () => {
    const { relay, sent, deadlines } = fakeRelay();
    const active = generation(1, 3, 'active', 'ready');
    const [patched, failed] = active.workers as [Worker, Worker, Worker];
    relay.onExposed(patched, ['rewards']);
    relay.onExposed(failed, ['rewards']);
    const answers: InjectAnswer[] = [];
    relay.inject(PATCH, { workers: active.workers, generation: active, scope: 'generation' }, (answer) =>
      answers.push(answer),
    );
    expect(sent.map((entry) => entry.pid)).toEqual([1000, 1001]);
    expect(sent[0]?.message).toMatchObject({ baton: 'inject', source: PATCH_SOURCE, hash: PATCH.hash });
    const id = sent[0]?.message.id as number;
    relay.onInjected(patched, id, undefined);
    expect(answers).toEqual([]);
    relay.onInjected(failed, id, { message: 'Error: boom', stack: 'Error: boom\n    at fix.mjs:1:1' });
    expect(answers).toHaveLength(1);
    const [answer] = answers;
    expect(answer?.outcome === 'injected' && answer.workers.map((worker) => worker.outcome)).toEqual([
      'patched',
      'failed',
      'refused',
    ]);
    expect(answer?.outcome === 'injected' && answer.workers[2]?.error?.message).toMatch(/^refused: /);
    expect(deadlines.get(id)).toBe(false);
    expect(relay.patchesOf(active)).toEqual([
      { file: 'fix.mjs', hash: PATCH.hash, at: 42, scope: 'generation', pids: [1000] },
    ]);
  });

  test('a worker that never answers is reported at the deadline; one that exits, at its exit; nothing is kept', () => {
    const { relay, sent } = fakeRelay();
    const active = generation(1, 2, 'active', 'ready');
    for (const worker of active.workers) relay.onExposed(worker, ['rewards']);
    const [silent, dying] = active.workers as [Worker, Worker];
    const answers: InjectAnswer[] = [];
    relay.inject(PATCH, { workers: active.workers, generation: active, scope: 'generation' }, (answer) =>
      answers.push(answer),
    );
    relay.onWorkerExited(dying);
    expect(answers).toEqual([]);
    relay.onTimeout(sent[0]?.message.id as number);
    const [answer] = answers;
    expect(
      answer?.outcome === 'injected' && answer.workers.map((worker) => [worker.pid, worker.outcome]),
    ).toEqual([
      [silent.pid, 'no-answer'],
      [dying.pid, 'failed'],
    ]);
    expect(answer?.outcome === 'injected' && answer.workers[0]?.error?.message).toMatch(
      /no answer within 10 s: is it a Node worker using baton-supervisor\/child\?/,
    );
    expect(relay.patchesOf(active)).toEqual([]);
  });

  test("a worker that becomes ready gets its generation's patches again, in order; a --worker patch is not sent again", () => {
    const { relay, sent } = fakeRelay();
    const active = generation(1, 1, 'active', 'ready');
    const [first] = active.workers as [Worker];
    relay.onExposed(first, ['rewards']);
    const second: PatchSource = { ...PATCH, file: 'second.mjs' };
    for (const [patch, scope] of [
      [PATCH, 'generation'],
      [second, 'generation'],
      [{ ...PATCH, file: 'one-worker.mjs' }, 'worker'],
    ] as const) {
      relay.inject(patch, { workers: [first], generation: active, scope }, () => {});
      relay.onInjected(first, sent.at(-1)?.message.id as number, undefined);
    }
    const restarted = new Worker(1, 0, 0);
    restarted.process = { pid: 1100, kill: () => true };
    restarted.state = 'ready';
    relay.onExposed(restarted, ['rewards']);
    sent.length = 0;
    relay.onWorkerReady(restarted, active);
    expect(sent.map((entry) => [entry.pid, entry.message.file])).toEqual([
      [1100, 'fix.mjs'],
      [1100, 'second.mjs'],
    ]);
    expect(relay.patchesOf(active)).toHaveLength(3);
  });
});

describe('the worker messages and the control request', () => {
  test('exposed and injected are read; anything else is not', () => {
    expect(parseWorkerMessage({ baton: 'exposed', names: ['rewards'] })).toEqual({
      kind: 'exposed',
      names: ['rewards'],
    });
    expect(parseWorkerMessage({ baton: 'injected', id: 3, ok: true })).toEqual({
      kind: 'injected',
      id: 3,
      error: undefined,
    });
    expect(parseWorkerMessage({ baton: 'injected', id: 3, ok: false, error: 'x' })).toEqual({
      kind: 'injected',
      id: 3,
      error: { message: 'the patch failed (no message)', stack: undefined },
    });
    expect(parseWorkerMessage({ baton: 'exposed', names: [1] })).toBeUndefined();
    expect(parseWorkerMessage({ baton: 'injected', id: 'x', ok: true })).toBeUndefined();
  });

  test('the request checks its target and that the hash is the sha256 of the source', () => {
    const fields = { kind: 'inject', file: 'fix.mjs', source: PATCH_SOURCE, hash: PATCH.hash };
    expect(inject.check({ ...fields, target: 'all' })).toMatchObject({
      ok: true,
      request: { target: { kind: 'all' } },
    });
    expect(inject.check({ ...fields, target: { generation: 2 } })).toMatchObject({
      ok: true,
      request: { target: { kind: 'generation', generation: 2 } },
    });
    expect(inject.check({ ...fields, target: { pid: 0 } })).toMatchObject({ ok: false });
    expect(inject.check({ ...fields, target: 'all', source: `${PATCH_SOURCE} ` })).toEqual({
      ok: false,
      message: 'The patch does not match its `hash`: it changed on the way',
    });
    expect(inject.check({ ...fields, target: 'all', uid: 0 })).toMatchObject({ ok: false });
  });

  test('a dry run takes no target', () => {
    const fields = { kind: 'inject', file: 'fix.mjs', source: PATCH_SOURCE, hash: PATCH.hash };
    expect(inject.check({ ...fields, dryRun: true })).toMatchObject({
      ok: true,
      request: { target: 'dry-run' },
    });
    expect(inject.check({ ...fields, dryRun: false })).toMatchObject({
      ok: true,
      request: { target: { kind: 'all' } },
    });
    expect(inject.check({ ...fields, dryRun: true, target: 'all' })).toEqual({
      ok: false,
      message: 'A dry run takes no `target`: it tries the patch in a scratch worker, never in a serving one',
    });
    expect(inject.check({ ...fields, dryRun: 'yes' })).toEqual({
      ok: false,
      message: 'Expected `dryRun` to be true or false, got "yes"',
    });
  });
});
