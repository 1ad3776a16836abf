/**
 * Third-party Python servers for the language tests, installed by the project's own files: a venv
 * under node_modules/.cache with the pinned packages of test/fixtures/python/requirements.txt, made
 * once and reused. Where it cannot be made (no python3 with venv, no package index), the tests that
 * need it are skipped with the reason, never passed.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO_ROOT } from './processes.js';

const REQUIREMENTS = join(REPO_ROOT, 'test', 'fixtures', 'python', 'requirements.txt');
const VENV = join(REPO_ROOT, 'node_modules', '.cache', 'baton-python');
/** A venv made for other requirements is made again. */
const STAMP = join(VENV, 'requirements.txt');
const INSTALL_TIMEOUT_MS = 180_000;

/** The venv's bin folder, or why there is none here. */
export type PythonServers = { bin: string; skip?: undefined } | { bin?: undefined; skip: string };

let made: PythonServers | undefined;

/** Makes (once) and returns the venv with the pinned servers. Synchronous: call it at module load. */
export function pythonServers(): PythonServers {
  if (made) return made;
  const wanted = readFileSync(REQUIREMENTS, 'utf8');
  const bin = join(VENV, 'bin');
  try {
    if (!existsSync(STAMP) || readFileSync(STAMP, 'utf8') !== wanted) {
      execFileSync('python3', ['-m', 'venv', '--clear', VENV], {
        stdio: 'pipe',
        timeout: INSTALL_TIMEOUT_MS,
      });
      execFileSync(
        join(bin, 'pip'),
        ['install', '--quiet', '--disable-pip-version-check', '-r', REQUIREMENTS],
        {
          stdio: 'pipe',
          timeout: INSTALL_TIMEOUT_MS,
        },
      );
      writeFileSync(STAMP, wanted);
    }
    made = { bin };
  } catch (error) {
    const stderr = String((error as { stderr?: Buffer }).stderr ?? '')
      .trim()
      .split('\n')
      .slice(-1)[0];
    made = {
      skip: `no Python venv with ${wanted
        .split('\n')
        .filter((l) => l && !l.startsWith('#'))
        .join(', ')} here (${stderr || (error as Error).message})`,
    };
  }
  return made;
}
