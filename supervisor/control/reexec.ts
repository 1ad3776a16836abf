/**
 * `{ "kind": "reexec", "program"?: "/path/to/bin/baton.js" }`: the master replaces its own program
 * with the baton on disk (supervisor/reexec.ts, docs/reexec.md). Streams the steps (tried, state
 * carried, executing); the new program answers on the same connection once it has adopted the
 * workers. A refusal (the new program does not load or take the state; something under way) is an
 * error answer, and nothing changed.
 */
import path from 'node:path';
import type { ReexecStep } from '../model.js';
import type { RequestKind } from './context.js';
import { unknownField } from './context.js';

/** A reexec request, its fields checked. */
export interface ReexecRequest {
  kind: 'reexec';
  /** The new program's entry point (absolute); the master's own path when undefined. */
  program?: string;
  /** Sent by the new program to itself: the re-exec is done, answer with what runs now. */
  resumed?: true;
}

/** The answer once the new program runs: the same pid, the new version, the workers it adopted. */
export interface ReexecResult {
  pid: number;
  from: string;
  version: string;
  workers: number;
}

/** `reexec`: the re-exec event, followed to its end in this program, then in the new one. */
export const reexec: RequestKind<ReexecRequest> = {
  check(fields) {
    const unknown = unknownField(fields, ['program', 'resumed']);
    if (unknown) return { ok: false, message: unknown };
    const { program, resumed } = fields;
    if (program !== undefined && !(typeof program === 'string' && path.isAbsolute(program))) {
      return {
        ok: false,
        message: `Expected \`program\` to be an absolute path, got ${JSON.stringify(program)}`,
      };
    }
    if (resumed !== undefined && resumed !== true) {
      return { ok: false, message: `Expected \`resumed\` to be true, got ${JSON.stringify(resumed)}` };
    }
    return {
      ok: true,
      request: {
        kind: 'reexec',
        ...(program === undefined ? {} : { program }),
        ...(resumed ? { resumed } : {}),
      },
    };
  },
  handle(request, exchange, { master, resumed }) {
    const snapshot = master.snapshot();
    if (request.resumed) {
      if (!exchange.resumed || !resumed) {
        exchange.fail({
          code: 'bad-request',
          message: '`resumed` is sent by the master to itself, never by a client',
        });
        return;
      }
      exchange.answer({
        pid: snapshot.pid,
        from: resumed.from,
        version: snapshot.baton?.version ?? 'unknown',
        workers: resumed.adopted,
      } satisfies ReexecResult);
      return;
    }
    master.dispatch({
      type: 'reexec',
      program: request.program ?? '',
      source: 'control',
      progress: (step: ReexecStep) => exchange.progress({ kind: 'reexec', ...step }),
      reply: (answer) => exchange.fail({ code: 'reexec-refused', message: answer.message }),
      ...(exchange.carry ? { carry: () => exchange.carry?.({ kind: 'reexec', resumed: true }) } : {}),
    });
  },
};
