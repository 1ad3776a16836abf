/**
 * The master's settings: one DEFAULTS object, and the parsers that turn what a
 * user typed into validated values, each failing with one UsageError line of
 * the form "Expected `--flag` to be ..., got '...'".
 */

import { existsSync } from 'node:fs';
import { isIP } from 'node:net';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import { UsageError } from './errors.js';
import { mayRaisePriority } from './priority.js';
import { lookupId, primaryGroupOf } from './users.js';

/** How many consecutive quick crashes of one worker slot count as a crash loop. */
export const CRASH_LOOP_THRESHOLD = 3;
/** The first restart delay after a crash; it doubles with each further crash. */
export const RESTART_BACKOFF_BASE_MS = 250;
/** The longest delay between two restarts of a crashing worker. */
export const RESTART_BACKOFF_MAX_MS = 30_000;
/** A worker that stayed up this long is healthy again: its crash count resets. */
export const STABLE_UPTIME_MS = 10_000;
/** The longest duration a timer can hold (Node clamps larger timeouts to 1 ms). */
export const MAX_DURATION_MS = 2_147_483_647;
/** The most workers one generation may have. */
export const MAX_WORKERS = 1024;
/** How often the master looks in /proc whether a starting worker polls its listeners (`--ready poll`). */
export const POLL_READINESS_INTERVAL_MS = 50;
/**
 * How often the master looks in /proc whether a starting worker the preload does not watch (a program
 * that is not Node, `--no-preload`) listens on a port of its own instead of baton's.
 */
export const OWN_PORT_CHECK_INTERVAL_MS = 100;
/**
 * How long a starting worker may listen on a port of its own without waiting on any of baton's before
 * its start fails: an admin port opened first is fine (the preload gives Node apps as long).
 */
export const OWN_PORT_GRACE_MS = 500;
/** How often the master counts the connections of workers that do not report theirs (from /proc). */
export const CONNECTION_SAMPLE_INTERVAL_MS = 1000;
/**
 * A draining worker that does not report its connections, no longer accepts
 * and holds none for this many samples in a row is finished (SIGKILL): it has
 * nothing left to drain but did not exit by itself.
 */
export const IDLE_DRAIN_SAMPLES = 2;
/** The highest `--start-nice`: 19, Linux's lowest priority. */
export const MAX_NICE = 19;
/** The lowest `--start-nice`: -20, Linux's highest priority (root or CAP_SYS_NICE only). */
export const MIN_NICE = -20;
/** The backlog of every listening socket (Node's own default). */
export const LISTEN_BACKLOG = 511;

/** Every default of `baton start`, shown in `--help`. */
export const DEFAULTS = {
  workers: 1,
  readyTimeoutMs: 30_000,
  drainTimeoutMs: 30_000,
  drainSignal: 'SIGTERM' as NodeJS.Signals,
  maxDraining: 8,
  logLevel: 'info' as LogLevel,
  ready: 'auto',
  /** Load baton's preload into Node workers (supervisor/unmodified.ts); `--no-preload` turns it off. */
  preload: true,
  /** `--start-nice`: workers start at the master's own priority (supervisor/priority.ts). */
  startNice: 0,
} as const;

/**
 * How the master judges that a worker is ready: `auto` takes the IPC message or
 * the notify pipe, whichever comes first, and for a command that is not Node what
 * `poll` sees too; `ipc` and `notify` take only that one;
 * `poll` takes it as ready once it waits for connections on a listener, as
 * seen in /proc (for unmodified programs); `delay` takes the worker as ready
 * once it has run that long (for programs that cannot say anything).
 */
export type ReadinessMode =
  | { kind: 'auto' }
  | { kind: 'ipc' }
  | { kind: 'notify' }
  | { kind: 'poll' }
  | { kind: 'delay'; ms: number };

/** Parses `--ready auto|ipc|notify|poll|delay:2s`. */
export function parseReadiness(text: string, flag = '--ready'): ReadinessMode {
  const value = String(text).trim();
  if (value === 'auto' || value === 'ipc' || value === 'notify' || value === 'poll') return { kind: value };
  if (value.startsWith('delay:'))
    return { kind: 'delay', ms: parseDuration(`${flag} delay`, value.slice(6)) };
  throw new UsageError(
    `Expected \`${flag}\` to be auto, ipc, notify, poll or delay:<duration> like delay:2s, got '${text}'`,
  );
}

/** pino's levels, plus silent. */
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;
/** One of pino's levels. */
export type LogLevel = (typeof LOG_LEVELS)[number];

/** A listener as given by `--listen`: a TCP or UDP address, or a Unix socket path. */
export type ListenSpec = InetListenSpec | UnixListenSpec;

/** `[name=]tcp://host:port` or `[name=]udp://host:port`. */
export interface InetListenSpec {
  name: string;
  scheme: 'tcp' | 'udp';
  host: string;
  port: number;
  family: 4 | 6;
  /** What the user typed, for messages. */
  text: string;
}

/** `[name=]unix:/path.sock[?mode=660&owner=user&group=group]`. */
export interface UnixListenSpec {
  name: string;
  scheme: 'unix';
  path: string;
  /** File mode of the socket file, e.g. 0o660; the umask's when undefined. */
  mode: number | undefined;
  owner: string | undefined;
  group: string | undefined;
  text: string;
}

/** The validated settings of one master. */
export interface MasterOptions {
  listen: ListenSpec[];
  workers: number;
  readyTimeoutMs: number;
  drainTimeoutMs: number;
  drainSignal: NodeJS.Signals;
  maxDraining: number;
  ready: ReadinessMode;
  /** Where the Prometheus endpoint listens (`--metrics`), if anywhere. */
  metrics?: InetListenSpec;
  /** A worker whose resident memory passes this many bytes is replaced (`--max-memory`). */
  maxMemoryBytes?: number;
  /**
   * A serving worker that sent WATCHDOG=1 once and then none for this long is replaced (`--watchdog`);
   * workers get it as WATCHDOG_USEC. Off when undefined.
   */
  watchdogMs?: number;
  /** The user and group workers run as (`--user`, `--group`); the master's own when undefined. */
  uid?: number;
  gid?: number;
  /** `--start-nice`: the nice value a worker starts at until it is ready (0: its normal priority). */
  startNice?: number;
  /** A file whose first line is the version label, read at each reload (`--version-file`). */
  versionFile?: string;
  /** Files and folders whose changes reload (`--watch`); none when not watching. */
  watch?: string[];
  /** Whether Node workers get baton's preload (`--no-preload`: false; undefined: not either). */
  preload?: boolean;
  /** Variables the workers get on top of the master's environment (the config file's `env`). */
  env?: Record<string, string>;
  /** The folder workers run in (the config file's `cwd`); the master's own when undefined. */
  cwd?: string;
  command: string;
  args: string[];
}

const DURATION_UNITS_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };
const DURATION_PATTERN = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;

/** The shortest `--watchdog`: a worker pings at half of it, and the master checks a few times within it. */
export const MIN_WATCHDOG_MS = 200;

/** Parses `--watchdog 10s`. */
export function parseWatchdog(text: string, flag = '--watchdog'): number {
  const ms = parseDuration(flag, text);
  if (ms < MIN_WATCHDOG_MS) {
    throw new UsageError(
      `Expected \`${flag}\` to be a duration of at least ${MIN_WATCHDOG_MS}ms, like 10s, got '${text}'`,
    );
  }
  return ms;
}

/** Parses `500ms`, `30s`, `1.5m`, `2h`, `1d` into milliseconds. */
export function parseDuration(flag: string, text: string, { allowZero = false } = {}): number {
  const match = DURATION_PATTERN.exec(String(text).trim());
  const expected = `Expected \`${flag}\` to be a duration like 500ms, 30s, 5m or 2h`;
  if (!match) throw new UsageError(`${expected}, got '${text}'`);
  const ms = Math.round(Number(match[1]) * (DURATION_UNITS_MS[match[2] as string] as number));
  if (ms === 0 && !allowZero) throw new UsageError(`${expected} and more than zero, got '${text}'`);
  if (ms > MAX_DURATION_MS) throw new UsageError(`${expected} and at most 24d, got '${text}'`);
  return ms;
}

const SIZE_UNITS: Record<string, number> = { K: 1024, M: 1024 ** 2, G: 1024 ** 3 };

/** Parses a size like `512M`, `1.5G` or `300000K` (binary units) into bytes. */
export function parseSize(flag: string, text: string): number {
  const match = /^(\d+(?:\.\d+)?)([KMG])i?B?$/i.exec(String(text).trim());
  const bytes = match
    ? Math.round(Number(match[1]) * (SIZE_UNITS[(match[2] as string).toUpperCase()] as number))
    : Number.NaN;
  if (!Number.isFinite(bytes) || bytes < 16 * 1024 ** 2 || bytes > 1024 ** 4) {
    throw new UsageError(
      `Expected \`${flag}\` to be a size from 16M to 1024G, like 512M or 2G, got '${text}'`,
    );
  }
  return bytes;
}

/** Parses a whole number between min and max. */
export function parseInteger(flag: string, text: unknown, min: number, max: number): number {
  // Decimal digits only: Number() would also take 0x10, 1e1, +5 and ' '.
  const digits = typeof text === 'number' ? Number.isInteger(text) : /^-?\d+$/.test(String(text).trim());
  const value = typeof text === 'number' ? text : Number(String(text).trim());
  if (!digits || !Number.isInteger(value) || value < min || value > max) {
    throw new UsageError(`Expected \`${flag}\` to be a whole number from ${min} to ${max}, got '${text}'`);
  }
  return value === 0 ? 0 : value; // never -0
}

/**
 * `--start-nice`: -20 to 19. Below 0 (a higher priority than the master's) needs root or CAP_SYS_NICE,
 * checked now rather than found out at the first reload.
 */
function parseStartNice(flag: string, text: unknown, mayRaise: boolean | undefined): number {
  const nice = parseInteger(flag, text, MIN_NICE, MAX_NICE);
  if (nice < 0 && !(mayRaise ?? mayRaisePriority(nice))) {
    throw new UsageError(
      `\`${flag}\` ${nice} asks for a priority above baton's own, which needs CAP_SYS_NICE (root has it, unless a container or a user namespace leaves it out: \`docker run --cap-add SYS_NICE\`) or a RLIMIT_NICE that allows it (systemd's LimitNICE=): give baton one of them, or a value from 0 to ${MAX_NICE}`,
    );
  }
  return nice;
}

const LISTENER_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const INET_URL = /^(tcp|udp):\/\/(\[[^\]]*\]|[^:/[\]]*):(\d+)$/;
const UNIX_OPTIONS = new Set(['mode', 'owner', 'group']);
/** The longest path a Unix socket address holds (sun_path, less its final NUL). */
const MAX_UNIX_PATH = 107;

/**
 * Parses `[name=]tcp://host:port`, `[name=]udp://host:port` (IPv6 hosts in
 * brackets) or `[name=]unix:/path.sock[?mode=660&owner=u&group=g]`; unnamed
 * listeners are called listen0, listen1, ...
 */
export function parseListen(text: string, index: number, flag = '--listen'): ListenSpec {
  const expected = `Expected \`${flag}\` to look like http=tcp://127.0.0.1:8080, tcp://[::]:9000, udp://0.0.0.0:5353 or unix:/run/app.sock`;
  const raw = String(text).trim();
  const eq = raw.indexOf('=');
  const hasName = eq !== -1 && !/^[a-z0-9+]+:/.test(raw.slice(0, eq));
  const name = hasName ? raw.slice(0, eq) : `listen${index}`;
  const url = hasName ? raw.slice(eq + 1) : raw;
  if (!LISTENER_NAME.test(name)) {
    throw new UsageError(`${expected}; the name may use letters, digits, '_', '.', '-', got '${text}'`);
  }
  const scheme = /^([a-z0-9+]+):/.exec(url)?.[1];
  if (scheme === 'unix') return parseUnixListen(name, url.slice('unix:'.length), raw, expected);
  if (scheme && scheme !== 'tcp' && scheme !== 'udp') {
    throw new UsageError(
      `${expected}; the scheme '${scheme}' is not supported (tcp, udp, unix), got '${text}'`,
    );
  }
  const match = INET_URL.exec(url);
  if (!match) throw new UsageError(`${expected}, got '${text}'`);
  let host = match[2] as string;
  if (host.startsWith('[')) host = host.slice(1, -1);
  if (host === '' || host === '*') host = '0.0.0.0';
  if (host === 'localhost') host = '127.0.0.1';
  const family = isIP(host);
  if (family === 0) {
    throw new UsageError(`${expected}; the host must be an IP address or localhost, got '${text}'`);
  }
  if (family === 6 && !match[2]?.startsWith('[')) {
    throw new UsageError(`${expected}; put an IPv6 address in brackets, got '${text}'`);
  }
  const port = Number(match[3]);
  if (!Number.isInteger(port) || port > 65_535) {
    throw new UsageError(`${expected}; the port must be from 0 to 65535, got '${text}'`);
  }
  return { name, scheme: match[1] as 'tcp' | 'udp', host, port, family: family as 4 | 6, text: raw };
}

function parseUnixListen(name: string, rest: string, raw: string, expected: string): UnixListenSpec {
  const [path = '', query = ''] = rest.split('?', 2);
  if (/\p{Cc}/u.test(path)) {
    throw new UsageError(
      `${expected}; a Unix socket path may not contain control characters, got ${JSON.stringify(raw)}`,
    );
  }
  if (!path.startsWith('/') || path.endsWith('/')) {
    throw new UsageError(`${expected}; a Unix socket needs an absolute file path, got '${raw}'`);
  }
  if (Buffer.byteLength(path) > MAX_UNIX_PATH) {
    throw new UsageError(
      `${expected}; a Unix socket path holds at most ${MAX_UNIX_PATH} bytes, got '${raw}'`,
    );
  }
  const options = new URLSearchParams(query);
  for (const key of options.keys()) {
    if (options.getAll(key).length > 1) {
      throw new UsageError(`${expected}; give '${key}' once, got '${raw}'`);
    }
    if (!UNIX_OPTIONS.has(key)) {
      throw new UsageError(
        `${expected}; a Unix socket takes mode, owner and group, not '${key}', got '${raw}'`,
      );
    }
  }
  const modeText = options.get('mode');
  const mode = modeText === null ? undefined : Number.parseInt(modeText, 8);
  if (modeText !== null && (!/^[0-7]{3,4}$/.test(modeText) || (mode as number) > 0o777)) {
    throw new UsageError(`${expected}; mode is octal like 660, got '${raw}'`);
  }
  return {
    name,
    scheme: 'unix',
    path,
    mode,
    owner: options.get('owner') ?? undefined,
    group: options.get('group') ?? undefined,
    text: raw,
  };
}

/** Checks a signal name that may be sent to workers to make them drain. */
export function parseSignal(flag: string, text: string): NodeJS.Signals {
  const name = String(text).trim().toUpperCase();
  const full = (name.startsWith('SIG') ? name : `SIG${name}`) as NodeJS.Signals;
  if (!(full in osConstants.signals) || full === 'SIGKILL' || full === 'SIGSTOP') {
    throw new UsageError(
      `Expected \`${flag}\` to be a signal a process can handle, like SIGTERM or SIGINT, got '${text}'`,
    );
  }
  return full;
}

/** Checks a pino log level. */
export function parseLogLevel(text: string, flag = '--log-level'): LogLevel {
  const level = String(text).trim().toLowerCase();
  if (!(LOG_LEVELS as readonly string[]).includes(level)) {
    throw new UsageError(`Expected \`${flag}\` to be one of ${LOG_LEVELS.join(', ')}, got '${text}'`);
  }
  return level as LogLevel;
}

/** What `baton start` received from the command line, before validation. */
export interface RawStartArgs {
  listen?: unknown;
  workers?: unknown;
  readyTimeout?: unknown;
  drainTimeout?: unknown;
  drainSignal?: unknown;
  maxDraining?: unknown;
  ready?: unknown;
  /** `--metrics tcp://host:port`. */
  metrics?: unknown;
  /** `--version-file PATH`. */
  versionFile?: unknown;
  /** `--max-memory 512M`. */
  maxMemory?: unknown;
  /** `--watchdog 10s`. */
  watchdog?: unknown;
  /** `--start-nice 10`. */
  startNice?: unknown;
  /** Whether this process may raise a priority (a negative `--start-nice`); read from /proc when absent. */
  mayRaisePriority?: boolean;
  /** `--user NAME|UID` and `--group NAME|GID` for the workers. */
  user?: unknown;
  group?: unknown;
  /** The uid the master runs as (only root may start workers as another user). */
  masterUid?: number;
  /** `--watch [paths...]`: undefined when not given, [] when given without paths. */
  watch?: unknown;
  /** Where relative `--watch` paths start. */
  cwd?: string;
  /** The master was handed listening sockets (LISTEN_FDS): `--listen` may then be left out. */
  socketsInherited?: boolean;
  /** `--no-preload` makes it false. */
  preload?: unknown;
  /** The config file's `env`: variables for the workers. */
  env?: Record<string, string>;
  /** The config file's `cwd`: the folder workers run in (absolute). */
  workerCwd?: string;
  /** `--name`, `--control`, `--log-level`, `--pretty`: read by the CLI, not by `parseStartOptions`. */
  name?: unknown;
  control?: unknown;
  logLevel?: unknown;
  pretty?: unknown;
  command: string[];
}

/** Where each setting came from when not a flag: its name in the config file, for messages. */
export type FieldNames = Partial<Record<keyof RawStartArgs, string>>;

/** What `baton start` says when the worker's command is missing, or some of it came before `--`. */
export const COMMAND_AFTER_DASHES =
  "Expected the worker's command after `--`, like: baton start [options] -- node server.js";

/**
 * Validates everything `baton start` was given; throws the first UsageError found. `fields` names
 * the settings that came from a config file, so that a complaint names the field, not the flag.
 */
export function parseStartOptions(raw: RawStartArgs, fields: FieldNames = {}): MasterOptions {
  const flag = (field: keyof RawStartArgs, cli: string) => fields[field] ?? cli;
  // First: a command typed without `--` ends up in an array option (`--listen ... node server.js`),
  // whose complaint about 'node' would hide the real mistake.
  const [command, ...args] = raw.command;
  if (!command) throw new UsageError(COMMAND_AFTER_DASHES);
  const listenTexts = raw.listen === undefined ? [] : ([] as unknown[]).concat(raw.listen).map(String);
  if (listenTexts.length === 0 && !raw.socketsInherited) {
    throw new UsageError('Expected at least one `--listen`, like --listen http=tcp://127.0.0.1:8080');
  }
  const listen = listenTexts.map((text, index) => parseListen(text, index, flag('listen', '--listen')));
  const names = new Set<string>();
  for (const spec of listen) {
    if (names.has(spec.name))
      throw new UsageError(
        `Expected each \`${flag('listen', '--listen')}\` name once, got '${spec.name}' twice`,
      );
    names.add(spec.name);
  }
  return {
    listen,
    workers:
      raw.workers === undefined
        ? DEFAULTS.workers
        : parseInteger(flag('workers', '--workers'), raw.workers, 1, MAX_WORKERS),
    readyTimeoutMs:
      raw.readyTimeout === undefined
        ? DEFAULTS.readyTimeoutMs
        : parseDuration(flag('readyTimeout', '--ready-timeout'), String(raw.readyTimeout)),
    drainTimeoutMs:
      raw.drainTimeout === undefined
        ? DEFAULTS.drainTimeoutMs
        : parseDuration(flag('drainTimeout', '--drain-timeout'), String(raw.drainTimeout), {
            allowZero: true,
          }),
    drainSignal:
      raw.drainSignal === undefined
        ? DEFAULTS.drainSignal
        : parseSignal(flag('drainSignal', '--drain-signal'), String(raw.drainSignal)),
    maxDraining:
      raw.maxDraining === undefined
        ? DEFAULTS.maxDraining
        : parseInteger(flag('maxDraining', '--max-draining'), raw.maxDraining, 1, 1000),
    ready: parseReadiness(
      raw.ready === undefined ? DEFAULTS.ready : String(raw.ready),
      flag('ready', '--ready'),
    ),
    watch: parseWatch(raw.watch, raw.cwd ?? process.cwd(), flag('watch', '--watch')),
    metrics:
      raw.metrics === undefined ? undefined : parseMetrics(String(raw.metrics), flag('metrics', '--metrics')),
    versionFile: raw.versionFile === undefined ? undefined : String(raw.versionFile),
    maxMemoryBytes:
      raw.maxMemory === undefined
        ? undefined
        : parseSize(flag('maxMemory', '--max-memory'), String(raw.maxMemory)),
    watchdogMs:
      raw.watchdog === undefined
        ? undefined
        : parseWatchdog(String(raw.watchdog), flag('watchdog', '--watchdog')),
    startNice:
      raw.startNice === undefined
        ? DEFAULTS.startNice
        : parseStartNice(flag('startNice', '--start-nice'), raw.startNice, raw.mayRaisePriority),
    ...parseWorkerUser(raw.user, raw.group, raw.masterUid ?? process.getuid?.() ?? 0),
    preload: raw.preload === undefined ? DEFAULTS.preload : raw.preload !== false,
    ...(raw.env === undefined ? {} : { env: raw.env }),
    ...(raw.workerCwd === undefined ? {} : { cwd: raw.workerCwd }),
    command,
    args,
  };
}

/**
 * `--user` and `--group`: whom the workers run as. Only a master started as
 * root can change them; a user without `--group` runs with its primary group.
 */
export function parseWorkerUser(
  user: unknown,
  group: unknown,
  masterUid: number,
): { uid?: number; gid?: number } {
  if (user === undefined && group === undefined) return {};
  if (masterUid !== 0) {
    throw new UsageError(
      'Expected baton to run as root for `--user` or `--group` (a process can only start others as itself)',
    );
  }
  const uid = user === undefined ? undefined : lookupId(String(user), 'user');
  if (user !== undefined && uid === undefined) {
    throw new UsageError(
      `Expected \`--user\` to be a user name or number, got '${user}' (not in /etc/passwd)`,
    );
  }
  const gid =
    group === undefined
      ? uid === undefined
        ? undefined
        : primaryGroupOf(uid)
      : lookupId(String(group), 'group');
  if (group !== undefined && gid === undefined) {
    throw new UsageError(
      `Expected \`--group\` to be a group name or number, got '${group}' (not in /etc/group)`,
    );
  }
  return { ...(uid === undefined ? {} : { uid }), ...(gid === undefined ? {} : { gid }) };
}

/** `--metrics tcp://host:port`: a TCP address of the master's own. */
export function parseMetrics(text: string, flag = '--metrics'): InetListenSpec {
  let spec: ListenSpec;
  try {
    spec = parseListen(text, 0);
  } catch {
    throw new UsageError(`Expected \`${flag}\` to look like tcp://127.0.0.1:9100, got '${text}'`);
  }
  if (spec.scheme !== 'tcp') {
    throw new UsageError(`Expected \`${flag}\` to look like tcp://127.0.0.1:9100, got '${text}'`);
  }
  return { ...spec, name: 'metrics' };
}

/** `--watch` alone watches the current folder; each path given must exist. */
export function parseWatch(raw: unknown, cwd: string, flag = '--watch'): string[] {
  if (raw === undefined || raw === false) return [];
  const given = ([] as unknown[])
    .concat(raw)
    .map(String)
    .filter((text) => text !== '' && text !== 'true');
  const paths = (given.length === 0 ? ['.'] : given).map((text) => path.resolve(cwd, text));
  for (const [index, resolved] of paths.entries()) {
    if (!existsSync(resolved)) {
      throw new UsageError(`Expected \`${flag}\` paths to exist, got '${given[index] ?? '.'}'`);
    }
  }
  return paths;
}

/** Formats milliseconds the way the flags take them, for `--help`. */
export function formatDuration(ms: number): string {
  for (const [unit, size] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const) {
    if (ms % size === 0 && ms >= size) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
