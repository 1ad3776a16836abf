/**
 * What the master does for apps that run under baton as they are (docs/contract.md, "An app as it
 * is"): the environment that loads the preload (child/preload.ts) into Node workers, and the warning
 * for a worker that dies of the drain signal instead of draining. Pure functions over plain data.
 */
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

/** The preload, compiled beside this module's folder (dist/child/preload.js), as the file URL `--import` takes. */
export const PRELOAD_URL = pathToFileURL(
  path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'child', 'preload.js'),
).href;

/** A listener as the preload needs to know it: what an app's `listen()` would name. */
export interface ListenerDescription {
  readonly name: string;
  readonly kind: 'tcp' | 'udp' | 'unix';
  readonly port: number;
  /** The IP address, or the Unix socket's path. */
  readonly address: string;
  /** Handed to baton without a name (see `Listener.anonymous`): workers then get no LISTEN_FDNAMES. */
  readonly anonymous?: boolean;
}

/**
 * The variables baton adds to a worker's environment for the preload: NODE_OPTIONS with
 * `--import <preload>` after what the user has there (so that it reaches a `node` behind npm, npx or a
 * shell script), `BATON_LISTENERS` (what each inherited socket is, in fd order), and `PORT`, set to
 * the first TCP listener's port when the environment has none.
 */
export function preloadEnv(
  listeners: readonly ListenerDescription[],
  env: Readonly<Record<string, string | undefined>>,
): Record<string, string> {
  const importFlag = `--import=${PRELOAD_URL}`;
  const nodeOptions = env.NODE_OPTIONS?.trim() ?? '';
  const firstTcp = listeners.find((listener) => listener.kind === 'tcp');
  return {
    NODE_OPTIONS: nodeOptions.includes(importFlag) ? nodeOptions : `${nodeOptions} ${importFlag}`.trim(),
    BATON_LISTENERS: JSON.stringify(
      listeners.map(({ name, kind, port, address }) => ({ name, kind, port, address })),
    ),
    ...(env.PORT === undefined && firstTcp ? { PORT: String(firstTcp.port) } : {}),
  };
}

/** What the master knows of a worker that exited while it drained. */
export interface DrainedExit {
  generation: number;
  worker: number;
  pid: number | undefined;
  signal: NodeJS.Signals | null;
  /** Open connections, as the worker reported them or as /proc last showed them. */
  connections: number | undefined;
}

/**
 * The warning for a worker killed by the drain signal itself while it held connections: Node's (and
 * most runtimes') default action for SIGTERM, which cuts the requests under way. Undefined otherwise.
 */
export function drainSignalDeathWarning(exit: DrainedExit, drainSignal: NodeJS.Signals): string | undefined {
  if (exit.signal !== drainSignal || !exit.connections) return undefined;
  return `worker ${exit.worker} of generation ${exit.generation} (pid ${exit.pid}) ended by ${drainSignal} itself while ${exit.connections} connection(s) were last seen open: unless it drained first and then raised the signal again (as uvicorn does), it does not drain and cut them. Make it handle ${drainSignal}: stop accepting, finish what is under way, exit when no connection is left (the child API's serve() does it; for Node, baton's preload does it unless --no-preload; see docs/contract.md)`;
}

/**
 * What a worker that exited with code 0 before it was ready most likely ran into: it bound one of
 * baton's ports itself and got EADDRINUSE (Express 5 hands the error to its listen callback, and the
 * process ends quietly). Undefined for any other exit.
 */
export function exitedAtStartHint(
  exitCode: number | null,
  listeners: readonly ListenerDescription[],
): string | undefined {
  const ports = listeners.filter((listener) => listener.kind === 'tcp').map((listener) => listener.port);
  if (exitCode !== 0 || ports.length === 0) return undefined;
  return `a server that exits with code 0 at start often could not listen: one that binds baton's port ${ports.join(', ')} itself gets EADDRINUSE, as baton holds it. Make it listen on the inherited socket (fd 3, LISTEN_FDS), or for Node on process.env.PORT with baton's preload (not --no-preload)`;
}
