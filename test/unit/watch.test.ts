import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, test } from '@jest/globals';
import { isWatchedChange, watchForChanges } from '../../supervisor/watch.js';
import { waitFor } from '../helpers/wait.js';

describe('isWatchedChange', () => {
  test('source files reload; dependencies, build output and editor droppings do not', () => {
    expect(isWatchedChange('server.js')).toBe(true);
    expect(isWatchedChange('lib/routes/users.js')).toBe(true);
    expect(isWatchedChange('VERSION')).toBe(true);
    expect(isWatchedChange('node_modules/x/index.js')).toBe(false);
    expect(isWatchedChange('.git/index')).toBe(false);
    expect(isWatchedChange('dist/app.js')).toBe(false);
    expect(isWatchedChange('.server.js.swp')).toBe(false);
    expect(isWatchedChange('server.js~')).toBe(false);
    expect(isWatchedChange('4913')).toBe(false);
  });
});

describe('watchForChanges', () => {
  test('a burst of saves becomes one change; ignored folders none', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'baton-watch-'));
    mkdirSync(join(dir, 'node_modules'));
    const changes: string[] = [];
    const stop = watchForChanges([dir], (file) => changes.push(file), { debounceMs: 100 });
    try {
      for (let i = 0; i < 5; i++) writeFileSync(join(dir, 'server.js'), `// save ${i}`);
      await waitFor(() => changes.length > 0 || undefined, { timeoutMs: 3000, what: 'a change reported' });
      expect(changes).toEqual([join(dir, 'server.js')]);
      writeFileSync(join(dir, 'node_modules', 'dep.js'), 'x');
      writeFileSync(join(dir, 'VERSION'), '2');
      await waitFor(() => changes.length > 1 || undefined, { timeoutMs: 3000, what: 'the VERSION change' });
      expect(changes.at(-1)).toBe(join(dir, 'VERSION'));
      expect(changes).toHaveLength(2);
    } finally {
      stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
