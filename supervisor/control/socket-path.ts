/**
 * Where a master's control socket lives: its name (from `--name` or the
 * command) and its path (from `--control`, or the name in the first control
 * directory). The master and the CLI look in the same places.
 */
import path from 'node:path';
import { UsageError } from '../errors.js';

/** Control sockets are named `<name>.sock`. */
export const SOCKET_SUFFIX = '.sock';
/** The directory under `$XDG_RUNTIME_DIR` that holds control sockets. */
export const RUNTIME_SUBDIRECTORY = 'baton';
/** The project-local directory (in the current directory) used when `$XDG_RUNTIME_DIR` is not set. */
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
 * variable is set, then `.baton` in the current directory. A master uses the first.
 */
export function controlDirectories(env: Record<string, string | undefined>, cwd: string): string[] {
  const local = path.join(cwd, LOCAL_DIRECTORY);
  const runtime = env.XDG_RUNTIME_DIR;
  return runtime && path.isAbsolute(runtime) ? [path.join(runtime, RUNTIME_SUBDIRECTORY), local] : [local];
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
