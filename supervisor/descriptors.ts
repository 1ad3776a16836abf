/**
 * Descriptors the master inherited by accident must not reach the workers.
 */
import { closeSync, readdirSync, readFileSync } from 'node:fs';

/** O_CLOEXEC as /proc/<pid>/fdinfo shows it (octal flags). */
const O_CLOEXEC = 0o2000000;

/**
 * Closes every descriptor above stderr that this process inherited without
 * close-on-exec, except those in `keep`. A parent that leaks a descriptor
 * (a shell's pipe, a CI runner's log) would otherwise hand it to every worker:
 * children get whatever their parent holds without close-on-exec. Node and
 * libuv open everything with close-on-exec, so nothing of theirs is touched.
 * Returns the descriptors closed. Linux only; elsewhere it does nothing.
 */
export function closeLeakedDescriptors(keep: ReadonlySet<number>): number[] {
  let entries: string[];
  try {
    entries = readdirSync('/proc/self/fdinfo');
  } catch {
    return [];
  }
  const closed: number[] = [];
  for (const entry of entries) {
    const fd = Number(entry);
    if (!Number.isInteger(fd) || fd <= 2 || keep.has(fd)) continue;
    let flags: number;
    try {
      const match = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
      if (!match) continue;
      flags = Number.parseInt(match[1] as string, 8);
    } catch {
      continue; // gone already (the descriptor readdir itself used)
    }
    if ((flags & O_CLOEXEC) !== 0) continue;
    try {
      closeSync(fd);
      closed.push(fd);
    } catch {
      // already closed
    }
  }
  return closed;
}
