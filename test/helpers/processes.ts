/**
 * Real processes for integration tests: a baton master started as its own process group, its log
 * read back line by line, and a kill that leaves no process of the tree behind.
 */
import {
  chmodSync,
  copyFileSync,
  cpSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import { execa } from 'execa';
import { OutputTail } from '../../supervisor/worker.js';
import { runCleanups } from './cleanup.js';
import { WaitTimeoutError, waitFor, withDeadline } from './wait.js';

/** The repository root, found from this file's compiled place (dist/test/helpers/processes.js). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url)).replace(/\/$/, '');

/** The name baton is installed under (package.json): apps import `${PACKAGE_NAME}/child`. */
export const PACKAGE_NAME = 'baton-supervisor';

/** The CLI entry point that `startBaton` runs. */
export const BATON_BIN = join(REPO_ROOT, 'bin', 'baton.js');

/** How long a log wait lasts when the test does not say. */
export const DEFAULT_LOG_TIMEOUT_MS = 10_000;

/** How long `killTree` waits for the killed processes to be gone. */
export const KILL_TIMEOUT_MS = 5_000;

/** How many lines of output a failed wait quotes. */
const OUTPUT_TAIL_LINES = 40;

/**
 * How much of a process's output (stdout and stderr) the helpers keep: the last 1 MiB. A worker that
 * floods its output at 100 MB/s would otherwise grow one string past V8's limit (`RangeError:
 * Invalid string length`) and dump it all into the failure.
 */
export const OUTPUT_TAIL_BYTES = 1024 * 1024;

/** The longest partial line kept while waiting for its end; a longer one is no log entry anyway. */
const MAX_LINE_CHARS = 64 * 1024;

/** One parsed JSON line of the master's stdout (pino: `msg`, `level`, and facts such as `gen`, `pid`). */
export type LogEntry = Record<string, unknown>;

/** How a process ended: one of the two is null. */
export interface ExitStatus {
  exitCode: number | null;
  signal: NodeJS.Signals | null;
}

/** Where and with what environment (added to the test's own) a process starts. */
export interface StartOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
}

/** Every process started in this test file and not yet killed, for `killAll`. */
const running = new Set<BatonProcess>();

/** A started master (or any tracked node process): its log, its exit, and a kill for its whole tree. */
export class BatonProcess {
  /** Parsed JSON lines of stdout, in order; other lines are only in `output`. */
  readonly logs: LogEntry[] = [];
  /** How many bytes the process has written to stdout and stderr in all. */
  outputBytes = 0;
  private readonly tail = new OutputTail(OUTPUT_TAIL_BYTES);
  private stdoutEnded = false;
  private readonly onChange = new Set<() => void>();
  private readonly exited: Promise<ExitStatus>;
  private readonly streamsClosed: Promise<unknown>;
  /** The process has exited and been reaped: its pid may be another process's by now. */
  private reaped = false;

  constructor(
    readonly pid: number,
    private readonly stdout: Readable,
    private readonly stderr: Readable,
    exited: Promise<ExitStatus>,
    streamsClosed: Promise<unknown>,
  ) {
    this.exited = exited;
    this.streamsClosed = streamsClosed;
    void exited.then(() => {
      this.reaped = true;
    });
    this.readLines(stdout, (line) => this.addLogLine(line));
    this.readLines(stderr, () => {});
    stdout.once('end', () => {
      this.stdoutEnded = true;
      this.notify();
    });
  }

  /** The last OUTPUT_TAIL_BYTES of what the process wrote to stdout and stderr, as received. */
  get output(): string {
    return this.tail.bytes().toString('utf8');
  }

  /** What was written after the first `mark` bytes (a value `outputBytes` had), as far as the tail holds it. */
  outputSince(mark: number): string {
    const kept = this.tail.bytes();
    return kept.subarray(Math.max(0, kept.length - (this.outputBytes - mark))).toString('utf8');
  }

  /** Resolves with the first log entry (already received or to come) that `match` accepts. */
  waitForLog(
    match: (entry: LogEntry) => boolean,
    timeoutMs = DEFAULT_LOG_TIMEOUT_MS,
    what = 'a matching log entry',
  ): Promise<LogEntry> {
    return new Promise((resolve, reject) => {
      let checked = 0;
      const finish = () => {
        clearTimeout(timer);
        this.onChange.delete(check);
      };
      const check = () => {
        for (; checked < this.logs.length; checked++) {
          const entry = this.logs[checked] as LogEntry;
          if (match(entry)) {
            finish();
            resolve(entry);
            return;
          }
        }
        if (this.stdoutEnded) {
          finish();
          reject(new Error(`baton's stdout closed before ${what}${this.outputTail()}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`${new WaitTimeoutError(timeoutMs, what).message}${this.outputTail()}`));
      }, timeoutMs);
      this.onChange.add(check);
      check();
    });
  }

  /** Resolves with the first log entry whose `msg` is `msg` and whose fields equal those of `extra`. */
  waitForLogMsg(
    msg: string,
    extra: Record<string, unknown> = {},
    timeoutMs = DEFAULT_LOG_TIMEOUT_MS,
  ): Promise<LogEntry> {
    const facts = Object.entries(extra);
    const what = facts.length === 0 ? `log "${msg}"` : `log "${msg}" with ${JSON.stringify(extra)}`;
    return this.waitForLog(
      (entry) => entry.msg === msg && facts.every(([key, value]) => isDeepStrictEqual(entry[key], value)),
      timeoutMs,
      what,
    );
  }

  /** The port of the listener `name`, from the master's `listener bound` log entry. */
  async listenPort(name: string, timeoutMs = DEFAULT_LOG_TIMEOUT_MS): Promise<number> {
    const entry = await this.waitForLog(
      (candidate) =>
        candidate.msg === 'listener bound' &&
        candidate.listener === name &&
        typeof candidate.port === 'number',
      timeoutMs,
      `log "listener bound" for listener ${name}`,
    );
    return entry.port as number;
  }

  /** Sends `sig` to the master only (not its group), as an operator would. */
  signal(sig: NodeJS.Signals): void {
    process.kill(this.pid, sig);
  }

  /** Resolves with how the master exited, or rejects after `timeoutMs`. */
  waitForExit(timeoutMs = DEFAULT_LOG_TIMEOUT_MS): Promise<ExitStatus> {
    return withDeadline(this.exited, timeoutMs, `baton (pid ${this.pid}) to exit`);
  }

  /**
   * SIGKILLs the master's process group, and the group and pid of every descendant in case a worker
   * was started in a group of its own, then waits until none of them is left and the pipes are closed.
   */
  async killTree(timeoutMs = KILL_TIMEOUT_MS): Promise<void> {
    running.delete(this);
    if (this.reaped) {
      // Pids wrap (pid_max is 32768 here) and tests start thousands of processes: the number of a
      // process reaped long ago may be a new process of another test by now, which must not be killed.
      // Only its old process group is left to kill, and only if no new process has taken the number
      // (while members of the group live, the kernel gives the number to nobody).
      if (!processAlive(this.pid)) killIgnoringGone(-this.pid);
      await waitFor(() => processAlive(this.pid) || !processGroupAlive(this.pid), {
        timeoutMs,
        what: `the process group of baton (pid ${this.pid}, exited) to be gone`,
      });
      await this.closeStreams(timeoutMs);
      return;
    }
    // Stopped first, so that it cannot start another worker between the snapshot and the kill (a test
    // that ends as a generation starts): a worker forked after the snapshot would escape, holding the
    // master's stdout open. Snapshot before the kill: once the master is dead its children are
    // re-parented and unfindable.
    killIgnoringGone(this.pid, 'SIGSTOP');
    const tree = [this.pid, ...descendants(this.pid)];
    const groups = new Set([this.pid, ...tree.flatMap((pid) => readProcStat(pid)?.pgrp ?? [])]);
    // Never the test runner's own group, whatever a worker did with its group.
    groups.delete(readProcStat(process.pid)?.pgrp ?? -1);
    for (const pgid of groups) killIgnoringGone(-pgid);
    for (const pid of tree) killIgnoringGone(pid);
    await waitFor(
      () => [...groups].every((pgid) => !processGroupAlive(pgid)) && tree.every((pid) => !processAlive(pid)),
      { timeoutMs, what: `process tree of baton (pid ${this.pid}) to be gone` },
    );
    await this.closeStreams(timeoutMs);
  }

  /** Every writer is dead, so the pipes end; the deadline only guards against a stray holder. */
  private async closeStreams(timeoutMs: number): Promise<void> {
    try {
      await withDeadline(
        this.streamsClosed,
        timeoutMs,
        `stdout and stderr of baton (pid ${this.pid}) to close`,
      );
    } finally {
      this.stdout.destroy();
      this.stderr.destroy();
    }
  }

  private readLines(stream: Readable, onLine: (line: string) => void): void {
    const decoder = new StringDecoder('utf8');
    let partial = '';
    stream.on('data', (chunk: Buffer) => {
      this.outputBytes += chunk.length;
      this.tail.push(chunk);
      const lines = (partial + decoder.write(chunk)).split('\n');
      partial = (lines.pop() ?? '').slice(-MAX_LINE_CHARS);
      for (const line of lines) onLine(line);
    });
    stream.once('end', () => {
      partial += decoder.end();
      if (partial !== '') onLine(partial);
      partial = '';
    });
  }

  private addLogLine(line: string): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      return; // worker output passes through the same pipe; only the JSON lines are log entries
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return;
    this.logs.push(parsed as LogEntry);
    this.notify();
  }

  private notify(): void {
    for (const listener of [...this.onChange]) listener();
  }

  private outputTail(): string {
    const lines = this.output.trimEnd().split('\n').slice(-OUTPUT_TAIL_LINES);
    return `\n--- last ${lines.length} lines of baton (pid ${this.pid}) output ---\n${lines.join('\n')}`;
  }
}

/**
 * Starts `node <nodeArgs>` (the Node running the tests) as a tracked process in its own process group,
 * stdout and stderr piped. `startBaton` is this with bin/baton.js; tests of the helpers use it directly.
 */
export function startNode(nodeArgs: string[], options: StartOptions = {}): BatonProcess {
  return startProcess(process.execPath, nodeArgs, options);
}

/** Starts any program as a tracked process (killed by `killAll`), in its own process group. */
export function startProcess(
  file: string,
  args: string[],
  { cwd = REPO_ROOT, env = {} }: StartOptions = {},
): BatonProcess {
  const subprocess = execa(file, args, {
    cwd,
    env,
    // Its own process group, so that a single kill(-pid) reaches the master and every worker.
    detached: true,
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: false,
    reject: false,
  });
  const child = subprocess.nodeChildProcess;
  if (subprocess.pid === undefined || child.stdout === null || child.stderr === null) {
    throw new Error(`could not start ${file} ${args.join(' ')}`);
  }
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once('exit', (exitCode, signal) => resolve({ exitCode, signal }));
  });
  const tracked = new BatonProcess(subprocess.pid, child.stdout, child.stderr, exited, subprocess);
  running.add(tracked);
  return tracked;
}

/** Starts `baton <args>` (for example `['start', '--listen', 'http=tcp://127.0.0.1:0', '--', node, 'server.js']`). */
export function startBaton(args: string[], options: StartOptions = {}): BatonProcess {
  // Unless the test decides, masters of this test file put their control sockets in a folder of
  // their own: masters of test files running in parallel may derive the same name.
  const env =
    options.env && 'XDG_RUNTIME_DIR' in options.env
      ? options.env
      : { XDG_RUNTIME_DIR: privateRuntimeDir(), ...options.env };
  // A client command also looks in ./.baton: run it where no other test's master left a socket.
  const client = CLIENT_COMMANDS.has(args[0] ?? '') && options.cwd === undefined && env.XDG_RUNTIME_DIR;
  return startNode([BATON_BIN, ...args], {
    ...options,
    env,
    ...(client ? { cwd: env.XDG_RUNTIME_DIR } : {}),
  });
}

/** The commands that talk to a running master rather than start one. */
const CLIENT_COMMANDS = new Set(['reload', 'status', 'stop', 'scale', 'inject']);

let runtimeDir: string | undefined;

/** A private (0700) folder for this test file's control sockets, removed when the test process exits. */
function privateRuntimeDir(): string {
  if (!runtimeDir) {
    const dir = mkdtempSync(join(tmpdir(), 'baton-run-'));
    runtimeDir = dir;
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  }
  return runtimeDir;
}

/**
 * For `afterEach`: stops every load loop and client registered in this test, then kills the process
 * tree of every process started and not yet killed, whether the test passed or not.
 */
export async function killAll(): Promise<void> {
  const results = await Promise.allSettled([
    runCleanups(),
    ...[...running].map((tracked) => tracked.killTree()),
  ]);
  const errors = results.flatMap((result) => (result.status === 'rejected' ? [result.reason] : []));
  if (errors.length > 0) throw new AggregateError(errors, 'killAll could not clean up everything');
}

/** The fields of /proc/<pid>/stat that the helpers need. */
interface ProcStat {
  pid: number;
  state: string;
  ppid: number;
  pgrp: number;
}

function readProcStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined; // gone between listing and reading
  }
  // The command name (field 2) is in parentheses and may itself contain spaces and parentheses.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { pid, state: fields[0] ?? '', ppid: Number(fields[1]), pgrp: Number(fields[2]) };
}

/**
 * When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22); undefined when gone.
 * A pid and its start time name one process: pids wrap, and the number may be another's by now.
 */
export function processStartTime(pid: number): number | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[19]);
  } catch {
    return undefined;
  }
}

function readAllProcStats(): ProcStat[] {
  return readdirSync('/proc')
    .filter((name) => /^\d+$/.test(name))
    .flatMap((name) => readProcStat(Number(name)) ?? []);
}

function killIgnoringGone(target: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(target, signal);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

/** True if `kill(target, 0)` finds something; EPERM means it exists but is not ours. */
function signalable(target: number): boolean {
  try {
    process.kill(target, 0);
    return true;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ESRCH') return false;
    if (code === 'EPERM') return true;
    throw error;
  }
}

/** The live (not zombie) descendants of `pid`: children, their children, and so on, from /proc. */
export function descendants(pid: number): number[] {
  const childrenOf = new Map<number, ProcStat[]>();
  for (const stat of readAllProcStats()) {
    const siblings = childrenOf.get(stat.ppid) ?? [];
    siblings.push(stat);
    childrenOf.set(stat.ppid, siblings);
  }
  const found: number[] = [];
  const queue = [pid];
  for (let parent = queue.shift(); parent !== undefined; parent = queue.shift()) {
    for (const child of childrenOf.get(parent) ?? []) {
      if (child.state !== 'Z') found.push(child.pid);
      queue.push(child.pid);
    }
  }
  return found;
}

/**
 * True while a live process is in process group `pgid`. `kill(-pgid, 0)` also finds zombies, which
 * are dead but wait for a parent (or an init that may never reap) to collect them, so /proc decides.
 */
export function processGroupAlive(pgid: number): boolean {
  if (!signalable(-pgid)) return false;
  return readAllProcStats().some((stat) => stat.pgrp === pgid && stat.state !== 'Z');
}

/** True while process `pid` exists and is not a zombie. */
export function processAlive(pid: number): boolean {
  if (!signalable(pid)) return false;
  return readProcStat(pid)?.state !== 'Z';
}

/** A private copy of the example app, to change (`VERSION`, files) between generations. */
export interface AppDir {
  /** The copy of app/; run the app from here (`cwd: dir`, command `node server.js`). */
  dir: string;
  /** Writes `VERSION`, which the app reads at start-up. */
  setVersion(version: string): void;
  /** Writes `name` (relative to `dir`), creating folders on the way. */
  writeFile(name: string, contents: string): void;
  /** Removes the copy. */
  cleanup(): void;
}

/** Who may run the app copy: this test's user only, or every user (workers run with `--user nobody`). */
export interface AppDirOptions {
  /**
   * Every user can enter and read the copy, and `baton/child` is copied into it rather than linked to
   * the repository, which may sit in a folder only its owner can enter (a clone made in `mktemp -d`).
   */
  forAllUsers?: boolean;
}

/**
 * Copies app/ into a fresh temp dir with `node_modules/baton-supervisor` linked to the repository (or copied, for
 * all users), so that `import ... from 'baton-supervisor/child'` resolves to the built child API (dist/child).
 */
export function makeAppDir({ forAllUsers = false }: AppDirOptions = {}): AppDir {
  const dir = mkdtempSync(join(tmpdir(), 'baton-app-'));
  cpSync(join(REPO_ROOT, 'app'), dir, { recursive: true });
  mkdirSync(join(dir, 'node_modules'), { recursive: true });
  if (forAllUsers) {
    const linked = join(dir, 'node_modules', PACKAGE_NAME);
    mkdirSync(linked);
    copyFileSync(join(REPO_ROOT, 'package.json'), join(linked, 'package.json'));
    cpSync(join(REPO_ROOT, 'dist', 'child'), join(linked, 'dist', 'child'), { recursive: true });
    openToAllUsers(dir);
  } else {
    symlinkSync(REPO_ROOT, join(dir, 'node_modules', PACKAGE_NAME), 'dir');
  }
  const writeFile = (name: string, contents: string) => {
    const path = join(dir, name);
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, contents);
  };
  return {
    dir,
    // No trailing newline: the app may or may not trim what it reads.
    setVersion: (version) => writeFile('VERSION', version),
    writeFile,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** Lets every user enter each folder under `path` and read each file (execute bits stay as they are). */
function openToAllUsers(path: string): void {
  const stat = statSync(path);
  if (stat.isDirectory()) {
    chmodSync(path, 0o755);
    for (const name of readdirSync(path)) openToAllUsers(join(path, name));
  } else if (stat.isFile()) {
    chmodSync(path, (stat.mode & 0o777) | 0o444);
  }
}

/** A copy of the Node running the tests that every user can execute, and its removal. */
export interface NodeForAllUsers {
  /** The copy's absolute path, in a folder of its own (mode 0755) under the system's temp dir. */
  node: string;
  cleanup(): void;
}

/**
 * Copies the Node binary running the tests (the pinned one, under the repository's node_modules) to a
 * folder every user can enter: a process dropped to another uid cannot execute the original when the
 * repository sits in a folder only its owner can enter (a clone made in `mktemp -d`, mode 0700).
 */
export function copyNodeForAllUsers(): NodeForAllUsers {
  const dir = mkdtempSync(join(tmpdir(), 'baton-node-'));
  chmodSync(dir, 0o755);
  const node = join(dir, 'node');
  copyFileSync(process.execPath, node);
  chmodSync(node, 0o755);
  return { node, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
