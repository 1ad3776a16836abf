/**
 * Where the master's signals to a worker go. The process baton spawns may be a wrapper (npm, npx, a
 * shell script) that passes the drain signal to a shell and not to the server behind it, so the
 * server names itself on the notify pipe with sd_notify's `MAINPID=<pid>` (baton's preload does it
 * behind a wrapper). The drain signal then goes to that process alone, and the wrapper exits when it
 * does; SIGKILL goes to the worker's whole process group, so that nothing of its tree is left.
 */
import { readFileSync } from 'node:fs';

/** The signal targets of one worker. */
export class SignalTarget {
  #mainPid: number | undefined;

  /**
   * `spawnedPid` leads its own process group (workers are spawned detached); `mainPid`, what MAINPID=
   * named before a re-exec of the master.
   */
  constructor(
    readonly spawnedPid: number | undefined,
    mainPid?: number,
  ) {
    this.#mainPid = mainPid;
  }

  /** The process MAINPID= named, if any. */
  get mainPid(): number | undefined {
    return this.#mainPid;
  }

  /** The process that serves: the one MAINPID named, else the spawned one. */
  get pid(): number | undefined {
    return this.#mainPid ?? this.spawnedPid;
  }

  /** Reads one notify line; `MAINPID=<pid>` names the process that serves, if it is in the worker's group. */
  onNotify(line: string): void {
    const match = /^MAINPID=(\d+)$/.exec(line);
    const pid = Number(match?.[1]);
    // A worker may run as another user: it never gets the master to signal a process not of its own tree.
    if (match && this.spawnedPid !== undefined && processGroupOf(pid) === this.spawnedPid)
      this.#mainPid = pid;
  }

  /** Sends `signal` where it belongs; `toSpawned` signals the spawned process. False when it is gone. */
  kill(signal: NodeJS.Signals, toSpawned: (signal: NodeJS.Signals) => boolean): boolean {
    const main = this.pid;
    if (signal === 'SIGKILL' && this.spawnedPid !== undefined) {
      signalIgnoringGone(-this.spawnedPid, signal);
      return toSpawned(signal);
    }
    if (main !== undefined && main !== this.spawnedPid) return signalIgnoringGone(main, signal);
    return toSpawned(signal);
  }
}

function signalIgnoringGone(target: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(target, signal);
    return true;
  } catch {
    return false;
  }
}

/** The process group of `pid` from /proc, or undefined (gone, or no /proc): a pid outside the worker's group is never signalled. */
function processGroupOf(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may itself contain spaces and parentheses.
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[2]);
  } catch {
    return undefined;
  }
}
