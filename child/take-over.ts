/**
 * What the preload (preload.ts) does in a process that holds baton's sockets: listen(port) on one of
 * baton's ports gets the inherited socket, the master hears when the app listens on all of them, the
 * app's servers drain as the child API's do, a wrapper passes the sockets on, and an app that listens
 * elsewhere is told so. docs/contract.md, "An app as it is", says it all in order.
 */
import { ChildProcess } from 'node:child_process';
import { writeSync } from 'node:fs';
import net from 'node:net';
import { sendToMaster } from './channel.js';
import { drainer, drainSignal, isHttpServer } from './drain.js';
import type { Role } from './preload.js';

/** systemd socket activation: the first inherited socket is fd 3. */
const FIRST_LISTEN_FD = 3;
/** An app that listened on a port of its own has this long to listen on one of baton's too. */
const FOREIGN_PORT_GRACE_MS = 500;
/** How often a process that got the sockets from a wrapper checks that the wrapper still runs. */
const PARENT_CHECK_INTERVAL_MS = 500;
/** The exit code of a worker that listens where nobody can reach it (sysexits' EX_CONFIG). */
const EXIT_LISTENS_ELSEWHERE = 78;

/** One of baton's listeners, as the master describes them in `BATON_LISTENERS` (fd order). */
interface Listener {
  name: string;
  kind: 'tcp' | 'udp' | 'unix';
  port: number;
  /** The IP address, or the Unix socket's path. */
  address: string;
  fd: number;
}

/** Where an app asked to listen: a port, a path, or a descriptor. */
type ListenTarget = { port: number } | { path: string } | { fd: number };

let role: Role = 'none';
let streamListeners: Listener[] = [];
/** The inherited fds a server listens on, and those of them that baton gave a listen(port) or listen(path). */
const served = new Set<number>();
const redirected = new Set<number>();
let saidListening = false;
let foreignPortTimer: NodeJS.Timeout | undefined;

/** Serves baton's sockets to the app in this process, which holds them as `holder`. */
export function takeOver(holder: Exclude<Role, 'none'>): void {
  role = holder;
  streamListeners = readListeners().filter((listener) => listener.kind !== 'udp');
  if (streamListeners.length === 0) return;
  interceptListen();
  installDefaultDrain();
  passSocketsOn();
  if (role === 'handed') watchParent();
}

function readListeners(): Listener[] {
  try {
    const described = JSON.parse(process.env.BATON_LISTENERS ?? '[]') as Array<Omit<Listener, 'fd'>>;
    return described.map((listener, index) => ({ ...listener, fd: FIRST_LISTEN_FD + index }));
  } catch {
    return [];
  }
}

/**
 * Gives a server that listens on one of baton's ports or paths the inherited socket instead. A server
 * that listens on an inherited fd itself (`listen({ fd: 3 })`, the child API) keeps its arguments and
 * gets the drain, but says ready itself: the app decides when.
 */
function interceptListen(): void {
  const listen = net.Server.prototype.listen;
  net.Server.prototype.listen = function (this: net.Server, ...args: unknown[]) {
    const target = listenTarget(args);
    const listener = target && listenerAt(target);
    if (listener && 'fd' in target) {
      this.once('listening', () => adopt(this, listener, false));
    } else if (listener) {
      const callback = args.find((arg) => typeof arg === 'function') as (() => void) | undefined;
      this.once('listening', () => adopt(this, listener, true));
      return listen.call(this, { fd: listener.fd } as net.ListenOptions, callback);
    } else if (target && 'port' in target && target.port !== 0) {
      expectBatonPortSoon(target.port);
    }
    return listen.apply(this, args as Parameters<typeof listen>);
  } as typeof listen;
}

/** Where `server.listen(...args)` asks to listen, as Node reads its arguments; undefined for handles. */
function listenTarget(args: unknown[]): ListenTarget | undefined {
  const [first] = args;
  if (typeof first === 'number') return { port: first };
  if (typeof first === 'string') return /^\d+$/.test(first) ? { port: Number(first) } : { path: first };
  if (typeof first !== 'object' || first === null) return undefined;
  const options = first as {
    port?: unknown;
    path?: unknown;
    fd?: unknown;
    handle?: unknown;
    _handle?: unknown;
  };
  if (options.fd !== undefined || options.handle !== undefined || options._handle !== undefined)
    return undefined;
  if (typeof options.path === 'string') return { path: options.path };
  if (options.port !== undefined && /^\d+$/.test(String(options.port))) return { port: Number(options.port) };
  return undefined;
}

function listenerAt(target: ListenTarget): Listener | undefined {
  return streamListeners.find((listener) => {
    if ('fd' in target) return listener.fd === target.fd;
    if ('path' in target) return listener.kind === 'unix' && listener.address === target.path;
    return listener.kind === 'tcp' && target.port !== 0 && listener.port === target.port;
  });
}

/**
 * A server now listens on an inherited socket: it drains as `serve()` does, and when baton gave it the
 * socket (`listensForReady`), it counts for readiness.
 */
function adopt(server: net.Server, listener: Listener, listensForReady: boolean): void {
  if (!drainer.tracks(server)) {
    drainer.track(server, listener.name);
    if (isHttpServer(server)) {
      // http.Server#close would close idle keep-alive connections at once (ECONNRESET under load).
      (server as net.Server).close = function (this: net.Server, callback?: (error?: Error) => void) {
        drainer.closeServer(this, callback);
        return this;
      };
    }
  }
  if (served.size === 0) {
    if (role === 'handed') notify(`MAINPID=${process.pid}`);
    // The IPC channel closes when the master dies. Listened for only now: the listener keeps the
    // channel, and so a wrapper that never serves, alive.
    else process.once('disconnect', () => process.kill(process.pid, drainSignal()));
  }
  served.add(listener.fd);
  if (listensForReady) redirected.add(listener.fd);
  if (foreignPortTimer) clearTimeout(foreignPortTimer);
  if (saidListening || streamListeners.some((each) => !redirected.has(each.fd))) return;
  saidListening = true;
  // The spawned process says it on the IPC channel (child/protocol.ts); a process behind a wrapper has none.
  if (role !== 'worker' || !sendToMaster({ baton: 'listening' })) notify('READY=1');
}

/** One line on the notify pipe (sd_notify words); a master that is gone hears nothing. */
function notify(line: string): void {
  const fd = Number(process.env.BATON_NOTIFY_FD);
  if (!Number.isInteger(fd)) return;
  try {
    writeSync(fd, `${line}\n`);
  } catch {
    // The master is gone: the parent check or the drain signal ends this process.
  }
}

/**
 * An app that listens on a port of its own and on none of baton's is unreachable: say so in one line
 * and exit, so that the reload fails now rather than at --ready-timeout. An admin port next to
 * baton's is fine: the app has FOREIGN_PORT_GRACE_MS to listen on one of baton's as well.
 */
function expectBatonPortSoon(port: number): void {
  if (served.size > 0 || foreignPortTimer) return;
  foreignPortTimer = setTimeout(() => {
    if (served.size > 0) return;
    const env = process.env;
    const first = streamListeners.find((listener) => listener.kind === 'tcp') ?? streamListeners[0];
    const where = streamListeners.map(describe).join(', ');
    const fix =
      first?.kind === 'tcp'
        ? `make it listen on process.env.PORT (baton sets PORT=${first.port} when the environment has no PORT)${env.PORT !== undefined && env.PORT !== String(first.port) ? `, and PORT=${env.PORT} is set in the environment: unset it` : ''}, or start baton with --listen ${first.name}=tcp://${first.address}:${port}`
        : `make it listen on ${first ? describe(first) : "baton's socket"}`;
    process.stderr.write(
      `baton: worker ${env.BATON_WORKER ?? '?'} of generation ${env.BATON_GENERATION} (pid ${process.pid}) listens on port ${port}, not on baton's ${where}: nobody reaches it there; ${fix}\n`,
    );
    process.exit(EXIT_LISTENS_ELSEWHERE);
  }, FOREIGN_PORT_GRACE_MS);
}

function describe(listener: Listener): string {
  return listener.kind === 'unix'
    ? `${listener.name} (unix:${listener.address})`
    : `${listener.name} (${listener.kind}://${listener.address}:${listener.port})`;
}

/**
 * An app with no handler for the drain signal would die of it mid-request (Node's default): it gets
 * the child API's drain for every server on an inherited socket instead. An app that handles the
 * signal itself (its own shutdown, the child API, npm passing it on) keeps deciding.
 */
function installDefaultDrain(): void {
  const signal = drainSignal();
  const onDrainSignal = () => {
    if (process.listeners(signal).some((listener) => listener !== onDrainSignal)) return;
    if (served.size > 0) {
      void drainer.drain();
      return;
    }
    // Nothing of baton's to drain here: end as Node would have without this handler.
    process.off(signal, onDrainSignal);
    process.kill(process.pid, signal);
  };
  process.on(signal, onDrainSignal);
}

/**
 * A wrapper (npm, npx, tsx's parent) does not listen itself: the processes it starts get the sockets
 * and the notify pipe at the same descriptors, and `BATON_HANDED_OVER` instead of a `LISTEN_PID` that
 * is not theirs. Only spawns with the standard streams (and an IPC channel) are extended: a spawn that
 * places descriptors of its own at 3, 4, ... keeps them.
 */
function passSocketsOn(): void {
  // Every child_process function (spawn, exec, fork, execFile) goes through this internal method.
  const prototype = ChildProcess.prototype as unknown as { spawn(options: SpawnInternals): unknown };
  const spawn = prototype.spawn;
  const notifyFd = Number(process.env.BATON_NOTIFY_FD);
  const count = Number(process.env.LISTEN_FDS);
  prototype.spawn = function (this: ChildProcess, options: SpawnInternals) {
    const stdio = standardStreams(options.stdio);
    if (served.size === 0 && stdio) {
      const inherited = Array.from({ length: count }, (_, index) => FIRST_LISTEN_FD + index);
      const extra = Number.isInteger(notifyFd) ? [notifyFd] : [];
      options.stdio = [...stdio.standard, ...inherited, ...extra, ...stdio.ipc];
      options.envPairs = [
        // The descriptor channel stays with the worker: at its number the child may get its own IPC.
        ...(options.envPairs ?? []).filter(
          (pair) => !pair.startsWith('LISTEN_PID=') && !pair.startsWith('BATON_FD_CHANNEL='),
        ),
        `BATON_HANDED_OVER=${process.pid}`,
      ];
    }
    return spawn.call(this, options);
  };
}

/** What `ChildProcess.prototype.spawn` gets from `child_process.spawn()`: the environment as pairs. */
interface SpawnInternals {
  stdio?: unknown;
  envPairs?: string[];
}

/** The standard streams of a spawn's stdio and its IPC channel, or undefined if it places more descriptors. */
function standardStreams(stdio: unknown): { standard: unknown[]; ipc: unknown[] } | undefined {
  if (stdio === undefined || typeof stdio === 'string') {
    const each = stdio ?? 'pipe';
    return { standard: [each, each, each], ipc: [] };
  }
  if (!Array.isArray(stdio)) return undefined;
  const standard = [0, 1, 2].map((index) => stdio[index] ?? 'pipe');
  const rest = stdio.slice(3).filter((entry) => entry !== undefined && entry !== null);
  if (!rest.every((entry) => entry === 'ipc')) return undefined;
  return { standard, ipc: rest };
}

/**
 * Behind a wrapper, the kernel's parent-death signal reached the wrapper only: when the process that
 * started this one is gone (the wrapper or the shell between, killed with the master), this one
 * drains as on the drain signal.
 */
function watchParent(): void {
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(timer);
    process.kill(process.pid, drainSignal());
  }, PARENT_CHECK_INTERVAL_MS);
  timer.unref();
}
