/**
 * The bench's node:cluster peer (bench/apps/cluster.js over the example app): SIGUSR2 rolls the
 * workers over to the code on disk, and a release that crashes at start fails the reload while the
 * old version serves on. The bench's scenarios 1 and 4 read its lines as they read baton's.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import { startClusterPeer } from '../../bench/cluster.js';
import { reload } from '../../bench/harness.js';
import { httpGetJson, waitForVersion } from '../helpers/load.js';
import { type AppDir, killAll, makeAppDir } from '../helpers/processes.js';

const WORKERS = 2;
const DEADLINE_MS = 20_000;

let app: AppDir | undefined;

afterEach(async () => {
  await killAll();
  app?.cleanup();
});

describe('the textbook node:cluster primary of the bench', () => {
  test('SIGUSR2 serves the new version; a release that crashes at start fails and the old one serves on', async () => {
    app = makeAppDir();
    app.setVersion('1.0.0');
    const { primary, httpPort } = await startClusterPeer(app, WORKERS);
    await waitForVersion(httpPort, '1.0.0', DEADLINE_MS);

    app.setVersion('1.1.0');
    const times = await reload(primary, 2, { workers: WORKERS });
    expect(times.retiredAt).toBeGreaterThanOrEqual(times.activeAt);
    expect((await httpGetJson(httpPort)).body?.version).toBe('1.1.0');

    const good = readFileSync(join(app.dir, 'server.js'), 'utf8');
    app.writeFile('server.js', `throw new Error('broken release');\n${good}`);
    app.setVersion('2.0.0-crash');
    primary.signal('SIGUSR2');
    const failed = await primary.waitForLogMsg('reload failed', { gen: 3 }, DEADLINE_MS);
    expect(String(failed.reason)).toMatch(/exited with code 1 before it listened/);
    for (let worker = 0; worker < WORKERS; worker++) {
      await primary.waitForLogMsg('worker exited', { gen: 3, worker }, DEADLINE_MS);
    }
    expect((await httpGetJson(httpPort)).body?.version).toBe('1.1.0');
    expect(primary.logs.filter((entry) => entry.msg === 'generation retired' && entry.gen === 2)).toEqual([]);
  });
});
