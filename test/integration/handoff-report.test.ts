/** What operators see of a live session handoff: `baton reload`, `baton status` and the metrics. */
import http from 'node:http';
import { afterEach, describe, expect, test } from '@jest/globals';
import { startExampleApp } from '../helpers/app.js';
import { gameSession } from '../helpers/load.js';
import { type AppDir, killAll, makeAppDir, startBaton } from '../helpers/processes.js';

let app: AppDir | undefined;

afterEach(async () => {
  await killAll();
  app?.cleanup();
});

function scrape(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (response) => {
        let text = '';
        response.on('data', (chunk) => {
          text += chunk;
        });
        response.on('end', () => resolve(text));
      })
      .on('error', reject);
  });
}

describe('sessions moved, as operators see them', () => {
  test('the master logs the sessions moved; status and the metrics count them', async () => {
    app = makeAppDir();
    const { baton, gamePort } = await startExampleApp(app, { args: ['--metrics', 'tcp://127.0.0.1:0'] });
    const metricsPort = (await baton.waitForLogMsg('metrics listening')).port as number;
    const sessions = [gameSession(gamePort), gameSession(gamePort), gameSession(gamePort)];
    for (const session of sessions) expect(await session.request('work')).toBe('coins 2');

    app.setVersion('2.0.0');
    const reload = startBaton(['reload']);
    expect((await reload.waitForExit(30_000)).exitCode).toBe(0);
    expect(reload.output).toContain(
      'sessions moved from generation 1 to 2: 3 moved, 0 kept on the old version, 0 failed',
    );
    const moved = await baton.waitForLogMsg('sessions moved', {}, 20_000);
    expect(moved).toMatchObject({ moved: 3, kept: 0, failed: 0 });
    await baton.waitForLogMsg('generation retired', { gen: 1 }, 20_000);
    for (const session of sessions) expect(await session.request('work')).toBe('coins 4');

    const status = startBaton(['status']);
    await status.waitForExit(10_000);
    expect(status.output).toContain(
      'sessions handed to new versions: 3 moved, 0 kept on the old version, 0 failed',
    );
    const metrics = await scrape(metricsPort);
    expect(metrics).toMatch(/^baton_sessions_total\{outcome="moved"\} 3$/m);
    expect(metrics).toMatch(/^baton_sessions_total\{outcome="failed"\} 0$/m);
    for (const session of sessions) session.close();
  });
});
