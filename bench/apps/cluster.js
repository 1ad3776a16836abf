// @ts-check
/**
 * A textbook `node:cluster` primary, as a user of node:cluster writes one: `BENCH_WORKERS` workers
 * (2 by default) of `BENCH_CLUSTER_APP` (bench/apps/hello.js by default) with Node's default
 * scheduling (round-robin: the primary accepts every connection and passes it to a worker); a port
 * the workers listen on is one port shared through the primary.
 *
 * SIGUSR2 is a rolling reload, the way Node's documentation shows the parts: fork as many new workers
 * (each reads the app from disk again), wait until each is listening on `BENCH_LISTENERS` sockets
 * (1 by default), then `disconnect()` the old ones, with `kill()` after a timeout. A new worker that
 * exits before it listens fails the reload: the other new ones are killed and the old ones serve on.
 * A serving worker that dies is forked again. A reload asked during a reload is ignored.
 *
 * For the bench, it prints what it does as JSON lines in the words of baton's log (`generation
 * starting`, `generation active`, `generation retired`, `reload failed`, `worker exited`), so that
 * the harness times it as it times baton.
 */
import cluster from 'node:cluster';
import { fileURLToPath } from 'node:url';

const WORKERS = Number(process.env.BENCH_WORKERS) || 2;
const LISTENERS = Number(process.env.BENCH_LISTENERS) || 1;
/** What Node's documentation gives a disconnecting worker before `kill()`. */
const KILL_TIMEOUT_MS = 2000;

cluster.setupPrimary({
  exec: process.env.BENCH_CLUSTER_APP || fileURLToPath(new URL('./hello.js', import.meta.url)),
});

/** @param {string} msg @param {Record<string, unknown>} [fields] */
const log = (msg, fields = {}) => console.log(JSON.stringify({ time: Date.now(), msg, ...fields }));

/** @typedef {{ gen: number, index: number, listening: number, failedGen?: boolean }} WorkerInfo */
/** @type {Map<import('node:cluster').Worker, WorkerInfo>} */
const workers = new Map();
let serving = 1;
/** The last generation started, failed ones included (a number is never reused, as in baton). */
let lastGen = 1;
let reloading = false;

/**
 * Forks the `index`-th worker of generation `gen`; resolves once it listens on every socket, rejects
 * if it exits first.
 * @param {number} gen @param {number} index @returns {Promise<import('node:cluster').Worker>}
 */
function fork(gen, index) {
  const worker = cluster.fork({ BENCH_APP_VERSION: 'cluster' });
  /** @type {WorkerInfo} */
  const info = { gen, index, listening: 0 };
  workers.set(worker, info);
  return new Promise((resolve, reject) => {
    worker.on('listening', () => {
      info.listening += 1;
      if (info.listening === LISTENERS) resolve(worker);
    });
    worker.on('exit', (code, signal) => {
      workers.delete(worker);
      log('worker exited', { gen, worker: index, pid: worker.process.pid, code, signal });
      reject(new Error(`worker ${index} exited with ${signal ?? `code ${code}`} before it listened`));
      // A serving worker that died on its own is replaced.
      if (gen === serving && !worker.exitedAfterDisconnect && !info.failedGen)
        void fork(gen, index).catch(() => {});
    });
  });
}

/** Disconnects an old worker: it stops taking connections and exits once its own are done. */
function retire(/** @type {import('node:cluster').Worker} */ worker) {
  const timer = setTimeout(() => worker.kill(), KILL_TIMEOUT_MS);
  worker.on('exit', () => clearTimeout(timer));
  worker.disconnect();
}

async function reload() {
  if (reloading) return log('reload already running, ignored');
  reloading = true;
  lastGen += 1;
  const gen = lastGen;
  log('generation starting', { gen });
  const previous = serving;
  const started = Array.from({ length: WORKERS }, (_, index) => fork(gen, index));
  try {
    await Promise.all(started);
    serving = gen;
    log('generation active', { gen });
    // The old ones as they are now: one that died during the start was replaced by another.
    const old = [...workers].filter(([, info]) => info.gen !== gen).map(([worker]) => worker);
    await Promise.all(
      old.map((worker) => {
        if (worker.isDead()) return undefined;
        const exited = new Promise((resolve) => worker.once('exit', resolve));
        retire(worker);
        return exited;
      }),
    );
    log('generation retired', { gen: previous });
  } catch (error) {
    log('reload failed', { gen, reason: error instanceof Error ? error.message : String(error) });
    for (const [worker, info] of workers) {
      if (info.gen === gen) {
        info.failedGen = true;
        worker.kill('SIGKILL');
      }
    }
    await Promise.allSettled(started);
  } finally {
    reloading = false;
  }
}

process.on('SIGUSR2', () => void reload());
Promise.all(Array.from({ length: WORKERS }, (_, index) => fork(serving, index))).then(
  () => log('generation active', { gen: serving }),
  (error) => log('start failed', { reason: error.message }),
);
