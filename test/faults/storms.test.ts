/**
 * A hundred SIGUSR2 within one second: at most one reload runs and at most one
 * more is queued at any moment; under load nothing fails; at the end every
 * worker that was started is serving or gone.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import { startExampleApp } from '../helpers/app.js';
import { httpLoad } from '../helpers/load.js';
import { type AppDir, killAll, makeAppDir, processAlive } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';
import { askStatus } from './control.js';

let app: AppDir | undefined;
let runtime: string | undefined;

afterEach(async () => {
  await killAll();
  app?.cleanup();
  if (runtime) rmSync(runtime, { recursive: true, force: true });
});

describe('signal storms', () => {
  test('100 SIGUSR2 within one second under load', async () => {
    app = makeAppDir();
    runtime = mkdtempSync(join(tmpdir(), 'baton-run-'));
    const control = join(runtime, 'storm.sock');
    const { baton, httpPort: port } = await startExampleApp(app, { args: ['--control', control] });
    const load = httpLoad({
      port,
      keepAlive: false,
      concurrency: 2,
      maxRequests: 100_000,
      maxDurationMs: 60_000,
    });

    let sent = 0;
    await new Promise<void>((resolve) => {
      const timer = setInterval(() => {
        baton.signal('SIGUSR2');
        if (++sent === 100) {
          clearInterval(timer);
          resolve();
        }
      }, 9);
    });
    // Settled: no generation starting, nothing queued.
    const settled = await waitFor(
      async () => {
        const { status } = await askStatus(control);
        const busy =
          status.reloadQueued ||
          status.generations.some((g) => g.state === 'starting' || g.state === 'draining');
        return busy ? undefined : status;
      },
      { timeoutMs: 60_000, intervalMs: 250, what: 'the storm settled' },
    );

    // Never two reloads at once: each generation starts only after the one before it ended its start.
    const events = baton.logs.filter(
      (e) =>
        e.msg === 'generation starting' ||
        e.msg === 'generation active' ||
        String(e.msg).startsWith('reload failed'),
    );
    let starting = 0;
    for (const event of events) {
      starting += event.msg === 'generation starting' ? 1 : -1;
      expect(starting).toBeLessThanOrEqual(1);
    }
    const generations = baton.logs.filter((e) => e.msg === 'generation starting').length;
    expect(generations).toBeGreaterThanOrEqual(2);
    expect(generations).toBeLessThanOrEqual(101);

    const report = await load.stop();
    expect(report.errors).toEqual([]);
    expect(report.failed).toBe(0);

    // Every worker ever started is serving (in the one active generation) or gone.
    const active = settled.generations.filter((g) => g.state === 'active');
    expect(active).toHaveLength(1);
    const serving = new Set(active[0]?.workers.filter((w) => w.state === 'ready').map((w) => w.pid));
    expect(serving.size).toBe(2);
    for (const entry of baton.logs.filter((e) => e.msg === 'worker ready')) {
      const pid = entry.pid as number;
      expect(serving.has(pid) || !processAlive(pid)).toBe(true);
    }
  });
});
