/**
 * 200 consecutive reloads: the master's descriptors and memory return to
 * their level after the first few, and no zombie is left; the same with
 * sessions handed off at every reload over the descriptor channel.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
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

/** A worker that hands its game sessions off at every reload, each with its count of messages. */
const HANDOFF_WORKER = `import net from 'node:net';
import { onAdopt, onHandoff, ready, serve } from ${JSON.stringify(join(REPO_ROOT, 'dist', 'child', 'index.js'))};
const sessions = new Map();
function play(socket, state) {
  sessions.set(socket, state);
  socket.on('data', () => {
    state.messages++;
    socket.write('gen ' + process.env.BATON_GENERATION + ' messages ' + state.messages + '\\n');
  });
  socket.on('close', () => sessions.delete(socket));
  socket.on('error', () => {});
}
const server = net.createServer((socket) => play(socket, { messages: 0 }));
onHandoff('game', (socket) => sessions.get(socket));
onAdopt('game', (socket, state) => play(socket, state));
await serve(server, 'game');
ready();
`;

const SESSIONS = 20;

/** Sends one line on `socket` and resolves with the answer's line. */
function ask(socket: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    socket.once('data', (data) => resolve(data.toString().trim()));
    socket.write('x\n');
  });
}

describe('200 consecutive reloads with live handoff', () => {
  test('every session moves every time over the descriptor channel, with its state; the master keeps its descriptors and heap', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'baton-leaks-'));
    const sockets: net.Socket[] = [];
    try {
      const script = join(dir, 'handoff-worker.mjs');
      writeFileSync(script, HANDOFF_WORKER);
      const baton = startNode([
        '--expose-gc',
        '--require',
        join(REPO_ROOT, 'test', 'fixtures', 'heap-probe.cjs'),
        BATON_BIN,
        'start',
        // The master's debug line for each batch of the descriptor channel shows which way the sessions went.
        '--log-level',
        'debug',
        '--listen',
        'game=tcp://127.0.0.1:0',
        '--',
        process.execPath,
        script,
      ]);
      await baton.waitForLogMsg('generation active', { gen: 1 }, 10_000);
      const port = await baton.listenPort('game');
      for (let index = 0; index < SESSIONS; index++) {
        const socket = net.connect(port, '127.0.0.1');
        socket.on('error', () => {});
        sockets.push(socket);
      }
      expect(await Promise.all(sockets.map(ask))).toEqual(sockets.map(() => 'gen 1 messages 1'));
      const settledHeap = async () => {
        const mark = baton.outputBytes;
        await waitFor(() => /HEAP_USED/.test(baton.outputSince(mark)) || undefined, {
          timeoutMs: 5000,
          what: 'a heap sample',
        });
        return heapUsedMiB(baton.output);
      };
      let warm = { fds: 0, heap: 0 };
      for (let gen = 2; gen <= RELOADS + 1; gen++) {
        baton.signal('SIGUSR2');
        const moved = await baton.waitForLogMsg('sessions moved', { gen: gen - 1, kind: 'switch' }, 30_000);
        expect(moved).toMatchObject({ moved: SESSIONS, failed: 0, outcome: 'committed' });
        await baton.waitForLogMsg('generation retired', { gen: gen - 1 }, 30_000);
        if (gen === WARM_UP + 1) warm = { fds: openDescriptors(baton.pid), heap: await settledHeap() };
      }
      // The last move went over the descriptor channel, all of it in one batch.
      expect(
        await baton.waitForLogMsg('handoff batch received', { gen: RELOADS, connections: SESSIONS }, 5_000),
      ).toMatchObject({ announced: SESSIONS });
      const heap = await settledHeap();
      const fds = await waitFor(
        () => (openDescriptors(baton.pid) <= warm.fds + 2 ? openDescriptors(baton.pid) : undefined),
        {
          timeoutMs: 15_000,
          what: () => `descriptors back to ${warm.fds} (now ${openDescriptors(baton.pid)})`,
        },
      );
      // Every session is on the last generation, its count carried through every move.
      expect(await Promise.all(sockets.map(ask))).toEqual(sockets.map(() => `gen ${RELOADS + 1} messages 2`));
      console.log(
        `with handoff, after ${WARM_UP} reloads: ${warm.fds} fds, heap ${warm.heap.toFixed(1)} MiB; ` +
          `after ${RELOADS}: ${fds} fds, heap ${heap.toFixed(1)} MiB, rss ${rssMiB(baton.pid).toFixed(1)} MiB`,
      );
      expect(heap - warm.heap).toBeLessThan(3);
      expect(zombiesOf(baton.pid)).toEqual([]);
    } finally {
      for (const socket of sockets) socket.destroy();
      rmSync(dir, { recursive: true, force: true });
    }
  }, 900_000);
});
