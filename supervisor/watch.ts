/**
 * `--watch`: a file change becomes a reload request, nothing more; the master
 * coalesces them like any other reload, and a broken save fails like any
 * other broken release (the old version keeps serving).
 */
import { type FSWatcher, readdirSync, statSync, watch } from 'node:fs';
import path from 'node:path';

/** A burst of saves (an editor writes, renames, touches) becomes one reload after this quiet time. */
export const WATCH_DEBOUNCE_MS = 300;

/** Folders whose changes never reload: dependencies, build output, VCS and baton's own state. */
export const WATCH_IGNORED = ['node_modules', '.git', 'dist', 'coverage', '.baton', '.cache'];

/** Whether a changed file (relative to a watched folder) is one that should reload. */
export function isWatchedChange(relativePath: string, ignored: readonly string[] = WATCH_IGNORED): boolean {
  const parts = relativePath.split(/[\\/]/);
  const name = parts.at(-1) ?? '';
  // Editors' swap and backup files: `.server.js.swp`, `server.js~`, `4913` (vim's write test).
  if (name.endsWith('~') || name.endsWith('.swp') || name.endsWith('.swx') || /^\d+$/.test(name))
    return false;
  return !parts.some((part) => ignored.includes(part));
}

/**
 * Watches `paths` (folders with everything under them, or single files) and calls `onChange` with the
 * last changed file once changes have been quiet for `debounceMs`. Returns a function that stops
 * watching. Throws if a path does not exist.
 *
 * Every folder is watched on its own, never a file and never with `recursive`: a save that writes a
 * new file and renames it over the old one (`sed -i`, editors' safe save, `git checkout`) replaces the
 * file's inode, and a watch on it (which Node's recursive watch on Linux is) goes deaf after the first
 * such save. A folder's watch sees every name in it change, whatever the file's inode.
 */
export function watchForChanges(
  paths: readonly string[],
  onChange: (file: string) => void,
  { debounceMs = WATCH_DEBOUNCE_MS, ignored = WATCH_IGNORED, onError = (_error: Error) => {} } = {},
): () => void {
  let timer: NodeJS.Timeout | undefined;
  const watchers = new Map<string, FSWatcher>();
  const changed = (file: string) => {
    clearTimeout(timer);
    timer = setTimeout(() => onChange(file), debounceMs);
  };
  /** Watches `folder` and, for a watched tree, every folder under it; `accepts` filters the names. */
  const watchFolder = (folder: string, accepts: (file: string) => boolean, tree: boolean) => {
    if (watchers.has(folder)) return;
    const watcher = watch(folder, { persistent: false }, (_event, filename) => {
      if (!filename) return;
      const file = path.join(folder, String(filename));
      if (tree && !watchers.has(file) && isFolder(file) && accepts(file)) watchTree(file, accepts);
      if (accepts(file)) changed(file);
    });
    watcher.on('error', (error) => {
      // A folder that was removed: its watch ends, the rest goes on.
      watcher.close();
      watchers.delete(folder);
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT' && isFolder(folder)) onError(error);
    });
    watchers.set(folder, watcher);
  };
  const watchTree = (folder: string, accepts: (file: string) => boolean) => {
    watchFolder(folder, accepts, true);
    for (const entry of readdirSync(folder, { withFileTypes: true })) {
      const child = path.join(folder, entry.name);
      if (entry.isDirectory() && accepts(child)) watchTree(child, accepts);
    }
  };
  for (const watched of paths) {
    if (statSync(watched).isDirectory()) {
      watchTree(watched, (file) => isWatchedChange(path.relative(watched, file), ignored));
    } else {
      const resolved = path.resolve(watched);
      watchFolder(path.dirname(resolved), (file) => file === resolved, false);
    }
  }
  return () => {
    clearTimeout(timer);
    for (const watcher of watchers.values()) watcher.close();
    watchers.clear();
  };
}

function isFolder(file: string): boolean {
  try {
    return statSync(file).isDirectory();
  } catch {
    return false;
  }
}
