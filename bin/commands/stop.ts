/**
 * `baton stop [--fast]`: asks the master to stop (drain everything, or kill
 * every worker now) and waits until it has; exits with the master's own exit code.
 */
import { connectToMaster, type MasterTarget } from '../../supervisor/control/client.js';
import type { ErrorAnswer } from '../../supervisor/control/protocol.js';
import type { StopResult } from '../../supervisor/control/stop.js';
import { ControlProtocolError } from '../../supervisor/errors.js';
import type { Progress } from '../../supervisor/model.js';
import { describeProgress } from './format.js';
import type { Output } from './reload.js';

/** Stops the master and resolves with the exit code it stopped with. */
export async function stopCommand(target: MasterTarget, fast: boolean, out: Output): Promise<number> {
  const client = await connectToMaster(target);
  try {
    for await (const line of client.request({ kind: 'stop', fast })) {
      if ('progress' in line) {
        for (const text of describeProgress(line.progress as Progress)) out.write(`${text}\n`);
      } else if (line.ok) {
        const { exitCode } = line.stop as StopResult;
        out.write(`master stopped (exit code ${exitCode})\n`);
        return exitCode;
      } else {
        const { error } = line as ErrorAnswer;
        throw new ControlProtocolError(error.code, `The master refused to stop: ${error.message}`);
      }
    }
    throw new ControlProtocolError('closed', 'The master ended the answer without a result.');
  } finally {
    client.close();
  }
}
