/**
 * The example app under baton, as most integration tests need it: an HTTP and
 * a game listener on free ports of 127.0.0.1, generation 1 active.
 */
import { type AppDir, type BatonProcess, startBaton } from './processes.js';

/** A running master of the example app, with its ports read back from the log. */
export interface ExampleApp {
  baton: BatonProcess;
  httpPort: number;
  gamePort: number;
}

/**
 * Starts `baton start [...args] --listen http=... --listen game=... --workers N -- node server.js`
 * in `app.dir`, and waits until generation 1 is active.
 */
export async function startExampleApp(
  app: AppDir,
  {
    args = [],
    env = {},
    workers = 2,
  }: { args?: string[]; env?: Record<string, string>; workers?: number } = {},
): Promise<ExampleApp> {
  const baton = startBaton(
    [
      'start',
      ...args,
      '--listen',
      'http=tcp://127.0.0.1:0',
      '--listen',
      'game=tcp://127.0.0.1:0',
      '--workers',
      String(workers),
      '--',
      process.execPath,
      'server.js',
    ],
    { cwd: app.dir, env },
  );
  const httpPort = await baton.listenPort('http');
  const gamePort = await baton.listenPort('game');
  await baton.waitForLogMsg('generation active', { gen: 1 }, 20_000);
  return { baton, httpPort, gamePort };
}
