/**
 * The master's rooms on their own: the pure decisions of readiness and spawning, the transitions of a
 * generation, and the upgrade against fake ports.
 */
import { describe, expect, test } from '@jest/globals';
import { pino } from 'pino';
import { stopWait } from '../../supervisor/decisions.js';
import { Generation } from '../../supervisor/generation.js';
import type { MasterEvent, Progress } from '../../supervisor/model.js';
import { parseStartOptions } from '../../supervisor/options.js';
import type { TimerHandle } from '../../supervisor/os.js';
import { countsAsReady, probesProc, Readiness, speaksIpc } from '../../supervisor/readiness.js';
import { Spawner, workerEnv } from '../../supervisor/spawn.js';
import { Upgrade, type UpgradePorts } from '../../supervisor/upgrade.js';
import { Worker } from '../../supervisor/worker.js';

describe('readiness', () => {
  test('a signal counts as ready in its own mode; auto takes every signal but the delay', () => {
    expect(countsAsReady('ipc', 'ipc')).toBe(true);
    expect(countsAsReady('ipc', 'notify')).toBe(false);
    expect(countsAsReady('delay', 'delay')).toBe(true);
    expect(countsAsReady('auto', 'poll')).toBe(true);
    expect(countsAsReady('auto', 'delay')).toBe(false);
    // The preload's 'listening' counts under auto only: --ready ipc waits for the app's own 'ready'.
    expect(countsAsReady('auto', 'listening')).toBe(true);
    expect(countsAsReady('ipc', 'listening')).toBe(false);
  });

  test('/proc is watched in poll mode, and in auto mode for programs that do not speak IPC', () => {
    expect(speaksIpc('/usr/bin/node')).toBe(true);
    expect(probesProc('auto', '/usr/bin/node')).toBe(false);
    expect(probesProc('auto', '/usr/bin/python3')).toBe(true);
    expect(probesProc('poll', '/usr/bin/node')).toBe(true);
    expect(probesProc('ipc', '/usr/bin/python3')).toBe(false);
    // npm start with the preload: the app behind it says ready once it listens on every listener.
    expect(probesProc('auto', '/usr/bin/npm', true)).toBe(false);
    expect(probesProc('auto', '/usr/bin/npm', false)).toBe(true);
  });
});

describe('--start-nice', () => {
  const options = (startNice: number) =>
    parseStartOptions({
      listen: 'http=tcp://127.0.0.1:0',
      ready: 'ipc',
      startNice,
      command: ['node', 'a.js'],
    });
  const fakeOs = (restored: number[], refusal?: string) => ({
    spawnWorker: () => {
      throw new Error('not here');
    },
    resolveCommand: () => '/usr/bin/node',
    pollsListeners: () => false,
    countConnections: () => undefined,
    ownListeningPorts: () => [],
    restorePriority: (pid: number) => {
      restored.push(pid);
      return refusal;
    },
    now: () => 100,
    setTimer: () => ({ cancel: () => {} }),
  });

  test("a slot's worker is spawned at the nice value, a scratch worker at the master's", () => {
    const generation = new Generation(1, '1', 1, 0, options(10));
    const spawner = new Spawner({
      os: fakeOs([]),
      logger: pino({ level: 'silent' }),
      options: options(10),
      listeners: [],
      env: {},
      cwd: '/',
      dispatch: () => {},
      writeStderr: () => {},
    });
    expect(spawner.request('/usr/bin/node', generation, 0).startNice).toBe(10);
    expect(spawner.request('/usr/bin/node', generation, undefined).startNice).toBeUndefined();
    const plain = new Generation(2, '2', 1, 0, options(0));
    expect(spawner.request('/usr/bin/node', plain, 0).startNice).toBeUndefined();
  });

  test('a worker gets its priority back when its ready counts, and a refusal is said once', () => {
    const restored: number[] = [];
    const ready: number[] = [];
    const warnings: string[] = [];
    const generations = [new Generation(1, '1', 2, 0, options(10)), new Generation(2, '2', 1, 0, options(0))];
    const logger = pino({ level: 'warn' }, { write: (line: string) => warnings.push(JSON.parse(line).msg) });
    const readiness = new Readiness({
      os: fakeOs(restored, 'EACCES: permission denied'),
      logger,
      options: options(10),
      listeners: [],
      dispatch: () => {},
      ready: (worker) => ready.push(worker.pid as number),
      listensElsewhere: () => {},
      generations: () => generations,
      kill: () => {},
      watchdog: () => {},
    });
    const workerOf = (generation: number, index: number, pid: number) => {
      const worker = new Worker(generation, index, 0);
      worker.process = { pid, kill: () => true };
      return worker;
    };
    const [first, second, other] = [workerOf(1, 0, 11), workerOf(1, 1, 12), workerOf(2, 0, 21)];
    readiness.onSignal(first, 'notify'); // does not count under --ready ipc: still at the lower priority
    expect(restored).toEqual([]);
    for (const worker of [first, second, other]) readiness.onSignal(worker, 'ipc');
    expect(restored).toEqual([11, 12]);
    expect(ready).toEqual([11, 12, 21]);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/keep their --start-nice priority/);
  });
});

describe('workerEnv', () => {
  const settings = {
    env: { PATH: '/bin', LISTEN_FDS: '9', NODE_CHANNEL_FD: '4', UNSET: undefined },
    listeners: [
      { name: 'http', kind: 'tcp' as const, port: 8080, address: '127.0.0.1' },
      { name: 'game', kind: 'tcp' as const, port: 9000, address: '127.0.0.1' },
    ],
    drainSignal: 'SIGTERM' as NodeJS.Signals,
    drainTimeoutMs: 30_000,
  };

  test("a worker gets the master's environment without its parent's descriptors, then baton's variables", () => {
    expect(workerEnv(settings, { generation: 2, version: 'v2', worker: 1 })).toEqual({
      PATH: '/bin',
      LISTEN_FDS: '2',
      LISTEN_FDNAMES: 'http:game',
      BATON_GENERATION: '2',
      BATON_WORKER: '1',
      BATON_VERSION: 'v2',
      BATON_DRAIN_SIGNAL: 'SIGTERM',
      BATON_DRAIN_TIMEOUT_MS: '30000',
      BATON_NOTIFY_FD: '5',
    });
  });

  test('a scratch worker gets no socket, no slot and no notify pipe, and BATON_SCRATCH=1', () => {
    expect(
      workerEnv({ ...settings, listeners: [] }, { generation: 2, version: 'v2', worker: undefined }),
    ).toEqual({
      PATH: '/bin',
      LISTEN_FDS: '0',
      BATON_SCRATCH: '1',
      BATON_GENERATION: '2',
      BATON_VERSION: 'v2',
      BATON_DRAIN_SIGNAL: 'SIGTERM',
      BATON_DRAIN_TIMEOUT_MS: '30000',
    });
  });

  test('with the preload, a worker gets NODE_OPTIONS, BATON_LISTENERS and PORT; a scratch worker does not', () => {
    const env = workerEnv({ ...settings, preload: true }, { generation: 2, version: 'v2', worker: 1 });
    expect(env.NODE_OPTIONS).toMatch(/^--import=file:\/\/\/.*\/child\/preload\.js$/);
    expect(env.PORT).toBe('8080');
    expect(JSON.parse(env.BATON_LISTENERS ?? '')).toEqual(settings.listeners);
    const scratch = workerEnv(
      { ...settings, listeners: [], preload: true },
      { generation: 2, version: 'v2', worker: undefined },
    );
    expect(scratch).not.toHaveProperty('NODE_OPTIONS');
    expect(scratch).not.toHaveProperty('BATON_LISTENERS');
  });
});

describe('Generation', () => {
  test('goes starting → active → draining → retired, and refuses every other step', () => {
    const generation = new Generation(1, '1', 1, 0);
    expect(generation.markRetired(1)).toBe(false);
    expect(generation.markActive(5)).toBe(true);
    expect(generation.markActive(6)).toBe(false);
    expect(generation.markFailed({ kind: 'command-not-found', command: 'x' })).toBe(false);
    expect(generation.activeAt).toBe(5);
    expect(generation.markDraining()).toBe(true);
    expect(generation.markDraining()).toBe(false);
    expect(generation.markRetired(9)).toBe(true);
    expect([generation.state, generation.retiredAt, generation.ended]).toEqual(['retired', 9, true]);
    expect(generation.markRetired(10)).toBe(false);
  });

  test('a failed generation keeps its state once its workers are gone, and has ended', () => {
    const generation = new Generation(1, '1', 1, 0);
    expect(generation.markFailed({ kind: 'command-not-found', command: 'x' })).toBe(true);
    expect(generation.markActive(1)).toBe(false);
    expect(generation.markDraining()).toBe(false);
    expect(generation.ended).toBe(false);
    expect(generation.markRetired(3)).toBe(true);
    expect([generation.state, generation.ended, generation.failure?.kind]).toEqual([
      'failed',
      true,
      'command-not-found',
    ]);
  });
});

describe('Upgrade against fake ports', () => {
  function upgrade({ commandMissing = false } = {}) {
    const reports: Progress[] = [];
    const events: MasterEvent[] = [];
    const started: Worker[] = [];
    const killed: Array<[number, NodeJS.Signals]> = [];
    let state: 'starting' | 'running' | 'stopping' | 'stopped' = 'starting';
    let failedToStart = false;
    const timer: TimerHandle = { cancel: () => {} };
    const ports: UpgradePorts = {
      config: () => undefined,
      generationEnded: () => {},
      os: {
        spawnWorker: () => {
          throw new Error('not here');
        },
        resolveCommand: () => '/usr/bin/node',
        pollsListeners: () => false,
        countConnections: () => undefined,
        ownListeningPorts: () => [],
        now: () => 100,
        setTimer: () => timer,
      },
      logger: pino({ level: 'silent' }),
      options: parseStartOptions({ listen: 'http=tcp://127.0.0.1:0', workers: 2, command: ['node', 'a.js'] }),
      listeners: [],
      handoff: { isSwitching: () => false, start: () => undefined, onGenerationRetired: () => {} },
      masterState: () => state,
      targetWorkers: () => 2,
      versionLabel: () => undefined,
      resolveCommand: () => (commandMissing ? undefined : '/usr/bin/node'),
      startWorker: (generation, slotIndex) => {
        const worker = new Worker(generation.id, slotIndex, 0);
        worker.process = { pid: 1000 + started.length, kill: () => true };
        (generation.slots[slotIndex] as { current: Worker | undefined }).current = worker;
        generation.workers.push(worker);
        started.push(worker);
      },
      started: () => {
        state = 'running';
      },
      startFailed: () => {
        failedToStart = true;
      },
      workerReady: () => {},
      servingWorkerExited: () => {},
      report: (progress) => reports.push(progress),
      dispatch: (event) => events.push(event),
      kill: (worker, signal) => killed.push([worker.index, signal]),
    };
    return { upgrade: new Upgrade(ports), reports, events, started, killed, failed: () => failedToStart };
  }

  test('a reload: the new generation takes over once every worker is ready, and the old one drains', () => {
    const { upgrade: up, reports, started, killed } = upgrade();
    up.start();
    for (const worker of started.splice(0)) up.onWorkerReady(worker, 'ipc');
    expect(up.activeGeneration?.id).toBe(1);
    expect(up.onReload('test')).toEqual({ outcome: 'started', generation: 2 });
    expect(up.onReload('test')).toEqual({ outcome: 'queued', generation: 3 });
    const [first, second] = started.splice(0) as [Worker, Worker];
    up.onWorkerReady(first, 'ipc');
    expect(up.activeGeneration?.id).toBe(1);
    up.onWorkerReady(second, 'ipc');
    expect(up.generations.map((generation) => generation.state)).toEqual(['draining', 'active', 'starting']);
    expect(killed).toEqual([
      [0, 'SIGTERM'],
      [1, 'SIGTERM'],
    ]);
    expect(reports.map((progress) => progress.kind)).toContain('generation-draining');
  });

  test('a first generation whose command is missing fails the start', () => {
    const { upgrade: up, reports, failed } = upgrade({ commandMissing: true });
    up.start();
    expect(up.generations[0]?.state).toBe('failed');
    expect(reports.at(-1)).toMatchObject({ kind: 'reload-failed', failure: { kind: 'command-not-found' } });
    expect(failed()).toBe(true);
  });
});

describe('stopWait', () => {
  test('counts the generations with live workers, their connections, and the time to the last deadline', () => {
    const generations = [
      { id: 1, drainStartedAt: 1_000, liveWorkers: [{ connections: 2 }, { connections: undefined }] },
      { id: 2, drainStartedAt: 4_000, liveWorkers: [{ connections: 5 }] },
      { id: 3, drainStartedAt: 4_000, liveWorkers: [] },
    ];
    expect(stopWait(generations, 5_000, 30_000)).toEqual({
      generations: [
        { gen: 1, workers: 2, connections: 2 },
        { gen: 2, workers: 1, connections: 5 },
      ],
      connections: 7,
      killInMs: 29_000,
    });
    expect(stopWait([{ id: 1, drainStartedAt: 0, liveWorkers: [] }], 5_000, 30_000)).toBeUndefined();
  });
});
