// Rewrites the README's usage blocks with the real `--help` output (test/integration/readme.test.ts
// checks that they agree). Run after changing an option: npm run docs:help
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';

const README = new URL('../README.md', import.meta.url);
const BATON = new URL('../bin/baton.js', import.meta.url).pathname;
const BLOCKS = [
  ['### `baton`', []],
  ['### `baton start`', ['start']],
];

let text = readFileSync(README, 'utf8');
for (const [heading, args] of BLOCKS) {
  const help = execFileSync(process.execPath, [BATON, ...args, '--help'], { encoding: 'utf8' }).trimEnd();
  const at = text.indexOf(heading);
  if (at === -1) throw new Error(`README.md has no heading ${heading}`);
  const open = text.indexOf('```text\n', at) + '```text\n'.length;
  const close = text.indexOf('\n```', open);
  text = text.slice(0, open) + help + text.slice(close);
}
writeFileSync(README, text);
