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

/** Long-lived line-protocol sessions on the example app's game listener, each sending `work` on a period. */
export interface SessionsConfig {
  kind: 'sessions';
  port: number;
  sessions: number;
  intervalMs: number;
  /** How many sessions connect at once (the listen backlog is finite). */
  connectBatch: number;
  maxDurationMs: number;
  /** How long `stop` waits for the replies still due before it counts them lost. */
  replyTimeoutMs: number;
}

/** What the sessions saw. `lost` and `outOfOrder` count replies; `cut` counts sessions closed by the server. */
export interface SessionsResult {
  sessions: number;
  connected: number;
  connectFailed: number;
  cut: number;
  lost: number;
  outOfOrder: number;
  sent: number;
  received: number;
  /** Count of sessions by the version in their welcome line. */
  versions: Record<string, number>;
  /** Count of sessions by the version that answered `whoami` at the end (a handed-off session moved). */
  versionsAtEnd: Record<string, number>;
  /** Sessions whose coins at the end (`whoami`) equal 2 × the replies they got: their state survived. */
  stateIntact: number;
  /** Epoch ms at which the clients began to leave (sent `quit`), and at which the last one was closed. */
  quitAt: number;
  leftAt: number;
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
