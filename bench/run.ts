/**
 * `npm run bench [-- --quick] [-- --only reload,cost]`: runs the scenarios of issue 4 on 127.0.0.1,
 * writes bench/results/latest.json, latest.md and timeline.svg, and prints the tables. Every process
 * it starts is killed at the end, also on failure, on Ctrl-C, or when the whole run's deadline passes.
 * Exits 1 if a scenario could not run or a promise (0 failed, 0 lost, ...) did not hold.
 */
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { ChartPanel } from './chart.js';
import { renderTimeline } from './chart.js';
import type { BenchContext } from './context.js';
import { cleanupEverything, REPO_ROOT } from './harness.js';
import { type RunInfo, renderMarkdown, type ScenarioError, type ScenarioOutcome } from './report.js';
import { brokenRelease } from './scenarios/broken.js';
import { configReload } from './scenarios/config.js';
import { cost } from './scenarios/cost.js';
import { descriptors } from './scenarios/descriptors.js';
import { frameworks } from './scenarios/frameworks.js';
import { inFlight } from './scenarios/inflight.js';
import { reloadOverhead } from './scenarios/overhead.js';
import { reloadUnderLoad } from './scenarios/reload.js';
import { scale } from './scenarios/scale.js';
import { longSessions } from './scenarios/sessions.js';

/** The whole run's deadline: past it, everything is killed and the bench exits 1. */
const RUN_DEADLINE_MS = { quick: 150_000, full: 900_000 };

const RESULTS_DIR = join(REPO_ROOT, 'bench', 'results');

/** The scenarios, in the order they run (issue 4's priority order). */
const SCENARIOS: Array<{
  id: string;
  title: string;
  run(context: BenchContext): Promise<ScenarioOutcome & { panels?: ChartPanel[] }>;
}> = [
  { id: 'reload', title: '1. Reload under load', run: reloadUnderLoad },
  { id: 'broken', title: '4. Broken release under load', run: brokenRelease },
  { id: 'inflight', title: '2. In-flight requests across a reload', run: inFlight },
  { id: 'cost', title: '5. Cost: throughput with no reload', run: cost },
  { id: 'overhead', title: '6. Overhead of a reload', run: reloadOverhead },
  { id: 'sessions', title: '3. Long-lived sessions across reloads', run: longSessions },
  { id: 'scale', title: '7. Scale', run: scale },
  { id: 'frameworks', title: '8. Node apps as they are: reload under load', run: frameworks },
  { id: 'config', title: '9. Config reload under load', run: configReload },
  { id: 'descriptors', title: '10. Descriptors per second', run: descriptors },
];

const USAGE = `Usage: npm run bench [-- --quick] [-- --only ${SCENARIOS.map((scenario) => scenario.id).join(',')}]`;

function parseOptions(): { quick: boolean; only: string[] } {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const known = SCENARIOS.map((scenario) => scenario.id);
  const only = values.only === undefined ? known : values.only.split(',').map((id) => id.trim());
  const unknown = only.filter((id) => !known.includes(id));
  if (unknown.length > 0) {
    console.error(
      `Expected \`--only\` to list scenarios among ${known.join(', ')}, got '${unknown.join(',')}'`,
    );
    process.exit(2);
  }
  return { quick: values.quick === true, only };
}

function describeMachine(): string {
  const cpus = os.cpus();
  const model = (cpus[0]?.model ?? 'unknown CPU').trim();
  const memoryGb = Math.round(os.totalmem() / 1024 ** 3);
  return `${os.type()} ${os.release()}, ${model}, ${cpus.length} cores, ${memoryGb} GB`;
}

async function main(): Promise<number> {
  const { quick, only } = parseOptions();
  const startedAt = performance.now();
  const context: BenchContext = { quick, progress: (message) => console.error(message) };
  const deadline = setTimeout(
    () => {
      console.error(`bench: the run's deadline passed; killing every process it started`);
      void cleanupEverything().finally(() => process.exit(1));
    },
    quick ? RUN_DEADLINE_MS.quick : RUN_DEADLINE_MS.full,
  );
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      console.error(`bench: ${signal}; killing every process it started`);
      void cleanupEverything().finally(() => process.exit(130));
    });
  }

  const outcomes: Array<ScenarioOutcome & { panels?: ChartPanel[]; durationMs?: number }> = [];
  const errors: ScenarioError[] = [];
  for (const scenario of SCENARIOS.filter((candidate) => only.includes(candidate.id))) {
    const scenarioStartedAt = performance.now();
    try {
      outcomes.push({
        ...(await scenario.run(context)),
        durationMs: Math.round(performance.now() - scenarioStartedAt),
      });
    } catch (error) {
      console.error(`bench: ${scenario.title} failed:`, error);
      errors.push({
        id: scenario.id,
        title: scenario.title,
        error: (error as Error).message.split('\n')[0] ?? '',
      });
    } finally {
      await cleanupEverything();
      context.progress(`  (${((performance.now() - scenarioStartedAt) / 1000).toFixed(1)} s)`);
    }
  }
  clearTimeout(deadline);

  const packageJson = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
    version: string;
  };
  const info: RunInfo = {
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    quick,
    durationMs: performance.now() - startedAt,
    machine: describeMachine(),
    node: process.versions.node,
    baton: packageJson.version,
  };
  mkdirSync(RESULTS_DIR, { recursive: true });
  const markdown = renderMarkdown(info, outcomes, errors);
  writeFileSync(join(RESULTS_DIR, 'latest.md'), markdown);
  writeFileSync(
    join(RESULTS_DIR, 'latest.json'),
    `${JSON.stringify({ ...info, scenarios: outcomes.map(({ panels: _panels, ...outcome }) => outcome), errors }, null, 2)}\n`,
  );
  const panels = outcomes.find((outcome) => outcome.panels)?.panels;
  const chartPath = join(RESULTS_DIR, 'timeline.svg');
  if (panels) {
    const nothingFailed = outcomes
      .find((outcome) => outcome.id === 'reload')
      ?.checks.every((check) => check.ok);
    const svg = await renderTimeline(
      `baton: reload under load, ${info.date.slice(0, 10)}`,
      `Requests per 100 ms by the version that served them${nothingFailed ? ', nothing failed under baton' : ''}. ${info.machine}.`,
      panels,
    );
    writeFileSync(chartPath, svg);
  } else {
    rmSync(chartPath, { force: true }); // a chart of an earlier run must not pass for this one
  }
  console.log(markdown);
  console.error(`bench: wrote ${RESULTS_DIR}/latest.{md,json}${panels ? ' and timeline.svg' : ''}`);
  const broken = outcomes.flatMap((outcome) => outcome.checks.filter((check) => !check.ok));
  for (const check of broken) console.error(`bench: promise not kept: ${check.what}`);
  return errors.length > 0 || broken.length > 0 ? 1 : 0;
}

main().then(
  (exitCode) => process.exit(exitCode),
  async (error: unknown) => {
    console.error('bench:', error);
    await cleanupEverything();
    process.exit(1);
  },
);
