/**
 * The control protocol's shapes (docs/control.md): newline-delimited JSON over a
 * Unix socket. A client sends requests `{ "kind": ..., "id"?: ... }`, one per
 * line; for each, the master sends zero or more `{ "progress": ... }` lines,
 * then exactly one answer, `{ "ok": true, "<kind>": result }` or
 * `{ "ok": false, "error": { "code", "message", ...facts } }`.
 */

/** The longest request line the master reads, in bytes without the newline; past it: an error and the connection closed. */
export const MAX_REQUEST_LINE_BYTES = 64 * 1024;
/** Past this many bytes of answers a client has not read, the master drops the client. */
export const MAX_UNREAD_ANSWER_BYTES = 1024 * 1024;
/** A connection with no request running and nothing received for this long is closed. */
export const CONTROL_IDLE_TIMEOUT_MS = 60_000;
/** The most control connections open at once; the master closes more at once. */
export const MAX_CONTROL_CONNECTIONS = 1024;
/** The longest request `id` (a string or a number the master echoes on every line of its answer). */
export const MAX_REQUEST_ID_LENGTH = 128;

/** What a client may tag a request with, to pair answers with requests. */
export type RequestId = string | number;

/** Why a request failed: a stable word for scripts to switch on. */
export type ErrorCode =
  /** The line is not JSON. */
  | 'bad-json'
  /** The line is JSON but not a request: not an object, no `kind`, or a field that is wrong or unknown. */
  | 'bad-request'
  /** `kind` names no request the master knows. */
  | 'unknown-kind'
  /** The line is longer than MAX_REQUEST_LINE_BYTES; the master closes the connection after this answer. */
  | 'line-too-long'
  /** The master failed while handling the request (a bug). */
  | 'internal'
  /** Reload: a worker of the new generation exited before it was ready. */
  | 'worker-exited'
  /** Reload: the new generation did not say ready before `--ready-timeout`. */
  | 'ready-timeout'
  /** Reload: a worker of the new generation listens on a port of its own and on none of baton's. */
  | 'listens-elsewhere'
  /** Reload, or inject's dry run: the command cannot be found or run any more. */
  | 'command-not-found'
  /** Reload: the new generation did not adopt the old one's sessions in time; the old one serves on. */
  | 'handoff-failed'
  /** Reload: the new generation serves, but an old one was killed at `--drain-timeout`. */
  | 'drain-forced'
  /** Reexec: the new program does not load or take the state, or something under way cannot be carried; nothing changed. */
  | 'reexec-refused'
  /** The master is stopping, so the reload (or inject, or dry run) was not carried out or not to its end. */
  | 'stopping'
  /** Reload with `config`: the file does not read or validate, or a listener it adds cannot be bound; nothing changed. */
  | 'config-refused'
  /** Inject: no live worker matches the target (no active generation, an unknown generation or pid). */
  | 'no-workers';

/** What went wrong, with the facts as fields. */
export interface ControlErrorBody {
  code: ErrorCode;
  message: string;
  [fact: string]: unknown;
}

/** The last line of an answer that failed. */
export interface ErrorAnswer {
  ok: false;
  id?: RequestId;
  error: ControlErrorBody;
}

/** The last line of an answer that went through: the result is under the request's kind. */
export type OkAnswer = { ok: true; id?: RequestId } & Record<string, unknown>;

/** The last line of an answer. */
export type FinalAnswer = OkAnswer | ErrorAnswer;

/** Any line the master sends. */
export type AnswerLine = { id?: RequestId; progress: Record<string, unknown> } | FinalAnswer;

/**
 * One line of the protocol. `undefined` becomes `null`, so that every documented
 * field is present and an unknown fact reads as `null` in any language.
 */
export function encodeLine(value: unknown): string {
  return `${JSON.stringify(value, (_key, field: unknown) => (field === undefined ? null : field))}\n`;
}
