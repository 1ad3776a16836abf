/**
 * The options of `baton start`, as one table that both of its parsers read: yargs, for help, for
 * every mistake and every other command, and yargs-parser (the parser yargs itself calls) alone, for
 * a well-formed `start`. The master is the one long-lived baton process and a well-formed `start` the
 * usual way it begins: it then never loads the rest of yargs (its help layout, locales and
 * validation), megabytes of its memory for the life of the server (`test/integration/lean.test.ts`).
 *
 * Whatever the quick parse does not recognise as a plain, valid `start` goes to yargs, so that help,
 * errors and their wording stay yargs' own; `test/unit/start-args.test.ts` checks that both parsers
 * read every accepted command line alike.
 */
import type { Argv, Options } from 'yargs';
import parser from 'yargs-parser';
import { UsageError } from '../supervisor/errors.js';
import {
  COMMAND_AFTER_DASHES,
  DEFAULTS,
  formatDuration,
  LOG_LEVELS,
  type RawStartArgs,
} from '../supervisor/options.js';

/** The options of `baton start`, in the order `--help` lists them. */
export const START_OPTIONS = {
  config: {
    type: 'string',
    requiresArg: true,
    describe:
      "Read the settings from this file: baton's JSON (every option under its camelCase name, the command as an array under `command`, `env`), or a PM2 ecosystem file (its first app). Flags given win over the file. SIGHUP reads it again and reloads with it (docs/config.md)",
  },
  listen: {
    type: 'string',
    array: true,
    requiresArg: true,
    describe:
      'A socket to bind once and hand to every worker: [name=]tcp://host:port (IPv6: tcp://[::]:port; port 0 picks a free port), udp://host:port, or unix:/path.sock[?mode=660&owner=u&group=g]. Repeat for more; workers get them at fd 3, 4, ... Optional when systemd passes sockets (LISTEN_FDS)',
  },
  workers: {
    type: 'string',
    requiresArg: true,
    defaultDescription: JSON.stringify(String(DEFAULTS.workers)),
    describe: 'Workers per generation',
  },
  'ready-timeout': {
    type: 'string',
    requiresArg: true,
    defaultDescription: JSON.stringify(formatDuration(DEFAULTS.readyTimeoutMs)),
    describe: 'How long a new generation has to say ready before the reload fails (500ms, 30s, 5m, 2h)',
  },
  'drain-timeout': {
    type: 'string',
    requiresArg: true,
    defaultDescription: JSON.stringify(formatDuration(DEFAULTS.drainTimeoutMs)),
    describe: 'How long an old generation may drain before its workers are killed',
  },
  'drain-signal': {
    type: 'string',
    requiresArg: true,
    defaultDescription: JSON.stringify(DEFAULTS.drainSignal),
    describe: 'The signal that tells a worker to drain',
  },
  'max-draining': {
    type: 'string',
    requiresArg: true,
    defaultDescription: JSON.stringify(String(DEFAULTS.maxDraining)),
    describe: 'Most old generations draining at once; past it the oldest is cut short',
  },
  ready: {
    type: 'string',
    requiresArg: true,
    defaultDescription: JSON.stringify(DEFAULTS.ready),
    describe:
      "How a worker says it is ready: auto (the IPC message 'ready', or READY=1 sent to NOTIFY_SOCKET or written on the pipe in BATON_NOTIFY_FD; with the preload, a Node worker that listens on every listener; for a command that is not node, also poll), ipc (only the message 'ready', for apps that say ready after warming up, as PM2's wait_ready), notify, poll (seen in /proc: the worker or a process it forked waits on a listener), or delay:<duration>",
  },
  name: {
    type: 'string',
    requiresArg: true,
    describe:
      "This master's name; its control socket is NAME.sock in $XDG_RUNTIME_DIR/baton, else in ~/.baton (a user without a home: <tmp>/baton-<uid>) [default: the command's base name, or the script's after node, python, sh...]",
  },
  control: {
    type: 'string',
    requiresArg: true,
    describe:
      'The control socket path, instead of the one --name gives; its directory must be private (0700)',
  },
  'max-memory': {
    type: 'string',
    requiresArg: true,
    describe:
      'Replace a worker whose resident memory passes this size (512M, 2G): its replacement starts and is ready first, then it drains',
  },
  watchdog: {
    type: 'string',
    requiresArg: true,
    describe:
      'Replace a serving worker that said WATCHDOG=1 (sd_notify, or the child API by itself) and then nothing for this long (10s): its replacement is ready first, then it drains. Workers get WATCHDOG_USEC and WATCHDOG_PID',
  },
  'start-nice': {
    type: 'string',
    requiresArg: true,
    defaultDescription: JSON.stringify(String(DEFAULTS.startNice)),
    describe:
      "Start each worker at this CPU priority (nice -20 to 19) until it is ready. Above 0, a reload's start-up takes less of the cores from the workers serving meanwhile, and takes longer; below 0 (root or CAP_SYS_NICE), it takes more of them and the new version takes over sooner; 0: off",
  },
  user: {
    type: 'string',
    requiresArg: true,
    describe:
      'Run the workers as this user (name or uid); the master, started as root, keeps the sockets (port 80) and its control socket to itself. The user must be able to execute the command (every folder on its path): checked at start',
  },
  group: {
    type: 'string',
    requiresArg: true,
    describe: "Run the workers with this group (name or gid); default: the --user's primary group",
  },
  'version-file': {
    type: 'string',
    requiresArg: true,
    describe:
      "A file whose first line labels each new generation's version, read at every reload (default: the version in the package.json beside the script, else the generation number)",
  },
  metrics: {
    type: 'string',
    requiresArg: true,
    describe:
      'Serve Prometheus metrics on this address, as tcp://127.0.0.1:9100 (the master serves it, never the app)',
  },
  watch: {
    type: 'string',
    array: true,
    describe:
      'Reload when a file changes in these folders or files (default: the current folder), ignoring node_modules, .git, dist and editor swap files; for development',
  },
  preload: {
    type: 'boolean',
    defaultDescription: String(DEFAULTS.preload),
    describe:
      "Load baton's preload into Node workers (NODE_OPTIONS --import, so also behind npm start): a listen() on one of baton's ports or on PORT gets the inherited socket, the worker is ready once it listens on all of them, and server.close() or the drain signal drains without cutting requests; --no-preload turns it off",
  },
  'log-level': {
    type: 'string',
    requiresArg: true,
    defaultDescription: JSON.stringify(DEFAULTS.logLevel),
    describe: `One of ${LOG_LEVELS.join(', ')}`,
  },
  pretty: {
    type: 'boolean',
    defaultDescription: 'false',
    describe: 'Readable logs for people instead of JSON lines',
  },
} as const satisfies Record<string, Options>;

/** A parsed `start` command line, as either parser leaves it. */
export interface StartArgv {
  _: (string | number)[];
  '--'?: (string | number)[];
  [option: string]: unknown;
}

/** The settings a `start` command line gives: the flags typed, and the config file named. */
export interface StartFlags {
  /** Only what was typed: a flag left out takes the file's value, then the default. */
  flags: RawStartArgs;
  configPath: string | undefined;
}

/**
 * The worker command: everything after `--`. Positional words before it are a mistake worth naming;
 * checked before yargs' validation too, which would call them unknown arguments.
 */
export function commandAfterDashes(argv: { _: (string | number)[]; '--'?: (string | number)[] }): string[] {
  if (argv._.length > 1) throw new UsageError(COMMAND_AFTER_DASHES);
  return (argv['--'] ?? []).map(String);
}

/** The worker command and the flags of a parsed `start`; throws a UsageError for words before `--`. */
export function startFlags(argv: StartArgv): StartFlags {
  return {
    flags: {
      listen: argv.listen,
      workers: argv.workers,
      readyTimeout: argv['ready-timeout'],
      drainTimeout: argv['drain-timeout'],
      drainSignal: argv['drain-signal'],
      maxDraining: argv['max-draining'],
      ready: argv.ready,
      socketsInherited: process.env.LISTEN_FDS !== undefined,
      watch: argv.watch,
      metrics: argv.metrics,
      versionFile: argv['version-file'],
      maxMemory: argv['max-memory'],
      watchdog: argv.watchdog,
      startNice: argv['start-nice'],
      user: argv.user,
      group: argv.group,
      preload: argv.preload,
      name: argv.name,
      control: argv.control,
      logLevel: argv['log-level'],
      pretty: argv.pretty,
      command: commandAfterDashes(argv),
    },
    configPath: argv.config === undefined ? undefined : String(argv.config),
  };
}

/** Declares `start`'s options on a yargs command (its help lists them in the table's order). */
export function declareStartOptions(argv: Argv): Argv {
  return argv.options(START_OPTIONS);
}

const OPTION_ENTRIES: [string, Options][] = Object.entries(START_OPTIONS);

/** Each option under its name and its camelCase form (yargs-parser gives both). */
const OPTION_BY_KEY = new Map(
  OPTION_ENTRIES.flatMap(([name, option]) => [
    [name, option],
    [name.replace(/-([a-z])/g, (_, letter: string) => letter.toUpperCase()), option],
  ]),
);

const namesWhere = (test: (option: Options) => boolean) =>
  OPTION_ENTRIES.filter(([, option]) => test(option)).map(([name]) => name);

/**
 * How the CLI has yargs parse every command: the words after `--` kept apart (the worker's command) and
 * never turned into numbers, so that `-- node app.js --port 0x10 --tag 1.10` reaches the worker as typed.
 */
export const PARSER_CONFIGURATION = { 'populate--': true, 'parse-positional-numbers': false } as const;

/**
 * yargs-parser's settings as yargs passes them for `start`: every option declared under `key` (which
 * makes `--readyTimeout` the same option as `--ready-timeout`), `requiresArg` as an narg of NaN.
 */
const PARSER_OPTIONS = {
  key: Object.fromEntries(OPTION_ENTRIES.map(([name]) => [name, true])),
  string: namesWhere((option) => option.type === 'string'),
  boolean: namesWhere((option) => option.type === 'boolean'),
  array: namesWhere((option) => option.array === true),
  narg: Object.fromEntries(
    namesWhere((option) => option.requiresArg === true).map((name) => [name, Number.NaN]),
  ),
  configuration: PARSER_CONFIGURATION,
};

/**
 * `start`'s command line read by yargs-parser alone, or undefined when yargs must read it: anything
 * but `start` first, a word it does not know (`--help`, `--version`, a typo), a flag without its value,
 * words before `--`, or a value of a shape the options do not give.
 */
export function parseStartQuickly(args: readonly string[]): StartArgv | undefined {
  if (args[0] !== 'start') return undefined;
  const { argv, error } = parser.detailed([...args], PARSER_OPTIONS);
  if (error) return undefined;
  if (argv._.length !== 1 || argv._[0] !== 'start') return undefined;
  for (const [key, value] of Object.entries(argv)) {
    if (key === '_' || key === '--') continue;
    const option = OPTION_BY_KEY.get(key);
    if (option === undefined || !givesPlainValue(option, value)) return undefined;
  }
  return argv as StartArgv;
}

/** A value of the option's own shape: a word, a list of words, or a boolean; never an empty one. */
function givesPlainValue(option: Options, value: unknown): boolean {
  if (option.type === 'boolean') return typeof value === 'boolean';
  if (option.array !== true) return typeof value === 'string' && value !== '';
  return (
    Array.isArray(value) && value.length > 0 && value.every((item) => typeof item === 'string' && item !== '')
  );
}
