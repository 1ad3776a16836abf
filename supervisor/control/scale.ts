/**
 * `{ "kind": "scale", "workers": N }`: changes how many workers the serving
 * generation has (and the next ones), without a reload; answers once the
 * added workers are ready (or at once when workers were only removed).
 */
import { MAX_WORKERS } from '../options.js';
import type { RequestKind } from './context.js';
import { unknownField } from './context.js';

/** A scale request, its fields checked. */
export interface ScaleRequest {
  kind: 'scale';
  workers: number;
}

/** The answer: the worker count before and after. */
export interface ScaleResult {
  from: number;
  to: number;
}

/** `scale`: like SIGTTIN/SIGTTOU, to an exact count. */
export const scale: RequestKind<ScaleRequest> = {
  check(fields) {
    const unknown = unknownField(fields, ['workers']);
    if (unknown) return { ok: false, message: unknown };
    const { workers } = fields;
    if (typeof workers !== 'number' || !Number.isInteger(workers) || workers < 1 || workers > MAX_WORKERS) {
      return {
        ok: false,
        message: `Expected \`workers\` to be a whole number from 1 to ${MAX_WORKERS}, got ${JSON.stringify(workers)}`,
      };
    }
    return { ok: true, request: { kind: 'scale', workers } };
  },
  handle(request, exchange, { master }) {
    master.dispatch({
      type: 'scale',
      workers: request.workers,
      source: 'control',
      reply: (answer) => {
        if (answer.outcome === 'ignored') {
          exchange.fail({ code: 'stopping', message: 'The master is stopping: nothing to scale.' });
          return;
        }
        const result: ScaleResult = { from: answer.from, to: answer.to };
        const everyoneReady = () => {
          const active = master.snapshot().generations.find((generation) => generation.state === 'active');
          const live =
            active?.workers.filter((worker) => worker.state === 'starting' || worker.state === 'ready') ?? [];
          return live.length === answer.to && live.every((worker) => worker.state === 'ready');
        };
        if (answer.to <= answer.from || everyoneReady()) {
          exchange.answer(result);
          return;
        }
        exchange.onEnd(
          master.follow(() => {
            if (everyoneReady()) exchange.answer(result);
          }),
        );
      },
    });
  },
};
