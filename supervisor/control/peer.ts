/**
 * Who called on the control socket. Node cannot read a Unix peer's credentials (no SO_PEERCRED), so
 * the master asks iproute2's `ss`: the accepted connection's inode (its /proc/self/fd link) is a row
 * of `ss -xpn` that names its peer's inode; the row of the peer's inode names the process holding it,
 * whose real uid /proc/<pid>/status gives. Only the socket's owner and root can connect (0600 in a
 * 0700 directory), but which of them called is what the injection log records.
 */
import type net from 'node:net';
import type { Logger } from '../log.js';
import { connectionFd } from '../node-internals.js';
import { realUidOf, socketInode } from '../proc.js';

/** How long `ss` may take to list the machine's Unix sockets. */
export const SS_TIMEOUT_MS = 2_000;

/** What the master can say of a caller: its uid (and pid), or why it cannot tell. */
export type Caller = { uid: number; pid: number } | { uid: undefined; reason: string };

/** One connected Unix socket as `ss -xpn` lists it. */
export interface UnixSocketRow {
  inode: number;
  peerInode: number;
  /** The processes that hold it (none when `ss` may not look into their descriptors). */
  pids: number[];
}

/**
 * The rows of `ss -xpn` output, for example
 * `u_str ESTAB 0 0 * 10181325 * 10181712 users:(("node",pid=16879,fd=22))`.
 * Read from the right, so that a local path with spaces (a `--control` path) does not shift the
 * inodes; the peer's address is one word (`*`). The header and anything unlike a row are skipped.
 */
export function parseUnixSockets(output: string): UnixSocketRow[] {
  const rows: UnixSocketRow[] = [];
  for (const line of output.split('\n')) {
    if (!line.startsWith('u_')) continue;
    const usersAt = line.indexOf(' users:((');
    const words = (usersAt === -1 ? line : line.slice(0, usersAt)).trim().split(/\s+/);
    // netid, state, recv-q, send-q, local address (one word or more), local inode, peer address, peer inode
    if (words.length < 8) continue;
    const inode = inodeWord(words.at(-3));
    const peerInode = inodeWord(words.at(-1));
    if (inode === undefined || peerInode === undefined) continue;
    const users = usersAt === -1 ? '' : line.slice(usersAt);
    const pids = [...new Set([...users.matchAll(/\bpid=(\d+)/g)].map((match) => Number(match[1])))];
    rows.push({ inode, peerInode, pids });
  }
  return rows;
}

function inodeWord(word: string | undefined): number | undefined {
  return word !== undefined && /^\d+$/.test(word) ? Number(word) : undefined;
}

/** The processes at the other end of this process's socket `inode`, or why they are not known. */
export function peerProcesses(
  rows: readonly UnixSocketRow[],
  inode: number,
): { pids: number[] } | { reason: string } {
  const ours = rows.find((row) => row.inode === inode);
  const theirs = ours && rows.find((row) => row.inode === ours.peerInode);
  if (!theirs) return { reason: 'the connection was gone before ss listed it' };
  if (theirs.pids.length === 0) {
    return {
      reason:
        "the caller's process is not visible to this master (another user's, such as root's: only the socket's owner and root can connect)",
    };
  }
  return { pids: theirs.pids };
}

/** The uid of the processes `pids` (those still there), or why there is none to give. */
export function callerOf(pids: readonly number[], uidOf: (pid: number) => number | undefined): Caller {
  const found = pids.flatMap((pid) => {
    const uid = uidOf(pid);
    return uid === undefined ? [] : [{ uid, pid }];
  });
  const [first] = found;
  if (!first) return { uid: undefined, reason: 'the caller exited before it could be identified' };
  if (found.some((other) => other.uid !== first.uid)) {
    return {
      uid: undefined,
      reason: `processes of several uids hold the caller's end (pids ${found.map((one) => one.pid).join(', ')})`,
    };
  }
  return first;
}

/** Finds who is at the other end of control connections; says once, in the log, when it never can. */
export class CallerLookup {
  private ssMissing = false;

  constructor(
    private readonly logger: Logger,
    /** Lists the machine's Unix sockets (`ss -xpn`); replaced in tests. */
    private readonly listUnixSockets: () => Promise<string> = runSs,
  ) {}

  /** The caller on `socket`, an accepted control connection. Never rejects. */
  async identify(socket: net.Socket): Promise<Caller> {
    if (this.ssMissing) return { uid: undefined, reason: SS_MISSING };
    const fd = connectionFd(socket);
    const inode = fd === undefined ? undefined : socketInode(fd);
    if (inode === undefined)
      return { uid: undefined, reason: 'the connection has no socket in /proc/self/fd' };
    let output: string;
    try {
      output = await this.listUnixSockets();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') {
        this.ssMissing = true;
        this.logger.warn(
          'caller uid unknown: ss (iproute2) is not installed; injections are logged without the uid of who asked',
        );
        return { uid: undefined, reason: SS_MISSING };
      }
      const timedOut = (error as { timedOut?: boolean }).timedOut === true;
      return {
        uid: undefined,
        reason: timedOut
          ? `ss did not answer within ${SS_TIMEOUT_MS} ms`
          : `ss failed: ${(error as { shortMessage?: string }).shortMessage ?? String(error)}`,
      };
    }
    const peer = peerProcesses(parseUnixSockets(output), inode);
    return 'reason' in peer ? { uid: undefined, reason: peer.reason } : callerOf(peer.pids, realUidOf);
  }
}

const SS_MISSING = 'ss (iproute2) is not installed';

/** `ss -xpn`: connected Unix sockets, numeric, with the processes that hold them. No shell. */
async function runSs(): Promise<string> {
  // execa is loaded here, when a caller is first looked up (a hot patch), not by every master.
  const { execa } = await import('execa');
  const { stdout } = await execa('ss', ['-xpn'], { timeout: SS_TIMEOUT_MS, stdin: 'ignore' });
  return stdout;
}
