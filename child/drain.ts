/**
 * The drain that cuts nobody off, shared by the child API (`serve()`, docs/contract.md) and the preload
 * baton puts in front of unmodified Node apps (preload.ts): the process's servers and connections, the
 * one-way switch from serving to draining, and the same drain for one server that the app closes itself.
 *
 * Node built-ins and the IPC channel (channel.ts, protocol.ts) only, no top-level await: the preload
 * loads it into every Node process of a worker.
 */
import type http from 'node:http';
import type https from 'node:https';
import net from 'node:net';
import { constants } from 'node:os';
import { sendToMaster } from './channel.js';
import type { ConnectionBook } from './handoff.js';

/** Keep-alive clients get this long to see `Connection: close` before their idle connections are closed. */
const HTTP_IDLE_GRACE_MS = 1000;
/** After the grace period, how often idle HTTP connections are closed again (connections turn idle late). */
const IDLE_SWEEP_INTERVAL_MS = 250;
/** How long a drain may run when `BATON_DRAIN_TIMEOUT_MS` does not say. */
const DEFAULT_DRAIN_TIMEOUT_MS = 30_000;
/** The drain signal when `BATON_DRAIN_SIGNAL` does not say; what Docker, Kubernetes and systemd send. */
const DEFAULT_DRAIN_SIGNAL = 'SIGTERM';
/** Node's timers fire at once past this many milliseconds, so longer drain timeouts are clamped to it. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** At most one connection report per this many milliseconds. */
const CONNECTION_REPORT_INTERVAL_MS = 250;

/** A function run when draining starts; the process exits only after it has settled. */
export type DrainHook = () => void | Promise<void>;

/**
 * True when this process is a worker started by baton: it inherited listeners and a generation. Read
 * at each call: the preload settles the environment before the app runs (preload.ts).
 */
export function isUnderBaton(): boolean {
  return process.env.LISTEN_FDS !== undefined && process.env.BATON_GENERATION !== undefined;
}

/** The process's servers, their connections, and the one-way switch from serving to draining. */
export class Drainer implements ConnectionBook {
  state: 'serving' | 'draining' | 'drained' = 'serving';
  readonly #servers = new Set<net.Server>();
  // Servers the app closed itself (`server.close()` on an inherited socket), draining on their own.
  readonly #closing = new Set<net.Server>();
  readonly #connections = new Set<net.Socket>();
  readonly #listenerOf = new WeakMap<net.Socket, string>();
  readonly #encryptedListeners = new Set<string>();
  // Work that must end before the process exits (a handoff reporting to the master).
  #holds = 0;
  // Responses whose headers may still change, so that a drain can add `Connection: close` to them.
  readonly #openResponses = new Map<http.ServerResponse, net.Server>();
  readonly #hooks: DrainHook[] = [];
  #hooksRunning = 0;
  #triggersInstalled = false;
  #drained: Promise<void> | undefined;
  #resolveDrained = () => {};
  readonly #reporter = new ConnectionReporter(() => this.#connections.size);

  connectionCount(): number {
    return this.#connections.size;
  }

  /** Drains on the drain signal, even outside baton, so that `docker stop` is graceful too. */
  installTriggers(): void {
    if (this.#triggersInstalled) return;
    // A repeated signal is ignored on purpose: the master's SIGKILL at the drain deadline is the hard stop.
    process.on(drainSignal(), () => void this.drain());
    if (isUnderBaton()) {
      // The IPC channel closes when the master dies; nobody would ever tell us to drain.
      process.on('disconnect', () => void this.drain());
    }
    this.#triggersInstalled = true;
  }

  get draining(): boolean {
    return this.state !== 'serving';
  }

  /** Whether `server` is already tracked (served, or adopted by the preload). */
  tracks(server: net.Server): boolean {
    return this.#servers.has(server);
  }

  track(server: net.Server, listener: string): void {
    if (this.#servers.has(server)) return;
    this.#servers.add(server);
    // tls.Server's 'connection' is the TCP socket under the TLS one: its state lives in OpenSSL.
    if (isTlsServer(server)) this.#encryptedListeners.add(listener);
    server.on('connection', (socket: net.Socket) => this.#add(socket, listener));
    if (isHttpServer(server)) {
      // Prepended so that the header is set before the app's own handler can send the headers.
      server.prependListener('request', (_request: http.IncomingMessage, response: http.ServerResponse) => {
        if (this.state === 'serving' && !this.#closing.has(server)) {
          this.#openResponses.set(response, server);
          response.once('close', () => this.#openResponses.delete(response));
        } else {
          response.setHeader('Connection', 'close');
        }
      });
    }
  }

  /**
   * Drains one server that the app closes (its own shutdown, Fastify's `close()`): stops accepting,
   * `Connection: close` on later responses, idle connections closed after the grace period; `callback`
   * runs once its last connection has closed, as `net.Server#close`'s does.
   */
  closeServer(server: net.Server, callback?: (error?: Error) => void): void {
    if (!this.#closing.has(server)) {
      this.#closing.add(server);
      this.#askToClose((owner) => owner === server);
      this.#closeIdleLater([server]);
    }
    net.Server.prototype.close.call(server, callback);
  }

  connectionsOf(listener: string): net.Socket[] {
    return [...this.#connections].filter((socket) => this.#listenerOf.get(socket) === listener);
  }

  isEncrypted(listener: string): boolean {
    return this.#encryptedListeners.has(listener);
  }

  adopt(socket: net.Socket, listener: string): void {
    this.#add(socket, listener);
  }

  stopAccepting(): void {
    void this.drain();
  }

  holdExit(): () => void {
    this.#holds += 1;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#holds -= 1;
      this.#finishIfDone();
    };
  }

  #add(socket: net.Socket, listener: string): void {
    this.#connections.add(socket);
    this.#listenerOf.set(socket, listener);
    this.#reporter.changed();
    socket.once('close', () => {
      this.#connections.delete(socket);
      this.#reporter.changed();
      this.#finishIfDone();
    });
  }

  addHook(hook: DrainHook): void {
    this.#hooks.push(hook);
    if (this.state === 'draining') this.#runHook(hook);
  }

  drain(): Promise<void> {
    if (this.#drained) return this.#drained;
    this.state = 'draining';
    this.#drained = new Promise((resolve) => {
      this.#resolveDrained = resolve;
    });
    for (const server of this.#servers) stopAccepting(server);
    this.#askToClose(() => true);
    this.#closeIdleLater([...this.#servers]);
    this.#armDeadline();
    for (const hook of this.#hooks) this.#runHook(hook);
    this.#finishIfDone();
    return this.#drained;
  }

  /** `Connection: close` on the responses under way whose headers are not sent yet. */
  #askToClose(of: (server: net.Server) => boolean): void {
    for (const [response, server] of this.#openResponses) {
      if (!of(server)) continue;
      if (!response.headersSent) response.setHeader('Connection', 'close');
      this.#openResponses.delete(response);
    }
  }

  /**
   * Closing idle keep-alive connections at once races clients that are sending on them right now
   * (ECONNRESET); after the grace period they have seen `Connection: close` or sent nothing.
   */
  #closeIdleLater(servers: net.Server[]): void {
    const http = servers.filter(isHttpServer);
    if (http.length === 0) return;
    const closeIdle = () => {
      for (const server of http) server.closeIdleConnections();
    };
    setTimeout(() => {
      closeIdle();
      setInterval(closeIdle, IDLE_SWEEP_INTERVAL_MS).unref();
    }, HTTP_IDLE_GRACE_MS).unref();
  }

  #runHook(hook: DrainHook): void {
    this.#hooksRunning += 1;
    void (async () => {
      try {
        await hook();
      } catch (error) {
        console.error('baton: an onDrain hook failed; draining goes on', error);
      }
      this.#hooksRunning -= 1;
      this.#finishIfDone();
    })();
  }

  #armDeadline(): void {
    const timeoutMs = drainTimeoutMs();
    setTimeout(() => {
      console.error(
        `baton: drain still had ${this.#connections.size} connection(s) open after ${timeoutMs} ms; closing them`,
      );
      for (const socket of this.#connections) socket.destroy();
      process.exit(1);
    }, timeoutMs).unref();
  }

  #finishIfDone(): void {
    if (this.state !== 'draining' || this.#hooksRunning > 0 || this.#holds > 0 || this.#connections.size > 0)
      return;
    this.state = 'drained';
    this.#resolveDrained();
    // Exit after the callers awaiting drain() have had their turn.
    setImmediate(() => process.exit(0));
  }
}

/** Sends `{ baton: 'connections', count }` to the master when the count changes, throttled, trailing edge. */
class ConnectionReporter {
  #lastSentAt = Number.NEGATIVE_INFINITY;
  #lastSentCount = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(readonly count: () => number) {}

  changed(): void {
    if (!isUnderBaton() || this.#timer) return;
    const waitMs = this.#lastSentAt + CONNECTION_REPORT_INTERVAL_MS - performance.now();
    if (waitMs <= 0) {
      this.#send();
      return;
    }
    // The pending send reads the count when it fires, so the last change is never lost.
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#send();
    }, waitMs).unref();
  }

  #send(): void {
    const count = this.count();
    if (count === this.#lastSentCount || !process.connected || !process.send) return;
    this.#lastSentAt = performance.now();
    this.#lastSentCount = count;
    sendToMaster({ baton: 'connections', count });
  }
}

/** The one drainer of this process: the child API and the preload share it. */
export const drainer = new Drainer();

/** Stops accepting new connections and leaves the open ones alone. */
function stopAccepting(server: net.Server): void {
  // http.Server#close would also destroy idle keep-alive connections at once, racing clients that are
  // sending on them (ECONNRESET); the plain net close only stops accepting.
  const close = () => net.Server.prototype.close.call(server);
  if (server.listening) close();
  else server.once('listening', close);
}

/*
 * The two tests below look at methods rather than at classes: importing node:https and node:tls
 * for `instanceof` would cost every process the preload runs in tens of milliseconds at start-up.
 */

/** Whether `server` speaks HTTP/1 (http.Server, https.Server): it has idle keep-alive connections to close. */
export function isHttpServer(server: net.Server): server is http.Server | https.Server {
  return typeof (server as Partial<http.Server>).closeIdleConnections === 'function';
}

/** Whether `server` is a tls.Server (https.Server and http2's secure server derive from it). */
function isTlsServer(server: net.Server): boolean {
  return typeof (server as { addContext?: unknown }).addContext === 'function';
}

/** The signal that asks this worker to drain (`BATON_DRAIN_SIGNAL`, SIGTERM by default). */
export function drainSignal(): NodeJS.Signals {
  const signal = process.env.BATON_DRAIN_SIGNAL || DEFAULT_DRAIN_SIGNAL;
  if (!(signal in constants.signals)) {
    throw new Error(`Expected BATON_DRAIN_SIGNAL to be a signal name like SIGTERM, got '${signal}'`);
  }
  return signal as NodeJS.Signals;
}

function drainTimeoutMs(): number {
  const timeoutMs = Number(process.env.BATON_DRAIN_TIMEOUT_MS);
  return timeoutMs > 0 ? Math.min(timeoutMs, MAX_TIMER_MS) : DEFAULT_DRAIN_TIMEOUT_MS;
}
