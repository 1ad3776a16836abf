/**
 * Hot patches, the master's side (`baton inject`, docs/control.md). A patch's source goes over IPC to
 * the chosen live workers that take patches (they called the child API's `expose`); each answers
 * whether it applied it, within a deadline. A generation keeps the patches applied to all of it, so
 * that a worker it starts later (after a crash, or by `scale`) gets them again once ready; a new
 * generation starts clean, since the fix belongs in its code.
 *
 * The master feeds this class its events (requests, messages, exits, deadlines) one at a time, from
 * its dispatcher; the choice of workers is a pure function.
 */

import type { MasterWire, PatchFailure } from '../child/protocol.js';
import type { Generation } from './generation.js';
import type { Logger } from './log.js';
import type { TimerHandle } from './os.js';
import type { Worker } from './worker.js';

/** How long a worker has to answer whether it applied a patch. */
export const INJECT_ANSWER_TIMEOUT_MS = 10_000;

/** Which live workers a patch goes to. */
export type InjectTarget =
  | { kind: 'all' }
  | { kind: 'generation'; generation: number }
  | { kind: 'pid'; pid: number };

/** A patch as the master received it. */
export interface PatchSource {
  /** The file's base name, for logs, stack traces and status. */
  file: string;
  /** The sha256 of `source`, in hex. */
  hash: string;
  source: string;
  /** The real uid of who asked on the control socket (supervisor/control/peer.ts). */
  uid?: number;
  /** Why `uid` is not known, when it is not. */
  uidUnknown?: string;
}

/** Who asked for a patch, as the log says it: `uid`, or `uidUnknown` and why. */
export function callerFacts(patch: PatchSource): { uid: number } | { uidUnknown: string } {
  return patch.uid === undefined ? { uidUnknown: patch.uidUnknown ?? 'unknown' } : { uid: patch.uid };
}

/** A patch applied to a generation, with the source that restarted workers get again. */
export interface CarriedPatch {
  applied: AppliedPatch;
  source?: PatchSource;
}

/** A patch a generation keeps, as `status` lists it. */
export interface AppliedPatch {
  file: string;
  hash: string;
  /** When it was applied (ms since the epoch). */
  at: number;
  /** The real uid of who injected it; undefined (null in status) when the master could not tell. */
  uid: number | undefined;
  /** `generation`: applied to the whole generation, and again to the workers it starts later. */
  scope: 'generation' | 'worker';
  /** The workers that applied it when it was injected. */
  pids: number[];
}

/** How a patch went in one worker. */
export interface WorkerInjection {
  generation: number;
  worker: number;
  pid: number | undefined;
  outcome: 'patched' | 'failed' | 'refused' | 'no-answer';
  /** Why it did not go through (absent when patched). */
  error?: PatchFailure;
}

/** What an inject request became. */
export type InjectAnswer =
  | { outcome: 'injected'; workers: WorkerInjection[] }
  | { outcome: 'ignored'; reason: 'stopping' | 'no-workers'; message: string };

/** What the relay needs from the master. */
export interface InjectPorts {
  logger: Logger;
  now(): number;
  /** Sends an IPC message to `worker`; false when it has no IPC channel. */
  send(worker: Worker, message: MasterWire['inject']): boolean;
  /** Starts the deadline of round `round`; at its end the master dispatches `inject-timeout`. */
  deadline(round: number, ms: number): TimerHandle;
}

/** The workers a target names, among the live generations; a message when there are none. */
export function chooseWorkers(
  target: InjectTarget,
  generations: readonly Generation[],
): { workers: Worker[]; generation: Generation; scope: AppliedPatch['scope'] } | { message: string } {
  if (target.kind === 'pid') {
    for (const generation of generations) {
      const worker = generation.workers.find(
        (candidate) =>
          candidate.pid === target.pid && (candidate.state === 'ready' || candidate.state === 'draining'),
      );
      if (worker) return { workers: [worker], generation, scope: 'worker' };
    }
    return { message: `No live worker has pid ${target.pid}.` };
  }
  const generation =
    target.kind === 'all'
      ? generations.find((candidate) => candidate.state === 'active')
      : generations.find((candidate) => candidate.id === target.generation);
  if (!generation) {
    return {
      message:
        target.kind === 'all'
          ? 'No generation is active: nothing to patch.'
          : `No generation ${target.generation} is known.`,
    };
  }
  // A worker still starting gets the generation's patches once it is ready.
  const workers = generation.workers.filter((worker) =>
    generation.state === 'active'
      ? worker.state === 'ready'
      : worker.state === 'ready' || worker.state === 'draining',
  );
  if (workers.length === 0) return { message: `Generation ${generation.id} has no live worker to patch.` };
  return { workers, generation, scope: 'generation' };
}

/** One patch sent to some workers, until each has answered or the deadline passed. */
interface InjectionRound {
  id: number;
  patch: PatchSource;
  /** The generation that lists the patch if it went through (undefined: a replay, already listed). */
  keeper: Generation | undefined;
  scope: AppliedPatch['scope'];
  results: WorkerInjection[];
  pending: Map<Worker, WorkerInjection>;
  timer: TimerHandle | undefined;
  reply: ((answer: InjectAnswer) => void) | undefined;
}

/** Sends patches, collects the answers, and keeps what each generation has been patched with. */
export class InjectRelay {
  private readonly exposed = new WeakMap<Worker, readonly string[]>();
  private readonly patches = new WeakMap<Generation, AppliedPatch[]>();
  private readonly sources = new WeakMap<AppliedPatch, PatchSource>();
  private readonly rounds = new Map<number, InjectionRound>();
  private nextRound = 1;

  constructor(private readonly ports: InjectPorts) {}

  /** A worker said which names it exposes: it takes patches. */
  onExposed(worker: Worker, names: readonly string[]): void {
    this.exposed.set(worker, names);
  }

  /** Whether a patch round is under way (a re-exec of the master waits for none). */
  get busy(): boolean {
    return this.rounds.size > 0;
  }

  /** The names `worker` exposes, if it said so (carried by a re-exec). */
  exposedBy(worker: Worker): readonly string[] | undefined {
    return this.exposed.get(worker);
  }

  /** The patches of `generation` with their source, as plain data (carried by a re-exec). */
  carry(generation: Generation): CarriedPatch[] {
    return this.patchesOf(generation).map((applied) => {
      const source = this.sources.get(applied);
      return { applied: { ...applied }, ...(source ? { source: { ...source } } : {}) };
    });
  }

  /** What the previous program of this master knew: the patches of an adopted generation, a worker's names. */
  adopt(generation: Generation, patches: readonly CarriedPatch[]): void {
    const applied = patches.map((patch) => {
      const copy = { ...patch.applied };
      if (patch.source) this.sources.set(copy, patch.source);
      return copy;
    });
    if (applied.length > 0) this.patches.set(generation, applied);
  }

  /** The patches generation `generation` keeps, oldest first. */
  patchesOf(generation: Generation): readonly AppliedPatch[] {
    return this.patches.get(generation) ?? [];
  }

  /**
   * `baton inject`: sends `patch` to the workers `target` names among `generations`, or refuses with
   * why (no such worker); `source` names who asked, for the log.
   */
  request(
    patch: PatchSource,
    target: InjectTarget,
    source: string,
    generations: readonly Generation[],
    reply: (answer: InjectAnswer) => void,
  ): void {
    const facts = { source, file: patch.file, hash: patch.hash };
    const chosen = chooseWorkers(target, generations);
    if ('message' in chosen) {
      this.ports.logger.warn({ ...facts, target }, `patch refused: ${chosen.message}`);
      reply({ outcome: 'ignored', reason: 'no-workers', message: chosen.message });
      return;
    }
    this.ports.logger.info(
      { ...facts, gen: chosen.generation.id, workers: chosen.workers.length },
      'patch sent',
    );
    this.inject(patch, chosen, reply);
  }

  /**
   * Sends `patch` to `workers` of `generation`, which lists it if it goes through (and applies it again
   * to the workers it starts later when `scope` is the generation); `reply` gets one result per worker
   * once all have answered.
   */
  inject(
    patch: PatchSource,
    chosen: { workers: readonly Worker[]; generation: Generation; scope: AppliedPatch['scope'] },
    reply: (answer: InjectAnswer) => void,
  ): void {
    this.startRound(patch, chosen.workers, chosen.generation, chosen.scope, reply);
  }

  /** The patches `generation` applies again to every worker it starts, oldest first. */
  keptPatches(generation: Generation): PatchSource[] {
    return this.patchesOf(generation).flatMap((applied) => {
      const patch = this.sources.get(applied);
      return applied.scope === 'generation' && patch ? [patch] : [];
    });
  }

  /** A worker became ready: if its generation keeps patches, it gets them again, in order. */
  onWorkerReady(worker: Worker, generation: Generation): void {
    for (const patch of this.keptPatches(generation))
      this.startRound(patch, [worker], undefined, 'generation', undefined);
  }

  /** A worker answered round `id`. */
  onInjected(worker: Worker, id: number, error: PatchFailure | undefined): void {
    const round = this.rounds.get(id);
    const result = round?.pending.get(worker);
    if (!round || !result) return;
    result.outcome = error ? 'failed' : 'patched';
    if (error) result.error = error;
    round.pending.delete(worker);
    if (round.pending.size === 0) this.finish(round);
  }

  /** A worker exited: it will not answer. */
  onWorkerExited(worker: Worker): void {
    for (const round of [...this.rounds.values()]) {
      const result = round.pending.get(worker);
      if (!result) continue;
      result.outcome = 'failed';
      result.error = { message: 'the worker exited before it answered', stack: undefined };
      round.pending.delete(worker);
      if (round.pending.size === 0) this.finish(round);
    }
  }

  /** Round `id`'s deadline passed: the workers that did not answer are reported so. */
  onTimeout(id: number): void {
    const round = this.rounds.get(id);
    if (!round) return;
    for (const result of round.pending.values()) {
      result.outcome = 'no-answer';
      result.error = {
        message: `no answer within ${INJECT_ANSWER_TIMEOUT_MS / 1000} s: is it a Node worker using baton-supervisor/child?`,
        stack: undefined,
      };
    }
    round.pending.clear();
    this.finish(round);
  }

  private startRound(
    patch: PatchSource,
    workers: readonly Worker[],
    keeper: Generation | undefined,
    scope: AppliedPatch['scope'],
    reply: ((answer: InjectAnswer) => void) | undefined,
  ): void {
    const round: InjectionRound = {
      id: this.nextRound++,
      patch,
      keeper,
      scope,
      results: [],
      pending: new Map(),
      timer: undefined,
      reply,
    };
    const message: MasterWire['inject'] = {
      baton: 'inject',
      id: round.id,
      source: patch.source,
      hash: patch.hash,
      file: patch.file,
    };
    for (const worker of workers) {
      const result: WorkerInjection = {
        generation: worker.generation,
        worker: worker.index,
        pid: worker.pid,
        outcome: 'refused',
      };
      round.results.push(result);
      if (!this.exposed.has(worker)) {
        // Sent anyway, nobody would read it: a program that is not Node, or one that never called expose().
        result.error = {
          message:
            'refused: the worker takes no patches (not a Node worker, or it exposes nothing: call expose() from baton-supervisor/child before ready())',
          stack: undefined,
        };
      } else if (!this.ports.send(worker, message)) {
        result.error = { message: 'refused: the worker has no IPC channel', stack: undefined };
      } else {
        round.pending.set(worker, result);
      }
    }
    if (round.pending.size === 0) {
      this.finish(round);
      return;
    }
    this.rounds.set(round.id, round);
    round.timer = this.ports.deadline(round.id, INJECT_ANSWER_TIMEOUT_MS);
  }

  private finish(round: InjectionRound): void {
    round.timer?.cancel();
    this.rounds.delete(round.id);
    const patched = round.results.filter((result) => result.outcome === 'patched');
    const outcome =
      patched.length === round.results.length
        ? 'patched'
        : patched.length === 0
          ? 'failed'
          : 'partly patched';
    const facts = {
      file: round.patch.file,
      hash: round.patch.hash,
      ...callerFacts(round.patch),
      outcome,
      workers: round.results.map((result) => ({
        gen: result.generation,
        worker: result.worker,
        pid: result.pid,
        outcome: result.outcome,
        ...(result.error ? { error: result.error.message } : {}),
      })),
    };
    if (!round.keeper) {
      this.ports.logger[outcome === 'patched' ? 'info' : 'error'](facts, 'patch reapplied');
      return;
    }
    this.ports.logger[outcome === 'patched' ? 'info' : 'warn'](facts, 'patch injected');
    if (patched.length > 0) {
      // A patch applied to one worker only (--worker) is listed, never applied again.
      const applied: AppliedPatch = {
        file: round.patch.file,
        hash: round.patch.hash,
        at: this.ports.now(),
        uid: round.patch.uid,
        scope: round.scope,
        pids: patched.flatMap((result) => (result.pid === undefined ? [] : [result.pid])),
      };
      this.sources.set(applied, round.patch);
      this.patches.set(round.keeper, [...this.patchesOf(round.keeper), applied]);
    }
    round.reply?.({ outcome: 'injected', workers: round.results });
  }
}
