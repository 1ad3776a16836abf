/**
 * `--watch`: a file change becomes a reload request, nothing more; the master
 * coalesces them like any other reload, and a broken save fails like any
 * other broken release (the old version keeps serving).
 */
import { type FSWatcher, statSync, watch } from 'node:fs';
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
 * Watches `paths` (folders recursively, or single files) and calls `onChange`
 * with the last changed file once changes have been quiet for `debounceMs`.
 * Returns a function that stops watching. Throws if a path does not exist.
 */
export function watchForChanges(
  paths: readonly string[],
  onChange: (file: string) => void,
  { debounceMs = WATCH_DEBOUNCE_MS, ignored = WATCH_IGNORED, onError = (_error: Error) => {} } = {},
): () => void {
  let timer: NodeJS.Timeout | undefined;
  let lastFile = '';
  const watchers: FSWatcher[] = paths.map((watched) => {
    const isFolder = statSync(watched).isDirectory();
    const watcher = watch(watched, { recursive: isFolder, persistent: false }, (_event, filename) => {
      const relative = filename ? String(filename) : '';
      if (isFolder && relative && !isWatchedChange(relative, ignored)) return;
      lastFile = isFolder ? path.join(watched, relative) : watched;
      clearTimeout(timer);
      timer = setTimeout(() => onChange(lastFile), debounceMs);
    });
    watcher.on('error', onError);
    return watcher;
  });
  return () => {
    clearTimeout(timer);
    for (const watcher of watchers) watcher.close();
  };
}
