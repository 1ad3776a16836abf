/**
 * The table of control requests, keyed by `kind`, and the reading of one line
 * into a request of one of those kinds (or an error answer that changes nothing).
 */
import type { RequestKind } from './context.js';
import { inject } from './inject.js';
import { type ControlErrorBody, MAX_REQUEST_ID_LENGTH, type RequestId } from './protocol.js';
import { reexec } from './reexec.js';
import { reload } from './reload.js';
import { scale } from './scale.js';
import { status } from './status.js';
import { stop } from './stop.js';

/** Every request the control socket answers, by kind. */
export const REQUESTS = { status, reload, stop, scale, inject, reexec } as const satisfies Record<
  string,
  RequestKind<unknown>
>;

/** The name of a request kind. */
export type RequestKindName = keyof typeof REQUESTS;

/** A line read as a request: its kind's entry in the table and the checked request, or an error. */
export type ParsedLine =
  | {
      ok: true;
      id: RequestId | undefined;
      kind: RequestKindName;
      handler: RequestKind<unknown>;
      request: unknown;
    }
  | { ok: false; id: RequestId | undefined; error: ControlErrorBody };

/** Reads one request line; nothing here has any effect on the master. */
export function parseRequestLine(line: string): ParsedLine {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (error) {
    return {
      ok: false,
      id: undefined,
      error: { code: 'bad-json', message: `The request is not JSON: ${(error as Error).message}` },
    };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return badRequest(undefined, 'Expected a JSON object like {"kind":"status"}');
  }
  const fields = value as Record<string, unknown>;
  const id = fields.id;
  if (
    id !== undefined &&
    !(typeof id === 'string' && id.length <= MAX_REQUEST_ID_LENGTH) &&
    !(typeof id === 'number' && Number.isFinite(id))
  ) {
    return badRequest(
      undefined,
      `Expected \`id\` to be a number or a string of at most ${MAX_REQUEST_ID_LENGTH} characters`,
    );
  }
  const requestId = id as RequestId | undefined;
  const kind = fields.kind;
  if (typeof kind !== 'string') return badRequest(requestId, `Expected \`kind\` to be one of ${kindList()}`);
  if (!Object.hasOwn(REQUESTS, kind)) {
    return {
      ok: false,
      id: requestId,
      error: {
        code: 'unknown-kind',
        message: `Unknown request kind '${kind}': expected one of ${kindList()}`,
      },
    };
  }
  const handler: RequestKind<unknown> = REQUESTS[kind as RequestKindName];
  const checked = handler.check(fields);
  if (!checked.ok) return badRequest(requestId, checked.message);
  return { ok: true, id: requestId, kind: kind as RequestKindName, handler, request: checked.request };
}

function badRequest(id: RequestId | undefined, message: string): ParsedLine {
  return { ok: false, id, error: { code: 'bad-request', message } };
}

function kindList(): string {
  return Object.keys(REQUESTS).join(', ');
}
