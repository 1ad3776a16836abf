/**
 * A client process: closed-loop HTTP load on 127.0.0.1 that records every request (when it was sent,
 * how long it took, what came back) instead of throwing. It runs in its own process so that its CPU
 * is not the bench's, and stops at its bounds or on `stop`, whichever comes first.
 */
import http from 'node:http';
import {
  boundLifetime,
  epochNow,
  type FailureKind,
  type HttpLoadConfig,
  type HttpLoadResult,
  MAX_ERROR_MESSAGES,
  OK,
  OUTCOMES,
  readConfig,
  type ToClient,
  tell,
} from './protocol.js';

/** The `version` of a 2xx JSON body without one. */
const NO_VERSION = '(none)';

type Answer = { ok: true; version: string } | { ok: false; kind: FailureKind; message: string };

const config = readConfig<HttpLoadConfig>('http-load');
boundLifetime(config.maxDurationMs);

const capacity = config.maxRequests;
const startedAt = new Float64Array(capacity);
const latencyMs = new Float32Array(capacity);
const outcome = new Uint8Array(capacity);
const versionIndex = new Uint16Array(capacity);
const versions: string[] = [];
const versionIndexOf = new Map<string, number>();
const errors: string[] = [];
let count = 0;
let stopping = false;

const keepAliveAgent = new http.Agent({ keepAlive: true, maxSockets: Math.max(1, config.keepAliveLoops) });

/** One GET; resolves with what came back, never rejects. */
function get(agent: http.Agent | false): Promise<Answer> {
  return new Promise((resolve) => {
    let settled = false;
    const settle = (answer: Answer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(answer);
    };
    const request = http.request({
      host: '127.0.0.1',
      port: config.port,
      path: config.path,
      agent,
      headers: agent === false ? { connection: 'close' } : {},
    });
    const timer = setTimeout(() => {
      settle({ ok: false, kind: 'timeout', message: `no response within ${config.requestTimeoutMs}ms` });
      request.destroy();
    }, config.requestTimeoutMs);
    request.on('error', (error: NodeJS.ErrnoException) => settle(classifyError(error)));
    request.on('response', (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('error', (error: NodeJS.ErrnoException) => settle(classifyError(error)));
      response.on('end', () => settle(classifyResponse(response.statusCode ?? 0, Buffer.concat(chunks))));
      response.on('close', () => {
        if (!response.complete) settle({ ok: false, kind: 'reset', message: 'response cut short' });
      });
    });
    request.end();
  });
}

function classifyError(error: NodeJS.ErrnoException): Answer {
  const message = `${error.code ?? ''} ${error.message}`.trim();
  if (error.code === 'ECONNREFUSED') return { ok: false, kind: 'refused', message };
  if (error.code === 'ECONNRESET' || error.code === 'EPIPE' || error.message === 'socket hang up') {
    return { ok: false, kind: 'reset', message };
  }
  return { ok: false, kind: 'other', message };
}

function classifyResponse(status: number, body: Buffer): Answer {
  if (status >= 500) return { ok: false, kind: 'http5xx', message: `HTTP ${status}` };
  if (status < 200 || status >= 300) return { ok: false, kind: 'other', message: `HTTP ${status}` };
  try {
    const { version } = JSON.parse(body.toString('utf8')) as { version?: unknown };
    return { ok: true, version: version === undefined ? NO_VERSION : String(version) };
  } catch {
    return { ok: false, kind: 'other', message: `HTTP ${status} without a JSON body` };
  }
}

function record(index: number, sentAt: number, answer: Answer): void {
  latencyMs[index] = epochNow() - sentAt;
  if (answer.ok) {
    let known = versionIndexOf.get(answer.version);
    if (known === undefined) {
      known = versions.push(answer.version) - 1;
      versionIndexOf.set(answer.version, known);
    }
    outcome[index] = OK;
    versionIndex[index] = known;
    return;
  }
  outcome[index] = OUTCOMES.indexOf(answer.kind);
  if (errors.length < MAX_ERROR_MESSAGES) errors.push(`${answer.kind}: ${answer.message}`);
}

const loadStartedAt = epochNow();
const mayStartAnother = () =>
  !stopping && count < config.maxRequests && epochNow() - loadStartedAt < config.maxDurationMs;

async function loop(agent: http.Agent | false): Promise<void> {
  while (mayStartAnother()) {
    const index = count++;
    const sentAt = epochNow();
    startedAt[index] = sentAt;
    record(index, sentAt, await get(agent));
  }
}

process.on('message', (message: ToClient) => {
  if (message.type === 'stop') stopping = true;
});

tell({ type: 'started', at: loadStartedAt });
await Promise.all([
  ...Array.from({ length: config.keepAliveLoops }, () => loop(keepAliveAgent)),
  ...Array.from({ length: config.newConnectionLoops }, () => loop(false)),
]);
keepAliveAgent.destroy();

const result: HttpLoadResult = {
  count,
  startedAt: startedAt.slice(0, count),
  latencyMs: latencyMs.slice(0, count),
  outcome: outcome.slice(0, count),
  versionIndex: versionIndex.slice(0, count),
  versions,
  errors,
};
tell({ type: 'result', result }, () => process.exit(0));
