/**
 * The two hidden commands of `baton reexec` (supervisor/reexec.ts), run by bin/baton.js without the
 * CLI's parser: `__reexec-try FILE`, the trial of this program in a separate process, and
 * `__resume FILE`, this program as the master, after execve, resuming from FILE.
 */
import { rmSync } from 'node:fs';
import { resolveStartSettings } from './config.js';
import { DEFAULTS, type LogLevel, type RawStartArgs } from './options.js';
import { closeOnExecAgain, ownVersion, ReexecRefused, readState } from './reexec.js';

/** The oldest Node with process.execve. */
const EXECVE_SINCE = [22, 15];

/**
 * The trial: reads the state the master would carry, loads everything a master runs, and prints
 * `{"version":…,"node":…}`; exits 1 with one `baton: …` line when this program cannot take the state.
 */
export async function tryState(file: string): Promise<number> {
  try {
    readState(file, Number(process.env.BATON_REEXEC_PID));
    const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
    const [needMajor = 0, needMinor = 0] = EXECVE_SINCE;
    if (major < needMajor || (major === needMajor && minor < needMinor)) {
      throw new ReexecRefused(
        `Node ${process.versions.node} has no process.execve: baton reexec needs Node ${EXECVE_SINCE.join('.')} or newer`,
      );
    }
    await Promise.all([import('./start.js'), import('./log.js')]);
    process.stdout.write(`${JSON.stringify({ version: ownVersion(), node: process.versions.node })}\n`);
    return 0;
  } catch (error) {
    process.stderr.write(`baton: ${(error as Error).message}\n`);
    return 1;
  }
}

/** This program as the master: reads the state, removes its file, and runs until the master stops. */
export async function resumeMaster(file: string): Promise<number> {
  const state = readState(file);
  rmSync(file, { force: true });
  // Before anything can spawn: the carried descriptors were kept open across the exec only.
  closeOnExecAgain(state);
  const [{ createLogger }, { runMaster }] = await Promise.all([import('./log.js'), import('./start.js')]);
  const { start, master } = state;
  const logger = await createLogger({
    level: (start.logLevel ?? DEFAULTS.logLevel) as LogLevel,
    pretty: start.pretty,
  });
  const flags = start.flags as unknown as RawStartArgs;
  const config = master.config;
  return runMaster(master.options, logger, start.control, {
    failureOnStderr: start.failureOnStderr,
    start,
    carried: state,
    ...(config
      ? {
          config,
          readConfig: (path: string | undefined) =>
            resolveStartSettings(flags, path ?? config.path, start.cwd),
        }
      : {}),
  });
}
