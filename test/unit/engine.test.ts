/**
 * Guards the V8 flags the master runs with (supervisor/engine.ts): they are set after V8 has started,
 * which counts only as long as V8 reads them when it decides. If this fails after a Node upgrade, the
 * master is back to about 80 MB, or a handoff runs interpreted. Each case runs in a Node of its own,
 * so that jest's process keeps its flags.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, test } from '@jest/globals';
import { REPO_ROOT } from '../helpers/processes.js';

const ENGINE_URL = pathToFileURL(join(REPO_ROOT, 'dist', 'supervisor', 'engine.js')).href;

/** V8's %GetOptimizationStatus bit for code made by an optimizing compiler (Maglev or TurboFan). */
const OPTIMIZED = 1 << 4;

/**
 * Runs `steps` in a fresh Node with natives syntax; each step may be 'lean', 'optimize' or 'hot' (a
 * function called until an optimizing compiler took it, or 2 s passed); prints whether it was taken.
 */
function optimizedAfter(steps: Array<'lean' | 'optimize' | 'hot'>): boolean[] {
  const script = `
    const engine = await import(${JSON.stringify(ENGINE_URL)});
    const results = [];
    for (const step of ${JSON.stringify(steps)}) {
      if (step === 'lean') engine.runLean();
      if (step === 'optimize') engine.optimizeFromNowOn();
      if (step !== 'hot') continue;
      const add = new Function('a', 'b', 'return a + b');
      const until = Date.now() + 2000;
      let optimized = false;
      for (let sum = 0; !optimized && Date.now() < until; ) {
        for (let i = 0; i < 10000; i++) sum = add(sum, i) % 1000;
        optimized = (%GetOptimizationStatus(add) & ${OPTIMIZED}) !== 0;
        await new Promise((resolve) => setImmediate(resolve));
      }
      results.push(optimized);
    }
    console.log(JSON.stringify(results));
  `;
  const output = execFileSync(
    process.execPath,
    ['--allow-natives-syntax', '--input-type=module', '--eval', script],
    { encoding: 'utf8', timeout: 20_000 },
  );
  return JSON.parse(output) as boolean[];
}

/** How many times its first size V8's young generation grew to while 100,000 objects were kept alive. */
function youngGenerationGrowth(lean: boolean): number {
  const script = `
    const v8 = await import('node:v8');
    const engine = await import(${JSON.stringify(ENGINE_URL)});
    ${lean ? 'engine.runLean();' : ''}
    const size = () => v8.getHeapSpaceStatistics().find((space) => space.space_name === 'new_space').space_size;
    const first = size();
    const kept = [];
    for (let i = 0; i < 2000000; i++) kept[i % 100000] = { i };
    console.log(size() / first);
  `;
  return Number(
    execFileSync(process.execPath, ['--input-type=module', '--eval', script], {
      encoding: 'utf8',
      timeout: 20_000,
    }),
  );
}

describe("the master's V8 flags, set at run time", () => {
  test('lean, the young generation keeps about its first size; by default it grows', () => {
    expect(youngGenerationGrowth(false)).toBeGreaterThan(4);
    expect(youngGenerationGrowth(true)).toBeLessThanOrEqual(2);
  }, 30_000);

  test('without them, a hot function gets optimized (the check works)', () => {
    expect(optimizedAfter(['hot'])).toEqual([true]);
  }, 30_000);

  test('lean: a hot function stays unoptimized; after optimizeFromNowOn, a new one is optimized', () => {
    expect(optimizedAfter(['lean', 'hot', 'optimize', 'hot'])).toEqual([false, true]);
  }, 30_000);
});
