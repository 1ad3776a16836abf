/**
 * Scenario 8, Node apps as they are (issue 15): an Express 5 app, a Fastify 5 app and a plain
 * `http.createServer().listen(PORT)` app, none with a line of baton in them (bench/apps/unmodified/), and the
 * Express app behind `npm start`, each under baton (2 workers, the preload) and reloaded under
 * keep-alive and then new-connection load, with a new version on disk before each reload. Counts every
 * request and failure, and times how soon every new request gets the new version, against the app's
 * own start-up alone (spawn → listening, from /proc).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { countLoad, type LoadCounts, median } from '../analysis.js';
import { type BenchContext, pick } from '../context.js';
import {
  NODE,
  REPO_ROOT,
  reload,
  removeAppCopy,
  startBatonApp,
  startUpAloneMs,
  stopProcess,
  unmodifiedAppDir,
} from '../harness.js';
import { count, failures, ms, ratio, type ScenarioOutcome } from '../report.js';
import {
  CONCURRENCY,
  type ConnectionMode,
  loadAcrossReloads,
  medianAndMax,
  newVersionOnlyMs,
  versionOf,
} from './reload.js';

/** Workers per generation. */
const WORKERS = 2;

/** The pinned version of a dev dependency, as installed. */
function installedVersion(name: string): string {
  const file = join(REPO_ROOT, 'node_modules', name, 'package.json');
  return (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version;
}

/** An app as it is, and how it is started. */
interface UnmodifiedApp {
  name: string;
  script: string;
  /** `node <script>`, or `npm start` in the app's folder (whose package.json runs the same). */
  viaNpm: boolean;
}

const appScript = (file: string) => join(REPO_ROOT, 'bench', 'apps', 'unmodified', file);

function apps(): UnmodifiedApp[] {
  const express = `Express ${installedVersion('express')}`;
  return [
    { name: express, script: appScript('express.js'), viaNpm: false },
    { name: `Fastify ${installedVersion('fastify')}`, script: appScript('fastify.js'), viaNpm: false },
    { name: 'plain node:http', script: appScript('plain.js'), viaNpm: false },
    { name: `${express}, \`npm start\``, script: appScript('express.js'), viaNpm: true },
  ];
}

/** One app under one kind of load, as stored in latest.json. */
export interface FrameworkRun {
  app: string;
  mode: ConnectionMode;
  reloads: number;
  counts: LoadCounts;
  /** Per reload: signal → the last request that got an older version was sent. */
  signalToNewVersionOnlyMs: number[];
  /** The master's spawn → ready of each new worker (`worker ready` durationMs), every reload. */
  workerReadyMs: number[];
  errors: string[];
}

/** One app: its start-up alone and its runs. */
export interface FrameworkResult {
  app: string;
  command: string;
  /** Each start of the app alone: spawn → its tree holds a listening socket. */
  startUpAloneMs: number[];
  runs: FrameworkRun[];
}

async function measureApp(context: BenchContext, app: UnmodifiedApp): Promise<FrameworkResult> {
  const dir = unmodifiedAppDir(app.script);
  const command = app.viaNpm ? ['npm', 'start'] : [NODE, app.script];
  try {
    dir.setVersion(versionOf(0));
    const startUps: number[] = [];
    for (let round = 0; round < pick(context, 1, 3); round++) {
      startUps.push(await startUpAloneMs(command, dir.dir));
    }
    const runs: FrameworkRun[] = [];
    for (const mode of ['keep-alive', 'new connection'] as const) {
      context.progress(`scenario 8, ${app.name}: ${mode}`);
      dir.setVersion(versionOf(0));
      const { baton, httpPort } = await startBatonApp({
        workers: WORKERS,
        app: { kind: 'command', command, dir },
        env: { PORT: undefined },
      });
      try {
        const { result, times } = await loadAcrossReloads({
          context,
          label: `${app.name}, ${mode}`,
          mode,
          httpPort,
          reloads: pick(context, 2, 5),
          reloadOnce: (gen) => reload(baton, gen, { workers: WORKERS }),
          setVersion: (version) => dir.setVersion(version),
        });
        runs.push({
          app: app.name,
          mode,
          reloads: times.length,
          counts: countLoad(result),
          signalToNewVersionOnlyMs: newVersionOnlyMs(result, times),
          workerReadyMs: times.flatMap((step) => step.workerReadyMs),
          errors: result.errors,
        });
      } finally {
        await stopProcess(baton);
      }
    }
    return {
      app: app.name,
      command: app.viaNpm ? 'npm start' : `node ${app.script}`,
      startUpAloneMs: startUps,
      runs,
    };
  } finally {
    removeAppCopy(dir);
  }
}

/** Runs scenario 8: every app, both kinds of load. */
export async function frameworks(context: BenchContext): Promise<ScenarioOutcome> {
  const results: FrameworkResult[] = [];
  for (const app of apps()) results.push(await measureApp(context, app));
  const rows = results.flatMap((result) => {
    const alone = median(result.startUpAloneMs);
    return result.runs.map((run) => [
      run.app,
      run.mode,
      count(run.reloads),
      count(run.counts.requests),
      failures(run.counts.failures),
      medianAndMax(run.signalToNewVersionOnlyMs),
      ms(alone),
      ratio(median(run.signalToNewVersionOnlyMs) / alone),
    ]);
  });
  const allRuns = results.flatMap((result) => result.runs);
  return {
    id: 'frameworks',
    title: '8. Node apps as they are: reload under load',
    data: results,
    sections: [
      {
        title: '',
        header: [
          'app (unmodified)',
          'load',
          'reloads',
          'requests',
          'failed (by kind)',
          'signal → every new request on the new version',
          'the app alone: spawn → listening',
          'ratio (medians)',
        ],
        rows,
        note: `The apps of bench/apps/unmodified/ as their authors would write them (\`listen(process.env.PORT || 3000)\`, no import of baton), under baton with its preload, ${WORKERS} workers, ${CONCURRENCY} client loops, a new version on disk before each reload. "The app alone" is the same command started without baton (median of ${pick(context, 1, 3)}), until /proc shows its process tree listening. Times are medians over the reloads, max in brackets.`,
      },
    ],
    checks: allRuns.map((run) => ({
      what: `${run.app}, ${run.mode}: 0 failed in ${count(run.counts.requests)} requests over ${run.reloads} reloads`,
      ok: run.counts.failed === 0,
    })),
  };
}
