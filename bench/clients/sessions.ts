/**
 * A client process: long-lived sessions on the example app's game listener (one line per request,
 * one line per reply). Each session sends `work` every `intervalMs` and checks that every reply
 * arrives and that its coins grow by exactly 2 each time, so a lost, repeated or reordered message
 * shows up. On `stop` it waits for the replies due, says `quit` and reports when the last one left.
 */
import net from 'node:net';
import {
  boundLifetime,
  epochNow,
  MAX_ERROR_MESSAGES,
  readConfig,
  type SessionsConfig,
  type SessionsResult,
  type ToClient,
  tell,
} from './protocol.js';

/** The example app's coins per `work` (app/server.js `COINS_PER_WORK`). */
const COINS_PER_WORK = 2;

/** How long a probe session waits for its welcome line. */
const PROBE_TIMEOUT_MS = 5_000;

const config = readConfig<SessionsConfig>('sessions');
boundLifetime(config.maxDurationMs);

const errors: string[] = [];
const noteError = (message: string) => {
  if (errors.length < MAX_ERROR_MESSAGES) errors.push(message);
};

/** One player: its socket, what it sent, what came back. */
class Session {
  version = '';
  sent = 0;
  received = 0;
  outOfOrder = 0;
  quitting = false;
  /** The version and coins that `whoami` answered at the end. */
  finalVersion = '';
  finalCoins = -1;
  private onWhoami: (() => void) | undefined;
  cut = false;
  closed = false;
  closedAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private partial = '';
  private readonly onWelcome: (version: string | undefined) => void;
  private readonly onIdle = new Set<() => void>();
  private readonly onClosed = new Set<() => void>();

  constructor(
    readonly socket: net.Socket,
    onWelcome: (version: string | undefined) => void,
  ) {
    this.onWelcome = onWelcome;
    socket.setEncoding('utf8');
    socket.setNoDelay(true);
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', (error: NodeJS.ErrnoException) => noteError(`${error.code ?? ''} ${error.message}`));
    socket.on('close', () => {
      this.stopSending();
      this.closed = true;
      this.closedAt = epochNow();
      if (!this.quitting) {
        this.cut = this.version !== '';
        this.onWelcome(undefined);
      }
      for (const notify of this.onClosed) notify();
      for (const notify of this.onIdle) notify();
    });
  }

  startSending(intervalMs: number): void {
    // A random phase, so that 1,000 sessions do not all write in the same tick.
    const first = setTimeout(() => {
      this.sendWork();
      this.timer = setInterval(() => this.sendWork(), intervalMs);
    }, Math.random() * intervalMs);
    this.timer = first;
  }

  stopSending(): void {
    clearTimeout(this.timer);
    clearInterval(this.timer);
  }

  /** Resolves when every reply due has come (or the session closed). */
  settled(): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        if (this.closed || this.received >= this.sent) {
          this.onIdle.delete(check);
          resolve();
        }
      };
      this.onIdle.add(check);
      check();
    });
  }

  /** Asks `whoami` (once every reply is in) and resolves when it is answered or the session closed. */
  whoami(): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed || !this.socket.writable) {
        resolve();
        return;
      }
      this.onWhoami = resolve;
      this.onClosed.add(resolve);
      this.socket.write('whoami\n');
    });
  }

  quit(): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed) {
        resolve();
        return;
      }
      this.onClosed.add(resolve);
      this.quitting = true;
      this.socket.end('quit\n');
    });
  }

  private sendWork(): void {
    if (this.closed || this.quitting || !this.socket.writable) return;
    this.sent++;
    this.socket.write('work\n');
  }

  private onData(chunk: string): void {
    const lines = (this.partial + chunk).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) this.onLine(line);
  }

  private onLine(line: string): void {
    if (this.version === '') {
      const match = /^welcome version=(\S+)/.exec(line);
      this.version = match?.[1] ?? '(unknown)';
      this.onWelcome(this.version);
      return;
    }
    if (line === 'bye') return;
    if (this.onWhoami) {
      const match = /^version=(\S+) pid=\d+ coins=(\d+)$/.exec(line);
      this.finalVersion = match?.[1] ?? '(unknown)';
      this.finalCoins = Number(match?.[2] ?? -1);
      const resolve = this.onWhoami;
      this.onWhoami = undefined;
      resolve();
      return;
    }
    this.received++;
    if (line !== `coins ${COINS_PER_WORK * this.received}`) {
      this.outOfOrder++;
      noteError(`expected 'coins ${COINS_PER_WORK * this.received}', got '${line}'`);
    }
    for (const notify of this.onIdle) notify();
  }
}

/** Opens one session and resolves once its welcome line came, or with undefined if it could not. */
function openSession(): Promise<Session | undefined> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port: config.port });
    const timer = setTimeout(() => socket.destroy(), PROBE_TIMEOUT_MS);
    const session = new Session(socket, (version) => {
      clearTimeout(timer);
      resolve(version === undefined ? undefined : session);
    });
  });
}

/** Opens `count` sessions, `connectBatch` at a time. */
async function openSessions(count: number): Promise<{ opened: Session[]; failed: number }> {
  const opened: Session[] = [];
  let failed = 0;
  for (let start = 0; start < count; start += config.connectBatch) {
    const batch = Math.min(config.connectBatch, count - start);
    for (const session of await Promise.all(Array.from({ length: batch }, openSession))) {
      if (session) opened.push(session);
      else failed++;
    }
  }
  return { opened, failed };
}

function countVersions(sessions: Session[]): Record<string, number> {
  const versions: Record<string, number> = {};
  for (const { version } of sessions) versions[version] = (versions[version] ?? 0) + 1;
  return versions;
}

const { opened: sessions, failed: connectFailed } = await openSessions(config.sessions);
tell({ type: 'ready', connected: sessions.length, failed: connectFailed, versions: countVersions(sessions) });
for (const session of sessions) session.startSending(config.intervalMs);

const stopRequested = new Promise<void>((resolve) => {
  setTimeout(resolve, config.maxDurationMs).unref();
  process.on('message', async (message: ToClient) => {
    if (message.type === 'stop') resolve();
    else if (message.type === 'probe') {
      const probe = await openSessions(message.count);
      tell({ type: 'probed', versions: countVersions(probe.opened), failed: probe.failed });
      await Promise.all(probe.opened.map((session) => session.quit()));
    }
  });
});
await stopRequested;

for (const session of sessions) session.stopSending();
const replyDeadline = new Promise<void>((resolve) => setTimeout(resolve, config.replyTimeoutMs).unref());
await Promise.race([Promise.all(sessions.map((session) => session.settled())), replyDeadline]);
await Promise.race([Promise.all(sessions.map((session) => session.whoami())), replyDeadline]);
const cutBeforeQuit = sessions.filter((session) => session.cut).length;
const sent = sessions.reduce((sum, session) => sum + session.sent, 0);
const received = sessions.reduce((sum, session) => sum + session.received, 0);
const versionsAtEnd: Record<string, number> = {};
for (const { finalVersion } of sessions) {
  if (finalVersion !== '') versionsAtEnd[finalVersion] = (versionsAtEnd[finalVersion] ?? 0) + 1;
}
const quitAt = epochNow();
await Promise.race([Promise.all(sessions.map((session) => session.quit())), replyDeadline]);
for (const session of sessions) if (!session.closed) session.socket.destroy();

const result: SessionsResult = {
  sessions: config.sessions,
  connected: sessions.length,
  connectFailed,
  cut: cutBeforeQuit,
  lost: sent - received,
  outOfOrder: sessions.reduce((sum, session) => sum + session.outOfOrder, 0),
  sent,
  received,
  versions: countVersions(sessions),
  versionsAtEnd,
  stateIntact: sessions.filter((session) => session.finalCoins === COINS_PER_WORK * session.received).length,
  quitAt,
  leftAt: sessions.reduce((last, session) => Math.max(last, session.closedAt), quitAt),
  errors,
};
tell({ type: 'result', result }, () => process.exit(0));
