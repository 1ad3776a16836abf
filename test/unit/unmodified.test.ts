/** The master's side of running apps as they are: the preload's environment, the signal targets. */
import { describe, expect, test } from '@jest/globals';
import { SignalTarget } from '../../supervisor/main-pid.js';
import { PRELOAD_URL, preloadEnv } from '../../supervisor/unmodified.js';

const HTTP = { name: 'http', kind: 'tcp', port: 8080, address: '127.0.0.1' } as const;
const SOCK = { name: 'sock', kind: 'unix', port: 0, address: '/run/app.sock' } as const;

describe('preloadEnv', () => {
  test("appends the preload to the user's NODE_OPTIONS, once", () => {
    const env = preloadEnv([HTTP], { NODE_OPTIONS: '--max-old-space-size=512' });
    expect(env.NODE_OPTIONS).toBe(`--max-old-space-size=512 --import=${PRELOAD_URL}`);
    expect(preloadEnv([HTTP], { NODE_OPTIONS: env.NODE_OPTIONS }).NODE_OPTIONS).toBe(env.NODE_OPTIONS);
    expect(preloadEnv([HTTP], {}).NODE_OPTIONS).toBe(`--import=${PRELOAD_URL}`);
  });

  test("sets PORT to the first TCP listener's port, unless the environment has one", () => {
    expect(preloadEnv([SOCK, HTTP], {}).PORT).toBe('8080');
    expect(preloadEnv([HTTP], { PORT: '3000' })).not.toHaveProperty('PORT');
    expect(preloadEnv([SOCK], {})).not.toHaveProperty('PORT');
  });

  test('the preload file is an absolute file URL (spaces percent-encoded: NODE_OPTIONS splits on them)', () => {
    expect(PRELOAD_URL).toMatch(/^file:\/\/\/\S+\/child\/preload\.js$/);
  });
});

describe('SignalTarget', () => {
  test('a MAINPID outside the worker’s process group is never signalled', () => {
    const target = new SignalTarget(999_999);
    target.onNotify(`MAINPID=${process.pid}`);
    expect(target.pid).toBe(999_999);
    const sent: NodeJS.Signals[] = [];
    target.kill('SIGTERM', (signal) => {
      sent.push(signal);
      return true;
    });
    expect(sent).toEqual(['SIGTERM']);
  });
});
