/**
 * A lean master: a plain `baton start` loads neither prom-client (only `--metrics` needs it),
 * pino-pretty (only `--pretty`) nor execa (workers are spawned with child_process), each of them
 * megabytes of the master's memory for its whole life. The master runs with a module hook
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
  test('a plain start serves without loading prom-client, pino-pretty or execa', async () => {
    const { master, packages } = startTracedMaster(['--workers', '1']);
    const port = await master.listenPort('http', 20_000);
    await master.waitForLogMsg('generation active', { gen: 1 }, 20_000);
    expect((await httpGetJson(port)).status).toBe(200);
    const loaded = packages();
    // The trace works: the master's own logger and CLI are in it.
    expect(loaded.has('pino')).toBe(true);
    expect(loaded.has('yargs')).toBe(true);
    expect(loaded.has('prom-client')).toBe(false);
    expect(loaded.has('pino-pretty')).toBe(false);
    expect(loaded.has('execa')).toBe(false);
  }, 60_000);

  test('--metrics loads prom-client and --pretty loads pino-pretty', async () => {
    const { packages } = startTracedMaster(['--workers', '1', '--metrics', 'tcp://127.0.0.1:0', '--pretty']);
    await waitFor(() => packages().has('prom-client') && packages().has('pino-pretty'), {
      timeoutMs: 20_000,
      what: 'the master to load prom-client and pino-pretty',
    });
  }, 60_000);
});
