/**
 * Every Linux call that Node lacks lives here, made through koffi (an FFI library whose prebuilt
 * binary comes from npm: no compiler on the user's machine). test/unit/linux.test.ts fails loudly if
 * koffi or libc stop answering as this module expects.
 *
 * koffi is loaded on first use only, so that a master that never needs these calls pays nothing.
 */
import { createRequire } from 'node:module';
import { constants as osConstants } from 'node:os';
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
  readonly fd: number;
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
  return datagramSocketAt(fd, path);
}

/**
 * The datagram socket this process already holds at `fd`, bound at `path`: one a master carried across
 * its re-exec (supervisor/reexec.ts).
 */
export function datagramSocketAt(fd: number, path: string): DatagramSocket {
  const c = loadLibc();
  let open = true;
  const buffer = Buffer.alloc(DATAGRAM_MAX);
  return {
    fd,
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
const TCP_LISTEN = 10;
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

/**
 * The machine's TCP sockets (IPv4 and IPv6) in the LISTEN state, inode → local port, asked of the kernel
 * with a state filter only: a host has few listening sockets, however many connections it holds.
 * Throws a SystemCallError where netlink cannot be used.
 */
export function listeningTcpPorts(): Map<number, number> {
  const c = loadLibc();
  const ports = new Map<number, number>();
  for (const family of [AF_INET, AF_INET6]) {
    dumpSockets(c, family, 1 << TCP_LISTEN, undefined, (message) => {
      ports.set(message.readUInt32LE(DIAG_MSG_INODE), message.readUInt16BE(DIAG_MSG_SPORT));
    });
  }
  return ports;
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
  dumpSockets(c, family, 1 << TCP_ESTABLISHED, filter, (message) => {
    // The filter already kept only these ports; checked again where there was none.
    if (wanted.has(message.readUInt16BE(DIAG_MSG_SPORT))) onInode(message.readUInt32LE(DIAG_MSG_INODE));
  });
}

/** Dumps the TCP sockets of `family` in the `states` (a bit per TCP state), each `inet_diag_msg` to `onSocket`. */
function dumpSockets(
  c: Libc,
  family: number,
  states: number,
  filter: Buffer | undefined,
  onSocket: (message: Buffer) => void,
): void {
  const fd = openNetlink(c);
  const request = diagRequest(family, states, filter, ++netlinkSequence);
  const sent = Number(c.send(fd, request, request.length, 0));
  if (sent !== request.length) {
    const errno = c.errno();
    closeNetlink(c);
    throw new SystemCallError('send', errno, 'NETLINK_SOCK_DIAG request');
  }
  readDump(c, fd, (message) => {
    if (message.length >= DIAG_MSG_SIZE) onSocket(message);
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
 * `nlmsghdr` + `inet_diag_req_v2` asking every TCP socket of `family` in `states`, and the bytecode
 * filter as an INET_DIAG_REQ_BYTECODE attribute.
 */
function diagRequest(family: number, states: number, filter: Buffer | undefined, sequence: number): Buffer {
  const attribute = filter ? RTATTR_HEADER + filter.length : 0;
  const request = Buffer.alloc(NLMSG_HEADER + DIAG_REQUEST + attribute);
  request.writeUInt32LE(request.length, 0);
  request.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4);
  request.writeUInt16LE(NLM_F_REQUEST | NLM_F_DUMP, 6);
  request.writeUInt32LE(sequence, 8);
  request.writeUInt8(family, NLMSG_HEADER);
  request.writeUInt8(IPPROTO_TCP, NLMSG_HEADER + 1);
  request.writeUInt32LE(states, NLMSG_HEADER + 4);
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

// ---- The descriptor channel (issue 17) ------------------------------------------------------------
//
// An AF_UNIX stream socketpair between the master and each worker, carrying many descriptors per
// sendmsg(2) (SCM_RIGHTS) under baton's own framing (supervisor/fd-channel.ts). Bound on first use
// through koffi, apart from the calls above.

const SOCK_STREAM = 1;
const MSG_CTRUNC = 0x8;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const F_GETFD = 1;
const F_SETFD = 2;
const FD_CLOEXEC = 1;
const F_DUPFD_CLOEXEC = 1030;
/** sizeof(struct cmsghdr) on LP64 Linux: cmsg_len (size_t), cmsg_level, cmsg_type (int each). */
const CMSG_HEADER = 16;

/**
 * The most descriptors Linux passes in one sendmsg (SCM_MAX_FD): more fail with EINVAL. HAProxy hands
 * its listeners over 253 at a time for the same reason.
 */
export const DESCRIPTORS_PER_MESSAGE_MAX = 253;

/** The descriptor-passing calls, bound once. */
interface DescriptorCalls {
  socketpair(domain: number, type: number, protocol: number, pair: Int32Array): number;
  sendmsg(fd: number, message: MessageHeader, flags: number): number | bigint;
  recvmsg(fd: number, message: MessageHeader, flags: number): number | bigint;
  fcntl(fd: number, command: number, ...rest: unknown[]): number;
  close(fd: number): number;
  errno(): number;
}

/** `struct msghdr`, as koffi marshals it: the Buffers are passed in place, so the kernel writes into them. */
interface MessageHeader {
  name: null;
  namelen: number;
  iov: { base: Buffer; length: number };
  iovlen: number;
  control: Buffer | null;
  controllen: number;
  flags: number;
}

/** The part of koffi's API the descriptor calls use. */
interface KoffiStructs {
  load(path: string): {
    func(signature: string): unknown;
    func(name: string, result: string, parameters: unknown[]): unknown;
  };
  struct(fields: Record<string, unknown>): unknown;
  pointer(type: unknown): unknown;
  inout(type: unknown): unknown;
  errno(): number;
}

let descriptorCalls: DescriptorCalls | undefined;

function loadDescriptorCalls(): DescriptorCalls {
  if (descriptorCalls) return descriptorCalls;
  const koffi = createRequire(import.meta.url)('koffi') as KoffiStructs;
  const lib = koffi.load('libc.so.6');
  // Anonymous types: a named one is registered once per process, and a module loaded twice (test
  // runners isolate modules, koffi's registry is native) would find its name taken.
  const iovec = koffi.struct({ base: 'void *', length: 'size_t' });
  const msghdr = koffi.pointer(
    koffi.struct({
      name: 'void *',
      namelen: 'uint32_t',
      iov: koffi.pointer(iovec),
      iovlen: 'size_t',
      control: 'void *',
      controllen: 'size_t',
      flags: 'int',
    }),
  );
  descriptorCalls = {
    socketpair: lib.func(
      'int socketpair(int domain, int type, int protocol, _Out_ int *pair)',
    ) as DescriptorCalls['socketpair'],
    sendmsg: lib.func('sendmsg', 'intptr_t', ['int', msghdr, 'int']) as DescriptorCalls['sendmsg'],
    recvmsg: lib.func('recvmsg', 'intptr_t', [
      'int',
      koffi.inout(msghdr),
      'int',
    ]) as DescriptorCalls['recvmsg'],
    fcntl: lib.func('int fcntl(int fd, int command, ...)') as DescriptorCalls['fcntl'],
    close: lib.func('int close(int fd)') as DescriptorCalls['close'],
    errno: () => koffi.errno(),
  };
  return descriptorCalls;
}

/**
 * A connected pair of AF_UNIX stream sockets, non-blocking and close-on-exec (a worker gets its end
 * only where the master passes it on). Throws a SystemCallError when the pair cannot be made.
 */
export function unixStreamPair(): [number, number] {
  const c = loadDescriptorCalls();
  const pair = new Int32Array(2);
  if (c.socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, pair) !== 0) {
    throw new SystemCallError('socketpair', c.errno(), 'AF_UNIX stream');
  }
  return [pair[0] as number, pair[1] as number];
}

/**
 * Sends `bytes` with `fds` attached (SCM_RIGHTS) in one sendmsg, without blocking. Returns how many
 * bytes the kernel took: the descriptors went with the first of them, and with any count above 0 they
 * all went; 0 when the socket is full (EAGAIN) and nothing went. Never raises SIGPIPE: a peer that is
 * gone is a SystemCallError (EPIPE, ECONNRESET).
 */
export function sendWithDescriptors(fd: number, bytes: Buffer, fds: readonly number[]): number {
  if (fds.length > DESCRIPTORS_PER_MESSAGE_MAX) {
    throw new RangeError(`at most ${DESCRIPTORS_PER_MESSAGE_MAX} descriptors per message, got ${fds.length}`);
  }
  if (bytes.length === 0) throw new RangeError('descriptors travel with at least one byte');
  const c = loadDescriptorCalls();
  let control: Buffer | null = null;
  if (fds.length > 0) {
    control = Buffer.alloc(CMSG_HEADER + align8(fds.length * 4));
    control.writeBigUInt64LE(BigInt(CMSG_HEADER + fds.length * 4), 0);
    control.writeInt32LE(SOL_SOCKET, 8);
    control.writeInt32LE(SCM_RIGHTS, 12);
    for (const [index, descriptor] of fds.entries())
      control.writeInt32LE(descriptor, CMSG_HEADER + 4 * index);
  }
  const message: MessageHeader = {
    name: null,
    namelen: 0,
    iov: { base: bytes, length: bytes.length },
    iovlen: 1,
    control,
    controllen: control?.length ?? 0,
    flags: 0,
  };
  const sent = Number(c.sendmsg(fd, message, MSG_DONTWAIT | MSG_NOSIGNAL));
  if (sent >= 0) return sent;
  const errno = c.errno();
  if (errno === EAGAIN) return 0;
  throw new SystemCallError('sendmsg', errno, `${fds.length} descriptor(s)`);
}

/** What one recvmsg brought: bytes (0 at end of stream), and descriptors, close-on-exec. */
export interface ReceivedChunk {
  bytes: Buffer;
  fds: number[];
  /** The kernel dropped descriptors that did not fit (MSG_CTRUNC): the open-file limit, say. */
  truncated: boolean;
  /** The peer closed its end and everything was read. */
  ended: boolean;
}

/**
 * Reads what waits on `fd` into `buffer` (up to its length, with up to DESCRIPTORS_PER_MESSAGE_MAX
 * descriptors), without blocking; undefined when nothing waits (EAGAIN). Descriptors arrive
 * close-on-exec (MSG_CMSG_CLOEXEC), so none leaks into a process this one spawns before it owns them.
 * Linux never hands one recvmsg the descriptors of two sendmsg calls, but it may split or merge their
 * bytes: the framing is the caller's.
 */
export function receiveWithDescriptors(fd: number, buffer: Buffer): ReceivedChunk | undefined {
  const c = loadDescriptorCalls();
  const control = Buffer.alloc(CMSG_HEADER + align8(DESCRIPTORS_PER_MESSAGE_MAX * 4));
  const message: MessageHeader = {
    name: null,
    namelen: 0,
    iov: { base: buffer, length: buffer.length },
    iovlen: 1,
    control,
    controllen: control.length,
    flags: 0,
  };
  const received = Number(c.recvmsg(fd, message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
  if (received < 0) {
    const errno = c.errno();
    if (errno === EAGAIN) return undefined;
    throw new SystemCallError('recvmsg', errno, 'descriptor channel');
  }
  return {
    bytes: Buffer.from(buffer.subarray(0, received)),
    fds: descriptorsIn(control, message.controllen),
    truncated: (message.flags & MSG_CTRUNC) !== 0,
    ended: received === 0,
  };
}

/** Every descriptor of the SCM_RIGHTS messages in a received control buffer. */
function descriptorsIn(control: Buffer, length: number): number[] {
  const fds: number[] = [];
  for (let offset = 0; offset + CMSG_HEADER <= length; ) {
    const cmsgLength = Number(control.readBigUInt64LE(offset));
    if (cmsgLength < CMSG_HEADER) break;
    if (control.readInt32LE(offset + 8) === SOL_SOCKET && control.readInt32LE(offset + 12) === SCM_RIGHTS) {
      for (let at = offset + CMSG_HEADER; at + 4 <= offset + cmsgLength; at += 4)
        fds.push(control.readInt32LE(at));
    }
    offset += align8(cmsgLength);
  }
  return fds;
}

/**
 * Sets or clears close-on-exec on `fd`. Cleared, the descriptor survives an execve(2) (the master's
 * re-exec keeps each worker's channel that way); Node opens every descriptor close-on-exec.
 */
export function setCloseOnExec(fd: number, closeOnExec: boolean): void {
  const c = loadDescriptorCalls();
  const flags = c.fcntl(fd, F_GETFD);
  if (flags < 0) throw new SystemCallError('fcntl', c.errno(), `F_GETFD ${fd}`);
  const wanted = closeOnExec ? flags | FD_CLOEXEC : flags & ~FD_CLOEXEC;
  if (wanted !== flags && c.fcntl(fd, F_SETFD, 'int', wanted) < 0) {
    throw new SystemCallError('fcntl', c.errno(), `F_SETFD ${fd}`);
  }
}

/** Whether `fd` is close-on-exec. */
export function isCloseOnExec(fd: number): boolean {
  const c = loadDescriptorCalls();
  const flags = c.fcntl(fd, F_GETFD);
  if (flags < 0) throw new SystemCallError('fcntl', c.errno(), `F_GETFD ${fd}`);
  return (flags & FD_CLOEXEC) !== 0;
}

/**
 * A close-on-exec copy of `fd` under a number of its own (the lowest free one from 3): the same open
 * file, which stays open as long as either number does. A handoff sends such a copy of a connection
 * the app still serves, so that closing the connection meanwhile cannot free the number that is sent.
 */
export function duplicateDescriptor(fd: number): number {
  const c = loadDescriptorCalls();
  const copy = c.fcntl(fd, F_DUPFD_CLOEXEC, 'int', 3);
  if (copy < 0) throw new SystemCallError('fcntl', c.errno(), `F_DUPFD_CLOEXEC ${fd}`);
  return copy;
}

/** Closes a descriptor this process owns (one received, or an end of a pair); EBADF is ignored. */
export function closeDescriptor(fd: number): void {
  loadDescriptorCalls().close(fd);
}

function align8(length: number): number {
  return (length + 7) & ~7;
}

// ─── Children this process did not spawn: waitpid ─────────────────────────────────────────────────

const WNOHANG = 1;
const ECHILD = 10;

/** How a child ended, as waitpid(2) reports it. */
export interface ChildEnd {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
}

let waitpidCall: ((pid: number, status: Int32Array, options: number) => number) | undefined;
let waitErrno: (() => number) | undefined;

/**
 * Reaps child `pid` if it has ended, without blocking: how it ended, undefined while it runs, or
 * 'not-a-child' (ECHILD: reaped already, or never this process's child). libuv reaps only the pids it
 * spawned; a master re-executed by supervisor/reexec.ts reaps the workers it adopted with this.
 */
export function reapChild(pid: number): ChildEnd | undefined | 'not-a-child' {
  if (!waitpidCall) {
    const koffi = createRequire(import.meta.url)('koffi') as KoffiModule;
    waitpidCall = koffi
      .load('libc.so.6')
      .func('int waitpid(int pid, _Out_ int *status, int options)') as typeof waitpidCall;
    waitErrno = () => koffi.errno();
  }
  const status = new Int32Array(1);
  const reaped = (waitpidCall as NonNullable<typeof waitpidCall>)(pid, status, WNOHANG);
  if (reaped === 0) return undefined;
  if (reaped < 0) {
    const errno = (waitErrno as () => number)();
    if (errno === ECHILD) return 'not-a-child';
    throw new SystemCallError('waitpid', errno, String(pid));
  }
  return decodeWaitStatus(status[0] ?? 0);
}

/** A wait status (WIFEXITED, WEXITSTATUS, WTERMSIG) as Node's 'exit' event gives it. */
export function decodeWaitStatus(status: number): ChildEnd {
  const termSignal = status & 0x7f;
  if (termSignal === 0) return { exitCode: (status >> 8) & 0xff, signal: null };
  const name = Object.entries(osConstants.signals).find(([, number]) => number === termSignal)?.[0];
  return { exitCode: null, signal: (name ?? 'SIGKILL') as NodeJS.Signals };
}

// ─── Replacing this process's program: execve ─────────────────────────────────────────────────────

let execveCall:
  | ((path: string, argv: Array<string | null>, envp: Array<string | null>) => number)
  | undefined;

/**
 * Replaces this process's program (execve(2)): returns only if the kernel refused, by throwing a
 * SystemCallError (ENOENT, EACCES, ENOMEM, E2BIG…). Node's own `process.execve` aborts the process
 * when execve fails (Node 22 and 24), which for a master would end every port it holds: a re-exec
 * (supervisor/reexec.ts) must be able to fail and serve on.
 */
export function replaceProgram(path: string, argv: readonly string[], env: NodeJS.ProcessEnv): never {
  if (!execveCall) {
    const koffi = createRequire(import.meta.url)('koffi') as KoffiModule;
    execveCall = koffi
      .load('libc.so.6')
      .func('int execve(const char *path, const char **argv, const char **envp)') as typeof execveCall;
    waitErrno ??= () => koffi.errno();
  }
  const envp = Object.entries(env).flatMap(([name, value]) =>
    value === undefined ? [] : [`${name}=${value}`],
  );
  (execveCall as NonNullable<typeof execveCall>)(path, [...argv, null], [...envp, null]);
  throw new SystemCallError('execve', (waitErrno as () => number)(), path);
}
