/**
 * `baton reexec [--program PATH]`: asks the master to replace its own program with the baton on disk
 * (docs/reexec.md), prints each step, and exits 0 once the new program runs and has adopted the
 * workers; 12 (one line why) when the new program was refused and the master runs on unchanged.
 */
import { connectToMaster, type MasterTarget } from '../../supervisor/control/client.js';
import type { ErrorAnswer } from '../../supervisor/control/protocol.js';
import type { ReexecResult } from '../../supervisor/control/reexec.js';
import { ControlProtocolError, EXIT_CODES, ReexecRefusedError } from '../../supervisor/errors.js';
import type { ReexecStep } from '../../supervisor/model.js';
import type { Output } from './reload.js';

/** The line `baton reexec` prints for a step. */
export function describeReexecStep(step: ReexecStep): string {
  switch (step.step) {
    case 'trying':
      return `trying ${step.program} (the master runs baton ${step.from})`;
    case 'tried':
      return `tried: baton ${step.version} on Node ${step.node} takes the master's state`;
    case 'executing':
      return `state carried (${step.workers} worker(s), ${step.listeners} listener(s)): executing`;
  }
}

/** Runs the re-exec and follows it; resolves with 0, or throws the BatonError that says why it was refused. */
export async function reexecCommand(
  target: MasterTarget,
  program: string | undefined,
  out: Output,
): Promise<number> {
  const client = await connectToMaster(target);
  try {
    for await (const line of client.request({ kind: 'reexec', ...(program ? { program } : {}) })) {
      if ('progress' in line) {
        out.write(`${describeReexecStep(line.progress as ReexecStep)}\n`);
      } else if (line.ok) {
        const result = line.reexec as ReexecResult;
        out.write(
          `master ${result.pid} runs baton ${result.version} (was ${result.from}); ${result.workers} worker(s) adopted\n`,
        );
        return EXIT_CODES.ok;
      } else {
        const { error } = line as ErrorAnswer;
        if (error.code === 'reexec-refused') {
          throw new ReexecRefusedError(`baton reexec refused, nothing changed: ${error.message}`);
        }
        throw new ControlProtocolError(error.code, `The master refused the reexec: ${error.message}`);
      }
    }
    throw new ControlProtocolError(
      'closed',
      'The master closed the connection during the reexec without an answer: check that it runs (baton status) and its log',
    );
  } finally {
    client.close();
  }
}
