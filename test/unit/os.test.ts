/**
 * The OS seam's spawn (supervisor/os.ts) where spawn(2) fails at once: a real refusal from the kernel
 * (an environment string over MAX_ARG_STRLEN gives E2BIG, which Node throws rather than emits). The
 * worker must end like one that could not start, and nothing it was given may stay open in the master.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { describe, expect, test } from '@jest/globals';
import { ORPHANED_EXIT_CODE, realOs, trampolineArgs } from '../../supervisor/os.js';
import { waitFor } from '../helpers/wait.js';

function openDescriptors(): number {
  return readdirSync('/proc/self/fd').length;
}

describe('realOs.spawnWorker when spawn(2) refuses', () => {
  test('reports an exit (null, null) with the reason on stderr, and leaks no descriptor', async () => {
    const before = openDescriptors();
    const stderr: string[] = [];
    const exits: Array<[number | null, NodeJS.Signals | null]> = [];
    const worker = realOs.spawnWorker(
      {
        command: '/bin/true',
        args: [],
        // One string longer than the kernel's MAX_ARG_STRLEN (128 KiB): execve would say E2BIG.
        env: { PATH: '/usr/bin:/bin', HUGE: 'x'.repeat(256 * 1024) },
        listenerFds: [],
        cwd: '/',
        parentDeathSignal: 'SIGTERM',
      },
      {
        onMessage: () => {},
        onStderr: (chunk) => stderr.push(chunk.toString()),
        onNotify: () => {},
        onExit: (exitCode, signal) => exits.push([exitCode, signal]),
      },
    );
    await waitFor(() => exits.length > 0, { timeoutMs: 5000, what: 'the failed worker to exit' });
    expect(exits).toEqual([[null, null]]);
    expect(stderr.join('')).toMatch(/^baton: the worker could not be started: .*E2BIG/);
    expect(worker.pid).toBeUndefined();
    expect(worker.kill('SIGTERM')).toBe(false);
    expect(openDescriptors()).toBe(before);
  });
});

const HAS_SETPRIV = existsSync('/usr/bin/setpriv') || existsSync('/bin/setpriv');
const withSetpriv = HAS_SETPRIV ? test : test.skip;
const skipped = HAS_SETPRIV ? '' : ' (skipped: no util-linux setpriv here, so no death signal to check)';

/**
 * The trampoline sets the death signal with setpriv, then runs the command only if its parent is still
 * the master: a master killed between the fork and setpriv's prctl would otherwise leave a worker that
 * no signal ever reaches, holding the listeners. The real sh and setpriv run here; the test process
 * stands for the master, and naming another pid stands for a master that died in that window.
 */
describe('the worker trampoline (setpriv --pdeathsig)', () => {
  const request = { command: '/bin/echo', args: ['ran', '$PPID'], parentDeathSignal: 'SIGTERM' as const };

  withSetpriv(
    `runs the command, with its arguments untouched, while the master is its parent${skipped}`,
    () => {
      const run = spawnSync('/bin/sh', trampolineArgs(request, process.pid), { encoding: 'utf8' });
      expect(run.stderr).toBe('');
      expect(run.stdout).toBe('ran $PPID\n');
      expect(run.status).toBe(0);
    },
  );

  withSetpriv(`runs nothing and exits 70 when its parent is no longer the master${skipped}`, () => {
    const run = spawnSync('/bin/sh', trampolineArgs(request, process.ppid), { encoding: 'utf8' });
    expect(run.stdout).toBe('');
    expect(run.status).toBe(ORPHANED_EXIT_CODE);
  });
});
