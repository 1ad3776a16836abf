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
import type net from 'node:net';
import { sendToMaster } from './channel.js';
import { type DrainHook, drainer, isUnderBaton } from './drain.js';
import { type AdoptHook, type HandoffHook, SessionMover } from './handoff.js';
import { Injector } from './inject.js';

export type { DrainHook } from './drain.js';
export type { AdoptHook, HandoffHook } from './handoff.js';
export type { Exposed, Patch } from './inject.js';
export type { HandoffCounts } from './protocol.js';
export {
  adoptWebSocket,
  type WebSocketHandoff,
  type WebSocketServerLike,
  webSocketHandoff,
} from './websocket.js';

/** systemd socket activation: the first inherited socket is fd 3, after stdin, stdout and stderr. */
const FIRST_LISTEN_FD = 3;

/** Where to listen when the process was not handed any socket (run alone, outside baton). */
export interface ListenFallback {
  port?: number;
  host?: string;
}

/** `net.ListenOptions` plus `fd`, which `server.listen()` accepts though @types/node leaves it out. */
export type ListenOptions = net.ListenOptions & { fd?: number };

/** True when this process is a worker started by baton: it inherited listeners and a generation. */
export const underBaton: boolean = isUnderBaton();

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

const mover = new SessionMover(drainer, underBaton);
const injector = new Injector(underBaton);

function envInteger(name: string): number | undefined {
  const value = process.env[name];
  if (value === undefined || value === '') return undefined;
  const number = Number(value);
  return Number.isInteger(number) ? number : undefined;
}

/**
 * Under `baton start --watchdog`, pings the master from the event loop at half the period, so that a
 * worker whose loop is stuck (a busy loop, a synchronous call that never returns) goes silent and is
 * replaced. Only while this process is the one the watchdog watches (WATCHDOG_PID).
 */
function startWatchdogPings(): void {
  const periodUs = Number(process.env.WATCHDOG_USEC);
  if (!underBaton || !(periodUs > 0) || process.env.WATCHDOG_PID !== String(process.pid)) return;
  const ping = () => sendToMaster({ baton: 'watchdog' });
  ping();
  setInterval(ping, Math.max(10, Math.floor(periodUs / 2000))).unref();
}

startWatchdogPings();
