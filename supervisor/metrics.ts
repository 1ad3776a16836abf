/**
 * `--metrics tcp://127.0.0.1:9100`: a Prometheus endpoint served by the master
 * on a socket of its own (never on the app's listeners), with prom-client.
 * Everything is read from the master's snapshot and progress reports when
 * scraped or reported; nothing here changes the master.
 */
import http from 'node:http';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { UsageSampler } from './control/usage.js';
import { ListenError } from './errors.js';
import type { Logger } from './log.js';
import type { MasterSnapshot, Progress } from './model.js';
import type { InetListenSpec } from './options.js';

/** The master as the metrics endpoint sees it. */
export interface MeasuredMaster {
  snapshot(): MasterSnapshot;
  follow(follower: (progress: Progress) => void): () => void;
}

/** Buckets (seconds) for the time a new generation takes to be ready, and an old one to drain. */
const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800];

/** Builds the registry of baton's series over a master. */
export function createMetrics(
  master: MeasuredMaster,
  usage?: Pick<UsageSampler, 'of'>,
): { registry: Registry; stop(): void } {
  const registry = new Registry();
  const latest = () => master.snapshot();

  new Gauge({
    name: 'baton_generations',
    help: 'Generations by state (retired and failed ones are remembered for a while).',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      this.reset();
      for (const generation of latest().generations) this.inc({ state: generation.state });
    },
  });
  new Gauge({
    name: 'baton_workers',
    help: 'Workers that have not exited, by state and generation.',
    labelNames: ['state', 'generation'],
    registers: [registry],
    collect() {
      this.reset();
      for (const generation of latest().generations) {
        for (const worker of generation.workers) {
          if (worker.state !== 'exited') this.inc({ state: worker.state, generation: String(generation.id) });
        }
      }
    },
  });
  new Gauge({
    name: 'baton_worker_restarts',
    help: 'Restarts of crashed workers, per generation.',
    labelNames: ['generation'],
    registers: [registry],
    collect() {
      this.reset();
      for (const generation of latest().generations)
        this.set({ generation: String(generation.id) }, generation.restarts);
    },
  });
  new Gauge({
    name: 'baton_connections',
    help: 'Open connections per generation (reported by the child API, or counted in /proc).',
    labelNames: ['generation'],
    registers: [registry],
    collect() {
      this.reset();
      for (const generation of latest().generations) {
        const open = generation.workers.reduce(
          (sum, worker) => sum + (worker.state === 'exited' ? 0 : (worker.connections ?? 0)),
          0,
        );
        if (generation.state !== 'retired' && generation.state !== 'failed')
          this.set({ generation: String(generation.id) }, open);
      }
    },
  });
  const perWorker = (
    name: string,
    help: string,
    read: (usageOf: { cpu: number; memory: number }) => number,
  ) =>
    new Gauge({
      name,
      help,
      labelNames: ['generation', 'worker', 'pid'],
      registers: [registry],
      collect() {
        this.reset();
        for (const generation of latest().generations) {
          for (const worker of generation.workers) {
            const sampled = worker.state === 'exited' ? undefined : usage?.of(worker.pid);
            if (sampled)
              this.set(
                { generation: String(generation.id), worker: String(worker.index), pid: String(worker.pid) },
                read(sampled),
              );
          }
        }
      },
    });
  perWorker(
    'baton_worker_cpu_percent',
    'CPU of each worker, in percent of one core, sampled every few seconds.',
    (u) => u.cpu,
  );
  perWorker(
    'baton_worker_memory_bytes',
    'Resident memory of each worker, sampled every few seconds.',
    (u) => u.memory,
  );

  const reloads = new Counter({
    name: 'baton_reloads_total',
    help: 'Reloads by outcome: active (the new generation serves) or failed.',
    labelNames: ['outcome'],
    registers: [registry],
  });
  const readySeconds = new Histogram({
    name: 'baton_reload_ready_seconds',
    help: 'Time from a reload until every worker of the new generation was ready.',
    buckets: DURATION_BUCKETS,
    registers: [registry],
  });
  const drainSeconds = new Histogram({
    name: 'baton_drain_seconds',
    help: 'Time an old generation took to drain, forced or not.',
    labelNames: ['forced'],
    buckets: DURATION_BUCKETS,
    registers: [registry],
  });
  const sessions = new Counter({
    name: 'baton_sessions_total',
    help: 'Live sessions at a reload, by outcome: moved to the new version, kept on the old one, or failed.',
    labelNames: ['outcome'],
    registers: [registry],
  });
  const replacements = new Counter({
    name: 'baton_worker_replacements_total',
    help: 'Serving workers replaced without a reload, by reason: memory (--max-memory) or watchdog (--watchdog).',
    labelNames: ['reason'],
    registers: [registry],
  });
  for (const reason of ['memory', 'watchdog']) replacements.inc({ reason }, 0);
  for (const outcome of ['moved', 'kept', 'failed']) sessions.inc({ outcome }, 0);
  reloads.inc({ outcome: 'active' }, 0);
  reloads.inc({ outcome: 'failed' }, 0);
  const unfollow = master.follow((progress) => {
    if (progress.kind === 'generation-active' && progress.generation > 1) {
      reloads.inc({ outcome: 'active' });
      readySeconds.observe(progress.readyMs / 1000);
    } else if (progress.kind === 'reload-failed') {
      reloads.inc({ outcome: 'failed' });
    } else if (progress.kind === 'sessions-moved') {
      sessions.inc({ outcome: 'moved' }, progress.moved);
      sessions.inc({ outcome: 'kept' }, progress.kept);
      sessions.inc({ outcome: 'failed' }, progress.failed);
    } else if (progress.kind === 'worker-replacing') {
      replacements.inc({ reason: progress.reason });
    } else if (progress.kind === 'generation-retired') {
      drainSeconds.observe({ forced: String(progress.forced) }, progress.drainMs / 1000);
    }
  });
  return { registry, stop: unfollow };
}

/** The metrics endpoint: GET /metrics in Prometheus text format, on its own socket. */
export class MetricsServer {
  private constructor(
    private readonly server: http.Server,
    private readonly stopMetrics: () => void,
  ) {}

  /** Listens on `spec`; throws a ListenError (one line) when the address cannot be had. */
  static async listen(
    spec: InetListenSpec,
    master: MeasuredMaster,
    logger: Logger,
    usage?: Pick<UsageSampler, 'of'>,
  ): Promise<MetricsServer> {
    const { registry, stop } = createMetrics(master, usage);
    const server = http.createServer((request, response) => {
      if (request.method !== 'GET' || !request.url?.startsWith('/metrics')) {
        response.writeHead(404, { 'Content-Type': 'text/plain' }).end('baton serves /metrics here\n');
        return;
      }
      registry.metrics().then(
        (text) => response.writeHead(200, { 'Content-Type': registry.contentType }).end(text),
        (error: Error) => response.writeHead(500, { 'Content-Type': 'text/plain' }).end(`${error.message}\n`),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) => {
        stop();
        reject(
          new ListenError(
            spec.name,
            error.code ?? 'UNKNOWN',
            `Cannot serve metrics on ${spec.text}: the system said ${error.code ?? error.message}; choose another --metrics address.`,
          ),
        );
      });
      server.listen(spec.port, spec.host, resolve);
    });
    const address = server.address();
    logger.info(
      { address: spec.host, port: typeof address === 'object' && address ? address.port : spec.port },
      'metrics listening',
    );
    return new MetricsServer(server, stop);
  }

  /** Stops serving. */
  close(): Promise<void> {
    this.stopMetrics();
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
