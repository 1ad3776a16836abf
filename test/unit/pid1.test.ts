import { describe, expect, test } from '@jest/globals';
import { PID1_WARNING, pid1Warning } from '../../supervisor/pid1.js';

describe('pid1Warning', () => {
  test('PID 1 gets one line that says what goes wrong and names the fix', () => {
    const warning = pid1Warning(1);
    expect(warning).toBe(PID1_WARNING);
    expect(warning).not.toMatch(/\n/);
    expect(warning).toMatch(/PID 1/);
    expect(warning).toMatch(/not be reaped/);
    expect(warning).toMatch(/tini/);
    expect(warning).toMatch(/docker run --init/);
  });

  test.each([2, 7, 4242, 4_194_304])('pid %p gets none', (pid) => {
    expect(pid1Warning(pid)).toBeUndefined();
  });
});
