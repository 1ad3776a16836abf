/**
 * `--start-nice`: a worker starts at another CPU priority and gets its own back once it is ready. Above
 * 0, a new generation's start-up takes less of the cores from the workers that serve meanwhile (and
 * takes longer); below 0 (root or CAP_SYS_NICE), it takes more of them and the new version takes over
 * sooner.
 *
 * Linux weighs CPU time two ways, and a worker meets either:
 * - **Autogroups** (`/proc/sys/kernel/sched_autogroup_enabled`, on by default on most distributions,
 *   in effect for processes in the root CPU cgroup): the kernel shares the cores between sessions
 *   first, and each worker leads a session of its own (spawned detached). There a thread's nice
 *   weighs only against the other threads of the session, so it is the session's nice
 *   (`/proc/<pid>/autogroup`) that counts. Any user may set it to 0 or above, but only once every
 *   100 ms on the whole machine without CAP_SYS_ADMIN (EAGAIN): it is tried again until it holds.
 * - **Thread nice** (a systemd service, a container: a CPU cgroup of its own): nice is per thread,
 *   and a thread inherits the nice of the thread that creates it. It is set on the threads and
 *   processes the worker has when it is spawned (the trampoline's shell, before Node or any other
 *   runtime starts its own threads), and given back on every thread of the worker's tree. Giving
 *   it back (lowering nice) needs CAP_SYS_NICE or a RLIMIT_NICE that allows it: without them the
 *   worker keeps the lower priority, and the master says so once.
 */
import { readdirSync, writeFileSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { processTree } from './proc.js';

/** How often, and how many times, a session's nice is tried again after EAGAIN (the kernel's 100 ms). */
const AUTOGROUP_RETRY_MS = 110;
const AUTOGROUP_TRIES = 20;

/**
 * Whether this process may set a priority as high as `nice` (below 0). Asked of the kernel itself, on
 * this thread, then put back (going back down is always allowed): its rule (CAP_SYS_NICE in the
 * initial user namespace, or a RLIMIT_NICE that allows it) is not what /proc/self/status shows inside
 * a user namespace (a rootless container), where root has every capability on paper and none here.
 */
export function mayRaisePriority(nice: number): boolean {
  let before: number;
  try {
    before = getPriority(0);
  } catch {
    return false;
  }
  if (nice >= before) return true;
  try {
    setPriority(0, nice);
    return true;
  } catch {
    return false;
  } finally {
    try {
      setPriority(0, before);
    } catch {
      // A thread may always lower its own priority back.
    }
  }
}

/** Sets the CPU priority of the process `pid` just spawned (and of every thread it has) to `nice`. */
export function startAtPriority(pid: number, nice: number): void {
  setAutogroupNice(pid, nice, AUTOGROUP_TRIES);
  setThreadsNice(pid, nice);
}

/**
 * Gives the worker `pid`'s tree its priority back (nice 0). Returns why it could not on its threads
 * (no CAP_SYS_NICE), undefined when it did or when the worker is gone.
 */
export function restorePriority(pid: number): string | undefined {
  // Tried for as long as the worker lives: a session left ahead of the others would keep its cores.
  setAutogroupNice(pid, 0, Number.POSITIVE_INFINITY);
  return setThreadsNice(pid, 0);
}

/**
 * The session nice each worker should end at, with the retry that is still trying to set it: the last
 * request for a pid wins (a restore that comes while a lowering still retries cancels it).
 */
const autogroupTargets = new Map<number, NodeJS.Timeout | undefined>();

/** The session's nice, where autogroups are on; tried again on EAGAIN (see above) while the process lives. */
function setAutogroupNice(pid: number, nice: number, tries: number): void {
  clearTimeout(autogroupTargets.get(pid));
  autogroupTargets.delete(pid);
  const attempt = (triesLeft: number) => {
    try {
      writeFileSync(`/proc/${pid}/autogroup`, String(nice));
      autogroupTargets.delete(pid);
    } catch (error) {
      // ENOENT: no autogroups in this kernel, or the process is gone; anything else but EAGAIN: no say.
      if ((error as NodeJS.ErrnoException).code !== 'EAGAIN' || triesLeft <= 1) {
        autogroupTargets.delete(pid);
        return;
      }
      const retry = setTimeout(() => attempt(triesLeft - 1), AUTOGROUP_RETRY_MS);
      retry.unref();
      autogroupTargets.set(pid, retry);
    }
  };
  attempt(tries);
}

/** How many passes over a tree catch the threads and processes started while it was being set. */
const THREAD_PASSES = 3;

/**
 * Every thread of `pid`'s tree to `nice`; the first refusal's reason, if any. A thread started by one
 * not set yet inherits the old value: the tree is read again until a pass finds nothing new.
 */
function setThreadsNice(pid: number, nice: number): string | undefined {
  let refused: string | undefined;
  const done = new Set<string>();
  for (let pass = 0; pass < THREAD_PASSES; pass++) {
    let found = false;
    for (const member of processTree(pid)) {
      let threads: string[];
      try {
        threads = readdirSync(`/proc/${member}/task`);
      } catch {
        continue; // exited meanwhile
      }
      for (const tid of threads) {
        if (done.has(tid)) continue;
        done.add(tid);
        found = true;
        try {
          // On Linux setpriority(PRIO_PROCESS, tid) sets that one thread.
          setPriority(Number(tid), nice);
        } catch (error) {
          // os.setPriority throws ERR_SYSTEM_ERROR with the errno's name in `info.code`.
          const { info, code: nodeCode } = error as { info?: { code?: string }; code?: string };
          const code = info?.code ?? nodeCode;
          if (code === 'ESRCH') continue;
          refused ??= `${code ?? 'error'}: ${(error as Error).message}`;
        }
      }
    }
    if (!found) break;
  }
  return refused;
}
