/**
 * baton's error family. Errors carry facts as fields, never messages to parse;
 * the CLI turns each into one line and an exit code (see EXIT_CODES).
 */

/** Exit codes of the `baton` command, documented in the README. */
export const EXIT_CODES = {
  ok: 0,
  internal: 1,
  usage: 2,
  listenFailed: 3,
  startFailed: 4,
  drainForced: 5,
  reloadFailed: 6,
  readyTimeout: 7,
  noMaster: 8,
  notHealthy: 9,
  masterStopping: 10,
  injectFailed: 11,
  reexecRefused: 12,
  commandNotExecutable: 126,
  commandNotFound: 127,
} as const;

/** What each exit code means, in `--help`'s words (the README shows `--help`). */
const EXIT_CODE_MEANINGS: Record<keyof typeof EXIT_CODES, string> = {
  ok: 'done',
  internal: 'internal error',
  usage: 'bad usage',
  listenFailed: 'cannot listen (a --listen address or the control socket)',
  startFailed: 'first generation failed to start',
  drainForced: 'workers killed at the drain deadline',
  reloadFailed: 'reload: the new version failed to start',
  readyTimeout: 'reload: the new version was not ready in time',
  noMaster: 'no master found',
  notHealthy: 'status --check: not healthy',
  masterStopping: 'the master is stopping',
  injectFailed: 'inject: the patch failed on a worker or in its dry run',
  reexecRefused: 'reexec: the new baton was refused (the master runs on, unchanged)',
  commandNotExecutable: 'the --user cannot execute the command',
  commandNotFound: 'command not found',
};

/** Every exit code and its meaning, in one line: `0 done, 1 internal error, ...`. */
export function describeExitCodes(): string {
  return (Object.keys(EXIT_CODES) as Array<keyof typeof EXIT_CODES>)
    .map((name) => `${EXIT_CODES[name]} ${EXIT_CODE_MEANINGS[name]}`)
    .join(', ');
}

/** Any failure baton knows how to explain in one line. */
export class BatonError extends Error {
  /** The exit code a command that ends on this error returns. */
  readonly exitCode: number = EXIT_CODES.internal;

  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A flag or argument the user gave is wrong; nothing was started. */
export class UsageError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.usage;
}

/** A config file re-read for a reload does not read or validate: the reload was refused, nothing changed. */
export class ConfigRefusedError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.usage;
}

/** `baton reexec` was refused: the new program does not take the state, or something is under way. */
export class ReexecRefusedError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.reexecRefused;
}

/** A listener could not be bound (port in use, no permission, bad address). */
export class ListenError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.listenFailed;

  constructor(
    readonly listener: string,
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The worker command does not exist or cannot be executed. */
export class CommandNotFoundError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.commandNotFound;

  constructor(readonly command: string) {
    super(`Command not found or not executable: '${command}'. Check the command after '--' and your PATH.`);
  }
}

/**
 * The workers' user (`--user`, `--group`) cannot execute the command: a folder on its path that the
 * user cannot enter, or a file it may not execute. Found at start, before anything is bound.
 */
export class CommandNotExecutableError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.commandNotExecutable;

  constructor(
    readonly command: string,
    /** The folder the user cannot enter, or the command file itself. */
    readonly blockedPath: string,
    readonly uid: number,
    readonly gid: number,
    message: string,
  ) {
    super(message);
  }
}

/** Why a generation failed to start. */
export type StartFailure =
  | {
      kind: 'worker-exited';
      worker: number;
      pid: number | undefined;
      exitCode: number | null;
      signal: string | null;
      stderrTail: string;
      /** It had said ready, and exited before its generation took over (while adopting sessions, say). */
      afterReady?: boolean;
      /** What such an exit most often means (supervisor/unmodified.ts). */
      hint?: string;
    }
  | { kind: 'ready-timeout'; notReady: number[]; timeoutMs: number }
  | OwnPortsFailure
  | { kind: 'command-not-found'; command: string }
  /** The sessions could not move to the new generation (its workers did not adopt them in time). */
  | { kind: 'handoff-failed'; reason: string };

/** A starting worker that /proc shows listening on ports of its own and waiting on none of baton's. */
export interface OwnPortsFailure {
  kind: 'listens-elsewhere';
  worker: number;
  pid: number | undefined;
  /** The TCP ports it listens on by itself. */
  ports: number[];
  /** baton's listeners, where it should have listened. */
  listeners: Array<{ name: string; kind: 'tcp' | 'udp' | 'unix'; port: number; address: string }>;
}

/** Where a worker listens, where baton listens, and the fix, for a worker that listens on ports of its own. */
export function describeOwnPorts(failure: OwnPortsFailure): string {
  const where = failure.listeners
    .map((listener) =>
      listener.kind === 'unix'
        ? `${listener.name} (unix:${listener.address})`
        : `${listener.name} (${listener.kind}://${listener.address}:${listener.port})`,
    )
    .join(', ');
  const first = failure.listeners.find((listener) => listener.kind === 'tcp');
  const moveBaton = first
    ? `, or start baton with --listen ${first.name}=tcp://${first.address}:${failure.ports[0]}`
    : '';
  return `worker ${failure.worker} (pid ${failure.pid}) listens on port ${failure.ports.join(', ')} of its own, not on baton's ${where}: nobody reaches it there. Make it accept on the socket it inherits (fd 3 on, as LISTEN_FDS says; a Node app may listen on process.env.PORT with baton's preload, not --no-preload)${moveBaton}`;
}

/** A generation did not become ready: a worker exited or the deadline passed. */
export class GenerationFailedError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.startFailed;

  constructor(
    readonly generation: number,
    readonly failure: StartFailure,
  ) {
    super(describeStartFailure(generation, failure));
  }
}

/** One line that says why a generation did not start. */
export function describeStartFailure(generation: number, failure: StartFailure): string {
  if (failure.kind === 'command-not-found') {
    return `Generation ${generation} failed to start: command not found or not executable: '${failure.command}'.`;
  }
  if (failure.kind === 'ready-timeout') {
    const workers = `worker${failure.notReady.length === 1 ? '' : 's'} ${failure.notReady.join(', ')}`;
    return `Generation ${generation} did not say ready within ${failure.timeoutMs} ms (${workers} not ready): a worker says ready with the child API's ready(), process.send('ready') or READY=1 on the pipe in $BATON_NOTIFY_FD, or is taken as ready once it waits for connections on a listener (--ready poll, and --ready auto for a command that is not node).`;
  }
  if (failure.kind === 'listens-elsewhere') {
    return `Generation ${generation} failed to start: ${describeOwnPorts(failure)}.`;
  }
  if (failure.kind === 'handoff-failed') {
    return `Generation ${generation} did not take over: ${failure.reason}; every session stays on the old version.`;
  }
  const how = failure.signal ? `was killed by ${failure.signal}` : `exited with code ${failure.exitCode}`;
  if (failure.afterReady) {
    return `Generation ${generation} did not take over: worker ${failure.worker} ${how} after it was ready (while adopting the old generation's sessions, if the app moves them; they stay on the old version).`;
  }
  const hint = failure.hint ? ` ${failure.hint.charAt(0).toUpperCase()}${failure.hint.slice(1)}.` : '';
  return `Generation ${generation} failed to start: worker ${failure.worker} ${how} before it was ready.${hint}`;
}

/** What stands in the way of a control socket. */
export type ControlSocketProblem =
  | 'unsafe-directory'
  | 'cannot-create-directory'
  | 'in-use'
  | 'not-a-socket'
  | 'path-too-long'
  | 'cannot-listen';

/** The master cannot have a control socket that only its owner can reach; it refuses to start. */
export class ControlSocketError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.listenFailed;

  constructor(
    readonly path: string,
    readonly problem: ControlSocketProblem,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The CLI found no master to talk to (no socket, a stale one, or nobody answering). */
export class NoMasterError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.noMaster;

  constructor(
    readonly where: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** A reload whose new generation did not start: a worker exited, or the readiness deadline passed. */
export class ReloadFailedError extends BatonError {
  override readonly exitCode: number;

  constructor(
    readonly generation: number,
    readonly failure: StartFailure,
    /** The generation that keeps serving, if any. */
    readonly serving?: number,
  ) {
    const keeps = serving === undefined ? '' : ` Generation ${serving} keeps serving.`;
    super(`${describeStartFailure(generation, failure)}${keeps}`);
    this.exitCode = failure.kind === 'ready-timeout' ? EXIT_CODES.readyTimeout : EXIT_CODES.reloadFailed;
  }
}

/** The new generation serves, but an old one had to be killed at the drain deadline. */
export class DrainForcedError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.drainForced;

  constructor(
    readonly generation: number,
    readonly forced: number[],
  ) {
    super(
      `Generation ${generation} serves, but generation ${forced.join(', ')} did not drain in time: the workers left were killed at the drain deadline.`,
    );
  }
}

/** The master is stopping, so a reload was not carried out or not followed to its end. */
export class MasterStoppingError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.masterStopping;
}

/** `baton status --check`: no active generation with every worker ready. */
export class NotHealthyError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.notHealthy;
}

/** `baton inject`: the patch did not go through on every worker it was meant for (or on none). */
export class InjectFailedError extends BatonError {
  override readonly exitCode: number = EXIT_CODES.injectFailed;
}

/** The master answered something the CLI did not expect, or the connection ended before the answer. */
export class ControlProtocolError extends BatonError {
  constructor(
    readonly code: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
