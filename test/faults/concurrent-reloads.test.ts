/**
 * `baton reload` from twenty terminals at once, against one master: each command gets the outcome
 * of the reload it joined, the master starts one generation for the reload that runs and one for
 * all the requests queued behind it, and no worker is left half started.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { killAll, processAlive, startBaton } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';
import { cli, statusJson } from './control.js';

const NODE = process.execPath;
const RELOADERS = 20;
/** The first line of a reload's output: what its request became, and the generation that carries it. */
const ACCEPTED =
  /^(?:reload started: generation (\d+)|a reload is running: this one is queued and will start generation (\d+)|a reload is already queued: joined it \(generation (\d+)\))$/m;

/**
 * An HTTP worker. Generation 1 serves at once; later generations wait until the test creates the
 * file `GATE` names, so that every reload request is in before generation 2 can become active.
 */
const GATED_WORKER = `
const fs = require('node:fs');
const server = require('node:http').createServer((request, response) => response.end(String(process.pid)));
const serve = () => server.listen({ fd: 3 }, () => process.send('ready'));
if (process.env.BATON_GENERATION === '1') serve();
else {
  const poll = setInterval(() => {
    if (!fs.existsSync(process.env.GATE)) return;
    clearInterval(poll);
    serve();
  }, 20);
}
process.on('SIGTERM', () => process.exit(0));
`;

let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'baton-reloads-')); // mode 0700: a private control directory
});

afterEach(async () => {
  await killAll();
  rmSync(dir, { recursive: true, force: true });
});

describe('baton reload from 20 terminals at once', () => {
  test('each exits 0 with the outcome of the generation it joined; two generations start; every worker serves or is gone', async () => {
    const control = join(dir, 'master.sock');
    const gate = join(dir, 'gate');
    const script = join(dir, 'gated.cjs');
    writeFileSync(script, GATED_WORKER);
    const baton = startBaton(
      [
        'start',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--workers',
        '2',
        // Generation 2 waits for the gate, opened once every reload is in (up to 45 s below): its ready
        // deadline must outlast that wait, or a busy machine fails it (the default 30 s did, at load 15).
        '--ready-timeout',
        '90s',
        '--control',
        control,
        '--',
        NODE,
        script,
      ],
      { env: { GATE: gate } },
    );
    await baton.waitForLogMsg('generation active', { gen: 1 }, 10_000);

    const reloads = Array.from({ length: RELOADERS }, () => cli(['reload', '--control', control], 60_000));
    await waitFor(() => reloads.every((reload) => ACCEPTED.test(reload.stdout())), {
      // Twenty Node processes starting at once take a few seconds on two cores, more on a busy machine.
      timeoutMs: 45_000,
      what: () =>
        `every reload accepted (${reloads.filter((reload) => ACCEPTED.test(reload.stdout())).length}/${RELOADERS})`,
    });
    writeFileSync(gate, '');
    const results = await Promise.all(reloads.map((reload) => reload.done));

    const joined = results.map((result) => {
      expect(result).toMatchObject({ exitCode: 0, stderr: '' });
      const lines = result.stdout.trim().split('\n');
      const accepted = ACCEPTED.exec(lines[0] ?? '');
      const generation = Number(accepted?.[1] ?? accepted?.[2] ?? accepted?.[3]);
      // The last line names the same generation: each command reports the reload it joined.
      expect(lines.at(-1)).toBe(
        `reload done: generation ${generation} serves; generation ${generation - 1} drained`,
      );
      return lines[0];
    });
    // The first request runs; the second is queued behind it; the other 18 join the queued one.
    expect(joined.filter((line) => line === 'reload started: generation 2')).toHaveLength(1);
    expect(
      joined.filter((line) => line === 'a reload is running: this one is queued and will start generation 3'),
    ).toHaveLength(1);
    expect(
      joined.filter((line) => line === 'a reload is already queued: joined it (generation 3)'),
    ).toHaveLength(RELOADERS - 2);
    expect(
      baton.logs.filter((entry) => entry.msg === 'generation starting').map((entry) => entry.gen),
    ).toEqual([1, 2, 3]);

    const { status } = await statusJson(control);
    expect(status).toMatchObject({ state: 'running', healthy: true, reloadQueued: false });
    expect(status.generations.map((generation) => [generation.id, generation.state])).toEqual([
      [1, 'retired'],
      [2, 'retired'],
      [3, 'active'],
    ]);
    // Every worker any generation started is either serving in the active one or gone, as status says.
    const workers = status.generations.flatMap((generation) =>
      generation.workers.map((worker) => ({ generation: generation.id, ...worker })),
    );
    expect(workers).toHaveLength(6);
    for (const worker of workers) {
      const serving = worker.generation === 3 && worker.state === 'ready';
      expect(serving || worker.state === 'exited').toBe(true);
      expect(processAlive(worker.pid as number)).toBe(serving);
    }
    expect(workers.filter((worker) => worker.state === 'ready')).toHaveLength(2);
    expect(status.reloads.map((record) => [record.generation, record.state])).toEqual([
      [1, 'done'],
      [2, 'done'],
      [3, 'done'],
    ]);
  }, 120_000);
});
