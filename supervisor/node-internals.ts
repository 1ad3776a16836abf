/**
 * Every use of Node's internal APIs lives here, each with why no public API
 * does the job. test/unit/node-internals.test.ts fails loudly if a Node
 * release changes them.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { getSystemErrorName } from 'node:util';

/** A TCP socket bound to an address but not listening and not polled by anyone. */
export interface BoundSocket {
  /** The socket's file descriptor in this process, to hand to children. */
  readonly fd: number;
  readonly address: string;
  readonly port: number;
  /** Closes this process's copy of the socket; children keep theirs. */
  close(): void;
}

interface TcpHandle {
  fd: number;
  getsockname(out: { address?: string; port?: number }): number;
  close(): void;
}

type CreateServerHandle = (
  address: string,
  port: number,
  addressType: 4 | 6,
  fd: number | undefined,
  flags: number,
) => TcpHandle | number;

/**
 * Binds host:port without listening.
 *
 * Why internal: every public way (`net.Server#listen`) also makes this process
 * poll the socket, and a master that polls accepts connections itself (measured:
 * about a quarter of them). `node:cluster`'s primary binds through the same
 * `net._createServerHandle`, which returns a bound libuv handle, or a negative
 * errno.
 */
export function bindTcpWithoutListening(host: string, port: number, family: 4 | 6): BoundSocket {
  const createServerHandle = (net as unknown as { _createServerHandle?: CreateServerHandle })
    ._createServerHandle;
  if (typeof createServerHandle !== 'function') {
    throw new Error(
      'net._createServerHandle is missing: this Node release changed an internal API baton relies on',
    );
  }
  const handle = createServerHandle(host, port, family, undefined, 0);
  if (typeof handle === 'number') {
    const code = getSystemErrorName(handle);
    throw Object.assign(new Error(`bind ${host}:${port} failed: ${code}`), { code, errno: handle });
  }
  const out: { address?: string; port?: number } = {};
  if (handle.getsockname(out) !== 0) {
    // libuv defers exactly one bind error to listen(): EADDRINUSE. A handle
    // with no address is a bind that failed that way.
    handle.close();
    throw Object.assign(new Error(`bind ${host}:${port} failed: EADDRINUSE`), { code: 'EADDRINUSE' });
  }
  if (typeof out.port !== 'number' || typeof handle.fd !== 'number' || handle.fd < 0) {
    handle.close();
    throw new Error(
      'a bound TCP handle has no fd or port: this Node release changed an internal API baton relies on',
    );
  }
  return {
    fd: handle.fd,
    address: out.address ?? host,
    port: out.port,
    close: () => handle.close(),
  };
}

/**
 * Binds a Unix socket at `path` without listening (the file is created).
 * Why internal: as for TCP, `net.Server#listen(path)` would also poll it.
 */
export function bindUnixWithoutListening(path: string): BoundSocket {
  const createServerHandle = (net as unknown as { _createServerHandle?: CreateServerHandle })
    ._createServerHandle;
  if (typeof createServerHandle !== 'function') {
    throw new Error(
      'net._createServerHandle is missing: this Node release changed an internal API baton relies on',
    );
  }
  // port -1 and addressType -1 make a Pipe (Unix socket) handle, as node:cluster does for paths.
  const handle = createServerHandle(path, -1, -1 as 4, undefined, 0);
  if (typeof handle === 'number') {
    const code = getSystemErrorName(handle);
    throw Object.assign(new Error(`bind ${path} failed: ${code}`), { code, errno: handle });
  }
  if (typeof handle.fd !== 'number' || handle.fd < 0) {
    handle.close();
    throw new Error(
      'a bound Unix socket handle has no fd: this Node release changed an internal API baton relies on',
    );
  }
  return { fd: handle.fd, address: path, port: 0, close: () => handle.close() };
}

interface UdpHandle {
  fd: number;
  recvStop(): number;
}

/**
 * Binds a UDP socket without reading from it.
 * Why internal: `dgram.Socket#bind` always starts reading (the master would
 * take datagrams meant for workers). It is stopped in the 'listening' event,
 * which comes in the same tick as the start, before the event loop polls; the
 * socket's libuv handle sits behind dgram's state symbol.
 */
export function bindUdpWithoutReading(host: string, port: number, family: 4 | 6): Promise<BoundSocket> {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket({ type: family === 6 ? 'udp6' : 'udp4' });
    socket.once('error', (error) => {
      socket.close();
      reject(error);
    });
    socket.bind({ port, address: host }, () => {
      const stateKey = Object.getOwnPropertySymbols(socket).find(
        (key) => String(key) === 'Symbol(state symbol)',
      );
      const handle =
        stateKey && (socket as unknown as Record<symbol, { handle?: UdpHandle }>)[stateKey]?.handle;
      if (
        !handle ||
        typeof handle.recvStop !== 'function' ||
        typeof handle.fd !== 'number' ||
        handle.fd < 0
      ) {
        socket.close();
        reject(
          new Error(
            "dgram's state symbol or its handle changed: this Node release changed an internal API baton relies on",
          ),
        );
        return;
      }
      handle.recvStop();
      const address = socket.address();
      resolve({ fd: handle.fd, address: address.address, port: address.port, close: () => socket.close() });
    });
  });
}

/** A connection's bare libuv stream handle (TCP or Pipe wrap), as a worker hands it off (docs/handoff.md). */
export interface RawSocketHandle {
  readonly fd: number;
  close(callback?: () => void): void;
}

/**
 * The handle that came with an IPC message if it is a bare connection handle, else undefined.
 *
 * Why internal: a worker that sends `socket._handle` (child/node-internals.ts) makes Node deliver it as
 * 'net.Native': the TCP wrap itself, never read by this process. Anything else (a net.Socket, which
 * starts reading at once, or a server) is not a connection the master may pass on.
 */
export function asRawSocketHandle(handle: unknown): RawSocketHandle | undefined {
  if (typeof handle !== 'object' || handle === null || handle instanceof net.Socket) return undefined;
  const candidate = handle as Partial<RawSocketHandle> & { readStart?: unknown };
  const isStream =
    typeof candidate.fd === 'number' &&
    typeof candidate.close === 'function' &&
    typeof candidate.readStart === 'function';
  return isStream ? (candidate as RawSocketHandle) : undefined;
}

/** What `sendRawHandle` needs of a child process: Node's `ChildProcess#send`. */
export interface IpcSender {
  send(message: unknown, handle: unknown, options: object, callback: (error: Error | null) => void): boolean;
}

/**
 * Sends `message` with a connection's raw handle to a worker; `onSent` runs once it is written (then this
 * process's copy may be closed) or with the error. The handle is never read here.
 *
 * Why internal: `ChildProcess#send` documents a net.Socket or net.Server as the handle; a bare TCP wrap
 * goes through Node's 'net.Native' path, which neither reads nor closes it, and arrives bare.
 */
export function sendRawHandle(
  child: IpcSender,
  message: object,
  handle: RawSocketHandle,
  onSent: (error: Error | null) => void,
): void {
  try {
    child.send(message, handle, {}, onSent);
  } catch (error) {
    onSent(error instanceof Error ? error : new Error(String(error)));
  }
}

/** Closes this process's copy of a connection handle; the connection stays open where other copies live. */
export function closeRawHandle(handle: RawSocketHandle): void {
  try {
    handle.close();
  } catch {
    // already closed
  }
}

/**
 * The file descriptor of an accepted connection in this process, or undefined once it is closed.
 *
 * Why internal: Node has no public way to read a socket's descriptor, and none to read a Unix peer's
 * credentials (SO_PEERCRED). The control socket finds who called through the descriptor's inode
 * (supervisor/control/peer.ts); `net.Socket#_handle` is the libuv stream whose `fd` it is.
 */
export function connectionFd(socket: net.Socket): number | undefined {
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle;
  const fd = handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/**
 * The descriptor of a stream this process reads or writes (a child's stderr pipe, a server's socket),
 * or undefined: what a re-exec of the master keeps open across execve (supervisor/reexec.ts).
 *
 * Why internal: as for `connectionFd`, the libuv handle behind a stream or server is the only place
 * its descriptor is written.
 */
export function streamFd(stream: unknown): number | undefined {
  return connectionFd(stream as net.Socket);
}

/** The longest IPC line kept while it is incomplete: longer ones are a stream out of step, dropped. */
const IPC_LINE_MAX = 1024 * 1024;

/**
 * A worker's Node IPC channel (`serialization: 'json'`) that a re-executed master inherited as a bare
 * descriptor: one JSON text per line each way, the format Node itself writes and reads. The worker's
 * Node never sees the master change; the master keeps sending and receiving plain messages.
 *
 * Why internal: Node cannot reopen an inherited descriptor as a parent's IPC channel (only a child's,
 * through NODE_CHANNEL_FD, at its start), so this speaks the wire format of
 * lib/internal/child_process/serialization.js (json) directly. Node's own messages (`cmd: 'NODE_…'`,
 * handles and their acknowledgements) are not spoken: a handle sent by the worker is dropped by the
 * kernel here, so the master never asks an adopted worker for one (handoff goes on the descriptor
 * channel). A line cut by the exec (the previous program had read its head) is not JSON and is dropped.
 */
export class InheritedIpcChannel {
  private readonly socket: net.Socket;
  private partial = '';

  constructor(
    readonly fd: number,
    onMessage: (message: unknown) => void,
    onClose: () => void,
  ) {
    this.socket = new net.Socket({ fd, readable: true, writable: true });
    this.socket.setEncoding('utf8');
    this.socket.on('data', (chunk: string) => {
      const lines = (this.partial + chunk).split('\n');
      this.partial = lines.pop() ?? '';
      if (this.partial.length > IPC_LINE_MAX) this.partial = '';
      for (const line of lines) {
        let message: unknown;
        try {
          message = JSON.parse(line);
        } catch {
          continue;
        }
        const cmd = (message as { cmd?: unknown } | null)?.cmd;
        if (typeof cmd === 'string' && cmd.startsWith('NODE_')) continue;
        onMessage(message);
      }
    });
    this.socket.on('error', () => {});
    this.socket.on('close', onClose);
  }

  /** Sends one message; `onSent` runs once it is written, or with the error. */
  send(message: object, onSent: (error: Error | null) => void): void {
    if (this.socket.destroyed || !this.socket.writable) {
      onSent(new Error('the IPC channel is closed'));
      return;
    }
    this.socket.write(`${JSON.stringify(message)}\n`, (error) => onSent(error ?? null));
  }

  /** Bytes written and not yet in the kernel. */
  get pendingBytes(): number {
    return this.socket.writableLength;
  }

  close(): void {
    this.socket.destroy();
  }
}
