/**
 * `baton start`: bind the listeners, start the master, route signals and the
 * control socket to it, and return the exit code once it has stopped.
 */
import { rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ConfigLabel, StartSettings } from './config.js';
import { prepareControlPath } from './control/private-socket.js';
import { ControlServer } from './control/server.js';
import type { ControlSettings } from './control/socket-path.js';
import { livePids } from './control/status.js';
import { UsageSampler } from './control/usage.js';
import { closeLeakedDescriptors } from './descriptors.js';
import { inheritedListeners, Listener, openListeners } from './listener.js';
import type { Logger } from './log.js';
import { Master, type ReexecPorts } from './master.js';
import type { MasterEvent } from './model.js';
import type { ListenSpec, MasterOptions } from './options.js';
import { realOs } from './os.js';
import { pid1Warning } from './pid1.js';
import {
  type BatonProgram,
  type CarriedConnection,
  type CarriedMaster,
  type CarriedState,
  carriedDescriptors,
  executeProgram,
  ownEntry,
  ownVersion,
  STATE_FORMAT,
  tryProgram,
  writeState,
} from './reexec.js';
import { routeSignals, SIGNAL_EVENTS } from './signals.js';
import { PRELOAD_URL } from './unmodified.js';
import { checkExecutableBy, findAccessBlock } from './users.js';
import { checkVersionFile, readVersionLabel } from './version.js';
import { watchForChanges } from './watch.js';

/** Runs a master until it stops; throws a BatonError when it cannot start at all. */
export async function runMaster(
  options: MasterOptions,
  logger: Logger,
  control: ControlSettings,
  {
    failureOnStderr = false,
    config,
    readConfig,
    start,
    carried,
  }: {
    /** Also say why the first generation failed as one `baton: …` line on stderr (JSON logs go to stdout). */
    failureOnStderr?: boolean;
    /** The config file the options came from, and how to read it again (SIGHUP). */
    config?: ConfigLabel;
    readConfig?: (file: string | undefined) => StartSettings;
    /** How the master was started, for `baton reexec` to carry; a master without it cannot re-execute. */
    start?: CarriedState['start'];
    /** The state the previous program of this master carried (`baton reexec`): resumed, not started. */
    carried?: CarriedState;
  } = {},
): Promise<number> {
  // Signals first: one that comes while the listeners are being opened is queued, not fatal
  // (SIGUSR2's default action would kill the master).
  const early: MasterEvent[] = [];
  let dispatch = (event: MasterEvent) => {
    early.push(event);
  };
  const unrouteSignals = routeSignals((event) => dispatch(event));
  if (carried) {
    // What came while the resumed program's modules loaded (bin/baton.js kept it).
    const kept = (globalThis as { batonEarlySignals?: () => NodeJS.Signals[] }).batonEarlySignals?.() ?? [];
    for (const signal of kept) {
      const event = SIGNAL_EVENTS[signal];
      if (event) early.push(event);
    }
  }
  const env = process.env;
  const cwd = process.cwd();
  if (!carried) {
    const ipcFd = (process.channel as { fd?: number } | undefined)?.fd;
    // Sockets handed over by systemd (LISTEN_FDS) are kept and served; anything else inherited is closed.
    const inherited = inheritedListeners(env, process.pid);
    const keep = new Set([
      ...inherited.map((listener) => listener.fd),
      ...(ipcFd === undefined ? [] : [ipcFd]),
    ]);
    const leaked = closeLeakedDescriptors(keep);
    if (leaked.length > 0) logger.debug({ fds: leaked }, 'inherited descriptors closed');
    // Fail before binding anything when the command cannot run.
    // Where and with what PATH the workers will run it (a config file may give both).
    const resolved = realOs.resolveCommand(options.command, { ...env, ...options.env }, options.cwd ?? cwd);
    if (options.uid !== undefined) {
      checkExecutableBy(options.command, resolved, options.uid, options.gid ?? process.getgid?.() ?? 0);
    }
    if (options.versionFile) checkVersionFile(path.resolve(cwd, options.versionFile));
  }
  // A resumed master checked all of this in its first program, and must not fail now: it serves.
  const masterOptions = carried ? options : withReachablePreload(options, logger);
  // A re-read file goes through the same check as the start's settings.
  const reachable = (read: StartSettings): StartSettings => ({
    ...read,
    options: withReachablePreload(read.options, logger),
  });
  const { staleRemoved } = carried ? { staleRemoved: false } : await prepareControlPath(control.path);
  const held = carried?.master.listeners.map((listener) => Listener.adopted(listener));
  const listeners = held
    ? (carried as CarriedState).master.current.map((index) => held[index] as Listener)
    : await openListeners(options.listen, inheritedListeners(env, process.pid));
  const logBound = (bound: readonly Listener[]) => {
    for (const listener of bound) {
      logger.info(
        {
          listener: listener.name,
          kind: listener.kind,
          origin: listener.origin,
          address: listener.address,
          port: listener.port,
        },
        'listener bound',
      );
    }
    return bound;
  };
  if (!carried) logBound(listeners);
  const programs: BatonProgram[] = [
    ...(carried?.programs ?? []),
    { version: ownVersion(), entry: ownEntry(), since: Date.now() },
  ];
  const masterStartedAt = carried?.masterStartedAt ?? Date.now();
  let controlServer: ControlServer | undefined;
  const stateOf = (master: CarriedMaster, connections: CarriedConnection[]): CarriedState => {
    const controlFd = controlServer?.fd;
    if (!start || controlFd === undefined) throw new Error('this master cannot carry its control socket');
    return {
      format: STATE_FORMAT,
      pid: process.pid,
      masterStartedAt,
      programs,
      start,
      master,
      controlFd,
      history: controlServer?.historyRecords() ?? [],
      connections,
    };
  };
  const stateFile = () => `${control.path}.reexec-${Date.now()}.json`;
  const reexec: ReexecPorts = {
    program: () => ({ ...(programs.at(-1) as BatonProgram), masterStartedAt, reexecs: programs.length - 1 }),
    resolveProgram: programPath,
    async tryProgram(program, carriedMaster) {
      const file = stateFile();
      writeState(file, stateOf(carriedMaster, []));
      try {
        return await tryProgram(program, file);
      } finally {
        rmSync(file, { force: true });
      }
    },
    execute(program, carriedMaster, connections) {
      const state = stateOf(carriedMaster, connections);
      const file = stateFile();
      writeState(file, state);
      logger.flush?.();
      return executeProgram(program, file, carriedDescriptors(state));
    },
  };
  const master = new Master(masterOptions, {
    ...(start ? { reexec } : {}),
    os: realOs,
    logger,
    listeners,
    env,
    cwd,
    writeStderr: (chunk) => process.stderr.write(chunk),
    versionLabel: () => readVersionLabel(options, cwd),
    ...(config ? { config } : {}),
    ...(readConfig
      ? {
          readConfig: (file: string | undefined) => reachable(readConfig(file)),
          bindListeners: async (specs: ListenSpec[]) => [...logBound(await openListeners(specs))],
        }
      : {}),
  });
  const usage = new UsageSampler(() => livePids(master.snapshot()));
  const maxMemory = options.maxMemoryBytes;
  if (maxMemory !== undefined) {
    usage.onSample = (sampled) => {
      for (const [pid, { memory }] of sampled) {
        if (pid !== process.pid && memory > maxMemory) {
          master.dispatch({ type: 'replace-worker', pid, reason: 'memory', facts: { memory, maxMemory } });
        }
      }
    };
  }
  controlServer = await ControlServer.listen({
    master,
    logger,
    ...control,
    staleRemoved,
    usage,
    ...(carried
      ? {
          fd: carried.controlFd,
          resumed: {
            from: carried.programs.at(-1)?.version ?? 'unknown',
            adopted: carried.master.generations.reduce(
              (sum, generation) => sum + generation.workers.length,
              0,
            ),
          },
          adoptHistory: (history) =>
            history.adopt(
              carried.history,
              new Set(
                carried.master.generations
                  .filter((generation) => generation.state === 'draining')
                  .map((generation) => generation.id),
              ),
              carried.master.generations.find((generation) => generation.state === 'active')?.id,
            ),
        }
      : {}),
  });
  // prom-client weighs about 20 MB: loaded only by a master that serves metrics.
  const listenMetrics = async () =>
    options.metrics &&
    (await (await import('./metrics.js')).MetricsServer.listen(options.metrics, master, logger, usage));
  // A resumed master serves already: metrics it cannot serve again are logged, never fatal.
  const metrics = carried
    ? await listenMetrics().catch((error: Error) => {
        logger.error({ err: error.message }, 'metrics not served after the reexec');
        return undefined;
      })
    : await listenMetrics();
  if (!carried) {
    logger.info(
      {
        masterPid: process.pid,
        command: options.command,
        workers: options.workers,
        ...(config ? { config: config.path, hash: config.hash } : {}),
      },
      'master started',
    );
  }
  const pid1 = pid1Warning(process.pid);
  if (pid1) logger.warn({ masterPid: process.pid }, pid1);
  if (carried) {
    const from = carried.programs.at(-1)?.version ?? 'unknown';
    logger.info({ masterPid: process.pid, from, version: ownVersion() }, 'reexec: the new program runs');
    master.adopt(carried.master, held as Listener[]);
    for (const connection of carried.connections) controlServer.resume(connection);
  } else {
    master.dispatch({ type: 'start' });
  }
  dispatch = (event) => master.dispatch(event);
  for (const event of early.splice(0)) master.dispatch(event);
  const watched = options.watch ?? [];
  const stopWatching =
    watched.length === 0
      ? () => {}
      : watchForChanges(
          watched,
          (file) => {
            logger.info({ file: path.relative(cwd, file) || file }, 'file changed: reloading');
            master.dispatch({ type: 'reload', source: 'watch' });
          },
          { onError: (error) => logger.warn({ err: error.message }, 'watching files failed') },
        );
  if (watched.length > 0) logger.info({ paths: watched }, 'watching for changes');
  const exitCode = await master.finished;
  stopWatching();
  unrouteSignals();
  await controlServer?.close();
  await metrics?.close();
  if (master.startError) {
    logger.error({ exitCode }, master.startError.message);
    if (failureOnStderr) process.stderr.write(`baton: ${master.startError.message}\n`);
  }
  return exitCode;
}

/** The program a re-exec runs: the one named, else the entry this master runs now (the baton on disk). */
function programPath(program: string): string {
  return program === '' ? ownEntry() : program;
}

/**
 * Workers run as `--user` load baton's preload from baton's own folder: where that user cannot read it
 * (baton in a private folder, such as a clone in a 0700 directory), every Node worker would die at
 * start. The preload is left out instead, with one warning that says so and what to do.
 */
function withReachablePreload(options: MasterOptions, logger: Logger): MasterOptions {
  if (!options.preload || options.uid === undefined) return options;
  const preload = fileURLToPath(PRELOAD_URL);
  const block = findAccessBlock(preload, options.uid, options.gid ?? process.getgid?.() ?? 0, 'read');
  if (block === undefined) return options;
  logger.warn(
    { preload, blockedAt: block.path, uid: options.uid },
    `the workers' user cannot read baton's preload (${block.kind === 'folder' ? `it cannot enter ${block.path}` : `${block.path} is not readable for it`}): Node workers run without it, as with --no-preload; install baton where that user can read it to have it`,
  );
  return { ...options, preload: false };
}
