/**
 * Listener: a named socket the master binds once (or receives from systemd)
 * and keeps for its whole life. Workers inherit it; the master itself never
 * polls it.
 */

import { spawn } from 'node:child_process';
import { chmodSync, chownSync, closeSync, existsSync, lstatSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ListenError } from './errors.js';
import {
  type BoundSocket,
  bindTcpWithoutListening,
  bindUdpWithoutReading,
  bindUnixWithoutListening,
} from './node-internals.js';
import { LISTEN_BACKLOG, type ListenSpec, type UnixListenSpec } from './options.js';
import { inheritFds } from './os.js';
import { describeSocket, parentPid, socketInode } from './proc.js';
import { lookupId } from './users.js';

/** bound (or inherited) → listening → closed. */
export type ListenerState = 'bound' | 'listening' | 'closed';

/** What kind of socket a listener is. */
export type ListenerKind = 'tcp' | 'udp' | 'unix';

/** How long a stale-socket check waits for an answer on an existing Unix socket file. */
const STALE_SOCKET_CHECK_MS = 1000;

/** A listener as a re-exec of the master carries it: its descriptor and what it is. */
export interface CarriedListener {
  name: string;
  kind: ListenerKind;
  fd: number;
  address: string;
  port: number;
  origin: 'bound' | 'inherited';
  unixPath?: string;
  anonymous?: boolean;
}

/** One named socket owned by the master. */
export class Listener {
  state: ListenerState = 'bound';
  /** The socket's inode (Linux), by which /proc shows who holds and polls it. */
  readonly inode: number | undefined;

  constructor(
    readonly name: string,
    readonly kind: ListenerKind,
    private readonly socket: BoundSocket,
    /** Bound by this master, or received from its parent (systemd socket activation). */
    readonly origin: 'bound' | 'inherited',
    /** The socket file this master created, removed when it closes. */
    private readonly unixPath?: string,
    /**
     * Inherited without a name (no LISTEN_FDNAMES, as `systemd-socket-activate` without `--fdname`
     * hands it): a lone such socket reaches workers unnamed, so that whatever name the app asks for
     * is it (systemd's convention, the child API's rule).
     */
    readonly anonymous = false,
  ) {
    this.inode = socketInode(socket.fd);
  }

  /** What a re-exec of the master carries of this listener (supervisor/reexec.ts). */
  carry(): CarriedListener {
    return {
      name: this.name,
      kind: this.kind,
      fd: this.fd,
      address: this.address,
      port: this.port,
      origin: this.origin,
      ...(this.unixPath ? { unixPath: this.unixPath } : {}),
      ...(this.anonymous ? { anonymous: true } : {}),
    };
  }

  /** A listener the previous program of this master held, at the same descriptor. */
  static adopted(carried: CarriedListener): Listener {
    const { fd } = carried;
    const socket: BoundSocket = {
      fd,
      address: carried.address,
      port: carried.port,
      close: () => closeSync(fd),
    };
    const listener = new Listener(
      carried.name,
      carried.kind,
      socket,
      carried.origin,
      carried.unixPath,
      carried.anonymous === true,
    );
    listener.state = 'listening';
    return listener;
  }

  /** This inherited socket under the name a `--listen` with its address gives it. */
  adoptAs(name: string): Listener {
    return new Listener(name, this.kind, this.socket, this.origin);
  }

  /** Whether `spec` asks for this very socket: the same kind and address (a TCP port 0 asks for none). */
  matches(spec: ListenSpec): boolean {
    if (spec.scheme === 'unix') return this.kind === 'unix' && path.resolve(spec.path) === this.address;
    return (
      spec.scheme === this.kind &&
      spec.port !== 0 &&
      spec.port === this.port &&
      sameHost(spec.host, this.address)
    );
  }

  /** The descriptor workers inherit (at 3 + this listener's index). */
  get fd(): number {
    if (this.state === 'closed') throw new Error(`listener ${this.name} is closed`);
    return this.socket.fd;
  }

  /** The port actually bound (differs from the spec's when it asked for 0); 0 for Unix sockets. */
  get port(): number {
    return this.socket.port;
  }

  /** The IP address, or the Unix socket's path. */
  get address(): string {
    return this.socket.address;
  }

  /** Stream sockets are made to listen; datagram sockets are only bound. */
  get isStream(): boolean {
    return this.kind !== 'udp';
  }

  /** Closes the master's copy (the socket lives on while a worker holds it) and removes the socket file it created. */
  close(): void {
    if (this.state === 'closed') return;
    this.socket.close();
    this.state = 'closed';
    if (this.unixPath) {
      try {
        unlinkSync(this.unixPath);
      } catch {
        // already gone
      }
    }
  }
}

/**
 * A child that calls listen(2) on each inherited socket and exits in the same
 * tick, before its event loop ever polls: the sockets are left listening and
 * polled by nobody, as systemd hands them over (programs in other languages
 * accept without calling listen themselves). Errors are emitted on the next
 * tick, before the exit queued after them.
 */
const LISTEN_HELPER = `
const net = require('node:net');
const [count, backlog] = process.argv.slice(1).map(Number);
const failures = [];
for (let i = 0; i < count; i++) {
  const server = net.createServer();
  server.on('error', (error) => failures.push(i + ':' + (error.code || error.message)));
  server.listen({ fd: 3 + i, backlog });
}
process.nextTick(() => {
  if (failures.length) process.stderr.write(failures.join('\\n'));
  process.exit(failures.length ? 1 : 0);
});
`;

/**
 * Opens every listener: sockets inherited from the parent first (systemd
 * socket activation), then each `--listen` that they do not already provide,
 * bound here. Every stream socket is then made to listen. Throws a ListenError
 * on the first that fails, having closed the others.
 */
export async function openListeners(specs: ListenSpec[], inherited: Listener[] = []): Promise<Listener[]> {
  const listeners = [...inherited];
  try {
    for (const spec of specs) {
      if (listeners.some((listener) => listener.origin === 'inherited' && listener.name === spec.name))
        continue;
      // `--listen http=ADDR` for the address of a socket handed over: that socket, under this name.
      const handedOver = listeners.findIndex(
        (listener) => listener.origin === 'inherited' && listener.anonymous && listener.matches(spec),
      );
      if (handedOver >= 0) {
        listeners[handedOver] = (listeners[handedOver] as Listener).adoptAs(spec.name);
        continue;
      }
      listeners.push(await bindListener(spec));
    }
    const streams = listeners.filter((listener) => listener.isStream);
    if (streams.length > 0) {
      const result = await runListenHelper(streams.map((listener) => listener.fd));
      if (result.exitCode !== 0) {
        // Only the helper's own `index:code` line: Node may warn on stderr before it (a broken NODE_EXTRA_CA_CERTS).
        const [, index, code] = /^(\d+):(\S+)$/m.exec(String(result.stderr)) ?? [];
        const failed = streams[Number(index)] ?? (streams[0] as Listener);
        const spec = specs.find((candidate) => candidate.name === failed.name);
        throw listenError(
          spec?.text ?? failed.name,
          failed.address,
          code ?? 'UNKNOWN',
          new Error(String(result.stderr)),
        );
      }
    }
    for (const listener of listeners) listener.state = 'listening';
    return listeners;
  } catch (error) {
    for (const listener of listeners) if (listener.origin === 'bound') listener.close();
    throw error;
  }
}

/**
 * Runs LISTEN_HELPER with these descriptors at 3, 4, ...: its exit code (null if it could not run or
 * was killed) and what it wrote on stderr. Plain child_process: one short-lived helper needs none of
 * execa, which would add about 20 MB to every master.
 */
function runListenHelper(fds: number[]): Promise<{ exitCode: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const helper = spawn(
      process.execPath,
      ['-e', LISTEN_HELPER, String(fds.length), String(LISTEN_BACKLOG)],
      {
        stdio: inheritFds(['ignore', 'ignore', 'pipe'], fds),
        env: { ...process.env, NODE_OPTIONS: '' },
      },
    );
    const stderr: Buffer[] = [];
    helper.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk));
    let settled = false;
    const settle = (exitCode: number | null, error?: Error) => {
      if (settled) return;
      settled = true;
      resolve({ exitCode, stderr: error ? error.message : Buffer.concat(stderr).toString('utf8') });
    };
    helper.on('error', (error) => settle(null, error));
    helper.on('close', (exitCode) => settle(exitCode));
  });
}

async function bindListener(spec: ListenSpec): Promise<Listener> {
  try {
    if (spec.scheme !== 'unix') {
      const socket =
        spec.scheme === 'tcp'
          ? bindTcpWithoutListening(spec.host, spec.port, spec.family)
          : await bindUdpWithoutReading(spec.host, spec.port, spec.family);
      return new Listener(spec.name, spec.scheme, socket, 'bound');
    }
    await removeStaleSocket(spec);
    const socket = bindUnixWithoutListening(spec.path);
    const listener = new Listener(spec.name, 'unix', socket, 'bound', spec.path);
    try {
      applyOwnership(spec);
    } catch (error) {
      listener.close();
      throw error;
    }
    return listener;
  } catch (error) {
    if (error instanceof ListenError) throw error;
    const where = spec.scheme === 'unix' ? spec.path : hostPort(spec.host, spec.port);
    let code = (error as { code?: string }).code ?? 'UNKNOWN';
    // libuv reports a missing folder of a Unix socket as EACCES: say which it is.
    if (spec.scheme === 'unix' && code === 'EACCES' && !existsSync(path.dirname(spec.path))) code = 'ENOENT';
    throw listenError(spec.text, where, code, error, spec.scheme === 'unix');
  }
}

/** A socket file left by a crash is replaced; one that another process answers on is refused. */
async function removeStaleSocket(spec: UnixListenSpec): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(spec.path).isSocket();
  } catch {
    return; // nothing there
  }
  if (!isSocket) {
    throw new ListenError(
      spec.name,
      'EEXIST',
      `Cannot listen on ${spec.text}: ${spec.path} exists and is not a socket; remove it or choose another path.`,
    );
  }
  const answer = await new Promise<string>((resolve) => {
    const probe = net.connect(spec.path);
    const timer = setTimeout(() => {
      probe.destroy();
      resolve('ETIMEDOUT');
    }, STALE_SOCKET_CHECK_MS);
    probe.once('connect', () => {
      clearTimeout(timer);
      probe.destroy();
      resolve('connected');
    });
    probe.once('error', (error: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      resolve(error.code ?? 'UNKNOWN');
    });
  });
  if (answer === 'ECONNREFUSED') {
    unlinkSync(spec.path);
    return;
  }
  throw new ListenError(
    spec.name,
    'EADDRINUSE',
    `Cannot listen on ${spec.text}: another process answers on ${spec.path}; stop it or choose another path.`,
  );
}

function applyOwnership(spec: UnixListenSpec): void {
  if (spec.mode !== undefined) chmodSync(spec.path, spec.mode);
  if (spec.owner === undefined && spec.group === undefined) return;
  const uid = spec.owner === undefined ? -1 : resolveId(spec.owner, '/etc/passwd', spec);
  const gid = spec.group === undefined ? -1 : resolveId(spec.group, '/etc/group', spec);
  chownSync(spec.path, uid, gid);
}

function resolveId(nameOrId: string, database: string, spec: UnixListenSpec): number {
  const kind = database === '/etc/passwd' ? 'user' : 'group';
  const id = lookupId(nameOrId, kind);
  if (id === undefined) {
    throw new ListenError(
      spec.name,
      'ENOENT',
      `Cannot listen on ${spec.text}: no ${kind} named '${nameOrId}'.`,
    );
  }
  return id;
}

/**
 * The sockets this process received by systemd's socket activation
 * (LISTEN_FDS from fd 3, for this pid), as listeners named by LISTEN_FDNAMES.
 */
export function inheritedListeners(env: Record<string, string | undefined>, pid: number): Listener[] {
  const count = Number(env.LISTEN_FDS);
  if (!env.LISTEN_FDS || !Number.isInteger(count) || count < 1) return [];
  if (env.LISTEN_PID !== undefined && env.LISTEN_PID !== String(pid)) {
    // A wrapper in between (npx, a shell script) has the pid LISTEN_PID names: the sockets are still
    // this process's own when that pid is an ancestor and every descriptor is a socket held here.
    const named = Number(env.LISTEN_PID);
    if (!ancestorsOf(pid).includes(named)) return [];
    for (let index = 0; index < count; index++) if (socketInode(3 + index) === undefined) return [];
  }
  const names = env.LISTEN_FDNAMES?.split(':') ?? [];
  return Array.from({ length: count }, (_, index) => {
    const fd = 3 + index;
    const given = names[index] && names[index] !== 'unknown' ? names[index] : undefined;
    const name = given ?? `listen${index}`;
    const inode = socketInode(fd);
    const described = inode === undefined ? undefined : describeSocket(inode);
    if (!described) {
      throw new ListenError(
        name,
        'EBADF',
        `LISTEN_FDS says fd ${fd} is a socket, but it is not one this process holds; check the parent that started baton (its .socket unit).`,
      );
    }
    const socket: BoundSocket = {
      fd,
      address: described.kind === 'unix' ? (described.path ?? '') : described.address,
      port: described.kind === 'unix' ? 0 : described.port,
      close: () => closeSync(fd),
    };
    return new Listener(name, described.kind, socket, 'inherited', undefined, given === undefined);
  });
}

/** The pids above `pid` below init, from /proc (empty where /proc cannot be read); init itself never counts. */
function ancestorsOf(pid: number): number[] {
  const ancestors: number[] = [];
  for (let current = pid; current > 1 && ancestors.length < 64; ) {
    const parent = parentPid(current);
    if (parent === undefined || parent <= 1) break;
    ancestors.push(parent);
    current = parent;
  }
  return ancestors;
}

/** The same host, counting every spelling of the wildcard address as one. */
function sameHost(a: string, b: string): boolean {
  const wildcard = (host: string) => host === '0.0.0.0' || host === '::' || host === '';
  return a === b || (wildcard(a) && wildcard(b));
}

function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

function listenError(text: string, where: string, code: string, cause: unknown, unix = false): ListenError {
  const advice: Record<string, string> = {
    EADDRINUSE: `another process is listening on ${where}; stop it or choose another port`,
    EACCES: unix
      ? `no permission to create ${where}; its directory must be writable by this user`
      : `no permission to bind ${where}; ports below 1024 need root or CAP_NET_BIND_SERVICE`,
    EADDRNOTAVAIL: `${where} is not an address of this machine`,
    ENOENT: `the directory of ${where} does not exist`,
  };
  const why = advice[code] ?? `the system said ${code}`;
  return new ListenError(text.split('=')[0] ?? text, code, `Cannot listen on ${text}: ${why}.`, { cause });
}
