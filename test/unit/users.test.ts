/**
 * `--user`: whether the workers' user can execute the command, decided from mode bits and owners
 * the way the kernel does (fakes for the file system, then one real folder for the whole check).
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, test } from '@jest/globals';
import { CommandNotExecutableError, EXIT_CODES } from '../../supervisor/errors.js';
import {
  type AccessFacts,
  type AccessProbe,
  checkExecutableBy,
  findAccessBlock,
  findExecBlock,
} from '../../supervisor/users.js';

const NOBODY = 65534;

/** A file system of `path → facts`; `links` maps a symlink to its real path. */
function fakeProbe(files: Record<string, AccessFacts>, links: Record<string, string> = {}): AccessProbe {
  return {
    stat: (file) => {
      const facts = files[links[file] ?? file];
      if (!facts) throw Object.assign(new Error(`ENOENT: ${file}`), { code: 'ENOENT' });
      return facts;
    },
    realpath: (file) => links[file] ?? file,
  };
}

const rootDir = (mode: number): AccessFacts => ({ mode: 0o40000 | mode, uid: 0, gid: 0 });
const rootFile = (mode: number): AccessFacts => ({ mode: 0o100000 | mode, uid: 0, gid: 0 });

describe('findExecBlock', () => {
  test('a private folder on the way is named, the first one from the root', () => {
    const probe = fakeProbe({
      '/': rootDir(0o755),
      '/tmp': rootDir(0o1777),
      '/tmp/tmp.x': rootDir(0o700),
      '/tmp/tmp.x/baton': rootDir(0o700),
      '/tmp/tmp.x/baton/node': rootFile(0o755),
    });
    expect(findExecBlock('/tmp/tmp.x/baton/node', NOBODY, NOBODY, probe)).toEqual({
      path: '/tmp/tmp.x',
      kind: 'folder',
      facts: rootDir(0o700),
    });
  });

  test('a file without an execute bit for others, and one the user may execute as owner or group', () => {
    const files = { '/': rootDir(0o755), '/opt': rootDir(0o755) };
    expect(
      findExecBlock('/opt/app', NOBODY, NOBODY, fakeProbe({ ...files, '/opt/app': rootFile(0o744) })),
    ).toEqual({ path: '/opt/app', kind: 'file', facts: rootFile(0o744) });
    const owned = { mode: 0o100700, uid: NOBODY, gid: 0 };
    expect(
      findExecBlock('/opt/app', NOBODY, NOBODY, fakeProbe({ ...files, '/opt/app': owned })),
    ).toBeUndefined();
    const grouped = { mode: 0o100750, uid: 0, gid: 100 };
    expect(
      findExecBlock('/opt/app', NOBODY, 100, fakeProbe({ ...files, '/opt/app': grouped })),
    ).toBeUndefined();
    // The owner's bits decide for the owner, even when others may do more.
    const ownerDenied = { mode: 0o100605, uid: NOBODY, gid: 0 };
    expect(
      findExecBlock('/opt/app', NOBODY, NOBODY, fakeProbe({ ...files, '/opt/app': ownerDenied })),
    ).toMatchObject({ kind: 'file' });
  });

  test('a group that may search the folder lets only that group in', () => {
    const probe = fakeProbe({
      '/': rootDir(0o755),
      '/srv': { mode: 0o40750, uid: 0, gid: 33 },
      '/srv/app': rootFile(0o755),
    });
    expect(findExecBlock('/srv/app', NOBODY, 33, probe)).toBeUndefined();
    expect(findExecBlock('/srv/app', NOBODY, NOBODY, probe)).toMatchObject({ path: '/srv', kind: 'folder' });
  });

  test('a symlink is followed: the folders of its target count too (node_modules/.bin/node → ../node/bin/node)', () => {
    const probe = fakeProbe(
      {
        '/': rootDir(0o755),
        '/app': rootDir(0o755),
        '/app/bin': rootDir(0o755),
        '/private': rootDir(0o700),
        '/private/node': rootFile(0o755),
      },
      { '/app/bin/node': '/private/node' },
    );
    expect(findExecBlock('/app/bin/node', NOBODY, NOBODY, probe)).toMatchObject({ path: '/private' });
  });

  test("reading a module (baton's preload) needs the read bit, not the execute bit", () => {
    const files = { '/': rootDir(0o755), '/opt': rootDir(0o755) };
    const readable = fakeProbe({ ...files, '/opt/preload.js': rootFile(0o644) });
    expect(findAccessBlock('/opt/preload.js', NOBODY, NOBODY, 'read', readable)).toBeUndefined();
    expect(findAccessBlock('/opt/preload.js', NOBODY, NOBODY, 'execute', readable)).toMatchObject({
      kind: 'file',
    });
    const hidden = fakeProbe({ ...files, '/opt': rootDir(0o700), '/opt/preload.js': rootFile(0o644) });
    expect(findAccessBlock('/opt/preload.js', NOBODY, NOBODY, 'read', hidden)).toMatchObject({
      path: '/opt',
      kind: 'folder',
    });
  });

  test('root may always', () => {
    const probe = fakeProbe({ '/': rootDir(0o700), '/x': rootDir(0o700), '/x/app': rootFile(0o700) });
    expect(findExecBlock('/x/app', 0, 0, probe)).toBeUndefined();
  });
});

describe('checkExecutableBy', () => {
  const made: string[] = [];
  afterEach(() => {
    for (const dir of made.splice(0)) rmSync(dir, { recursive: true, force: true });
  });

  test('throws one line that names the folder, with exit code 126; passes once the folder is open', () => {
    const top = mkdtempSync(join(tmpdir(), 'baton-users-')); // mode 0700, like mktemp -d
    made.push(top);
    mkdirSync(join(top, 'bin'), { mode: 0o755 });
    const command = join(top, 'bin', 'server');
    writeFileSync(command, '#!/bin/sh\n');
    chmodSync(command, 0o755);
    const owner = `${process.getuid?.()}:${process.getgid?.()}`;

    let thrown: unknown;
    try {
      checkExecutableBy('server', command, NOBODY, NOBODY);
    } catch (error) {
      thrown = error;
    }
    expect(thrown).toBeInstanceOf(CommandNotExecutableError);
    const error = thrown as CommandNotExecutableError;
    expect(error.exitCode).toBe(EXIT_CODES.commandNotExecutable);
    expect(error).toMatchObject({ command: 'server', blockedPath: top, uid: NOBODY, gid: NOBODY });
    expect(error.message).toBe(
      `The workers' user (uid ${NOBODY}, gid ${NOBODY}) cannot execute '${command}': it cannot enter the folder ${top} (mode 0700, owner ${owner}). Give that user access, or put the command where it can reach it.`,
    );
    expect(error.message).not.toContain('\n');

    // The top folder as open as a world-readable clone, the file itself private: the file is named.
    chmodSync(top, 0o755);
    chmodSync(command, 0o700);
    expect(() => checkExecutableBy('server', command, NOBODY, NOBODY)).toThrow(
      `the file ${command} is not executable for it (mode 0700, owner ${owner})`,
    );
    chmodSync(command, 0o755);
    expect(() => checkExecutableBy('server', command, NOBODY, NOBODY)).not.toThrow();
  });
});
