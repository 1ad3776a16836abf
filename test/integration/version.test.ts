/** Version labels: what `status` and BATON_VERSION show for each generation. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import { type AppDir, killAll, makeAppDir, startBaton } from '../helpers/processes.js';

let app: AppDir | undefined;
let runtime: string | undefined;

afterEach(async () => {
  await killAll();
  app?.cleanup();
  if (runtime) rmSync(runtime, { recursive: true, force: true });
});

async function statusVersions(env: Record<string, string>): Promise<Record<number, string>> {
  const run = startBaton(['status', '--json'], { env });
  await run.waitForExit(10_000);
  const snapshot = JSON.parse(run.output) as { generations: Array<{ id: number; version: string }> };
  return Object.fromEntries(snapshot.generations.map((generation) => [generation.id, generation.version]));
}

describe('version labels', () => {
  test('--version-file is read anew at each reload', async () => {
    app = makeAppDir();
    runtime = mkdtempSync(join(tmpdir(), 'baton-run-'));
    const env = { XDG_RUNTIME_DIR: runtime };
    const baton = startBaton(
      [
        'start',
        '--version-file',
        'VERSION',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--listen',
        'game=tcp://127.0.0.1:0',
        '--',
        process.execPath,
        'server.js',
      ],
      { cwd: app.dir, env },
    );
    expect(await baton.waitForLogMsg('generation starting', { gen: 1 })).toMatchObject({ version: '1.0.0' });
    await baton.waitForLogMsg('generation active', { gen: 1 });
    app.setVersion('1.1.0');
    baton.signal('SIGUSR2');
    await baton.waitForLogMsg('generation retired', { gen: 1 }, 20_000);
    expect(await statusVersions(env)).toMatchObject({ 1: '1.0.0', 2: '1.1.0' });
  });

  test("without it, the version of the package.json beside the script; without that, the generation's number", async () => {
    app = makeAppDir();
    writeFileSync(
      join(app.dir, 'package.json'),
      JSON.stringify({ name: 'shop', version: '4.2.0', type: 'module' }),
    );
    const labelled = startBaton(
      [
        'start',
        '--listen',
        'http=tcp://127.0.0.1:0',
        '--listen',
        'game=tcp://127.0.0.1:0',
        '--',
        process.execPath,
        'server.js',
      ],
      {
        cwd: app.dir,
      },
    );
    expect(await labelled.waitForLogMsg('generation starting', { gen: 1 })).toMatchObject({
      version: '4.2.0',
    });
    const bare = startBaton(
      ['start', '--listen', 'tcp://127.0.0.1:0', '--', process.execPath, '-e', 'setInterval(() => {}, 1000)'],
      {
        cwd: tmpdir(),
      },
    );
    expect(await bare.waitForLogMsg('generation starting', { gen: 1 })).toMatchObject({ version: '1' });
  });

  test('a version file that cannot be read is one clear line and exit 2, nothing started', async () => {
    const baton = startBaton([
      'start',
      '--version-file',
      '/no/such/VERSION',
      '--listen',
      'tcp://127.0.0.1:0',
      '--',
      process.execPath,
      '-e',
      '',
    ]);
    expect((await baton.waitForExit(10_000)).exitCode).toBe(2);
    expect(baton.output.trim()).toMatch(
      /^baton: Expected `--version-file` to be a readable file, got '\/no\/such\/VERSION' \(ENOENT\)/,
    );
  });
});
