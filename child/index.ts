/**
 * The worker's side of baton's contract (docs/contract.md) for Node servers: inherited listeners by
 * name, the ready message, connection reports, a drain that cuts nobody off, and live session handoff
 * (docs/handoff.md; `ws` WebSockets too, with the app's own `ws` passed in), and hot patches reaching
 * only what the app exposes (`baton inject`, and its dry run in a scratch worker that listens on nothing).
 *
 * Node built-ins only and no top-level await, so that it loads from ES modules and from CommonJS
 * (`require`) alike, in any app, with nothing to install.
 */
import type dgram from 'node:dgram';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { constants } from 'node:os';
import tls from 'node:tls';
import { sendToMaster } from './channel.js';
import { type AdoptHook, type ConnectionBook, type HandoffHook, SessionMover } from './handoff.js';
import { Injector } from './inject.js';

export type { AdoptHook, HandoffHook } from './handoff.js';
export type { Exposed, Patch } from './inject.js';
export type { HandoffCounts } from './protocol.js';
export {
  adoptWebSocket,
  type WebSocketHandoff,
  type WebSocketServerLike,
  webSocketHandoff,
} from './websocket.js';

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
/** systemd socket activation: the first inherited socket is fd 3, after stdin, stdout and stderr. */
const FIRST_LISTEN_FD = 3;

/** Where to listen when the process was not handed any socket (run alone, outside baton). */
export interface ListenFallback {
  port?: number;
  host?: string;
}

/** `net.ListenOptions` plus `fd`, which `server.listen()` accepts though @types/node leaves it out. */
export type ListenOptions = net.ListenOptions & { fd?: number };

/** A function run when draining starts; the process exits only after it has settled. */
export type DrainHook = () => void | Promise<void>;

/** True when this process is a worker started by baton: it inherited listeners and a generation. */
export const underBaton: boolean =
  process.env.LISTEN_FDS !== undefined && process.env.BATON_GENERATION !== undefined;

/** This worker's generation number (1, 2, ...), or undefined when not under baton. */
export const generation: number | undefined = envInteger('BATON_GENERATION');

/** This worker's index in its generation (0, 1, ...), or undefined when not under baton. */
export const workerIndex: number | undefined = envInteger('BATON_WORKER');

/** The version label of this worker's generation, or undefined when baton was given none. */
export const version: string | undefined = process.env.BATON_VERSION || undefined;

/**
 * True in the scratch worker that `baton inject --dry-run` starts to try a patch (BATON_SCRATCH=1): it
 * inherited no socket, `serve()` and `serveDatagrams()` resolve without listening, and nobody connects.
 * An app may skip here what reaches outside the process at start-up (jobs, registrations).
 */
export const scratch: boolean = underBaton && process.env.BATON_SCRATCH === '1';

/**
 * Where a server named `name` should listen: the socket inherited under that name, or, when the
 * process inherited no socket at all, `fallback` (by default the port in `PORT`, else any free port).
 */
export function listenOptions(name: string, fallback?: ListenFallback): ListenOptions {
  if (scratch) {
    throw new Error(
      `Cannot listen as '${name}' in the scratch worker of baton inject --dry-run: it must accept no connection (serve() resolves without listening there)`,
    );
  }
  const fdCount = process.env.LISTEN_FDS;
  if (fdCount === undefined) {
    return { ...fallback, port: fallback?.port ?? (Number(process.env.PORT) || 0) };
  }
  const count = Number(fdCount);
  const names = process.env.LISTEN_FDNAMES?.split(':');
  // Without names, systemd's convention is one anonymous socket: whatever the app calls it, that is it.
  const index = names === undefined ? (count === 1 ? 0 : -1) : names.indexOf(name);
  if (!Number.isInteger(count) || index < 0 || index >= count) {
    const known = names?.slice(0, count).join(', ') || 'none';
    throw new Error(
      `No inherited socket is named '${name}' (LISTEN_FDS=${fdCount}, LISTEN_FDNAMES=${process.env.LISTEN_FDNAMES ?? 'unset'}); known names: ${known}`,
    );
  }
  return { fd: FIRST_LISTEN_FD + index };
}

/**
 * Makes `server` listen where `listenOptions(name, fallback)` says and drain with the process;
 * resolves once it listens (at once, without listening, in a scratch worker: see `scratch`).
 */
export function serve(server: net.Server, name: string, fallback?: ListenFallback): Promise<void> {
  return new Promise((resolve, reject) => {
    if (drainer.state !== 'serving') {
      throw new Error(`Cannot serve '${name}': this process is already draining`);
    }
    drainer.installTriggers();
    if (scratch) {
      resolve();
      return;
    }
    const options = listenOptions(name, fallback);
    drainer.track(server, name);
    const onError = (error: Error) => {
      server.off('listening', onListening);
      reject(error);
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError).once('listening', onListening).listen(options);
  });
}

let saidReady = false;

/** Tells the master this worker serves (the IPC message `'ready'`); does nothing without an IPC channel. */
export function ready(): void {
  if (saidReady || !process.connected || !process.send) return;
  saidReady = true;
  // Any process manager that forked us with IPC understands 'ready' (PM2's wait_ready uses the same word).
  sendToMaster('ready');
  // Report the count once now, even 0: a worker that reports is one the master need not count in /proc.
  if (underBaton) sendToMaster({ baton: 'connections', count: drainer.connectionCount() });
}

/** Runs `hook` when draining starts (at once if it already has); the process exits only after it settles. */
export function onDrain(hook: DrainHook): void {
  drainer.addHook(hook);
}

/**
 * Starts draining now, as the drain signal does; resolves when every connection has closed and every
 * hook has settled, just before the process exits with code 0.
 */
export function drain(): Promise<void> {
  return drainer.drain();
}

/**
 * Binds a UDP socket to the inherited socket named `name` (or to `fallback` when run alone), and
 * closes it when the process drains: datagrams have no connections, so draining a UDP worker means
 * it stops reading once the new generation reads. Resolves once it is bound (at once, unbound, in a
 * scratch worker: see `scratch`).
 */
export function serveDatagrams(socket: dgram.Socket, name: string, fallback?: ListenFallback): Promise<void> {
  return new Promise((resolve, reject) => {
    if (drainer.state !== 'serving') {
      throw new Error(`Cannot serve '${name}': this process is already draining`);
    }
    drainer.installTriggers();
    if (scratch) {
      resolve();
      return;
    }
    const options = listenOptions(name, fallback);
    socket.once('error', reject);
    const bound = () => {
      socket.off('error', reject);
      drainer.addHook(() => {
        socket.close();
      });
      resolve();
    };
    if (options.fd !== undefined) socket.bind({ fd: options.fd }, bound);
    else socket.bind({ port: options.port ?? 0, address: options.host }, bound);
  });
}

/** How many connections the served servers hold open right now. */
export function connectionCount(): number {
  return drainer.connectionCount();
}

/**
 * Opts the connections of `listener` into live session handoff, in the worker being replaced: when the
 * new generation adopts that listener, `hook` is called for each open connection once it neither reads
 * nor has writes pending, and returns the session's state (JSON-serializable) to move it, or `undefined`
 * to keep it draining here. Connections of TLS servers and HTTP connections not upgraded never move.
 */
export function onHandoff<State>(listener: string, hook: HandoffHook<State>): void {
  mover.onHandoff(listener, hook);
}

/**
 * Opts this worker into adopting the connections of `listener` that an old worker hands off: `hook`
 * gets the connection and the state, before anything is read from it, and sets the session up (it may
 * return a promise; `false`, a throw or a rejection sends the connection back to its old worker).
 * Register it before `ready()`: the master hands off only to workers that said so.
 */
export function onAdopt<State>(listener: string, hook: AdoptHook<State>): void {
  mover.onAdopt(listener, hook as AdoptHook);
}

/** True for a connection closed in this worker because a new worker adopted it (its 'close' is no goodbye). */
export function wasHandedOff(socket: net.Socket): boolean {
  return mover.wasHandedOff(socket);
}

/**
 * Makes `value` reachable, as `exposed[name]`, by the patches `baton inject` sends; nothing else is.
 * Expose objects (a rules table, a settings object, a map of handlers) that a patch changes in place.
 * Call it before `ready()`: a worker that exposes nothing is refused patches, and a worker restarted
 * after a crash gets its generation's patches again once it is ready.
 */
export function expose(name: string, value: unknown): void {
  injector.expose(name, value);
}

/** The process's servers, their connections, and the one-way switch from serving to draining. */
class Drainer implements ConnectionBook {
  state: 'serving' | 'draining' | 'drained' = 'serving';
  readonly #servers = new Set<net.Server>();
  readonly #connections = new Set<net.Socket>();
  readonly #listenerOf = new WeakMap<net.Socket, string>();
  readonly #encryptedListeners = new Set<string>();
  // Work that must end before the process exits (a handoff reporting to the master).
  #holds = 0;
  // Responses whose headers may still change, so that a drain can add `Connection: close` to them.
  readonly #openResponses = new Set<http.ServerResponse>();
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
    if (underBaton) {
      // The IPC channel closes when the master dies; nobody would ever tell us to drain.
      process.on('disconnect', () => void this.drain());
    }
    this.#triggersInstalled = true;
  }

  get draining(): boolean {
    return this.state !== 'serving';
  }

  track(server: net.Server, listener: string): void {
    if (this.#servers.has(server)) return;
    this.#servers.add(server);
    // tls.Server's 'connection' is the TCP socket under the TLS one: its state lives in OpenSSL.
    if (server instanceof tls.Server) this.#encryptedListeners.add(listener);
    server.on('connection', (socket: net.Socket) => this.#add(socket, listener));
    if (isHttpServer(server)) {
      // Prepended so that the header is set before the app's own handler can send the headers.
      server.prependListener('request', (_request: http.IncomingMessage, response: http.ServerResponse) => {
        if (this.state === 'serving') {
          this.#openResponses.add(response);
          response.once('close', () => this.#openResponses.delete(response));
        } else {
          response.setHeader('Connection', 'close');
        }
      });
    }
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
    for (const response of this.#openResponses) {
      if (!response.headersSent) response.setHeader('Connection', 'close');
    }
    this.#openResponses.clear();
    // Closing idle keep-alive connections at once races clients that are sending on them right now
    // (ECONNRESET); after the grace period they have seen `Connection: close` or sent nothing.
    setTimeout(() => {
      this.#closeIdleHttpConnections();
      setInterval(() => this.#closeIdleHttpConnections(), IDLE_SWEEP_INTERVAL_MS).unref();
    }, HTTP_IDLE_GRACE_MS).unref();
    this.#armDeadline();
    for (const hook of this.#hooks) this.#runHook(hook);
    this.#finishIfDone();
    return this.#drained;
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

  #closeIdleHttpConnections(): void {
    for (const server of this.#servers) {
      if (isHttpServer(server)) server.closeIdleConnections();
    }
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
    if (!underBaton || this.#timer) return;
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

const drainer = new Drainer();
const mover = new SessionMover(drainer, underBaton);
const injector = new Injector(underBaton);

/** Stops accepting new connections and leaves the open ones alone. */
function stopAccepting(server: net.Server): void {
  // http.Server#close would also destroy idle keep-alive connections at once, racing clients that are
  // sending on them (ECONNRESET); the plain net close only stops accepting.
  const close = () => net.Server.prototype.close.call(server);
  if (server.listening) close();
  else server.once('listening', close);
}

function isHttpServer(server: net.Server): server is http.Server | https.Server {
  // https.Server derives from tls.Server, not from http.Server.
  return server instanceof http.Server || server instanceof https.Server;
}

function drainSignal(): NodeJS.Signals {
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

function envInteger(name: string): number | undefined {
  const value = process.env[name];
  if (value === undefined || value === '') return undefined;
  const number = Number(value);
  return Number.isInteger(number) ? number : undefined;
}
