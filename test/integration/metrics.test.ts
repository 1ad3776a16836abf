/** `--metrics`: the Prometheus endpoint the master serves on its own socket. */
import http from 'node:http';
import { afterEach, describe, expect, test } from '@jest/globals';
import { startExampleApp } from '../helpers/app.js';
import { type AppDir, killAll, makeAppDir, startBaton } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

let app: AppDir | undefined;

afterEach(async () => {
  await killAll();
  app?.cleanup();
});

function scrape(port: number): Promise<{ status: number; type: string; text: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/metrics', agent: false }, (response) => {
        let text = '';
        response.on('data', (chunk) => {
          text += chunk;
        });
        response.on('end', () =>
          resolve({ status: response.statusCode ?? 0, type: String(response.headers['content-type']), text }),
        );
      })
      .on('error', reject);
  });
}

/** The value of one series (`name{labels}`) in Prometheus text. */
function value(text: string, series: string): number | undefined {
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('--metrics', () => {
  test('generations and workers by state, reloads by outcome, durations, connections, CPU and memory', async () => {
    app = makeAppDir();
    const { baton, httpPort, gamePort } = await startExampleApp(app, {
      args: ['--metrics', 'tcp://127.0.0.1:0'],
    });
    const listening = await baton.waitForLogMsg('metrics listening');
    const port = listening.port as number;
    expect([httpPort, gamePort]).not.toContain(port);

    const first = await scrape(port);
    expect(first.status).toBe(200);
    expect(first.type).toMatch(/^text\/plain/);
    expect(value(first.text, 'baton_generations{state="active"}')).toBe(1);
    expect(value(first.text, 'baton_workers{state="ready",generation="1"}')).toBe(2);
    expect(value(first.text, 'baton_reloads_total{outcome="active"}')).toBe(0);

    app.setVersion('2.0.0');
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('generation retired', { gen: 1 }, 20_000);
    app.writeFile('server.js', 'process.exit(9);\n');
    baton.signal('SIGUSR2');
    await baton.waitForLog(
      (e) => String(e.msg).startsWith('reload failed'),
      20_000,
      'the broken reload failing',
    );

    const text = await waitFor(
      async () => {
        const scraped = (await scrape(port)).text;
        return scraped.includes('baton_worker_memory_bytes{generation="2"') ? scraped : undefined;
      },
      { timeoutMs: 10_000, what: 'memory of generation 2 sampled' },
    );
    expect(value(text, 'baton_reloads_total{outcome="active"}')).toBe(1);
    expect(value(text, 'baton_reloads_total{outcome="failed"}')).toBe(1);
    expect(value(text, 'baton_reload_ready_seconds_count')).toBe(1);
    expect(value(text, 'baton_drain_seconds_count{forced="false"}')).toBe(1);
    expect(value(text, 'baton_workers{state="ready",generation="2"}')).toBe(2);
    expect(value(text, 'baton_connections{generation="2"}')).toBe(0);
    expect(text).toMatch(/^baton_worker_cpu_percent\{generation="2",worker="0",pid="\d+"\} [\d.]+$/m);
    expect(text).toMatch(/^# TYPE baton_reload_ready_seconds histogram$/m);
  });

  test('a metrics address that cannot be had is one clear line and a non-zero exit', async () => {
    const baton = startBaton([
      'start',
      '--metrics',
      'udp://127.0.0.1:1',
      '--listen',
      'tcp://127.0.0.1:0',
      '--',
      process.execPath,
      '-e',
      '',
    ]);
    expect((await baton.waitForExit(10_000)).exitCode).toBe(2);
    expect(baton.output.trim()).toMatch(
      /^baton: Expected `--metrics` to look like tcp:\/\/127\.0\.0\.1:9100/,
    );
  });
});
