/**
 * A client process: long-lived game sessions, over TCP lines (the example app) or WebSocket text
 * frames (test/fixtures/ws-game.mjs). Each session sends a numbered message every `intervalMs`,
 * `work` and `ping <n>` in turn, pipelined, and matches every reply to the message it answers: a
 * message never answered is lost, one answered twice duplicated, one answered after a later one out of
 * order. Every message's send time and round trip is kept for the bench to cut into windows. On `stop`
 * it waits for the replies due, asks `whoami` (version and coins), leaves, and reports.
 */
import net from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import WebSocket from 'ws';
import {
  boundLifetime,
  epochNow,
  MAX_ERROR_MESSAGES,
  readConfig,
  type SessionMessages,
  type SessionsConfig,
  type SessionsResult,
  type ToClient,
  tell,
} from './protocol.js';

/** How long a session may take to open and answer its first `whoami`. */
const OPEN_TIMEOUT_MS = 5_000;
/** How often the event loop's lateness is sampled; each sample is the whole interval, this included. */
const LOOP_DELAY_RESOLUTION_MS = 10;
/** Room for this many messages first; the columns double when full. */
const INITIAL_MESSAGE_CAPACITY = 1 << 16;

const WHOAMI = /^version=(\S+) pid=(\d+) coins=(\d+)/;
// The WebSocket game appends the worker's pid to its answers; the TCP one does not.
const PONG = /^pong (\d+)(?: \d+)?$/;
const COINS = /^coins (\d+)(?: \d+)?$/;

const config = readConfig<SessionsConfig>('sessions');
boundLifetime(config.maxDurationMs);

const errors: string[] = [];
const noteError = (message: string) => {
  if (errors.length < MAX_ERROR_MESSAGES) errors.push(message);
};

/** Every message sent, by every session, in the order sent. */
class MessageLog {
  count = 0;
  private session = new Uint16Array(INITIAL_MESSAGE_CAPACITY);
  private sentAt = new Float64Array(INITIAL_MESSAGE_CAPACITY);
  private rttMs = new Float32Array(INITIAL_MESSAGE_CAPACITY);

  /** Records a message sent now by session `session`; returns its index. */
  add(session: number, sentAt: number): number {
    if (this.count === this.sentAt.length) this.grow();
    const index = this.count++;
    this.session[index] = session;
    this.sentAt[index] = sentAt;
    this.rttMs[index] = Number.NaN;
    return index;
  }

  /** Records the reply to message `index`; false if it had been answered already. */
  answer(index: number, at: number): boolean {
    if (!Number.isNaN(this.rttMs[index] as number)) return false;
    this.rttMs[index] = at - (this.sentAt[index] as number);
    return true;
  }

  columns(): SessionMessages {
    return {
      count: this.count,
      session: this.session.slice(0, this.count),
      sentAt: this.sentAt.slice(0, this.count),
      rttMs: this.rttMs.slice(0, this.count),
    };
  }

  private grow(): void {
    const grown = <T extends Uint16Array | Float64Array | Float32Array>(old: T, make: (n: number) => T) => {
      const next = make(old.length * 2);
      next.set(old);
      return next;
    };
    this.session = grown(this.session, (n) => new Uint16Array(n));
    this.sentAt = grown(this.sentAt, (n) => new Float64Array(n));
    this.rttMs = grown(this.rttMs, (n) => new Float32Array(n));
  }
}

const messages = new MessageLog();

/** What a transport tells its session. */
interface WireEvents {
  onOpen(): void;
  onText(text: string): void;
  onClose(): void;
}

/** One session's connection, whichever the transport: text out, text in, and the ends. */
interface Wire {
  readonly writable: boolean;
  send(text: string): void;
  /** Leaves as the game expects: `quit` on TCP (the app answers `bye` and closes), a close frame on a WebSocket. */
  leave(): void;
  destroy(): void;
}

/** A line-protocol session on TCP; the app's `welcome` and `bye` lines are not answers. */
function tcpWire(events: WireEvents): Wire {
  const socket = net.connect({ host: '127.0.0.1', port: config.port });
  socket.setEncoding('utf8');
  socket.setNoDelay(true);
  let partial = '';
  socket.once('connect', () => events.onOpen());
  socket.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) if (!line.startsWith('welcome ') && line !== 'bye') events.onText(line);
  });
  socket.on('error', (error: NodeJS.ErrnoException) => noteError(`${error.code ?? ''} ${error.message}`));
  socket.once('close', () => events.onClose());
  return {
    get writable() {
      return socket.writable;
    },
    send: (text) => socket.write(`${text}\n`),
    leave: () => socket.end('quit\n'),
    destroy: () => socket.destroy(),
  };
}

/** A WebSocket session, without permessage-deflate: a compressed session cannot move (docs/handoff.md). */
function webSocketWire(events: WireEvents): Wire {
  const socket = new WebSocket(`ws://127.0.0.1:${config.port}/`, { perMessageDeflate: false });
  socket.once('open', () => events.onOpen());
  socket.on('message', (data: WebSocket.RawData) => events.onText(data.toString()));
  socket.on('error', (error: NodeJS.ErrnoException) => noteError(`${error.code ?? ''} ${error.message}`));
  socket.once('close', () => events.onClose());
  return {
    get writable() {
      return socket.readyState === WebSocket.OPEN;
    },
    send: (text) => socket.send(text),
    leave: () => socket.close(1000),
    destroy: () => socket.terminate(),
  };
}

/** What one `whoami` answered. */
interface Identity {
  version: string;
  coins: number;
}

/** One player: its connection, the messages it sent, and how the replies matched them. */
class Session {
  readonly wire: Wire;
  readonly opened: Promise<Identity | undefined>;
  sent = 0;
  answered = 0;
  duplicated = 0;
  outOfOrder = 0;
  unexpected = 0;
  /** The message log index of each message, by sequence number - 1. */
  private readonly messageIndex: number[] = [];
  /** The sequence number of the w-th `work`, at w - 1: a `coins` reply names its work by the count. */
  private readonly workSeq: number[] = [];
  private highestAnswered = 0;
  leaving = false;
  cut = false;
  closed = false;
  closedAt = 0;
  private timer: NodeJS.Timeout | undefined;
  private whoamiWaiter: ((identity: Identity | undefined) => void) | undefined;
  private readonly onChange = new Set<() => void>();

  constructor(
    readonly index: number,
    transport: SessionsConfig['transport'],
  ) {
    let opened: (identity: Identity | undefined) => void = () => {};
    this.opened = new Promise((resolve) => {
      opened = resolve;
    });
    const openTimer = setTimeout(() => this.wire.destroy(), OPEN_TIMEOUT_MS);
    const events: WireEvents = {
      onOpen: () =>
        void this.whoami().then((identity) => {
          clearTimeout(openTimer);
          opened(identity);
        }),
      onText: (text) => this.onText(text),
      onClose: () => {
        clearTimeout(openTimer);
        this.stopSending();
        this.closed = true;
        this.closedAt = epochNow();
        this.cut = !this.leaving;
        opened(undefined);
        this.whoamiWaiter?.(undefined);
        for (const notify of this.onChange) notify();
      },
    };
    this.wire = transport === 'tcp' ? tcpWire(events) : webSocketWire(events);
  }

  get worksSent(): number {
    return this.workSeq.length;
  }

  /**
   * Sends on a fixed beat from a random phase (so that 1,000 sessions do not all write in the same
   * tick): a late tick does not push the next ones back, and a beat missed altogether is skipped rather
   * than sent in a burst. What the client could not send shows as fewer messages than asked.
   */
  startSending(intervalMs: number): void {
    let due = performance.now() + Math.random() * intervalMs;
    const tick = () => {
      this.sendNext();
      const now = performance.now();
      due += intervalMs;
      if (due < now) due += Math.ceil((now - due) / intervalMs) * intervalMs;
      this.timer = setTimeout(tick, due - now);
    };
    this.timer = setTimeout(tick, due - performance.now());
  }

  stopSending(): void {
    clearTimeout(this.timer);
  }

  /** Resolves when every message sent has its answer (or the session closed). */
  settled(): Promise<void> {
    return new Promise((resolve) => {
      const check = () => {
        if (this.closed || this.answered >= this.sent) {
          this.onChange.delete(check);
          resolve();
        }
      };
      this.onChange.add(check);
      check();
    });
  }

  /** Asks `whoami` and resolves with the answer, or undefined if the session closed first. */
  whoami(): Promise<Identity | undefined> {
    return new Promise((resolve) => {
      if (this.closed || !this.wire.writable) {
        resolve(undefined);
        return;
      }
      this.whoamiWaiter = resolve;
      this.wire.send('whoami');
    });
  }

  /** Leaves and resolves once the connection is closed. */
  leave(): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed) {
        resolve();
        return;
      }
      const check = () => {
        if (this.closed) resolve();
      };
      this.onChange.add(check);
      this.leaving = true;
      this.wire.leave();
    });
  }

  private sendNext(): void {
    if (this.closed || this.leaving || !this.wire.writable) return;
    const seq = ++this.sent;
    this.messageIndex.push(messages.add(this.index, epochNow()));
    if (seq % 2 === 1) {
      this.workSeq.push(seq);
      this.wire.send('work');
    } else this.wire.send(`ping ${seq}`);
  }

  private onText(text: string): void {
    const identity = WHOAMI.exec(text);
    if (identity) {
      const waiter = this.whoamiWaiter;
      this.whoamiWaiter = undefined;
      if (waiter) waiter({ version: identity[1] as string, coins: Number(identity[3]) });
      else this.noteUnexpected(text);
      return;
    }
    const seq = this.sequenceOf(text);
    if (seq === undefined) {
      this.noteUnexpected(text);
      return;
    }
    if (!messages.answer(this.messageIndex[seq - 1] as number, epochNow())) {
      this.duplicated++;
      noteError(`session ${this.index}: message ${seq} answered twice ('${text}')`);
      return;
    }
    this.answered++;
    if (seq < this.highestAnswered) {
      this.outOfOrder++;
      noteError(`session ${this.index}: message ${seq} answered after message ${this.highestAnswered}`);
    }
    this.highestAnswered = Math.max(this.highestAnswered, seq);
    for (const notify of this.onChange) notify();
  }

  /** The sequence number of the message that `text` answers, if it answers one this session sent. */
  private sequenceOf(text: string): number | undefined {
    const pong = PONG.exec(text);
    if (pong) {
      const seq = Number(pong[1]);
      return seq >= 1 && seq <= this.sent && seq % 2 === 0 ? seq : undefined;
    }
    const coins = COINS.exec(text);
    if (!coins) return undefined;
    const total = Number(coins[1]);
    if (total % config.coinsPerWork !== 0) return undefined;
    return this.workSeq[total / config.coinsPerWork - 1];
  }

  private noteUnexpected(text: string): void {
    this.unexpected++;
    noteError(`session ${this.index}: unexpected '${text.slice(0, 80)}'`);
  }
}

/** Opens `count` sessions, `connectBatch` at a time, each answering its first `whoami`. */
async function openSessions(
  count: number,
  firstIndex: number,
): Promise<{ opened: Array<{ session: Session; version: string }>; failed: number }> {
  const opened: Array<{ session: Session; version: string }> = [];
  let failed = 0;
  for (let start = 0; start < count; start += config.connectBatch) {
    const batch = Array.from(
      { length: Math.min(config.connectBatch, count - start) },
      (_, i) => new Session(firstIndex + start + i, config.transport),
    );
    const identities = await Promise.all(batch.map((session) => session.opened));
    batch.forEach((session, i) => {
      const identity = identities[i];
      if (identity) opened.push({ session, version: identity.version });
      else {
        failed++;
        session.wire.destroy();
      }
    });
  }
  return { opened, failed };
}

function countVersions(versions: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const version of versions) counts[version] = (counts[version] ?? 0) + 1;
  return counts;
}

const { opened, failed: connectFailed } = await openSessions(config.sessions, 0);
const sessions = opened.map(({ session }) => session);
const versionsAtStart = countVersions(opened.map(({ version }) => version));
tell({ type: 'ready', connected: sessions.length, failed: connectFailed, versions: versionsAtStart });

const loopDelay = monitorEventLoopDelay({ resolution: LOOP_DELAY_RESOLUTION_MS });
loopDelay.enable();
const streamedFrom = epochNow();
for (const session of sessions) session.startSending(config.intervalMs);

// Probe sessions are numbered after the long-lived ones; their messages are never recorded.
let nextProbeIndex = config.sessions;
const stopRequested = new Promise<void>((resolve) => {
  setTimeout(resolve, config.maxDurationMs).unref();
  process.on('message', async (message: ToClient) => {
    if (message.type === 'stop') resolve();
    else if (message.type === 'probe') {
      const probe = await openSessions(message.count, nextProbeIndex);
      nextProbeIndex += message.count;
      tell({
        type: 'probed',
        versions: countVersions(probe.opened.map(({ version }) => version)),
        failed: probe.failed,
      });
      await Promise.all(probe.opened.map(({ session }) => session.leave()));
    }
  });
});
await stopRequested;

for (const session of sessions) session.stopSending();
const streamedUntil = epochNow();
loopDelay.disable();
const replyDeadline = new Promise<void>((resolve) => setTimeout(resolve, config.replyTimeoutMs).unref());
await Promise.race([Promise.all(sessions.map((session) => session.settled())), replyDeadline]);
const identities = await Promise.race([
  Promise.all(sessions.map((session) => session.whoami())),
  replyDeadline.then(() => []),
]);
const cut = sessions.filter((session) => session.cut).length;
const quitAt = epochNow();
await Promise.race([Promise.all(sessions.map((session) => session.leave())), replyDeadline]);
for (const session of sessions) if (!session.closed) session.wire.destroy();

const sum = (field: (session: Session) => number) => sessions.reduce((total, s) => total + field(s), 0);
const sent = sum((session) => session.sent);
const answered = sum((session) => session.answered);
const lateMs = (ns: number) => Math.max(0, ns / 1e6 - LOOP_DELAY_RESOLUTION_MS);
const result: SessionsResult = {
  sessions: config.sessions,
  connected: sessions.length,
  connectFailed,
  cut,
  sent,
  answered,
  lost: sent - answered,
  duplicated: sum((session) => session.duplicated),
  outOfOrder: sum((session) => session.outOfOrder),
  unexpected: sum((session) => session.unexpected),
  versions: versionsAtStart,
  versionsAtEnd: countVersions(identities.flatMap((identity) => (identity ? [identity.version] : []))),
  stateIntact: sessions.filter(
    (session, i) => identities[i]?.coins === config.coinsPerWork * session.worksSent,
  ).length,
  streamedFrom,
  streamedUntil,
  eventLoopDelayMs: {
    p50: lateMs(loopDelay.percentile(50)),
    p99: lateMs(loopDelay.percentile(99)),
    max: lateMs(loopDelay.max),
  },
  quitAt,
  leftAt: sessions.reduce((last, session) => Math.max(last, session.closedAt), quitAt),
  messages: messages.columns(),
  errors,
};
tell({ type: 'result', result }, () => process.exit(0));
