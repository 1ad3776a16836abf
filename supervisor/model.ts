/**
 * The master's model as the outside sees it: the events it takes, the progress it reports, the
 * snapshot `status` shows. The control socket, the metrics and the CLI import these types from here,
 * never the master itself.
 */
import type { ConfigLabel, PendingConfig } from './config.js';
import type { DryRunAnswer, DryRunEvent } from './dry-run.js';
import type { StartFailure } from './errors.js';
import type { Generation } from './generation.js';
import type { HandoffRound, SessionsMovedProgress, SessionsSnapshot } from './handoff.js';
import type { AppliedPatch, InjectAnswer, InjectTarget, PatchSource } from './inject.js';
import type { CarriedListener } from './listener.js';
import type { CarriedConnection, Trial } from './reexec.js';
import type { Worker } from './worker.js';

/** Everything that can happen to a master. */
export type MasterEvent =
  | { type: 'start' }
  | {
      type: 'reload';
      source: string;
      /**
       * Read the config file again first (SIGHUP, `baton reload --config`): `true` the master's own,
       * a path another one (which becomes the master's own).
       */
      config?: true | string;
      reply?: (answer: ReloadAnswer) => void;
      /** Where the asker is, should a re-exec of the master come first (the control client's connection). */
      carry?: () => CarriedConnection | undefined;
    }
  /** The listeners a config reload adds are bound, or could not be (`error`, one line). */
  | {
      type: 'config-listeners-bound';
      pending: PendingConfig;
      listeners?: readonly InheritedListener[];
      error?: string;
    }
  | { type: 'stop'; fast: boolean; source: string }
  /** An IPC message from a worker (child/protocol.ts), with the handle that came along, if any. */
  | { type: 'worker-message'; worker: Worker; message: unknown; handle?: unknown }
  | { type: 'worker-exited'; worker: Worker; exitCode: number | null; signal: NodeJS.Signals | null }
  | { type: 'worker-notified'; worker: Worker; line: string }
  | { type: 'ready-delay-passed'; worker: Worker }
  | { type: 'ready-probe'; worker: Worker }
  | { type: 'own-port-check'; worker: Worker }
  | { type: 'connections-sample' }
  | { type: 'watchdog-check' }
  | { type: 'replace-worker'; pid: number; reason: string; facts?: Record<string, unknown> }
  | {
      type: 'scale';
      workers: number | 'more' | 'fewer';
      source: string;
      reply?: (answer: ScaleAnswer) => void;
    }
  | { type: 'ready-timeout'; worker: Worker }
  | { type: 'worker-kill-due'; worker: Worker }
  | { type: 'stop-reminder' }
  | { type: 'drain-timeout'; generation: Generation }
  | { type: 'restart-due'; generation: Generation; slot: number }
  | { type: 'handoff-relayed'; relay: number; error: Error | null }
  | { type: 'handoff-ended'; round: HandoffRound }
  | { type: 'handoff-deadline'; round: HandoffRound }
  | {
      type: 'inject';
      patch: PatchSource;
      target: InjectTarget;
      source: string;
      reply?: (answer: InjectAnswer) => void;
    }
  | { type: 'inject-timeout'; round: number }
  | { type: 'inject-dry-run'; patch: PatchSource; source: string; reply?: (answer: DryRunAnswer) => void }
  | { type: 'dry-run'; event: DryRunEvent }
  /** `baton reexec`: replace the master's program with `program` (supervisor/reexec.ts). */
  | {
      type: 'reexec';
      program: string;
      source: string;
      progress?: (step: ReexecStep) => void;
      reply?: (answer: ReexecAnswer) => void;
      /** The asker's connection, for the new program to answer (the control client). */
      carry?: () => CarriedConnection | undefined;
    }
  /** The new program's trial is over: what it said, or why it refused (one line). */
  | { type: 'reexec-tried'; trial?: Trial; error?: string }
  /** Every IPC message sent to a worker is written (`flushed`), or the wait for it timed out. */
  | { type: 'reexec-flushed'; flushed: boolean };

/** A step of a re-exec, as `baton reexec` prints it. */
export type ReexecStep =
  | { step: 'trying'; program: string; from: string }
  | { step: 'tried'; version: string; node: string }
  | { step: 'executing'; workers: number; listeners: number; connections: number };

/** How a re-exec ended, in the program that began it: refused (nothing changed). */
export type ReexecAnswer = { outcome: 'refused'; message: string };

/** What a reload request became: the generation that will carry it, or nothing while stopping. */
export type ReloadAnswer =
  | { outcome: 'started' | 'queued' | 'joined'; generation: number }
  | { outcome: 'ignored'; reason: 'stopping' }
  /** The config file did not read or validate (or changes what a reload cannot): nothing changed. */
  | { outcome: 'refused'; reason: 'config'; message: string };

/** Why a generation starts: the master's start, a reload, or a config reload (SIGHUP, `reload --config`). */
export type ReloadTrigger = 'start' | 'reload' | 'config';

/** What the master reports as an upgrade goes, for whoever follows it (the control socket). */
export type Progress =
  | {
      kind: 'generation-starting';
      generation: number;
      workers: number;
      version: string;
      /** The master's first generation, a reload, or a reload that read the config file again. */
      trigger?: ReloadTrigger;
    }
  | { kind: 'worker-ready'; generation: number; worker: number; ready: number; of: number }
  | { kind: 'generation-active'; generation: number; readyMs: number; draining: number[] }
  | { kind: 'reload-failed'; generation: number; failure: StartFailure; message: string }
  | { kind: 'generation-draining'; generation: number; workers: number }
  | { kind: 'generation-retired'; generation: number; drainMs: number; forced: boolean }
  | { kind: 'stopping'; fast: boolean }
  | { kind: 'worker-replacing'; generation: number; worker: number; pid: number; reason: string }
  /** The master executes a new program now (`baton reexec`): a client following a drain is answered. */
  | { kind: 'reexecuting' }
  | SessionsMovedProgress;

/** A worker as `status` shows it. */
export interface WorkerSnapshot {
  index: number;
  pid: number | undefined;
  state: Worker['state'];
  startedAt: number;
  readyAt: number | undefined;
  exitedAt: number | undefined;
  exitCode: number | null;
  signal: string | null;
  connections: number | undefined;
  /** Whether the worker reported its connections (child API) or the master counted them in /proc. */
  connectionsSeen: 'reported' | 'observed' | undefined;
  /** The last STATUS= the worker sent through sd_notify, if any. */
  status: string | undefined;
  /** How often this worker's slot was refilled after a crash (the current worker of the slot only). */
  restarts: number;
}

/** A generation as `status` shows it. */
export interface GenerationSnapshot {
  id: number;
  version: string;
  state: Generation['state'];
  startedAt: number;
  activeAt: number | undefined;
  drainStartedAt: number | undefined;
  retiredAt: number | undefined;
  forced: boolean;
  failure: string | undefined;
  restarts: number;
  /** Worker slots in a crash loop now: crashed at least CRASH_LOOP_THRESHOLD times in a row, not serving. */
  crashLoops: Array<{ worker: number; crashes: number }>;
  workers: WorkerSnapshot[];
  /** The hot patches applied to this generation (`baton inject`), oldest first. */
  patches: AppliedPatch[];
  /** Serving workers replaced without a reload (`--max-memory`, `--watchdog`), the last few, oldest first. */
  replacements: Replacement[];
  /** The config file its settings came from (`--config`), if any. */
  config?: ConfigLabel;
}

/** A serving worker replaced without a reload. */
export interface Replacement {
  worker: number;
  pid: number;
  reason: string;
  at: number;
}

/** The master's state as plain data. */
export interface MasterSnapshot {
  state: MasterState;
  pid: number;
  workers: number;
  reloadQueued: boolean;
  /** The config file the next generation's settings come from (`--config`), if any. */
  config?: ConfigLabel;
  generations: GenerationSnapshot[];
  /** Live session handoff: sessions moved, kept and failed, and the last rounds (docs/handoff.md). */
  sessions: SessionsSnapshot;
  /** The baton this master runs, since when, and how many times it re-executed (`baton reexec`). */
  baton?: { version: string; since: number; masterStartedAt: number; reexecs: number };
}

/** What a scale request became. */
export type ScaleAnswer =
  | { outcome: 'scaled'; from: number; to: number }
  | { outcome: 'ignored'; reason: 'stopping' };

/** starting (first generation not ready yet) → running → stopping → stopped. */
export type MasterState = 'starting' | 'running' | 'stopping' | 'stopped';

/** A socket the master hands to every worker. */
export interface InheritedListener {
  readonly name: string;
  readonly fd: number;
  /** The socket's inode, for readiness seen in /proc (`--ready poll`); undefined where there is no /proc. */
  readonly inode: number | undefined;
  readonly kind: 'tcp' | 'udp' | 'unix';
  readonly port: number;
  /** The IP address, or the Unix socket's path. */
  readonly address: string;
  /** Handed over without a name (systemd-socket-activate without --fdname): see `Listener.anonymous`. */
  readonly anonymous?: boolean;
  close(): void;
  /** Its descriptor and what it is, for a re-exec of the master to carry (supervisor/reexec.ts). */
  carry?(): CarriedListener;
}

/** The part of the master that the control socket and the metrics may touch. */
export interface ControlledMaster {
  /** Queues an event; the master's dispatcher applies it. */
  dispatch(event: MasterEvent): void;
  /** Calls `follower` with every progress report until the returned function is called. */
  follow(follower: (progress: Progress) => void): () => void;
  /** The master's state as plain data. */
  snapshot(): MasterSnapshot;
  /** Resolves with the exit code once every worker is gone after a stop. */
  readonly finished: Promise<number>;
}
