/**
 * A textbook `node:cluster` primary as a peer of the bench (bench/apps/cluster.js): the example app
 * as its workers, on ports it is told (the primary binds them, as PM2's daemon does), reloaded by
 * SIGUSR2 with a rolling reload; its JSON lines speak baton's words, so `reload` of the harness times it.
 */
import { join } from 'node:path';
import { startProcess } from '../test/helpers/processes.js';
import {
  type AppDir,
  type BatonProcess,
  CLUSTER_APP,
  freeFixedPort,
  NODE,
  START_TIMEOUT_MS,
} from './harness.js';

/** A running primary over the example app, and the port its HTTP listener takes. */
export interface ClusterPeer {
  primary: BatonProcess;
  httpPort: number;
}

/** Starts bench/apps/cluster.js over the example app in `app` with `workers` workers; resolves once they all listen. */
export async function startClusterPeer(app: AppDir, workers: number): Promise<ClusterPeer> {
  const httpPort = await freeFixedPort();
  const primary = startProcess(NODE, [CLUSTER_APP], {
    cwd: app.dir,
    env: {
      PORT: String(httpPort),
      GAME_PORT: String(await freeFixedPort()),
      BENCH_CLUSTER_APP: join(app.dir, 'server.js'),
      BENCH_WORKERS: String(workers),
      // The example app listens on its HTTP and its game port.
      BENCH_LISTENERS: '2',
    },
  });
  try {
    await primary.waitForLogMsg('generation active', { gen: 1 }, START_TIMEOUT_MS);
    return { primary, httpPort };
  } catch (error) {
    await primary.killTree();
    throw error;
  }
}
