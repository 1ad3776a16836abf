/**
 * `{ "kind": "reload", "until"?: "drained" | "active", "config"?: true | "/path" }`: queues a reload
 * (after reading the config file again, with `config`; a file that does not validate is refused), then
 * streams its progress until the generation that carries it is active and every
 * generation it replaced has retired (or, with `until: "active"`, until it is
 * active), or until it failed. A reload asked while one runs joins the queued one.
 */
import type { StartFailure } from '../errors.js';
import type { Progress, ReloadAnswer } from '../model.js';
import type { ControlledMaster, RequestKind } from './context.js';
import { unknownField } from './context.js';
import type { ControlErrorBody } from './protocol.js';

/** How far a reload is followed before the answer. */
export type ReloadUntil = 'drained' | 'active';

/** A reload request, its fields checked. */
export interface ReloadRequest {
  kind: 'reload';
  until: ReloadUntil;
  /** Read the config file again first: `true` the master's own, a path (absolute) another one. */
  config?: true | string;
}

/** The first progress line of a reload: what the request became. */
export interface ReloadAccepted {
  kind: 'reload-accepted';
  /** `started` now; `queued` behind a running reload; `joined` a reload already queued. */
  outcome: 'started' | 'queued' | 'joined';
  generation: number;
}

/** A generation the reload replaced, once it has retired. */
export interface RetiredGeneration {
  generation: number;
  drainMs: number;
  forced: boolean;
}

/** The answer to a reload that went through. */
export interface ReloadResult {
  outcome: ReloadAccepted['outcome'];
  generation: number;
  until: ReloadUntil;
  readyMs: number;
  /** The generations it replaced that have retired (all of them with `until: "drained"`). */
  retired: RetiredGeneration[];
  /** The generations it replaced that still drain (with `until: "active"`). */
  draining: number[];
  /**
   * `reexec`: the master re-executed itself (`baton reexec`) while the replaced generations drained;
   * the drain goes on, no longer followed here (`baton status` shows it).
   */
  cutShort?: 'reexec';
}

/** What following a reload produced: a line to pass on, or its end. */
export type ReloadStep =
  | { progress: Progress | ReloadAccepted }
  | { done: { ok: true; result: ReloadResult } | { ok: false; error: ControlErrorBody } };

/**
 * Follows one reload through the master's progress reports: pure, so that its
 * decisions are tested without a master. Reports that come before the master's
 * answer (the generation may start, or even fail, while the request is handled)
 * wait until it is known which generation is ours.
 */
export class ReloadWatch {
  private accepted: ReloadAccepted | undefined;
  private readonly early: Progress[] = [];
  private readyMs: number | undefined;
  private readonly replaced = new Set<number>();
  private readonly retired: RetiredGeneration[] = [];
  private ended = false;

  constructor(private readonly until: ReloadUntil) {}

  /** The master's answer to the reload event. */
  answered(answer: ReloadAnswer): ReloadStep[] {
    if (answer.outcome === 'refused') {
      return this.end({ ok: false, error: { code: 'config-refused', message: answer.message } });
    }
    if (answer.outcome === 'ignored') {
      return this.end({
        ok: false,
        error: { code: 'stopping', message: 'The master is stopping: the reload was not started.' },
      });
    }
    this.accepted = { kind: 'reload-accepted', outcome: answer.outcome, generation: answer.generation };
    return [{ progress: this.accepted }, ...this.early.splice(0).flatMap((progress) => this.see(progress))];
  }

  /** One progress report of the master; reports about other reloads are left out. */
  see(progress: Progress): ReloadStep[] {
    if (this.ended) return [];
    const accepted = this.accepted;
    if (!accepted) {
      this.early.push(progress);
      return [];
    }
    const ours = 'generation' in progress && progress.generation === accepted.generation;
    switch (progress.kind) {
      case 'stopping':
        return [
          { progress },
          ...this.end({
            ok: false,
            error: { code: 'stopping', message: 'The master began to stop before the reload ended.' },
          }),
        ];
      case 'reload-failed':
        return ours ? [{ progress }, ...this.end({ ok: false, error: failureError(progress) })] : [];
      case 'generation-active':
        if (!ours) return [];
        this.readyMs = progress.readyMs;
        for (const old of progress.draining) this.replaced.add(old);
        return [{ progress }, ...this.endIfDone()];
      case 'generation-draining':
        return this.replaced.has(progress.generation) ? [{ progress }] : [];
      case 'reexecuting':
        // The new generation serves (a re-exec waits for that); its drain is not followed across the exec.
        return this.readyMs === undefined ? [] : this.endIfDone(true);
      case 'generation-retired':
        if (!this.replaced.delete(progress.generation)) return [];
        this.retired.push({
          generation: progress.generation,
          drainMs: progress.drainMs,
          forced: progress.forced,
        });
        return [{ progress }, ...this.endIfDone()];
      default:
        return ours ? [{ progress }] : [];
    }
  }

  private endIfDone(reexecuting = false): ReloadStep[] {
    const accepted = this.accepted as ReloadAccepted;
    if (this.until === 'drained' && this.replaced.size > 0 && !reexecuting) return [];
    const result: ReloadResult = {
      outcome: accepted.outcome,
      generation: accepted.generation,
      until: this.until,
      readyMs: this.readyMs as number,
      retired: [...this.retired],
      draining: [...this.replaced],
      ...(reexecuting && this.replaced.size > 0 ? { cutShort: 'reexec' as const } : {}),
    };
    const forced = this.retired.filter((old) => old.forced).map((old) => old.generation);
    if (forced.length === 0) return this.end({ ok: true, result });
    return this.end({
      ok: false,
      error: {
        code: 'drain-forced',
        message: `Generation ${accepted.generation} serves, but generation ${forced.join(', ')} did not drain in time: the workers left were killed at the drain deadline.`,
        forced,
        ...result,
      },
    });
  }

  private end(
    done: { ok: true; result: ReloadResult } | { ok: false; error: ControlErrorBody },
  ): ReloadStep[] {
    this.ended = true;
    return [{ done }];
  }
}

/** The error answer of a reload whose generation did not start; the failure's kind is the code. */
function failureError(progress: Extract<Progress, { kind: 'reload-failed' }>): ControlErrorBody {
  const failure: StartFailure = progress.failure;
  return { code: failure.kind, message: progress.message, generation: progress.generation, failure };
}

/** The generation that serves now, if any (an error answer says who keeps serving). */
function servingGeneration(master: Pick<ControlledMaster, 'snapshot'>): number | undefined {
  return master.snapshot().generations.find((generation) => generation.state === 'active')?.id;
}

/** `reload`: queues the reload event and reports as the master's progress reports come. */
export const reload: RequestKind<ReloadRequest> = {
  check(fields) {
    const unknown = unknownField(fields, ['until', 'config']);
    if (unknown) return { ok: false, message: unknown };
    const until = fields.until ?? 'drained';
    if (until !== 'drained' && until !== 'active') {
      return {
        ok: false,
        message: `Expected \`until\` to be "drained" or "active", got ${JSON.stringify(until)}`,
      };
    }
    const config = fields.config;
    if (config !== undefined && config !== true && !(typeof config === 'string' && config.startsWith('/'))) {
      return {
        ok: false,
        message: `Expected \`config\` to be true or an absolute path, got ${JSON.stringify(config)}`,
      };
    }
    return { ok: true, request: { kind: 'reload', until, ...(config === undefined ? {} : { config }) } };
  },
  handle(request, exchange, { master }) {
    const watch = new ReloadWatch(request.until);
    const apply = (steps: ReloadStep[]) => {
      for (const step of steps) {
        if ('progress' in step) exchange.progress(step.progress);
        else if (step.done.ok) exchange.answer(step.done.result);
        else exchange.fail({ ...step.done.error, serving: servingGeneration(master) });
      }
    };
    // Subscribe before the event is queued: the first reports come while the master handles it.
    exchange.onEnd(master.follow((progress) => apply(watch.see(progress))));
    master.dispatch({
      type: 'reload',
      source: 'control',
      ...(request.config === undefined ? {} : { config: request.config }),
      reply: (answer) => apply(watch.answered(answer)),
      // A reload asked during a re-exec waits for it, and the new program answers it.
      ...(exchange.carry ? { carry: () => exchange.carry?.(request) } : {}),
    });
  },
};
