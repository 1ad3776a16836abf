/**
 * Signals become master events, nothing more: the dispatcher decides what
 * they mean in the state the master is in.
 */
import type { MasterEvent } from './model.js';

/** What each signal asks of the master (see the README's "Signals"). */
export const SIGNAL_EVENTS: Partial<Record<NodeJS.Signals, MasterEvent>> = {
  SIGUSR2: { type: 'reload', source: 'SIGUSR2' },
  // Read --config again, then reload with it (docs/config.md); without --config, the same as SIGUSR2.
  SIGHUP: { type: 'reload', source: 'SIGHUP', config: true },
  SIGTERM: { type: 'stop', fast: false, source: 'SIGTERM' },
  SIGINT: { type: 'stop', fast: false, source: 'SIGINT' },
  SIGQUIT: { type: 'stop', fast: true, source: 'SIGQUIT' },
  SIGTTIN: { type: 'scale', workers: 'more', source: 'SIGTTIN' },
  SIGTTOU: { type: 'scale', workers: 'fewer', source: 'SIGTTOU' },
};

/** Routes the signals above to `dispatch`; returns a function that removes the handlers. */
export function routeSignals(dispatch: (event: MasterEvent) => void): () => void {
  const handlers = Object.entries(SIGNAL_EVENTS).map(([signal, event]) => {
    const handler = () => dispatch(event as MasterEvent);
    process.on(signal as NodeJS.Signals, handler);
    return [signal, handler] as const;
  });
  return () => {
    for (const [signal, handler] of handlers) process.off(signal as NodeJS.Signals, handler);
  };
}
