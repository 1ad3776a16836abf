/**
 * `baton status`: one table of the generations and their workers, then the
 * last starts and reloads; `--json` prints the master's answer as is;
 * `--check` says in one line whether an active generation has every worker ready.
 */
import { connectToMaster, type MasterTarget } from '../../supervisor/control/client.js';
import type { ErrorAnswer } from '../../supervisor/control/protocol.js';
import { atOpenFileLimit, type MasterStatus } from '../../supervisor/control/status.js';
import { ControlProtocolError, EXIT_CODES, NotHealthyError } from '../../supervisor/errors.js';
import { alignColumns, formatBytes, formatMs, formatUptime } from './format.js';
import type { Output } from './reload.js';

/** What `baton status` prints. */
export interface StatusCommandOptions {
  json: boolean;
  check: boolean;
}

/** Asks the master for its status and prints it; with `check`, throws NotHealthyError unless healthy. */
export async function statusCommand(
  target: MasterTarget,
  options: StatusCommandOptions,
  out: Output,
): Promise<number> {
  const client = await connectToMaster(target);
  let status: MasterStatus;
  try {
    const answer = await client.ask({ kind: 'status' });
    if (!answer.ok) {
      const { error } = answer as ErrorAnswer;
      throw new ControlProtocolError(error.code, `The master refused the status request: ${error.message}`);
    }
    status = answer.status as MasterStatus;
  } finally {
    client.close();
  }
  if (options.json) out.write(`${JSON.stringify(status, null, 2)}\n`);
  else if (options.check) {
    if (status.healthy) out.write(`healthy: ${status.health}\n`);
  } else out.write(formatStatus(status));
  if (options.check && !status.healthy) throw new NotHealthyError(`not healthy: ${status.health}`);
  return EXIT_CODES.ok;
}

/** The generations that still matter: those with workers alive. */
const SHOWN_STATES = new Set(['starting', 'active', 'draining']);

/** Which baton the master runs, and since when: its start, or its last `baton reexec`. */
function batonLine(baton: NonNullable<MasterStatus['baton']>, now: number): string {
  const since = new Date(baton.since)
    .toISOString()
    .replace('T', ' ')
    .replace(/\.\d+Z$/, ' UTC');
  const execs = baton.reexecs === 0 ? 'since the start' : `since its reexec (${baton.reexecs} so far)`;
  return `baton ${baton.version}, running for ${formatUptime(now - baton.since)} ${execs}, at ${since}`;
}

/** The table `baton status` prints. */
export function formatStatus(status: MasterStatus): string {
  const queued = status.reloadQueued ? '; a reload is queued' : '';
  const lines = [
    `master ${status.name} (pid ${status.pid}): ${status.state}; ${status.health}${queued}`,
    `control socket ${status.control}; master cpu ${percent(status.cpu)}, memory ${bytes(status.memory)}`,
    ...(status.baton ? [batonLine(status.baton, status.now)] : []),
    '',
  ];
  const workers: string[][] = [
    ['GEN', 'VERSION', 'GEN-STATE', 'WORKER', 'PID', 'STATE', 'UPTIME', 'RESTARTS', 'CONNS', 'CPU', 'MEM'],
  ];
  for (const generation of status.generations) {
    const live = generation.workers.filter((worker) => worker.state !== 'exited');
    if (!SHOWN_STATES.has(generation.state) && live.length === 0) continue;
    for (const worker of live) {
      workers.push([
        String(generation.id),
        generation.version,
        generation.state,
        String(worker.index),
        worker.pid == null ? '-' : String(worker.pid),
        worker.state,
        formatUptime(status.now - worker.startedAt),
        String(worker.restarts),
        worker.connections == null ? '-' : String(worker.connections),
        percent(worker.cpu),
        bytes(worker.memory),
      ]);
    }
  }
  lines.push(...(workers.length > 1 ? alignColumns(workers) : ['(no workers)']));
  lines.push(...configLines(status));
  lines.push(...sessionLines(status));
  lines.push(...crashLoopLines(status));
  lines.push(...notifiedStatusLines(status));
  lines.push(...replacementLines(status));
  lines.push(...openFileWarnings(status));
  lines.push(...patchLines(status));
  if (status.reloads.length > 0) {
    const reloads: string[][] = [
      ['STARTED', 'GEN', 'VERSION', 'TRIGGER', 'OUTCOME', 'READY', 'DRAIN', 'WHY'],
    ];
    for (const record of status.reloads) {
      reloads.push([
        new Date(record.startedAt).toTimeString().slice(0, 8),
        String(record.generation),
        record.version,
        record.trigger,
        record.state,
        record.readyMs == null ? '-' : formatMs(record.readyMs),
        record.drainMs == null ? '-' : formatMs(record.drainMs),
        record.failure ?? '',
      ]);
    }
    lines.push('', ...alignColumns(reloads));
  }
  return `${lines.join('\n')}\n`;
}

/**
 * Which config file each generation still serving runs (`--config`: path, sha256 prefix, when it was
 * read), and the file the next reload starts from if that is another one.
 */
function configLines(status: MasterStatus): string[] {
  const describe = (config: NonNullable<MasterStatus['config']>) =>
    `${config.path} (sha256 ${config.hash}, read ${new Date(config.loadedAt).toTimeString().slice(0, 8)})`;
  const shown = status.generations.filter(
    (generation) => SHOWN_STATES.has(generation.state) && generation.config,
  );
  const lines = shown.map(
    (generation) =>
      `generation ${generation.id} runs config ${describe(generation.config as NonNullable<MasterStatus['config']>)}`,
  );
  const next = status.config;
  const active = shown.find((generation) => generation.state === 'active')?.config;
  if (next && (next.path !== active?.path || next.hash !== active?.hash)) {
    lines.push(`the next reload starts from config ${describe(next)}`);
  }
  return lines;
}

/** One line when sessions have moved between generations (live session handoff). */
function sessionLines(status: MasterStatus): string[] {
  const sessions = status.sessions;
  if (!sessions || sessions.rounds.length === 0) return [];
  return [
    `sessions handed to new versions: ${sessions.moved} moved, ${sessions.kept} kept on the old version, ${sessions.failed} failed`,
  ];
}

/** One line under the table for each worker replaced without a reload (`--max-memory`, `--watchdog`). */
function replacementLines(status: MasterStatus): string[] {
  const why: Record<string, string> = {
    memory: 'over --max-memory',
    watchdog: 'silent past --watchdog',
  };
  return status.generations.flatMap((generation) =>
    (generation.replacements ?? []).map(
      ({ worker, pid, reason, at }) =>
        `generation ${generation.id} worker ${worker}: pid ${pid} replaced at ${new Date(at).toISOString().slice(11, 19)} (${why[reason] ?? reason})`,
    ),
  );
}

/** One line under the table for each serving worker that said its status through sd_notify (STATUS=). */
function notifiedStatusLines(status: MasterStatus): string[] {
  return status.generations.flatMap((generation) =>
    generation.workers
      .filter((worker) => worker.status != null && worker.state !== 'exited')
      .map(
        (worker) =>
          `generation ${generation.id} worker ${worker.index} (pid ${worker.pid}): ${worker.status}`,
      ),
  );
}

/** One line under the table for each worker slot in a crash loop (restarted with a growing backoff). */
function crashLoopLines(status: MasterStatus): string[] {
  return status.generations.flatMap((generation) =>
    (generation.crashLoops ?? []).map(
      ({ worker, crashes }) =>
        `generation ${generation.id} worker ${worker}: crash loop, ${crashes} crashes in a row; restarting with backoff (see the master's log for its stderr)`,
    ),
  );
}

/** One line under the table for each worker that used every descriptor it may open: it refuses connections. */
function openFileWarnings(status: MasterStatus): string[] {
  return status.generations.flatMap((generation) =>
    generation.workers
      .filter((worker) => worker.state !== 'exited' && atOpenFileLimit(worker))
      .map(
        (worker) =>
          `generation ${generation.id} worker ${worker.index} (pid ${worker.pid}): ${worker.fds}/${worker.fdLimit} open files, at its limit (ulimit -n): new connections are closed at once`,
      ),
  );
}

/** One line per hot patch a generation still serving runs with (`baton inject`). */
function patchLines(status: MasterStatus): string[] {
  return status.generations
    .filter((generation) => SHOWN_STATES.has(generation.state))
    .flatMap((generation) =>
      (generation.patches ?? []).map(
        (patch) =>
          `generation ${generation.id} patched with ${patch.file} (sha256 ${patch.hash.slice(0, 12)}) at ${new Date(patch.at).toTimeString().slice(0, 8)}${patch.scope === 'worker' ? ` on pid ${patch.pids.join(', ')} only` : ''}${patch.uid === undefined || patch.uid === null ? '' : ` by uid ${patch.uid}`}`,
      ),
    );
}

function percent(cpu: number | null | undefined): string {
  return cpu == null ? '-' : `${cpu.toFixed(1)}%`;
}

function bytes(memory: number | null | undefined): string {
  return memory == null ? '-' : formatBytes(memory);
}
