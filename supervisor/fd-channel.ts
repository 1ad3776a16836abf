/**
 * The descriptor channel: baton's own AF_UNIX stream socket between the master and a worker, which
 * carries many descriptors per sendmsg (up to 253, SCM_RIGHTS) where Node's IPC carries one per
 * message and then waits for an ACK. Its end in a worker is a plain descriptor whose number the worker
 * finds in BATON_FD_CHANNEL, not Node's IPC channel, so that the master's end can be kept across an
 * execve of the master (close-on-exec cleared, supervisor/linux.ts).
 *
 * The unit is a **batch**: an id, up to DESCRIPTORS_PER_MESSAGE_MAX descriptors and a payload (what the
 * descriptors are, as the protocol above says). On the wire each batch is one frame:
 *
 *     magic u32 | batch id u32 | descriptor count u32 | payload length u32 | payload
 *
 * (little endian), and the frame's first sendmsg starts at its first byte and carries all its
 * descriptors. What Linux guarantees, and what the reader relies on:
 * - on a stream socket recvmsg may split a frame's bytes or merge the tail of one frame with the next
 *   ones; descriptors ride with the byte they were sent with, so they arrive no later than their
 *   frame's first byte, and in the order they were sent;
 * - one recvmsg never returns the descriptors of two sendmsg calls (it stops after an skb that carried
 *   some), but it may return bytes that came before them;
 * - descriptors that do not fit (the receiver at its open-file limit) are dropped, with MSG_CTRUNC.
 * So the reader keeps its bytes and its descriptors as two queues: a frame is complete once its bytes
 * are in, and then its descriptors are the first `count` of the descriptor queue. Fewer than that is
 * an error, never a guess. SOCK_SEQPACKET would keep frame boundaries, but a message must then fit in
 * the socket's send buffer whole (about 200 KB), which a batch's payload need not.
 *
 * Nothing wakes a reader when the socket becomes readable: libuv cannot watch a descriptor without
 * reading it, and a net.Socket over this one would read the bytes with read(2), which drops the
 * descriptors. The protocol that uses the channel tells the reader when to read: the sender writes
 * the whole frame first, then says so on the IPC channel (or whatever the reader already listens to),
 * and `receive()` then drains the socket without blocking.
 */
import {
  closeDescriptor,
  DESCRIPTORS_PER_MESSAGE_MAX,
  receiveWithDescriptors,
  sendWithDescriptors,
  unixStreamPair,
} from './linux.js';

/** The environment variable that names a worker's end of its channel (a descriptor number). */
export const FD_CHANNEL_ENV = 'BATON_FD_CHANNEL';

/** The first four bytes of every frame ('BFD1'): a reader that finds anything else is out of step. */
export const FRAME_MAGIC = 0x31444642;

/** The bytes of a frame's header. */
export const FRAME_HEADER_BYTES = 16;

/** The largest payload a frame may carry: a length beyond it is a stream out of step, not a batch. */
export const FRAME_PAYLOAD_MAX = 16 * 1024 * 1024;

/** How much one recvmsg reads at most. */
const RECEIVE_CHUNK_BYTES = 64 * 1024;

/** How soon a send that found the socket full tries again. */
const SEND_RETRY_MS = 1;

/** One batch as it arrives: its id, the descriptors it carried (now this process's), and its payload. */
export interface Batch {
  id: number;
  fds: number[];
  payload: Buffer;
}

/** Why a channel stopped: it is out of step, its peer is gone, or descriptors were lost on the way. */
export class FdChannelError extends Error {
  constructor(
    message: string,
    readonly reason: 'framing' | 'peer-closed' | 'descriptors-lost' | 'closed',
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'FdChannelError';
  }
}

/** The bytes of the frame that carries batch `id` with `fdCount` descriptors and `payload`. */
export function encodeFrame(id: number, fdCount: number, payload: Buffer): Buffer {
  if (!Number.isInteger(id) || id < 0 || id > 0xffff_ffff)
    throw new RangeError(`batch id ${id} out of range`);
  if (!Number.isInteger(fdCount) || fdCount < 0 || fdCount > DESCRIPTORS_PER_MESSAGE_MAX) {
    throw new RangeError(`at most ${DESCRIPTORS_PER_MESSAGE_MAX} descriptors per batch, got ${fdCount}`);
  }
  if (payload.length > FRAME_PAYLOAD_MAX) {
    throw new RangeError(`a batch's payload is at most ${FRAME_PAYLOAD_MAX} bytes, got ${payload.length}`);
  }
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  frame.writeUInt32LE(FRAME_MAGIC, 0);
  frame.writeUInt32LE(id, 4);
  frame.writeUInt32LE(fdCount, 8);
  frame.writeUInt32LE(payload.length, 12);
  payload.copy(frame, FRAME_HEADER_BYTES);
  return frame;
}

/**
 * Turns what recvmsg returns, however it was split or merged, back into batches. Pure: it is fed
 * bytes and descriptor numbers and never touches a descriptor, so that tests can feed it any chunking.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private readonly fds: number[] = [];

  /** Bytes read and not yet part of a batch. */
  get pendingBytes(): number {
    return this.buffered;
  }

  /** Descriptors received and not yet part of a batch. */
  get pendingFds(): readonly number[] {
    return this.fds;
  }

  /** Takes in one recvmsg's bytes and the descriptors that came with them. */
  push(bytes: Buffer, fds: readonly number[] = []): void {
    if (bytes.length > 0) {
      this.chunks.push(bytes);
      this.buffered += bytes.length;
    }
    this.fds.push(...fds);
  }

  /**
   * The next complete batch, or undefined while its bytes are not all in. Throws FdChannelError when
   * the stream is out of step (bad magic, a length beyond FRAME_PAYLOAD_MAX) or a complete frame finds
   * fewer descriptors than it announced; the pending descriptors are then the caller's to close.
   */
  next(): Batch | undefined {
    if (this.buffered < FRAME_HEADER_BYTES) return undefined;
    const header = this.peek(FRAME_HEADER_BYTES);
    if (header.readUInt32LE(0) !== FRAME_MAGIC) {
      throw new FdChannelError(
        'descriptor channel out of step: a frame does not start with its magic',
        'framing',
      );
    }
    const id = header.readUInt32LE(4);
    const fdCount = header.readUInt32LE(8);
    const length = header.readUInt32LE(12);
    if (fdCount > DESCRIPTORS_PER_MESSAGE_MAX || length > FRAME_PAYLOAD_MAX) {
      throw new FdChannelError(
        `descriptor channel out of step: a frame announces ${fdCount} descriptors and ${length} bytes`,
        'framing',
      );
    }
    if (this.buffered < FRAME_HEADER_BYTES + length) return undefined;
    if (this.fds.length < fdCount) {
      throw new FdChannelError(
        `batch ${id} announced ${fdCount} descriptors and ${this.fds.length} arrived`,
        'descriptors-lost',
      );
    }
    const frame = this.take(FRAME_HEADER_BYTES + length);
    return { id, fds: this.fds.splice(0, fdCount), payload: frame.subarray(FRAME_HEADER_BYTES) };
  }

  /** Empties the decoder; returns the descriptors it held, for the caller to close. */
  clear(): number[] {
    this.chunks = [];
    this.buffered = 0;
    return this.fds.splice(0);
  }

  private peek(length: number): Buffer {
    if ((this.chunks[0]?.length ?? 0) < length) this.chunks = [Buffer.concat(this.chunks)];
    return (this.chunks[0] as Buffer).subarray(0, length);
  }

  private take(length: number): Buffer {
    const whole = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    const frame = Buffer.from(whole.subarray(0, length));
    const rest = whole.subarray(length);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return frame;
  }
}

/** A frame waiting for room in the socket: its bytes from `offset` on; its descriptors go with the first. */
interface Outgoing {
  bytes: Buffer;
  fds: readonly number[];
  offset: number;
  done: (error?: Error) => void;
}

/** One end of a descriptor channel, owned by this process: sends batches and drains what came. */
export class FdChannel {
  private readonly decoder = new FrameDecoder();
  private readonly outgoing: Outgoing[] = [];
  private retry: NodeJS.Timeout | undefined;
  private readonly readBuffer = Buffer.allocUnsafe(RECEIVE_CHUNK_BYTES);
  private failure: FdChannelError | undefined;
  private open = true;

  /** Takes ownership of `fd`, an AF_UNIX stream socket, non-blocking (unixStreamPair, or inherited). */
  constructor(readonly fd: number) {}

  /**
   * A new channel: this process's end, and the other end's descriptor, to pass to the peer (as a
   * worker's inherited descriptor) and then close here.
   */
  static pair(): { channel: FdChannel; peerFd: number } {
    const [mine, theirs] = unixStreamPair();
    return { channel: new FdChannel(mine), peerFd: theirs };
  }

  /**
   * Sends batch `id`: `fds` (at most DESCRIPTORS_PER_MESSAGE_MAX; duplicated by the kernel, this
   * process keeps its copies) and `payload`. Resolves once the whole frame is in the kernel: from
   * then on the peer holds its own copies, even if this process closes its own or dies. Batches go out
   * in the order of the calls. Rejects with FdChannelError when the peer is gone or the channel closed.
   */
  send(id: number, fds: readonly number[], payload: Buffer = Buffer.alloc(0)): Promise<void> {
    const bytes = encodeFrame(id, fds.length, payload);
    return new Promise((resolve, reject) => {
      if (this.failure || !this.open) {
        reject(this.failure ?? new FdChannelError('the descriptor channel is closed', 'closed'));
        return;
      }
      this.outgoing.push({
        bytes,
        fds: [...fds],
        offset: 0,
        done: (error) => (error ? reject(error) : resolve()),
      });
      this.flush();
    });
  }

  /**
   * Every batch complete now, reading until nothing waits; never blocks. Descriptors of a batch not
   * complete yet stay here until it is. Throws FdChannelError if the peer closed in the middle of a
   * batch, the stream is out of step or descriptors were dropped: the descriptors read so far and not
   * returned are closed, and the channel is done.
   */
  receive(): Batch[] {
    if (this.failure) throw this.failure;
    if (!this.open) throw new FdChannelError('the descriptor channel is closed', 'closed');
    const batches: Batch[] = [];
    try {
      for (;;) {
        const chunk = receiveWithDescriptors(this.fd, this.readBuffer);
        if (!chunk) break;
        this.decoder.push(chunk.bytes, chunk.fds);
        if (chunk.truncated) {
          throw new FdChannelError(
            'the kernel dropped descriptors sent on the channel (MSG_CTRUNC: at the open-file limit?)',
            'descriptors-lost',
          );
        }
        for (let batch = this.decoder.next(); batch; batch = this.decoder.next()) batches.push(batch);
        if (chunk.ended) {
          if (this.decoder.pendingBytes > 0 || this.decoder.pendingFds.length > 0) {
            throw new FdChannelError(
              `the peer closed the descriptor channel in the middle of a batch (${this.decoder.pendingBytes} bytes, ${this.decoder.pendingFds.length} descriptors received of it)`,
              'peer-closed',
            );
          }
          this.fail(new FdChannelError('the peer closed the descriptor channel', 'peer-closed'));
          break;
        }
      }
    } catch (error) {
      const failure =
        error instanceof FdChannelError
          ? error
          : new FdChannelError('reading the descriptor channel failed', 'peer-closed', { cause: error });
      for (const batch of batches) for (const fd of batch.fds) closeDescriptor(fd);
      this.fail(failure);
      throw failure;
    }
    return batches;
  }

  /** Whether the peer is known to be gone (or the channel failed); `receive` and `send` then throw. */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  /**
   * Closes this end, and every descriptor received and not handed out. Sends not complete yet are
   * rejected; what the kernel took already stays with the peer.
   */
  close(): void {
    if (!this.open) return;
    this.open = false;
    this.fail(new FdChannelError('the descriptor channel is closed', 'closed'));
    closeDescriptor(this.fd);
  }

  private fail(failure: FdChannelError): void {
    this.failure ??= failure;
    for (const fd of this.decoder.clear()) closeDescriptor(fd);
    if (this.retry) clearTimeout(this.retry);
    this.retry = undefined;
    for (const pending of this.outgoing.splice(0)) pending.done(this.failure);
  }

  /** Writes what the socket takes; a full socket is tried again shortly. */
  private flush(): void {
    while (this.outgoing.length > 0 && !this.failure) {
      const pending = this.outgoing[0] as Outgoing;
      let written: number;
      try {
        // The descriptors go with the frame's first bytes, and only with them.
        written = sendWithDescriptors(
          this.fd,
          pending.offset === 0 ? pending.bytes : pending.bytes.subarray(pending.offset),
          pending.offset === 0 ? pending.fds : [],
        );
      } catch (error) {
        this.fail(
          new FdChannelError('the peer of the descriptor channel is gone', 'peer-closed', { cause: error }),
        );
        return;
      }
      if (written === 0) {
        this.retry ??= setTimeout(() => {
          this.retry = undefined;
          this.flush();
        }, SEND_RETRY_MS);
        return;
      }
      pending.offset += written;
      if (pending.offset < pending.bytes.length) continue;
      this.outgoing.shift();
      pending.done();
    }
  }
}

/**
 * The batches that arrived on a channel and that nobody claimed yet, by id. The sender announces
 * each batch on the IPC channel once it is in the kernel; `take` then finds it here.
 */
export class BatchInbox {
  private readonly waiting = new Map<number, Batch>();

  constructor(readonly channel: FdChannel) {}

  /**
   * Batch `id` with its descriptors, now this process's: reads what waits first. Undefined when it
   * did not come (the channel failed; its descriptors are closed): its connections stay where they were.
   */
  take(id: number): Batch | undefined {
    if (!this.channel.failed) {
      try {
        for (const batch of this.channel.receive()) {
          const stale = this.waiting.get(batch.id);
          if (stale) for (const fd of stale.fds) closeDescriptor(fd);
          this.waiting.set(batch.id, batch);
        }
      } catch {
        // The channel failed (FdChannelError): only what came whole before that is here.
      }
    }
    const batch = this.waiting.get(id);
    this.waiting.delete(id);
    return batch;
  }

  /** Closes the channel and every descriptor of the batches nobody claimed. */
  close(): void {
    for (const batch of this.waiting.values()) for (const fd of batch.fds) closeDescriptor(fd);
    this.waiting.clear();
    this.channel.close();
  }
}

/** One entry waiting for its batch: what it says (in the payload) and its descriptor. */
interface Queued<Entry> {
  entry: Entry;
  fd: number;
  resolve(): void;
  reject(error: Error): void;
}

/**
 * Sends entries, each with one descriptor, in batches of up to DESCRIPTORS_PER_MESSAGE_MAX: what is
 * queued in one turn of the event loop goes out together, the entries as the JSON payload, then
 * `announce` tells the peer the batch is there.
 */
export class BatchOutbox<Entry> {
  private queued: Array<Queued<Entry>> = [];
  private scheduled = false;
  private nextBatch = 1;

  constructor(
    private readonly channel: FdChannel,
    private readonly announce: (batch: number, entries: Entry[]) => Promise<void>,
  ) {}

  /**
   * Sends `entry` with a copy of `fd` in the next batch; resolves once the batch is in the kernel and
   * announced (this process's copy may be closed from then on), rejects if either failed.
   */
  send(entry: Entry, fd: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.queued.push({ entry, fd, resolve, reject });
      if (this.scheduled) return;
      this.scheduled = true;
      setImmediate(() => void this.flush());
    });
  }

  private async flush(): Promise<void> {
    this.scheduled = false;
    const queued = this.queued;
    this.queued = [];
    for (let start = 0; start < queued.length; start += DESCRIPTORS_PER_MESSAGE_MAX) {
      const slice = queued.slice(start, start + DESCRIPTORS_PER_MESSAGE_MAX);
      const batch = this.nextBatch;
      this.nextBatch = this.nextBatch >= 0xffff_ffff ? 1 : this.nextBatch + 1;
      const entries = slice.map((item) => item.entry);
      const fail = (error: unknown) => {
        const failure = error instanceof Error ? error : new Error(String(error));
        for (const item of slice) item.reject(failure);
      };
      try {
        await this.channel.send(
          batch,
          slice.map((item) => item.fd),
          Buffer.from(JSON.stringify(entries)),
        );
      } catch (error) {
        fail(error);
        continue;
      }
      // Announced as soon as it is in the kernel, without waiting for the previous announcement to be
      // written: the peer reads the channel when an announcement comes, which makes room for the next batch.
      this.announce(batch, entries).then(() => {
        for (const item of slice) item.resolve();
      }, fail);
    }
  }
}

/** The entries of a batch's payload (a JSON array, one entry per descriptor); undefined if it is not one. */
export function batchEntries(batch: Batch): unknown[] | undefined {
  try {
    const entries: unknown = JSON.parse(batch.payload.toString('utf8'));
    return Array.isArray(entries) && entries.length === batch.fds.length ? entries : undefined;
  } catch {
    return undefined;
  }
}
