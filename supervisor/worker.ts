/**
 * Worker: one child process of a generation.
 * starting → ready → draining → exited (any state may go straight to exited).
 */
import type { TimerHandle, WorkerProcess } from './os.js';

/** The life of one worker process. */
export type WorkerState = 'starting' | 'ready' | 'draining' | 'exited';

/** How much of a worker's stderr the master keeps, to explain a failed start. */
export const STDERR_TAIL_BYTES = 4096;

/** The last few KB a worker wrote to stderr (or the last `maxBytes` of any output). */
export class OutputTail {
  private chunks: Buffer[] = [];
  private size = 0;

  constructor(readonly maxBytes = STDERR_TAIL_BYTES) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size - (this.chunks[0]?.length ?? 0) >= this.maxBytes && this.chunks.length > 1) {
      this.size -= (this.chunks.shift() as Buffer).length;
    }
  }

  /** The last `maxBytes` bytes. */
  bytes(): Buffer {
    return Buffer.concat(this.chunks).subarray(-this.maxBytes);
  }

  /** The last lines, at most `maxLines`. */
  lines(maxLines = 20): string[] {
    return this.bytes()
      .toString('utf8')
      .split('\n')
      .filter((line) => line.trim() !== '')
      .slice(-maxLines);
  }
}

/** One worker process and what the master knows of it. */
export class Worker {
  state: WorkerState = 'starting';
  process: WorkerProcess | undefined;
  readyAt: number | undefined;
  exitedAt: number | undefined;
  exitCode: number | null = null;
  signal: NodeJS.Signals | null = null;
  /** Open connections as the worker last reported them (child API), if it does. */
  connections: number | undefined;
  /** Open connections on the listeners as /proc shows them, for workers that do not report theirs. */
  observedConnections: number | undefined;
  /** Consecutive samples in which a draining worker no longer accepted and held no connection. */
  idleSamples = 0;
  readyTimer: TimerHandle | undefined;
  /** When the worker last said WATCHDOG=1 (or the child API pinged); undefined until it first does. */
  lastWatchdogAt: number | undefined;
  /** The master said once that this worker never pings under `--watchdog`. */
  watchdogSilenceReported = false;
  /** When a worker drained on its own (scale, replacement) is killed if it is still there (ms since the epoch). */
  killAt: number | undefined;
  /** The last STATUS= the worker sent (sd_notify), if any. */
  status: string | undefined;
  readonly stderr = new OutputTail();

  constructor(
    readonly generation: number,
    readonly index: number,
    readonly startedAt: number,
  ) {}

  get pid(): number | undefined {
    return this.process?.pid;
  }

  get alive(): boolean {
    return this.state !== 'exited';
  }

  /** starting → ready; false if the worker was not starting. */
  markReady(now: number): boolean {
    if (this.state !== 'starting') return false;
    this.state = 'ready';
    this.readyAt = now;
    this.readyTimer?.cancel();
    return true;
  }

  /** starting|ready → draining; false if it was already draining or gone. */
  markDraining(): boolean {
    if (this.state !== 'starting' && this.state !== 'ready') return false;
    this.state = 'draining';
    this.readyTimer?.cancel();
    return true;
  }

  markExited(exitCode: number | null, signal: NodeJS.Signals | null, now: number): void {
    this.state = 'exited';
    this.exitCode = exitCode;
    this.signal = signal;
    this.exitedAt = now;
    this.readyTimer?.cancel();
  }
}
