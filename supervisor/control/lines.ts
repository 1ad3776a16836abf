/**
 * Newline framing with a size limit, for both ends of the control socket. Bytes
 * are joined before decoding, so a character split across two chunks survives.
 */

/** What a chunk of input held. */
export interface SplitLines {
  /** The complete lines, without their `\n` (and without a `\r` before it). */
  lines: string[];
  /** A line grew past the limit; the lines after it were not read. */
  tooLong: boolean;
}

/** Cuts a byte stream into lines of at most `maxLineBytes` bytes each. */
export class LineBuffer {
  private partial: Buffer[] = [];
  private partialBytes = 0;

  constructor(readonly maxLineBytes: number) {}

  /** Takes the next chunk; a line longer than the limit stops the reading (`tooLong`). */
  push(chunk: Buffer): SplitLines {
    const lines: string[] = [];
    let start = 0;
    for (let newline = chunk.indexOf(10); newline !== -1; newline = chunk.indexOf(10, start)) {
      if (this.partialBytes + newline - start > this.maxLineBytes) return { lines, tooLong: true };
      lines.push(this.take(chunk.subarray(start, newline)));
      start = newline + 1;
    }
    const rest = chunk.subarray(start);
    if (this.partialBytes + rest.length > this.maxLineBytes) return { lines, tooLong: true };
    if (rest.length > 0) {
      this.partial.push(rest);
      this.partialBytes += rest.length;
    }
    return { lines, tooLong: false };
  }

  /** The last line when the stream ended without a newline, if any. */
  end(): string | undefined {
    return this.partialBytes > 0 ? this.take(Buffer.alloc(0)) : undefined;
  }

  private take(tail: Buffer): string {
    const bytes = this.partialBytes === 0 ? tail : Buffer.concat([...this.partial, tail]);
    this.partial = [];
    this.partialBytes = 0;
    const text = bytes.toString('utf8');
    return text.endsWith('\r') ? text.slice(0, -1) : text;
  }
}
