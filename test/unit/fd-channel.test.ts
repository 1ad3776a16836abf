/**
 * The descriptor channel (supervisor/fd-channel.ts): its framing fed every chunking recvmsg could
 * produce, and real channels between this process and a peer process (test/fixtures/fd-channel-peer.js)
 * that count every descriptor in /proc on both sides, including a peer that dies in the middle of a batch.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { closeSync, openSync, readdirSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import {
  type Batch,
  BatchInbox,
  BatchOutbox,
  batchEntries,
  encodeFrame,
  FD_CHANNEL_ENV,
  FdChannel,
  FdChannelError,
  FRAME_HEADER_BYTES,
  FrameDecoder,
} from '../../supervisor/fd-channel.js';
import { closeDescriptor, DESCRIPTORS_PER_MESSAGE_MAX, isCloseOnExec } from '../../supervisor/linux.js';
import { connectionFd } from '../../supervisor/node-internals.js';
import { REPO_ROOT } from '../helpers/processes.js';
import { waitFor, withDeadline } from '../helpers/wait.js';

/** A batch as a test writes it: fake descriptor numbers are fine for the pure decoder. */
interface Sent {
  id: number;
  fds: number[];
  payload: Buffer;
}

/** The stream of frames, and where each frame starts (its descriptors ride with that byte). */
function encodeStream(batches: readonly Sent[]): { bytes: Buffer; starts: number[] } {
  const frames = batches.map((batch) => encodeFrame(batch.id, batch.fds.length, batch.payload));
  const starts: number[] = [];
  let offset = 0;
  for (const frame of frames) {
    starts.push(offset);
    offset += frame.length;
  }
  return { bytes: Buffer.concat(frames), starts };
}

/**
 * Feeds `stream` cut at `cuts` (sorted offsets), each frame's descriptors with the chunk that holds the
 * frame's first byte, as recvmsg returns them; collects every batch as soon as it is complete.
 */
function decodeChunked(batches: readonly Sent[], cuts: readonly number[]): Batch[] {
  const { bytes, starts } = encodeStream(batches);
  const decoder = new FrameDecoder();
  const out: Batch[] = [];
  const bounds = [0, ...cuts.filter((cut) => cut > 0 && cut < bytes.length), bytes.length];
  for (let index = 0; index + 1 < bounds.length; index++) {
    const from = bounds[index] as number;
    const to = bounds[index + 1] as number;
    const fds = batches.flatMap((batch, frame) => {
      const start = starts[frame] as number;
      return start >= from && start < to ? batch.fds : [];
    });
    decoder.push(bytes.subarray(from, to), fds);
    for (let batch = decoder.next(); batch; batch = decoder.next()) out.push(batch);
  }
  expect(decoder.pendingBytes).toBe(0);
  expect(decoder.pendingFds).toEqual([]);
  return out;
}

function plain(
  batches: readonly Batch[] | readonly Sent[],
): Array<{ id: number; fds: number[]; payload: string }> {
  return batches.map((batch) => ({
    id: batch.id,
    fds: [...batch.fds],
    payload: batch.payload.toString('hex'),
  }));
}

const THREE_BATCHES: Sent[] = [
  { id: 1, fds: [100, 101, 102], payload: Buffer.from('{"relays":[1,2,3]}') },
  { id: 2, fds: [], payload: Buffer.from('no descriptors') },
  { id: 3, fds: [103], payload: Buffer.alloc(0) },
];

describe('FrameDecoder (pure)', () => {
  test('cut once at every byte, and at every byte at once, each batch comes out whole with its descriptors', () => {
    const { bytes } = encodeStream(THREE_BATCHES);
    for (let cut = 0; cut <= bytes.length; cut++) {
      expect(plain(decodeChunked(THREE_BATCHES, [cut]))).toEqual(plain(THREE_BATCHES));
    }
    const everyByte = Array.from({ length: bytes.length }, (_, index) => index);
    expect(plain(decodeChunked(THREE_BATCHES, everyByte))).toEqual(plain(THREE_BATCHES));
    // Merged: the whole stream in one read.
    expect(plain(decodeChunked(THREE_BATCHES, []))).toEqual(plain(THREE_BATCHES));
  });

  test('cut twice at every pair of bytes (each frame boundary split and merged both ways)', () => {
    const { bytes } = encodeStream(THREE_BATCHES);
    for (let first = 1; first < bytes.length; first++) {
      for (let second = first + 1; second < bytes.length; second++) {
        expect(plain(decodeChunked(THREE_BATCHES, [first, second]))).toEqual(plain(THREE_BATCHES));
      }
    }
  });

  test('any batches, any chunking (property)', () => {
    const batch = fc.record({
      id: fc.nat({ max: 0xffff_ffff }),
      fdCount: fc.nat({ max: DESCRIPTORS_PER_MESSAGE_MAX }),
      payload: fc.uint8Array({ maxLength: 300 }),
    });
    fc.assert(
      fc.property(
        fc.array(batch, { minLength: 1, maxLength: 6 }),
        fc.array(fc.nat({ max: 4000 }), { maxLength: 20 }),
        (shapes, rawCuts) => {
          let nextFd = 1000;
          const batches: Sent[] = shapes.map((shape) => ({
            id: shape.id,
            fds: Array.from({ length: shape.fdCount }, () => nextFd++),
            payload: Buffer.from(shape.payload),
          }));
          const cuts = [...new Set(rawCuts)].sort((a, b) => a - b);
          expect(plain(decodeChunked(batches, cuts))).toEqual(plain(batches));
        },
      ),
      { numRuns: 300 },
    );
  });

  test('a stream out of step, or a frame short of descriptors, is an error that names it', () => {
    const bad = new FrameDecoder();
    bad.push(Buffer.alloc(FRAME_HEADER_BYTES, 1));
    expect(() => bad.next()).toThrow(FdChannelError);
    expect(() => bad.next()).toThrow(/out of step/);

    const huge = new FrameDecoder();
    const header = encodeFrame(1, 0, Buffer.alloc(0));
    header.writeUInt32LE(0xffff_ffff, 12);
    huge.push(header);
    expect(() => huge.next()).toThrow(/out of step/);

    const short = new FrameDecoder();
    short.push(encodeFrame(9, 3, Buffer.from('x')), [50, 51]);
    expect(() => short.next()).toThrow(expect.objectContaining({ reason: 'descriptors-lost' }));
    expect(short.clear()).toEqual([50, 51]);

    expect(() => encodeFrame(1, DESCRIPTORS_PER_MESSAGE_MAX + 1, Buffer.alloc(0))).toThrow(RangeError);
  });
});

/** The descriptors this process has open now (not counting the one that reads the folder). */
function openFds(): number {
  return readdirSync('/proc/self/fd').length - 1;
}

/** The descriptors of process `pid` open on /dev/null (what the tests send): read from outside it. */
function devNullsOf(pid: number | 'self'): number {
  return readdirSync(`/proc/${pid}/fd`).filter((fd) => {
    try {
      return readlinkSync(`/proc/${pid}/fd/${fd}`) === '/dev/null';
    } catch {
      return false;
    }
  }).length;
}

function openDevNull(count: number): number[] {
  return Array.from({ length: count }, () => openSync('/dev/null', 'r'));
}

/** Sends `fds` in batches of at most 253, ids from 0. */
async function sendAll(channel: FdChannel, fds: readonly number[]): Promise<void> {
  const sends: Array<Promise<void>> = [];
  for (let id = 0; id * DESCRIPTORS_PER_MESSAGE_MAX < fds.length; id++) {
    const slice = fds.slice(id * DESCRIPTORS_PER_MESSAGE_MAX, (id + 1) * DESCRIPTORS_PER_MESSAGE_MAX);
    sends.push(channel.send(id, slice, Buffer.from(`batch ${id}`)));
  }
  await Promise.all(sends);
}

describe('FdChannel within one process (koffi → sendmsg/recvmsg)', () => {
  test('1,000 descriptors in batches of 253: all arrive close-on-exec, the same files, and none is left open', async () => {
    const before = openFds();
    const { channel: sender, peerFd } = FdChannel.pair();
    const receiver = new FdChannel(peerFd);
    const sent = openDevNull(1000);
    try {
      await sendAll(sender, sent);
      const batches = receiver.receive();
      expect(batches.map((batch) => [batch.id, batch.fds.length, batch.payload.toString()])).toEqual([
        [0, 253, 'batch 0'],
        [1, 253, 'batch 1'],
        [2, 253, 'batch 2'],
        [3, 241, 'batch 3'],
      ]);
      const got = batches.flatMap((batch) => batch.fds);
      expect(new Set(got).size).toBe(1000);
      for (const fd of got) {
        expect(sent).not.toContain(fd);
        expect(readlinkSync(`/proc/self/fd/${fd}`)).toBe('/dev/null');
        expect(isCloseOnExec(fd)).toBe(true);
      }
      for (const fd of got) closeDescriptor(fd);
      expect(receiver.receive()).toEqual([]);
    } finally {
      for (const fd of sent) closeSync(fd);
      sender.close();
      receiver.close();
    }
    expect(openFds()).toBe(before);
  });

  test('a batch whose payload does not fit the socket is written in pieces and read back whole', async () => {
    const before = openFds();
    const { channel: sender, peerFd } = FdChannel.pair();
    const receiver = new FdChannel(peerFd);
    const payload = Buffer.alloc(3 * 1024 * 1024);
    for (let index = 0; index < payload.length; index++) payload[index] = index % 251;
    const sent = openDevNull(3);
    try {
      const written = sender.send(42, sent, payload);
      const batches: Batch[] = [];
      await waitFor(
        () => {
          batches.push(...receiver.receive());
          return batches.length > 0;
        },
        { timeoutMs: 10_000, what: 'the 3 MB batch to arrive', intervalMs: 1 },
      );
      await withDeadline(written, 5_000, 'the send to complete');
      expect(batches).toHaveLength(1);
      expect(batches[0]?.id).toBe(42);
      expect(batches[0]?.fds).toHaveLength(3);
      expect(batches[0]?.payload.equals(payload)).toBe(true);
      for (const fd of batches[0]?.fds ?? []) closeDescriptor(fd);
    } finally {
      for (const fd of sent) closeSync(fd);
      sender.close();
      receiver.close();
    }
    expect(openFds()).toBe(before);
  });

  test('a TCP connection sent over the channel is the same connection on the other side', async () => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    const { channel: sender, peerFd } = FdChannel.pair();
    const receiver = new FdChannel(peerFd);
    try {
      const serverSide = await withDeadline(accepted, 5_000, 'the connection');
      serverSide.pause();
      const fd = connectionFd(serverSide);
      if (fd === undefined) throw new Error('no fd for the accepted connection');
      await sender.send(1, [fd]);
      const [batch] = receiver.receive();
      const moved = new net.Socket({ fd: batch?.fds[0] as number, readable: true, writable: true });
      const echoed = new Promise<string>((resolve) =>
        client.once('data', (data) => resolve(data.toString())),
      );
      moved.write('from the other copy');
      expect(await withDeadline(echoed, 5_000, 'the client to read what the moved copy wrote')).toBe(
        'from the other copy',
      );
      moved.destroy();
    } finally {
      sender.close();
      receiver.close();
      client.destroy();
      server.close();
    }
  });
});

let peers: ChildProcess[] = [];
afterEach(async () => {
  // 'close' comes once the peer is gone and its IPC pipe is closed here: the next test counts from there.
  const closed = peers.map((peer) =>
    peer.exitCode !== null || peer.signalCode !== null
      ? Promise.resolve()
      : new Promise((resolve) => peer.once('close', resolve)),
  );
  for (const peer of peers) peer.kill('SIGKILL');
  peers = [];
  await withDeadline(Promise.all(closed), 10_000, 'the peers to be gone');
});

/** A peer process whose fd 3 is its end of a new channel; this process keeps the other end. */
function startPeer(): {
  channel: FdChannel;
  peer: ChildProcess;
  ask: (message: object) => Promise<PeerAnswer>;
} {
  const { channel, peerFd } = FdChannel.pair();
  const peer = fork(join(REPO_ROOT, 'test', 'fixtures', 'fd-channel-peer.js'), [], {
    stdio: ['ignore', 'inherit', 'inherit', peerFd, 'ipc'],
    env: { ...process.env, [FD_CHANNEL_ENV]: '3' },
  });
  closeDescriptor(peerFd);
  peers.push(peer);
  const answers: PeerAnswer[] = [];
  const waiting: Array<(answer: PeerAnswer) => void> = [];
  peer.on('message', (answer: PeerAnswer) => {
    const next = waiting.shift();
    if (next) next(answer);
    else answers.push(answer);
  });
  const nextAnswer = () =>
    withDeadline(
      new Promise<PeerAnswer>((resolve) => {
        const ready = answers.shift();
        if (ready) resolve(ready);
        else waiting.push(resolve);
      }),
      10_000,
      'the peer to answer',
    );
  return {
    channel,
    peer,
    ask: (message) => {
      peer.send(message);
      return nextAnswer();
    },
  };
}

interface PeerAnswer {
  openFds: number;
  batches?: Array<{ id: number; fds: number; payload: string }>;
  sent?: number;
  error?: string;
}

/** The descriptors process `pid` has open, read from outside it. */
function openFdsOf(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

describe('FdChannel between two processes', () => {
  test('600 descriptors each way: every one arrives, and both sides end with what they began with', async () => {
    const before = openFds();
    const { channel, peer, ask } = startPeer();
    try {
      const started = await ask({ cmd: 'noop' });
      const pid = peer.pid as number;
      expect(openFdsOf(pid)).toBe(started.openFds);

      const sent = openDevNull(600);
      await sendAll(channel, sent);
      for (const fd of sent) closeSync(fd);
      const got = await ask({ cmd: 'receive' });
      expect(got.batches?.map((batch) => batch.fds)).toEqual([253, 253, 94]);
      expect(got.openFds).toBe(started.openFds + 600);
      const closed = await ask({ cmd: 'close-received' });
      expect(closed.openFds).toBe(started.openFds);

      const back = await ask({ cmd: 'send', count: 600 });
      expect(back.sent).toBe(600);
      expect(back.openFds).toBe(started.openFds);
      const batches = channel.receive();
      expect(batches.map((batch) => [batch.id, batch.fds.length, batch.payload.toString()])).toEqual([
        [0, 253, 'batch 0'],
        [1, 253, 'batch 1'],
        [2, 94, 'batch 2'],
      ]);
      for (const batch of batches) for (const fd of batch.fds) closeDescriptor(fd);
      expect(openFdsOf(pid)).toBe(started.openFds);
    } finally {
      channel.close();
    }
    expect(openFds()).toBe(before);
  });

  test('a peer that dies in the middle of a batch: the reader gets an error, closes what it got, and leaks nothing', async () => {
    const before = openFds();
    const { channel, peer, ask } = startPeer();
    try {
      await ask({ cmd: 'noop' });
      const devNulls = devNullsOf('self');
      const exited = new Promise((resolve) => peer.once('exit', resolve));
      peer.send({ cmd: 'die-mid-batch' });
      await withDeadline(exited, 10_000, 'the peer to die');
      // Its 100 descriptors and half the frame came; the rest never will.
      expect(() => channel.receive()).toThrow(
        expect.objectContaining({ name: 'FdChannelError', reason: 'peer-closed' }),
      );
      expect(channel.failed).toBe(true);
      await expect(channel.send(1, [])).rejects.toThrow(FdChannelError);
      expect(devNullsOf('self')).toBe(devNulls);
    } finally {
      channel.close();
    }
    expect(openFds()).toBe(before);
  });

  test('a reader that dies before it reads: the sender gets an error on its next batch, and leaks nothing', async () => {
    const before = openFds();
    const { channel, peer, ask } = startPeer();
    const sent = openDevNull(253);
    try {
      await ask({ cmd: 'noop' });
      // In the kernel, waiting for a reader that never comes: they go with its end of the socket.
      await channel.send(1, sent);
      const exited = new Promise((resolve) => peer.once('exit', resolve));
      peer.send({ cmd: 'exit' });
      await withDeadline(exited, 10_000, 'the peer to exit');
      await expect(channel.send(2, sent)).rejects.toThrow(
        expect.objectContaining({ name: 'FdChannelError', reason: 'peer-closed' }),
      );
    } finally {
      for (const fd of sent) closeSync(fd);
      channel.close();
    }
    expect(openFds()).toBe(before);
  });
});

describe('BatchOutbox and BatchInbox (a handoff round on one channel)', () => {
  /** An announcement the test answers by hand, as the IPC channel's write callback would. */
  interface Announcement {
    batch: number;
    entries: unknown[];
    inKernel: Batch | undefined;
    written: () => void;
    failed: (error: Error) => void;
  }

  test('600 entries queued in one turn: three batches, each announced once it is in the kernel and without waiting for the previous announcement', async () => {
    // Counted on /dev/null: a socket of the test before may still be closing.
    const before = devNullsOf('self');
    const { channel: sender, peerFd } = FdChannel.pair();
    const inbox = new BatchInbox(new FdChannel(peerFd));
    const announced: Announcement[] = [];
    const outbox = new BatchOutbox<{ id: number }>(
      sender,
      (batch, entries) =>
        new Promise((resolve, reject) => {
          // What the peer finds when the announcement reaches it: the whole batch.
          announced.push({ batch, entries, inKernel: inbox.take(batch), written: resolve, failed: reject });
        }),
    );
    const fds = openDevNull(600);
    try {
      const settled: string[] = [];
      const sends = fds.map((fd, index) =>
        outbox.send({ id: index + 1 }, fd).then(
          () => settled.push(`sent ${index + 1}`),
          (error: Error) => settled.push(`failed ${index + 1}: ${error.message}`),
        ),
      );
      await waitFor(() => announced.length === 3, { timeoutMs: 5_000, what: 'three announcements' });
      expect(announced.map(({ batch, entries }) => [batch, entries.length])).toEqual([
        [1, 253],
        [2, 253],
        [3, 94],
      ]);
      for (const { entries, inKernel } of announced) {
        expect(inKernel && batchEntries(inKernel)).toEqual(entries);
        expect(inKernel?.fds).toHaveLength(entries.length);
        for (const fd of inKernel?.fds ?? []) expect(readlinkSync(`/proc/self/fd/${fd}`)).toBe('/dev/null');
      }
      // Nothing is settled before its own announcement is written, and a failed one fails its batch only.
      expect(settled).toEqual([]);
      announced[1]?.written();
      announced[2]?.failed(new Error('no IPC channel'));
      announced[0]?.written();
      await Promise.all(sends);
      expect(settled.filter((line) => line.startsWith('sent'))).toHaveLength(253 + 253);
      expect(settled.filter((line) => line.startsWith('failed'))).toEqual(
        Array.from({ length: 94 }, (_, index) => `failed ${507 + index}: no IPC channel`),
      );
      for (const { inKernel } of announced) for (const fd of inKernel?.fds ?? []) closeDescriptor(fd);
    } finally {
      for (const fd of fds) closeSync(fd);
      sender.close();
      inbox.close();
    }
    expect(devNullsOf('self')).toBe(before);
  });

  test('a channel whose peer is gone: every entry queued is rejected, nothing is announced, nothing leaks', async () => {
    // Counted on /dev/null: a socket of the test before may still be closing.
    const before = devNullsOf('self');
    const { channel: sender, peerFd } = FdChannel.pair();
    closeDescriptor(peerFd);
    const announced: number[] = [];
    const outbox = new BatchOutbox<{ id: number }>(sender, async (batch) => {
      announced.push(batch);
    });
    const fds = openDevNull(300);
    try {
      const outcomes = await Promise.allSettled(fds.map((fd, index) => outbox.send({ id: index }, fd)));
      expect(outcomes.every((outcome) => outcome.status === 'rejected')).toBe(true);
      expect(announced).toEqual([]);
    } finally {
      for (const fd of fds) closeSync(fd);
      sender.close();
    }
    expect(devNullsOf('self')).toBe(before);
  });
});
