/**
 * A lean master: a plain `baton start` loads neither prom-client (only `--metrics` needs it),
 * pino-pretty (only `--pretty`), execa (workers are spawned with child_process) nor yargs' machinery
 * (a well-formed `start` is read by yargs-parser alone), each of them megabytes of the master's memory
 * for its whole life. The master runs with a module hook
 * (test/fixtures/module-trace.mjs) that writes down every module it resolves.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import { httpGetJson } from '../helpers/load.js';
import { BATON_BIN, killAll, REPO_ROOT, startNode } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

const MODULE_TRACE = join(REPO_ROOT, 'test', 'fixtures', 'module-trace.mjs');
/** A plain node:http server: baton's preload gives its listen(PORT) the inherited socket and says ready. */
const WORKER = [
  process.execPath,
  '-e',
  "require('node:http').createServer((q, s) => s.end('{}')).listen(process.env.PORT)",
];

let runtime: string | undefined;

afterEach(async () => {
  await killAll();
  if (runtime) rmSync(runtime, { recursive: true, force: true });
  runtime = undefined;
});

/** Starts a traced master with these options; returns it and a reader of the packages it loaded. */
function startTracedMaster(options: string[]) {
  runtime = mkdtempSync(join(tmpdir(), 'baton-lean-'));
  const traces = join(runtime, 'modules');
  mkdirSync(traces);
  const master = startNode(
    [
      '--import',
      MODULE_TRACE,
      BATON_BIN,
      'start',
      '--listen',
      'http=tcp://127.0.0.1:0',
      ...options,
      '--',
      ...WORKER,
    ],
    { env: { XDG_RUNTIME_DIR: runtime, BATON_TEST_MODULE_TRACE: traces } },
  );
  const packages = () => {
    let text = '';
    try {
      text = readFileSync(join(traces, String(master.pid)), 'utf8');
    } catch {
      // nothing resolved yet
    }
    return new Set([...text.matchAll(/\/node_modules\/((?:@[^/]+\/)?[^/]+)\//g)].map((match) => match[1]));
  };
  return { master, packages };
}

describe('a lean master', () => {
  test('a plain start serves without loading prom-client, pino-pretty, execa or yargs', async () => {
    const { master, packages } = startTracedMaster(['--workers', '1']);
    const port = await master.listenPort('http', 20_000);
    await master.waitForLogMsg('generation active', { gen: 1 }, 20_000);
    expect((await httpGetJson(port)).status).toBe(200);
    const loaded = packages();
    // The trace works: the master's own logger, its command-line parser and koffi are in it.
    expect(loaded.has('pino')).toBe(true);
    expect(loaded.has('yargs-parser')).toBe(true);
    expect(loaded.has('koffi')).toBe(true);
    for (const lazy of ['prom-client', 'pino-pretty', 'execa', 'yargs', 'cliui', 'y18n']) {
      expect([lazy, loaded.has(lazy)]).toEqual([lazy, false]);
    }
  }, 60_000);

  test('a start with a mistake is read by yargs, and gets its one line', async () => {
    const { master, packages } = startTracedMaster(['--wokers', '1']);
    const { exitCode } = await master.waitForExit(20_000);
    expect(exitCode).toBe(2);
    expect(master.output).toContain('baton: Unknown argument: wokers; did you mean --workers?');
    expect(packages().has('yargs')).toBe(true);
  }, 60_000);

  test('--metrics loads prom-client and --pretty loads pino-pretty', async () => {
    const { packages } = startTracedMaster(['--workers', '1', '--metrics', 'tcp://127.0.0.1:0', '--pretty']);
    await waitFor(() => packages().has('prom-client') && packages().has('pino-pretty'), {
      timeoutMs: 20_000,
      what: 'the master to load prom-client and pino-pretty',
    });
  }, 60_000);
});
