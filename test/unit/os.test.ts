/**
 * The OS seam's spawn (supervisor/os.ts) where spawn(2) fails at once: a real refusal from the kernel
 * (an environment string over MAX_ARG_STRLEN gives E2BIG, which Node throws rather than emits). The
 * worker must end like one that could not start, and nothing it was given may stay open in the master.
 */
import { readdirSync } from 'node:fs';
import { describe, expect, test } from '@jest/globals';
import { realOs } from '../../supervisor/os.js';
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
