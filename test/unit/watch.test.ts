import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
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

  test('saves that replace the file (written aside, renamed over it, as sed -i and safe-save editors do) are seen every time, in folders made after the start too, and for a single watched file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'baton-watch-'));
    mkdirSync(join(dir, 'lib'));
    writeFileSync(join(dir, 'lib', 'routes.js'), '// 0');
    writeFileSync(join(dir, 'VERSION'), '1');
    const changes: string[] = [];
    const single: string[] = [];
    const stop = watchForChanges([dir], (file) => changes.push(file), { debounceMs: 50 });
    const stopSingle = watchForChanges([join(dir, 'VERSION')], (file) => single.push(file), {
      debounceMs: 50,
    });
    const replace = (file: string, text: string) => {
      const aside = join(dir, 'lib', '.save.tmp');
      writeFileSync(aside, text);
      renameSync(aside, file);
    };
    try {
      for (let save = 1; save <= 3; save++) {
        replace(join(dir, 'lib', 'routes.js'), `// ${save}`);
        await waitFor(() => changes.length >= save || undefined, {
          timeoutMs: 3000,
          what: `save ${save} seen`,
        });
        expect(changes.at(-1)).toBe(join(dir, 'lib', 'routes.js'));
      }
      mkdirSync(join(dir, 'lib', 'admin'));
      await waitFor(() => changes.length >= 4 || undefined, { timeoutMs: 3000, what: 'the new folder seen' });
      writeFileSync(join(dir, 'lib', 'admin', 'panel.js'), '// new');
      await waitFor(() => changes.at(-1) === join(dir, 'lib', 'admin', 'panel.js') || undefined, {
        timeoutMs: 3000,
        what: 'a file in the new folder seen',
      });
      for (let save = 1; save <= 2; save++) {
        replace(join(dir, 'VERSION'), String(save + 1));
        await waitFor(() => single.length >= save || undefined, {
          timeoutMs: 3000,
          what: `VERSION save ${save} seen`,
        });
      }
      expect(single).toEqual([join(dir, 'VERSION'), join(dir, 'VERSION')]);
    } finally {
      stop();
      stopSingle();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
