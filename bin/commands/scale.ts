/**
 * `baton scale N`: sets the number of workers of the serving generation (and
 * of the next ones) without a reload; returns once the added workers are ready.
 */
import { connectToMaster, type MasterTarget } from '../../supervisor/control/client.js';
import type { ErrorAnswer } from '../../supervisor/control/protocol.js';
import type { ScaleResult } from '../../supervisor/control/scale.js';
import { ControlProtocolError } from '../../supervisor/errors.js';
import type { Output } from './reload.js';

/** Scales the master's workers to `workers`; resolves with the exit code. */
export async function scaleCommand(target: MasterTarget, workers: number, out: Output): Promise<number> {
  const client = await connectToMaster(target);
  try {
    for await (const line of client.request({ kind: 'scale', workers })) {
      if ('progress' in line) continue;
      if (line.ok) {
        const { from, to } = line.scale as ScaleResult;
        out.write(
          from === to ? `workers: ${to} (unchanged)\n` : `workers: ${from} → ${to}, every one ready\n`,
        );
        return 0;
      }
      const { error } = line as ErrorAnswer;
      throw new ControlProtocolError(error.code, `The master did not scale: ${error.message}`);
    }
    throw new ControlProtocolError('closed', 'The master ended the answer without a result.');
  } finally {
    client.close();
  }
}
