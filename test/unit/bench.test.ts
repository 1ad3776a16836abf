/** The bench's pure readings: PM2's process list, and the throughput of a run outside its reloads. */
import { describe, expect, test } from '@jest/globals';
import { throughputOutside } from '../../bench/analysis.js';
import type { HttpLoadResult } from '../../bench/clients/protocol.js';
import { parsePm2List } from '../../bench/pm2.js';

/** One `pm2 jlist` entry as PM2 7 prints it, cut to the fields around the ones read. */
const entry = (pmId: number, pid: number, status: string, restarts: number, unstable: number) => ({
  pid,
  name: 'bench',
  pm2_env: { status, restart_time: restarts, unstable_restarts: unstable, exec_mode: 'cluster_mode' },
  pm_id: pmId,
  monit: { memory: 51_234_816, cpu: 0 },
});

describe('parsePm2List', () => {
  test('reads each instance, whatever PM2 prints around the array', () => {
    const list = JSON.stringify([entry(0, 4101, 'online', 1, 0), entry(1, 4102, 'errored', 16, 15)]);
    const output = [
      '\u001b[32m[PM2] \u001b[39mSpawning PM2 daemon with pm2_home=/tmp/baton-bench-pm2-x',
      '[PM2] PM2 Successfully daemonized',
      list,
      '>>>> In-memory PM2 is out-of-date, do:',
      '',
    ].join('\n');
    expect(parsePm2List(output)).toEqual([
      { pmId: 0, pid: 4101, status: 'online', restarts: 1, unstableRestarts: 0 },
      { pmId: 1, pid: 4102, status: 'errored', restarts: 16, unstableRestarts: 15 },
    ]);
  });

  test('an empty list is no instance; output without a list is an error that quotes it', () => {
    expect(parsePm2List('[]\n')).toEqual([]);
    expect(() => parsePm2List('[PM2][ERROR] Daemon not launched\n')).toThrow(
      "Expected a JSON array from pm2 jlist, got '[PM2][ERROR] Daemon not launched",
    );
  });
});

/** A load result of ok requests sent at `times` (epoch ms). */
function okRequestsAt(times: number[]): HttpLoadResult {
  return {
    count: times.length,
    startedAt: Float64Array.from(times),
    latencyMs: new Float32Array(times.length),
    outcome: new Uint8Array(times.length),
    versionIndex: new Uint16Array(times.length),
    versions: ['1.0.0'],
    errors: [],
  };
}

describe('throughputOutside', () => {
  // One ok request every 10 ms from 0 to 990: 100 requests over 1 s.
  const load = okRequestsAt(Array.from({ length: 100 }, (_, index) => index * 10));

  test('counts the requests and the time outside the windows only, overlapping windows once', () => {
    expect(throughputOutside(load, [], 0, 1000)).toBeCloseTo(100);
    // 200 ms of windows (100–250 and 200–300 overlap): 80 requests over 0.8 s.
    expect(
      throughputOutside(
        load,
        [
          { from: 100, to: 250 },
          { from: 200, to: 300 },
        ],
        0,
        1000,
      ),
    ).toBeCloseTo(100);
    // Windows past the range are clipped to it: 500–1000 leaves 50 requests over 0.5 s.
    expect(throughputOutside(load, [{ from: 500, to: 5000 }], 0, 1000)).toBeCloseTo(100);
  });

  test('a run with fewer requests outside its windows reads lower; no time left is NaN', () => {
    const sparse = okRequestsAt([50, 150, 160, 170, 180]);
    expect(throughputOutside(sparse, [{ from: 100, to: 200 }], 0, 400)).toBeCloseTo(1000 / 300);
    expect(throughputOutside(sparse, [{ from: -10, to: 500 }], 0, 400)).toBeNaN();
  });
});
