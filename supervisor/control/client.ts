/**
 * The CLI's side of the control socket: connect, send a request, read its
 * answer line by line; and find the master to talk to (by name, by path, by pid).
 */
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { ControlProtocolError, NoMasterError, UsageError } from '../errors.js';
import { pollsListeners } from '../proc.js';
import { LineBuffer } from './lines.js';
import { type AnswerLine, encodeLine, type FinalAnswer } from './protocol.js';
import { controlDirectories, SOCKET_SUFFIX, socketPathIn } from './socket-path.js';

/** How long the CLI waits for the master to accept a connection. */
export const CONNECT_TIMEOUT_MS = 5000;
/** How long a quick question (is a master there? which pid?) waits for its answer. */
export const PROBE_TIMEOUT_MS = 2000;
/** The longest answer line the CLI reads (a status of many workers is long, but not this long). */
export const MAX_ANSWER_LINE_BYTES = 64 * 1024 * 1024;

/** One connection to a master. */
export class ControlClient {
  private readonly input = new LineBuffer(MAX_ANSWER_LINE_BYTES);
  private readonly received: AnswerLine[] = [];
  private wake: (() => void) | undefined;
  private failure: Error | undefined;

  private constructor(
    private readonly socket: net.Socket,
    readonly path: string,
  ) {
    socket.on('data', (chunk: Buffer) => {
      const { lines, tooLong } = this.input.push(chunk);
      for (const line of lines) this.receive(line);
      if (tooLong)
        this.fail(
          new ControlProtocolError(
            'line-too-long',
            `The master at ${path} sent an answer line that is too long.`,
          ),
        );
    });
    socket.on('error', (error) => this.fail(error));
    socket.on('close', () =>
      this.fail(
        new ControlProtocolError(
          'closed',
          `The master at ${path} closed the connection before its answer ended.`,
        ),
      ),
    );
  }

  /** Connects to the socket at `path`; NoMasterError when nobody answers there. */
  static connect(path: string, timeoutMs = CONNECT_TIMEOUT_MS): Promise<ControlClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ path });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new NoMasterError(path, `No master answered on ${path} within ${timeoutMs} ms.`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeAllListeners('error');
        resolve(new ControlClient(socket, path));
      });
      socket.once('error', (error: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        reject(unreachable(path, error));
      });
    });
  }

  /** Sends one request and yields every line of its answer: progress lines, then the final answer. */
  async *request(request: Record<string, unknown>): AsyncGenerator<AnswerLine, void> {
    this.socket.write(encodeLine(request));
    for (;;) {
      const line = await this.next();
      yield line;
      if ('ok' in line) return;
    }
  }

  /** Sends one request and returns its final answer, ignoring progress. */
  async ask(request: Record<string, unknown>): Promise<FinalAnswer> {
    let last: AnswerLine | undefined;
    for await (const line of this.request(request)) last = line;
    return last as FinalAnswer;
  }

  /** Closes the connection. */
  close(): void {
    this.socket.destroy();
  }

  private async next(): Promise<AnswerLine> {
    for (;;) {
      const line = this.received.shift();
      if (line) return line;
      if (this.failure) throw this.failure;
      await new Promise<void>((resolve) => {
        this.wake = resolve;
      });
    }
  }

  private receive(text: string): void {
    if (text.trim() === '') return;
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      this.fail(
        new ControlProtocolError(
          'bad-json',
          `${this.path} answered something that is not JSON: ${text.slice(0, 80)}`,
        ),
      );
      return;
    }
    if (typeof value !== 'object' || value === null || !('ok' in value || 'progress' in value)) {
      this.fail(
        new ControlProtocolError(
          'bad-answer',
          `${this.path} answered something that is not a baton answer: ${text.slice(0, 80)}`,
        ),
      );
      return;
    }
    this.received.push(value as AnswerLine);
    this.wakeUp();
  }

  private fail(error: Error): void {
    this.failure ??= error;
    this.socket.destroy();
    this.wakeUp();
  }

  private wakeUp(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }
}

function unreachable(path: string, error: NodeJS.ErrnoException): NoMasterError {
  const why =
    error.code === 'ENOENT'
      ? 'there is no socket there'
      : error.code === 'ECONNREFUSED'
        ? 'the socket is stale: the master that made it is gone'
        : error.code === 'EACCES'
          ? 'permission denied: the master belongs to another user'
          : error.message;
  return new NoMasterError(path, `No master answers on ${path}: ${why}.`, { cause: error });
}

/** Whether a master answers on `path`, and its pid if it said so in time. */
export type Probe = { live: true; pid: number | undefined } | { live: false };

/** Asks the socket at `path` for the master's pid; `live: false` when nothing listens there (a stale socket). */
export async function probeMaster(path: string): Promise<Probe> {
  let client: ControlClient;
  try {
    client = await ControlClient.connect(path, PROBE_TIMEOUT_MS);
  } catch (error) {
    const code = ((error as Error).cause as NodeJS.ErrnoException | undefined)?.code;
    if (code === 'ECONNREFUSED' || code === 'ENOENT') return { live: false };
    return { live: true, pid: undefined }; // something is there that we cannot talk to
  }
  const pid = (await quickStatus(client))?.pid;
  return { live: true, pid: typeof pid === 'number' ? pid : undefined };
}

/**
 * Asks a connected master for its status, waiting at most PROBE_TIMEOUT_MS; undefined when it does not
 * answer in time or refuses. Closes the connection.
 */
export async function quickStatus(client: ControlClient): Promise<Record<string, unknown> | undefined> {
  try {
    let timer: NodeJS.Timeout | undefined;
    const answer = await Promise.race([
      client.ask({ kind: 'status' }),
      new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), PROBE_TIMEOUT_MS);
      }),
    ]).finally(() => clearTimeout(timer));
    return answer?.ok ? (answer.status as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  } finally {
    client.close();
  }
}

/** How the CLI was told which master to talk to; none of them: the only master in the default directories. */
export interface MasterTarget {
  name?: string;
  control?: string;
  pid?: number;
}

/** Connects to the master that `target` names; NoMasterError when there is none, UsageError when it is ambiguous. */
export async function connectToMaster(
  target: MasterTarget,
  env: Record<string, string | undefined> = process.env,
  cwd: string = process.cwd(),
): Promise<ControlClient> {
  if (target.control !== undefined) return ControlClient.connect(target.control);
  const directories = controlDirectories(env, cwd);
  if (target.name !== undefined) {
    const paths = directories.map((directory) => socketPathIn(directory, target.name as string));
    const existing = paths.find((path) => isSocketFile(path));
    if (existing === undefined) {
      throw new NoMasterError(
        paths.join(', '),
        `No master named '${target.name}': no control socket at ${paths.join(' or ')}.`,
      );
    }
    return ControlClient.connect(existing);
  }
  if (target.pid !== undefined) return ControlClient.connect(controlSocketOfProcess(target.pid));
  return ControlClient.connect(await onlyLiveMaster(directories, cwd));
}

/** The folder process `pid` runs in, from /proc; undefined when it cannot be read. */
function cwdOf(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/cwd`);
  } catch {
    return undefined;
  }
}

/**
 * The master that answers in the default directories: the only one; else the only one running in
 * `cwd`; else the only one of the nearest directory where any answers (they are searched in order,
 * as PATH is: with XDG_RUNTIME_DIR set, its masters shadow those of ~/.baton and ./.baton).
 */
async function onlyLiveMaster(directories: string[], cwd: string): Promise<string> {
  const probes = await Promise.all(
    directories.flatMap((directory) =>
      socketsIn(directory).map(async (path) => ({ directory, path, probe: await probeMaster(path) })),
    ),
  );
  const live = probes.flatMap(({ directory, path, probe }) =>
    probe.live ? [{ directory, path, pid: probe.pid }] : [],
  );
  if (live.length === 1) return (live[0] as { path: string }).path;
  // Several masters of this user: the one that runs in this folder, if exactly one does.
  const here = live.filter(({ pid }) => pid !== undefined && cwdOf(pid) === cwd);
  if (here.length === 1) return (here[0] as { path: string }).path;
  if (live.length === 0) {
    throw new NoMasterError(
      directories.join(', '),
      `No baton master found: no live control socket in ${directories.join(' or ')} (start one with 'baton start', or say where with --name, --control or --pid).`,
    );
  }
  const nearest = live.filter(({ directory }) => directory === live[0]?.directory);
  if (nearest.length === 1) return (nearest[0] as { path: string }).path;
  throw new UsageError(
    `Several masters answer here (${nearest.map(({ path }) => path).join(', ')}); choose one with --name, --control or --pid ('baton list' shows them)`,
  );
}

function socketsIn(directory: string): string[] {
  try {
    return readdirSync(directory)
      .filter((entry) => entry.endsWith(SOCKET_SUFFIX))
      .map((entry) => `${directory}/${entry}`)
      .filter(isSocketFile);
  } catch {
    return []; // no such directory: no master there
  }
}

function isSocketFile(path: string): boolean {
  try {
    return lstatSync(path).isSocket();
  } catch {
    return false;
  }
}

/** In /proc/net/unix, the flag of a socket that listens (__SO_ACCEPTCON). */
const UNIX_LISTENING_FLAG = 0x10000;

/**
 * The control socket of the master with this pid, wherever it is (`--control` included), found
 * through Linux's /proc: the listening Unix socket among its descriptors that it polls.
 */
export function controlSocketOfProcess(pid: number): string {
  let descriptors: string[];
  try {
    descriptors = readdirSync(`/proc/${pid}/fd`);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    const why =
      code === 'ENOENT'
        ? 'there is no such process'
        : code === 'EACCES'
          ? 'permission denied: it belongs to another user'
          : (error as Error).message;
    throw new NoMasterError(`pid ${pid}`, `No master with pid ${pid}: ${why}.`, { cause: error });
  }
  const inodes = new Set<string>();
  for (const fd of descriptors) {
    try {
      const match = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (match) inodes.add(match[1] as string);
    } catch {
      // closed while we looked
    }
  }
  // Num RefCount Protocol Flags Type St Inode Path
  const listening = readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .slice(1)
    .map((line) => line.trim().split(/\s+/))
    .filter(
      (fields) =>
        fields.length >= 8 &&
        (Number.parseInt(fields[3] as string, 16) & UNIX_LISTENING_FLAG) !== 0 &&
        inodes.has(fields[6] as string),
    )
    .map((fields) => ({ inode: Number(fields[6]), path: fields.slice(7).join(' ') }));
  // Unix listeners (--listen unix:...) are listening sockets of the master too, but the master never
  // polls them (its workers accept); the control socket is the one it polls.
  const path =
    listening.length === 1
      ? listening[0]?.path
      : listening.find(({ inode }) => pollsListeners(pid, new Set([inode])))?.path;
  if (path === undefined) {
    throw new NoMasterError(`pid ${pid}`, `No master with pid ${pid}: that process has no control socket.`);
  }
  return path;
}
