/**
 * `{ "kind": "inject", "file", "source", "hash", "target" }`: sends a hot patch to live workers
 * (docs/control.md) and answers, once every one of them has answered or the deadline passed, with how
 * it went in each. With `"dryRun": true` (and no target) the patch is tried in a scratch worker of the
 * active generation's code instead, and applied nowhere. The master checks that `hash` is the sha256
 * of `source`, and looks up the caller's uid (peer.ts) before anything runs, for the log.
 */
import { createHash } from 'node:crypto';
import type { DryRunAnswer, DryRunResult } from '../dry-run.js';
import {
  callerFacts,
  type InjectAnswer,
  type InjectTarget,
  type PatchSource,
  type WorkerInjection,
} from '../inject.js';
import type { Exchange, RequestKind } from './context.js';
import { unknownField } from './context.js';
import type { Caller } from './peer.js';

/** An inject request, its fields checked: a target, or a dry run. */
export interface InjectRequest {
  kind: 'inject';
  file: string;
  source: string;
  hash: string;
  target: InjectTarget | 'dry-run';
}

/** The answer: one result per worker the patch was meant for. */
export interface InjectResult {
  file: string;
  hash: string;
  workers: WorkerInjection[];
}

/** The answer to a dry run: how the patch went in the scratch worker. */
export interface DryRunInjectResult {
  file: string;
  hash: string;
  dryRun: DryRunResult;
}

/** `inject`: what `baton inject` sends. */
export const inject: RequestKind<InjectRequest> = {
  check(fields) {
    const unknown = unknownField(fields, ['file', 'source', 'hash', 'target', 'dryRun']);
    if (unknown) return { ok: false, message: unknown };
    const { file, source, hash, dryRun = false } = fields;
    if (typeof file !== 'string' || file === '') {
      return {
        ok: false,
        message: `Expected \`file\` to be the patch's file name, got ${JSON.stringify(file)}`,
      };
    }
    if (typeof source !== 'string') {
      return { ok: false, message: 'Expected `source` to be the text of an ES module' };
    }
    if (typeof hash !== 'string' || !/^[0-9a-f]{64}$/.test(hash)) {
      return {
        ok: false,
        message: `Expected \`hash\` to be the sha256 of \`source\` in lower-case hex, got ${JSON.stringify(hash)}`,
      };
    }
    if (createHash('sha256').update(source).digest('hex') !== hash) {
      return { ok: false, message: 'The patch does not match its `hash`: it changed on the way' };
    }
    if (typeof dryRun !== 'boolean') {
      return { ok: false, message: `Expected \`dryRun\` to be true or false, got ${JSON.stringify(dryRun)}` };
    }
    if (dryRun) {
      if (fields.target !== undefined) {
        return {
          ok: false,
          message:
            'A dry run takes no `target`: it tries the patch in a scratch worker, never in a serving one',
        };
      }
      return { ok: true, request: { kind: 'inject', file, source, hash, target: 'dry-run' } };
    }
    const target = checkTarget(fields.target);
    if (!target) {
      return {
        ok: false,
        message: `Expected \`target\` to be "all", {"generation": N} or {"pid": N}, got ${JSON.stringify(fields.target)}`,
      };
    }
    return { ok: true, request: { kind: 'inject', file, source, hash, target } };
  },
  handle(request, exchange, { master, logger }) {
    let callerLeft = false;
    exchange.onEnd(() => {
      callerLeft = true;
    });
    // The caller's uid is logged with the injection: it is looked up while the caller is still there.
    exchange
      .caller()
      .then((caller) => {
        const patch = {
          file: request.file,
          hash: request.hash,
          source: request.source,
          ...patchCaller(caller),
        };
        if (callerLeft) {
          // Nobody would hear how it went: a patch is never sent on behalf of a client that gave up.
          logger.warn(
            { file: patch.file, hash: patch.hash, ...callerFacts(patch) },
            'patch not sent: the caller left',
          );
          return;
        }
        if (request.target === 'dry-run') {
          master.dispatch({
            type: 'inject-dry-run',
            patch,
            source: 'control',
            reply: (answer) => answerDryRun(exchange, request, answer),
          });
          return;
        }
        master.dispatch({
          type: 'inject',
          patch,
          target: request.target,
          source: 'control',
          reply: (answer) => answerInject(exchange, request, answer),
        });
      })
      .catch((error: unknown) => {
        // Inside the master's dispatcher, out of reach of the server's own catch.
        logger.error({ err: error, kind: 'inject' }, 'control request failed');
        exchange.fail({
          code: 'internal',
          message: `The master failed to handle the request: ${String(error)}`,
        });
      });
  },
};

function answerInject(exchange: Exchange, request: InjectRequest, answer: InjectAnswer): void {
  if (answer.outcome === 'ignored') {
    exchange.fail({
      code: answer.reason === 'stopping' ? 'stopping' : 'no-workers',
      message: answer.message,
    });
    return;
  }
  exchange.answer({ file: request.file, hash: request.hash, workers: answer.workers } satisfies InjectResult);
}

function answerDryRun(exchange: Exchange, request: InjectRequest, answer: DryRunAnswer): void {
  if (answer.outcome === 'ignored') {
    exchange.fail({ code: answer.reason, message: answer.message });
    return;
  }
  exchange.answer({
    file: request.file,
    hash: request.hash,
    dryRun: answer.result,
  } satisfies DryRunInjectResult);
}

/** The caller's uid as a patch carries it, or why it is unknown. */
function patchCaller(caller: Caller): Pick<PatchSource, 'uid' | 'uidUnknown'> {
  return caller.uid === undefined ? { uidUnknown: caller.reason } : { uid: caller.uid };
}

function checkTarget(target: unknown): InjectTarget | undefined {
  if (target === undefined || target === 'all') return { kind: 'all' };
  if (typeof target !== 'object' || target === null) return undefined;
  const { generation, pid } = target as Record<string, unknown>;
  const keys = Object.keys(target);
  if (keys.length !== 1) return undefined;
  if (Number.isInteger(generation) && (generation as number) >= 1) {
    return { kind: 'generation', generation: generation as number };
  }
  if (Number.isInteger(pid) && (pid as number) >= 1) return { kind: 'pid', pid: pid as number };
  return undefined;
}
