/**
 * The sd_notify(3) words a worker says, on its NOTIFY_SOCKET or on the notify pipe alike (docs/contract.md
 * lists what baton does with each): parsed here, acted on by readiness and the watchdog.
 */
/** One sd_notify line a worker sent (notify pipe or NOTIFY_SOCKET), by kind; see sd_notify(3). */
export type NotifyLine =
  | { kind: 'ready' }
  | { kind: 'status'; text: string }
  | { kind: 'stopping' }
  | { kind: 'errno'; errno: number }
  | { kind: 'mainpid'; pid: number }
  | { kind: 'extend-timeout'; ms: number }
  | { kind: 'watchdog' }
  | { kind: 'watchdog-trigger' };

/** The longest STATUS= text kept. */
const MAX_STATUS_LENGTH = 200;

/** Reads one `KEY=VALUE` line; undefined for words baton does not act on (RELOADING=1, ...). */
export function parseNotifyLine(line: string): NotifyLine | undefined {
  const equals = line.indexOf('=');
  if (equals <= 0) return undefined;
  const key = line.slice(0, equals);
  const value = line.slice(equals + 1);
  const whole = /^\d{1,15}$/.test(value) ? Number(value) : undefined;
  switch (key) {
    case 'READY':
      return value === '1' ? { kind: 'ready' } : undefined;
    case 'WATCHDOG':
      return value === '1'
        ? { kind: 'watchdog' }
        : value === 'trigger'
          ? { kind: 'watchdog-trigger' }
          : undefined;
    case 'STOPPING':
      return value === '1' ? { kind: 'stopping' } : undefined;
    case 'STATUS':
      return { kind: 'status', text: printable(value).slice(0, MAX_STATUS_LENGTH) };
    case 'ERRNO':
      return whole === undefined ? undefined : { kind: 'errno', errno: whole };
    case 'MAINPID':
      return whole === undefined || whole < 1 ? undefined : { kind: 'mainpid', pid: whole };
    case 'EXTEND_TIMEOUT_USEC':
      return whole === undefined ? undefined : { kind: 'extend-timeout', ms: Math.ceil(whole / 1000) };
    default:
      return undefined;
  }
}

/** The text with every control character (a terminal escape, a NUL) turned into a space. */
function printable(text: string): string {
  return [...text].map((char) => (char.charCodeAt(0) < 0x20 || char === '\u007f' ? ' ' : char)).join('');
}
