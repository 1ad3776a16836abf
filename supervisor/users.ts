/**
 * Users and groups by name or number, read from /etc/passwd and /etc/group
 * (no dependency, no NSS: names that only a directory service knows must be
 * given as numbers).
 */
import { readFileSync } from 'node:fs';

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
