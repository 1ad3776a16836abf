/**
 * What every control request kind is made of (its check and its handler) and
 * what a handler may use: the master's public face, the usage samples and the
 * reload history. Handlers only queue events through `master.dispatch`; the
 * master's dispatcher makes every change.
 */
import type { Logger } from '../log.js';
import type { ControlledMaster } from '../model.js';
import type { CarriedConnection } from '../reexec.js';
import type { ReloadHistory } from './history.js';
import type { Caller } from './peer.js';
import type { ControlErrorBody } from './protocol.js';
import type { UsageSampler } from './usage.js';

export type { ControlledMaster } from '../model.js';

/** Everything a request handler may use. */
export interface ControlContext {
  master: ControlledMaster;
  usage: Pick<UsageSampler, 'of' | 'sampledAt' | 'intervalMs'>;
  history: Pick<ReloadHistory, 'records'>;
  /** Requests a re-executed master resumes (`resumed: true`) see what the previous program reported. */
  resumed?: { from: string; adopted: number };
  /** The master's name and the path of its control socket, for `status`. */
  name: string;
  path: string;
  logger: Logger;
  now(): number;
}

/** One request being answered: zero or more progress lines, then exactly one answer. */
export interface Exchange {
  /** Sends `{ "progress": progress }`; nothing once the exchange has ended. */
  progress(progress: object): void;
  /** Sends `{ "ok": true, "<kind>": result }` and ends the exchange. */
  answer(result: object): void;
  /** Sends `{ "ok": false, "error": error }` and ends the exchange. */
  fail(error: ControlErrorBody): void;
  /** Runs `cleanup` when the exchange ends: answered, failed, or the client gone. */
  onEnd(cleanup: () => void): void;
  /** Who sent the request: its uid, or why the master cannot tell. Never rejects. */
  caller(): Promise<Caller>;
  /**
   * The client's connection, for a re-exec of the master to carry: the new program reads `resumeAs`
   * (a request of this connection's) first on it. Undefined if the client is gone. The exchange goes
   * on here as before until the exec.
   */
  carry?(resumeAs: object): CarriedConnection | undefined;
  /** The request came carried across a re-exec (the master's own line), not from the client. */
  readonly resumed?: boolean;
}

/** A request's fields checked: the request, or what is wrong with it (one sentence). */
export type Checked<R> = { ok: true; request: R } | { ok: false; message: string };

/** One kind of control request: its check and its handler. */
export interface RequestKind<R> {
  /** Checks the fields of a request of this kind (`kind` and `id` are checked already). */
  check(fields: Readonly<Record<string, unknown>>): Checked<R>;
  /** Answers the request through `exchange`, now or later. */
  handle(request: R, exchange: Exchange, context: ControlContext): void;
}

/** The first field that a request of this kind does not have, as a message; undefined if there is none. */
export function unknownField(fields: Readonly<Record<string, unknown>>, known: string[]): string | undefined {
  const unknown = Object.keys(fields).find(
    (field) => field !== 'kind' && field !== 'id' && !known.includes(field),
  );
  if (unknown === undefined) return undefined;
  const expected = known.length === 0 ? 'no other field' : known.map((field) => `\`${field}\``).join(', ');
  return `Unknown field \`${unknown}\` in a ${String(fields.kind)} request (expected ${expected})`;
}
