/**
 * `{ "kind": "stop", "fast"?: boolean }`: queues a stop (graceful: every
 * generation drains; fast: every worker is killed), streams the generations
 * that drain and retire, and answers once the master has stopped, with the
 * exit code it stops with.
 */
import type { RequestKind } from './context.js';
import { unknownField } from './context.js';

/** A stop request, its fields checked. */
export interface StopRequest {
  kind: 'stop';
  fast: boolean;
}

/** The answer to a stop: the master is about to exit with this code. */
export interface StopResult {
  exitCode: number;
}

/** `stop`: like SIGTERM (or SIGQUIT with `fast`), followed to the end. */
export const stop: RequestKind<StopRequest> = {
  check(fields) {
    const unknown = unknownField(fields, ['fast']);
    if (unknown) return { ok: false, message: unknown };
    const fast = fields.fast ?? false;
    if (typeof fast !== 'boolean') {
      return { ok: false, message: `Expected \`fast\` to be true or false, got ${JSON.stringify(fast)}` };
    }
    return { ok: true, request: { kind: 'stop', fast } };
  },
  handle(request, exchange, { master }) {
    exchange.onEnd(
      master.follow((progress) => {
        if (
          progress.kind === 'stopping' ||
          progress.kind === 'generation-draining' ||
          progress.kind === 'generation-retired'
        ) {
          exchange.progress(progress);
        }
      }),
    );
    master.dispatch({ type: 'stop', fast: request.fast, source: 'control' });
    master.finished.then((exitCode) => exchange.answer({ exitCode } satisfies StopResult));
  },
};
