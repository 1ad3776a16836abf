/**
 * `baton inject [--worker PID | --generation N | --all] PATCH`: sends a hot patch (an ES module whose
 * default export gets the values the app exposed) to live workers, prints one line per worker, and
 * fails unless every one of them applied it. `baton inject --dry-run PATCH` tries it in a scratch worker
 * instead, applies it nowhere, and prints one line.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { connectToMaster, type MasterTarget } from '../../supervisor/control/client.js';
import type { DryRunInjectResult, InjectResult } from '../../supervisor/control/inject.js';
import { type ErrorAnswer, encodeLine, MAX_REQUEST_LINE_BYTES } from '../../supervisor/control/protocol.js';
import type { DryRunResult } from '../../supervisor/dry-run.js';
import {
  ControlProtocolError,
  InjectFailedError,
  MasterStoppingError,
  UsageError,
} from '../../supervisor/errors.js';
import type { InjectTarget, WorkerInjection } from '../../supervisor/inject.js';
import type { Output } from './reload.js';

/** How many frames of a failed patch's stack the CLI prints under its worker's line. */
const STACK_LINES_SHOWN = 4;

/** How many of a scratch worker's last stderr lines (stack frames left out) the one line of a failed dry run quotes. */
const STDERR_LINES_QUOTED = 3;

/** Where `baton inject` sends the patch: some live workers, or a scratch worker (`--dry-run`). */
export type InjectDestination = InjectTarget | { kind: 'dry-run' };

/** Sends the patch in file `patchPath` where `destination` says; resolves with the exit code. */
export async function injectCommand(
  master: MasterTarget,
  patchPath: string,
  destination: InjectDestination,
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
  const request = { kind: 'inject', file, source, hash, ...requestDestination(destination) };
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
        const what = destination.kind === 'dry-run' ? 'try' : 'send';
        const message = `The master did not ${what} the patch: ${error.message}`;
        if (error.code === 'stopping') throw new MasterStoppingError(message);
        if (error.code === 'no-workers' || error.code === 'command-not-found')
          throw new InjectFailedError(message);
        throw new ControlProtocolError(error.code, message);
      }
      if (destination.kind === 'dry-run')
        return reportDryRun((line.inject as DryRunInjectResult).dryRun, file, hash, out);
      return reportInjection(line.inject as InjectResult, file, hash, out);
    }
    throw new ControlProtocolError('closed', 'The master ended the answer without a result.');
  } finally {
    client.close();
  }
}

/** The request's `target`, or `dryRun`. */
function requestDestination(destination: InjectDestination): Record<string, unknown> {
  if (destination.kind === 'dry-run') return { dryRun: true };
  if (destination.kind === 'all') return { target: 'all' };
  if (destination.kind === 'pid') return { target: { pid: destination.pid } };
  return { target: { generation: destination.generation } };
}

function reportInjection(result: InjectResult, file: string, hash: string, out: Output): number {
  for (const worker of result.workers) out.write(describeInjection(worker, file));
  const failed = result.workers.filter((worker) => worker.outcome !== 'patched');
  if (failed.length > 0) {
    throw new InjectFailedError(
      `The patch ${file} (sha256 ${hash.slice(0, 12)}) did not go through on ${failed.length} of ${result.workers.length} worker(s).`,
    );
  }
  out.write(`patch ${file} (sha256 ${hash.slice(0, 12)}) applied to ${result.workers.length} worker(s)\n`);
  return 0;
}

/** A dry run is one line: on stdout when the patch ran, else on stderr as the error (exit 11). */
function reportDryRun(result: DryRunResult, file: string, hash: string, out: Output): number {
  const where = `in a scratch worker of generation ${result.generation} (pid ${result.pid ?? '?'})`;
  const patch = `${file} (sha256 ${hash.slice(0, 12)})`;
  if (result.outcome === 'ran') {
    out.write(`dry run: patch ${patch} loaded and ran ${where}; applied nowhere\n`);
    return 0;
  }
  throw new InjectFailedError(`Dry run of ${patch} ${where}: ${describeDryRunFailure(result, file)}`);
}

/** Why a dry run did not run, with where in the patch it threw, or the end of the scratch worker's stderr. */
export function describeDryRunFailure(result: DryRunResult, file: string): string {
  const message = result.error?.message ?? 'no reason given';
  if (result.outcome === 'failed') {
    const frame = patchFrames(result.error?.stack, file)[0];
    return `failed: ${message}${frame ? ` (${frame})` : ''}`;
  }
  // What the app said, without Node's stack frames, carets and version trailer, which bury it.
  const stderr = (result.stderrTail ?? '')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !/^at |^\^+$|^Node\.js v\d/.test(line))
    .slice(-STDERR_LINES_QUOTED);
  return stderr.length > 0 ? `${message}; its stderr ended: ${stderr.join(' | ')}` : message;
}

/** The frames of a stack that are the patch's own: the child API's and Node's say nothing about the patch. */
function patchFrames(stack: string | undefined, file: string): string[] {
  return (stack ?? '')
    .split('\n')
    .slice(1)
    .filter((frame) => frame.includes(file))
    .map((frame) => frame.trim());
}

/** One worker's line (and, for a patch that threw, where in the patch, indented). */
export function describeInjection(result: WorkerInjection, file: string): string {
  const who = `generation ${result.generation} worker ${result.worker} (pid ${result.pid ?? '?'})`;
  if (result.outcome === 'patched') return `${who}: patched\n`;
  const message = result.error?.message ?? 'no reason given';
  const frames = patchFrames(result.error?.stack, file)
    .slice(0, STACK_LINES_SHOWN)
    .map((frame) => `    ${frame}\n`)
    .join('');
  return `${who}: ${result.outcome === 'failed' ? 'failed: ' : ''}${message}\n${frames}`;
}
