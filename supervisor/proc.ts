/**
 * What the master reads about its workers in Linux's /proc: whether a worker
 * waits for connections on a listener (readiness seen from outside, for
 * programs that cannot say ready), and whose a process is (the caller of the
 * control socket).
 */
import { closeSync, openSync, readdirSync, readFileSync, readlinkSync, readSync } from 'node:fs';
import { establishedTcpInodes, listeningTcpPorts } from './linux.js';

/** Linux system call numbers that wait on descriptors, per architecture (/proc/<pid>/syscall shows the number). */
const SYSCALLS: Record<string, { accept: number[]; poll: number[]; ppoll: number[]; select: number[] }> = {
  x64: { accept: [43, 288], poll: [7], ppoll: [271], select: [23, 270] },
  arm64: { accept: [202, 242], poll: [], ppoll: [73], select: [72] },
};
const EPOLLIN = 0x1;
const POLLIN = 0x1;
/** sizeof(struct pollfd): int fd, short events, short revents. */
const POLLFD_SIZE = 8;
/** More descriptors than this in one poll() call are not read. */
const MAX_POLLFDS = 4096;

/** The inode of the socket behind a descriptor of this process, from its /proc link (`socket:[1234]`). */
export function socketInode(fd: number): number | undefined {
  try {
    return inodeOf(readlinkSync(`/proc/self/fd/${fd}`));
  } catch {
    return undefined;
  }
}

function inodeOf(link: string): number | undefined {
  const match = /^socket:\[(\d+)\]$/.exec(link);
  return match ? Number(match[1]) : undefined;
}

/** Whether /proc shows anything of processes here (Linux, and not hidden). */
export function procAvailable(): boolean {
  try {
    readdirSync('/proc/self/fd');
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether process `pid`, or one of its descendants, waits for connections on one of the sockets with these
 * inodes: the socket is in one of its epoll interest lists with EPOLLIN (Node,
 * Go, Python asyncio and selectors), or one of its threads is blocked in
 * accept(), poll() or select() on it (blocking servers, Python's socketserver).
 * False when it cannot tell (the process is gone, or /proc is not readable).
 */
export function pollsListeners(pid: number, inodes: ReadonlySet<number>): boolean {
  return processTree(pid).some((member) => processPollsListeners(member, inodes));
}

/** The most processes of one worker's tree that are looked at (a pre-forking server and its children). */
const MAX_TREE = 256;

/**
 * Process `pid` and its descendants, parents first: a pre-forking server (gunicorn, uWSGI, a Python
 * ForkingMixIn server) accepts in the children it forks, not in the process baton spawned. Read from
 * each thread's /proc children list; just `[pid]` where that cannot be read.
 */
export function processTree(pid: number): number[] {
  const tree = [pid];
  for (let next = 0; next < tree.length && tree.length < MAX_TREE; next++) {
    const parent = tree[next] as number;
    let threads: string[];
    try {
      threads = readdirSync(`/proc/${parent}/task`);
    } catch {
      continue;
    }
    for (const tid of threads) {
      let children: string;
      try {
        children = readFileSync(`/proc/${parent}/task/${tid}/children`, 'utf8');
      } catch {
        continue;
      }
      for (const child of children.split(' ')) {
        const childPid = Number(child);
        if (Number.isInteger(childPid) && childPid > 0 && !tree.includes(childPid)) tree.push(childPid);
      }
    }
  }
  return tree;
}

function processPollsListeners(pid: number, inodes: ReadonlySet<number>): boolean {
  const descriptors = descriptorsOf(pid);
  if (!descriptors) return false;
  const listenerFds = new Set<number>();
  const epollFds: number[] = [];
  for (const { fd, link } of descriptors) {
    const inode = inodeOf(link);
    if (inode !== undefined && inodes.has(inode)) listenerFds.add(fd);
    else if (link === 'anon_inode:[eventpoll]') epollFds.push(fd);
  }
  if (listenerFds.size === 0) return false;
  return epollFds.some((fd) => epollWatches(pid, fd, inodes)) || threadsWaitOn(pid, listenerFds);
}

/** An epoll descriptor's interest list, from its fdinfo: `tfd: 3 events: 19 data: ... ino: 4744d`. */
function epollWatches(pid: number, epollFd: number, inodes: ReadonlySet<number>): boolean {
  let info: string;
  try {
    info = readFileSync(`/proc/${pid}/fdinfo/${epollFd}`, 'utf8');
  } catch {
    return false;
  }
  for (const match of info.matchAll(/^tfd:\s*\d+\s+events:\s*([0-9a-f]+).*?\bino:([0-9a-f]+)/gm)) {
    if (
      (Number.parseInt(match[1] as string, 16) & EPOLLIN) !== 0 &&
      inodes.has(Number.parseInt(match[2] as string, 16))
    ) {
      return true;
    }
  }
  return false;
}

function threadsWaitOn(pid: number, listenerFds: ReadonlySet<number>): boolean {
  const calls = SYSCALLS[process.arch];
  if (!calls) return false;
  let threads: string[];
  try {
    threads = readdirSync(`/proc/${pid}/task`);
  } catch {
    return false;
  }
  for (const tid of threads) {
    let fields: string[];
    try {
      fields = readFileSync(`/proc/${pid}/task/${tid}/syscall`, 'utf8').trim().split(/\s+/);
    } catch {
      continue;
    }
    const nr = Number(fields[0]);
    const args = fields.slice(1).map((arg) => Number.parseInt(arg, 16));
    if (Number.isNaN(nr)) continue; // "running"
    if (calls.accept.includes(nr) && listenerFds.has(args[0] as number)) return true;
    if (
      (calls.poll.includes(nr) || calls.ppoll.includes(nr)) &&
      pollfdsInclude(pid, args[0], args[1], listenerFds)
    )
      return true;
    if (calls.select.includes(nr) && fdSetIncludes(pid, args[0], args[1], listenerFds)) return true;
  }
  return false;
}

/** Reads the pollfd array a blocked poll() passed, from the process's memory (a parent may read its child's). */
function pollfdsInclude(
  pid: number,
  address: number | undefined,
  count: number | undefined,
  fds: ReadonlySet<number>,
): boolean {
  if (!address || !count || count > MAX_POLLFDS) return false;
  const bytes = readMemory(pid, address, count * POLLFD_SIZE);
  if (!bytes) return false;
  for (let offset = 0; offset + POLLFD_SIZE <= bytes.length; offset += POLLFD_SIZE) {
    if (fds.has(bytes.readInt32LE(offset)) && (bytes.readInt16LE(offset + 4) & POLLIN) !== 0) return true;
  }
  return false;
}

/** Reads the read-fd_set a blocked select() passed (bit n set: descriptor n). */
function fdSetIncludes(
  pid: number,
  nfds: number | undefined,
  address: number | undefined,
  fds: ReadonlySet<number>,
): boolean {
  if (!address || !nfds || nfds > MAX_POLLFDS) return false;
  const bytes = readMemory(pid, address, Math.ceil(nfds / 8));
  if (!bytes) return false;
  for (const fd of fds) {
    if (fd < nfds && ((bytes[fd >> 3] ?? 0) & (1 << (fd & 7))) !== 0) return true;
  }
  return false;
}

function readMemory(pid: number, address: number, length: number): Buffer | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(`/proc/${pid}/mem`, 'r');
    const buffer = Buffer.alloc(length);
    const read = readSync(fd, buffer, 0, length, address);
    return buffer.subarray(0, read);
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** The parent of process `pid`, from /proc/<pid>/stat; undefined when it is gone. */
export function parentPid(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may hold spaces and parentheses: the fields after it start past the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const parent = Number(fields[1]);
    return Number.isInteger(parent) ? parent : undefined;
  } catch {
    return undefined;
  }
}

/** The real uid of process `pid`, from the `Uid:` line of its /proc status (real, effective, saved, fs); undefined when gone. */
export function realUidOf(pid: number): number | undefined {
  try {
    return realUidIn(readFileSync(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return undefined;
  }
}

/** The real uid in the text of a /proc/<pid>/status file. */
export function realUidIn(status: string): number | undefined {
  const match = /^Uid:\s+(\d+)\s/m.exec(status);
  return match ? Number(match[1]) : undefined;
}

/** The state of a listening TCP socket in /proc/net/tcp. */
const TCP_LISTEN = '0A';

/** A socket as /proc/net shows it. */
export type SocketDescription =
  | { kind: 'tcp' | 'udp'; address: string; port: number; listening: boolean }
  | { kind: 'unix'; path: string | undefined; listening: boolean };

/** Finds a socket of this machine by inode in /proc/net (tcp, tcp6, udp, udp6, unix). */
export function describeSocket(inode: number): SocketDescription | undefined {
  for (const [file, kind] of [
    ['tcp', 'tcp'],
    ['tcp6', 'tcp'],
    ['udp', 'udp'],
    ['udp6', 'udp'],
  ] as const) {
    for (const fields of netTableRows(file)) {
      if (Number(fields[9]) !== inode) continue;
      const [addressHex = '', portHex = '0'] = (fields[1] ?? '').split(':');
      return {
        kind,
        address: decodeAddress(addressHex),
        port: Number.parseInt(portHex, 16),
        listening: fields[3] === TCP_LISTEN || kind === 'udp',
      };
    }
  }
  for (const fields of netTableRows('unix')) {
    if (Number(fields[6]) === inode) return { kind: 'unix', path: fields[7], listening: fields[5] === '01' };
  }
  return undefined;
}

/** /proc/net shows addresses as hex in host byte order, 32 bits at a time. */
function decodeAddress(hex: string): string {
  const words = hex.match(/.{8}/g) ?? [];
  const bytes = words.flatMap((word) =>
    (word.match(/../g) ?? []).reverse().map((byte) => Number.parseInt(byte, 16)),
  );
  if (bytes.length === 4) return bytes.join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((((bytes[i] ?? 0) << 8) | (bytes[i + 1] ?? 0)).toString(16));
  return groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
}

/** Why TCP sockets are read from /proc/net/tcp (the whole table) instead of netlink, once netlink failed. */
let netlinkFailure: string | undefined;

/**
 * The ports of the TCP sockets that process `pid` and its descendants hold in the LISTEN state, other
 * than the sockets with the inodes in `except` (baton's own listeners, which every worker inherits):
 * what a server listens on by itself. Sorted, each once; none when it cannot tell.
 */
export function ownListeningPorts(pid: number, except: ReadonlySet<number>): number[] {
  const held = new Set(
    processTree(pid).flatMap((member) =>
      (descriptorsOf(member) ?? []).flatMap(({ link }) => {
        const inode = inodeOf(link);
        return inode === undefined || except.has(inode) ? [] : [inode];
      }),
    ),
  );
  if (held.size === 0) return [];
  const ports = new Set<number>();
  if (netlinkFailure === undefined) {
    // The kernel lists its listening sockets only (few, however many connections the host holds).
    try {
      for (const [inode, port] of listeningTcpPorts()) if (held.has(inode)) ports.add(port);
      return [...ports].sort((a, b) => a - b);
    } catch (error) {
      netlinkFailure = error instanceof Error ? error.message : String(error);
    }
  }
  for (const fields of [...netTableRows('tcp'), ...netTableRows('tcp6')]) {
    if (fields[3] !== TCP_LISTEN || !held.has(Number(fields[9]))) continue;
    ports.add(Number.parseInt((fields[1] ?? '').split(':')[1] ?? '', 16));
  }
  return [...ports].sort((a, b) => a - b);
}

/** A listener as the connection count needs it: accepted TCP connections share its local port, Unix ones its path. */
export interface ListenerAddress {
  kind: 'tcp' | 'udp' | 'unix';
  port: number;
  /** The IP address, or the Unix socket's path. */
  address: string;
}

const TCP_ESTABLISHED = '01';
const UNIX_CONNECTED = '03';

/**
 * How many connections accepted on these listeners process `pid` and its descendants hold open:
 * their socket descriptors that the kernel shows established on a listener's local port (TCP, asked
 * through netlink: linux.ts) or connected under a listener's path (Unix, /proc/net/unix). Undefined
 * when it cannot tell.
 */
export function countConnections(pid: number, listeners: readonly ListenerAddress[]): number | undefined {
  const descriptors = descriptorsOf(pid);
  if (!descriptors) return undefined;
  // A connection held by several processes of the tree (inherited across fork) counts once.
  const held = new Set(
    [
      descriptors,
      ...processTree(pid)
        .slice(1)
        .map((member) => descriptorsOf(member) ?? []),
    ].flatMap((list) => list.flatMap(({ link }) => inodeOf(link) ?? [])),
  );
  const ports = [...new Set(listeners.filter((l) => l.kind === 'tcp').map((l) => l.port))];
  const paths = new Set(listeners.filter((l) => l.kind === 'unix').map((l) => l.address));
  const { tcp, unix } = connectionsOn(ports, paths.size > 0);
  let count = 0;
  for (const inode of held) if (tcp.has(inode)) count++;
  for (const connection of unix) {
    if (connection.path !== undefined && held.has(connection.inode) && paths.has(connection.path)) count++;
  }
  return count;
}

/** Established TCP connections on the listeners' ports, and connected Unix sockets of the machine, by inode. */
interface Connections {
  readAt: number;
  key: string;
  tcp: ReadonlySet<number>;
  unix: Array<{ inode: number; path: string | undefined }>;
}

/** How long the machine's connections are reused: one read serves every worker counted in the same sample. */
const CONNECTIONS_REUSE_MS = 100;
let cached: Connections | undefined;

/**
 * Why the connection count reads /proc/net/tcp (the whole table of the machine's sockets) instead of
 * asking the kernel for the listeners' ports over netlink; undefined while netlink works.
 */
export function connectionCountFallback(): string | undefined {
  return netlinkFailure;
}

function connectionsOn(ports: readonly number[], withUnix: boolean): Connections {
  const now = Date.now();
  const key = `${ports.join(',')}${withUnix ? '+unix' : ''}`;
  if (cached && cached.key === key && now - cached.readAt < CONNECTIONS_REUSE_MS) return cached;
  const connections: Connections = {
    readAt: now,
    key,
    tcp: ports.length === 0 ? new Set() : establishedOn(ports),
    unix: [],
  };
  if (withUnix) {
    for (const fields of netTableRows('unix')) {
      if (fields[5] === UNIX_CONNECTED) connections.unix.push({ inode: Number(fields[6]), path: fields[7] });
    }
  }
  cached = connections;
  return connections;
}

/** The inodes of established TCP sockets on these local ports: netlink, else /proc/net/tcp{,6}. */
function establishedOn(ports: readonly number[]): Set<number> {
  if (netlinkFailure === undefined) {
    try {
      return establishedTcpInodes(ports);
    } catch (error) {
      netlinkFailure = error instanceof Error ? error.message : String(error);
    }
  }
  // /proc/net/tcp lists every socket of the machine (megabytes with tens of thousands of connections).
  const wanted = new Set(ports);
  const inodes = new Set<number>();
  for (const fields of [...netTableRows('tcp'), ...netTableRows('tcp6')]) {
    if (fields[3] !== TCP_ESTABLISHED) continue;
    const localPort = Number.parseInt((fields[1] ?? '').split(':')[1] ?? '', 16);
    if (wanted.has(localPort)) inodes.add(Number(fields[9]));
  }
  return inodes;
}

/** The rows of a /proc/net table (tcp, tcp6, udp, udp6, unix), split into fields; none when it cannot be read. */
function netTableRows(file: string): string[][] {
  try {
    return readFileSync(`/proc/net/${file}`, 'utf8')
      .split('\n')
      .slice(1)
      .map((line) => line.trim().split(/\s+/));
  } catch {
    return [];
  }
}

/** A process's open descriptors and what each points to (`socket:[123]`, `anon_inode:[eventpoll]`, ...); undefined when it cannot be read. */
function descriptorsOf(pid: number): Array<{ fd: number; link: string }> | undefined {
  let entries: string[];
  try {
    entries = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return undefined;
  }
  return entries.flatMap((entry) => {
    try {
      return [{ fd: Number(entry), link: readlinkSync(`/proc/${pid}/fd/${entry}`) }];
    } catch {
      return []; // closed meanwhile
    }
  });
}
