/**
 * Talking to a master from a fault test: the `baton` CLI run to its end (stdout and stderr apart,
 * its time measured), and a raw `status` request timed on the control socket itself, which is the
 * master's own response time without a CLI's start-up. Masters are started with `startBaton`
 * (killed by `killAll`); what these helpers open is closed by a registered cleanup if a test ends first.
 */
import { spawn } from 'node:child_process';
import net from 'node:net';
import type { MasterStatus } from '../../supervisor/control/status.js';
import { registerCleanup } from '../helpers/cleanup.js';
import { BATON_BIN, REPO_ROOT } from '../helpers/processes.js';
import { withDeadline } from '../helpers/wait.js';

/** How long one CLI command may take when the test does not say. */
export const CLI_TIMEOUT_MS = 20_000;

/** A `baton` command that ran to its end. */
export interface CliResult {
  exitCode: number | null;
  stdout: string;
  stderr: string;
  /** From spawn to the end of its output. */
  ms: number;
}

/** A running `baton` command: its stdout so far, and its end (rejects past the deadline). */
export interface RunningCli {
  done: Promise<CliResult>;
  stdout(): string;
}

/** Runs `baton <args>` with the Node that runs the tests. */
export function cli(args: string[], timeoutMs = CLI_TIMEOUT_MS): RunningCli {
  const started = performance.now();
  const child = spawn(process.execPath, [BATON_BIN, ...args], {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const forget = registerCleanup(() => {
    child.kill('SIGKILL');
  });
  // 'close', not 'exit': the output is complete only once both pipes have ended.
  const closed = new Promise<CliResult>((resolve) => {
    child.once('close', (exitCode) => {
      forget();
      resolve({ exitCode, stdout, stderr, ms: performance.now() - started });
    });
  });
  return {
    done: withDeadline(closed, timeoutMs, `baton ${args.join(' ')} to exit`).catch((error: Error) => {
      throw new Error(`${error.message}\n--- stdout ---\n${stdout}\n--- stderr ---\n${stderr}`);
    }),
    stdout: () => stdout,
  };
}

/** `baton status --json --control <control>`: the master's status, and how long the command took. */
export async function statusJson(
  control: string,
  timeoutMs = CLI_TIMEOUT_MS,
): Promise<{ status: MasterStatus; ms: number }> {
  const result = await cli(['status', '--json', '--control', control], timeoutMs).done;
  if (result.exitCode !== 0 || result.stderr !== '') {
    throw new Error(`baton status exited ${result.exitCode}: ${result.stderr}`);
  }
  return { status: JSON.parse(result.stdout) as MasterStatus, ms: result.ms };
}

/** One `{"kind":"status"}` request on the control socket at `control`, timed from connect to answer. */
export async function askStatus(
  control: string,
  timeoutMs = CLI_TIMEOUT_MS,
): Promise<{ status: MasterStatus; ms: number }> {
  const started = performance.now();
  const socket = net.connect({ path: control });
  const forget = registerCleanup(() => {
    socket.destroy();
  });
  try {
    const line = await withDeadline(
      new Promise<string>((resolve, reject) => {
        let text = '';
        socket.setEncoding('utf8');
        socket.once('connect', () => socket.write('{"kind":"status"}\n'));
        socket.on('data', (chunk: string) => {
          text += chunk;
          const end = text.indexOf('\n');
          if (end !== -1) resolve(text.slice(0, end));
        });
        socket.once('error', reject);
        socket.once('close', () => reject(new Error('the master closed the connection before its answer')));
      }),
      timeoutMs,
      `the master on ${control} to answer a status request`,
    );
    const answer = JSON.parse(line) as { ok: boolean; status?: MasterStatus };
    if (!answer.ok || answer.status === undefined) throw new Error(`status refused: ${line}`);
    return { status: answer.status, ms: performance.now() - started };
  } finally {
    socket.destroy();
    forget();
  }
}
