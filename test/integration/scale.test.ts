/** `baton scale N` and SIGTTIN/SIGTTOU: the serving generation grows and shrinks without a reload. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import { startExampleApp } from '../helpers/app.js';
import { httpLoad } from '../helpers/load.js';
import { type AppDir, killAll, makeAppDir, startBaton } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

let app: AppDir | undefined;
let runtime: string | undefined;

afterEach(async () => {
  await killAll();
  app?.cleanup();
  if (runtime) rmSync(runtime, { recursive: true, force: true });
});

function liveWorkers(logs: Record<string, unknown>[]): number[] {
  const exited = new Set(logs.filter((e) => e.msg === 'worker exited').map((e) => e.pid));
  return logs.filter((e) => e.msg === 'worker ready' && !exited.has(e.pid)).map((e) => e.pid as number);
}

describe('scale', () => {
  test('baton scale 3 then 1 under load: zero failed requests, no reload; SIGTTIN and SIGTTOU add and remove one', async () => {
    app = makeAppDir();
    runtime = mkdtempSync(join(tmpdir(), 'baton-run-'));
    const env = { XDG_RUNTIME_DIR: runtime };
    const { baton, httpPort: port } = await startExampleApp(app, { env, workers: 1 });
    const load = httpLoad({
      port,
      keepAlive: true,
      concurrency: 2,
      maxRequests: 100_000,
      maxDurationMs: 60_000,
    });
    const fresh = httpLoad({
      port,
      keepAlive: false,
      concurrency: 2,
      maxRequests: 100_000,
      maxDurationMs: 60_000,
    });

    const up = startBaton(['scale', '3'], { env });
    expect((await up.waitForExit(20_000)).exitCode).toBe(0);
    expect(up.output).toContain('workers: 1 → 3, every one ready');
    expect(liveWorkers(baton.logs)).toHaveLength(3);

    const down = startBaton(['scale', '1'], { env });
    expect((await down.waitForExit(20_000)).exitCode).toBe(0);
    await waitFor(() => liveWorkers(baton.logs).length === 1 || undefined, {
      timeoutMs: 10_000,
      what: 'two workers drained',
    });

    baton.signal('SIGTTIN');
    await waitFor(() => liveWorkers(baton.logs).length === 2 || undefined, {
      timeoutMs: 10_000,
      what: 'SIGTTIN adding one',
    });
    baton.signal('SIGTTOU');
    await waitFor(() => liveWorkers(baton.logs).length === 1 || undefined, {
      timeoutMs: 10_000,
      what: 'SIGTTOU removing one',
    });

    const reports = await Promise.all([load.stop(), fresh.stop()]);
    for (const report of reports) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
    }
    expect(baton.logs.some((e) => e.msg === 'generation starting' && e.gen === 2)).toBe(false);
    expect(baton.logs.filter((e) => e.msg === 'workers scaled').map((e) => [e.from, e.to])).toEqual([
      [1, 3],
      [3, 1],
      [1, 2],
      [2, 1],
    ]);
    // The next generation has the new size.
    baton.signal('SIGUSR2');
    expect(await baton.waitForLogMsg('generation starting', { gen: 2 })).toMatchObject({ workers: 1 });
  });

  test('scale 0 is refused with one clear line', async () => {
    const run = startBaton(['scale', '0', '--control', '/nonexistent/x.sock']);
    expect((await run.waitForExit(10_000)).exitCode).toBe(2);
    expect(run.output.trim()).toMatch(
      /^baton: Expected `workers` to be a whole number from 1 to 1024, got '0'/,
    );
  });
});
