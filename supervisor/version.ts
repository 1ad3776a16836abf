/**
 * The version label of a generation, read anew at each reload: from
 * `--version-file`, else from the `package.json` beside the worker's script
 * (or in the current folder), else none (the generation number shows).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { UsageError } from './errors.js';

/** baton's own version (`baton --version`), from its package.json: two folders up from dist/supervisor/. */
export function batonVersion(): string {
  const manifest = new URL('../../package.json', import.meta.url);
  return (JSON.parse(readFileSync(manifest, 'utf8')) as { version: string }).version;
}

/** Longer labels are cut: a version file is a label, not a document. */
const MAX_VERSION_LENGTH = 64;

/** Checks `--version-file` once at start: it must be a readable file. */
export function checkVersionFile(file: string): void {
  try {
    readVersionFile(file);
  } catch (error) {
    throw new UsageError(
      `Expected \`--version-file\` to be a readable file, got '${file}' (${(error as NodeJS.ErrnoException).code ?? 'unreadable'})`,
    );
  }
}

function readVersionFile(file: string): string {
  return readFileSync(file, 'utf8').trim().split('\n')[0]?.slice(0, MAX_VERSION_LENGTH) ?? '';
}

/** The label for a new generation, or undefined when there is none to be had (the caller shows the number). */
export function readVersionLabel(
  options: { versionFile?: string; args: string[] },
  cwd: string,
): string | undefined {
  if (options.versionFile) {
    try {
      return readVersionFile(path.resolve(cwd, options.versionFile)) || undefined;
    } catch {
      return undefined;
    }
  }
  const script = options.args.map((arg) => path.resolve(cwd, arg)).find((candidate) => isFile(candidate));
  for (const folder of [script && path.dirname(script), cwd]) {
    if (!folder) continue;
    const manifest = path.join(folder, 'package.json');
    if (!existsSync(manifest)) continue;
    try {
      const version = (JSON.parse(readFileSync(manifest, 'utf8')) as { version?: unknown }).version;
      if (typeof version === 'string' && version !== '') return version.slice(0, MAX_VERSION_LENGTH);
    } catch {
      // not JSON: no label from it
    }
  }
  return undefined;
}

function isFile(candidate: string): boolean {
  try {
    return statSync(candidate).isFile();
  } catch {
    return false;
  }
}
