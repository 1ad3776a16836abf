/**
 * The config file (`--config`, docs/config.md): baton's own JSON, or a PM2 ecosystem file
 * (`ecosystem.config.js`/`.cjs`/`.json`, its first app), read into the same raw settings the command
 * line gives, then validated once by `parseStartOptions`. Flags override the file. SIGHUP and
 * `baton reload --config` read it again: `settingsChange` says what a running master may take from
 * it (everything a new generation is made of, the listeners it adds and drops included) and what it
 * may not (the master's own settings, kept until a restart).
 *
 * Every complaint is one line that names the file and the field: "baton.json: Expected `workers` to be
 * a whole number from 1 to 1024, got 'three'".
 */
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { UsageError } from './errors.js';
import type { ReloadAnswer } from './model.js';
import {
  formatDuration,
  type ListenSpec,
  type MasterOptions,
  parseStartOptions,
  type RawStartArgs,
} from './options.js';

/** Which file a generation's settings came from, for `status`. */
export interface ConfigLabel {
  /** The file's absolute path. */
  path: string;
  /** The first 12 hex digits of the file's sha256. */
  hash: string;
  /** When the master read it (ms since the epoch). */
  loadedAt: number;
  /** baton's own JSON, or a PM2 ecosystem file. */
  format: 'baton' | 'pm2';
}

/** A config file read and checked for shape, its values not validated yet. */
export interface ConfigFile {
  label: ConfigLabel;
  /** The settings it gives, under the names of `RawStartArgs`. */
  raw: Partial<RawStartArgs>;
  /** The name each setting has in the file (`workers`, `apps[0].instances`), for messages. */
  fields: Partial<Record<keyof RawStartArgs, string>>;
  /** One line per field read and ignored (PM2 fields that mean nothing here). */
  warnings: string[];
}

/** The settings a master runs with, and where they came from. */
export interface StartSettings {
  options: MasterOptions;
  /** The command line and the file merged, before validation (the CLI reads its own settings from it). */
  raw: RawStartArgs;
  config: ConfigLabel | undefined;
  warnings: string[];
}

/** How each key of baton's JSON maps to `RawStartArgs` (the long option names, in camel case). */
const BATON_KEYS = {
  listen: 'listen',
  workers: 'workers',
  readyTimeout: 'readyTimeout',
  drainTimeout: 'drainTimeout',
  drainSignal: 'drainSignal',
  maxDraining: 'maxDraining',
  ready: 'ready',
  metrics: 'metrics',
  versionFile: 'versionFile',
  maxMemory: 'maxMemory',
  watchdog: 'watchdog',
  startNice: 'startNice',
  user: 'user',
  group: 'group',
  watch: 'watch',
  preload: 'preload',
  name: 'name',
  control: 'control',
  logLevel: 'logLevel',
  pretty: 'pretty',
  command: 'command',
  env: 'env',
  cwd: 'workerCwd',
} as const satisfies Record<string, keyof RawStartArgs>;

/** The PM2 fields baton maps (docs/config.md); every other field of the app is named in a warning. */
const PM2_MAPPED = new Set([
  'script',
  'args',
  'interpreter',
  'interpreter_args',
  'node_args',
  'instances',
  'env',
  'cwd',
  'wait_ready',
  'listen_timeout',
  'kill_timeout',
  'max_memory_restart',
  'name',
  'baton',
]);

/** Why a few well-known PM2 fields mean nothing here; the rest get the generic reason. */
const PM2_IGNORED_BECAUSE: Record<string, string> = {
  exec_mode: 'baton always runs the workers side by side on the shared listening sockets',
  watch: 'use --watch (or `watch` under `baton`)',
  ignore_watch: 'use --watch (or `watch` under `baton`)',
  autorestart: 'baton always restarts a serving worker that dies, with backoff',
  max_restarts: 'baton restarts with backoff and reports a crash loop',
  min_uptime: 'baton restarts with backoff and reports a crash loop',
  restart_delay: 'baton restarts with backoff and reports a crash loop',
  exp_backoff_restart_delay: 'baton restarts with backoff and reports a crash loop',
  out_file: "workers' output goes to baton's own stdout and stderr",
  error_file: "workers' output goes to baton's own stdout and stderr",
  log_file: "workers' output goes to baton's own stdout and stderr",
  merge_logs: "workers' output goes to baton's own stdout and stderr",
  log_date_format: "workers' output goes to baton's own stdout and stderr",
  shutdown_with_message: 'baton tells a worker to drain with --drain-signal',
  instance_var: 'workers get BATON_WORKER',
};

/** The interpreter PM2 picks by the script's extension (node for the rest). */
const PM2_INTERPRETERS: Record<string, string> = {
  '.py': 'python3',
  '.sh': 'bash',
  '.rb': 'ruby',
  '.php': 'php',
  '.pl': 'perl',
};

/** Whether a path names a PM2 ecosystem file by its name. */
function looksLikeEcosystem(file: string): boolean {
  return /(^|[.-])ecosystem([.-]|$)/.test(path.basename(file)) || /\.(c?js|mjs)$/.test(file);
}

/** Reads `file` (resolved from `cwd`): baton's JSON, or a PM2 ecosystem file. */
export function readConfigFile(file: string, cwd: string, now = Date.now()): ConfigFile {
  const absolute = path.resolve(cwd, file);
  const shown = path.basename(absolute);
  let bytes: Buffer;
  try {
    bytes = readFileSync(absolute);
  } catch (error) {
    throw new UsageError(
      `Expected \`--config\` to be a readable file, got '${file}' (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`,
    );
  }
  const hash = createHash('sha256').update(bytes).digest('hex').slice(0, 12);
  const value = /\.json$/i.test(absolute)
    ? parseJson(bytes, shown)
    : looksLikeEcosystem(absolute)
      ? loadModule(absolute, shown)
      : parseJson(bytes, shown);
  if (!isObject(value)) throw new UsageError(`${shown}: Expected a JSON object, got ${typeName(value)}`);
  const dir = path.dirname(absolute);
  const read = 'apps' in value ? readEcosystem(value, shown, dir) : readBatonJson(value, shown, dir, '');
  return {
    label: { path: absolute, hash, loadedAt: now, format: 'apps' in value ? 'pm2' : 'baton' },
    ...read,
  };
}

function parseJson(bytes: Buffer, shown: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new UsageError(`${shown}: not valid JSON: ${(error as Error).message}`);
  }
}

/**
 * An ecosystem file is a CommonJS module (as PM2 writes it and `require`s it): read afresh each time,
 * so a SIGHUP sees the file on disk now. An ES module is refused, as PM2 asks too: Node keeps an ES
 * module it loaded once, so a SIGHUP would see the old file.
 */
function loadModule(absolute: string, shown: string): unknown {
  const require = createRequire(absolute);
  delete require.cache[absolute];
  let loaded: unknown;
  try {
    loaded = require(absolute);
  } catch (error) {
    const first = String((error as Error).message).split('\n')[0];
    throw new UsageError(`${shown}: could not be loaded: ${first}`);
  } finally {
    delete require.cache[absolute];
  }
  if (isObject(loaded) && (loaded as { [Symbol.toStringTag]?: unknown })[Symbol.toStringTag] === 'Module') {
    throw new UsageError(
      `${shown}: is an ES module; write it as CommonJS (module.exports = { apps: [...] }) in a .cjs file, as PM2 asks too`,
    );
  }
  return loaded;
}

/** baton's own keys, at the top of baton.json or under an ecosystem app's `baton`. */
function readBatonJson(
  value: Record<string, unknown>,
  shown: string,
  dir: string,
  prefix: string,
): Omit<ConfigFile, 'label'> {
  const raw: Partial<RawStartArgs> = {};
  const fields: ConfigFile['fields'] = {};
  for (const [key, given] of Object.entries(value)) {
    if (!Object.hasOwn(BATON_KEYS, key)) {
      throw new UsageError(
        `${shown}: Unknown key \`${prefix}${key}\`; expected one of ${Object.keys(BATON_KEYS).join(', ')}`,
      );
    }
    const field = BATON_KEYS[key as keyof typeof BATON_KEYS];
    const name = `${prefix}${key}`;
    fields[field] = name;
    (raw as Record<string, unknown>)[field] = checkShape(field, given, name, shown, dir);
  }
  // Paths in a file start at its folder, and so do its workers, as PM2's do.
  if (prefix === '' && raw.workerCwd === undefined) raw.workerCwd = dir;
  return { raw, fields, warnings: [] };
}

/** The JSON types a key may have; what they hold is checked by `parseStartOptions`. */
function checkShape(
  field: keyof RawStartArgs,
  value: unknown,
  name: string,
  shown: string,
  dir: string,
): unknown {
  const fail = (expected: string): never => {
    throw new UsageError(`${shown}: Expected \`${name}\` to be ${expected}, got ${describe(value)}`);
  };
  switch (field) {
    case 'command':
      if (!Array.isArray(value) || value.length === 0 || !value.every((word) => typeof word === 'string'))
        fail('an array of strings, like ["node", "server.js"]');
      return value;
    case 'env':
      return checkEnv(value, name, shown);
    case 'workerCwd': {
      if (typeof value !== 'string' || value === '') fail('a folder');
      const resolved = path.resolve(dir, value as string);
      if (!isDirectory(resolved)) fail('a folder that exists');
      return resolved;
    }
    case 'listen':
      if (typeof value === 'string') return [value];
      if (!Array.isArray(value) || !value.every((item) => typeof item === 'string'))
        fail('an array of strings');
      return value;
    case 'watch': {
      if (typeof value === 'boolean') return value ? [dir] : undefined;
      const paths = typeof value === 'string' ? [value] : value;
      if (!Array.isArray(paths) || !paths.every((item) => typeof item === 'string'))
        fail('true or an array of paths');
      return (paths as string[]).map((item) => path.resolve(dir, item));
    }
    case 'versionFile':
      if (typeof value !== 'string' || value === '') fail('a file');
      return path.resolve(dir, value as string);
    case 'preload':
    case 'pretty':
      if (typeof value !== 'boolean') fail('true or false');
      return value;
    case 'workers':
    case 'maxDraining':
      if (typeof value !== 'number' && typeof value !== 'string') fail('a whole number');
      return value;
    default:
      if (typeof value !== 'string') fail('a string');
      return value;
  }
}

function checkEnv(value: unknown, name: string, shown: string): Record<string, string> {
  if (!isObject(value)) {
    throw new UsageError(
      `${shown}: Expected \`${name}\` to be an object of variables, like {"NODE_ENV": "production"}, got ${describe(value)}`,
    );
  }
  const env: Record<string, string> = {};
  for (const [key, item] of Object.entries(value)) {
    if (key === '' || key.includes('=') || key.includes('\0')) {
      throw new UsageError(`${shown}: Expected \`${name}\` to have variable names without '=', got '${key}'`);
    }
    if (typeof item !== 'string' && typeof item !== 'number' && typeof item !== 'boolean') {
      throw new UsageError(
        `${shown}: Expected \`${name}.${key}\` to be a string, number or boolean, got ${describe(item)}`,
      );
    }
    env[key] = String(item);
  }
  return env;
}

/** A PM2 ecosystem file: its first app mapped, everything else named in a warning. */
function readEcosystem(
  value: Record<string, unknown>,
  shown: string,
  dir: string,
): Omit<ConfigFile, 'label'> {
  const apps = value.apps;
  if (!Array.isArray(apps) || apps.length === 0 || !isObject(apps[0])) {
    throw new UsageError(
      `${shown}: Expected \`apps\` to be an array of at least one app, got ${describe(apps)}`,
    );
  }
  const app = apps[0];
  const at = (key: string) => `apps[0].${key}`;
  const fail = (key: string, expected: string): never => {
    throw new UsageError(`${shown}: Expected \`${at(key)}\` to be ${expected}, got ${describe(app[key])}`);
  };
  const warnings: string[] = [];
  if (apps.length > 1) {
    const names = apps.map((each, index) =>
      isObject(each) && typeof each.name === 'string' ? each.name : `#${index}`,
    );
    warnings.push(
      `${shown} has ${apps.length} apps (${names.join(', ')}): baton runs the first one only; start one baton per app`,
    );
  }
  for (const key of Object.keys(value)) {
    if (key !== 'apps') warnings.push(`${shown}: \`${key}\` is ignored: it has no meaning under baton`);
  }
  for (const key of Object.keys(app)) {
    if (PM2_MAPPED.has(key)) continue;
    const why =
      PM2_IGNORED_BECAUSE[key] ??
      (key.startsWith('env_') ? 'baton reads `env` only' : 'it has no meaning under baton');
    warnings.push(`${shown}: \`${at(key)}\` is ignored: ${why}`);
  }

  const nested = app.baton === undefined ? undefined : app.baton;
  if (nested !== undefined && !isObject(nested))
    fail('baton', 'an object of baton settings, like {"listen": [...]}');
  const { raw, fields } = nested
    ? readBatonJson(nested as Record<string, unknown>, shown, dir, `${at('baton')}.`)
    : { raw: {} as Partial<RawStartArgs>, fields: {} as ConfigFile['fields'] };
  // A setting under `baton` wins over its PM2 counterpart.
  const set = (field: keyof RawStartArgs, key: string, mapped: unknown) => {
    if (field in raw) return;
    (raw as Record<string, unknown>)[field] = mapped;
    fields[field] = at(key);
  };

  const cwd = app.cwd === undefined ? dir : checkShape('workerCwd', app.cwd, at('cwd'), shown, dir);
  if (!('workerCwd' in raw)) {
    raw.workerCwd = cwd as string;
    fields.workerCwd = at('cwd');
  }
  if (app.script !== undefined) {
    if (typeof app.script !== 'string' || app.script === '')
      fail('script', 'a file or command, like "server.js"');
    set('command', 'script', pm2Command(app, shown));
  }
  if (app.instances !== undefined) set('workers', 'instances', pm2Instances(app.instances, shown));
  if (app.env !== undefined) set('env', 'env', checkEnv(app.env, at('env'), shown));
  if (app.wait_ready !== undefined) {
    if (typeof app.wait_ready !== 'boolean') fail('wait_ready', 'true or false');
    if (app.wait_ready) set('ready', 'wait_ready', 'ipc');
  }
  if (app.listen_timeout !== undefined)
    set('readyTimeout', 'listen_timeout', pm2Milliseconds(app.listen_timeout));
  if (app.kill_timeout !== undefined) set('drainTimeout', 'kill_timeout', pm2Milliseconds(app.kill_timeout));
  if (app.max_memory_restart !== undefined) {
    const size = app.max_memory_restart;
    if (typeof size !== 'string' && typeof size !== 'number')
      fail('max_memory_restart', 'a size like "300M"');
    // PM2 takes a bare number as bytes; baton's sizes have a unit.
    set('maxMemory', 'max_memory_restart', typeof size === 'number' ? `${Math.round(size / 1024)}K` : size);
  }
  if (app.name !== undefined) set('name', 'name', app.name);
  return { raw, fields, warnings };
}

/** `script` with its interpreter and `args`, the way PM2 starts it. */
function pm2Command(app: Record<string, unknown>, shown: string): string[] {
  const script = app.script as string;
  const words = (key: string): string[] => {
    const value = app[key];
    if (value === undefined) return [];
    if (typeof value === 'string') return splitWords(value);
    if (Array.isArray(value) && value.every((word) => typeof word === 'string')) return value as string[];
    throw new UsageError(
      `${shown}: Expected \`apps[0].${key}\` to be a string or an array of strings, got ${describe(value)}`,
    );
  };
  const args = words('args');
  const interpreterArgs = [...words('node_args'), ...words('interpreter_args')];
  const interpreter = app.interpreter;
  if (interpreter !== undefined && typeof interpreter !== 'string') {
    throw new UsageError(
      `${shown}: Expected \`apps[0].interpreter\` to be a command or "none", got ${describe(interpreter)}`,
    );
  }
  if (interpreter === 'none') return [script, ...args];
  const chosen = interpreter ?? PM2_INTERPRETERS[path.extname(script)] ?? 'node';
  return [chosen, ...interpreterArgs, script, ...args];
}

/** `instances`: a number, "max" or 0 (one per core), -1 (one less than the cores). */
function pm2Instances(value: unknown, shown: string): number | string {
  const cores = availableParallelism();
  if (value === 'max' || value === 0 || value === '0') return cores;
  if (value === -1 || value === '-1') return Math.max(1, cores - 1);
  if (typeof value === 'number' || typeof value === 'string') return value;
  throw new UsageError(
    `${shown}: Expected \`apps[0].instances\` to be a number or "max", got ${describe(value)}`,
  );
}

/** PM2's timeouts are milliseconds; baton's are durations. */
function pm2Milliseconds(value: unknown): unknown {
  return typeof value === 'number' && Number.isFinite(value) ? `${value}ms` : value;
}

/** Splits PM2's `args` string the way a shell would split plain words and quoted ones. */
export function splitWords(text: string): string[] {
  const words: string[] = [];
  for (const match of text.matchAll(/"((?:[^"\\]|\\.)*)"|'([^']*)'|(\S+)/g)) {
    words.push(match[1] !== undefined ? match[1].replace(/\\(.)/g, '$1') : (match[2] ?? match[3] ?? ''));
  }
  return words;
}

/**
 * The command line and the file merged (a flag given wins over the file) and validated. A complaint
 * about a value from the file names the file and its field.
 */
export function resolveStartSettings(
  cli: RawStartArgs,
  configPath: string | undefined,
  cwd: string,
): StartSettings {
  const file = configPath === undefined ? undefined : readConfigFile(configPath, cwd);
  const raw: RawStartArgs = { ...file?.raw, command: file?.raw.command ?? [] };
  const fields: ConfigFile['fields'] = {};
  for (const [key, fieldName] of Object.entries(file?.fields ?? {})) {
    fields[key as keyof RawStartArgs] = fieldName;
  }
  for (const [key, value] of Object.entries(cli) as Array<[keyof RawStartArgs, unknown]>) {
    if (value === undefined || (key === 'command' && (value as string[]).length === 0)) continue;
    (raw as unknown as Record<string, unknown>)[key] = value;
    delete fields[key];
  }
  try {
    const options = parseStartOptions(raw, fields);
    return { options, raw, config: file?.label, warnings: file?.warnings ?? [] };
  } catch (error) {
    const named = Object.values(fields).some((name) => (error as Error).message.includes(`\`${name}\``));
    if (error instanceof UsageError && file && named) {
      throw new UsageError(`${path.basename(file.label.path)}: ${error.message}`, { cause: error });
    }
    throw error;
  }
}

/** The settings only a restart of the master changes (and their names in the file): a reload keeps them. */
const MASTER_WIDE: ReadonlyArray<[keyof MasterOptions, string]> = [
  ['metrics', 'metrics'],
  ['maxMemoryBytes', 'maxMemory'],
  ['watchdogMs', 'watchdog'],
  ['uid', 'user'],
  ['gid', 'group'],
  ['versionFile', 'versionFile'],
  ['watch', 'watch'],
];

/** What a re-read file changes in a running master. */
export type SettingsChange =
  | {
      ok: true;
      options: MasterOptions;
      warnings: string[];
      /** Listeners the file adds (to bind before the reload), and those it no longer has (to close once unused). */
      added: ListenSpec[];
      removed: ListenSpec[];
    }
  | { ok: false; message: string };

/**
 * What a running master takes from a re-read file: everything a new generation is made of (command,
 * arguments, environment, worker count, timeouts, readiness, listeners). The master's own settings
 * (MASTER_WIDE) stay as they are, with one warning each. Listeners are refused when the master holds
 * sockets handed over by systemd (`handedOver`), which no file describes.
 */
export function settingsChange(
  before: MasterOptions,
  after: MasterOptions,
  shown: string,
  { handedOver = false } = {},
): SettingsChange {
  const was = new Set(before.listen.map(listenerKey));
  const now = new Set(after.listen.map(listenerKey));
  const added = after.listen.filter((spec) => !was.has(listenerKey(spec)));
  const removed = before.listen.filter((spec) => !now.has(listenerKey(spec)));
  if (handedOver && (added.length > 0 || removed.length > 0)) {
    return {
      ok: false,
      message: `${shown}: \`listen\` changed, but this master serves sockets handed over by systemd (LISTEN_FDS): its listeners change only with a restart; reload refused, nothing changed`,
    };
  }
  const options: MasterOptions = { ...after };
  const warnings: string[] = [];
  for (const [key, name] of MASTER_WIDE) {
    if (JSON.stringify(before[key]) === JSON.stringify(after[key])) continue;
    warnings.push(
      `${shown}: \`${name}\` changed: it takes effect only when the master restarts (kept as it was)`,
    );
    (options as unknown as Record<string, unknown>)[key] = before[key];
  }
  return { ok: true, options, warnings, added, removed };
}

/** A config reload read and checked, waiting for the listeners it adds. */
export interface PendingConfig {
  read: StartSettings;
  change: Extract<SettingsChange, { ok: true }>;
  source: string;
  file: string;
  reply: (answer: ReloadAnswer) => void;
}

/** Two specs of the same key ask for the same socket under the same name. */
export function listenerKey(spec: ListenSpec): string {
  return spec.scheme === 'unix'
    ? `${spec.name}=unix:${spec.path}?${spec.mode}&${spec.owner}&${spec.group}`
    : `${spec.name}=${spec.scheme}://${spec.host}:${spec.port}`;
}

/** The settings a generation runs with, in one line, for the log. */
export function describeSettings(options: MasterOptions): Record<string, unknown> {
  return {
    command: [options.command, ...options.args].join(' '),
    workers: options.workers,
    readyTimeout: formatDuration(options.readyTimeoutMs),
    drainTimeout: formatDuration(options.drainTimeoutMs),
    ready: options.ready.kind,
    env: Object.keys(options.env ?? {}),
  };
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isDirectory(file: string): boolean {
  try {
    return statSync(file).isDirectory();
  } catch {
    return false;
  }
}

function typeName(value: unknown): string {
  return Array.isArray(value) ? 'an array' : value === null ? 'null' : typeof value;
}

/** A value as the message shows it: JSON, cut short. */
function describe(value: unknown): string {
  const text = value === undefined ? 'nothing' : JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}
