/**
 * The one pino root logger. JSON lines on stdout by default; `--pretty` makes
 * them readable for people (pino-pretty, in this thread, synchronously, so no
 * line is lost when the master exits). pino-pretty is loaded only then: a master
 * that logs JSON never pays for it.
 */
import { type Logger, pino } from 'pino';
import type { LogLevel } from './options.js';

export type { Logger } from 'pino';

/** Creates the master's root logger; context goes in `logger.child({ gen, worker, pid })`. */
export async function createLogger(options: { level: LogLevel; pretty: boolean }): Promise<Logger> {
  const base = { level: options.level, base: {}, messageKey: 'msg' };
  if (!options.pretty) return pino(base, pino.destination({ fd: 1, sync: true }));
  const { default: pretty } = await import('pino-pretty');
  return pino(
    base,
    pretty({
      sync: true,
      colorize: process.stdout.isTTY === true,
      translateTime: 'HH:MM:ss.l',
      ignore: 'hostname',
      messageFormat: '{msg}',
      singleLine: true,
    }),
  );
}
