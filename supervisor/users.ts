/**
 * Users and groups by name or number, read from /etc/passwd and /etc/group
 * (no dependency, no NSS: names that only a directory service knows must be
 * given as numbers).
 */
import { readFileSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { CommandNotExecutableError } from './errors.js';

/** A user's or group's id, by number or by name; undefined when the name is unknown. */
export function lookupId(nameOrId: string, kind: 'user' | 'group'): number | undefined {
  if (/^\d+$/.test(nameOrId)) return Number(nameOrId);
  let lines: string[] = [];
  try {
    lines = readFileSync(kind === 'user' ? '/etc/passwd' : '/etc/group', 'utf8').split('\n');
  } catch {
    return undefined;
  }
  const entry = lines.map((line) => line.split(':')).find((fields) => fields[0] === nameOrId);
  return entry?.[2] === undefined ? undefined : Number(entry[2]);
}

/** The primary group of a user, from /etc/passwd. */
export function primaryGroupOf(uid: number): number | undefined {
  try {
    const entry = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .map((line) => line.split(':'))
      .find((fields) => Number(fields[2]) === uid && fields[3] !== undefined);
    return entry ? Number(entry[3]) : undefined;
  } catch {
    return undefined;
  }
}

/** What decides whether a user may enter a folder or execute a file: its mode bits and owners. */
export interface AccessFacts {
  mode: number;
  uid: number;
  gid: number;
}

/** The first thing on the way to a command that keeps a user from executing it. */
export interface ExecBlock {
  /** A folder the user cannot enter, or the command file that it may not execute. */
  path: string;
  kind: 'folder' | 'file';
  facts: AccessFacts;
}

/** What `findExecBlock` reads from the file system; tests give fakes. */
export interface AccessProbe {
  stat(file: string): AccessFacts;
  realpath(file: string): string;
}

const realProbe: AccessProbe = { stat: statSync, realpath: realpathSync };

/** Whether user `uid` with group `gid` has `bit` (1 execute/search, 4 read) on a file, as the kernel decides. */
function allows(facts: AccessFacts, uid: number, gid: number, bit: number): boolean {
  if (uid === 0) return true; // resolveCommand has checked, as root, that some execute bit is set
  const shift = facts.uid === uid ? 6 : facts.gid === gid ? 3 : 0;
  return ((facts.mode >> shift) & bit) === bit;
}

/** `/a/b/c` → `['/', '/a', '/a/b']`. */
function foldersAbove(file: string): string[] {
  const folders: string[] = [];
  for (let dir = path.dirname(file); ; dir = path.dirname(dir)) {
    folders.unshift(dir);
    if (dir === path.dirname(dir)) return folders;
  }
}

/**
 * The first folder on the way to the absolute path `file` (and to its real path, when a symlink leads
 * there) that user `uid` with group `gid` cannot enter, or the file itself when that user may not
 * execute it; undefined when it can. Only the primary group counts: workers start without
 * supplementary groups.
 */
export function findExecBlock(
  file: string,
  uid: number,
  gid: number,
  probe: AccessProbe = realProbe,
): ExecBlock | undefined {
  return findAccessBlock(file, uid, gid, 'execute', probe);
}

/** The same for any access to the file: `read` (a module to load, such as baton's preload) or `execute`. */
export function findAccessBlock(
  file: string,
  uid: number,
  gid: number,
  access: 'read' | 'execute',
  probe: AccessProbe = realProbe,
): ExecBlock | undefined {
  const real = probe.realpath(file);
  const folders = [...new Set([...foldersAbove(file), ...foldersAbove(real)])];
  for (const folder of folders) {
    const facts = probe.stat(folder);
    if (!allows(facts, uid, gid, 1)) return { path: folder, kind: 'folder', facts };
  }
  const facts = probe.stat(real);
  return allows(facts, uid, gid, access === 'read' ? 4 : 1) ? undefined : { path: real, kind: 'file', facts };
}

/**
 * Throws a CommandNotExecutableError, naming the folder or file in the way, when the workers' user
 * cannot execute `resolved` (the absolute path of `command`): otherwise every worker would fail to
 * start with a bare EACCES.
 */
export function checkExecutableBy(
  command: string,
  resolved: string,
  uid: number,
  gid: number,
  probe: AccessProbe = realProbe,
): void {
  const block = findExecBlock(resolved, uid, gid, probe);
  if (block === undefined) return;
  const { mode, uid: owner, gid: group } = block.facts;
  const facts = `mode ${(mode & 0o7777).toString(8).padStart(4, '0')}, owner ${owner}:${group}`;
  const why =
    block.kind === 'folder'
      ? `it cannot enter the folder ${block.path} (${facts})`
      : `the file ${block.path} is not executable for it (${facts})`;
  throw new CommandNotExecutableError(
    command,
    block.path,
    uid,
    gid,
    `The workers' user (uid ${uid}, gid ${gid}) cannot execute '${resolved}': ${why}. Give that user access, or put the command where it can reach it.`,
  );
}
