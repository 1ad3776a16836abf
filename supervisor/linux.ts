/**
 * Every Linux call that Node lacks lives here, made through koffi (an FFI library whose prebuilt
 * binary comes from npm: no compiler on the user's machine). test/unit/linux.test.ts fails loudly if
 * koffi or libc stop answering as this module expects.
 *
 * koffi is loaded on first use only, so that a master that never needs these calls pays nothing.
 */
import { createRequire } from 'node:module';
import { getSystemErrorName } from 'node:util';

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const MSG_DONTWAIT = 0x40;
const EAGAIN = 11;
/** sizeof(sockaddr_un.sun_path): a socket path must fit, with its terminating NUL. */
export const UNIX_PATH_MAX = 108;
/** The largest sd_notify datagram read; systemd itself reads at most a page-sized message. */
const DATAGRAM_MAX = 4096;

/** What this module needs of libc, bound once. */
interface Libc {
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, address: Buffer, length: number): number;
  recv(fd: number, buffer: Buffer, length: number, flags: number): number | bigint;
  close(fd: number): number;
  errno(): number;
}

let libc: Libc | undefined;

function loadLibc(): Libc {
  if (libc) return libc;
  // koffi is CommonJS; loaded lazily through require so that importing this module costs nothing.
  const koffi = createRequire(import.meta.url)('koffi') as KoffiModule;
  const lib = koffi.load('libc.so.6');
  libc = {
    socket: lib.func('int socket(int domain, int type, int protocol)') as Libc['socket'],
    bind: lib.func('int bind(int fd, const void *address, uint32_t length)') as Libc['bind'],
    recv: lib.func('intptr_t recv(int fd, _Out_ void *buffer, size_t length, int flags)') as Libc['recv'],
    close: lib.func('int close(int fd)') as Libc['close'],
    errno: () => koffi.errno(),
  };
  return libc;
}

/** The part of koffi's API used here. */
interface KoffiModule {
  load(path: string): { func(signature: string): unknown };
  errno(): number;
}

/** A failed system call, named the way Node names them (`EADDRINUSE`). */
export class SystemCallError extends Error {
  constructor(
    readonly call: string,
    readonly errno: number,
    detail: string,
  ) {
    super(`${call} failed: ${errnoName(errno)} (${detail})`);
  }

  /** The errno's name, such as EACCES. */
  get code(): string {
    return errnoName(this.errno);
  }
}

function errnoName(errno: number): string {
  try {
    return getSystemErrorName(-errno);
  } catch {
    return `errno ${errno}`;
  }
}

/** A bound AF_UNIX datagram socket that this process reads without blocking. */
export interface DatagramSocket {
  readonly path: string;
  /** The next datagram waiting, or undefined when none is. Never blocks. */
  receive(): Buffer | undefined;
  close(): void;
}

/**
 * Binds an AF_UNIX datagram socket at `path` (systemd's NOTIFY_SOCKET is one: Node has no datagram
 * Unix sockets). Non-blocking and close-on-exec, so that it never reaches a worker as a descriptor.
 * Throws a SystemCallError when the socket cannot be made or bound.
 */
export function bindDatagramSocket(path: string): DatagramSocket {
  const address = unixAddress(path);
  const c = loadLibc();
  const fd = c.socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw new SystemCallError('socket', c.errno(), 'AF_UNIX datagram');
  if (c.bind(fd, address, address.length) !== 0) {
    const errno = c.errno();
    c.close(fd);
    throw new SystemCallError('bind', errno, path);
  }
  let open = true;
  const buffer = Buffer.alloc(DATAGRAM_MAX);
  return {
    path,
    receive() {
      if (!open) return undefined;
      const length = Number(c.recv(fd, buffer, buffer.length, MSG_DONTWAIT));
      if (length >= 0) return Buffer.from(buffer.subarray(0, length));
      const errno = c.errno();
      if (errno === EAGAIN) return undefined;
      throw new SystemCallError('recv', errno, path);
    },
    close() {
      if (!open) return;
      open = false;
      c.close(fd);
    },
  };
}

/** A `struct sockaddr_un` for a filesystem path. */
function unixAddress(path: string): Buffer {
  const bytes = Buffer.from(path, 'utf8');
  if (bytes.length >= UNIX_PATH_MAX || bytes.includes(0)) {
    throw new SystemCallError(
      'bind',
      36 /* ENAMETOOLONG */,
      `${path}: longer than ${UNIX_PATH_MAX - 1} bytes`,
    );
  }
  const address = Buffer.alloc(2 + bytes.length + 1);
  address.writeUInt16LE(AF_UNIX, 0);
  bytes.copy(address, 2);
  return address;
}
