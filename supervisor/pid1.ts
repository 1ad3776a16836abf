/**
 * baton as the first process of a PID namespace: a container whose entrypoint is baton itself.
 *
 * PID 1 inherits every orphan of the namespace, and only PID 1 can reap it. Node cannot: libuv
 * waits only on the pids it spawned, so a helper that outlives the worker that started it stays a
 * zombie for the life of the container (measured: 21 zombies after 21 orphans). baton does not try
 * to be an init; the image runs `tini` in front of it, and a master that finds itself PID 1 says so
 * once, with the fix. Signals are not the problem: baton installs handlers for every signal it
 * acts on, and PID 1 only loses the default actions.
 */

/** The pid the kernel gives the first process of a PID namespace. */
export const INIT_PID = 1;

/** The one line a master logs (as a warning) when it is PID 1; it names the fix. */
export const PID1_WARNING =
  'baton is PID 1: orphaned processes will not be reaped and stay zombies; run it behind an init such as tini (docker run --init, or the image\'s ENTRYPOINT ["tini", "--"])';

/** The warning for a master whose pid is `pid`, or undefined when something else is PID 1. */
export function pid1Warning(pid: number): string | undefined {
  return pid === INIT_PID ? PID1_WARNING : undefined;
}
