/**
 * A well-formed `baton start` is read by yargs-parser alone (bin/start-args.ts), everything else by
 * yargs. The quick parse may decline anything, but what it accepts it must read as yargs does.
 */
import { describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import yargs from 'yargs';
import {
  commandAfterDashes,
  declareStartOptions,
  PARSER_CONFIGURATION,
  parseStartQuickly,
  type StartArgv,
  startFlags,
} from '../../bin/start-args.js';

/** `start` as the CLI declares it to yargs (bin/cli.ts), without running anything. */
async function parseWithYargs(args: string[]): Promise<StartArgv> {
  let parsed: StartArgv | undefined;
  await yargs(args)
    .scriptName('baton')
    .parserConfiguration(PARSER_CONFIGURATION)
    .command(
      'start',
      'Run a command as workers under baton',
      (argv) => declareStartOptions(argv).middleware((argv) => void commandAfterDashes(argv), true),
      (argv) => {
        parsed = argv;
      },
    )
    .demandCommand(1)
    .strict()
    .version('0.0.0')
    .help()
    .exitProcess(false)
    .fail((message, error) => {
      throw error ?? new Error(message);
    })
    .parseAsync();
  if (parsed === undefined) throw new Error(`yargs ran no start for ${JSON.stringify(args)}`);
  return parsed;
}

/** The flags both parsers give, or what yargs refused. */
async function yargsFlags(args: string[]) {
  try {
    return startFlags(await parseWithYargs(args));
  } catch (error) {
    return { refused: (error as Error).message };
  }
}

const WORKER = ['--', 'node', 'app/server.js', '--port', '3'];

describe('the quick parse of start', () => {
  test.each([
    [['--listen', 'http=tcp://127.0.0.1:0', '--workers', '2']],
    [['--listen=http=tcp://127.0.0.1:0', '--listen', 'game=tcp://[::]:9000', '--no-preload']],
    [['--config', 'baton.json', '--pretty', '--log-level', 'debug', '--watch', 'app', 'lib']],
    [['--listen', 'unix:/run/app.sock?mode=660', '--readyTimeout', '5s', '--drain-signal', 'SIGINT']],
    [['--listen', 'tcp://127.0.0.1:8080', '--max-memory', '512M', '--watchdog', '10s', '--user', '65534']],
    [['--listen', 'tcp://127.0.0.1:8080', '--version-file', 'VERSION', '--metrics', 'tcp://127.0.0.1:9100']],
    [
      [
        '--listen',
        'tcp://127.0.0.1:8080',
        '--name',
        'api',
        '--control',
        '/run/baton/api.sock',
        '--ready',
        'ipc',
      ],
    ],
  ])('reads %j as yargs does', async (options) => {
    const args = ['start', ...options, ...WORKER];
    const quick = parseStartQuickly(args);
    expect(quick).toBeDefined();
    expect(startFlags(quick as StartArgv)).toEqual(await yargsFlags(args));
  });

  test.each([
    [['--help']],
    [['--version']],
    [['-h']],
    [['--wokers', '2']],
    [['--workers']],
    [['--workers', '--listen', 'tcp://127.0.0.1:0']],
    [['--listen']],
    [['--watch']],
    [['--workers', '2', '--workers', '3']],
    [['--listen.http', 'tcp://127.0.0.1:0']],
    [['app.js']],
  ])('leaves %j to yargs', (options) => {
    expect(parseStartQuickly(['start', ...options, ...WORKER])).toBeUndefined();
  });

  test("the worker's command reaches it as typed, numbers included, by either parser", async () => {
    const args = [
      'start',
      '--listen',
      'tcp://127.0.0.1:0',
      '--',
      'node',
      'app.js',
      '--port',
      '0x10',
      '1.10',
      '1e3',
      '08',
    ];
    const typed = ['node', 'app.js', '--port', '0x10', '1.10', '1e3', '08'];
    expect(startFlags(parseStartQuickly(args) as StartArgv).flags.command).toEqual(typed);
    expect(startFlags(await parseWithYargs(args)).flags.command).toEqual(typed);
  });

  test('leaves every other command to yargs', () => {
    for (const command of ['reload', 'status', 'stop', 'list', '--help', 'strat']) {
      expect(parseStartQuickly([command])).toBeUndefined();
    }
    expect(parseStartQuickly([])).toBeUndefined();
  });

  test('whatever it accepts among random command lines, yargs reads alike', async () => {
    const words = fc.constantFrom(
      '--listen',
      '--listen=tcp://127.0.0.1:0',
      'http=tcp://127.0.0.1:0',
      '--workers',
      '--workers=3',
      '2',
      '0x10',
      '1e3',
      '--ready-timeout',
      '--readyTimeout',
      '5s',
      '--no-preload',
      '--preload',
      '--preload=false',
      '--no-pretty',
      '--pretty',
      '--watch',
      'app',
      '--config',
      '--log-level',
      'debug',
      '--max-draining',
      '--group',
      'users',
      '--help',
      '--version',
      '-h',
      '-w',
      '--wokers',
      '--listen.x',
      '--no-listen',
      '--',
      'node',
      '-',
      '',
      'true',
      '--name',
      '--name=a=b',
    );
    let accepted = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(words, { maxLength: 8 }), async (options) => {
        const args = ['start', ...options];
        const quick = parseStartQuickly(args);
        if (quick === undefined) return;
        accepted++;
        expect(startFlags(quick)).toEqual(await yargsFlags(args));
      }),
      { numRuns: 300 },
    );
    // The property says something: a good share of the random lines took the quick path.
    expect(accepted).toBeGreaterThan(15);
  });
});
