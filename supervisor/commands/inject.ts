/**
 * `baton inject [--worker PID | --generation N | --all] PATCH`: sends a hot patch (an ES module whose
 * default export gets the values the app exposed) to live workers, prints one line per worker, and
 * fails unless every one of them applied it.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { connectToMaster, type MasterTarget } from '../control/client.js';
import type { InjectResult } from '../control/inject.js';
import { type ErrorAnswer, encodeLine, MAX_REQUEST_LINE_BYTES } from '../control/protocol.js';
import { ControlProtocolError, InjectFailedError, MasterStoppingError, UsageError } from '../errors.js';
import type { InjectTarget, WorkerInjection } from '../inject.js';
import type { Output } from './reload.js';

/** How many frames of a failed patch's stack the CLI prints under its worker's line. */
const STACK_LINES_SHOWN = 4;

/** Sends the patch in file `patchPath` to the workers `target` names; resolves with the exit code. */
export async function injectCommand(
  master: MasterTarget,
  patchPath: string,
  target: InjectTarget,
  out: Output,
): Promise<number> {
  let source: string;
  try {
    source = readFileSync(patchPath, 'utf8');
  } catch (error) {
    throw new UsageError(`Cannot read the patch '${patchPath}': ${(error as Error).message}`, {
      cause: error,
    });
  }
  const file = basename(patchPath);
  const hash = createHash('sha256').update(source).digest('hex');
  const request = {
    kind: 'inject',
    file,
    source,
    hash,
    target:
      target.kind === 'all'
        ? 'all'
        : target.kind === 'pid'
          ? { pid: target.pid }
          : { generation: target.generation },
  };
  if (Buffer.byteLength(encodeLine(request)) > MAX_REQUEST_LINE_BYTES) {
    throw new UsageError(
      `The patch '${patchPath}' is too large: a request line holds at most ${MAX_REQUEST_LINE_BYTES} bytes; patches are for small fixes`,
    );
  }
  const client = await connectToMaster(master);
  try {
    for await (const line of client.request(request)) {
      if ('progress' in line) continue;
      if (!line.ok) {
        const { error } = line as ErrorAnswer;
        const message = `The master did not send the patch: ${error.message}`;
        if (error.code === 'stopping') throw new MasterStoppingError(message);
        if (error.code === 'no-workers') throw new InjectFailedError(message);
        throw new ControlProtocolError(error.code, message);
      }
      const result = line.inject as InjectResult;
      for (const worker of result.workers) out.write(describeInjection(worker, file));
      const failed = result.workers.filter((worker) => worker.outcome !== 'patched');
      if (failed.length > 0) {
        throw new InjectFailedError(
          `The patch ${file} (sha256 ${hash.slice(0, 12)}) did not go through on ${failed.length} of ${result.workers.length} worker(s).`,
        );
      }
      out.write(
        `patch ${file} (sha256 ${hash.slice(0, 12)}) applied to ${result.workers.length} worker(s)\n`,
      );
      return 0;
    }
    throw new ControlProtocolError('closed', 'The master ended the answer without a result.');
  } finally {
    client.close();
  }
}

/** One worker's line (and, for a patch that threw, where in the patch, indented). */
export function describeInjection(result: WorkerInjection, file: string): string {
  const who = `generation ${result.generation} worker ${result.worker} (pid ${result.pid ?? '?'})`;
  if (result.outcome === 'patched') return `${who}: patched\n`;
  const message = result.error?.message ?? 'no reason given';
  // Only the patch's own frames: the child API's and Node's say nothing about the patch.
  const frames = (result.error?.stack ?? '')
    .split('\n')
    .slice(1)
    .filter((frame) => frame.includes(file))
    .slice(0, STACK_LINES_SHOWN)
    .map((frame) => `    ${frame.trim()}\n`)
    .join('');
  return `${who}: ${result.outcome === 'failed' ? 'failed: ' : ''}${message}\n${frames}`;
}
