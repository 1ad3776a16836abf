/**
 * The parts of `baton reexec` (supervisor/reexec.ts) that can fail without a master: the state file
 * that the new program refuses, and an execve the kernel refuses, which must leave the master as it
 * was (Node's own process.execve aborts the process instead).
 */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from '@jest/globals';
import { closeDescriptor, isCloseOnExec, unixStreamPair } from '../../supervisor/linux.js';
import { executeProgram, ReexecRefused, readState, STATE_FORMAT } from '../../supervisor/reexec.js';

const dir = mkdtempSync(join(tmpdir(), 'baton-reexec-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('executeProgram', () => {
  test('an execve the kernel refuses (no such program) throws ReexecRefused; the descriptors are close-on-exec again and the state file is gone', () => {
    const file = join(dir, 'state.json');
    writeFileSync(file, '{}');
    const [left, right] = unixStreamPair();
    try {
      expect(() => executeProgram('/nowhere/bin/baton.js', file, [left], join(dir, 'no-node'))).toThrow(
        ReexecRefused,
      );
      expect(() => executeProgram('/nowhere/bin/baton.js', file, [left], join(dir, 'no-node'))).toThrow(
        /could not be executed: execve failed: ENOENT/,
      );
      expect(isCloseOnExec(left)).toBe(true);
      expect(existsSync(file)).toBe(false);
    } finally {
      closeDescriptor(left);
      closeDescriptor(right);
    }
  });
});

describe('readState', () => {
  const write = (value: unknown) => {
    const file = join(dir, `state-${Math.random()}.json`);
    writeFileSync(file, JSON.stringify(value));
    return file;
  };
  const whole = {
    format: STATE_FORMAT,
    pid: 4242,
    start: {},
    master: { options: {}, listeners: [], current: [], generations: [], nextGenerationId: 2 },
    controlFd: 9,
    programs: [],
    history: [],
    connections: [],
  };

  test('reads a state of its own format, for its own pid', () => {
    expect(readState(write(whole), 4242).controlFd).toBe(9);
  });

  test('refuses another format, another pid, a missing field, or no JSON, in one line naming it', () => {
    expect(() => readState(write({ ...whole, format: 2 }), 4242)).toThrow(
      `the carried state has format 2, and this baton reads format ${STATE_FORMAT}`,
    );
    expect(() => readState(write(whole), 1)).toThrow("the carried state is master 4242's, not 1's");
    expect(() => readState(write({ ...whole, controlFd: undefined }), 4242)).toThrow(
      'the carried state has no `controlFd`',
    );
    expect(() =>
      readState(write({ ...whole, master: { ...whole.master, current: undefined } }), 4242),
    ).toThrow('the carried state has no `master.current`');
    const broken = join(dir, 'broken.json');
    writeFileSync(broken, '{"format":');
    expect(() => readState(broken, 4242)).toThrow(/^cannot read the carried state/);
  });
});
