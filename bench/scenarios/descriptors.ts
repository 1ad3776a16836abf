/**
 * Scenario 8, descriptors per second: the same open TCP connections passed from this process to a
 * child (bench/apps/descriptor-sink.js), which closes its copies, over Node's IPC (one descriptor per
 * message, each acknowledged before the next: what the handoff used alone) and over baton's
 * descriptor channel (batches of up to 253 per sendmsg, one IPC message per batch to say it is there:
 * supervisor/fd-channel.ts), in alternation, in the same run. Timed from the first send until the
 * child says it has them all.
 */
import { type ChildProcess, fork } from 'node:child_process';
import net from 'node:net';
import { join } from 'node:path';
import { FD_CHANNEL_ENV, FdChannel } from '../../supervisor/fd-channel.js';
import { closeDescriptor, DESCRIPTORS_PER_MESSAGE_MAX } from '../../supervisor/linux.js';
import { connectionFd, type RawSocketHandle, sendRawHandle } from '../../supervisor/node-internals.js';
import { median } from '../analysis.js';
import { type BenchContext, pick } from '../context.js';
import { REPO_ROOT, withDeadline } from '../harness.js';
import { count, ms, ratio, type ScenarioOutcome } from '../report.js';

const SINK = join(REPO_ROOT, 'bench', 'apps', 'descriptor-sink.js');
/** How long one pass of every connection may take before the scenario fails. */
const PASS_TIMEOUT_MS = 60_000;

/** A child that answers each IPC message of the parent in turn. */
function nextMessage(child: ChildProcess): Promise<Record<string, unknown>> {
  return withDeadline(
    new Promise((resolve) => child.once('message', (message) => resolve(message as Record<string, unknown>))),
    PASS_TIMEOUT_MS,
    'the descriptor sink to answer',
  );
}

/** Opens `n` loopback connections; resolves with the accepted ends (what a worker would pass on). */
async function openConnections(n: number): Promise<{ accepted: net.Socket[]; close(): void }> {
  const server = net.createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', 511, resolve));
  const port = (server.address() as net.AddressInfo).port;
  const accepted: net.Socket[] = [];
  const clients: net.Socket[] = [];
  server.on('connection', (socket) => accepted.push(socket));
  for (let opened = 0; opened < n; opened += 250) {
    const batch = Array.from({ length: Math.min(250, n - opened) }, () => {
      const client = net.connect(port, '127.0.0.1');
      clients.push(client);
      return new Promise<void>((resolve, reject) => {
        client.once('connect', resolve);
        client.once('error', reject);
      });
    });
    await Promise.all(batch);
  }
  await withDeadline(
    (async () => {
      while (accepted.length < n) await new Promise((resolve) => setTimeout(resolve, 5));
    })(),
    PASS_TIMEOUT_MS,
    `${n} connections accepted`,
  );
  return {
    accepted,
    close: () => {
      for (const socket of [...accepted, ...clients]) socket.destroy();
      server.close();
    },
  };
}

/** One pass over Node's IPC: every connection's raw handle in its own message. */
async function passOverIpc(child: ChildProcess, sockets: readonly net.Socket[]): Promise<number> {
  child.send({ kind: 'expect', count: sockets.length });
  await nextMessage(child);
  const done = nextMessage(child);
  const start = performance.now();
  for (const socket of sockets) {
    const handle = (socket as unknown as { _handle: RawSocketHandle })._handle;
    sendRawHandle(child as never, { kind: 'one' }, handle, () => {});
  }
  await done;
  return performance.now() - start;
}

/** One pass over the descriptor channel: batches of 253, each followed by one IPC message. */
async function passOverChannel(
  child: ChildProcess,
  channel: FdChannel,
  fds: readonly number[],
): Promise<number> {
  child.send({ kind: 'expect', count: fds.length });
  await nextMessage(child);
  const done = nextMessage(child);
  const start = performance.now();
  for (let id = 0; id * DESCRIPTORS_PER_MESSAGE_MAX < fds.length; id++) {
    await channel.send(
      id,
      fds.slice(id * DESCRIPTORS_PER_MESSAGE_MAX, (id + 1) * DESCRIPTORS_PER_MESSAGE_MAX),
    );
    child.send({ kind: 'batch' });
  }
  await done;
  return performance.now() - start;
}

/** Runs scenario 10. */
export async function descriptors(context: BenchContext): Promise<ScenarioOutcome> {
  const connections = pick(context, 1_000, 5_000);
  const rounds = pick(context, 3, 5);
  context.progress(
    `scenario 10, descriptors per second: ${connections} connections, ${rounds} passes each way`,
  );
  const { accepted, close } = await openConnections(connections);
  const { channel, peerFd } = FdChannel.pair();
  const child = fork(SINK, [], {
    stdio: ['ignore', 'inherit', 'inherit', peerFd, 'ipc'],
    env: { ...process.env, [FD_CHANNEL_ENV]: '3' },
    serialization: 'json',
  });
  closeDescriptor(peerFd);
  const ipcMs: number[] = [];
  const channelMs: number[] = [];
  try {
    const fds = accepted.map((socket) => {
      const fd = connectionFd(socket);
      if (fd === undefined) throw new Error('an accepted connection has no descriptor');
      return fd;
    });
    for (let round = 0; round < rounds; round++) {
      ipcMs.push(await passOverIpc(child, accepted));
      channelMs.push(await passOverChannel(child, channel, fds));
    }
  } finally {
    child.kill('SIGKILL');
    channel.close();
    close();
  }
  const perSecond = (durationMs: number) => (connections * 1000) / durationMs;
  const ipc = median(ipcMs);
  const batched = median(channelMs);
  return {
    id: 'descriptors',
    title: '10. Descriptors per second: Node IPC vs the descriptor channel',
    data: { connections, rounds, ipcMs, channelMs },
    sections: [
      {
        title: '',
        header: ['path', 'connections passed', 'time (median)', 'per second', 'ratio to Node IPC'],
        rows: [
          ['Node IPC, one per message', count(connections), ms(ipc), count(perSecond(ipc)), ratio(1)],
          [
            `descriptor channel, batches of ${DESCRIPTORS_PER_MESSAGE_MAX}`,
            count(connections),
            ms(batched),
            count(perSecond(batched)),
            ratio(ipc / batched),
          ],
        ],
        note: `Medians of ${rounds} alternating passes of the same open TCP connections to one child, which closes its copies; timed from the first send until the child has them all.`,
      },
    ],
    checks: [{ what: 'the descriptor channel passes connections faster than Node IPC', ok: batched < ipc }],
  };
}
