/**
 * Pure functions over what a load recorded: failures by kind, latency percentiles inside and outside
 * time windows, when the new version took over, requests per time bucket. No I/O, no clock.
 */
import {
  type FailureKind,
  type HttpLoadResult,
  OK,
  OUTCOMES,
  type SessionMessages,
} from './clients/protocol.js';

/** A half-open time range [from, to) in epoch ms. */
export interface Window {
  from: number;
  to: number;
}

/** Failure counts by kind, all kinds present. */
export type FailureCounts = Record<FailureKind, number>;

/** Counts of one load, or of the requests it started inside some windows. */
export interface LoadCounts {
  requests: number;
  ok: number;
  failed: number;
  failures: FailureCounts;
  /** Count of ok responses by version. */
  versions: Record<string, number>;
}

/** p50 and p99 of request latency, in ms, and how many requests they are over. */
export interface LatencySummary {
  count: number;
  p50: number;
  p99: number;
}

function inAny(t: number, windows: Window[]): boolean {
  return windows.some((window) => t >= window.from && t < window.to);
}

/** Counts the requests of `load` whose start `include` accepts (all by default). */
export function countLoad(
  load: HttpLoadResult,
  include: (startedAt: number) => boolean = () => true,
): LoadCounts {
  const failures = Object.fromEntries(OUTCOMES.slice(1).map((kind) => [kind, 0])) as FailureCounts;
  const versions: Record<string, number> = {};
  let requests = 0;
  let ok = 0;
  for (let i = 0; i < load.count; i++) {
    if (!include(load.startedAt[i] as number)) continue;
    requests++;
    const outcome = load.outcome[i] as number;
    if (outcome === OK) {
      ok++;
      const version = load.versions[load.versionIndex[i] as number] as string;
      versions[version] = (versions[version] ?? 0) + 1;
    } else failures[OUTCOMES[outcome] as FailureKind]++;
  }
  return { requests, ok, failed: requests - ok, failures, versions };
}

/** The `p`-quantile (0..1) of sorted values, nearest rank; NaN for none. */
export function quantile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[rank] as number;
}

/** p50/p99 latency of the ok requests of `load` whose start `include` accepts. */
export function latency(load: HttpLoadResult, include: (startedAt: number) => boolean): LatencySummary {
  const values: number[] = [];
  for (let i = 0; i < load.count; i++) {
    if (load.outcome[i] === OK && include(load.startedAt[i] as number))
      values.push(load.latencyMs[i] as number);
  }
  const sorted = Float64Array.from(values).sort();
  return { count: sorted.length, p50: quantile(sorted, 0.5), p99: quantile(sorted, 0.99) };
}

/** Latency inside the windows against latency outside them (after `warmUpUntil`). */
export function latencyDuringAndWithout(
  load: HttpLoadResult,
  windows: Window[],
  warmUpUntil: number,
): { during: LatencySummary; without: LatencySummary } {
  return {
    during: latency(load, (t) => inAny(t, windows)),
    without: latency(load, (t) => t >= warmUpUntil && !inAny(t, windows)),
  };
}

/**
 * How long after `signalAt` the last request that got an older version than `newVersion` was sent,
 * among the requests sent in `window` (0 if every request sent after the signal got the new version).
 * From that moment on, every new request was served by the new version.
 */
export function switchDelayMs(
  load: HttpLoadResult,
  newVersion: string,
  signalAt: number,
  until: number,
): number {
  const newIndex = load.versions.indexOf(newVersion);
  let lastOld = signalAt;
  for (let i = 0; i < load.count; i++) {
    const t = load.startedAt[i] as number;
    if (t < signalAt || t >= until || load.outcome[i] !== OK) continue;
    if (load.versionIndex[i] !== newIndex && t > lastOld) lastOld = t;
  }
  return lastOld - signalAt;
}

/** Requests per bucket of send time, by series (the version, or `failed`), for a chart. */
export interface Bucket {
  /** Bucket start, ms relative to `origin`. */
  t: number;
  series: string;
  count: number;
}

/** The series name of failed requests in `buckets`. */
export const FAILED_SERIES = 'failed';

/** Requests sent in [from, to), bucketed by send time relative to `origin`, split by version or failure. */
export function buckets(
  load: HttpLoadResult,
  { origin, from, to, bucketMs }: { origin: number; from: number; to: number; bucketMs: number },
): Bucket[] {
  const counts = new Map<string, number>();
  for (let i = 0; i < load.count; i++) {
    const t = load.startedAt[i] as number;
    if (t < from || t >= to) continue;
    const bucket = Math.floor((t - origin) / bucketMs) * bucketMs;
    const series =
      load.outcome[i] === OK ? (load.versions[load.versionIndex[i] as number] as string) : FAILED_SERIES;
    const key = `${bucket}\u0000${series}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].map(([key, count]) => {
    const [t, series] = key.split('\u0000') as [string, string];
    return { t: Number(t), series, count };
  });
}

/** The median of `values` (NaN for none). */
export function median(values: number[]): number {
  return quantile(Float64Array.from(values).sort(), 0.5);
}

/** Requests per second of the ok requests sent in [from, to). */
export function throughput(load: HttpLoadResult, from: number, to: number): number {
  const { ok } = countLoad(load, (t) => t >= from && t < to);
  return (ok * 1000) / (to - from);
}

/**
 * Requests per second of the ok requests sent in [from, to) and outside every window: the steady
 * throughput of a run whose windows are its reloads. The windows are clipped to [from, to) and their
 * overlaps counted once; NaN when they leave no time.
 */
export function throughputOutside(load: HttpLoadResult, windows: Window[], from: number, to: number): number {
  const clipped = windows
    .map((window) => ({ from: Math.max(window.from, from), to: Math.min(window.to, to) }))
    .filter((window) => window.to > window.from)
    .sort((a, b) => a.from - b.from);
  let covered = 0;
  let reached = from;
  for (const window of clipped) {
    covered += Math.max(0, window.to - Math.max(window.from, reached));
    reached = Math.max(reached, window.to);
  }
  const outsideMs = to - from - covered;
  if (outsideMs <= 0) return Number.NaN;
  const { ok } = countLoad(load, (t) => t >= from && t < to && !inAny(t, windows));
  return (ok * 1000) / outsideMs;
}

/** p50, p99 and max of the round trips of some session messages, in ms, and how many they are over. */
export interface RoundTripSummary {
  count: number;
  p50: number;
  p99: number;
  max: number;
}

/** Round trips of the answered messages whose send time `include` accepts. */
export function roundTrips(
  messages: SessionMessages,
  include: (sentAt: number) => boolean,
): RoundTripSummary {
  const values: number[] = [];
  for (let i = 0; i < messages.count; i++) {
    const rtt = messages.rttMs[i] as number;
    if (!Number.isNaN(rtt) && include(messages.sentAt[i] as number)) values.push(rtt);
  }
  const sorted = Float64Array.from(values).sort();
  return {
    count: sorted.length,
    p50: quantile(sorted, 0.5),
    p99: quantile(sorted, 0.99),
    max: sorted.length === 0 ? Number.NaN : (sorted.at(-1) as number),
  };
}

/** Round trips of the messages sent inside the windows against the rest (after `warmUpUntil`). */
export function roundTripsDuringAndWithout(
  messages: SessionMessages,
  windows: Window[],
  warmUpUntil: number,
): { during: RoundTripSummary; without: RoundTripSummary } {
  return {
    during: roundTrips(messages, (t) => inAny(t, windows)),
    without: roundTrips(messages, (t) => t >= warmUpUntil && !inAny(t, windows)),
  };
}

/**
 * The pause each session saw in each window: the longest round trip among the answered messages it
 * sent there. One value per session and window in which that session sent something.
 */
export function worstRoundTripPerSession(messages: SessionMessages, windows: Window[]): number[] {
  const worst = new Map<number, number>();
  for (let i = 0; i < messages.count; i++) {
    const rtt = messages.rttMs[i] as number;
    if (Number.isNaN(rtt)) continue;
    const t = messages.sentAt[i] as number;
    const window = windows.findIndex((candidate) => t >= candidate.from && t < candidate.to);
    if (window === -1) continue;
    const key = window * 65_536 + (messages.session[i] as number);
    worst.set(key, Math.max(worst.get(key) ?? 0, rtt));
  }
  return [...worst.values()];
}
