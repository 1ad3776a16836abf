/**
 * The master's dispatcher against a fake OS seam and fake timers: every
 * decision of the upgrade algorithm, without a process or a socket.
 */
import { afterEach, beforeEach, describe, expect, jest, test } from '@jest/globals';
import { pino } from 'pino';
import type { StartSettings } from '../../supervisor/config.js';
import { CommandNotFoundError, EXIT_CODES, UsageError } from '../../supervisor/errors.js';
import { Master, type MasterContext } from '../../supervisor/master.js';
import {
  CONNECTION_SAMPLE_INTERVAL_MS,
  IDLE_DRAIN_SAMPLES,
  type MasterOptions,
  OWN_PORT_CHECK_INTERVAL_MS,
  OWN_PORT_GRACE_MS,
  POLL_READINESS_INTERVAL_MS,
  parseListen,
  RESTART_BACKOFF_BASE_MS,
  STABLE_UPTIME_MS,
} from '../../supervisor/options.js';
import type { Os, SpawnRequest, WorkerCallbacks, WorkerProcess } from '../../supervisor/os.js';
import { EXITED_WORKERS_KEPT } from '../../supervisor/slots.js';

class FakeProcess implements WorkerProcess {
  readonly signals: NodeJS.Signals[] = [];
  constructor(
    readonly pid: number,
    readonly request: SpawnRequest,
    private readonly callbacks: WorkerCallbacks,
  ) {}
  kill(signal: NodeJS.Signals): boolean {
    this.signals.push(signal);
    return true;
  }
  ready(): void {
    this.callbacks.onMessage('ready');
  }
  exit(exitCode: number | null, signal: NodeJS.Signals | null = null): void {
    this.callbacks.onExit(exitCode, signal);
  }
  stderr(text: string): void {
    this.callbacks.onStderr(Buffer.from(text));
  }
  message(message: unknown): void {
    this.callbacks.onMessage(message);
  }
  notify(line: string): void {
    this.callbacks.onNotify(line);
  }
}

class FakeOs implements Os {
  readonly processes: FakeProcess[] = [];
  readonly missingCommands = new Set<string>();
  /** Pids that /proc would show waiting on the listeners (`--ready poll`). */
  readonly polling = new Set<number>();
  private nextPid = 1000;

  spawnWorker(request: SpawnRequest, callbacks: WorkerCallbacks): WorkerProcess {
    const process = new FakeProcess(this.nextPid++, request, callbacks);
    this.processes.push(process);
    return process;
  }
  resolveCommand(command: string): string {
    if (this.missingCommands.has(command)) throw new CommandNotFoundError(command);
    return `/usr/bin/${command}`;
  }
  /** Connections /proc would show per pid, for workers that do not report theirs. */
  readonly observed = new Map<number, number>();
  countConnections(pid: number): number | undefined {
    return this.observed.get(pid);
  }
  pollsListeners(pid: number, inodes: ReadonlySet<number>): boolean {
    return this.polling.has(pid) && inodes.has(7001);
  }
  /** TCP ports /proc would show a worker listening on by itself, per pid. */
  readonly ownPorts = new Map<number, number[]>();
  ownListeningPorts(pid: number, except: ReadonlySet<number>): number[] {
    return except.has(7001) ? (this.ownPorts.get(pid) ?? []) : [];
  }
  now(): number {
    return Date.now();
  }
  setTimer(ms: number, fn: () => void) {
    const timer = setTimeout(fn, ms);
    return { cancel: () => clearTimeout(timer) };
  }
  /** The processes of generation `gen`, in spawn order. */
  ofGeneration(gen: number): FakeProcess[] {
    return this.processes.filter((p) => p.request.env.BATON_GENERATION === String(gen));
  }
}

const OPTIONS: MasterOptions = {
  listen: [],
  workers: 2,
  readyTimeoutMs: 5_000,
  drainTimeoutMs: 10_000,
  drainSignal: 'SIGTERM',
  maxDraining: 8,
  ready: { kind: 'auto' },
  command: 'node',
  args: ['app.js'],
};

let os: FakeOs;
let logs: Array<Record<string, unknown>>;
let closedListeners: string[];

function makeMaster(options: Partial<MasterOptions> = {}, context: Partial<MasterContext> = {}): Master {
  const logger = pino({ level: 'debug' }, { write: (line: string) => logs.push(JSON.parse(line)) });
  return new Master(
    { ...OPTIONS, ...options },
    {
      os,
      logger,
      listeners: [
        {
          name: 'http',
          fd: 20,
          inode: 7001,
          kind: 'tcp',
          port: 8080,
          address: '127.0.0.1',
          close: () => closedListeners.push('http'),
        },
        {
          name: 'game',
          fd: 21,
          inode: 7002,
          kind: 'tcp',
          port: 9000,
          address: '127.0.0.1',
          close: () => closedListeners.push('game'),
        },
      ],
      env: { PATH: '/usr/bin', LISTEN_PID: '1', HOME: '/root' },
      cwd: '/srv',
      writeStderr: () => {},
      ...context,
    },
  );
}

function messages(): string[] {
  return logs.map((entry) => String(entry.msg));
}

/** Starts a master and brings generation 1 up. */
function running(options: Partial<MasterOptions> = {}, context: Partial<MasterContext> = {}): Master {
  const master = makeMaster(options, context);
  master.dispatch({ type: 'start' });
  for (const p of os.ofGeneration(1)) p.ready();
  return master;
}

beforeEach(() => {
  jest.useFakeTimers();
  os = new FakeOs();
  logs = [];
  closedListeners = [];
});

afterEach(() => {
  jest.useRealTimers();
});

describe('start', () => {
  test('spawns the workers with the listeners and the documented environment', () => {
    const master = makeMaster();
    master.dispatch({ type: 'start' });
    expect(os.processes).toHaveLength(2);
    const [first] = os.processes;
    expect(first?.request).toMatchObject({
      command: '/usr/bin/node',
      args: ['app.js'],
      listenerFds: [20, 21],
      cwd: '/srv',
    });
    expect(first?.request.env).toMatchObject({
      LISTEN_FDS: '2',
      LISTEN_FDNAMES: 'http:game',
      BATON_GENERATION: '1',
      BATON_WORKER: '0',
      BATON_DRAIN_SIGNAL: 'SIGTERM',
      HOME: '/root',
    });
    expect(first?.request.env.LISTEN_PID).toBeUndefined();
    expect(master.state).toBe('starting');
  });

  test('the generation is active only once every worker said ready', () => {
    const master = makeMaster();
    master.dispatch({ type: 'start' });
    os.processes[0]?.ready();
    expect(master.activeGeneration).toBeUndefined();
    os.processes[1]?.ready();
    expect(master.activeGeneration?.id).toBe(1);
    expect(master.state).toBe('running');
  });

  test('a first generation that fails stops the master with the start-failed code', async () => {
    const master = makeMaster();
    master.dispatch({ type: 'start' });
    os.processes[0]?.stderr('Error: boom\n');
    os.processes[0]?.exit(1);
    expect(os.processes[1]?.signals).toEqual(['SIGTERM']);
    os.processes[1]?.exit(0);
    await expect(master.finished).resolves.toBe(EXIT_CODES.startFailed);
    expect(master.startError?.failure).toMatchObject({
      kind: 'worker-exited',
      exitCode: 1,
      stderrTail: 'Error: boom',
    });
  });
});

describe('reload', () => {
  test('the old generation drains only after every new worker is ready', () => {
    const master = running();
    master.dispatch({ type: 'reload', source: 'test' });
    const [a, b] = os.ofGeneration(2);
    a?.ready();
    expect(os.ofGeneration(1).flatMap((p) => p.signals)).toEqual([]);
    b?.ready();
    expect(master.activeGeneration?.id).toBe(2);
    expect(os.ofGeneration(1).map((p) => p.signals)).toEqual([['SIGTERM'], ['SIGTERM']]);
    for (const p of os.ofGeneration(1)) p.exit(0);
    expect(master.generations.find((g) => g.id === 1)?.state).toBe('retired');
  });

  test('reloads asked during a reload coalesce into one more, never run in parallel', () => {
    const master = running();
    for (let i = 0; i < 5; i++) master.dispatch({ type: 'reload', source: 'test' });
    expect(os.ofGeneration(2)).toHaveLength(2);
    expect(os.ofGeneration(3)).toHaveLength(0);
    for (const p of os.ofGeneration(2)) p.ready();
    expect(os.ofGeneration(3)).toHaveLength(2);
    for (const p of os.ofGeneration(3)) p.ready();
    expect(os.ofGeneration(4)).toHaveLength(0);
    expect(master.activeGeneration?.id).toBe(3);
  });

  test('a new worker that crashes fails the reload and leaves the old generation untouched', () => {
    const master = running();
    master.dispatch({ type: 'reload', source: 'test' });
    const [a, b] = os.ofGeneration(2);
    a?.stderr('SyntaxError: Unexpected token\n');
    a?.exit(1);
    expect(master.activeGeneration?.id).toBe(1);
    expect(os.ofGeneration(1).flatMap((p) => p.signals)).toEqual([]);
    expect(b?.signals).toEqual(['SIGTERM']);
    const failure = logs.find((entry) => String(entry.msg).startsWith('reload failed'));
    expect(failure).toMatchObject({ gen: 2, exitCode: 1, stderrTail: 'SyntaxError: Unexpected token' });
  });

  test('a timeout is never success: a generation that does not say ready fails at the deadline', () => {
    const master = running();
    master.dispatch({ type: 'reload', source: 'test' });
    os.ofGeneration(2)[0]?.ready();
    jest.advanceTimersByTime(OPTIONS.readyTimeoutMs - 1);
    expect(master.generations.find((g) => g.id === 2)?.state).toBe('starting');
    jest.advanceTimersByTime(1);
    expect(master.generations.find((g) => g.id === 2)?.state).toBe('failed');
    expect(master.activeGeneration?.id).toBe(1);
    expect(os.ofGeneration(2).map((p) => p.signals)).toEqual([['SIGTERM'], ['SIGTERM']]);
    expect(messages().some((m) => m.startsWith('reload failed') && m.includes('did not say ready'))).toBe(
      true,
    );
  });

  test('a failed reload lets the queued one run: the next good release goes through', () => {
    const master = running();
    master.dispatch({ type: 'reload', source: 'test' });
    master.dispatch({ type: 'reload', source: 'test' });
    os.ofGeneration(2)[0]?.exit(1);
    const third = os.ofGeneration(3);
    expect(third).toHaveLength(2);
    for (const p of third) p.ready();
    expect(master.activeGeneration?.id).toBe(3);
  });

  test('a missing command fails the reload, not the master', () => {
    const master = running();
    os.missingCommands.add('node');
    master.dispatch({ type: 'reload', source: 'test' });
    expect(master.generations.find((g) => g.id === 2)?.state).toBe('failed');
    expect(master.activeGeneration?.id).toBe(1);
  });

  test('workers that outlive the drain timeout are killed', () => {
    const master = running();
    master.dispatch({ type: 'reload', source: 'test' });
    for (const p of os.ofGeneration(2)) p.ready();
    jest.advanceTimersByTime(OPTIONS.drainTimeoutMs);
    expect(os.ofGeneration(1).map((p) => p.signals)).toEqual([
      ['SIGTERM', 'SIGKILL'],
      ['SIGTERM', 'SIGKILL'],
    ]);
    expect(master.generations.find((g) => g.id === 1)?.forced).toBe(true);
  });

  test('past --max-draining the oldest draining generation is cut short', () => {
    const master = running({ maxDraining: 1 });
    for (const gen of [2, 3]) {
      master.dispatch({ type: 'reload', source: 'test' });
      for (const p of os.ofGeneration(gen)) p.ready();
    }
    expect(os.ofGeneration(1).map((p) => p.signals)).toEqual([
      ['SIGTERM', 'SIGKILL'],
      ['SIGTERM', 'SIGKILL'],
    ]);
    expect(os.ofGeneration(2).map((p) => p.signals)).toEqual([['SIGTERM'], ['SIGTERM']]);
  });
});

describe('crashes of the active generation', () => {
  test('a dead worker is restarted, with a backoff that grows and a crash loop reported', () => {
    running();
    const crashLatest = () =>
      os.processes
        .filter((p) => p.request.env.BATON_WORKER === '0')
        .at(-1)
        ?.exit(1);
    crashLatest();
    jest.advanceTimersByTime(0); // the first restart is immediate
    expect(os.ofGeneration(1)).toHaveLength(3);
    crashLatest();
    expect(os.ofGeneration(1)).toHaveLength(3);
    jest.advanceTimersByTime(RESTART_BACKOFF_BASE_MS);
    expect(os.ofGeneration(1)).toHaveLength(4);
    crashLatest();
    jest.advanceTimersByTime(2 * RESTART_BACKOFF_BASE_MS - 1);
    expect(os.ofGeneration(1)).toHaveLength(4);
    jest.advanceTimersByTime(1);
    expect(os.ofGeneration(1)).toHaveLength(5);
    const loop = logs.filter((entry) => String(entry.msg).startsWith('worker crash loop'));
    expect(loop).toHaveLength(1);
    expect(loop[0]).toMatchObject({ crashes: 3, worker: 0 });
  });

  test('a restarted worker that never says ready is replaced', () => {
    running();
    os.processes[0]?.exit(1);
    jest.advanceTimersByTime(0);
    const replacement = os.processes.at(-1);
    expect(replacement?.request.env.BATON_WORKER).toBe('0');
    jest.advanceTimersByTime(OPTIONS.readyTimeoutMs);
    expect(replacement?.signals).toEqual(['SIGTERM']);
    replacement?.exit(0);
    jest.advanceTimersByTime(RESTART_BACKOFF_BASE_MS);
    expect(os.ofGeneration(1)).toHaveLength(4);
  });
});

describe('stop', () => {
  test('drains every generation, closes the master copies of the listeners, exits 0', async () => {
    const master = running();
    master.dispatch({ type: 'stop', fast: false, source: 'SIGTERM' });
    expect(closedListeners).toEqual(['http', 'game']);
    expect(os.processes.map((p) => p.signals)).toEqual([['SIGTERM'], ['SIGTERM']]);
    master.dispatch({ type: 'reload', source: 'SIGUSR2' });
    expect(os.processes).toHaveLength(2);
    expect(messages()).toContain('reload ignored: the master is stopping');
    for (const p of os.processes) p.exit(0);
    await expect(master.finished).resolves.toBe(EXIT_CODES.ok);
  });

  test('no restart while stopping', async () => {
    const master = running();
    master.dispatch({ type: 'stop', fast: false, source: 'SIGTERM' });
    for (const p of os.processes) p.exit(1);
    jest.advanceTimersByTime(60_000);
    expect(os.processes).toHaveLength(2);
    await expect(master.finished).resolves.toBe(EXIT_CODES.ok);
  });

  test('workers killed at the deadline make a non-zero exit', async () => {
    const master = running();
    master.dispatch({ type: 'stop', fast: false, source: 'SIGTERM' });
    jest.advanceTimersByTime(OPTIONS.drainTimeoutMs);
    for (const p of os.processes) p.exit(null, 'SIGKILL');
    await expect(master.finished).resolves.toBe(EXIT_CODES.drainForced);
  });

  test('a fast stop kills at once', async () => {
    const master = running();
    master.dispatch({ type: 'stop', fast: true, source: 'SIGQUIT' });
    expect(os.processes.map((p) => p.signals.at(-1))).toEqual(['SIGKILL', 'SIGKILL']);
    for (const p of os.processes) p.exit(null, 'SIGKILL');
    await expect(master.finished).resolves.toBe(EXIT_CODES.ok);
  });
});

describe('readiness modes', () => {
  test('auto takes the IPC message or READY=1 on the notify pipe, and tells the worker where the pipe is', () => {
    const master = makeMaster();
    master.dispatch({ type: 'start' });
    expect(os.processes[0]?.request.env.BATON_NOTIFY_FD).toBe('5');
    os.processes[0]?.notify('STATUS=warming caches');
    os.processes[0]?.notify('READY=1');
    os.processes[1]?.ready();
    expect(master.activeGeneration?.id).toBe(1);
    expect(logs.filter((entry) => entry.msg === 'worker ready').map((entry) => entry.via)).toEqual([
      'notify',
      'ipc',
    ]);
    expect(logs.find((entry) => entry.msg === 'worker status')).toMatchObject({ status: 'warming caches' });
  });

  test('ipc and notify take only their own way', () => {
    const ipcOnly = makeMaster({ workers: 1, ready: { kind: 'ipc' } });
    ipcOnly.dispatch({ type: 'start' });
    os.processes[0]?.notify('READY=1');
    expect(ipcOnly.activeGeneration).toBeUndefined();
    os.processes[0]?.ready();
    expect(ipcOnly.activeGeneration?.id).toBe(1);

    const notifyOnly = makeMaster({ workers: 1, ready: { kind: 'notify' } });
    notifyOnly.dispatch({ type: 'start' });
    os.processes[1]?.ready();
    expect(notifyOnly.activeGeneration).toBeUndefined();
    os.processes[1]?.notify('READY=1');
    expect(notifyOnly.activeGeneration?.id).toBe(1);
  });

  test('delay takes a worker that is still running after the delay as ready, and nothing else', () => {
    const master = makeMaster({ workers: 1, ready: { kind: 'delay', ms: 2000 } });
    master.dispatch({ type: 'start' });
    os.processes[0]?.ready();
    jest.advanceTimersByTime(1999);
    expect(master.activeGeneration).toBeUndefined();
    jest.advanceTimersByTime(1);
    expect(master.activeGeneration?.id).toBe(1);
  });

  test('poll takes a worker as ready once /proc shows it waiting on a listener, and only then', () => {
    const master = makeMaster({ workers: 1, ready: { kind: 'poll' } });
    master.dispatch({ type: 'start' });
    os.processes[0]?.ready();
    jest.advanceTimersByTime(500);
    expect(master.activeGeneration).toBeUndefined();
    os.polling.add(os.processes[0]?.pid as number);
    jest.advanceTimersByTime(POLL_READINESS_INTERVAL_MS);
    expect(master.activeGeneration?.id).toBe(1);
    expect(logs.find((entry) => entry.msg === 'worker ready')).toMatchObject({ via: 'poll' });
  });

  test('delay: a worker that exits before the delay fails the generation', () => {
    const master = makeMaster({ workers: 1, ready: { kind: 'delay', ms: 2000 } });
    master.dispatch({ type: 'start' });
    os.processes[0]?.exit(1);
    jest.advanceTimersByTime(2000);
    expect(master.activeGeneration).toBeUndefined();
    expect(master.generations[0]?.state).toBe('failed');
  });
});

describe('connections seen from outside', () => {
  test('status counts the connections of a worker that does not report them; reported counts win', () => {
    const master = running();
    const [silent, reporting] = os.processes;
    os.observed.set(silent?.pid as number, 3);
    os.observed.set(reporting?.pid as number, 99);
    reporting?.message({ baton: 'connections', count: 5 });
    jest.advanceTimersByTime(CONNECTION_SAMPLE_INTERVAL_MS);
    const workers = master.snapshot().generations[0]?.workers;
    expect(workers?.map((w) => [w.connections, w.connectionsSeen])).toEqual([
      [3, 'observed'],
      [5, 'reported'],
    ]);
  });

  test('a draining worker that stopped accepting and holds no connection is finished', () => {
    const master = running();
    master.dispatch({ type: 'reload', source: 'test' });
    for (const p of os.ofGeneration(2)) p.ready();
    const [idle, busy] = os.ofGeneration(1);
    os.observed.set(idle?.pid as number, 0);
    os.observed.set(busy?.pid as number, 1);
    jest.advanceTimersByTime(CONNECTION_SAMPLE_INTERVAL_MS * (IDLE_DRAIN_SAMPLES - 1));
    expect(idle?.signals).toEqual(['SIGTERM']);
    jest.advanceTimersByTime(CONNECTION_SAMPLE_INTERVAL_MS);
    expect(idle?.signals).toEqual(['SIGTERM', 'SIGKILL']);
    expect(busy?.signals).toEqual(['SIGTERM']);
  });
});

describe('replacing one serving worker (--max-memory)', () => {
  test('the replacement starts in the same slot and, once ready, the old worker drains; nobody is dropped meanwhile', () => {
    const master = running();
    const [old] = os.ofGeneration(1);
    jest.advanceTimersByTime(STABLE_UPTIME_MS);
    master.dispatch({ type: 'replace-worker', pid: old?.pid as number, reason: 'memory' });
    const replacement = os.processes.at(-1);
    expect(replacement?.request.env).toMatchObject({ BATON_GENERATION: '1', BATON_WORKER: '0' });
    expect(old?.signals).toEqual([]);
    replacement?.ready();
    expect(old?.signals).toEqual(['SIGTERM']);
    expect(messages()).toContain('worker replaced');
    old?.exit(0);
    jest.advanceTimersByTime(60_000);
    expect(os.ofGeneration(1)).toHaveLength(3); // the old worker's exit restarts nothing
  });

  test('a replacement that fails leaves the old worker serving, and a young worker is not replaced', () => {
    const master = running();
    const [old] = os.ofGeneration(1);
    master.dispatch({ type: 'replace-worker', pid: old?.pid as number, reason: 'memory' });
    expect(os.processes).toHaveLength(2); // younger than STABLE_UPTIME_MS: left alone
    jest.advanceTimersByTime(STABLE_UPTIME_MS);
    master.dispatch({ type: 'replace-worker', pid: old?.pid as number, reason: 'memory' });
    const replacement = os.processes.at(-1);
    replacement?.exit(1);
    jest.advanceTimersByTime(60_000);
    expect(old?.signals).toEqual([]);
    expect(messages()).toContain('worker replacement failed: keeping the old one');
    expect(master.snapshot().generations[0]?.workers.find((w) => w.pid === old?.pid)?.state).toBe('ready');
  });
});

describe('a long crash loop', () => {
  test('keeps the remembered workers bounded, and the slot counts every restart', () => {
    const master = running();
    for (let crash = 0; crash < 40; crash++) {
      os.processes
        .filter((p) => p.request.env.BATON_WORKER === '0')
        .at(-1)
        ?.exit(1);
      jest.advanceTimersByTime(60_000);
    }
    const generation = master.snapshot().generations[0];
    expect(generation?.workers.filter((w) => w.state === 'exited').length).toBeLessThanOrEqual(
      EXITED_WORKERS_KEPT,
    );
    expect(generation?.restarts).toBe(40);
    expect(generation?.workers.find((w) => w.index === 0 && w.state !== 'exited')?.restarts).toBe(40);
  });
});

describe('a dry run (inject --dry-run)', () => {
  const DRY_PATCH = { file: 'fix.mjs', hash: 'a'.repeat(64), source: 'export default () => {};', uid: 1000 };

  test('the scratch worker runs the active code with no socket, belongs to no generation, and is never restarted', async () => {
    const master = running();
    const answers: unknown[] = [];
    master.dispatch({
      type: 'inject-dry-run',
      patch: DRY_PATCH,
      source: 'test',
      reply: (answer) => answers.push(answer),
    });
    const scratch = os.processes.at(-1);
    expect(os.processes).toHaveLength(3);
    expect(scratch?.request).toMatchObject({
      command: '/usr/bin/node',
      args: ['app.js'],
      listenerFds: [],
      notifyPipe: false,
      cwd: '/srv',
    });
    expect(scratch?.request.env).toMatchObject({
      LISTEN_FDS: '0',
      BATON_SCRATCH: '1',
      BATON_GENERATION: '1',
      HOME: '/root',
    });
    expect(scratch?.request.env.LISTEN_FDNAMES).toBeUndefined();
    expect(scratch?.request.env.BATON_NOTIFY_FD).toBeUndefined();
    expect(scratch?.request.env.LISTEN_PID).toBeUndefined();
    const pids = () => master.snapshot().generations.flatMap((g) => g.workers.map((w) => w.pid));
    expect(pids()).not.toContain(scratch?.pid);

    scratch?.ready(); // never counted: only 'exposed' (or this ready) decides the dry run
    scratch?.exit(0);
    jest.advanceTimersByTime(60_000);
    expect(os.processes).toHaveLength(3);
    expect(answers).toEqual([{ outcome: 'done', result: expect.objectContaining({ outcome: 'refused' }) }]);
    expect(master.snapshot().generations[0]?.patches).toEqual([]);

    master.dispatch({ type: 'stop', fast: false, source: 'test' });
    for (const worker of os.ofGeneration(1).filter((p) => p !== scratch)) worker.exit(0);
    await expect(master.finished).resolves.toBe(EXIT_CODES.ok);
  });

  test('refused without an active generation, and while stopping; a stop waits for the scratch worker', async () => {
    const starting = makeMaster();
    starting.dispatch({ type: 'start' });
    const refusals: unknown[] = [];
    starting.dispatch({
      type: 'inject-dry-run',
      patch: DRY_PATCH,
      source: 'test',
      reply: (a) => refusals.push(a),
    });
    expect(refusals).toEqual([expect.objectContaining({ outcome: 'ignored', reason: 'no-workers' })]);

    os = new FakeOs();
    const master = running();
    const answers: unknown[] = [];
    master.dispatch({
      type: 'inject-dry-run',
      patch: DRY_PATCH,
      source: 'test',
      reply: (a) => answers.push(a),
    });
    const scratch = os.processes.at(-1);
    master.dispatch({ type: 'stop', fast: false, source: 'test' });
    expect(scratch?.signals).toEqual(['SIGTERM']);
    master.dispatch({
      type: 'inject-dry-run',
      patch: DRY_PATCH,
      source: 'test',
      reply: (a) => answers.push(a),
    });
    expect(answers).toEqual([expect.objectContaining({ outcome: 'ignored', reason: 'stopping' })]);
    for (const worker of os.ofGeneration(1).filter((p) => p !== scratch)) worker.exit(0);
    expect(master.state).toBe('stopping');
    scratch?.exit(0);
    expect(answers).toHaveLength(2);
    await expect(master.finished).resolves.toBe(EXIT_CODES.ok);
  });
});

describe('apps as they are (the preload, issue #15)', () => {
  test('with the preload, workers get it in NODE_OPTIONS after the user’s, the listeners, and PORT', () => {
    const master = makeMaster({ preload: true });
    master.dispatch({ type: 'start' });
    const env = os.processes[0]?.request.env ?? {};
    expect(env.NODE_OPTIONS).toMatch(/^--import=file:\/\/\/.*\/child\/preload\.js$/);
    expect(env.PORT).toBe('8080');
    expect(JSON.parse(env.BATON_LISTENERS ?? '')).toEqual([
      { name: 'http', kind: 'tcp', port: 8080, address: '127.0.0.1' },
      { name: 'game', kind: 'tcp', port: 9000, address: '127.0.0.1' },
    ]);
    const without = makeMaster({ preload: false });
    without.dispatch({ type: 'start' });
    expect(os.processes[2]?.request.env).not.toHaveProperty('NODE_OPTIONS');
    expect(os.processes[2]?.request.env).not.toHaveProperty('PORT');
  });

  test("{ baton: 'listening' } makes a worker ready under auto only: --ready ipc waits for the app's own 'ready'", () => {
    const master = makeMaster({ workers: 1 });
    master.dispatch({ type: 'start' });
    os.processes[0]?.message({ baton: 'listening' });
    expect(master.activeGeneration?.id).toBe(1);
    expect(logs.find((entry) => entry.msg === 'worker ready')).toMatchObject({ via: 'listening' });

    const ipcOnly = makeMaster({ workers: 1, ready: { kind: 'ipc' } });
    ipcOnly.dispatch({ type: 'start' });
    os.processes[1]?.message({ baton: 'listening' });
    expect(ipcOnly.activeGeneration).toBeUndefined();
    os.processes[1]?.ready();
    expect(ipcOnly.activeGeneration?.id).toBe(1);
  });

  test('a worker that exits 0 before it is ready is told it may have bound baton’s port itself (EADDRINUSE)', () => {
    const master = makeMaster({ workers: 1 });
    master.dispatch({ type: 'start' });
    os.processes[0]?.exit(0);
    const failed = messages().find((msg) => msg.startsWith('start failed'));
    expect(failed).toContain('worker 0 exited with code 0 before it was ready. A server that exits');
    expect(failed).toContain("baton's port 8080, 9000 itself gets EADDRINUSE");
    logs.length = 0;
    const other = makeMaster({ workers: 1 });
    other.dispatch({ type: 'start' });
    os.processes[1]?.exit(1);
    expect(messages().find((msg) => msg.startsWith('start failed'))).not.toContain('EADDRINUSE');
  });

  test('a worker not under the preload that listens on a port of its own and on none of baton’s is named in one warning at once, and its ready deadline failure names the port', () => {
    const master = makeMaster({ workers: 1, command: 'python3', preload: true, readyTimeoutMs: 5_000 });
    master.dispatch({ type: 'start' });
    const pid = os.processes[0]?.pid as number;
    os.ownPorts.set(pid, [8123]);
    jest.advanceTimersByTime(OWN_PORT_CHECK_INTERVAL_MS + OWN_PORT_GRACE_MS - 1);
    expect(messages().some((msg) => msg.includes('of its own'))).toBe(false);
    jest.advanceTimersByTime(OWN_PORT_CHECK_INTERVAL_MS);
    const warned = logs.filter((entry) => String(entry.msg).includes('of its own'));
    expect(warned).toHaveLength(1);
    expect(warned[0]).toMatchObject({ level: 40, worker: 0, pid, ports: [8123] });
    expect(String(warned[0]?.msg)).toContain(
      `worker 0 (pid ${pid}) listens on port 8123 of its own, not on baton's http (tcp://127.0.0.1:8080), game (tcp://127.0.0.1:9000)`,
    );
    expect(String(warned[0]?.msg)).toContain('--listen http=tcp://127.0.0.1:8123');
    // An admin port before a slow start is not a failure: the generation still waits for its deadline.
    expect(master.generations[0]?.state).toBe('starting');
    jest.advanceTimersByTime(5_000);
    expect(master.generations[0]?.state).toBe('failed');
    const failed = logs.find((entry) => String(entry.msg).startsWith('start failed'));
    expect(failed).toMatchObject({ reason: 'listens-elsewhere', worker: 0, pid, ports: [8123] });
    expect(String(failed?.msg)).toContain(`worker 0 (pid ${pid}) listens on port 8123 of its own`);
    expect(logs.filter((entry) => String(entry.msg).includes('of its own'))).toHaveLength(2);
  });

  test('an admin port is fine once the worker waits on baton’s listener; a Node worker under the preload is left to the preload', () => {
    const master = makeMaster({ workers: 1, command: 'python3', ready: { kind: 'ipc' } });
    master.dispatch({ type: 'start' });
    const pid = os.processes[0]?.pid as number;
    os.ownPorts.set(pid, [9100]);
    os.polling.add(pid);
    jest.advanceTimersByTime(OWN_PORT_GRACE_MS * 4);
    expect(master.generations[0]?.state).toBe('starting');

    const node = makeMaster({ workers: 1, preload: true, ready: { kind: 'ipc' } });
    node.dispatch({ type: 'start' });
    os.ownPorts.set(os.processes[1]?.pid as number, [3000]);
    jest.advanceTimersByTime(OWN_PORT_GRACE_MS * 4);
    expect(node.generations[0]?.state).toBe('starting');
    expect(messages().some((msg) => msg.includes('of its own'))).toBe(false);
  });

  test('a reload whose worker listens elsewhere fails at its ready deadline with the port named, and the old generation serves on', () => {
    const master = running({ workers: 1, command: 'python3', readyTimeoutMs: 5_000 });
    master.dispatch({ type: 'reload', source: 'test' });
    os.ownPorts.set(os.ofGeneration(2)[0]?.pid as number, [8123]);
    jest.advanceTimersByTime(OWN_PORT_CHECK_INTERVAL_MS * 2 + OWN_PORT_GRACE_MS);
    expect(master.generations.find((g) => g.id === 2)?.state).toBe('starting');
    jest.advanceTimersByTime(5_000);
    expect(master.generations.find((g) => g.id === 2)?.state).toBe('failed');
    expect(master.activeGeneration?.id).toBe(1);
    expect(messages().some((m) => m.startsWith('reload failed') && m.includes('listens on port 8123'))).toBe(
      true,
    );
  });

  test('a draining worker killed by the drain signal with connections open is named in a warning', () => {
    const master = running({ workers: 1 });
    os.processes[0]?.message({ baton: 'connections', count: 3 });
    master.dispatch({ type: 'reload', source: 'test' });
    os.ofGeneration(2)[0]?.ready();
    os.processes[0]?.exit(null, 'SIGTERM');
    const warning = logs.find((entry) => String(entry.msg).includes('does not drain'));
    expect(warning).toMatchObject({ level: 40, gen: 1, worker: 0, pid: 1000 });
    expect(String(warning?.msg)).toContain(
      'ended by SIGTERM itself while 3 connection(s) were last seen open',
    );
    // Killed by the drain signal with nothing open cut nobody: no warning.
    logs.length = 0;
    master.dispatch({ type: 'reload', source: 'test' });
    os.ofGeneration(3)[0]?.ready();
    os.ofGeneration(2)[0]?.exit(null, 'SIGTERM');
    expect(messages().some((msg) => msg.includes('does not drain'))).toBe(false);
  });
});

describe('config reload (SIGHUP)', () => {
  const CONFIG = { path: '/srv/baton.json', hash: 'aaaaaaaaaaaa', loadedAt: 0, format: 'baton' as const };
  /** A master started from a config file whose next read `next` decides. */
  function fromConfig(next: () => Partial<MasterOptions>) {
    const reads: Array<string | undefined> = [];
    const master = running(
      {},
      {
        config: CONFIG,
        readConfig: (file): StartSettings => {
          reads.push(file);
          const options = { ...OPTIONS, ...next() };
          return { options, raw: { command: [] }, config: { ...CONFIG, hash: 'bbbbbbbbbbbb' }, warnings: [] };
        },
      },
    );
    return { master, reads };
  }

  test('the new generation runs the file read again; the old one drains with its own settings', () => {
    const { master, reads } = fromConfig(() => ({
      workers: 3,
      env: { STAGE: 'two' },
      drainSignal: 'SIGINT',
      args: ['next.js'],
    }));
    master.dispatch({ type: 'reload', source: 'SIGHUP', config: true });
    expect(reads).toEqual(['/srv/baton.json']);
    const fresh = os.ofGeneration(2);
    expect(fresh).toHaveLength(3);
    expect(fresh[0]?.request.args).toEqual(['next.js']);
    expect(fresh[0]?.request.env.STAGE).toBe('two');
    // A worker of generation 1 that crashes meanwhile comes back with generation 1's command.
    os.ofGeneration(1)[0]?.exit(1);
    jest.advanceTimersByTime(RESTART_BACKOFF_BASE_MS);
    expect(os.ofGeneration(1)[2]?.request.args).toEqual(['app.js']);
    expect(os.ofGeneration(1)[2]?.request.env.STAGE).toBeUndefined();
    os.ofGeneration(1)[2]?.ready();
    for (const p of fresh) p.ready();
    expect(master.activeGeneration?.id).toBe(2);
    // Generation 1 drains with its own signal, not the file's new one.
    expect(os.ofGeneration(1)[1]?.signals).toEqual(['SIGTERM']);
    expect(master.snapshot().generations.find((g) => g.id === 2)?.config?.hash).toBe('bbbbbbbbbbbb');
    expect(master.snapshot().generations.find((g) => g.id === 1)?.config?.hash).toBe('aaaaaaaaaaaa');
    // SIGUSR2 reloads with the same (new) settings.
    master.dispatch({ type: 'reload', source: 'SIGUSR2' });
    expect(reads).toHaveLength(1);
    expect(os.ofGeneration(3)).toHaveLength(3);
  });

  test('a file that does not validate refuses the reload in one line, and nothing changes', () => {
    const { master } = fromConfig(() => {
      throw new UsageError("baton.json: Expected `workers` to be a whole number from 1 to 1024, got 'three'");
    });
    const answers: unknown[] = [];
    master.dispatch({
      type: 'reload',
      source: 'control',
      config: true,
      reply: (answer) => answers.push(answer),
    });
    expect(answers).toEqual([
      {
        outcome: 'refused',
        reason: 'config',
        message: "baton.json: Expected `workers` to be a whole number from 1 to 1024, got 'three'",
      },
    ]);
    expect(os.ofGeneration(2)).toHaveLength(0);
    expect(messages()).toContain(
      "config refused: baton.json: Expected `workers` to be a whole number from 1 to 1024, got 'three'",
    );
    expect(master.activeGeneration?.id).toBe(1);
  });

  test('without a config file, SIGHUP reloads with the same settings; reload --config is refused', () => {
    const master = running();
    const answers: unknown[] = [];
    master.dispatch({
      type: 'reload',
      source: 'control',
      config: true,
      reply: (answer) => answers.push(answer),
    });
    expect(answers).toMatchObject([{ outcome: 'refused', reason: 'config' }]);
    master.dispatch({ type: 'reload', source: 'SIGHUP', config: true });
    expect(os.ofGeneration(2)).toHaveLength(2);
  });

  test('a listener the file adds is bound before the reload; one it drops closes once no generation uses it', async () => {
    const specs = (...texts: string[]) => texts.map((text, index) => parseListen(text, index));
    const start = specs('http=tcp://127.0.0.1:8080', 'game=tcp://127.0.0.1:9000');
    let listen = specs(
      'http=tcp://127.0.0.1:8080',
      'game=tcp://127.0.0.1:9000',
      'admin=tcp://127.0.0.1:9100',
    );
    const bound: string[] = [];
    const master = running(
      { listen: start },
      {
        config: CONFIG,
        readConfig: (): StartSettings => ({
          options: { ...OPTIONS, listen },
          raw: { command: [] },
          config: CONFIG,
          warnings: [],
        }),
        bindListeners: async (added) => {
          bound.push(...added.map((spec) => spec.name));
          return added.map((spec) => ({
            name: spec.name,
            fd: 30,
            inode: 7003,
            kind: 'tcp' as const,
            port: 9100,
            address: '127.0.0.1',
            close: () => closedListeners.push(spec.name),
          }));
        },
      },
    );
    master.dispatch({ type: 'reload', source: 'SIGHUP', config: true });
    // Nothing starts until the listener is bound.
    expect(os.ofGeneration(2)).toHaveLength(0);
    await Promise.resolve();
    await Promise.resolve();
    expect(bound).toEqual(['admin']);
    expect(os.ofGeneration(2).map((p) => p.request.listenerFds)).toEqual([
      [20, 21, 30],
      [20, 21, 30],
    ]);
    expect(os.ofGeneration(2)[0]?.request.env.LISTEN_FDNAMES).toBe('http:game:admin');
    for (const p of os.ofGeneration(2)) p.ready();
    // Generation 1's workers restarted meanwhile would still get its two listeners.
    listen = specs('http=tcp://127.0.0.1:8080', 'game=tcp://127.0.0.1:9000');
    master.dispatch({ type: 'reload', source: 'SIGHUP', config: true });
    expect(os.ofGeneration(3).map((p) => p.request.listenerFds)).toEqual([
      [20, 21],
      [20, 21],
    ]);
    for (const p of os.ofGeneration(3)) p.ready();
    for (const p of os.ofGeneration(1)) p.exit(0);
    // Generation 2 still drains on admin: its master copy stays open until its last worker is gone.
    expect(closedListeners).toEqual([]);
    for (const p of os.ofGeneration(2)) p.exit(0);
    expect(closedListeners).toEqual(['admin']);
    expect(messages()).toContain('listener closed');
  });
});
