/**
 * Spawning: how a worker is started, written once for the workers of a generation and for the scratch
 * worker of `inject --dry-run` alike: which command (resolved anew each time, so that a reload runs
 * what is on disk now), which environment (`workerEnv`, the one place to add a variable), which
 * descriptors and which user. The worker's events go to the master's dispatcher.
 */
import type { Generation } from './generation.js';
import type { Logger } from './log.js';
import type { InheritedListener, MasterEvent } from './model.js';
import type { MasterOptions } from './options.js';
import { type CarriedProcess, notifyFd, type Os, type SpawnRequest, type WorkerCallbacks } from './os.js';
import { type ListenerDescription, preloadEnv } from './unmodified.js';
import { Worker } from './worker.js';

/** Environment variables the master never passes on: they describe the master's own parent, not the worker's. */
export const ENV_NOT_INHERITED = [
  'LISTEN_FDS',
  'LISTEN_FDNAMES',
  'LISTEN_PID',
  'NODE_CHANNEL_FD',
  'NODE_CHANNEL_SERIALIZATION_MODE',
  'NODE_UNIQUE_ID',
  // The master's own service manager's socket: a worker notifies the master, never systemd behind it.
  'NOTIFY_SOCKET',
  'WATCHDOG_PID',
  'WATCHDOG_USEC',
  // The master's own descriptor channel, if it runs under a baton itself: the worker gets its own.
  'BATON_FD_CHANNEL',
];

/** Who a worker is: its generation, and its slot (none for a scratch worker, which serves nothing). */
export interface WorkerIdentity {
  generation: number;
  version: string;
  /** The slot index; undefined for the scratch worker of `inject --dry-run`. */
  worker: number | undefined;
}

/** What a worker's environment is made of besides its identity. */
export interface EnvironmentSettings {
  /** The master's own environment. */
  env: Readonly<Record<string, string | undefined>>;
  /** The listeners the worker inherits, in order (none for a scratch worker). */
  listeners: readonly ListenerDescription[];
  drainSignal: NodeJS.Signals;
  drainTimeoutMs: number;
  /** Whether a worker (not a scratch worker) gets baton's preload for Node apps as they are (`--no-preload`: false). */
  preload?: boolean;
  /** `--watchdog`: workers get WATCHDOG_USEC (WATCHDOG_PID is set by the trampoline in os.ts, as LISTEN_PID). */
  watchdogMs?: number | undefined;
}

/** The complete environment of a worker (docs/contract.md): the master's, then baton's variables. */
export function workerEnv(settings: EnvironmentSettings, identity: WorkerIdentity): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(settings.env)) {
    if (value !== undefined && !ENV_NOT_INHERITED.includes(key)) env[key] = value;
  }
  const { listeners } = settings;
  const scratch = identity.worker === undefined;
  // A lone socket handed to baton unnamed goes on unnamed: whatever name the app asks for is it.
  const unnamed = listeners.length === 1 && listeners[0]?.anonymous === true;
  return {
    ...env,
    LISTEN_FDS: String(listeners.length),
    // A scratch worker has no socket: serve() in the child API resolves without listening.
    ...(scratch
      ? { BATON_SCRATCH: '1' }
      : unnamed
        ? {}
        : { LISTEN_FDNAMES: listeners.map((listener) => listener.name).join(':') }),
    BATON_GENERATION: String(identity.generation),
    ...(identity.worker === undefined ? {} : { BATON_WORKER: String(identity.worker) }),
    BATON_VERSION: identity.version,
    BATON_DRAIN_SIGNAL: settings.drainSignal,
    BATON_DRAIN_TIMEOUT_MS: String(settings.drainTimeoutMs),
    ...(scratch ? {} : { BATON_NOTIFY_FD: String(notifyFd(listeners.length)) }),
    // NODE_OPTIONS (after the user's), BATON_LISTENERS and PORT (supervisor/unmodified.ts).
    ...(settings.preload && !scratch ? preloadEnv(listeners, settings.env) : {}),
    ...(scratch || settings.watchdogMs === undefined
      ? {}
      : { WATCHDOG_USEC: String(settings.watchdogMs * 1000) }),
  };
}

/** What spawning needs from the master. */
export interface SpawnPorts {
  os: Os;
  logger: Logger;
  /** The master's settings now (a generation started with others keeps its own). */
  readonly options: MasterOptions;
  /** The master's listeners now (a generation started with others keeps its own). */
  readonly listeners: readonly InheritedListener[];
  /** The environment workers start from (the master's own). */
  env: Record<string, string | undefined>;
  cwd: string;
  /** Queues a worker's event in the master's dispatcher. */
  dispatch(event: MasterEvent): void;
  /** Where workers' stderr goes once the master has kept its tail. */
  writeStderr(chunk: Buffer): void;
}

/** Starts workers: resolves the command, builds the request, wires the worker's events to the dispatcher. */
export class Spawner {
  constructor(private readonly ports: SpawnPorts) {}

  /**
   * The command of a generation's settings (the master's now by default) as an absolute path now;
   * undefined (the caller says why it stops) if there is none.
   */
  resolveCommand(options: MasterOptions = this.ports.options): string | undefined {
    try {
      return this.ports.os.resolveCommand(options.command, this.envOf(options), this.cwdOf(options));
    } catch {
      return undefined;
    }
  }

  /** The environment workers with these settings start from: the master's, then the config file's `env`. */
  private envOf(options: MasterOptions): Record<string, string | undefined> {
    return options.env ? { ...this.ports.env, ...options.env } : this.ports.env;
  }

  private cwdOf(options: MasterOptions): string {
    return options.cwd ?? this.ports.cwd;
  }

  /** The spawn request of a worker of `generation` (slot `worker`), or of a scratch worker (undefined). */
  request(command: string, generation: Generation, worker: number | undefined): SpawnRequest {
    const options = generation.settings ?? this.ports.options;
    const cwd = this.cwdOf(options);
    const listeners = worker === undefined ? [] : (generation.listeners ?? this.ports.listeners);
    return {
      command,
      args: options.args,
      env: workerEnv(
        {
          env: this.envOf(options),
          listeners,
          drainSignal: options.drainSignal,
          drainTimeoutMs: options.drainTimeoutMs,
          preload: options.preload,
          watchdogMs: options.watchdogMs,
        },
        { generation: generation.id, version: generation.version, worker },
      ),
      listenerFds: listeners.map((listener) => listener.fd),
      ...(worker === undefined ? { notifyPipe: false } : {}),
      cwd,
      parentDeathSignal: options.drainSignal,
      ...(options.uid === undefined ? {} : { uid: options.uid }),
      ...(options.gid === undefined ? {} : { gid: options.gid }),
      // A scratch worker serves nothing: it starts at the master's priority.
      ...(options.startNice && worker !== undefined ? { startNice: options.startNice } : {}),
    };
  }

  /** Starts a worker in `generation`'s slot `slotIndex`, which it fills from now on. */
  spawnWorker(generation: Generation, slotIndex: number, command: string): Worker | undefined {
    const slot = generation.slots[slotIndex];
    if (!slot) return undefined;
    const { os } = this.ports;
    const worker = new Worker(generation.id, slotIndex, os.now());
    slot.current = worker;
    generation.workers.push(worker);
    worker.process = os.spawnWorker(this.request(command, generation, slotIndex), this.callbacksOf(worker));
    this.ports.logger.debug({ gen: generation.id, worker: slotIndex, pid: worker.pid }, 'worker spawned');
    return worker;
  }

  /**
   * Takes on `worker`, which the previous program of this master spawned (a re-exec,
   * supervisor/reexec.ts): its process is adopted with the descriptors carried, its events wired as a
   * spawned worker's. False when this OS cannot adopt.
   */
  adoptWorker(worker: Worker, carried: CarriedProcess): boolean {
    const { os } = this.ports;
    if (!os.adoptWorker) return false;
    worker.process = os.adoptWorker(carried, this.callbacksOf(worker));
    return true;
  }

  private callbacksOf(worker: Worker): WorkerCallbacks {
    const { dispatch } = this.ports;
    return {
      onMessage: (message, handle) => dispatch({ type: 'worker-message', worker, message, handle }),
      onNotify: (line) => dispatch({ type: 'worker-notified', worker, line }),
      onWarning: (message) =>
        this.ports.logger.warn({ gen: worker.generation, worker: worker.index, pid: worker.pid }, message),
      onStderr: (chunk) => {
        worker.stderr.push(chunk);
        this.ports.writeStderr(chunk);
      },
      onExit: (exitCode, signal) => dispatch({ type: 'worker-exited', worker, exitCode, signal }),
    };
  }
}
