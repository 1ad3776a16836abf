/**
 * `baton inject --dry-run`: a patch tried in a scratch worker of the serving generation's code, never
 * in a worker that serves. The scratch worker starts from the generation's command, environment and
 * directory, with BATON_SCRATCH=1 and no listener: it gets stdio and the IPC channel only, so it can
 * accept no connection, and the child API's serve() resolves there without listening. Once it has
 * exposed its values (or said ready), it gets the patches its generation already runs, then the one
 * tried; whatever it answers, it is stopped, and the caller hears the outcome once it is gone.
 *
 * A scratch worker belongs to no generation: status does not list it, readiness does not count it,
 * nothing restarts it, and nothing it ran is recorded as applied. The master feeds each dry run its
 * events (messages, exit, deadlines) one at a time, from its dispatcher.
 */

import { type MasterWire, type PatchFailure, parseWorkerMessage } from '../child/protocol.js';
import type { Generation } from './generation.js';
import { callerFacts, INJECT_ANSWER_TIMEOUT_MS, type PatchSource } from './inject.js';
import type { Logger } from './log.js';
import type { SpawnRequest, TimerHandle, WorkerCallbacks, WorkerProcess } from './os.js';
import { OutputTail } from './worker.js';

/** How long a scratch worker has to exit after the drain signal before it is killed. */
export const SCRATCH_KILL_AFTER_MS = 5_000;

/** How many of the scratch worker's last stderr lines explain an exit. */
const STDERR_LINES_REPORTED = 10;

/**
 * `ran`: the patch loaded and its default export returned. `failed`: it (or a patch the generation
 * already runs) did not parse, had no function to call, or threw. `refused`: the scratch worker said
 * ready without exposing anything, or has no IPC channel. `exited`: it exited before it answered.
 * `no-answer`: it did not take the patch within `--ready-timeout`, or did not answer within 10 s.
 */
export type DryRunOutcome = 'ran' | 'failed' | 'refused' | 'exited' | 'no-answer';

/** How a dry run went. */
export interface DryRunResult {
  /** The generation whose code the scratch worker ran. */
  generation: number;
  pid: number | undefined;
  outcome: DryRunOutcome;
  /** Why it did not run (absent when it ran). */
  error?: PatchFailure;
  /** How the scratch worker ended, when it exited before it answered. */
  exitCode?: number | null;
  signal?: string | null;
  /** The end of its stderr, when it exited before it answered. */
  stderrTail?: string;
}

/** What a dry-run request became. */
export type DryRunAnswer =
  | { outcome: 'done'; result: DryRunResult }
  | { outcome: 'ignored'; reason: 'stopping' | 'no-workers' | 'command-not-found'; message: string };

/** What a dry run is told, through the master's dispatcher. */
export type DryRunEvent =
  | { kind: 'message'; run: DryRun; message: unknown }
  | { kind: 'exited'; run: DryRun; exitCode: number | null; signal: NodeJS.Signals | null }
  | { kind: 'deadline'; run: DryRun }
  | { kind: 'kill-due'; run: DryRun };

/** What a dry run is: the patch, what the generation already runs, and how to start and stop the worker. */
export interface DryRunPlan {
  patch: PatchSource;
  /** The patches the generation keeps, oldest first: a worker it starts gets them too. */
  earlier: readonly PatchSource[];
  generation: number;
  /** The scratch worker: no listener, no notify pipe, BATON_SCRATCH=1 (the master builds it). */
  spawn: SpawnRequest;
  /** How long it has to expose its values or say ready (`--ready-timeout`). */
  startTimeoutMs: number;
  /** What asks it to stop (the drain signal). */
  stopSignal: NodeJS.Signals;
}

/** What a dry-run request finds in the master when it comes, to build its plan from. */
export interface DryRunSetup {
  /** The generation whose code the scratch worker runs: the active one, if any. */
  generation: Generation | undefined;
  /** The worker's command as given (for the refusal when it is not found). */
  command: string;
  /** The command as an absolute path now, or undefined if it is not found. */
  resolveCommand(): string | undefined;
  /** The plan of a dry run of `patch` in `generation`'s code with `command`. */
  plan(patch: PatchSource, generation: Generation, command: string): DryRunPlan;
}

/** What dry runs need from the master. */
export interface DryRunPorts {
  logger: Logger;
  /** Starts a process through the OS seam. */
  spawn(request: SpawnRequest, callbacks: WorkerCallbacks): WorkerProcess;
  setTimer(ms: number, fn: () => void): TimerHandle;
  /** Queues `event` in the master's dispatcher, which hands it back to `DryRunner.on`. */
  queue(event: DryRunEvent): void;
  /** Where the scratch worker's stderr goes once its tail is kept (the master's stderr). */
  writeStderr(chunk: Buffer): void;
}

/** One scratch worker and the patch it tries: starting → patching → stopping → exited. */
export class DryRun {
  state: 'starting' | 'patching' | 'stopping' | 'exited' = 'starting';
  process: WorkerProcess | undefined;
  readonly stderr = new OutputTail();
  /** The outcome, once known; the caller hears it once the scratch worker has exited. */
  result: DryRunResult | undefined;
  /** The master began to stop before the outcome was known. */
  interrupted = false;
  timer: TimerHandle | undefined;

  constructor(
    readonly plan: DryRunPlan,
    readonly reply: (answer: DryRunAnswer) => void,
  ) {}

  get pid(): number | undefined {
    return this.process?.pid;
  }

  /** The IPC id of the patch tried: the patches the generation already runs come first, 1, 2, ... */
  get patchId(): number {
    return this.plan.earlier.length + 1;
  }
}

type Handlers = { [K in DryRunEvent['kind']]: (event: Extract<DryRunEvent, { kind: K }>) => void };

/** Runs dry runs: starts each scratch worker, sends the patches, stops it, answers. */
export class DryRunner {
  private readonly runs = new Set<DryRun>();
  private readonly handlers: Handlers = {
    message: (event) => this.onMessage(event.run, event.message),
    exited: (event) => this.onExited(event.run, event.exitCode, event.signal),
    deadline: (event) => this.onDeadline(event.run),
    'kill-due': (event) => {
      if (event.run.state !== 'exited') event.run.process?.kill('SIGKILL');
    },
  };

  constructor(private readonly ports: DryRunPorts) {}

  /** Whether a scratch worker is still alive (the master waits for it before it exits). */
  get running(): boolean {
    return this.runs.size > 0;
  }

  /**
   * `baton inject --dry-run`: starts a scratch worker of the active generation's code to try `patch`,
   * or refuses with why (no active generation, no command); `source` names who asked, for the log.
   */
  request(
    patch: PatchSource,
    source: string,
    setup: DryRunSetup,
    reply: (answer: DryRunAnswer) => void,
  ): void {
    const facts = { source, file: patch.file, hash: patch.hash };
    const { logger } = this.ports;
    const { generation } = setup;
    if (!generation) {
      logger.warn(facts, 'patch dry run refused: no generation is active');
      reply({
        outcome: 'ignored',
        reason: 'no-workers',
        message: 'No generation is active: there is no code to try the patch in.',
      });
      return;
    }
    const command = setup.resolveCommand();
    if (command === undefined) {
      logger.error({ ...facts, command: setup.command }, 'patch dry run refused: command not found');
      reply({
        outcome: 'ignored',
        reason: 'command-not-found',
        message: `Command not found or not executable: '${setup.command}': no scratch worker to try the patch in.`,
      });
      return;
    }
    logger.info({ ...facts, gen: generation.id }, 'patch dry run starting');
    this.start(setup.plan(patch, generation, command), reply);
  }

  /** Starts the scratch worker of `plan`; `reply` gets the outcome once it has exited. */
  start(plan: DryRunPlan, reply: (answer: DryRunAnswer) => void): void {
    const run = new DryRun(plan, reply);
    this.runs.add(run);
    const { queue } = this.ports;
    run.process = this.ports.spawn(plan.spawn, {
      onMessage: (message) => queue({ kind: 'message', run, message }),
      onStderr: (chunk) => {
        run.stderr.push(chunk);
        this.ports.writeStderr(chunk);
      },
      // It has no notify pipe.
      onNotify: () => {},
      onExit: (exitCode, signal) => queue({ kind: 'exited', run, exitCode, signal }),
    });
    run.timer = this.ports.setTimer(plan.startTimeoutMs, () => queue({ kind: 'deadline', run }));
    this.ports.logger.debug(
      { gen: plan.generation, pid: run.pid, file: plan.patch.file },
      'scratch worker spawned',
    );
  }

  /** Applies one event the master dispatched. */
  on(event: DryRunEvent): void {
    (this.handlers[event.kind] as (event: DryRunEvent) => void)(event);
  }

  /**
   * The master is stopping: a dry run whose outcome is not known yet ends now, and its caller hears
   * `stopping`; `fast` kills every scratch worker at once.
   */
  stopAll(fast: boolean): void {
    for (const run of this.runs) {
      if (run.state === 'starting' || run.state === 'patching') {
        run.interrupted = true;
        this.stop(run);
      }
      if (fast) run.process?.kill('SIGKILL');
    }
  }

  private onMessage(run: DryRun, raw: unknown): void {
    const message = parseWorkerMessage(raw);
    if (run.state === 'starting' && message?.kind === 'exposed') {
      this.sendPatches(run);
    } else if (run.state === 'starting' && message?.kind === 'ready') {
      this.decide(run, 'refused', {
        message:
          'refused: the scratch worker said ready without exposing anything (call expose() from baton-supervisor/child before ready())',
        stack: undefined,
      });
    } else if (run.state === 'patching' && message?.kind === 'injected') {
      this.onInjected(run, message.id, message.error);
    }
  }

  private sendPatches(run: DryRun): void {
    const worker = run.process;
    if (!worker?.send) {
      this.decide(run, 'refused', {
        message: 'refused: the scratch worker has no IPC channel',
        stack: undefined,
      });
      return;
    }
    run.state = 'patching';
    run.timer?.cancel();
    run.timer = this.ports.setTimer(INJECT_ANSWER_TIMEOUT_MS, () =>
      this.ports.queue({ kind: 'deadline', run }),
    );
    [...run.plan.earlier, run.plan.patch].forEach((patch, index) => {
      const message: MasterWire['inject'] = {
        baton: 'inject',
        id: index + 1,
        source: patch.source,
        hash: patch.hash,
        file: patch.file,
      };
      // A send that fails means the worker is gone or never reads: its exit or the deadline says so.
      worker.send?.(message, undefined, () => {});
    });
  }

  private onInjected(run: DryRun, id: number, error: PatchFailure | undefined): void {
    if (id === run.patchId) {
      if (error) this.decide(run, 'failed', error);
      else this.decide(run, 'ran', undefined);
      return;
    }
    const earlier = run.plan.earlier[id - 1];
    if (error && earlier) {
      this.decide(run, 'failed', {
        message: `${earlier.file}, a patch generation ${run.plan.generation} already runs, failed in the scratch worker first: ${error.message}`,
        stack: error.stack,
      });
    }
  }

  private onDeadline(run: DryRun): void {
    if (run.state !== 'starting' && run.state !== 'patching') return;
    const message =
      run.state === 'starting'
        ? `the scratch worker neither exposed its values nor said ready within ${run.plan.startTimeoutMs / 1000} s (--ready-timeout)`
        : `no answer within ${INJECT_ANSWER_TIMEOUT_MS / 1000} s: is it a Node worker using baton-supervisor/child?`;
    this.decide(run, 'no-answer', { message, stack: undefined });
  }

  /** The outcome is known: the scratch worker is stopped, and the caller hears it once it has exited. */
  private decide(run: DryRun, outcome: DryRunOutcome, error: PatchFailure | undefined): void {
    run.result = {
      generation: run.plan.generation,
      pid: run.pid,
      outcome,
      ...(error ? { error } : {}),
    };
    this.stop(run);
  }

  private stop(run: DryRun): void {
    run.state = 'stopping';
    run.timer?.cancel();
    run.process?.kill(run.plan.stopSignal);
    run.timer = this.ports.setTimer(SCRATCH_KILL_AFTER_MS, () => this.ports.queue({ kind: 'kill-due', run }));
  }

  private onExited(run: DryRun, exitCode: number | null, signal: NodeJS.Signals | null): void {
    if (run.state === 'exited') return;
    const before = run.state === 'patching' ? 'before it answered' : 'before it took the patch';
    run.state = 'exited';
    run.timer?.cancel();
    this.runs.delete(run);
    const { patch, generation } = run.plan;
    const facts = {
      file: patch.file,
      hash: patch.hash,
      ...callerFacts(patch),
      gen: generation,
      pid: run.pid,
    };
    if (run.interrupted) {
      this.ports.logger.warn({ ...facts, outcome: 'interrupted' }, 'patch dry run');
      run.reply({
        outcome: 'ignored',
        reason: 'stopping',
        message: 'The master is stopping: the dry run was cut short.',
      });
      return;
    }
    const result = run.result ?? {
      generation,
      pid: run.pid,
      outcome: 'exited',
      error: {
        message:
          run.pid === undefined
            ? 'the scratch worker could not be started'
            : `the scratch worker ${signal ? `was killed by ${signal}` : `exited with code ${exitCode}`} ${before}`,
        stack: undefined,
      },
      exitCode,
      signal,
      stderrTail: run.stderr.lines(STDERR_LINES_REPORTED).join('\n'),
    };
    this.ports.logger[result.outcome === 'ran' ? 'info' : 'warn'](
      {
        ...facts,
        outcome: result.outcome,
        ...(result.error ? { error: result.error.message } : {}),
        ...(result.outcome === 'exited' ? { exitCode, signal, stderrTail: result.stderrTail } : {}),
      },
      'patch dry run',
    );
    run.reply({ outcome: 'done', result });
  }
}
