// @ts-check
/**
 * A textbook `node:cluster` primary for the cost scenario: `BENCH_WORKERS` workers (2 by default) of
 * hello.js, with Node's default scheduling (round-robin: the primary accepts every connection and
 * passes it to a worker). Port 0 in the workers is one port shared through the primary.
 */
import cluster from 'node:cluster';
import { fileURLToPath } from 'node:url';

const workers = Number(process.env.BENCH_WORKERS) || 2;
cluster.setupPrimary({ exec: fileURLToPath(new URL('./hello.js', import.meta.url)) });
for (let index = 0; index < workers; index++) cluster.fork({ BENCH_APP_VERSION: 'cluster' });
