/**
 * PM2 as a peer of the bench: its CLI (the pinned devDependency) run the way its users run it
 * (`pm2 start app -i 2 --wait-ready`, `pm2 reload`), in cluster mode, where its God daemon is the
 * `node:cluster` primary that accepts every connection and hands it to a worker.
 *
 * Each peer is isolated: its own PM2_HOME (and HOME) in a temp folder, so the user's ~/.pm2 and any
 * daemon of theirs are never touched; no telemetry (the first-run version check is skipped by the
 * `touch` file PM2 itself writes after it, the daily one by PM2_DISABLE_VERSION_CHECK, and no
 * Keymetrics key reaches it, so its agent never starts). `stop` runs `pm2 kill`, then kills the
 * daemon's whole tree and removes the folder, and `stopEveryPm2Peer` does the same for any peer a
 * failed scenario left behind.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ownListeningPorts } from '../supervisor/proc.js';
import { descendants, processAlive, REPO_ROOT, startProcess } from '../test/helpers/processes.js';
import { waitFor, withDeadline } from '../test/helpers/wait.js';

/** The PM2 CLI of the devDependency, run with the bench's Node. */
const PM2_CLI = join(REPO_ROOT, 'node_modules', 'pm2', 'bin', 'pm2');

/** The pinned PM2's version, for the tables. */
export const PM2_VERSION = (
  JSON.parse(readFileSync(join(REPO_ROOT, 'node_modules', 'pm2', 'package.json'), 'utf8')) as {
    version: string;
  }
).version;

/** How long one `pm2` command (start, reload, kill, jlist) may take before the scenario fails. */
const COMMAND_TIMEOUT_MS = 30_000;

/** How long the daemon's tree may take to be gone after SIGKILL. */
const KILL_TIMEOUT_MS = 5_000;

/** The app's name in PM2's process list. */
const APP_NAME = 'bench';

/**
 * Variables that would reach PM2's Keymetrics agent, its telemetry, or another PM2_HOME: removed from
 * the environment of every `pm2` command.
 */
const PM2_VARIABLE =
  /^(PM2_|KEYMETRICS_|PUBLIC_KEY$|SECRET_KEY$|INSTANCE_NAME$|MACHINE_NAME$|ROOT_URL$|INFO_NODE$)/;

/** One instance of the app in `pm2 jlist`. */
export interface Pm2Instance {
  pmId: number;
  pid: number;
  /** `online`, `launching`, `stopping`, `errored`, ... */
  status: string;
  /** Restarts so far (`restart_time`), and those within `min_uptime` of the start (`unstable_restarts`). */
  restarts: number;
  unstableRestarts: number;
}

/**
 * The instances in the output of `pm2 jlist`: one line holding a JSON array, which PM2 may surround
 * with lines of its own (`[PM2] Spawning PM2 daemon ...`, an update notice, colours). Throws if no
 * line holds one.
 */
export function parsePm2List(output: string): Pm2Instance[] {
  const line = output.split('\n').find((candidate) => /^\[(\{.*\})?\]\s*$/.test(candidate));
  if (line === undefined)
    throw new Error(`Expected a JSON array from pm2 jlist, got '${output.slice(0, 200)}'`);
  const list = JSON.parse(line) as Array<Record<string, unknown>>;
  return list.map((entry) => {
    const env = (entry.pm2_env ?? {}) as Record<string, unknown>;
    return {
      pmId: Number(entry.pm_id),
      pid: Number(entry.pid),
      status: String(env.status),
      restarts: Number(env.restart_time ?? 0),
      unstableRestarts: Number(env.unstable_restarts ?? 0),
    };
  });
}

/** How one `pm2` command ended, and when it was started and returned (epoch ms). */
export interface Pm2Command {
  exitCode: number | null;
  output: string;
  startedAt: number;
  endedAt: number;
}

/** What to run under PM2, and how. */
export interface Pm2Start {
  /** The app's script, run by PM2's cluster mode (Node's `cluster.fork` under the God daemon). */
  script: string;
  /** Where the CLI runs, and so the app's working directory. */
  cwd: string;
  instances: number;
  /** The app's environment (PM2 hands the CLI's environment to the app). */
  env?: Record<string, string>;
  /** How many ports the daemon must listen on before the app counts as up (the cluster's shared handles). */
  ports?: number;
}

/** Every peer not yet stopped, for `stopEveryPm2Peer`. */
const livePeers = new Set<Pm2Peer>();

/** One isolated PM2: its home folder, its daemon, one app in cluster mode. */
export class Pm2Peer {
  private stopped = false;

  private constructor(
    /** PM2_HOME: the daemon's sockets, pid file, logs. */
    readonly home: string,
    private readonly start: Pm2Start,
    /** The God daemon: the cluster primary, whose RSS is the supervisor's. */
    public godPid = 0,
  ) {}

  /** Starts a daemon in a home of its own and the app in cluster mode, and waits until it serves. */
  static async start(start: Pm2Start): Promise<Pm2Peer> {
    const home = mkdtempSync(join(tmpdir(), 'baton-bench-pm2-'));
    // PM2 checks its version over the network on the first command in a home without this file.
    writeFileSync(join(home, 'touch'), String(Date.now()));
    const peer = new Pm2Peer(home, start);
    livePeers.add(peer);
    try {
      const started = await peer.run([
        'start',
        start.script,
        '--name',
        APP_NAME,
        '-i',
        String(start.instances),
        // PM2's readiness: the worker's process.send('ready') (the child API's ready() sends it).
        '--wait-ready',
      ]);
      if (started.exitCode !== 0) throw new Error(`pm2 start exited ${started.exitCode}:\n${started.output}`);
      peer.godPid = Number(readFileSync(join(home, 'pm2.pid'), 'utf8').trim());
      await waitFor(
        async () => {
          const online = (await peer.list()).filter((instance) => instance.status === 'online');
          return online.length === start.instances && peer.ports().length >= (start.ports ?? 1);
        },
        { timeoutMs: COMMAND_TIMEOUT_MS, what: `${start.instances} PM2 instances online and listening` },
      );
      return peer;
    } catch (error) {
      await peer.stop();
      throw error;
    }
  }

  /** Runs `pm2 <args>` against this peer's daemon and returns how it ended. */
  async run(args: string[]): Promise<Pm2Command> {
    const env: Record<string, string | undefined> = Object.fromEntries(
      Object.keys(process.env)
        .filter((name) => PM2_VARIABLE.test(name))
        .map((name) => [name, undefined]),
    );
    Object.assign(env, this.start.env, {
      PM2_HOME: this.home,
      HOME: this.home,
      PM2_DISABLE_VERSION_CHECK: 'true',
    });
    const startedAt = Date.now();
    const command = startProcess(process.execPath, [PM2_CLI, ...args], { cwd: this.start.cwd, env });
    try {
      const { exitCode } = await command.waitForExit(COMMAND_TIMEOUT_MS);
      return { exitCode, output: command.output, startedAt, endedAt: Date.now() };
    } finally {
      await command.killTree();
    }
  }

  /** `pm2 reload <app>`: PM2's zero-downtime reload, one worker after the other. */
  reload(): Promise<Pm2Command> {
    return this.run(['reload', APP_NAME]);
  }

  /** The app's instances now (`pm2 jlist`). */
  async list(): Promise<Pm2Instance[]> {
    const listed = await this.run(['jlist']);
    if (listed.exitCode !== 0) throw new Error(`pm2 jlist exited ${listed.exitCode}:\n${listed.output}`);
    return parsePm2List(listed.output);
  }

  /** The ports the daemon and its workers listen on (in cluster mode the daemon holds them). */
  ports(): number[] {
    return this.godPid === 0 ? [] : ownListeningPorts(this.godPid, new Set());
  }

  /** `pm2 kill`, then SIGKILL to whatever of the daemon's tree is left, and the home folder removed. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    livePeers.delete(this);
    try {
      if (this.godPid === 0) this.godPid = readGodPid(this.home);
      // Without a daemon there is nothing to kill: any pm2 command would start one first.
      if (this.godPid === 0) return;
      const tree = [this.godPid, ...descendants(this.godPid)];
      try {
        await withDeadline(this.run(['kill']), COMMAND_TIMEOUT_MS, 'pm2 kill');
      } finally {
        // Whatever `pm2 kill` left (or all of it, if it failed): its workers outlive a killed daemon.
        for (const pid of tree) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
        await waitFor(() => tree.every((pid) => !processAlive(pid)), {
          timeoutMs: KILL_TIMEOUT_MS,
          what: `the PM2 daemon (pid ${this.godPid}) and its workers to be gone`,
        });
      }
    } finally {
      rmSync(this.home, { recursive: true, force: true });
    }
  }
}

/** The daemon's pid from its pid file, 0 when it never wrote one. */
function readGodPid(home: string): number {
  try {
    return Number(readFileSync(join(home, 'pm2.pid'), 'utf8').trim()) || 0;
  } catch {
    return 0;
  }
}

/** Stops every PM2 peer still running (a scenario that failed half-way). */
export async function stopEveryPm2Peer(): Promise<void> {
  const results = await Promise.allSettled([...livePeers].map((peer) => peer.stop()));
  const errors = results.flatMap((result) => (result.status === 'rejected' ? [result.reason] : []));
  if (errors.length > 0) throw new AggregateError(errors, 'could not stop every PM2 peer');
}
