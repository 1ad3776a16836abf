/**
 * `baton list`: every master of this user that answers, found from any folder (the control folders
 * of socket-path.ts), one line each: name, pid, folder, version, workers, state.
 */
import { readdirSync } from 'node:fs';
import { ControlClient, PROBE_TIMEOUT_MS, quickStatus } from '../../supervisor/control/client.js';
import { controlDirectories, SOCKET_SUFFIX } from '../../supervisor/control/socket-path.js';
import type { MasterStatus } from '../../supervisor/control/status.js';
import { EXIT_CODES } from '../../supervisor/errors.js';
import { alignColumns } from './format.js';
import type { Output } from './reload.js';

/** One master as `baton list` shows it. */
export interface ListedMaster {
  name: string;
  pid: number;
  cwd: string;
  control: string;
  state: string;
  /** The serving generation's version, if one serves. */
  version: string | undefined;
  /** Ready workers of the serving generation, and how many it should have. */
  ready: number;
  workers: number;
}

/** Prints every live master of this user; exits 0 even when there is none (the line says so). */
export async function listCommand(
  options: { json: boolean },
  out: Output,
  env: Record<string, string | undefined> = process.env,
  cwd: string = process.cwd(),
): Promise<number> {
  const directories = controlDirectories(env, cwd);
  const sockets = [...new Set(directories.flatMap(socketsIn))];
  const found = (await Promise.all(sockets.map(describeMaster))).filter(
    (master): master is ListedMaster => master !== undefined,
  );
  const masters = [...new Map(found.map((master) => [master.pid, master])).values()];
  if (options.json) out.write(`${JSON.stringify(masters, null, 2)}\n`);
  else if (masters.length === 0)
    out.write(`no baton master is running (looked in ${directories.join(', ')})\n`);
  else {
    const rows = [['NAME', 'PID', 'STATE', 'VERSION', 'WORKERS', 'FOLDER', 'CONTROL']];
    for (const master of masters) {
      rows.push([
        master.name,
        String(master.pid),
        master.state,
        master.version ?? '-',
        `${master.ready}/${master.workers}`,
        master.cwd,
        master.control,
      ]);
    }
    out.write(`${alignColumns(rows).join('\n')}\n`);
  }
  return EXIT_CODES.ok;
}

/** The master behind one socket, or undefined when none answers there (a stale socket). */
async function describeMaster(path: string): Promise<ListedMaster | undefined> {
  let client: ControlClient;
  try {
    client = await ControlClient.connect(path, PROBE_TIMEOUT_MS);
  } catch {
    return undefined;
  }
  const status = (await quickStatus(client)) as MasterStatus | undefined;
  if (!status) return undefined;
  const active = status.generations.find((generation) => generation.state === 'active');
  const current = active?.workers.filter(
    (worker) => worker.state !== 'exited' && worker.state !== 'draining',
  );
  return {
    name: status.name,
    pid: status.pid,
    cwd: status.cwd,
    control: status.control,
    state: status.state,
    version: active?.version,
    ready: current?.filter((worker) => worker.state === 'ready').length ?? 0,
    workers: status.workers,
  };
}

function socketsIn(directory: string): string[] {
  try {
    return readdirSync(directory, { withFileTypes: true })
      .filter((entry) => entry.isSocket() && entry.name.endsWith(SOCKET_SUFFIX))
      .map((entry) => `${directory}/${entry.name}`);
  } catch {
    return []; // no such folder: no master there
  }
}
