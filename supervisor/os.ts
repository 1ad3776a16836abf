/**
 * The OS seam: everything the master does to the world (spawning, signalling,
 * the clock and timers) goes through `Os`, so its logic runs against fakes in
 * unit tests and against the real OS in integration tests.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants as fsConstants, statSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { CommandNotFoundError } from './errors.js';
import { type Batch, BatchInbox, BatchOutbox, FD_CHANNEL_ENV, FdChannel } from './fd-channel.js';
import { type ChildEnd, closeDescriptor, reapChild } from './linux.js';
import { SignalTarget } from './main-pid.js';
import { InheritedIpcChannel, type RawSocketHandle, sendRawHandle, streamFd } from './node-internals.js';
import { type NotifyChannel, NotifySockets } from './notify-socket.js';
import { restorePriority, startAtPriority } from './priority.js';
import {
  connectionCountFallback,
  countConnections,
  type ListenerAddress,
  ownListeningPorts,
  pollsListeners,
} from './proc.js';

/** What the master asks for when it starts a worker. */
export interface SpawnRequest {
  /** An absolute path (see resolveCommand). */
  command: string;
  args: string[];
  /** The complete environment of the worker. */
  env: Record<string, string>;
  /**
   * Inherited at fds 3, 4, ... in this order; then the notify pipe (BATON_NOTIFY_FD), the descriptor
   * channel (BATON_FD_CHANNEL), then the IPC channel.
   */
  listenerFds: number[];
  /**
   * False: no notify pipe and no descriptor channel, the IPC channel right after stdio (the scratch
   * worker of `inject --dry-run`).
   */
  notifyPipe?: boolean;
  cwd: string;
  /** What the kernel sends the worker if the master dies (the drain signal). */
  parentDeathSignal: NodeJS.Signals;
  /** The user and group the worker runs as (`--user`, `--group`); the master's when undefined. */
  uid?: number;
  gid?: number;
  /** `--start-nice`: the nice value the worker starts at, until `restorePriority` (priority.ts); 0 or undefined: none. */
  startNice?: number;
}

/** What a spawned worker reports back; each callback queues an event in the master. */
export interface WorkerCallbacks {
  /**
   * One IPC message (child/protocol.ts), once, with the handle that came along if any (a connection
   * handed off, docs/handoff.md): the callee owns the handle.
   */
  onMessage(message: unknown, handle?: unknown): void;
  onStderr(chunk: Buffer): void;
  /**
   * One line the worker's tree wrote on its notify pipe or sent to its NOTIFY_SOCKET (sd_notify words:
   * `READY=1`, `STATUS=...`).
   */
  onNotify(line: string): void;
  /** Something the worker was meant to get could not be given (its NOTIFY_SOCKET): one line why. */
  onWarning?(message: string): void;
  onExit(exitCode: number | null, signal: NodeJS.Signals | null): void;
}

/** A running worker process as the master sees it. */
export interface WorkerProcess {
  readonly pid: number | undefined;
  /** Sends a signal; false when the process is already gone. */
  kill(signal: NodeJS.Signals): boolean;
  /**
   * Sends an IPC message, with a connection's raw handle if given (never read here); `onSent` runs once
   * it is written, or with the error. Absent where a worker cannot take part in a handoff.
   */
  send?(message: object, handle: RawSocketHandle | undefined, onSent: (error: Error | null) => void): void;
  /** The master's end of the worker's descriptor channel, where it has one (supervisor/fd-channel.ts). */
  readonly descriptors?: DescriptorLink;
  /**
   * The pids and the master's descriptors of this worker, for a re-exec of the master to carry
   * (supervisor/reexec.ts); undefined once it is gone or where it cannot be carried (no IPC channel).
   */
  carry?(): CarriedProcess | undefined;
  /** Resolves once every IPC message sent so far is written (a re-exec must not cut one in half). */
  flushed?(): Promise<void>;
}

/** A worker's process as a re-exec of the master carries it: pids, and the master's descriptors. */
export interface CarriedProcess {
  /** The pid the master spawned: the master's child, leader of the worker's process group. */
  pid: number;
  /** The process that serves, where MAINPID= named another (a server behind a wrapper). */
  mainPid?: number;
  /** The master's end of the worker's Node IPC channel (json serialization). */
  ipcFd: number;
  stderrFd?: number;
  notifyPipeFd?: number;
  notifySocket?: { fd: number; path: string; watchdogMs?: number };
  fdChannelFd?: number;
}

/** A relayed connection as it travels in a batch of the descriptor channel, next to its descriptor. */
export interface AdoptEntry {
  relay: number;
  listener: string;
  state?: unknown;
  /** Staged: its old worker still serves it; the state comes later (`adopt-states`). */
  staged?: boolean;
}

/** What the master does with a worker's descriptor channel. */
export interface DescriptorLink {
  /** Batch `id`, which the worker announced, with its descriptors (now the master's); undefined if it never came. */
  take(id: number): Batch | undefined;
  /**
   * Sends `entry` with a copy of `fd` in the next batch and announces the batch to the worker
   * (`adopt-batch`); resolves once announced (the master's copy may then be closed).
   */
  send(entry: AdoptEntry, fd: number): Promise<void>;
}

/** A timer the master can cancel. */
export interface TimerHandle {
  cancel(): void;
}

/** The master's whole view of the operating system. */
export interface Os {
  spawnWorker(request: SpawnRequest, callbacks: WorkerCallbacks): WorkerProcess;
  /**
   * A worker the previous program of this master spawned (a re-exec, supervisor/reexec.ts): its
   * descriptors are this process's now; its exit is reaped here, since libuv waits only for its own.
   */
  adoptWorker?(carried: CarriedProcess, callbacks: WorkerCallbacks): WorkerProcess;
  resolveCommand(command: string, env: Record<string, string | undefined>, cwd: string): string;
  /** Whether process `pid` waits for connections on a socket with one of these inodes (see proc.ts). */
  pollsListeners(pid: number, inodes: ReadonlySet<number>): boolean;
  /** How many connections accepted on these listeners process `pid` holds (see proc.ts). */
  countConnections(pid: number, listeners: readonly ListenerAddress[]): number | undefined;
  /** The TCP ports process `pid` and its descendants listen on, besides the sockets with these inodes (see proc.ts). */
  ownListeningPorts(pid: number, except: ReadonlySet<number>): number[];
  /** Why connections are counted the slow way (all of /proc/net/tcp), once netlink failed; else undefined. */
  connectionCountFallback?(): string | undefined;
  /** Gives a worker started at `startNice` its CPU priority back; why it could not, if so (priority.ts). */
  restorePriority?(pid: number): string | undefined;
  now(): number;
  setTimer(ms: number, fn: () => void): TimerHandle;
}

/** How a worker whose master died before it could be given the death signal exits, without running the command. */
export const ORPHANED_EXIT_CODE = 70;

/** With a watchdog (WATCHDOG_USEC set), WATCHDOG_PID names the worker too, as systemd sets it. */
const WATCHDOG_PID_STEP = 'if [ -n "$WATCHDOG_USEC" ]; then WATCHDOG_PID=$$; export WATCHDOG_PID; fi;';

/**
 * Sets LISTEN_PID (and WATCHDOG_PID when there is a watchdog) to the worker's own pid, which only the worker knows, then
 * replaces itself with the command: `exec` keeps the pid, and the command and
 * its arguments arrive as "$0" "$@", never parsed by the shell.
 */

const LISTEN_PID_TRAMPOLINE = `LISTEN_PID=$$; export LISTEN_PID; ${WATCHDOG_PID_STEP} exec "$0" "$@"`;

/**
 * Run by setpriv once the death signal is set: if the master died before that (between the fork and
 * setpriv's prctl), nobody will ever send it, and a worker holding the listeners would run on
 * orphaned; so the command runs only if the parent is still the master. "$1" is the master's pid.
 */
const PARENT_CHECK = `[ "$PPID" = "$1" ] || exit ${ORPHANED_EXIT_CODE}; shift; exec "$@"`;

/**
 * The same, through util-linux's `setpriv --pdeathsig`: the kernel sends the
 * worker the drain signal if the master dies, even by SIGKILL, so that a
 * worker in any language drains instead of running on orphaned. "$0" is
 * setpriv, "$1" the signal, "$2" the master's pid; `deathSignal` and `master`
 * are shell variables, not exported. setpriv runs the command through PARENT_CHECK.
 */
const PARENT_DEATH_TRAMPOLINE = `LISTEN_PID=$$; export LISTEN_PID; ${WATCHDOG_PID_STEP} deathSignal=$1; master=$2; shift 2; exec "$0" --pdeathsig "$deathSignal" -- /bin/sh -c '${PARENT_CHECK}' baton-worker "$master" "$@"`;

/** util-linux's setpriv, where there is one (it is essential on Debian; absent on macOS). */
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((candidate) => {
  try {
    accessSync(candidate, fsConstants.X_OK);
    return true;
  } catch {
    return false;
  }
});

/** The argv that starts a worker through a trampoline (see above). */
export function trampolineArgs(
  request: Pick<SpawnRequest, 'command' | 'args' | 'parentDeathSignal'>,
  masterPid = process.pid,
): string[] {
  if (!SETPRIV) return ['-c', LISTEN_PID_TRAMPOLINE, request.command, ...request.args];
  return [
    '-c',
    PARENT_DEATH_TRAMPOLINE,
    SETPRIV,
    request.parentDeathSignal.replace(/^SIG/, ''),
    String(masterPid),
    request.command,
    ...request.args,
  ];
}

/** The notification sockets of this master's workers (NOTIFY_SOCKET). */
const notifySockets = new NotifySockets();

/**
 * A NOTIFY_SOCKET for a worker that gets a notify pipe: the same words, for servers written for systemd.
 * Undefined, with a warning, where the socket cannot be made (no koffi, or not Linux).
 */
function openNotifyChannel(
  request: SpawnRequest,
  callbacks: WorkerCallbacks,
  onLine: (line: string) => void,
): NotifyChannel | undefined {
  if (request.notifyPipe === false) return undefined;
  try {
    const watchdogUs = Number(request.env.WATCHDOG_USEC);
    return notifySockets.openChannel(
      {
        uid: request.uid,
        gid: request.gid,
        ...(watchdogUs > 0 ? { watchdogMs: watchdogUs / 1000 } : {}),
      },
      onLine,
    );
  } catch (error) {
    callbacks.onWarning?.(
      `no NOTIFY_SOCKET for this worker (${error instanceof Error ? error.message : String(error)}): it can still say ready on the notify pipe (BATON_NOTIFY_FD), over IPC, or be seen by --ready poll`,
    );
    return undefined;
  }
}

/**
 * A descriptor channel for a worker that gets a notify pipe (supervisor/fd-channel.ts): the master's
 * end, and the worker's end to pass on at fdChannelFd. Undefined, with a warning, where it cannot be
 * made (no koffi, or not Linux): handoff then goes over IPC alone.
 */
function openFdChannel(
  request: SpawnRequest,
  callbacks: WorkerCallbacks,
): { channel: FdChannel; peerFd: number } | undefined {
  if (request.notifyPipe === false) return undefined;
  try {
    return FdChannel.pair();
  } catch (error) {
    callbacks.onWarning?.(
      `no descriptor channel for this worker (${error instanceof Error ? error.message : String(error)}): live handoff moves its connections over IPC, one at a time`,
    );
    return undefined;
  }
}

/** A worker whose spawn threw: it says why on its stderr and exits (null, null) once the caller has it. */
function notStarted(error: unknown, callbacks: WorkerCallbacks): WorkerProcess {
  const reason = error instanceof Error ? error.message : String(error);
  queueMicrotask(() => {
    callbacks.onStderr(Buffer.from(`baton: the worker could not be started: ${reason}\n`));
    callbacks.onExit(null, null);
  });
  return {
    pid: undefined,
    kill: () => false,
    send: (_message, _handle, onSent) => onSent(new Error(`the worker was never started: ${reason}`)),
  };
}

/** The real operating system. */
export const realOs: Os = {
  spawnWorker(request, callbacks) {
    // A server behind a wrapper (npm start) names itself with MAINPID=: signals go to it (main-pid.ts).
    let target: SignalTarget | undefined;
    const notified = (line: string) => {
      target?.onNotify(line);
      callbacks.onNotify(line);
    };
    const notifyChannel = openNotifyChannel(request, callbacks, notified);
    const fdChannel = openFdChannel(request, callbacks);
    const channelFd = fdChannelFd(request.listenerFds.length);
    // Node's child_process, not execa: a master spawns workers all its life and needs nothing execa
    // adds, while importing execa costs about 20 MB of the master's memory (bench scenario 5).
    let child: ChildProcess;
    try {
      child = spawn('/bin/sh', trampolineArgs(request), {
        cwd: request.cwd,
        env: {
          ...request.env,
          ...(notifyChannel ? { NOTIFY_SOCKET: notifyChannel.path } : {}),
          ...(fdChannel ? { [FD_CHANNEL_ENV]: String(channelFd) } : {}),
        },
        stdio: [
          ...inheritFds(['ignore', 'inherit', 'pipe'], request.listenerFds),
          ...(request.notifyPipe === false ? [] : (['pipe'] as const)),
          // The descriptor channel's worker end, inherited like the listeners, right after the notify pipe.
          ...(fdChannel ? [fdChannel.peerFd] : []),
          'ipc',
        ],
        serialization: 'json',
        // Own process group: a terminal's Ctrl-C reaches the master only, which drains the workers.
        detached: true,
        // libuv drops supplementary groups when it changes them (setgroups before setgid/setuid).
        ...(request.uid === undefined ? {} : { uid: request.uid }),
        ...(request.gid === undefined ? {} : { gid: request.gid }),
      });
    } catch (error) {
      // spawn(2) refused at once (EPERM from the uid switch, E2BIG, ...): nothing started. The worker
      // exits like one that could not start, its reason on its stderr, and nothing it was given leaks.
      if (fdChannel) {
        closeDescriptor(fdChannel.peerFd);
        fdChannel.channel.close();
      }
      notifyChannel?.close();
      return notStarted(error, callbacks);
    }
    // Now, while the worker is still the trampoline's shell: the threads a runtime starts later inherit it.
    if (request.startNice && child.pid !== undefined) startAtPriority(child.pid, request.startNice);
    // The worker has its own copy now (or the spawn failed): the master keeps only its end.
    if (fdChannel) closeDescriptor(fdChannel.peerFd);
    child.stderr?.on('data', (chunk: Buffer) => callbacks.onStderr(chunk));
    const signals = new SignalTarget(child.pid);
    target = signals;
    const notify =
      request.notifyPipe === false
        ? undefined
        : (child.stdio?.[notifyFd(request.listenerFds.length)] as Readable | null | undefined);
    if (notify) {
      readNotifyLines(notify, { ...callbacks, onNotify: notified });
    }
    // Each message arrives here once, in the order the worker sent it, with its handle if any (a
    // handed-off connection).
    child.on('message', (message: unknown, handle: unknown) => callbacks.onMessage(message, handle));
    const sends = new PendingSends();
    const batches =
      fdChannel &&
      descriptorLink(fdChannel.channel, (notice, onSent) => {
        const done = sends.add(onSent);
        try {
          child.send(notice, done);
        } catch (error) {
          done(error instanceof Error ? error : new Error(String(error)));
        }
      });
    let exited = false;
    const onExit = (exitCode: number | null, signal: NodeJS.Signals | null) => {
      if (exited) return;
      exited = true;
      batches?.inbox.close();
      notifyChannel?.close();
      // What is left of the worker's group (a child that let go of stdio) goes with it, as systemd's
      // KillMode=control-group does: nothing of a worker outlives it.
      if (child.pid !== undefined) killLeftovers(child.pid);
      callbacks.onExit(exitCode, signal);
    };
    // 'close': the process exited and its stdio is read to the end (its last notify line included).
    child.on('close', onExit);
    // It could not be spawned at all (or not signalled: then 'close' still comes).
    child.on('error', () => {
      if (child.pid === undefined) onExit(null, null);
    });
    return {
      get pid() {
        return signals.pid;
      },
      ...(batches ? { descriptors: batches.link } : {}),
      kill: (signal) =>
        signals.kill(signal, (toSpawned) => {
          try {
            return child.kill(toSpawned);
          } catch {
            return false;
          }
        }),
      send: (message, handle, onSent) => {
        const done = sends.add(onSent);
        if (handle) {
          sendRawHandle(child, message, handle, done);
          return;
        }
        try {
          child.send(message, done);
        } catch (error) {
          done(error instanceof Error ? error : new Error(String(error)));
        }
      },
      flushed: () => sends.flushed(),
      carry: () => {
        const ipcFd = (child.channel as { fd?: number } | null | undefined)?.fd;
        if (exited || child.pid === undefined || ipcFd === undefined) return undefined;
        const stderrFd = streamFd(child.stderr);
        const notifyPipeFd = notify ? streamFd(notify) : undefined;
        const watchdogUs = Number(request.env.WATCHDOG_USEC);
        return {
          pid: child.pid,
          ...(signals.mainPid === undefined ? {} : { mainPid: signals.mainPid }),
          ipcFd,
          ...(stderrFd === undefined ? {} : { stderrFd }),
          ...(notifyPipeFd === undefined ? {} : { notifyPipeFd }),
          ...(notifyChannel
            ? {
                notifySocket: {
                  fd: notifyChannel.fd,
                  path: notifyChannel.path,
                  ...(watchdogUs > 0 ? { watchdogMs: watchdogUs / 1000 } : {}),
                },
              }
            : {}),
          ...(fdChannel ? { fdChannelFd: fdChannel.channel.fd } : {}),
        };
      },
    };
  },

  adoptWorker(carried, callbacks) {
    const signals = new SignalTarget(carried.pid, carried.mainPid);
    const notified = (line: string) => {
      signals.onNotify(line);
      callbacks.onNotify(line);
    };
    const sends = new PendingSends();
    const ipc = new InheritedIpcChannel(
      carried.ipcFd,
      (message) => callbacks.onMessage(message),
      () => {},
    );
    // The streams still open: the exit is reported once they have been read to the end, as 'close' is.
    const streams: net.Socket[] = [];
    const stderr = carried.stderrFd === undefined ? undefined : readOnlySocket(carried.stderrFd);
    if (stderr) {
      stderr.on('data', (chunk: Buffer) => callbacks.onStderr(chunk));
      streams.push(stderr);
    }
    const notify = carried.notifyPipeFd === undefined ? undefined : readOnlySocket(carried.notifyPipeFd);
    if (notify) {
      readNotifyLines(notify, { ...callbacks, onNotify: notified });
      streams.push(notify);
    }
    const socket = carried.notifySocket;
    const notifyChannel =
      socket && notifySockets.adoptChannel(socket.fd, socket.path, socket.watchdogMs, notified);
    const channel = carried.fdChannelFd === undefined ? undefined : new FdChannel(carried.fdChannelFd);
    const batches =
      channel && descriptorLink(channel, (notice, onSent) => ipc.send(notice, sends.add(onSent)));
    let exited = false;
    const finish = (end: ChildEnd) => {
      if (exited) return;
      exited = true;
      batches?.inbox.close();
      notifyChannel?.close();
      ipc.close();
      for (const stream of streams) stream.destroy();
      killLeftovers(carried.pid);
      callbacks.onExit(end.exitCode, end.signal);
    };
    adoptedChildren.watch(carried.pid, (end) => {
      // Its last stderr and notify lines first, as 'close' waits for them; a grandchild holding a pipe
      // open does not hold the exit back for more than a moment.
      const open = streams.filter((stream) => !stream.closed);
      if (open.length === 0) {
        finish(end);
        return;
      }
      const grace = setTimeout(() => finish(end), STREAM_END_GRACE_MS);
      let left = open.length;
      for (const stream of open) {
        stream.once('close', () => {
          left--;
          if (left === 0) {
            clearTimeout(grace);
            finish(end);
          }
        });
      }
    });
    return {
      get pid() {
        return signals.pid;
      },
      ...(batches ? { descriptors: batches.link } : {}),
      kill: (signal) =>
        signals.kill(signal, (toSpawned) => {
          if (exited) return false;
          try {
            process.kill(carried.pid, toSpawned);
            return true;
          } catch {
            return false;
          }
        }),
      send: (message, handle, onSent) => {
        if (handle) {
          // Node's handle messages are not spoken on an inherited channel (node-internals.ts).
          onSent(new Error('an adopted worker takes connections on its descriptor channel only'));
          return;
        }
        ipc.send(message, sends.add(onSent));
      },
      flushed: () => sends.flushed(),
      carry: () => {
        if (exited) return undefined;
        const stderrFd = stderr && !stderr.closed ? streamFd(stderr) : undefined;
        const notifyPipeFd = notify && !notify.closed ? streamFd(notify) : undefined;
        return {
          pid: carried.pid,
          ...(signals.mainPid === undefined ? {} : { mainPid: signals.mainPid }),
          ipcFd: carried.ipcFd,
          ...(stderrFd === undefined ? {} : { stderrFd }),
          ...(notifyPipeFd === undefined ? {} : { notifyPipeFd }),
          ...(socket && notifyChannel ? { notifySocket: socket } : {}),
          ...(channel && !channel.failed ? { fdChannelFd: channel.fd } : {}),
        };
      },
    };
  },

  resolveCommand(command, env, cwd) {
    const candidates = command.includes('/')
      ? [path.resolve(cwd, command)]
      : (env.PATH ?? '').split(':').map((dir) => path.resolve(cwd, dir || '.', command));
    for (const candidate of candidates) {
      try {
        if (statSync(candidate).isFile()) {
          accessSync(candidate, fsConstants.X_OK);
          return candidate;
        }
      } catch {
        // not here, or not executable: try the next directory
      }
    }
    throw new CommandNotFoundError(command);
  },

  pollsListeners,
  countConnections,
  ownListeningPorts,
  connectionCountFallback,
  restorePriority,

  now: () => Date.now(),

  setTimer(ms, fn) {
    const timer = setTimeout(fn, ms);
    return { cancel: () => clearTimeout(timer) };
  },
};

/**
 * A worker's descriptor channel as the master uses it: the batches it sent (`inbox`), and the
 * connections relayed to it, in batches each announced with `send` (`adopt-batch`).
 */
function descriptorLink(
  channel: FdChannel,
  send: (notice: object, onSent: (error: Error | null) => void) => void,
): { inbox: BatchInbox; link: DescriptorLink } {
  const inbox = new BatchInbox(channel);
  const outbox = new BatchOutbox<AdoptEntry>(
    channel,
    (batch, entries) =>
      new Promise((resolve, reject) => {
        const notice = { baton: 'adopt-batch', batch, relays: entries.map((entry) => entry.relay) };
        send(notice, (error) => (error ? reject(error) : resolve()));
      }),
  );
  return {
    inbox,
    link: { take: (id) => inbox.take(id), send: (entry, fd) => outbox.send(entry, fd) },
  };
}

/** How long an adopted worker's exit waits for its stderr and notify pipe to end. */
const STREAM_END_GRACE_MS = 1_000;

/** A pipe this process only reads, inherited as a bare descriptor. */
function readOnlySocket(fd: number): net.Socket {
  const socket = new net.Socket({ fd, readable: true, writable: false });
  socket.on('error', () => {});
  return socket;
}

/** IPC messages handed to Node and not yet written: a re-exec waits for none to be left. */
class PendingSends {
  private count = 0;
  private waiting: Array<() => void> = [];

  /** `onSent`, counted until it runs. */
  add(onSent: (error: Error | null) => void): (error: Error | null) => void {
    this.count++;
    let called = false;
    return (error) => {
      if (called) return;
      called = true;
      this.count--;
      if (this.count === 0) for (const resolve of this.waiting.splice(0)) resolve();
      onSent(error);
    };
  }

  flushed(): Promise<void> {
    if (this.count === 0) return Promise.resolve();
    return new Promise((resolve) => this.waiting.push(resolve));
  }
}

/**
 * The workers this master adopted and must reap itself (libuv reaps only what it spawned): waitpid on
 * each at every SIGCHLD, and on a slow timer in case a signal was merged or came before the handler.
 */
class AdoptedChildren {
  private readonly watched = new Map<number, (end: ChildEnd) => void>();
  private timer: NodeJS.Timeout | undefined;
  private readonly onSignal = () => this.reap();

  watch(pid: number, onEnd: (end: ChildEnd) => void): void {
    this.watched.set(pid, onEnd);
    if (!this.timer) {
      process.on('SIGCHLD', this.onSignal);
      this.timer = setInterval(() => this.reap(), ADOPTED_REAP_MS);
      this.timer.unref();
    }
    // It may have exited while the master was re-executing: reaped now.
    queueMicrotask(() => this.reap());
  }

  private reap(): void {
    for (const [pid, onEnd] of [...this.watched]) {
      let end: ChildEnd | undefined | 'not-a-child';
      try {
        end = reapChild(pid);
      } catch {
        continue;
      }
      if (end === undefined) continue;
      this.watched.delete(pid);
      onEnd(end === 'not-a-child' ? { exitCode: null, signal: null } : end);
    }
    if (this.watched.size === 0 && this.timer) {
      clearInterval(this.timer);
      this.timer = undefined;
      process.off('SIGCHLD', this.onSignal);
    }
  }
}

/** How often adopted workers are checked for an exit besides SIGCHLD. */
const ADOPTED_REAP_MS = 500;

const adoptedChildren = new AdoptedChildren();

/** SIGKILL to what is left of an exited worker's process group, if anything is. */
function killLeftovers(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // the group is empty: the usual case
  }
}

/** A stdio array that passes `fds` on at 3, 4, ... */
export function inheritFds(
  standard: readonly [StdioName, StdioName, StdioName],
  fds: readonly number[],
): Array<StdioName | number> {
  return [...standard, ...fds];
}

type StdioName = 'ignore' | 'inherit' | 'pipe';

/** The index of the notify pipe in a worker's descriptors: right after its listeners. */
export function notifyFd(listenerCount: number): number {
  return 3 + listenerCount;
}

/** The index of the descriptor channel in a worker's descriptors: right after its notify pipe. */
export function fdChannelFd(listenerCount: number): number {
  return notifyFd(listenerCount) + 1;
}

/** The longest notify line kept; a worker that writes more without a newline is cut off. */
const MAX_NOTIFY_LINE = 4096;

function readNotifyLines(stream: Readable, callbacks: WorkerCallbacks): void {
  let partial = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = (lines.pop() ?? '').slice(-MAX_NOTIFY_LINE);
    for (const line of lines) if (line.trim() !== '') callbacks.onNotify(line.trim());
  });
  stream.on('error', () => {});
}
