/**
 * systemd's notification socket for workers (`NOTIFY_SOCKET`, sd_notify(3)): one AF_UNIX datagram
 * socket per worker, in a folder of the master's own, so that a server written for systemd (gunicorn,
 * Go with go-systemd or a few lines of stdlib, Rust's sd-notify, nginx, PostgreSQL) says ready, its
 * status and that it stops, without a line changed. The socket is a path, not a descriptor: every
 * process of the worker's tree may write to it (gunicorn's arbiter does, not the process baton spawned).
 *
 * Node cannot read datagram Unix sockets: the calls go through supervisor/linux.ts. Nothing wakes the
 * master when a datagram arrives, so the sockets are read on a timer: often while a worker starts (a
 * READY=1 is seen within FAST_READ_MS), rarely once it serves.
 */
import { chmodSync, chownSync, mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { bindDatagramSocket, type DatagramSocket, datagramSocketAt, UNIX_PATH_MAX } from './linux.js';

/** How often the socket of a worker that has not said READY=1 yet is read, in its first EAGER_WINDOW_MS. */
export const FAST_READ_MS = 20;
/**
 * How long a new worker's socket is read fast: a server written for systemd says READY=1 within it
 * (gunicorn in about 0.6 s here); one that says nothing there (a Node worker says ready over IPC) costs
 * the master no wake-ups after it.
 */
export const EAGER_WINDOW_MS = 5_000;
/** How often it is read afterwards (READY=1 of a slow start, STATUS=, STOPPING=1, WATCHDOG=1). */
export const SLOW_READ_MS = 250;

/** One worker's notification socket. */
export interface NotifyChannel {
  /** The socket's path, for the worker's NOTIFY_SOCKET. */
  readonly path: string;
  /** The socket's descriptor in the master (carried across a re-exec, supervisor/reexec.ts). */
  readonly fd: number;
  /** Reads what is waiting now, then closes the socket and removes its file. */
  close(): void;
}

/** Who may write to a worker's socket, and how often it must be read. */
export interface NotifyOwner {
  /** The worker's user when it runs as another (`--user`). */
  uid?: number;
  gid?: number;
  /** Under `--watchdog`, the period: its WATCHDOG=1 pings are read at least four times within it. */
  watchdogMs?: number;
}

/** One open socket: who gets its lines, and how often it is read now. */
interface OpenChannel {
  onLine: (line: string) => void;
  /** Read fast until READY=1 or this time (ms since the epoch). */
  eagerUntil: number;
  slowMs: number;
}

/** The notification sockets of one master: a private folder, one socket per worker, one read timer. */
export class NotifySockets {
  private folder: string | undefined;
  private nextId = 1;
  private readonly open = new Map<DatagramSocket, OpenChannel>();
  private timer: NodeJS.Timeout | undefined;
  private timerMs = 0;

  /**
   * Opens a socket for one worker; `onLine` gets each line of each datagram (sd_notify sends
   * `KEY=VALUE` lines, several per datagram). Throws a SystemCallError where it cannot be made.
   */
  openChannel(owner: NotifyOwner, onLine: (line: string) => void): NotifyChannel {
    const folder = this.ensureFolder(owner);
    const socketPath = path.join(folder, `${this.nextId++}`);
    const socket = bindDatagramSocket(socketPath);
    try {
      // Only the worker's user (and root) may write to it: connecting to a Unix socket needs write permission.
      chmodSync(socketPath, 0o600);
      if (owner.uid !== undefined) chownSync(socketPath, owner.uid, owner.gid ?? -1);
    } catch (error) {
      socket.close();
      throw error;
    }
    return this.watch(socket, onLine, Date.now() + EAGER_WINDOW_MS, owner.watchdogMs);
  }

  /**
   * The channel of a worker that a re-executed master adopts: its socket, still bound at `socketPath`
   * in the previous program's folder (which this one now owns and removes at its exit).
   */
  adoptChannel(
    fd: number,
    socketPath: string,
    watchdogMs: number | undefined,
    onLine: (line: string) => void,
  ): NotifyChannel {
    if (!this.folder) {
      this.folder = path.dirname(socketPath);
      process.once('exit', () => this.closeAll());
    }
    const id = Number(path.basename(socketPath));
    if (Number.isInteger(id) && id >= this.nextId) this.nextId = id + 1;
    return this.watch(datagramSocketAt(fd, socketPath), onLine, 0, watchdogMs);
  }

  private watch(
    socket: DatagramSocket,
    onLine: (line: string) => void,
    eagerUntil: number,
    watchdogMs: number | undefined,
  ): NotifyChannel {
    const socketPath = socket.path;
    this.open.set(socket, {
      onLine,
      eagerUntil,
      slowMs: Math.max(FAST_READ_MS, Math.min(SLOW_READ_MS, Math.floor((watchdogMs ?? Infinity) / 4))),
    });
    this.schedule();
    return {
      path: socketPath,
      fd: socket.fd,
      close: () => {
        if (!this.open.has(socket)) return;
        this.read(socket);
        this.open.delete(socket);
        socket.close();
        try {
          unlinkSync(socketPath);
        } catch {
          // already gone with the folder
        }
        this.schedule();
      },
    };
  }

  /** Closes every socket and removes the folder (the master is done). */
  closeAll(): void {
    for (const socket of this.open.keys()) socket.close();
    this.open.clear();
    this.schedule();
    if (this.folder) rmSync(this.folder, { recursive: true, force: true });
    this.folder = undefined;
  }

  private ensureFolder(owner: NotifyOwner): string {
    if (!this.folder) {
      // A short path: sun_path holds 107 bytes, and TMPDIR may be deep.
      const base = path.join(tmpdir(), 'baton-notify-').length + 16 < UNIX_PATH_MAX ? tmpdir() : '/tmp';
      this.folder = mkdtempSync(path.join(base, 'baton-notify-'));
      process.once('exit', () => this.closeAll());
    }
    // Workers of another user must reach their socket, not list or touch the others.
    chmodSync(this.folder, owner.uid === undefined ? 0o700 : 0o711);
    return this.folder;
  }

  private read(socket: DatagramSocket): void {
    const entry = this.open.get(socket);
    if (!entry) return;
    for (let datagram = socket.receive(); datagram; datagram = socket.receive()) {
      for (const line of datagram.toString('utf8').split('\n')) {
        const trimmed = line.trim();
        if (trimmed === '') continue;
        if (trimmed === 'READY=1') entry.eagerUntil = 0;
        entry.onLine(trimmed);
      }
    }
  }

  private readAll(): void {
    for (const socket of [...this.open.keys()]) {
      try {
        this.read(socket);
      } catch {
        // A socket that cannot be read any more says nothing; the worker's exit closes it.
      }
    }
    this.schedule();
  }

  /** One timer for every socket, as fast as the fastest of them needs. */
  private schedule(): void {
    const now = Date.now();
    const wanted = Math.min(
      Infinity,
      ...[...this.open.values()].map((entry) => (entry.eagerUntil > now ? FAST_READ_MS : entry.slowMs)),
    );
    if (wanted === Infinity) {
      if (this.timer) clearInterval(this.timer);
      this.timer = undefined;
      this.timerMs = 0;
      return;
    }
    if (wanted === this.timerMs && this.timer) return;
    if (this.timer) clearInterval(this.timer);
    this.timerMs = wanted;
    this.timer = setInterval(() => this.readAll(), wanted);
    this.timer.unref();
  }
}
