/** Reloads under load, as the integration tests of whole apps run them. */
import { writeFileSync } from 'node:fs';
import { httpLoad, type LoadReport, waitForVersion } from './load.js';
import type { BatonProcess } from './processes.js';
import { waitFor } from './wait.js';

/** A response may arrive this long after the log line that says its worker's generation retired. */
const RETIRED_SLACK_MS = 250;

/**
 * `reloads` reloads with a version bump each (written to `versionFile`, which the app reads at start), under keep-alive and new-connection load. Returns both
 * reports (with timelines) and, for each generation, when (ms since the load started) the log said
 * that the generation before it retired.
 */
export async function reloadsUnderLoad(
  baton: BatonProcess,
  port: number,
  versionFile: string,
  reloads: number,
) {
  const loadStartedAt = performance.now();
  const load = (keepAlive: boolean) =>
    httpLoad({
      port,
      keepAlive,
      concurrency: 2,
      maxRequests: 100_000,
      maxDurationMs: 120_000,
      recordTimeline: true,
    });
  const keepAlive = load(true);
  const fresh = load(false);
  await waitFor(() => keepAlive.snapshot().ok > 20 && fresh.snapshot().ok > 20, {
    timeoutMs: 10_000,
    what: 'load flowing',
  });
  const retiredAt = new Map<number, number>();
  for (let gen = 2; gen <= reloads + 1; gen++) {
    writeFileSync(versionFile, String(gen));
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('generation active', { gen }, 20_000);
    await baton.waitForLogMsg('generation retired', { gen: gen - 1 }, 20_000);
    retiredAt.set(gen, performance.now() - loadStartedAt);
    await waitForVersion(port, String(gen), 5000);
  }
  const reports = await Promise.all([keepAlive.stop(), fresh.stop()]);
  return { reports, retiredAt };
}

/** Responses of an older version that arrived after the generation serving it had retired. */
export function staleAnswers(report: LoadReport, retiredAt: Map<number, number>): string[] {
  return (report.byTime ?? []).flatMap(({ t, version }) => {
    const newest = Math.max(
      1,
      ...[...retiredAt].filter(([, at]) => t > at + RETIRED_SLACK_MS).map(([gen]) => gen),
    );
    return Number(version) < newest
      ? [`version ${version} at ${t} ms, after generation ${newest} took over`]
      : [];
  });
}
