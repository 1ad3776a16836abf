/**
 * The IPC message table (child/protocol.ts): every kind in both directions is read by its guard, and
 * anything else is nothing, never a throw.
 */
import { describe, expect, test } from '@jest/globals';
import { injectedMessage, readMasterMessage, readWorkerMessage } from '../../child/protocol.js';

describe('the IPC message table', () => {
  test('a worker message of each kind is read with its kind', () => {
    const messages = [
      'ready',
      { baton: 'listening' },
      { baton: 'connections', count: 3 },
      { baton: 'exposed', names: ['rewards'] },
      { baton: 'injected', id: 1, ok: true },
      { baton: 'handoff-hooks', handsOff: ['game'], adopts: [] },
      { baton: 'handoff-connection', id: 1, listener: 'game', state: null },
      { baton: 'handoff-finished', offered: 1, sent: 1, kept: 0 },
      { baton: 'adopt-refused', relay: 2 },
      { baton: 'adoptions', adopted: [1], refused: [{ relay: 2, reason: 'threw' }] },
    ];
    expect(messages.map((message) => readWorkerMessage(message)?.kind)).toEqual([
      'ready',
      'listening',
      'connections',
      'exposed',
      'injected',
      'handoff-hooks',
      'handoff-connection',
      'handoff-finished',
      'adopt-refused',
      'adoptions',
    ]);
    expect(readWorkerMessage({ baton: 'connections', count: 3 })?.message).toEqual({
      baton: 'connections',
      count: 3,
    });
  });

  test('a worker message that is malformed, unknown or a master message is nothing', () => {
    for (const message of [
      undefined,
      null,
      42,
      'READY',
      { baton: 'connections', count: -1 },
      { baton: 'exposed', names: [1] },
      { baton: 'adoptions', adopted: [1], refused: [{ relay: 2 }] },
      { baton: 'toString' },
      { baton: 'inject', id: 1, source: '', hash: '', file: '' },
    ]) {
      expect(readWorkerMessage(message)).toBeUndefined();
    }
  });

  test('a master message is read by its kind; a worker message is not one', () => {
    expect(readMasterMessage({ baton: 'inject', id: 2, source: 'x', hash: 'h', file: 'p.mjs' })?.kind).toBe(
      'inject',
    );
    expect(readMasterMessage({ baton: 'handoff-go', relays: [1] })?.kind).toBe('handoff-go');
    expect(readMasterMessage({ baton: 'inject', id: 'x' })).toBeUndefined();
    expect(readMasterMessage({ baton: 'ready' })).toBeUndefined();
    expect(readMasterMessage('ready')).toBeUndefined();
  });

  test("a patch's answer is ok, or carries its error", () => {
    expect(injectedMessage(3, undefined)).toEqual({ baton: 'injected', id: 3, ok: true });
    const error = { message: 'TypeError: x', stack: undefined };
    expect(injectedMessage(3, error)).toEqual({ baton: 'injected', id: 3, ok: false, error });
    expect(readWorkerMessage(injectedMessage(3, error))?.kind).toBe('injected');
  });
});
