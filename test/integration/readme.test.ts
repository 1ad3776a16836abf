/** The README shows the CLI as it is: its usage blocks are the real `--help` output. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, test } from '@jest/globals';
import { execa } from 'execa';
import { BATON_BIN, REPO_ROOT } from '../helpers/processes.js';

const README = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');

/** The ```text block that follows a heading. */
function blockAfter(heading: string): string {
  const start = README.indexOf(heading);
  expect(start).toBeGreaterThanOrEqual(0);
  const open = README.indexOf('```text\n', start) + '```text\n'.length;
  return README.slice(open, README.indexOf('\n```', open));
}

describe('README', () => {
  test.each([
    ['### `baton`', []],
    ['### `baton start`', ['start']],
  ])('%s shows the real --help', async (heading, args) => {
    const help = await execa(process.execPath, [BATON_BIN, ...(args as string[]), '--help'], {
      env: { COLUMNS: '100' },
    });
    expect(blockAfter(heading)).toBe(help.stdout.trimEnd());
  });

  test('the two commands are the ones package.json runs', () => {
    expect(README).toContain('npm ci && npm start');
    expect(README).toContain('npm ci && npm test');
  });
});

describe('docs/control.md', () => {
  const CONTROL = readFileSync(join(REPO_ROOT, 'docs', 'control.md'), 'utf8');

  test.each(['reload', 'status', 'scale', 'inject', 'stop'])(
    'the usage quoted for baton %s is the start of its real --help',
    async (command) => {
      const heading = CONTROL.indexOf(`### \`baton ${command}\``);
      expect(heading).toBeGreaterThanOrEqual(0);
      const open = CONTROL.indexOf('```text\n', heading) + '```text\n'.length;
      const quoted = CONTROL.slice(open, CONTROL.indexOf('\n```', open));
      const help = await execa(process.execPath, [BATON_BIN, command, '--help']);
      expect(help.stdout.startsWith(quoted)).toBe(true);
    },
  );
});
