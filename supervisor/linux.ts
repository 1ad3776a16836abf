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
  send(fd: number, buffer: Buffer, length: number, flags: number): number | bigint;
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
    send: lib.func('intptr_t send(int fd, const void *buffer, size_t length, int flags)') as Libc['send'],
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

// ─── TCP sockets by local port: netlink sock_diag ─────────────────────────────────────────────────
//
// How many connections a worker that does not report them holds is the intersection of its socket
// descriptors with the machine's established TCP sockets on a listener's port. /proc/net/tcp lists
// every socket of the machine as text (TIME_WAIT included: megabytes a second on a busy host, and as
// many short-lived strings); NETLINK_SOCK_DIAG lets the kernel filter by state and by port first, as
// `ss state established '( sport = :8080 )'` does, and answers in binary.

const AF_INET = 2;
const AF_INET6 = 10;
const AF_NETLINK = 16;
const SOCK_RAW = 3;
const NETLINK_SOCK_DIAG = 4;
const IPPROTO_TCP = 6;
const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 0x1;
const NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const TCP_ESTABLISHED = 1;
const INET_DIAG_REQ_BYTECODE = 1;
const INET_DIAG_BC_NOP = 0;
const INET_DIAG_BC_JMP = 1;
const INET_DIAG_BC_S_GE = 2;
const INET_DIAG_BC_S_LE = 3;
/** sizeof(struct nlmsghdr), sizeof(struct inet_diag_req_v2), sizeof(struct rtattr), sizeof(struct inet_diag_bc_op). */
const NLMSG_HEADER = 16;
const DIAG_REQUEST = 56;
const RTATTR_HEADER = 4;
const BC_OP = 4;
/** In struct inet_diag_msg: the local port (big-endian) and the inode. */
const DIAG_MSG_SPORT = 4;
const DIAG_MSG_INODE = 68;
const DIAG_MSG_SIZE = 72;
/** A netlink dump comes in datagrams of at most 32 KB (more than a page: the kernel sizes them to the reader). */
const NETLINK_READ_MAX = 65536;
/** More ports than this are asked without a filter (and kept here by port): a filter is at most 64 KB. */
const MAX_FILTERED_PORTS = 64;

let netlinkFd: number | undefined;
/** Set once the kernel refused a port filter: counts then filter here. */
let filterRefused = false;
let netlinkSequence = 0;
const netlinkBuffer = Buffer.alloc(NETLINK_READ_MAX);

/**
 * The inodes of the machine's established TCP sockets (IPv4 and IPv6) whose local port is one of
 * `ports`: the connections accepted on listeners with these ports. Asked of the kernel through
 * NETLINK_SOCK_DIAG with a state filter and a bytecode filter on the ports, so only those sockets
 * come back. Throws a SystemCallError where netlink cannot be used (a sandbox without it, no koffi).
 */
export function establishedTcpInodes(ports: readonly number[]): Set<number> {
  const inodes = new Set<number>();
  const unique = [...new Set(ports)];
  if (unique.length === 0) return inodes;
  const c = loadLibc();
  const filter = unique.length <= MAX_FILTERED_PORTS && !filterRefused ? portFilter(unique) : undefined;
  const wanted = new Set(unique);
  for (const family of [AF_INET, AF_INET6]) {
    try {
      dumpEstablished(c, family, filter, (inode) => inodes.add(inode), wanted);
    } catch (error) {
      // A kernel that refuses the filter (EINVAL) is asked again without one, from now on.
      if (!filter || !(error instanceof SystemCallError) || error.code !== 'EINVAL') throw error;
      filterRefused = true;
      dumpEstablished(c, family, undefined, (inode) => inodes.add(inode), wanted);
    }
  }
  return inodes;
}

/** Whether the kernel refused the port filter (then ports are picked here, from every established socket). */
export function portFilterRefused(): boolean {
  return filterRefused;
}

/** Dumps the established TCP sockets of `family` (through `filter`, if any) with a local port in `wanted`. */
function dumpEstablished(
  c: Libc,
  family: number,
  filter: Buffer | undefined,
  onInode: (inode: number) => void,
  wanted: ReadonlySet<number>,
): void {
  const fd = openNetlink(c);
  const request = diagRequest(family, filter, ++netlinkSequence);
  const sent = Number(c.send(fd, request, request.length, 0));
  if (sent !== request.length) {
    const errno = c.errno();
    closeNetlink(c);
    throw new SystemCallError('send', errno, 'NETLINK_SOCK_DIAG request');
  }
  readDump(c, fd, (message) => {
    if (message.length < DIAG_MSG_SIZE) return;
    // The filter already kept only these ports; checked again where there was none.
    if (wanted.has(message.readUInt16BE(DIAG_MSG_SPORT))) onInode(message.readUInt32LE(DIAG_MSG_INODE));
  });
}

/** One NETLINK_SOCK_DIAG socket for the life of the process, opened at the first count. */
function openNetlink(c: Libc): number {
  if (netlinkFd !== undefined) return netlinkFd;
  const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (fd < 0) throw new SystemCallError('socket', c.errno(), 'AF_NETLINK NETLINK_SOCK_DIAG');
  netlinkFd = fd;
  return fd;
}

function closeNetlink(c: Libc): void {
  if (netlinkFd !== undefined) c.close(netlinkFd);
  netlinkFd = undefined;
}

/** Reads one dump to its NLMSG_DONE, handing each message's payload to `onMessage`. */
function readDump(c: Libc, fd: number, onMessage: (payload: Buffer) => void): void {
  for (;;) {
    // Never blocks for long: the kernel fills the next datagram of a dump while the previous is read.
    const length = Number(c.recv(fd, netlinkBuffer, netlinkBuffer.length, MSG_DONTWAIT));
    if (length < 0) {
      const errno = c.errno();
      closeNetlink(c);
      throw new SystemCallError('recv', errno, 'NETLINK_SOCK_DIAG dump');
    }
    for (let offset = 0; offset + NLMSG_HEADER <= length; ) {
      const messageLength = netlinkBuffer.readUInt32LE(offset);
      const type = netlinkBuffer.readUInt16LE(offset + 4);
      if (messageLength < NLMSG_HEADER || offset + messageLength > length) return;
      if (type === NLMSG_DONE) return;
      if (type === NLMSG_ERROR) {
        const errno = -netlinkBuffer.readInt32LE(offset + NLMSG_HEADER);
        if (errno === 0) return;
        closeNetlink(c);
        throw new SystemCallError('NETLINK_SOCK_DIAG', errno, 'the kernel refused the request');
      }
      onMessage(netlinkBuffer.subarray(offset + NLMSG_HEADER, offset + messageLength));
      offset += (messageLength + 3) & ~3;
    }
  }
}

/**
 * `nlmsghdr` + `inet_diag_req_v2` asking every established TCP socket of `family`, and the bytecode
 * filter as an INET_DIAG_REQ_BYTECODE attribute.
 */
function diagRequest(family: number, filter: Buffer | undefined, sequence: number): Buffer {
  const attribute = filter ? RTATTR_HEADER + filter.length : 0;
  const request = Buffer.alloc(NLMSG_HEADER + DIAG_REQUEST + attribute);
  request.writeUInt32LE(request.length, 0);
  request.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4);
  request.writeUInt16LE(NLM_F_REQUEST | NLM_F_DUMP, 6);
  request.writeUInt32LE(sequence, 8);
  request.writeUInt8(family, NLMSG_HEADER);
  request.writeUInt8(IPPROTO_TCP, NLMSG_HEADER + 1);
  request.writeUInt32LE(1 << TCP_ESTABLISHED, NLMSG_HEADER + 4);
  if (filter) {
    const at = NLMSG_HEADER + DIAG_REQUEST;
    request.writeUInt16LE(attribute, at);
    request.writeUInt16LE(INET_DIAG_REQ_BYTECODE, at + 2);
    filter.copy(request, at + RTATTR_HEADER);
  }
  return request;
}

/**
 * inet_diag bytecode that keeps a socket whose local port is one of `ports`, built as `ss` builds
 * `sport = :a or sport = :b`: per port a block `sport >= p && sport <= p` (each comparison followed by
 * an op that holds the port) whose miss jumps 4 bytes past the block's end, then, between blocks, an
 * unconditional jump to the end (keep). The miss of a block lands on the next block; the last one's
 * lands past the end (drop). The kernel audits that every jump lands on an op. GE/LE, not S_EQ, which
 * kernels before 4.16 lack.
 */
export function portFilter(ports: readonly number[]): Buffer {
  const block = 4 * BC_OP;
  const filter = Buffer.alloc(ports.length * (block + BC_OP) - BC_OP);
  ports.forEach((port, index) => {
    const at = index * (block + BC_OP);
    writeOp(filter, at, INET_DIAG_BC_S_GE, 2 * BC_OP, block + BC_OP);
    writeOp(filter, at + BC_OP, INET_DIAG_BC_NOP, 0, port);
    writeOp(filter, at + 2 * BC_OP, INET_DIAG_BC_S_LE, 2 * BC_OP, 2 * BC_OP + BC_OP);
    writeOp(filter, at + 3 * BC_OP, INET_DIAG_BC_NOP, 0, port);
    const jump = at + block;
    if (jump < filter.length) writeOp(filter, jump, INET_DIAG_BC_JMP, BC_OP, filter.length - jump);
  });
  return filter;
}

/** `struct inet_diag_bc_op { u8 code; u8 yes; u16 no; }`: jumps in bytes from this op. */
function writeOp(filter: Buffer, at: number, code: number, yes: number, no: number): void {
  filter.writeUInt8(code, at);
  filter.writeUInt8(yes, at + 1);
  filter.writeUInt16LE(no, at + 2);
}
