/**
 * What the bench process and its client processes say to each other over IPC. A client process gets
 * its config as one JSON argument, answers `started`/`ready`, and sends one `result` before it exits.
 * The IPC channel uses Node's "advanced" serialization, so typed arrays travel without JSON.
 */

/** What one HTTP request came to: `ok` or the kind of failure. Index = the code in `HttpLoadResult.outcome`. */
export const OUTCOMES = ['ok', 'refused', 'reset', 'timeout', 'http5xx', 'other'] as const;

/** One outcome by name. */
export type Outcome = (typeof OUTCOMES)[number];

/** The failure kinds, without `ok`. */
export type FailureKind = Exclude<Outcome, 'ok'>;

/** The code of `ok` in `HttpLoadResult.outcome`. */
export const OK = 0;

/** Closed-loop HTTP GETs against 127.0.0.1: each loop sends its next request when the last one ended. */
export interface HttpLoadConfig {
  kind: 'http-load';
  port: number;
  path: string;
  /** Loops that reuse connections (an agent with keep-alive, one socket per loop). */
  keepAliveLoops: number;
  /** Loops that open a new connection for every request (`Connection: close`). */
  newConnectionLoops: number;
  /** Bounds: the load stops by itself at whichever comes first, or earlier on `stop`. */
  maxRequests: number;
  maxDurationMs: number;
  requestTimeoutMs: number;
}

/** Every request of an HTTP load, as columns; request `i` is `startedAt[i]`, `latencyMs[i]`, ... */
export interface HttpLoadResult {
  count: number;
  /** Epoch milliseconds (fractional) at which each request was sent. */
  startedAt: Float64Array;
  /** How long each request took until its outcome, in ms. */
  latencyMs: Float32Array;
  /** Index into `OUTCOMES`. */
  outcome: Uint8Array;
  /** For `ok` requests: index into `versions` of the body's `version`. */
  versionIndex: Uint16Array;
  versions: string[];
  /** The first few failure messages, as `<kind>: <message>`. */
  errors: string[];
}

/**
 * How a session talks: lines over TCP (the example app's game listener) or text frames over a
 * WebSocket served with `ws` (test/fixtures/ws-game.mjs). Both games answer `work` with the coins
 * and `ping <n>` with `pong <n>` (the WebSocket one adds the worker's pid), and `whoami` with the
 * version and the coins.
 */
export type SessionTransport = 'tcp' | 'websocket';

/**
 * Long-lived game sessions, each sending a numbered message on a period: `work` and `ping <n>` in
 * turn, so that every reply names the message it answers (`coins <2w>` the w-th work, `pong <n>`).
 */
export interface SessionsConfig {
  kind: 'sessions';
  transport: SessionTransport;
  port: number;
  sessions: number;
  intervalMs: number;
  /** Coins the app pays per `work` (2 in every version the bench runs). */
  coinsPerWork: number;
  /** How many sessions connect at once (the listen backlog is finite). */
  connectBatch: number;
  maxDurationMs: number;
  /** How long `stop` waits for the replies still due before it counts them lost. */
  replyTimeoutMs: number;
}

/** Every message the sessions sent, as columns: message `i` is `session[i]`, `sentAt[i]`, `rttMs[i]`. */
export interface SessionMessages {
  count: number;
  /** Index of the session that sent it, in the order the sessions were opened. */
  session: Uint16Array;
  /** Epoch ms (fractional) at which it was written. */
  sentAt: Float64Array;
  /** ms from the write to its reply (the first, if repeated); NaN for a message never answered. */
  rttMs: Float32Array;
}

/**
 * What the sessions saw. `lost`, `duplicated` and `outOfOrder` count messages: never answered,
 * answered more than once, answered after a later one; `cut` counts sessions closed by the server.
 */
export interface SessionsResult {
  sessions: number;
  connected: number;
  connectFailed: number;
  cut: number;
  sent: number;
  answered: number;
  lost: number;
  duplicated: number;
  outOfOrder: number;
  /** Replies that answer no message sent (a coins count that matches no `work`, a line of no known form). */
  unexpected: number;
  /** Count of sessions by the version that answered their first `whoami`. */
  versions: Record<string, number>;
  /** Count of sessions by the version that answered `whoami` at the end (a handed-off session moved). */
  versionsAtEnd: Record<string, number>;
  /** Sessions whose coins at the end (`whoami`) equal the coins per work × the `work`s they sent. */
  stateIntact: number;
  /** Epoch ms of the first message and of the `stop` that ended the sending. */
  streamedFrom: number;
  streamedUntil: number;
  /** How late the client's event loop ran while it sent (it delays sends and replies alike), in ms. */
  eventLoopDelayMs: { p50: number; p99: number; max: number };
  /** Epoch ms at which the clients began to leave, and at which the last one was closed. */
  quitAt: number;
  leftAt: number;
  messages: SessionMessages;
  errors: string[];
}

/** Idle HTTP keep-alive connections: one request each, then silence. */
export interface IdleConfig {
  kind: 'idle';
  port: number;
  connections: number;
  connectBatch: number;
  maxDurationMs: number;
}

/** What the idle connections saw; a close by the server while idle is how a drain ends them. `stop` first waits a moment for closes already under way. */
export interface IdleResult {
  opened: number;
  answered: number;
  connectFailed: number;
  closedByServer: number;
  errors: number;
}

/** Any client process's config. */
export type ClientConfig = HttpLoadConfig | SessionsConfig | IdleConfig;

/** The bench process's messages to a client. */
export type ToClient = { type: 'stop' } | { type: 'probe'; count: number };

/** A client's messages to the bench process. */
export type FromClient<R> =
  | { type: 'started'; at: number }
  | { type: 'ready'; connected: number; failed: number; versions: Record<string, number> }
  | { type: 'probed'; versions: Record<string, number>; failed: number }
  | { type: 'result'; result: R };

/** How many failure messages a client keeps. */
export const MAX_ERROR_MESSAGES = 10;

/** Wall-clock ms minus monotonic ms, taken once: `epochNow` is monotonic and on the system clock. */
const EPOCH_OFFSET_MS = Date.now() - performance.now();

/**
 * The time now as fractional epoch milliseconds, comparable with the master's pino `time` (which is
 * `Date.now()`): anchored on `Date.now()` rather than `performance.timeOrigin`, which can be a few
 * milliseconds off the system clock.
 */
export function epochNow(): number {
  return EPOCH_OFFSET_MS + performance.now();
}

/** The config passed as the client's first argument, checked for its kind. */
export function readConfig<C extends ClientConfig>(kind: C['kind']): C {
  const config = JSON.parse(process.argv[2] ?? '{}') as ClientConfig;
  if (config.kind !== kind) throw new Error(`Expected a ${kind} config, got ${JSON.stringify(config)}`);
  return config as C;
}

/** Sends `message` to the bench process; a client without a channel (run by hand) just drops it. */
export function tell<R>(message: FromClient<R>, then?: () => void): void {
  if (process.send) process.send(message, undefined, undefined, () => then?.());
  else then?.();
}

/**
 * Ends the client if the bench process goes away or if it outlives its own bound: no client may
 * outlast the bench.
 */
export function boundLifetime(maxDurationMs: number): void {
  process.on('disconnect', () => process.exit(2));
  setTimeout(() => process.exit(3), maxDurationMs + 30_000).unref();
}
