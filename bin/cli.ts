/**
 * The `baton` command line: parses arguments (yargs), runs the command, and
 * turns every BatonError into one line on stderr and its exit code.
 */
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { BatonError, EXIT_CODES, UsageError } from '../supervisor/errors.js';
import { createLogger } from '../supervisor/log.js';
import {
  DEFAULTS,
  formatDuration,
  LOG_LEVELS,
  parseLogLevel,
  parseStartOptions,
} from '../supervisor/options.js';
import { runMaster } from '../supervisor/start.js';

const EPILOGUE = `Signals to the master: SIGUSR2 or SIGHUP reload, SIGTERM or SIGINT drain and stop, SIGQUIT stop now.
Exit codes: 0 stopped cleanly, 1 internal error, 2 bad usage, 3 cannot listen, 4 first generation failed to start, 5 workers killed at the drain deadline, 127 command not found.`;

function startOptions(argv: Argv) {
  return argv
    .usage(
      'baton start [options] -- <command> [args...]\n\nRun <command> as workers that inherit the listening sockets; SIGUSR2 upgrades them without dropping anyone.',
    )
    .option('listen', {
      type: 'string',
      array: true,
      requiresArg: true,
      describe:
        'A socket to bind once and hand to every worker, as [name=]tcp://host:port (IPv6: tcp://[::]:port; port 0 picks a free port). Repeat for more; workers get them at fd 3, 4, ...',
    })
    .option('workers', {
      type: 'string',
      requiresArg: true,
      default: String(DEFAULTS.workers),
      describe: 'Workers per generation',
    })
    .option('ready-timeout', {
      type: 'string',
      requiresArg: true,
      default: formatDuration(DEFAULTS.readyTimeoutMs),
      describe: 'How long a new generation has to say ready before the reload fails (500ms, 30s, 5m, 2h)',
    })
    .option('drain-timeout', {
      type: 'string',
      requiresArg: true,
      default: formatDuration(DEFAULTS.drainTimeoutMs),
      describe: 'How long an old generation may drain before its workers are killed',
    })
    .option('drain-signal', {
      type: 'string',
      requiresArg: true,
      default: DEFAULTS.drainSignal,
      describe: 'The signal that tells a worker to drain',
    })
    .option('max-draining', {
      type: 'string',
      requiresArg: true,
      default: String(DEFAULTS.maxDraining),
      describe: 'Most old generations draining at once; past it the oldest is cut short',
    })
    .option('ready', {
      type: 'string',
      requiresArg: true,
      default: DEFAULTS.ready,
      describe:
        "How a worker says it is ready: auto (the IPC message 'ready' or READY=1 on the pipe in BATON_NOTIFY_FD), ipc, notify, or delay:<duration> for programs that cannot say anything",
    })
    .option('log-level', {
      type: 'string',
      requiresArg: true,
      default: DEFAULTS.logLevel,
      describe: `One of ${LOG_LEVELS.join(', ')}`,
    })
    .option('pretty', {
      type: 'boolean',
      default: false,
      describe: 'Readable logs for people instead of JSON lines',
    })
    .example(
      'baton start --listen http=tcp://0.0.0.0:8080 --workers 2 -- node app/server.js',
      'two workers on port 8080',
    )
    .example('kill -USR2 <master pid>', 'upgrade to the code on disk now');
}

async function main(): Promise<number> {
  let exitCode: number = EXIT_CODES.ok;
  await yargs(hideBin(process.argv))
    .scriptName('baton')
    .parserConfiguration({ 'populate--': true })
    .command(
      'start',
      'Run a command as workers under baton',
      (argv) => startOptions(argv),
      async (argv) => {
        const options = parseStartOptions({
          listen: argv.listen,
          workers: argv.workers,
          readyTimeout: argv['ready-timeout'],
          drainTimeout: argv['drain-timeout'],
          drainSignal: argv['drain-signal'],
          maxDraining: argv['max-draining'],
          ready: argv.ready,
          command: commandAfterDashes(argv),
        });
        const logger = createLogger({
          level: parseLogLevel(String(argv['log-level'])),
          pretty: argv.pretty === true,
        });
        exitCode = await runMaster(options, logger);
      },
    )
    .demandCommand(1, "Expected a command, like 'baton start'")
    .strict()
    .epilogue(EPILOGUE)
    .wrap(Math.min(110, process.stdout.columns || 110))
    .version()
    .help()
    .fail((message, error) => {
      throw error ?? new UsageError(message ?? 'bad usage');
    })
    .parseAsync();
  return exitCode;
}

/** The worker command: everything after `--`. Positional words before it are a mistake worth naming. */
function commandAfterDashes(argv: { _: (string | number)[]; '--'?: (string | number)[] }): string[] {
  const stray = argv._.slice(1).map(String);
  if (stray.length > 0) {
    throw new UsageError(
      `Expected the command after '--', like: baton start --listen tcp://127.0.0.1:8080 -- ${stray.join(' ')}`,
    );
  }
  return (argv['--'] ?? []).map(String);
}

function reportAndExit(error: unknown): never {
  if (error instanceof BatonError) {
    const hint = error instanceof UsageError ? " (see 'baton --help')" : '';
    process.stderr.write(`baton: ${error.message}${hint}\n`);
    process.exit(error.exitCode);
  }
  process.stderr.write(`baton: internal error: ${(error as Error)?.stack ?? String(error)}\n`);
  process.exit(EXIT_CODES.internal);
}

main().then((code) => process.exit(code), reportAndExit);
