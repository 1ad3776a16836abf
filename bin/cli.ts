/**
 * The `baton` command line: parses arguments (yargs), runs the command, and
 * turns every BatonError into one line on stderr and its exit code.
 *
 * Each command's code is imported when that command runs: a master (`start`) stays the whole life of
 * a server and never loads the client commands, and a client never loads the master. A well-formed
 * `start` is read by yargs-parser alone (start-args.ts); yargs itself is loaded for everything else.
 */
import path from 'node:path';
import type { Argv } from 'yargs';
import { resolveStartSettings } from '../supervisor/config.js';
import type { MasterTarget } from '../supervisor/control/client.js';
import { parseName, resolveControlSettings } from '../supervisor/control/socket-path.js';
import { BatonError, describeExitCodes, EXIT_CODES, UsageError } from '../supervisor/errors.js';
import { DEFAULTS, MAX_WORKERS, parseInteger, parseLogLevel } from '../supervisor/options.js';
import { batonVersion } from '../supervisor/version.js';
import type { InjectDestination } from './commands/inject.js';
import {
  commandAfterDashes,
  declareStartOptions,
  PARSER_CONFIGURATION,
  parseStartQuickly,
  type StartArgv,
  startFlags,
} from './start-args.js';

const EPILOGUE = `Signals to the master: SIGUSR2 reload, SIGHUP read --config again and reload with it, SIGTERM or SIGINT drain and stop, SIGQUIT stop now.
Exit codes: ${describeExitCodes()}.
Control socket and protocol: docs/control.md.`;

/** The largest pid Linux hands out (pid_max can be raised to 2^22). */
const MAX_PID = 4_194_304;

/** The most generations a master numbers in a run that `--generation` accepts. */
const MAX_GENERATION = Number.MAX_SAFE_INTEGER;

/** Where `baton inject` sends the patch: `--dry-run`, `--worker PID`, `--generation N`, or the active generation. */
function injectDestinationOf(argv: {
  'dry-run'?: unknown;
  worker?: unknown;
  generation?: unknown;
}): InjectDestination {
  if (argv['dry-run'] === true) return { kind: 'dry-run' };
  if (argv.worker !== undefined)
    return { kind: 'pid', pid: parseInteger('--worker', argv.worker, 1, MAX_PID) };
  if (argv.generation !== undefined) {
    return {
      kind: 'generation',
      generation: parseInteger('--generation', argv.generation, 1, MAX_GENERATION),
    };
  }
  return { kind: 'all' };
}

/** How reload, status and stop find their master. */
function targetOptions(argv: Argv) {
  return argv
    .option('name', {
      type: 'string',
      requiresArg: true,
      describe:
        'The master called NAME: its socket is NAME.sock in $XDG_RUNTIME_DIR/baton, else in ~/.baton (or ./.baton, from an older baton)',
    })
    .option('control', {
      type: 'string',
      requiresArg: true,
      describe: 'The master whose control socket is at PATH',
    })
    .option('pid', {
      type: 'string',
      requiresArg: true,
      describe: 'The master with this pid (its control socket is found through /proc)',
    })
    .conflicts('name', ['control', 'pid'])
    .conflicts('control', 'pid')
    .epilogue(
      `Without --name, --control or --pid: the only master that answers in $XDG_RUNTIME_DIR/baton, else ~/.baton (or ./.baton), or the one of them that runs in this folder ('baton list' shows them all).\n\n${EPILOGUE}`,
    );
}

function targetOf(argv: { name?: unknown; control?: unknown; pid?: unknown }): MasterTarget {
  return {
    ...(argv.name === undefined ? {} : { name: parseName(argv.name) }),
    ...(argv.control === undefined ? {} : { control: String(argv.control) }),
    ...(argv.pid === undefined ? {} : { pid: parseInteger('--pid', argv.pid, 1, MAX_PID) }),
  };
}

function startOptions(argv: Argv) {
  return declareStartOptions(
    argv.usage(
      'baton start [options] -- <command> [args...]\n\nRun <command> as workers that inherit the listening sockets; SIGUSR2 upgrades them without dropping anyone.',
    ),
  )
    .example(
      'baton start --listen http=tcp://0.0.0.0:8080 --workers 2 -- node app/server.js',
      'two workers on port 8080',
    )
    .example('kill -USR2 <master pid>', 'upgrade to the code on disk now')
    .example('baton reload', 'the same, followed to the end (see baton reload --help)')
    .epilogue(EPILOGUE)
    .middleware((argv) => void commandAfterDashes(argv), true);
}

/** Runs a master from a parsed `start` until it stops; returns its exit code. */
async function runStart(argv: StartArgv): Promise<number> {
  const { flags, configPath } = startFlags(argv);
  const cwd = process.cwd();
  const settings = resolveStartSettings(flags, configPath, cwd);
  const { options, raw } = settings;
  const pretty = raw.pretty === true;
  const [{ createLogger }, { runMaster }] = await Promise.all([
    import('../supervisor/log.js'),
    import('../supervisor/start.js'),
  ]);
  const logger = await createLogger({
    level:
      raw.logLevel === undefined
        ? DEFAULTS.logLevel
        : parseLogLevel(String(raw.logLevel), flags.logLevel === undefined ? 'logLevel' : '--log-level'),
    pretty,
  });
  for (const warning of settings.warnings) logger.warn({ config: settings.config?.path }, warning);
  const control = resolveControlSettings(
    { name: raw.name, control: raw.control },
    [options.command, ...options.args],
    process.env,
    cwd,
  );
  return runMaster(options, logger, control, {
    failureOnStderr: !pretty,
    // What `baton reexec` carries to the new program, to read the config file again as this one does.
    start: {
      flags: { ...flags },
      ...(configPath === undefined ? {} : { configPath }),
      cwd,
      logLevel: String(raw.logLevel ?? DEFAULTS.logLevel),
      pretty,
      failureOnStderr: !pretty,
      control,
    },
    ...(settings.config
      ? {
          config: settings.config,
          readConfig: (file: string | undefined) =>
            resolveStartSettings(flags, file ?? settings.config?.path, cwd),
        }
      : {}),
  });
}

async function main(): Promise<number> {
  // A well-formed `start` (the master, which lives as long as the server) runs without yargs' machinery.
  const quickStart = parseStartQuickly(process.argv.slice(2));
  if (quickStart) return runStart(quickStart);
  const [{ default: yargs }, { hideBin }] = await Promise.all([import('yargs'), import('yargs/helpers')]);
  let exitCode: number = EXIT_CODES.ok;
  const cli = yargs(hideBin(process.argv));
  await cli
    .scriptName('baton')
    .parserConfiguration(PARSER_CONFIGURATION)
    .command(
      'start',
      'Run a command as workers under baton',
      (argv) => startOptions(argv),
      async (argv) => {
        exitCode = await runStart(argv);
      },
    )
    .command(
      'reload',
      'Upgrade to the code on disk now, and follow it until the old version has drained',
      (argv) =>
        targetOptions(argv)
          .usage(
            'baton reload [--no-wait] [--config [FILE]] [--name NAME | --control PATH | --pid PID]\n\nStart a new generation from the code on disk; once all of it is ready, drain the old one. Prints progress; exits 0 when the new generation serves and the old one has drained.',
          )
          .option('wait', {
            type: 'boolean',
            default: true,
            describe: 'Wait until the old generation has drained; --no-wait returns once the new one serves',
          })
          .option('config', {
            type: 'string',
            describe:
              "Read the master's config file again first (as SIGHUP does), or FILE instead (from now on); a file that does not read or validate refuses the reload with one line, and nothing changes",
          }),
      async (argv) => {
        const config =
          argv.config === undefined
            ? undefined
            : argv.config === ''
              ? true
              : path.resolve(process.cwd(), String(argv.config));
        const { reloadCommand } = await import('./commands/reload.js');
        exitCode = await reloadCommand(targetOf(argv), argv.wait !== false, process.stdout, config);
      },
    )
    .command(
      'status',
      'Show the generations, their workers and the last reloads',
      (argv) =>
        targetOptions(argv)
          .usage(
            'baton status [--json] [--check] [--name NAME | --control PATH | --pid PID]\n\nOne table of the generations and their workers (state, uptime, restarts, connections, CPU, memory), then the last starts and reloads.',
          )
          .option('json', { type: 'boolean', default: false, describe: "Print the master's status as JSON" })
          .option('check', {
            type: 'boolean',
            default: false,
            describe:
              'Exit 0 only if an active generation has every worker ready, else 9 (for health checks)',
          }),
      async (argv) => {
        const { statusCommand } = await import('./commands/status.js');
        exitCode = await statusCommand(
          targetOf(argv),
          { json: argv.json === true, check: argv.check === true },
          process.stdout,
        );
      },
    )
    .command(
      'scale <workers>',
      'Set the number of workers of the serving generation, without a reload',
      (argv) =>
        targetOptions(argv)
          .usage(
            'baton scale <workers> [--name NAME | --control PATH | --pid PID]\n\nAdd workers (they start and say ready) or drain some, in the serving generation and the next ones; SIGTTIN and SIGTTOU to the master add or remove one. Returns once the added workers are ready.',
          )
          .positional('workers', { type: 'string', describe: 'How many workers from now on' }),
      async (argv) => {
        const { scaleCommand } = await import('./commands/scale.js');
        exitCode = await scaleCommand(
          targetOf(argv),
          parseInteger('workers', argv.workers, 1, MAX_WORKERS),
          process.stdout,
        );
      },
    )
    .command(
      'inject <patch>',
      'Hot-patch the running workers without a restart: a patch reaches what the app exposes',
      (argv) =>
        targetOptions(argv)
          .usage(
            'baton inject [--all | --generation N | --worker PID] <patch> [--name NAME | --control PATH | --pid PID]\nbaton inject --dry-run <patch> [--name NAME | --control PATH | --pid PID]\n\nSend PATCH, an ES module whose default export gets the values the app exposed (expose() from baton-supervisor/child) and changes them in place, to live Node workers; each applies it and answers. Prints one line per worker; exits 11 unless every worker applied it. The generation keeps the patch: workers it restarts get it again; the next reload starts clean. --dry-run tries it first, in a scratch worker that serves nobody, and applies it nowhere.',
          )
          .positional('patch', { type: 'string', describe: 'The patch file (an ES module)' })
          .option('all', {
            type: 'boolean',
            describe: 'Every worker of the active generation (the default)',
          })
          .option('generation', {
            type: 'string',
            requiresArg: true,
            describe: 'Every live worker of generation N (a draining one too)',
          })
          .option('worker', {
            type: 'string',
            requiresArg: true,
            describe: 'Only the worker with this pid (not applied again if it restarts)',
          })
          .option('dry-run', {
            type: 'boolean',
            describe:
              "Apply it nowhere: load and run it in a scratch worker of the active generation's code that listens on nothing, then stop that worker; prints one line, exits 0 if the patch ran, else 11",
          })
          .conflicts('all', ['generation', 'worker', 'dry-run'])
          .conflicts('generation', ['worker', 'dry-run'])
          .conflicts('worker', 'dry-run'),
      async (argv) => {
        const { injectCommand } = await import('./commands/inject.js');
        exitCode = await injectCommand(
          targetOf(argv),
          String(argv.patch),
          injectDestinationOf(argv),
          process.stdout,
        );
      },
    )
    .command(
      'list',
      "List this user's running masters, from any folder: name, pid, state, version, workers, folder",
      (argv) =>
        argv
          .usage(
            'baton list [--json]\n\nEvery master of this user that answers on its control socket ($XDG_RUNTIME_DIR/baton, else ~/.baton, and ./.baton), whatever folder it was started in.',
          )
          .option('json', { type: 'boolean', default: false, describe: 'Print the masters as JSON' }),
      async (argv) => {
        const { listCommand } = await import('./commands/list.js');
        exitCode = await listCommand({ json: argv.json === true }, process.stdout);
      },
    )
    .command(
      'stop',
      'Stop the master: drain every generation, then exit',
      (argv) =>
        targetOptions(argv)
          .usage(
            "baton stop [--fast] [--name NAME | --control PATH | --pid PID]\n\nStop the master as SIGTERM does (or SIGQUIT with --fast) and wait until it has stopped; exit with the master's exit code.",
          )
          .option('fast', {
            type: 'boolean',
            default: false,
            describe: 'Kill every worker now instead of letting them drain',
          }),
      async (argv) => {
        const { stopCommand } = await import('./commands/stop.js');
        exitCode = await stopCommand(targetOf(argv), argv.fast === true, process.stdout);
      },
    )
    .command(
      'reexec',
      "Replace the master's own program with the baton on disk: same pid, same sockets, same workers",
      (argv) =>
        targetOptions(argv)
          .usage(
            'baton reexec [--program PATH] [--name NAME | --control PATH | --pid PID]\n\nUpgrade baton itself without closing a port: the new baton is tried in a separate process first, then the master executes it (same pid), keeping its listeners, its control socket and its workers with their connections. Prints each step; exits 0 once the new program has adopted the workers, 12 with one line if it was refused (nothing changed). docs/reexec.md',
          )
          .option('program', {
            type: 'string',
            describe:
              "The new baton's entry point (its bin/baton.js) [default: the one the master runs, as it is on disk now]",
          }),
      async (argv) => {
        const { reexecCommand } = await import('./commands/reexec.js');
        const program =
          argv.program === undefined ? undefined : path.resolve(process.cwd(), String(argv.program));
        exitCode = await reexecCommand(targetOf(argv), program, process.stdout);
      },
    )
    .demandCommand(1, "Expected a command, like 'baton start'")
    .strict()
    .epilogue(EPILOGUE)
    .wrap(Math.min(110, process.stdout.columns || 110))
    // yargs alone would read the package.json of the folder baton runs in: the user's app, not baton.
    .version(batonVersion())
    .help()
    .fail((message, error) => {
      // yargs' own complaints (a flag without its value: "Not enough arguments following: workers")
      // come as a YError: bad usage, one line. Anything else was thrown by a command.
      if (error && error.name !== 'YError') throw error;
      throw new UsageError(withSuggestion(message ?? error?.message ?? 'bad usage', cli));
    })
    .parseAsync();
  return exitCode;
}

/** The commands `baton` knows, for a mistyped one. */
const COMMANDS = ['start', 'reload', 'status', 'scale', 'inject', 'list', 'stop', 'reexec'];

/** yargs' "Unknown argument: worker" with the nearest known option or command: "did you mean --workers?". */
function withSuggestion(message: string, cli: Argv): string {
  // yargs names a mistyped --drain-timout twice, the second time as drainTimout: the camel case goes.
  const unknown = /^Unknown arguments?: (.+)$/
    .exec(message)?.[1]
    ?.split(', ')
    .filter((word) => !/[A-Z]/.test(word));
  if (!unknown) return message;
  const known = (cli as unknown as { getOptions(): { key: Record<string, unknown> } }).getOptions().key;
  const options = Object.keys(known).filter((key) => key.length > 1 && key !== '$0');
  const hints = unknown.flatMap((word) => {
    const option = nearest(word, options);
    if (option) return [`--${option}`];
    const command = nearest(word, COMMANDS);
    return command ? [command] : [];
  });
  const said = `Unknown argument${unknown.length === 1 ? '' : 's'}: ${unknown.join(', ')}`;
  return hints.length === 0 ? message : `${said}; did you mean ${[...new Set(hints)].join(', ')}?`;
}

/** The candidate closest to `word` in edit distance, if it is close (a typo, not another word). */
function nearest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Math.max(1, Math.floor(word.length / 3)) + 1;
  for (const candidate of candidates) {
    const distance = editDistance(word, candidate);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
    }
  }
  return best;
}

/** Levenshtein distance, with a swap of two neighbours counted as one edit (jsn → json, stauts → status). */
function editDistance(a: string, b: string): number {
  const rows = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) (rows[0] as number[])[j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const row = rows[i] as number[];
      const above = rows[i - 1] as number[];
      row[j] = Math.min(
        (above[j] as number) + 1,
        (row[j - 1] as number) + 1,
        (above[j - 1] as number) + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        row[j] = Math.min(row[j] as number, ((rows[i - 2] as number[])[j - 2] as number) + 1);
      }
    }
  }
  return (rows[a.length] as number[])[b.length] as number;
}

/** An error is one line, whatever the user typed into it (a newline in a flag's value, say). */
function oneLine(message: string): string {
  return message.replace(/\p{Cc}/gu, (character) => {
    const escaped = JSON.stringify(character).slice(1, -1); // \n, \t, \u0001 ...
    return escaped === character
      ? `\\u${(character.codePointAt(0) ?? 0).toString(16).padStart(4, '0')}`
      : escaped;
  });
}

function reportAndExit(error: unknown): never {
  if (error instanceof BatonError) {
    const hint = error instanceof UsageError ? " (see 'baton --help')" : '';
    process.stderr.write(`baton: ${oneLine(error.message)}${hint}\n`);
    process.exit(error.exitCode);
  }
  process.stderr.write(`baton: internal error: ${(error as Error)?.stack ?? String(error)}\n`);
  process.exit(EXIT_CODES.internal);
}

main().then((code) => process.exit(code), reportAndExit);
