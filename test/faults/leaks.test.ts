/**
 * 200 consecutive reloads: the master's descriptors and memory return to
 * their level after the first few, and no zombie is left.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import { BATON_BIN, killAll, REPO_ROOT, startNode } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

const RELOADS = 200;
/** The heap reaches its steady state after about 50 reloads: remembered generations, histories, compiled code. */
const WARM_UP = 50;

afterEach(killAll);

function openDescriptors(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

function rssMiB(pid: number): number {
  return Number(/^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1]) / 1024;
}

/** Children of `pid` that have exited and were never reaped. */
function zombiesOf(pid: number): number[] {
  return readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .filter((entry) => {
      try {
        const [, rest = ''] = readFileSync(`/proc/${entry}/stat`, 'utf8').split(') ');
        const [state, ppid] = rest.split(' ');
        return state === 'Z' && Number(ppid) === pid;
      } catch {
        return false;
      }
    })
    .map(Number);
}

/** The heap in use after the latest full GC the probe printed, in MiB. */
function heapUsedMiB(output: string): number {
  const all = [...output.matchAll(/^HEAP_USED (\d+)$/gm)];
  return Number(all.at(-1)?.[1]) / 1024 / 1024;
}

describe('200 consecutive reloads', () => {
  test('leave the master with the descriptors and heap it had after the first few, and no zombie', async () => {
    const worker = `require('node:http').createServer((q, s) => s.end('ok')).listen({ fd: 3 }, () => process.send('ready'));
process.on('SIGTERM', () => process.exit(0));`;
    const baton = startNode([
      '--expose-gc',
      '--require',
      join(REPO_ROOT, 'test', 'fixtures', 'heap-probe.cjs'),
      BATON_BIN,
      'start',
      '--listen',
      'tcp://127.0.0.1:0',
      '--',
      process.execPath,
      '-e',
      worker,
    ]);
    await baton.waitForLogMsg('generation active', { gen: 1 }, 10_000);
    const settledHeap = async () => {
      const mark = baton.outputBytes;
      await waitFor(() => /HEAP_USED/.test(baton.outputSince(mark)) || undefined, {
        timeoutMs: 5000,
        what: 'a heap sample',
      });
      return heapUsedMiB(baton.output);
    };
    let warm = { fds: 0, heap: 0, rss: 0 };
    for (let gen = 2; gen <= RELOADS + 1; gen++) {
      baton.signal('SIGUSR2');
      await baton.waitForLogMsg('generation retired', { gen: gen - 1 }, 30_000);
      if (gen === WARM_UP + 1)
        warm = { fds: openDescriptors(baton.pid), heap: await settledHeap(), rss: rssMiB(baton.pid) };
    }
    const heap = await settledHeap();
    // pidusage keeps a descriptor per sampled pid until its history entry expires (6 s): wait for it.
    const fds = await waitFor(
      () => (openDescriptors(baton.pid) <= warm.fds + 2 ? openDescriptors(baton.pid) : undefined),
      {
        timeoutMs: 15_000,
        what: () => `descriptors back to ${warm.fds} (now ${openDescriptors(baton.pid)})`,
      },
    );
    const zombies = zombiesOf(baton.pid);
    console.log(
      `after ${WARM_UP} reloads: ${warm.fds} fds, heap ${warm.heap.toFixed(1)} MiB, rss ${warm.rss.toFixed(1)} MiB; ` +
        `after ${RELOADS}: ${fds} fds, heap ${heap.toFixed(1)} MiB, rss ${rssMiB(baton.pid).toFixed(1)} MiB; zombies: ${zombies.length}`,
    );
    expect(heap - warm.heap).toBeLessThan(3);
    expect(zombies).toEqual([]);
  }, 600_000);
});
