/**
 * Makes a control socket path safe to listen on: reachable by its owner only,
 * never two masters on one path. The directory must be of mode 0700 and owned
 * by the master's uid (created so if missing, refused if it is open to anyone
 * else); the socket itself gets mode 0600 once listening (server.ts).
 */
import { chmodSync, lstatSync, mkdirSync, type Stats, statSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { ControlSocketError } from '../errors.js';
import { probeMaster } from './client.js';

/** The longest path a Unix socket can have on Linux (sockaddr_un.sun_path, without the final NUL). */
export const MAX_SOCKET_PATH_BYTES = 107;

/** What preparing the path found. */
export interface PreparedPath {
  /** A socket left by a master that is gone was removed. */
  staleRemoved: boolean;
}

/**
 * Makes `socketPath` ready to listen on, or throws a ControlSocketError: its directory is private
 * to this uid (created 0700 if missing), the path fits a Unix socket, and no live master holds it.
 * Logs nothing, so that a master refusing to start says one line.
 */
export async function prepareControlPath(socketPath: string): Promise<PreparedPath> {
  const length = Buffer.byteLength(socketPath);
  if (length > MAX_SOCKET_PATH_BYTES) {
    throw new ControlSocketError(
      socketPath,
      'path-too-long',
      `The control socket path ${socketPath} is ${length} bytes long, more than a Unix socket allows (${MAX_SOCKET_PATH_BYTES}); choose a shorter one with --control`,
    );
  }
  securePrivateDirectory(path.dirname(socketPath), socketPath);
  let existing: Stats;
  try {
    existing = lstatSync(socketPath);
  } catch {
    return { staleRemoved: false };
  }
  if (!existing.isSocket()) {
    throw new ControlSocketError(
      socketPath,
      'not-a-socket',
      `${socketPath} exists and is not a socket; remove it, or choose another --name or --control`,
    );
  }
  const probe = await probeMaster(socketPath);
  if (probe.live) {
    const who = probe.pid === undefined ? 'Another process' : `Another baton master (pid ${probe.pid})`;
    throw new ControlSocketError(
      socketPath,
      'in-use',
      `${who} answers on the control socket ${socketPath}; stop it, or give this master another --name or --control`,
    );
  }
  unlinkSync(socketPath);
  return { staleRemoved: true };
}

/** Creates `directory` with mode 0700 if missing; refuses one that this uid does not own alone. */
function securePrivateDirectory(directory: string, socketPath: string): void {
  let stats = statIfPresent(directory);
  if (!stats) {
    try {
      mkdirSync(directory, { recursive: true, mode: 0o700 });
      chmodSync(directory, 0o700); // the umask may have taken bits the owner needs
    } catch (error) {
      throw new ControlSocketError(
        socketPath,
        'cannot-create-directory',
        `Cannot create the control directory ${directory}: ${(error as Error).message}; set XDG_RUNTIME_DIR, or choose a path with --control`,
        { cause: error },
      );
    }
    stats = statSync(directory);
  }
  const refuse = (why: string) =>
    new ControlSocketError(
      socketPath,
      'unsafe-directory',
      `Refusing the control directory ${directory}: ${why}; the control socket must be in a directory that only this user can enter (mode 0700), or choose another with --control`,
    );
  if (!stats.isDirectory()) throw refuse('it is not a directory');
  const uid = process.getuid?.();
  if (uid !== undefined && stats.uid !== uid)
    throw refuse(`it is owned by uid ${stats.uid}, not by uid ${uid}`);
  const mode = stats.mode & 0o777;
  if ((mode & 0o077) !== 0) {
    throw refuse(
      `it is open to group or others (mode ${mode.toString(8).padStart(4, '0')}; chmod 700 ${directory})`,
    );
  }
}

function statIfPresent(directory: string): Stats | undefined {
  try {
    return statSync(directory);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}
