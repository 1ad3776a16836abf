/**
 * Every internal Node API the child API uses, for live session handoff (docs/handoff.md), each with
 * why no public API does the job. test/unit/node-internals.test.ts fails loudly if a Node release
 * changes them. Kept apart from index.ts so that the guard test can reach them; the package does not
 * export this module.
 *
 * The recipe was measured lossless (0 lost, 0 duplicated, 0 reordered over ~34,000 lines): stop
 * reading at the handle, flush, send the raw handle, wrap it on the other side before anything reads.
 */
import net from 'node:net';

/** A connection's libuv stream handle (a TCP or Pipe wrap): what travels between processes. */
export interface StreamHandle {
  readonly fd: number;
  reading?: boolean;
  readStart(): number;
  readStop(): number;
  close(callback?: () => void): void;
}

/** A connection whose kernel reads are stopped; `resumeReading` undoes it. */
export interface StoppedReading {
  readonly socket: net.Socket;
  readonly handle: StreamHandle;
}

/** The libuv handle under `socket`, or undefined when there is none (destroyed, or not a TCP/Pipe stream). */
export function streamHandleOf(socket: net.Socket): StreamHandle | undefined {
  const handle = (socket as unknown as { _handle?: unknown })._handle;
  return isStreamHandle(handle) ? handle : undefined;
}

/** Whether `value` is a bare libuv stream handle, as a handle sent over IPC arrives ('net.Native'). */
export function isStreamHandle(value: unknown): value is StreamHandle {
  if (typeof value !== 'object' || value === null || value instanceof net.Socket) return false;
  const handle = value as Partial<StreamHandle>;
  return (
    typeof handle.fd === 'number' &&
    typeof handle.readStart === 'function' &&
    typeof handle.readStop === 'function' &&
    typeof handle.close === 'function'
  );
}

/**
 * Stops the kernel reads of `socket`; undefined when it has no stream handle or is not reading now
 * (Node stops a connection whose app does not keep up: it is not at a message boundary).
 *
 * Why internal: `socket.pause()` only stops the stream from emitting, libuv goes on reading (measured:
 * about 1.2 KB per connection read and lost in a handover). `handle.reading` stays true on purpose:
 * net.Socket restarts reads whenever its buffer drains and it believes the handle idle.
 */
export function stopReading(socket: net.Socket): StoppedReading | undefined {
  const handle = streamHandleOf(socket);
  if (handle?.reading !== true) return undefined;
  handle.readStop();
  return { socket, handle };
}

/** Undoes `stopReading`: the connection goes on here as if nothing happened. */
export function resumeReading(stopped: StoppedReading): void {
  if (!stopped.socket.destroyed) stopped.handle.readStart();
}

/**
 * Whether `socket`'s string decoder (`setEncoding`) holds the first bytes of a character split across
 * reads: bytes read from the kernel that the app has not seen and no state could carry.
 *
 * Why internal: the decoder sits in the readable state; `lastNeed` is the count of bytes it still awaits.
 */
export function hasUndecodedBytes(socket: net.Socket): boolean {
  const state = (socket as unknown as { _readableState?: { decoder?: { lastNeed?: number } | null } })
    ._readableState;
  return (state?.decoder?.lastNeed ?? 0) > 0;
}

/**
 * Whether an HTTP parser still owns `socket` (a plain HTTP connection, not upgraded): the parser reads
 * straight from the handle and holds its own state, so such a connection cannot move.
 *
 * Why internal: `socket.parser` is set by node:http while it serves the connection and cleared on upgrade.
 */
export function heldByHttpParser(socket: net.Socket): boolean {
  return Boolean((socket as unknown as { parser?: unknown }).parser);
}

/**
 * Sends `message` with a connection's raw handle to the parent; resolves once written.
 *
 * Why internal: the documented `sendHandle` is a net.Socket, and a net.Socket arrives as a net.Socket
 * that starts reading at once (whatever it reads before being passed on is lost). A bare TCP/Pipe wrap
 * travels as 'net.Native': the master gets a handle nobody reads.
 */
export function sendWithHandle(message: object, handle: StreamHandle): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!process.send || !process.connected) {
      reject(new Error('no IPC channel to the master'));
      return;
    }
    const send = process.send as (
      message: unknown,
      handle: unknown,
      options: object,
      callback: (error: Error | null) => void,
    ) => boolean;
    try {
      send.call(process, message, handle, {}, (error) => (error ? reject(error) : resolve()));
    } catch (error) {
      reject(error);
    }
  });
}

/** A connection wrapped with its kernel reads held back, until `release`. */
export interface HeldSocket {
  readonly socket: net.Socket;
  /** Starts the kernel reads; what arrived meanwhile waits in the kernel, nothing is lost. */
  release(): void;
}

/**
 * Wraps a raw handle received over IPC in a net.Socket that reads nothing until `release()`, whatever
 * the app does meanwhile (a 'data' listener, `resume()`, readline): the connection can still go back
 * to the worker that sent it, which reads on from the very byte where it stopped.
 *
 * Why internal: `handle` is not among net.Socket's documented options; it is how Node itself wraps
 * handles it receives (child_process' 'net.Socket' conversion). `manualStart` keeps the constructor
 * from reading at once, and `handle.reading = true` makes net.Socket believe the handle reads already,
 * so that nothing the app does starts it.
 */
export function holdSocketFromHandle(handle: StreamHandle): HeldSocket {
  const socket = new net.Socket({
    handle,
    readable: true,
    writable: true,
    manualStart: true,
  } as unknown as net.SocketConstructorOpts);
  handle.reading = true;
  return {
    socket,
    release: () => {
      if (!socket.destroyed) handle.readStart();
    },
  };
}

/**
 * The same for a connection's descriptor received on the descriptor channel (supervisor/fd-channel.ts):
 * a net.Socket over `fd` that reads nothing until `release()`. Throws if `fd` is not a stream socket.
 *
 * Why internal: `manualStart` keeps the constructor from reading, and `handle.reading = true` keeps
 * anything the app does from starting reads, as in holdSocketFromHandle.
 */
export function holdSocketFromFd(fd: number): HeldSocket {
  const socket = new net.Socket({
    fd,
    readable: true,
    writable: true,
    manualStart: true,
  } as unknown as net.SocketConstructorOpts);
  const handle = streamHandleOf(socket);
  if (!handle) {
    socket.destroy();
    throw new Error(`descriptor ${fd} is not a stream socket`);
  }
  handle.reading = true;
  return {
    socket,
    release: () => {
      if (!socket.destroyed) handle.readStart();
    },
  };
}

/** Opens a handle of one kind (a TCP wrap) on a received descriptor, without asking what the fd is. */
export type HandleOpener = (fd: number) => StreamHandle;

/**
 * For a socket over a TCP handle, a function that opens a new handle of the same class on another
 * descriptor; undefined for anything else (a Pipe, a destroyed socket). The new worker wraps the first
 * connection of a listener with holdSocketFromFd, then the rest of that listener's with this and
 * holdSocketFromHandle: a listener's connections are all of its one kind.
 *
 * Why internal: `new net.Socket({ fd })` asks libuv what the descriptor is (`guessHandleType`: fstat,
 * getsockopt, getsockname) and goes through the constructor's fd path for each connection; measured
 * here, 26-28 µs of CPU per wrap against 14-18 µs for the TCP wrap's own constructor and `open(fd)`,
 * which is what that path ends in. The constructor is the class of the handle Node made, and
 * `SOCKET` (0) is `TCPConstants.SOCKET` of Node's tcp_wrap binding, as `net.js` passes it.
 */
export function handleOpenerLike(socket: net.Socket): HandleOpener | undefined {
  const handle = streamHandleOf(socket);
  if (handle?.constructor.name !== 'TCP' || typeof (handle as Partial<OpenableHandle>).open !== 'function') {
    return undefined;
  }
  const Wrap = handle.constructor as new (type: number) => StreamHandle & OpenableHandle;
  return (fd) => {
    const opened = new Wrap(TCP_SOCKET_TYPE);
    const error = opened.open(fd);
    if (error !== 0) {
      opened.close();
      throw new Error(`descriptor ${fd} could not be opened as a TCP handle (libuv error ${error})`);
    }
    return opened;
  };
}

/** `TCPConstants.SOCKET` of Node's tcp_wrap binding: a connection, not a server. */
const TCP_SOCKET_TYPE = 0;

/** A TCP wrap's `open(fd)`: 0, or a negative libuv error code. */
interface OpenableHandle {
  open(fd: number): number;
}
