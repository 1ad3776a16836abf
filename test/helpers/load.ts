/**
 * Clients that run in the test process: HTTP load loops that count outcomes instead of throwing,
 * single requests, and a client for the example app's line-protocol game listener.
 */
import http from 'node:http';
import net from 'node:net';
import { registerCleanup } from './cleanup.js';
import { WaitTimeoutError, waitFor } from './wait.js';

/** How long one request of a load loop may take before it counts as a `timeout`. */
export const REQUEST_TIMEOUT_MS = 10_000;

/** How long `httpGetJson` waits for a whole response when the test does not say. */
export const GET_TIMEOUT_MS = 5_000;

/** How long a game session waits for a line from the server. */
export const GAME_REPLY_TIMEOUT_MS = 5_000;

/** How many error messages a load report keeps. */
const MAX_ERROR_MESSAGES = 20;

/** The version key for a 2xx JSON response without a `version` field. */
const NO_VERSION = '(none)';

/** What went wrong with one request. `reset` also covers EPIPE: the peer closed a connection in use. */
export type FailureKind = 'refused' | 'reset' | 'timeout' | 'http5xx' | 'other';

/** What a load loop saw; `ok + failed === requests` once it is done. */
export interface LoadReport {
  /** Requests started (while running, some of them are still in flight). */
  requests: number;
  /** 2xx responses with a JSON object body. */
  ok: number;
  failures: Record<FailureKind, number>;
  /** The sum of `failures`. */
  failed: number;
  /** The first messages of failures, as `<kind>: <message>`. */
  errors: string[];
  /** Count of ok responses by `body.version`. */
  versions: Record<string, number>;
  /** Each ok response's time (ms since the load started) and version, if `recordTimeline` was set. */
  byTime?: Array<{ t: number; version: string }>;
  /** How long the load ran, in ms. */
  durationMs: number;
  /**
   * Once `markCutoff()` was called: the failures split by whether the request's connection had been
   * established before the cutoff (requests under way on it) or not (a connection that arrived after).
   */
  cutoff?: { establishedBefore: Record<FailureKind, number>; openedAfter: Record<FailureKind, number> };
}

/** What load to send, and its two bounds: it stops by itself at whichever comes first. */
export interface LoadOptions {
  port: number;
  /** Reuse connections (an agent with keep-alive) or open one connection per request (`Connection: close`). */
  keepAlive: boolean;
  /** How many loops send requests back to back. */
  concurrency: number;
  maxRequests: number;
  maxDurationMs: number;
  path?: string;
  recordTimeline?: boolean;
  requestTimeoutMs?: number;
}

/** A running load: `done` resolves when it stops by itself, `stop()` ends it early (in-flight requests finish). */
export interface LoadHandle {
  done: Promise<LoadReport>;
  stop(): Promise<LoadReport>;
  /** The counts so far. */
  snapshot(): LoadReport;
  /**
   * Marks now (just before a stop signal, say): from here on the report tells failures on connections
   * established before it from failures on connections opened after it (`cutoff`).
   */
  markCutoff(): void;
}

/** One complete HTTP response. */
interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
}

/** When each client connection was established (performance.now()), kept while the socket lives. */
const establishedAt = new WeakMap<net.Socket, number>();

/** Filled in by `getText` once its request has a connection: when that connection was established. */
interface ConnectionTiming {
  establishedAt?: number;
}

/** The deadline of one request passed without a complete response. */
class RequestTimeoutError extends Error {
  constructor(timeoutMs: number) {
    super(`no complete response within ${timeoutMs}ms`);
    this.name = 'RequestTimeoutError';
  }
}

/** One GET to 127.0.0.1; rejects with the socket's error (its `code` kept) or a RequestTimeoutError. */
function getText(
  port: number,
  path: string,
  agent: http.Agent | false,
  timeoutMs: number,
  timing: ConnectionTiming = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    // Not `instanceof Error` to tell the two apart: Node's own errors come from another realm under Jest.
    let settled = false;
    const settle = (finish: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      finish();
    };
    const fail = (error: Error) => settle(() => reject(error));
    // Throws at once on options it rejects (a bad port), which rejects this promise before any timer exists.
    const request = http.request({
      host: '127.0.0.1',
      port,
      path,
      method: 'GET',
      agent,
      headers: agent === false ? { connection: 'close' } : {},
    });
    const timer = setTimeout(() => {
      fail(new RequestTimeoutError(timeoutMs));
      request.destroy();
    }, timeoutMs);
    request.on('error', fail);
    // A keep-alive socket reused from the agent was established by an earlier request.
    request.on('socket', (socket) => {
      const known = establishedAt.get(socket);
      if (known !== undefined) {
        timing.establishedAt = known;
        return;
      }
      socket.once('connect', () => {
        const now = performance.now();
        establishedAt.set(socket, now);
        timing.establishedAt = now;
      });
    });
    request.on('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('error', fail);
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        settle(() => resolve({ status: response.statusCode ?? 0, headers: response.headers, text }));
      });
      response.on('close', () => {
        if (!response.complete) fail(Object.assign(new Error('response cut short'), { code: 'ECONNRESET' }));
      });
    });
    request.end();
  });
}

/** The body as a JSON object, or undefined if it is not one. */
function parseJsonObject(text: string): Record<string, unknown> | undefined {
  try {
    const parsed: unknown = JSON.parse(text);
    return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)
      ? (parsed as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

type Outcome = { ok: true; version: string } | { ok: false; kind: FailureKind; message: string };

function classifyError(error: unknown): Outcome {
  if (error instanceof RequestTimeoutError) return { ok: false, kind: 'timeout', message: error.message };
  const { code, message = String(error) } = (error ?? {}) as Partial<NodeJS.ErrnoException>;
  if (code === 'ECONNREFUSED') return { ok: false, kind: 'refused', message };
  if (code === 'ECONNRESET' || code === 'EPIPE' || message === 'socket hang up') {
    return { ok: false, kind: 'reset', message };
  }
  return { ok: false, kind: 'other', message };
}

function classifyResponse({ status, text }: RawResponse): Outcome {
  if (status >= 500) return { ok: false, kind: 'http5xx', message: `HTTP ${status}: ${text.slice(0, 100)}` };
  if (status < 200 || status >= 300) return { ok: false, kind: 'other', message: `HTTP ${status}` };
  const body = parseJsonObject(text);
  if (body === undefined) {
    return {
      ok: false,
      kind: 'other',
      message: `HTTP ${status} without a JSON object body: ${text.slice(0, 100)}`,
    };
  }
  const { version } = body;
  return {
    ok: true,
    version: typeof version === 'string' || typeof version === 'number' ? String(version) : NO_VERSION,
  };
}

function requireCount(name: string, value: number): void {
  if (!Number.isInteger(value) || value < 1)
    throw new RangeError(`Expected \`${name}\` to be a positive integer, got ${value}`);
}

/** Starts `concurrency` loops of GETs against 127.0.0.1:`port`; it never throws, it counts. */
export function httpLoad({
  port,
  keepAlive,
  concurrency,
  maxRequests,
  maxDurationMs,
  path = '/',
  recordTimeline = false,
  requestTimeoutMs = REQUEST_TIMEOUT_MS,
}: LoadOptions): LoadHandle {
  requireCount('concurrency', concurrency);
  requireCount('maxRequests', maxRequests);
  requireCount('maxDurationMs', maxDurationMs);
  const startedAt = performance.now();
  let endedAt: number | undefined;
  let stopping = false;
  const report: LoadReport = {
    requests: 0,
    ok: 0,
    failures: noFailures(),
    failed: 0,
    errors: [],
    versions: {},
    ...(recordTimeline ? { byTime: [] } : {}),
    durationMs: 0,
  };
  const agent = keepAlive ? new http.Agent({ keepAlive: true, maxSockets: concurrency }) : false;

  let cutoffAt: number | undefined;
  const snapshot = (): LoadReport => ({
    ...report,
    failures: { ...report.failures },
    ...(report.cutoff
      ? {
          cutoff: {
            establishedBefore: { ...report.cutoff.establishedBefore },
            openedAfter: { ...report.cutoff.openedAfter },
          },
        }
      : {}),
    errors: [...report.errors],
    versions: { ...report.versions },
    ...(report.byTime ? { byTime: [...report.byTime] } : {}),
    durationMs: Math.round((endedAt ?? performance.now()) - startedAt),
  });

  const record = (outcome: Outcome, timing: ConnectionTiming) => {
    if (outcome.ok) {
      report.ok++;
      report.versions[outcome.version] = (report.versions[outcome.version] ?? 0) + 1;
      report.byTime?.push({ t: Math.round(performance.now() - startedAt), version: outcome.version });
      return;
    }
    report.failures[outcome.kind]++;
    report.failed++;
    if (report.cutoff && cutoffAt !== undefined) {
      const before = timing.establishedAt !== undefined && timing.establishedAt < cutoffAt;
      report.cutoff[before ? 'establishedBefore' : 'openedAfter'][outcome.kind]++;
    }
    if (report.errors.length < MAX_ERROR_MESSAGES) report.errors.push(`${outcome.kind}: ${outcome.message}`);
  };

  const mayStartAnother = () =>
    !stopping && report.requests < maxRequests && performance.now() - startedAt < maxDurationMs;

  const loop = async () => {
    while (mayStartAnother()) {
      report.requests++;
      const timing: ConnectionTiming = {};
      const outcome = await getText(port, path, agent, requestTimeoutMs, timing).then(
        classifyResponse,
        classifyError,
      );
      record(outcome, timing);
    }
  };

  const forget = registerCleanup(async () => {
    await stop();
  });
  const done = Promise.all(Array.from({ length: concurrency }, loop)).then(() => {
    endedAt = performance.now();
    if (agent) agent.destroy(); // close idle keep-alive sockets, or the server could not drain
    forget();
    return snapshot();
  });
  const stop = () => {
    stopping = true;
    return done;
  };
  const markCutoff = () => {
    cutoffAt = performance.now();
    report.cutoff = { establishedBefore: noFailures(), openedAfter: noFailures() };
  };
  return { done, stop, snapshot, markCutoff };
}

function noFailures(): Record<FailureKind, number> {
  return { refused: 0, reset: 0, timeout: 0, http5xx: 0, other: 0 };
}

/** A complete response to `httpGetJson`; `body` is undefined if the body is not a JSON object. */
export interface HttpJsonResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Record<string, unknown> | undefined;
  text: string;
}

/** One GET on a new connection; rejects if it fails or takes longer than `timeoutMs`. */
export async function httpGetJson(
  port: number,
  path = '/',
  { timeoutMs = GET_TIMEOUT_MS }: { timeoutMs?: number } = {},
): Promise<HttpJsonResponse> {
  try {
    const { status, headers, text } = await getText(port, path, false, timeoutMs);
    return { status, headers, body: parseJsonObject(text), text };
  } catch (error) {
    throw new Error(`GET http://127.0.0.1:${port}${path} failed: ${(error as Error).message}`, {
      cause: error,
    });
  }
}

/** Polls GET / until the body's `version` is `version`; returns that response. */
export async function waitForVersion(
  port: number,
  version: string,
  timeoutMs: number,
): Promise<HttpJsonResponse> {
  let lastSeen = 'no answer yet';
  return waitFor(
    async () => {
      try {
        const response = await httpGetJson(port, '/', { timeoutMs: Math.min(GET_TIMEOUT_MS, timeoutMs) });
        lastSeen = `HTTP ${response.status} version ${String(response.body?.version)}`;
        return response.body?.version === version ? response : undefined;
      } catch (error) {
        lastSeen = (error as Error).message;
        return undefined;
      }
    },
    { timeoutMs, what: () => `port ${port} to serve version ${version} (last: ${lastSeen})`, intervalMs: 50 },
  );
}

/** What the game server says on connect: `welcome version=<v> pid=<pid>`. */
export interface GameWelcome {
  version: string;
  pid: number;
}

/** A connection to the game listener, one line per request and reply. */
export interface GameSession {
  /** The parsed first line; rejects if the connection closes or stays silent first. */
  welcome: Promise<GameWelcome>;
  /**
   * Sends `line` and resolves with the next line not yet taken (the protocol is strictly one reply per
   * line, so replies pair with requests in order); rejects after 5 s or if the connection closes first.
   * After a timeout the pairing is lost: end the session.
   */
  request(line: string): Promise<string>;
  /** Resolves when the connection is closed, by either side; never rejects. */
  closed: Promise<void>;
  /** Ends our side gracefully (FIN); the server may still send. */
  close(): void;
  /** Drops the connection at once. */
  destroy(): void;
}

function parseWelcome(line: string): GameWelcome {
  const [word, ...pairs] = line.split(' ');
  const fields = Object.fromEntries(pairs.map((pair) => pair.split('=', 2)));
  if (word !== 'welcome' || typeof fields.version !== 'string' || !/^\d+$/.test(fields.pid ?? '')) {
    throw new Error(`expected 'welcome version=<v> pid=<pid>', got '${line}'`);
  }
  return { version: fields.version, pid: Number(fields.pid) };
}

/** Connects to the game listener on 127.0.0.1:`port`. */
export function gameSession(port: number): GameSession {
  const socket = net.connect({ host: '127.0.0.1', port });
  const received: string[] = [];
  const readers: Array<{ what: string; resolve: (line: string) => void; reject: (error: Error) => void }> =
    [];
  let closedBecause: string | undefined;
  let socketError: Error | undefined;

  const nextLine = (what: string): Promise<string> => {
    const line = received.shift();
    if (line !== undefined) return Promise.resolve(line);
    if (closedBecause !== undefined)
      return Promise.reject(new Error(`connection closed before ${what}${closedBecause}`));
    return new Promise((resolve, reject) => {
      const reader = {
        what,
        resolve: (value: string) => {
          clearTimeout(timer);
          resolve(value);
        },
        reject: (error: Error) => {
          clearTimeout(timer);
          reject(error);
        },
      };
      const timer = setTimeout(() => {
        readers.splice(readers.indexOf(reader), 1);
        reject(new WaitTimeoutError(GAME_REPLY_TIMEOUT_MS, what));
      }, GAME_REPLY_TIMEOUT_MS);
      readers.push(reader);
    });
  };

  const deliver = (line: string) => {
    const reader = readers.shift();
    if (reader) reader.resolve(line);
    else received.push(line);
  };

  let partial = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) deliver(line.replace(/\r$/, ''));
  });
  socket.on('end', () => {
    if (partial !== '') deliver(partial);
    partial = '';
  });
  socket.on('error', (error) => {
    socketError = error;
  });

  const forget = registerCleanup(() => {
    socket.destroy();
  });
  const closed = new Promise<void>((resolve) => {
    socket.once('close', () => {
      closedBecause = socketError ? `: ${socketError.message}` : '';
      for (const reader of readers.splice(0)) {
        reader.reject(new Error(`connection closed before ${reader.what}${closedBecause}`));
      }
      forget();
      resolve();
    });
  });

  const welcome = nextLine('the welcome line').then(parseWelcome);
  welcome.catch(() => {}); // a test that never awaits the welcome must not die of an unhandled rejection

  return {
    welcome,
    request: (line) => {
      if (!socket.writable)
        return Promise.reject(new Error(`cannot send '${line}': the connection is closed`));
      socket.write(`${line}\n`);
      return nextLine(`the reply to '${line}'`);
    },
    closed,
    close: () => {
      socket.end();
    },
    destroy: () => {
      socket.destroy();
    },
  };
}

/**
 * Keep-alive and new-connection load on `port` (2 loops each), returned once both are flowing;
 * each stops by itself at `maxRequests` or `maxDurationMs`.
 */
export async function flowingLoads(
  port: number,
  { maxRequests = 100_000, maxDurationMs = 120_000 }: { maxRequests?: number; maxDurationMs?: number } = {},
): Promise<LoadHandle[]> {
  const load = (keepAlive: boolean) =>
    httpLoad({ port, keepAlive, concurrency: 2, maxRequests, maxDurationMs });
  const loads = [load(true), load(false)];
  await waitFor(() => loads.every((each) => each.snapshot().ok > 20) || undefined, {
    timeoutMs: 10_000,
    what: 'load flowing',
  });
  return loads;
}

/** Stops `loads` and sums up what a test asserts: the failures' messages and count, and whether each served. */
export async function stopLoads(
  loads: readonly LoadHandle[],
): Promise<{ errors: string[]; failed: number; eachServed: boolean }> {
  const reports = await Promise.all(loads.map((each) => each.stop()));
  return {
    errors: reports.flatMap((report) => report.errors),
    failed: reports.reduce((sum, report) => sum + report.failed, 0),
    eachServed: reports.every((report) => report.ok > 0),
  };
}
