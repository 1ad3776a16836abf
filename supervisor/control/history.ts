/**
 * The last starts and reloads, as `status` shows them: when each began, how it
 * ended, how long its generation took to be ready and the generations it
 * replaced took to drain. Built only from the master's progress reports.
 */
import type { Progress, ReloadTrigger } from '../model.js';

/** How many starts and reloads `status` remembers. */
export const RELOAD_HISTORY_KEPT = 10;

/**
 * Where one reload is: its generation starts; then it is `draining` the generations it replaced,
 * or it failed; it ends `done`, `drain-forced` (an old generation was killed at the drain deadline),
 * or `interrupted` (the master began to stop first).
 */
export type ReloadState = 'starting' | 'draining' | 'done' | 'failed' | 'drain-forced' | 'interrupted';

/** One start or reload, as plain data. */
export interface ReloadRecord {
  generation: number;
  version: string;
  /** `start`: the master's first generation (nothing was serving); `reload`: any later one. */
  /** The master's start, a reload, or a config reload (SIGHUP, `reload --config`). */
  trigger: ReloadTrigger;
  state: ReloadState;
  /** When the generation began to start (ms since the epoch). */
  startedAt: number;
  /** From start to every worker ready. */
  readyMs: number | undefined;
  /** The generations it replaced. */
  replaced: number[];
  /** The longest drain of the generations it replaced, once they have all retired. */
  drainMs: number | undefined;
  /** Why it failed, in one sentence. */
  failure: string | undefined;
}

/** Keeps the last RELOAD_HISTORY_KEPT records; feed it every progress report. */
export class ReloadHistory {
  private readonly kept: ReloadRecord[] = [];
  /** For each record still draining: the replaced generations not yet retired. */
  private readonly stillDraining = new Map<ReloadRecord, Set<number>>();
  private active: number | undefined;

  constructor(private readonly now: () => number) {}

  /** The records, oldest first (copies). */
  records(): ReloadRecord[] {
    return this.kept.map((record) => ({ ...record, replaced: [...record.replaced] }));
  }

  /** Takes one progress report into account. */
  see(progress: Progress): void {
    switch (progress.kind) {
      case 'generation-starting':
        this.add({
          generation: progress.generation,
          version: progress.version,
          trigger: progress.trigger ?? (this.active === undefined ? 'start' : 'reload'),
          state: 'starting',
          startedAt: this.now(),
          readyMs: undefined,
          replaced: [],
          drainMs: undefined,
          failure: undefined,
        });
        return;
      case 'generation-active': {
        this.active = progress.generation;
        const record = this.find(progress.generation);
        if (!record) return;
        record.readyMs = progress.readyMs;
        record.replaced = [...progress.draining];
        if (progress.draining.length === 0) record.state = 'done';
        else {
          record.state = 'draining';
          this.stillDraining.set(record, new Set(progress.draining));
        }
        return;
      }
      case 'reload-failed': {
        const record = this.find(progress.generation);
        if (!record) return;
        record.state = 'failed';
        record.failure = progress.message;
        return;
      }
      case 'generation-retired':
        for (const [record, waiting] of this.stillDraining) {
          if (!waiting.delete(progress.generation)) continue;
          record.drainMs = Math.max(record.drainMs ?? 0, progress.drainMs);
          if (progress.forced) record.state = 'drain-forced';
          if (waiting.size > 0) continue;
          this.stillDraining.delete(record);
          if (record.state === 'draining') record.state = 'done';
        }
        return;
      case 'stopping':
        for (const record of this.kept) {
          if (record.state === 'starting' || record.state === 'draining') record.state = 'interrupted';
        }
        this.stillDraining.clear();
        return;
      default:
        return;
    }
  }

  /**
   * The records the previous program of this master kept (a re-exec): a record still draining waits
   * for the generations it replaced that are still `draining`.
   */
  adopt(records: readonly ReloadRecord[], draining: ReadonlySet<number>, active: number | undefined): void {
    this.active = active;
    for (const record of records) {
      const copy = { ...record, replaced: [...record.replaced] };
      this.add(copy);
      if (copy.state !== 'draining') continue;
      const waiting = new Set(copy.replaced.filter((generation) => draining.has(generation)));
      if (waiting.size > 0) this.stillDraining.set(copy, waiting);
      else copy.state = 'done';
    }
  }

  private find(generation: number): ReloadRecord | undefined {
    return this.kept.find((record) => record.generation === generation);
  }

  private add(record: ReloadRecord): void {
    this.kept.push(record);
    for (const old of this.kept.splice(0, Math.max(0, this.kept.length - RELOAD_HISTORY_KEPT))) {
      this.stillDraining.delete(old);
    }
  }
}
