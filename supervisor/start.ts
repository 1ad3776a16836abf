/**
 * `baton start`: bind the listeners, start the master, route signals to it,
 * and return the exit code once it has stopped.
 */
import { closeLeakedDescriptors } from './descriptors.js';
import { openListeners } from './listener.js';
import type { Logger } from './log.js';
import { Master } from './master.js';
import type { MasterOptions } from './options.js';
import { realOs } from './os.js';
import { routeSignals } from './signals.js';

/** Runs a master until it stops; throws a BatonError when it cannot start at all. */
export async function runMaster(options: MasterOptions, logger: Logger): Promise<number> {
  const env = process.env;
  const cwd = process.cwd();
  const ipcFd = (process.channel as { fd?: number } | undefined)?.fd;
  const leaked = closeLeakedDescriptors(new Set(ipcFd === undefined ? [] : [ipcFd]));
  if (leaked.length > 0) logger.debug({ fds: leaked }, 'inherited descriptors closed');
  // Fail before binding anything when the command cannot run.
  realOs.resolveCommand(options.command, env, cwd);
  const listeners = await openListeners(options.listen);
  for (const listener of listeners) {
    logger.info(
      { listener: listener.name, address: listener.address, port: listener.port },
      'listener bound',
    );
  }
  const master = new Master(options, {
    os: realOs,
    logger,
    listeners,
    env,
    cwd,
    writeStderr: (chunk) => process.stderr.write(chunk),
  });
  const unrouteSignals = routeSignals((event) => master.dispatch(event));
  logger.info(
    { masterPid: process.pid, command: options.command, workers: options.workers },
    'master started',
  );
  master.dispatch({ type: 'start' });
  const exitCode = await master.finished;
  unrouteSignals();
  if (master.startError) logger.error({ exitCode }, master.startError.message);
  return exitCode;
}
