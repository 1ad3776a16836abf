/**
 * CPU, memory and open files of the master and its workers, sampled every few
 * seconds rather than per `status` request, so that a client polling status in a
 * loop costs the master nothing more.
 */
import { readdir, readFile } from 'node:fs/promises';
import pidusage from 'pidusage';

/** How often the master samples CPU and memory. */
export const USAGE_SAMPLE_INTERVAL_MS = 3000;

/**
 * One process's usage: CPU in percent of one core since the previous sample, memory (RSS) in bytes,
 * and its open file descriptors against its soft limit (`ulimit -n`), where /proc tells them.
 */
export interface Usage {
  cpu: number;
  memory: number;
  fds?: number | undefined;
  fdLimit?: number | undefined;
}

/** Reads the usage of several processes; a process that is gone has no entry. */
export type SampleUsage = (pids: number[]) => Promise<Map<number, Usage>>;

/** The real sampler: pidusage reads /proc/<pid>/stat on Linux. */
export const samplePidusage: SampleUsage = async (pids) => {
  // pidusage keeps an open descriptor per pid until the pid is not sampled for `maxage`: forget
  // workers that are gone soon after their last sample.
  const stats = await pidusage(pids, { maxage: 2 * USAGE_SAMPLE_INTERVAL_MS });
  const files = await Promise.all(pids.map(openFiles));
  const usage = new Map<number, Usage>();
  pids.forEach((pid, index) => {
    const stat = stats[String(pid)];
    if (stat) usage.set(pid, { cpu: stat.cpu, memory: stat.memory, ...files[index] });
  });
  return usage;
};

/**
 * A process's open descriptors and its soft limit on them, from /proc. A worker at its limit cannot
 * accept: Node (libuv) then closes each new connection at once and says nothing, so only this shows it.
 */
async function openFiles(pid: number): Promise<Pick<Usage, 'fds' | 'fdLimit'>> {
  const [fds, limits] = await Promise.all([
    readdir(`/proc/${pid}/fd`).then(
      (entries) => entries.length,
      () => undefined, // gone, or not ours to read
    ),
    readFile(`/proc/${pid}/limits`, 'utf8').catch(() => ''),
  ]);
  const limit = /^Max open files\s+(\d+)/m.exec(limits)?.[1];
  return { fds, fdLimit: limit === undefined ? undefined : Number(limit) };
}

/** Samples the processes `pids()` names at a fixed interval and keeps the latest numbers. */
export class UsageSampler {
  private latest = new Map<number, Usage>();
  private timer: NodeJS.Timeout | undefined;
  private inFlight: Promise<void> | undefined;
  private stopped = false;
  /** When the last sample was taken (ms since the epoch), if one was. */
  sampledAt: number | undefined;
  /** Called with every sample (`--max-memory` watches it). */
  onSample: ((usage: ReadonlyMap<number, Usage>) => void) | undefined;

  constructor(
    private readonly pids: () => number[],
    private readonly sample: SampleUsage = samplePidusage,
    readonly intervalMs: number = USAGE_SAMPLE_INTERVAL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  /** Takes a first sample now, then one every `intervalMs`. */
  start(): void {
    this.tick();
    this.timer = setInterval(() => this.tick(), this.intervalMs);
    this.timer.unref();
  }

  /** Samples now (unless a sample is under way): new workers need not wait a whole interval to show. */
  refresh(): void {
    this.tick();
  }

  /** The latest usage of `pid`, if it was sampled. */
  of(pid: number | undefined): Usage | undefined {
    return pid === undefined ? undefined : this.latest.get(pid);
  }

  /** Stops sampling and releases what the sampler holds (pidusage keeps a descriptor per pid). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.inFlight;
    pidusage.clear();
  }

  private tick(): void {
    if (this.inFlight || this.stopped) return; // a slow /proc never stacks samples
    const pids = this.pids();
    this.inFlight = this.sample(pids)
      .then(
        (usage) => {
          this.latest = usage;
          this.sampledAt = this.now();
          this.onSample?.(usage);
        },
        () => {
          this.latest = new Map(); // the only pid sampled was gone: nothing to show
        },
      )
      .finally(() => {
        this.inFlight = undefined;
      });
  }
}
