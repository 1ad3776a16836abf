/**
 * `baton reexec`: the master replaces its own program with the baton on disk, keeping its pid, its
 * listeners, its control socket and its running workers with their connections (docs/reexec.md).
 *
 * The old program writes what it knows as JSON (this file's `CarriedState`: settings, generations,
 * workers with the master's descriptors of each, listeners, the control socket, what the control
 * clients wait for), clears close-on-exec on every descriptor it names, and calls execve with
 * `<program> __resume <state file>`. The new program reads the file, opens each descriptor again
 * and adopts the workers: it reads their IPC channel as a bare descriptor (node-internals.ts), and
 * reaps them itself (linux.ts `reapChild`), since libuv reaps only what it spawned.
 *
 * Before any of that, the new program is tried in a separate process with the same state
 * (`<program> __reexec-try <state file>`): it must load, read the state and run on this Node. If it
 * does not, nothing changes.
 */
import { spawn } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ConfigLabel } from './config.js';
import type { ReloadRecord } from './control/history.js';
import type { ControlSettings } from './control/socket-path.js';
import type { GenerationState } from './generation.js';
import type { CarriedHooks } from './handoff.js';
import type { CarriedPatch } from './inject.js';
import { replaceProgram, setCloseOnExec } from './linux.js';
import type { CarriedListener } from './listener.js';
import type { Replacement } from './model.js';
import type { MasterOptions } from './options.js';
import type { CarriedProcess } from './os.js';
import { batonVersion } from './version.js';
import type { WorkerState } from './worker.js';

/** The version of the state's format: a program that reads another refuses it, and nothing changes. */
export const STATE_FORMAT = 1;

/** How long the new program has to say, in its trial, that it takes the state. */
export const TRY_TIMEOUT_MS = 30_000;

/** The hidden command that resumes a master from a state file (bin/baton.js). */
export const RESUME_COMMAND = '__resume';

/** The hidden command that tries a state file and says whether this program takes it. */
export const TRY_COMMAND = '__reexec-try';

/** One worker as carried: where it was in its life, and its process. */
export interface CarriedWorker {
  index: number;
  state: Exclude<WorkerState, 'exited' | 'starting'>;
  startedAt: number;
  readyAt?: number;
  connections?: number;
  lastWatchdogAt?: number;
  status?: string;
  /** A worker drained on its own (scale, replacement): when it is killed if still there. */
  killAt?: number;
  process: CarriedProcess;
  hooks?: CarriedHooks;
  exposed?: string[];
}

/** One generation as carried, with its live workers. */
export interface CarriedGeneration {
  id: number;
  version: string;
  state: Extract<GenerationState, 'active' | 'draining'>;
  startedAt: number;
  activeAt?: number;
  drainStartedAt?: number;
  forced?: boolean;
  /** Its own settings, when they differ from the master's (a config reload came after it). */
  settings?: MasterOptions;
  config?: ConfigLabel;
  /** Its listeners, as indexes in `CarriedMaster.listeners`. */
  listeners: number[];
  slots: Array<{ restarts: number; consecutiveCrashes: number; current?: number }>;
  /** Its live workers; `slots[i].current` is an index here. */
  workers: CarriedWorker[];
  replacements: Replacement[];
  patches: CarriedPatch[];
}

/** What the master itself carries (master.ts `carry`). */
export interface CarriedMaster {
  options: MasterOptions;
  config?: ConfigLabel;
  /** Every listener the master holds open. */
  listeners: CarriedListener[];
  /** The listeners a new generation gets, as indexes in `listeners`. */
  current: number[];
  generations: CarriedGeneration[];
  nextGenerationId: number;
  /** Workers per generation, once `scale` changed it. */
  scaledWorkers?: number;
  sessions: { moved: number; kept: number; failed: number };
  /** Reloads asked while the re-exec ran (signals: their source, and whether to read the config file again). */
  reloadsWaiting: Array<{ source: string; config?: true | string }>;
}

/** A control client the new program answers: its connection, and the request it waits on. */
export interface CarriedConnection {
  fd: number;
  /** The request line, as the new program's control socket should read it. */
  line: string;
}

/** Which baton a master runs, and since when. */
export interface BatonProgram {
  version: string;
  /** The program's entry point (bin/baton.js). */
  entry: string;
  /** When this program began to run as the master (ms since the epoch). */
  since: number;
}

/** The whole state a re-exec carries. */
export interface CarriedState {
  format: typeof STATE_FORMAT;
  /** The master's pid: the new program checks it runs as the same process. */
  pid: number;
  /** When the master started (its first program). */
  masterStartedAt: number;
  /** The programs this master ran, oldest first, the one that wrote this state last. */
  programs: BatonProgram[];
  /** How the master was started: enough to read its config file again (SIGHUP) and log as before. */
  start: {
    flags: Record<string, unknown>;
    configPath?: string;
    cwd: string;
    logLevel: string;
    pretty: boolean;
    failureOnStderr: boolean;
    control: ControlSettings;
  };
  master: CarriedMaster;
  controlFd: number;
  history: ReloadRecord[];
  connections: CarriedConnection[];
}

/** A re-exec that cannot be done: one line that says why; nothing has changed. */
export class ReexecRefused extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ReexecRefused';
  }
}

/** This program's version (its package.json), or 'unknown' where it cannot be read. */
export function ownVersion(): string {
  try {
    return batonVersion();
  } catch {
    return 'unknown';
  }
}

/** This program's entry point: bin/baton.js next to its dist/. */
export function ownEntry(): string {
  return path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'bin', 'baton.js');
}

/** Every descriptor the state names: each is kept open across execve. */
export function carriedDescriptors(state: CarriedState): number[] {
  const fds = new Set<number>([state.controlFd]);
  for (const listener of state.master.listeners) fds.add(listener.fd);
  for (const connection of state.connections) fds.add(connection.fd);
  for (const generation of state.master.generations) {
    for (const worker of generation.workers) {
      const carried = worker.process;
      for (const fd of [
        carried.ipcFd,
        carried.stderrFd,
        carried.notifyPipeFd,
        carried.notifySocket?.fd,
        carried.fdChannelFd,
      ]) {
        if (fd !== undefined) fds.add(fd);
      }
    }
  }
  return [...fds];
}

/** Writes the state where only this user can read it (the control socket's own folder). */
export function writeState(file: string, state: CarriedState): void {
  writeFileSync(file, JSON.stringify(state), { mode: 0o600 });
}

/**
 * Reads and checks a state file: throws ReexecRefused with one line naming what is wrong (another
 * format, another process, a field missing).
 */
export function readState(file: string, pid = process.pid): CarriedState {
  let value: unknown;
  try {
    value = JSON.parse(readFileSync(file, 'utf8'));
  } catch (error) {
    throw new ReexecRefused(`cannot read the carried state ${file}: ${(error as Error).message}`);
  }
  const state = value as Partial<CarriedState> | null;
  if (typeof state !== 'object' || state === null)
    throw new ReexecRefused('the carried state is not an object');
  if (state.format !== STATE_FORMAT) {
    throw new ReexecRefused(
      `the carried state has format ${JSON.stringify(state.format)}, and this baton reads format ${STATE_FORMAT}: upgrade through a baton that reads both, or restart the master`,
    );
  }
  if (state.pid !== pid) throw new ReexecRefused(`the carried state is master ${state.pid}'s, not ${pid}'s`);
  for (const field of ['start', 'master', 'controlFd', 'programs', 'history', 'connections'] as const) {
    if (state[field] === undefined) throw new ReexecRefused(`the carried state has no \`${field}\``);
  }
  const master = state.master as Partial<CarriedMaster>;
  for (const field of ['options', 'listeners', 'current', 'generations', 'nextGenerationId'] as const) {
    if (master[field] === undefined) throw new ReexecRefused(`the carried state has no \`master.${field}\``);
  }
  return state as CarriedState;
}

/** What the new program said in its trial. */
export interface Trial {
  version: string;
  node: string;
}

/**
 * Runs `<program> __reexec-try <file>` in a separate process: resolves with the version it runs once
 * it has read the state and loaded what a master needs, rejects with ReexecRefused (its last line)
 * otherwise. Nothing of the master changes either way.
 */
export function tryProgram(program: string, file: string, timeoutMs = TRY_TIMEOUT_MS): Promise<Trial> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...process.execArgv, program, TRY_COMMAND, file], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, BATON_REEXEC_PID: String(process.pid) },
    });
    let out = '';
    let err = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
      out = (out + chunk).slice(-16_384);
    });
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
      err = (err + chunk).slice(-16_384);
    });
    let settled = false;
    const timer = setTimeout(() => {
      // Whatever holds its pipes (a process it left behind), the trial is over: refused.
      settled = true;
      child.kill('SIGKILL');
      child.stdout?.destroy();
      child.stderr?.destroy();
      reject(new ReexecRefused(`the new baton (${program}) did not answer within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      reject(new ReexecRefused(`the new baton could not be run: ${error.message}`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (settled) return;
      settled = true;
      const answer = out
        .split('\n')
        .reverse()
        .find((line) => line.startsWith('{'));
      let trial: Partial<Trial> | undefined;
      try {
        trial = answer === undefined ? undefined : (JSON.parse(answer) as Partial<Trial>);
      } catch {
        trial = undefined;
      }
      if (code === 0 && typeof trial?.version === 'string') {
        resolve({ version: trial.version, node: String(trial.node) });
        return;
      }
      const why = lastMeaningfulLine(err) ?? `it exited with ${code ?? signal}`;
      reject(new ReexecRefused(`the new baton (${program}) refused the state: ${why}`));
    });
  });
}

/** The line of a failure worth showing: a thrown error's message, else the last line written. */
function lastMeaningfulLine(text: string): string | undefined {
  const lines = text
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '');
  const error = lines.find((line) => /^(\w*Error|baton:)/.test(line));
  return (error ?? lines.at(-1))?.replace(/^baton: /, '');
}

/**
 * Replaces this process's program with `program`, resuming from `file`: every descriptor of `fds`
 * (and stdio) is kept across execve. Returns only if execve failed, by throwing ReexecRefused: the
 * descriptors are close-on-exec again and the state file is gone, and the master serves on.
 */
export function executeProgram(
  program: string,
  file: string,
  fds: readonly number[],
  node = process.execPath,
): never {
  const kept: number[] = [];
  try {
    for (const fd of [0, 1, 2, ...fds]) {
      setCloseOnExec(fd, false);
      if (fd > 2) kept.push(fd);
    }
    return replaceProgram(node, [node, ...process.execArgv, program, RESUME_COMMAND, file], process.env);
  } catch (error) {
    for (const fd of kept) {
      try {
        setCloseOnExec(fd, true);
      } catch {
        // gone meanwhile
      }
    }
    rmSync(file, { force: true });
    throw new ReexecRefused(`the new program could not be executed: ${(error as Error).message}`);
  }
}

/**
 * The new program's first step: every descriptor the state carried is close-on-exec again, so that
 * none reaches a worker spawned from now on (they were cleared for the exec only). Never throws: a
 * descriptor already gone is no harm.
 */
export function closeOnExecAgain(state: CarriedState): void {
  for (const fd of carriedDescriptors(state)) {
    try {
      setCloseOnExec(fd, true);
    } catch {
      // not open: nothing can leak
    }
  }
}
