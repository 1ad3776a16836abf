/**
 * The bench's processes: client processes (load generators) forked with an IPC channel, baton
 * masters and plain apps started through the integration tests' helpers, /proc readings of CPU and
 * memory, and one cleanup that kills every tree the bench started, whatever happened.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ownListeningPorts } from '../supervisor/proc.js';
import {
  type AppDir,
  type BatonProcess,
  descendants,
  killAll,
  makeAppDir,
  processAlive,
  REPO_ROOT,
  startBaton,
  startNode,
  startProcess,
} from '../test/helpers/processes.js';
import { waitFor, withDeadline } from '../test/helpers/wait.js';
import type {
  ClientConfig,
  FromClient,
  HttpLoadConfig,
  HttpLoadResult,
  IdleConfig,
  IdleResult,
  SessionsConfig,
  SessionsResult,
  ToClient,
} from './clients/protocol.js';
import { stopEveryPm2Peer } from './pm2.js';

export { type AppDir, type BatonProcess, processAlive, REPO_ROOT, startNode, waitFor, withDeadline };

/** The Node running the bench (Node 24 from the project); workers and apps run on the same one. */
export const NODE = process.execPath;

/** The bench's own test apps (plain JavaScript, run from the source tree). */
export const HELLO_APP = join(REPO_ROOT, 'bench', 'apps', 'hello.js');
export const CLUSTER_APP = join(REPO_ROOT, 'bench', 'apps', 'cluster.js');
/** hello.js without the child API: it never reports its connections (run with `--no-preload`). */
export const PLAIN_APP = join(REPO_ROOT, 'bench', 'apps', 'plain.js');
/**
 * The WebSocket game of the handoff tests (`ws` 8, sessions handed off live), run as it is so that the
 * bench measures the app the tests check. It reads ./VERSION from its working directory.
 */
export const WS_GAME_APP = join(REPO_ROOT, 'test', 'fixtures', 'ws-game.mjs');

/** How long a master or an app may take to come up before the scenario fails. */
export const START_TIMEOUT_MS = 30_000;

/** How long a reload may take to make its generation active, or to retire the old one. */
export const RELOAD_TIMEOUT_MS = 30_000;

/** How long a client process may take to answer `stop` with its result. */
const RESULT_TIMEOUT_MS = 30_000;

const CLIENT_SCRIPTS = {
  'http-load': fileURLToPath(new URL('./clients/http-load.js', import.meta.url)),
  sessions: fileURLToPath(new URL('./clients/sessions.js', import.meta.url)),
  idle: fileURLToPath(new URL('./clients/idle.js', import.meta.url)),
} as const;

type ReadyMessage = Extract<FromClient<unknown>, { type: 'ready' }>;
type ProbedMessage = Extract<FromClient<unknown>, { type: 'probed' }>;

/** Every client process and app copy not yet cleaned up. */
const liveClients = new Set<ClientProcess<unknown>>();
const liveAppDirs = new Set<AppDir>();
/** Private folders holding the control sockets of the masters the bench started. */
const controlDirs = new Set<string>();

/** A load generator in its own process (and process group), driven over IPC. */
export class ClientProcess<R> {
  /** Epoch ms at which the load started (HTTP load only). */
  readonly started: Promise<number>;
  /** The client's connections are open (sessions, idle). */
  readonly ready: Promise<ReadyMessage>;
  /** The client's report; rejects if it exits without one. */
  readonly result: Promise<R>;
  private readonly child: ChildProcess;
  private probeWaiter: ((message: ProbedMessage) => void) | undefined;

  /** The client's pid, to read its CPU from /proc. */
  get pid(): number {
    return this.child.pid as number;
  }

  constructor(config: ClientConfig) {
    this.child = fork(CLIENT_SCRIPTS[config.kind], [JSON.stringify(config)], {
      serialization: 'advanced',
      // Its own group: one kill(-pid) ends it, and a Ctrl-C to the bench reaches the bench alone.
      detached: true,
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    liveClients.add(this);
    const what = `${config.kind} client (pid ${this.child.pid})`;
    const exited = new Promise<never>((_, reject) => {
      this.child.once('exit', (code, signal) =>
        reject(new Error(`${what} exited (${signal ?? code}) without reporting`)),
      );
    });
    exited.catch(() => {});
    const next = <T extends FromClient<R>['type']>(type: T) =>
      Promise.race([
        new Promise<Extract<FromClient<R>, { type: T }>>((resolve) => {
          const onMessage = (message: FromClient<R>) => {
            if (message.type !== type) return;
            this.child.off('message', onMessage);
            resolve(message as Extract<FromClient<R>, { type: T }>);
          };
          this.child.on('message', onMessage);
        }),
        exited,
      ]);
    this.started = next('started').then((message) => message.at);
    this.ready = next('ready');
    this.result = next('result').then((message) => message.result);
    for (const promise of [this.started, this.ready, this.result]) promise.catch(() => {});
    this.child.on('message', (message: FromClient<R>) => {
      if (message.type === 'probed') this.probeWaiter?.(message);
    });
    this.result.finally(() => liveClients.delete(this)).catch(() => {});
  }

  /** Asks a sessions client to open `count` new sessions and report their versions. */
  probe(count: number, timeoutMs: number): Promise<ProbedMessage> {
    const answered = new Promise<ProbedMessage>((resolve) => {
      this.probeWaiter = resolve;
    });
    this.send({ type: 'probe', count });
    return withDeadline(answered, timeoutMs, `probe of ${count} new sessions`);
  }

  /** Asks the client to stop and resolves with its report. */
  stop(): Promise<R> {
    this.send({ type: 'stop' });
    return withDeadline(this.result, RESULT_TIMEOUT_MS, `the report of client pid ${this.child.pid}`);
  }

  /** Kills the client's process group at once. */
  kill(): void {
    liveClients.delete(this);
    if (this.child.pid === undefined || this.child.exitCode !== null || this.child.signalCode !== null)
      return;
    for (const target of [-this.child.pid, this.child.pid]) {
      try {
        process.kill(target, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }

  private send(message: ToClient): void {
    if (this.child.connected) this.child.send(message);
  }
}

/** Starts a closed-loop HTTP load process. */
export function startHttpLoad(config: Omit<HttpLoadConfig, 'kind'>): ClientProcess<HttpLoadResult> {
  return new ClientProcess<HttpLoadResult>({ kind: 'http-load', ...config });
}

/** Starts a process holding long-lived game sessions. */
export function startSessions(config: Omit<SessionsConfig, 'kind'>): ClientProcess<SessionsResult> {
  return new ClientProcess<SessionsResult>({ kind: 'sessions', ...config });
}

/** Starts a process holding idle keep-alive connections. */
export function startIdle(config: Omit<IdleConfig, 'kind'>): ClientProcess<IdleResult> {
  return new ClientProcess<IdleResult>({ kind: 'idle', ...config });
}

/** A private copy of the example app (app/), removed by `cleanupEverything` if the scenario does not. */
export function exampleAppCopy(): AppDir {
  const app = makeAppDir();
  liveAppDirs.add(app);
  return app;
}

/** A running baton master and the ports of its listeners. */
export interface RunningBaton {
  baton: BatonProcess;
  httpPort: number;
  /** The example app's game listener, when it was asked for. */
  gamePort?: number;
}

/** What to run under baton, and how. */
export interface BatonStart {
  workers: number;
  /**
   * `example`: a copy of app/ (http and game listeners); `hello`: bench/apps/hello.js (http only);
   * `ws-game`: test/fixtures/ws-game.mjs (http only, WebSocket upgrades), run in `dir` for its VERSION;
   * `command`: any command (an app as it is, `npm start`), run in `dir` (http only).
   * `plain`: bench/apps/plain.js (http only, no child API: it does not report its connections), run in
   * `dir` for its VERSION when given.
   */
  app:
    | { kind: 'example'; dir: AppDir }
    | { kind: 'hello' }
    | { kind: 'plain'; dir?: AppDir }
    | { kind: 'ws-game'; dir: AppDir }
    | { kind: 'command'; command: string[]; dir: AppDir };
  extraArgs?: string[];
  /** Added to the master's environment (undefined: removed from it), which its workers inherit. */
  env?: Record<string, string | undefined>;
  /**
   * A config file (in the app's folder) that holds the listeners, the worker count and the command:
   * `baton start --config FILE` with no flag that would override it.
   */
  configFile?: string;
}

/** Starts a master on 127.0.0.1 port 0 and waits until generation 1 is active. */
export async function startBatonApp({
  workers,
  app,
  extraArgs = [],
  env = {},
  configFile,
}: BatonStart): Promise<RunningBaton> {
  const listen = ['--listen', 'http=tcp://127.0.0.1:0'];
  if (app.kind === 'example') listen.push('--listen', 'game=tcp://127.0.0.1:0');
  const command =
    app.kind === 'command'
      ? app.command
      : {
          example: [NODE, 'server.js'],
          hello: [NODE, HELLO_APP],
          plain: [NODE, PLAIN_APP],
          'ws-game': [NODE, WS_GAME_APP],
        }[app.kind];
  // Each master its own control socket (mkdtemp makes the folder 0700, as baton requires): masters of
  // the same app would otherwise share one by name, and a second one refuses to start.
  const controlDir = mkdtempSync(join(tmpdir(), 'baton-bench-control-'));
  controlDirs.add(controlDir);
  const control = ['--control', join(controlDir, 'control.sock')];
  const args = configFile
    ? ['start', '--config', configFile, ...control, ...extraArgs]
    : ['start', ...listen, '--workers', String(workers), ...control, ...extraArgs, '--', ...command];
  const baton = startBaton(args, { cwd: 'dir' in app && app.dir ? app.dir.dir : REPO_ROOT, env });
  const httpPort = await baton.listenPort('http', START_TIMEOUT_MS);
  const gamePort = app.kind === 'example' ? await baton.listenPort('game', START_TIMEOUT_MS) : undefined;
  await baton.waitForLogMsg('generation active', { gen: 1 }, START_TIMEOUT_MS);
  return { baton, httpPort, ...(gamePort === undefined ? {} : { gamePort }) };
}

/**
 * A private folder to run an app as it is in: its `VERSION` (which the bench's unmodified apps read at
 * start-up) and a package.json whose `npm start` runs `node <script>`. Removed by `cleanupEverything`
 * if the scenario does not.
 */
export function unmodifiedAppDir(script: string): AppDir {
  const dir = mkdtempSync(join(tmpdir(), 'baton-bench-app-'));
  const writeFile = (name: string, contents: string) => writeFileSync(join(dir, name), contents);
  writeFile(
    'package.json',
    `${JSON.stringify({ private: true, scripts: { start: `node ${JSON.stringify(script)}` } }, null, 2)}\n`,
  );
  const app: AppDir = {
    dir,
    setVersion: (version) => writeFile('VERSION', version),
    writeFile,
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
  liveAppDirs.add(app);
  return app;
}

/** How often the start-up of an app alone is looked for in /proc. */
const LISTEN_PROBE_INTERVAL_MS = 2;

/**
 * Starts `command` alone (no baton) in `dir` with `PORT=0` (or `env`), and returns the ms from spawn
 * until its process tree (npm, a shell, node) holds `listeners` listening TCP sockets, as /proc shows
 * it; then kills it. An app as it is prints nothing to wait for: its socket is what says that it listens.
 */
export async function startUpAloneMs(
  command: string[],
  dir: string,
  { env = { PORT: '0' }, listeners = 1 }: { env?: Record<string, string>; listeners?: number } = {},
): Promise<number> {
  const { started, startUpMs } = await startListeningAlone(command, dir, { env, listeners });
  await started.killTree();
  return startUpMs;
}

/**
 * Starts `command` alone in `dir` with `env` and waits until its process tree holds `listeners`
 * listening TCP sockets; the process (killed by `cleanupEverything` if the caller does not) and the
 * ms from spawn until then.
 */
export async function startListeningAlone(
  command: string[],
  dir: string,
  { env, listeners = 1 }: { env: Record<string, string>; listeners?: number },
): Promise<{ started: BatonProcess; startUpMs: number }> {
  const [file, ...args] = command as [string, ...string[]];
  const spawnedAt = performance.now();
  const started = startProcess(file, args, { cwd: dir, env });
  try {
    await waitFor(() => ownListeningPorts(started.pid, new Set()).length >= listeners, {
      timeoutMs: START_TIMEOUT_MS,
      intervalMs: LISTEN_PROBE_INTERVAL_MS,
      what: `${command.join(' ')} to listen`,
    });
    return { started, startUpMs: performance.now() - spawnedAt };
  } catch (error) {
    await started.killTree();
    throw error;
  }
}

/** Where `freeFixedPort` looks, when the kernel's ephemeral range cannot be read. */
const FIXED_PORT_FLOOR = 10_000;
const EPHEMERAL_PORT_LOW_DEFAULT = 32_768;

/**
 * A port on 127.0.0.1 that nothing listens on now, for a server that must bind a port it is told (a
 * PM2 app: the daemon binds in its workers' name, and binds again the same number after they all
 * died, which port 0 would not). Drawn below the kernel's ephemeral range, which port 0 and outgoing
 * connections use: only another program choosing a fixed port could take it between this probe and
 * the bind (a race, so the server's own EADDRINUSE fails the scenario with that reason).
 */
export async function freeFixedPort(): Promise<number> {
  let ephemeralLow = EPHEMERAL_PORT_LOW_DEFAULT;
  try {
    ephemeralLow = Number(
      readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0],
    );
  } catch {
    // no such file: Linux's default
  }
  for (;;) {
    const port = FIXED_PORT_FLOOR + Math.floor(Math.random() * (ephemeralLow - FIXED_PORT_FLOOR));
    const free = await new Promise<boolean>((resolve) => {
      const probe = createServer();
      probe.once('error', () => resolve(false));
      probe.listen({ port, host: '127.0.0.1', exclusive: true }, () => probe.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

/** A plain process (the app alone, a cluster primary) and the port it printed. */
export interface RunningApp {
  process: BatonProcess;
  port: number;
  /** ms from spawn until the app's `app listening` line (after its `ready()`). */
  startMs: number;
  /** The pid whose CPU and memory stand for the supervisor (the cluster primary), or the app's own. */
  pid: number;
}

/** Starts `node <script>` and waits until `listeners` processes printed `app listening`. */
export async function startPlainApp(
  script: string,
  { listeners = 1, env = {} }: { listeners?: number; env?: Record<string, string> } = {},
): Promise<RunningApp> {
  const spawnedAt = performance.now();
  const started = startNode([script], { env });
  const seen: number[] = [];
  const first = await started.waitForLogMsg('app listening', {}, START_TIMEOUT_MS);
  seen.push(first.pid as number);
  while (seen.length < listeners) {
    const next = await started.waitForLog(
      (entry) => entry.msg === 'app listening' && !seen.includes(entry.pid as number),
      START_TIMEOUT_MS,
      `${listeners} processes of ${script} to listen`,
    );
    seen.push(next.pid as number);
  }
  return {
    process: started,
    port: first.port as number,
    startMs: performance.now() - spawnedAt,
    pid: started.pid,
  };
}

/** When the steps of one reload happened, as epoch ms (the master's log `time` for its own steps). */
export interface ReloadTimes {
  gen: number;
  signalAt: number;
  startingAt: number;
  activeAt: number;
  /** When the previous generation was retired (undefined if not awaited). */
  retiredAt?: number;
  /** The master's own measure of spawn-to-ready, per worker (`worker ready` durationMs). */
  workerReadyMs: number[];
}

/**
 * Sends SIGUSR2 (or `signal`: SIGHUP reads the config file again) for generation `gen` and waits until
 * it is active and, if `awaitRetired`, until generation `gen - 1` is retired.
 */
export async function reload(
  baton: BatonProcess,
  gen: number,
  {
    awaitRetired = true,
    workers,
    signal = 'SIGUSR2',
  }: { awaitRetired?: boolean; workers: number; signal?: NodeJS.Signals },
): Promise<ReloadTimes> {
  const signalAt = Date.now();
  baton.signal(signal);
  const starting = await baton.waitForLogMsg('generation starting', { gen }, RELOAD_TIMEOUT_MS);
  const active = await baton.waitForLogMsg('generation active', { gen }, RELOAD_TIMEOUT_MS);
  const workerReadyMs = baton.logs
    .filter((entry) => entry.msg === 'worker ready' && entry.gen === gen)
    .slice(0, workers)
    .map((entry) => entry.durationMs as number);
  const times: ReloadTimes = {
    gen,
    signalAt,
    startingAt: starting.time as number,
    activeAt: active.time as number,
    workerReadyMs,
  };
  if (!awaitRetired) return times;
  const retired = await baton.waitForLogMsg('generation retired', { gen: gen - 1 }, RELOAD_TIMEOUT_MS);
  return { ...times, retiredAt: retired.time as number };
}

/** A process's CPU time so far (user + system, ms) and resident memory (bytes), from /proc. */
export interface ProcUsage {
  cpuMs: number;
  rssBytes: number;
  /** The peak RSS of the process's life so far (VmHWM). */
  peakRssBytes: number;
}

/** Clock ticks per second for /proc/<pid>/stat (`getconf CLK_TCK`; 100 on Linux everywhere). */
const CLOCK_TICKS_PER_SECOND = 100;

/** Reads /proc/<pid>/stat and /proc/<pid>/status: a dozen microseconds, no descriptor kept open. */
export function procUsage(pid: number): ProcUsage {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces): state is [0], utime [11], stime [12].
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) =>
    Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? Number.NaN);
  return {
    cpuMs: (ticks * 1000) / CLOCK_TICKS_PER_SECOND,
    rssBytes: kb('VmRSS') * 1024,
    peakRssBytes: kb('VmHWM') * 1024,
  };
}

/**
 * CPU time used so far by `pid` and every process under it, in ms: their own, and that of their
 * children that exited and were reaped (a retired generation's workers count in their master's).
 */
export function treeCpuMs(pid: number): number {
  let ticks = 0;
  for (const member of [pid, ...descendants(pid)]) {
    try {
      const stat = readFileSync(`/proc/${member}/stat`, 'utf8');
      // utime [11], stime [12], cutime [13], cstime [14], after the command name.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += [11, 12, 13, 14].reduce((sum, field) => sum + Number(fields[field]), 0);
    } catch {
      // exited between the listing and the read: its time is in its parent's, once reaped
    }
  }
  return (ticks * 1000) / CLOCK_TICKS_PER_SECOND;
}

/** CPU used by `pid` while `during` runs, as a share of one core (0.25 = 25 %), and the RSS after. */
export async function measureCpu<T>(
  pid: number,
  during: () => Promise<T>,
): Promise<{ value: T; cpuShare: number; cpuMs: number; rssBytes: number }> {
  const before = procUsage(pid);
  const startedAt = performance.now();
  const value = await during();
  const after = procUsage(pid);
  const cpuMs = after.cpuMs - before.cpuMs;
  return { value, cpuMs, cpuShare: cpuMs / (performance.now() - startedAt), rssBytes: after.rssBytes };
}

/** How many TCP sockets the machine has (every state, TIME_WAIT included), from /proc/net/tcp and tcp6. */
export function tcpSocketsOnMachine(): number {
  let total = 0;
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    try {
      total += readFileSync(file, 'utf8').trimEnd().split('\n').length - 1;
    } catch {
      // no IPv6 table
    }
  }
  return total;
}

/** The machine's CPU time so far, every core, in clock ticks (the first line of /proc/stat). */
export interface MachineCpu {
  /** user, nice, system, irq, softirq. */
  busy: number;
  /** Time the hypervisor gave to other guests while this one wanted to run. */
  steal: number;
  /** Everything, idle and iowait included. */
  total: number;
}

/** Reads the `cpu` line of /proc/stat. */
export function machineCpu(): MachineCpu {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
  const [user, nice, system, idle, iowait, irq, softirq, steal] = line
    .trim()
    .split(/\s+/)
    .slice(1, 9)
    .map(Number) as [number, number, number, number, number, number, number, number];
  const busy = user + nice + system + irq + softirq;
  return { busy, steal, total: busy + idle + iowait + steal };
}

/** The share of the machine's CPU (every core) that was busy, and stolen, between two readings (0..1). */
export function machineCpuShare(before: MachineCpu, after: MachineCpu): { busy: number; steal: number } {
  const total = after.total - before.total;
  return { busy: (after.busy - before.busy) / total, steal: (after.steal - before.steal) / total };
}

/** A pause of `ms`: phases of a benchmark last a set time on purpose. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Kills every client process, every master's, app's and PM2 peer's process tree, and removes app copies. */
export async function cleanupEverything(): Promise<void> {
  for (const client of [...liveClients]) client.kill();
  try {
    await Promise.all([stopEveryPm2Peer(), killAll()]);
  } finally {
    for (const app of liveAppDirs) app.cleanup();
    liveAppDirs.clear();
    for (const dir of controlDirs) rmSync(dir, { recursive: true, force: true });
    controlDirs.clear();
  }
}

/** Kills one master's or app's tree now (the helpers' killTree: the group and every descendant). */
export async function stopProcess(tracked: BatonProcess): Promise<void> {
  await tracked.killTree();
}

/** Removes an app copy made by `exampleAppCopy`. */
export function removeAppCopy(app: AppDir): void {
  app.cleanup();
  liveAppDirs.delete(app);
}
