/**
 * Where a master's control socket lives: its name (from `--name` or the
 * command) and its path (from `--control`, or the name in the first control
 * directory). The master and the CLI look in the same places.
 */
import { statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { UsageError } from '../errors.js';

/** Control sockets are named `<name>.sock`. */
export const SOCKET_SUFFIX = '.sock';
/** The directory under `$XDG_RUNTIME_DIR` that holds control sockets. */
export const RUNTIME_SUBDIRECTORY = 'baton';
/**
 * The folder in the user's home that holds control sockets when `$XDG_RUNTIME_DIR` is not set (as PM2
 * keeps ~/.pm2), so that a CLI in any folder finds the user's masters.
 */
export const HOME_DIRECTORY = '.baton';
/** The folder in the current directory where masters before 0.2 put their sockets; clients still look. */
export const LOCAL_DIRECTORY = '.baton';
/** The name when nothing better can be derived from the command. */
export const FALLBACK_NAME = 'baton';

/** Commands that run a script: the master is named after the script, not after the interpreter. */
const INTERPRETERS = new Set([
  'node',
  'nodejs',
  'bun',
  'deno',
  'python',
  'python3',
  'ruby',
  'php',
  'perl',
  'sh',
  'bash',
]);
const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$/;
/** An argument that looks like a path to a script, not like inline code (`node -e '...'`). */
const SCRIPT_PATH = /^[\w./@+-]+$/;

/** The master's name and its control socket's path. */
export interface ControlSettings {
  name: string;
  path: string;
}

/**
 * Where control sockets are looked for, first choice first: `$XDG_RUNTIME_DIR/baton` when that
 * variable is set, then the user's own folder (see `userControlDirectory`), then `.baton` in the
 * current directory (older masters). A master uses the first.
 */
export function controlDirectories(env: Record<string, string | undefined>, cwd: string): string[] {
  const runtime = env.XDG_RUNTIME_DIR;
  const directories = [
    ...(runtime && path.isAbsolute(runtime) ? [path.join(runtime, RUNTIME_SUBDIRECTORY)] : []),
    userControlDirectory(env),
    path.join(cwd, LOCAL_DIRECTORY),
  ];
  return [...new Set(directories)];
}

/**
 * The user's control folder whatever the working directory: `~/.baton` when the home folder exists
 * and is the user's, else `<tmp>/baton-<uid>` (a service user whose home is /nonexistent). Private
 * (0700) either way: prepareControlPath refuses one that is not.
 */
export function userControlDirectory(
  env: Record<string, string | undefined>,
  uid: number = process.getuid?.() ?? 0,
): string {
  const home = env.HOME;
  if (home && path.isAbsolute(home)) {
    try {
      const stats = statSync(home);
      if (stats.isDirectory() && stats.uid === uid) return path.join(home, HOME_DIRECTORY);
    } catch {
      // no such home: the temporary folder below
    }
  }
  return path.join(tmpdir(), `baton-${uid}`);
}

/** The socket of the master called `name` in `directory`. */
export function socketPathIn(directory: string, name: string): string {
  return path.join(directory, `${name}${SOCKET_SUFFIX}`);
}

/**
 * The default name: the base name of the command, without its extension; when the command is an
 * interpreter (node, python, sh, ...), that of the first argument that looks like a script path
 * instead (`node app/server.js` is `server`). Characters other than letters, digits, `_`, `.`, `-`
 * become `-`.
 */
export function defaultName(command: string, args: readonly string[]): string {
  const program = path.basename(command);
  const script = INTERPRETERS.has(program)
    ? args.find((arg) => !arg.startsWith('-') && arg !== 'run' && SCRIPT_PATH.test(arg))
    : undefined;
  const base = path.basename(script ?? program);
  const withoutExtension = base.includes('.', 1) ? base.slice(0, base.lastIndexOf('.')) : base;
  const name = withoutExtension.replace(/[^A-Za-z0-9_.-]/g, '-').slice(0, 64);
  return NAME.test(name) ? name : FALLBACK_NAME;
}

/** Checks a `--name`. */
export function parseName(text: unknown): string {
  const name = String(text).trim();
  if (!NAME.test(name)) {
    throw new UsageError(
      `Expected \`--name\` to be up to 64 letters, digits, '_', '.' or '-' (not starting with '.' or '-'), got '${text}'`,
    );
  }
  return name;
}

/** The name and socket path of a master from `--name`, `--control` and its command. */
export function resolveControlSettings(
  raw: { name?: unknown; control?: unknown },
  command: readonly string[],
  env: Record<string, string | undefined>,
  cwd: string,
): ControlSettings {
  const name =
    raw.name === undefined ? defaultName(command[0] ?? FALLBACK_NAME, command.slice(1)) : parseName(raw.name);
  if (raw.control !== undefined) {
    const control = String(raw.control).trim();
    if (control === '')
      throw new UsageError("Expected `--control` to be a path like /run/app/baton.sock, got ''");
    return { name, path: path.resolve(cwd, control) };
  }
  return { name, path: socketPathIn(controlDirectories(env, cwd)[0] as string, name) };
}
