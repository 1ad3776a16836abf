/**
 * The preload baton puts in front of every Node process of a worker (`--import` through NODE_OPTIONS,
 * so that it also reaches a `node` started by npm, npx or a shell script), so that an app runs under
 * baton as it is (docs/contract.md, "An app as it is"):
 *
 * - `listen(port)` on one of baton's ports (or on its Unix socket path) gets the inherited socket
 *   instead of binding; any other port is left alone;
 * - once the app listens on every one of baton's stream listeners, the master hears so (the IPC
 *   message `{ baton: 'listening' }`, or `READY=1` on the notify pipe behind a wrapper);
 * - `server.close()` on such a server drains as the child API's `serve()` does, and an app with no
 *   handler for the drain signal gets that drain for every such server;
 * - a wrapper that holds the sockets (npm, npx: Node programs that never listen) passes them on to
 *   the processes it starts, and only the process they are meant for sees `LISTEN_FDS`;
 * - an app that listens on a port of its own and never on baton's is told so in one line, early.
 *
 * Node built-ins only; it does nothing in a process that baton did not start.
 */
import { fstatSync } from 'node:fs';

/** systemd socket activation: the first inherited socket is fd 3. */
const FIRST_LISTEN_FD = 3;
/** The variables that describe baton's sockets; a process they are not meant for must not see them. */
const SOCKET_VARIABLES = [
  'LISTEN_FDS',
  'LISTEN_FDNAMES',
  'LISTEN_PID',
  'BATON_NOTIFY_FD',
  'BATON_LISTENERS',
  'BATON_HANDED_OVER',
  'BATON_FD_CHANNEL',
];

/**
 * How this process relates to baton's sockets: `worker`, the process the master spawned; `handed`,
 * a process a wrapper passed them on to (its IPC channel, if any, is not the master's); `none`.
 */
export type Role = 'worker' | 'handed' | 'none';

const role = settleRole();
// Only a process that holds baton's sockets loads the rest: any other Node process (the tools an app
// runs, npm's own helpers) pays for this file and node:fs alone.
if (role !== 'none' && Number(process.env.LISTEN_FDS) > 0) {
  const { takeOver } = await import('./take-over.js');
  takeOver(role);
}

/** Decides the role, and takes the sockets' variables away from a process they are not meant for. */
function settleRole(): Role {
  const env = process.env;
  if (env.LISTEN_FDS === undefined || env.BATON_GENERATION === undefined) return 'none';
  if (env.LISTEN_PID === String(process.pid)) return 'worker';
  const count = Number(env.LISTEN_FDS);
  if (env.BATON_HANDED_OVER !== undefined && Number.isInteger(count) && inheritedSockets(count)) {
    // A wrapper passed the sockets on: they are ours now, as systemd's convention says.
    env.LISTEN_PID = String(process.pid);
    delete env.BATON_HANDED_OVER;
    return 'handed';
  }
  for (const name of SOCKET_VARIABLES) delete env[name];
  return 'none';
}

/** Whether fds 3, 4, ... are sockets here: a wrapper may have dropped them on the way. */
function inheritedSockets(count: number): boolean {
  try {
    for (let fd = FIRST_LISTEN_FD; fd < FIRST_LISTEN_FD + count; fd++) {
      if (!fstatSync(fd).isSocket()) return false;
    }
    return true;
  } catch {
    return false;
  }
}
