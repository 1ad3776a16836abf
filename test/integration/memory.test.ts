/** `--max-memory`: a worker over the limit is replaced, its replacement ready first, with nobody dropped. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import { httpGetJson, httpLoad } from '../helpers/load.js';
import { killAll, REPO_ROOT, startBaton } from '../helpers/processes.js';

let runtime: string | undefined;

afterEach(async () => {
  await killAll();
  if (runtime) rmSync(runtime, { recursive: true, force: true });
});

describe('--max-memory', () => {
  test('a worker that grows past the limit is replaced under load with zero failed requests', async () => {
    runtime = mkdtempSync(join(tmpdir(), 'baton-run-'));
    const baton = startBaton(
      [
        'start',
        '--max-memory',
        '200M',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--',
        process.execPath,
        join(REPO_ROOT, 'test', 'fixtures', 'growing.mjs'),
      ],
      { env: { XDG_RUNTIME_DIR: runtime } },
    );
    const port = await baton.listenPort('http');
    await baton.waitForLogMsg('generation active', { gen: 1 });
    const [first] = baton.logs.filter((e) => e.msg === 'worker ready').map((e) => e.pid as number);
    const load = httpLoad({
      port,
      keepAlive: true,
      concurrency: 2,
      maxRequests: 200_000,
      maxDurationMs: 90_000,
    });
    const fresh = httpLoad({
      port,
      keepAlive: false,
      concurrency: 1,
      maxRequests: 100_000,
      maxDurationMs: 90_000,
    });
    expect((await httpGetJson(port, '/grow?mb=250')).body).toMatchObject({ pid: first });

    // Replaced once it has run long enough to count as healthy (10 s) and the sampler saw it (every 3 s).
    const replacing = await baton.waitForLogMsg('replacing worker', { pid: first }, 30_000);
    expect(replacing).toMatchObject({ reason: 'memory', maxMemory: 200 * 1024 * 1024 });
    expect(replacing.memory as number).toBeGreaterThan(200 * 1024 * 1024);
    const replaced = await baton.waitForLogMsg('worker replaced', { replaced: first }, 20_000);
    await baton.waitForLogMsg('worker exited', { pid: first }, 20_000);
    expect((await httpGetJson(port)).body).toMatchObject({ pid: replaced.pid });
    expect(baton.logs.some((e) => e.msg === 'generation starting' && e.gen === 2)).toBe(false);

    const reports = await Promise.all([load.stop(), fresh.stop()]);
    for (const report of reports) {
      expect(report.errors).toEqual([]);
      expect(report.failed).toBe(0);
    }
  }, 90_000);
});
