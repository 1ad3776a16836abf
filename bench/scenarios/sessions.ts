/**
 * Scenario 3, long-lived sessions (issue 8): game sessions, each exchanging a numbered message every
 * 20 ms, stay open across several reloads in a row, each with a new version. Three runs: TCP sessions
 * of the example app handed off live (its default); the same sessions staying on the version that
 * accepted them (`GAME_HANDOFF=off`: the old generation drains); WebSocket sessions served with `ws`
 * (test/fixtures/ws-game.mjs) handed off live. It counts every message (cut, lost, duplicated, out of
 * order), checks each session's version and coins at the end, times every handoff round and the old
 * generation's exit, and compares the round trips of the messages sent around each reload with the
 * rest of the same run: the pause a moved session sees against the one a draining session sees.
 */
import os from 'node:os';
import {
  median,
  quantile,
  type RoundTripSummary,
  roundTripsDuringAndWithout,
  type Window,
  worstRoundTripPerSession,
} from '../analysis.js';
import type { SessionMessages, SessionsResult, SessionTransport } from '../clients/protocol.js';
import { type BenchContext, pick } from '../context.js';
import {
  type ClientProcess,
  exampleAppCopy,
  type MachineCpu,
  machineCpu,
  machineCpuShare,
  procUsage,
  RELOAD_TIMEOUT_MS,
  type RunningBaton,
  reload,
  removeAppCopy,
  sleep,
  startBatonApp,
  startSessions,
  stopProcess,
  treeCpuMs,
  waitFor,
  withDeadline,
} from '../harness.js';
import {
  type Check,
  count,
  ms,
  percent,
  ratio,
  type ScenarioOutcome,
  type Section,
  versions,
} from '../report.js';

const TITLE = '3. Long-lived sessions across reloads';
const WORKERS = 2;
/** A numbered message per session every this many ms (issue 8). */
const INTERVAL_MS = 20;
/**
 * The same for the runs with ten times the sessions (issue 17): as many messages a second as 1,000
 * sessions at 20 ms would ask for is more than the machine gives; one a second each still catches
 * most sessions in the middle of their pause.
 */
const MANY_SESSIONS_INTERVAL_MS = 1_000;
/** Both games pay this many coins per `work` in every 1.x version. */
const COINS_PER_WORK = 2;
/** How many sessions connect at once. */
const CONNECT_BATCH = 100;
/** New sessions opened after each reload, to see which version takes them. */
const PROBE_SESSIONS = 20;
/** Messages sent in the first moments (timers finding their phase, JIT warming) count in no latency figure. */
const WARM_UP_MS = 500;
/**
 * A reload's window runs from the signal until the reload is over (the old generation retired, or, for
 * a draining one, the new generation active) and this much longer: replies held back by the switch
 * arrive late, and messages sent just after it queue behind them.
 */
const WINDOW_TAIL_MS = 250;
/** The steady window compared with a reload's ends this long before its signal. */
const BASELINE_GUARD_MS = 100;
/** After `sessions moved`, how long the old generation may take to exit before the check fails. */
const RETIRED_SOON_MS = 1_000;
/** How long the bench waits for that exit before it moves on (and the check fails). */
const RETIRE_WAIT_MS = 5_000;
/** Sessions that stay keep the first generation draining for the whole run: no drain deadline may cut them. */
const STAY_DRAIN_TIMEOUT = '300s';
/** Below this share of the messages asked for, or above this share of the machine busy, the load saturates. */
const SATURATED_SENT_SHARE = 0.95;
const SATURATED_BUSY_SHARE = 0.9;
/** On `stop`, how long the client waits for the replies due, then for `whoami`, then for everyone to leave. */
const REPLY_TIMEOUT_MS = 10_000;

const versionOf = (reloadIndex: number) => `1.${reloadIndex}.0`;

/** Which sessions, and how they cross a reload. */
interface Variant {
  id: 'tcp-handoff' | 'tcp-stay' | 'ws-handoff' | 'tcp-many-handoff' | 'tcp-many-stay';
  label: string;
  transport: SessionTransport;
  handoff: boolean;
  sessions: number;
  intervalMs: number;
}

/** How many sessions the runs with ten times the sessions hold. */
const manySessions = (context: BenchContext) => pick(context, 2_000, 10_000);

function variants(context: BenchContext): Variant[] {
  const tcp = pick(context, 200, 1000);
  const many = manySessions(context);
  const ws = pick(context, 50, 200);
  return [
    {
      id: 'tcp-handoff',
      label: `${count(tcp)} TCP, handed off`,
      transport: 'tcp',
      handoff: true,
      sessions: tcp,
      intervalMs: INTERVAL_MS,
    },
    {
      id: 'tcp-stay',
      label: `${count(tcp)} TCP, draining (GAME_HANDOFF=off)`,
      transport: 'tcp',
      handoff: false,
      sessions: tcp,
      intervalMs: INTERVAL_MS,
    },
    {
      id: 'tcp-many-handoff',
      label: `${count(many)} TCP, handed off`,
      transport: 'tcp',
      handoff: true,
      sessions: many,
      intervalMs: MANY_SESSIONS_INTERVAL_MS,
    },
    {
      id: 'tcp-many-stay',
      label: `${count(many)} TCP, draining (GAME_HANDOFF=off)`,
      transport: 'tcp',
      handoff: false,
      sessions: many,
      intervalMs: MANY_SESSIONS_INTERVAL_MS,
    },
    {
      id: 'ws-handoff',
      label: `${count(ws)} WebSocket (ws), handed off`,
      transport: 'websocket',
      handoff: true,
      sessions: ws,
      intervalMs: INTERVAL_MS,
    },
  ];
}

/**
 * One handoff round, from the master's `sessions moved` line. `kind` and `outcome` come with the
 * commit protocol: a `switch` round before the new generation takes over, then a `sweep` round for
 * sessions accepted meanwhile (logged only when it found some).
 */
interface HandoffRound {
  kind?: string;
  outcome?: string;
  loggedAt: number;
  moved: number;
  kept: number;
  failed: number;
  durationMs: number;
  /** A staged round: from the freeze to the commit, the part of the round its sessions wait for. */
  frozenMs?: number;
}

/** One reload as the bench saw it: epoch ms, from the master's log but for the signal. */
interface SessionReload {
  gen: number;
  signalAt: number;
  activeAt: number;
  /** The master's `sessions moved` lines for the old generation, in order (handed-off sessions only). */
  rounds: HandoffRound[];
  /** When the old generation retired, if it did before the next reload (a draining one does not). */
  retiredAt?: number;
  retiredForced?: boolean;
  /** Where the sessions opened after the reload went. */
  probe: { versions: Record<string, number>; failed: number };
}

/** The pause a session saw in a window: its longest round trip there, over sessions and windows. */
interface PauseSummary {
  count: number;
  median: number;
  p99: number;
  max: number;
}

/** One variant's figures, as stored in latest.json (the messages are summarised, not kept). */
interface SessionsRun {
  variant: Variant['id'];
  label: string;
  transport: SessionTransport;
  handoff: boolean;
  intervalMs: number;
  result: Omit<SessionsResult, 'messages'>;
  reloads: SessionReload[];
  /** Around each reload, and the steady window of the same length before it. */
  windows: Window[];
  baselineWindows: Window[];
  duringReloads: RoundTripSummary;
  withoutReloads: RoundTripSummary;
  pauseAtReload: PauseSummary;
  pauseSteady: PauseSummary;
  load: {
    intendedPerSecond: number;
    sentPerSecond: number;
    /**
     * CPU while the sessions streamed, in cores: the machine's busy and stolen time, and whose it was
     * (`other`: processes the bench did not start, and kernel work no process is charged for).
     */
    cores: { machine: number; busy: number; steal: number; baton: number; client: number; other: number };
  };
  /** Sessions that stay: their generation's exit once the clients left. */
  stayedUntilQuit?: { quitToRetiredMs: number; forced: boolean };
}

/** A reading of every CPU counter the load figures need. */
interface CpuReading {
  at: number;
  machine: MachineCpu;
  batonMs: number;
  clientMs: number;
}

function cpuNow(running: RunningBaton, client: ClientProcess<SessionsResult>): CpuReading {
  return {
    at: performance.now(),
    machine: machineCpu(),
    batonMs: treeCpuMs(running.baton.pid),
    clientMs: procUsage(client.pid).cpuMs,
  };
}

/** CPU used between two readings, in cores (1 = one core all the time). */
function coresUsed(before: CpuReading, after: CpuReading): SessionsRun['load']['cores'] {
  const wallMs = after.at - before.at;
  const machine = os.cpus().length; // what /proc/stat's `cpu` line adds up
  const share = machineCpuShare(before.machine, after.machine);
  const baton = (after.batonMs - before.batonMs) / wallMs;
  const client = (after.clientMs - before.clientMs) / wallMs;
  const busy = share.busy * machine;
  return {
    machine,
    busy,
    steal: share.steal * machine,
    baton,
    client,
    other: Math.max(0, busy - baton - client),
  };
}

function pauses(messages: SessionMessages, windows: Window[]): PauseSummary {
  const sorted = Float64Array.from(worstRoundTripPerSession(messages, windows)).sort();
  return {
    count: sorted.length,
    median: quantile(sorted, 0.5),
    p99: quantile(sorted, 0.99),
    max: sorted.length === 0 ? Number.NaN : (sorted.at(-1) as number),
  };
}

/**
 * Waits until every worker of generation `gen` of the example app stopped accepting: its drain hook
 * prints `app draining` after the child API closed its listeners. Until then a new session may still
 * land on the old version, which a probe would count against the reload.
 */
async function stoppedAccepting({ baton }: RunningBaton, gen: number): Promise<void> {
  const pids = baton.logs
    .filter((entry) => entry.msg === 'worker ready' && entry.gen === gen)
    .map((entry) => entry.pid as number);
  await waitFor(
    () => pids.every((pid) => new RegExp(`^app draining .*pid=${pid}$`, 'm').test(baton.output)),
    {
      timeoutMs: RELOAD_TIMEOUT_MS,
      what: `the workers of generation ${gen} (pids ${pids.join(', ')}) to print 'app draining'`,
    },
  );
}

/**
 * Signals reload `index` (generation `index + 1`) and waits until it is over: for handed-off sessions,
 * until they moved and the old generation exited; for sessions that stay, until the new generation is
 * active and the old one stopped accepting (an earlier generation without sessions: retired). Then
 * probes where new sessions go.
 */
async function reloadOnce(
  running: RunningBaton,
  client: ClientProcess<SessionsResult>,
  variant: Variant,
  index: number,
): Promise<SessionReload> {
  const { baton } = running;
  const gen = index + 1;
  const times = await reload(baton, gen, { workers: WORKERS, awaitRetired: false });
  const step: SessionReload = {
    gen,
    signalAt: times.signalAt,
    activeAt: times.activeAt,
    rounds: [],
    probe: { versions: {}, failed: 0 },
  };
  const old = gen - 1;
  if (variant.handoff) await baton.waitForLogMsg('sessions moved', { gen: old }, RELOAD_TIMEOUT_MS);
  // Generation 1 holds the sessions that stay until they leave; any later old generation has none.
  if (!variant.handoff && old === 1) await stoppedAccepting(running, old);
  if (variant.handoff || old > 1) {
    const retired = await baton
      .waitForLogMsg('generation retired', { gen: old }, variant.handoff ? RETIRE_WAIT_MS : RELOAD_TIMEOUT_MS)
      .catch(() => undefined);
    if (retired) {
      step.retiredAt = retired.time as number;
      step.retiredForced = retired.forced === true;
    }
  }
  // Every round of this reload has ended by the time the old generation is gone.
  step.rounds = baton.logs
    .filter((entry) => entry.msg === 'sessions moved' && entry.gen === old)
    .map((entry) => ({
      ...(typeof entry.kind === 'string' ? { kind: entry.kind } : {}),
      ...(typeof entry.outcome === 'string' ? { outcome: entry.outcome } : {}),
      loggedAt: entry.time as number,
      moved: entry.moved as number,
      kept: entry.kept as number,
      failed: entry.failed as number,
      durationMs: entry.durationMs as number,
      ...(typeof entry.frozenMs === 'number' ? { frozenMs: entry.frozenMs } : {}),
    }));
  const probe = await client.probe(PROBE_SESSIONS, RELOAD_TIMEOUT_MS);
  step.probe = { versions: probe.versions, failed: probe.failed };
  return step;
}

/** How many reloads, the steady traffic before the first, and the pause after each one is over. */
function phases(context: BenchContext): { reloads: number; leadMs: number; gapMs: number } {
  return { reloads: pick(context, 2, 5), leadMs: pick(context, 1000, 2000), gapMs: pick(context, 800, 1500) };
}

async function runVariant(context: BenchContext, variant: Variant): Promise<SessionsRun> {
  const { reloads, leadMs, gapMs } = phases(context);
  context.progress(`scenario 3, ${variant.label}: ${reloads} reloads`);
  const app = exampleAppCopy();
  app.setVersion(versionOf(0));
  const running = await startBatonApp({
    workers: WORKERS,
    app: variant.transport === 'tcp' ? { kind: 'example', dir: app } : { kind: 'ws-game', dir: app },
    env: variant.transport === 'tcp' ? { GAME_HANDOFF: variant.handoff ? 'on' : 'off' } : {},
    extraArgs: variant.handoff ? [] : ['--drain-timeout', STAY_DRAIN_TIMEOUT],
  });
  try {
    const client = startSessions({
      transport: variant.transport,
      port: (variant.transport === 'tcp' ? running.gamePort : running.httpPort) as number,
      sessions: variant.sessions,
      intervalMs: variant.intervalMs,
      coinsPerWork: COINS_PER_WORK,
      connectBatch: CONNECT_BATCH,
      maxDurationMs: leadMs + reloads * (2 * RELOAD_TIMEOUT_MS + gapMs) + gapMs,
      replyTimeoutMs: REPLY_TIMEOUT_MS,
    });
    await withDeadline(client.ready, RELOAD_TIMEOUT_MS, `${variant.sessions} sessions to connect`);
    const before = cpuNow(running, client);
    await sleep(leadMs);
    const steps: SessionReload[] = [];
    for (let index = 1; index <= reloads; index++) {
      app.setVersion(versionOf(index));
      steps.push(await reloadOnce(running, client, variant, index));
      context.progress(`  ${variant.id}: reload ${index}/${reloads} done`);
      await sleep(gapMs);
    }
    const cores = coresUsed(before, cpuNow(running, client));
    const { messages, ...result } = await client.stop();
    let stayedUntilQuit: SessionsRun['stayedUntilQuit'];
    if (!variant.handoff) {
      const retired = await running.baton.waitForLogMsg('generation retired', { gen: 1 }, RELOAD_TIMEOUT_MS);
      stayedUntilQuit = {
        quitToRetiredMs: (retired.time as number) - result.quitAt,
        forced: retired.forced === true,
      };
    }
    return {
      ...analyse(variant, result, messages, steps),
      load: {
        intendedPerSecond: (result.connected * 1000) / variant.intervalMs,
        sentPerSecond: (result.sent * 1000) / (result.streamedUntil - result.streamedFrom),
        cores,
      },
      ...(stayedUntilQuit ? { stayedUntilQuit } : {}),
    };
  } finally {
    await stopProcess(running.baton);
    removeAppCopy(app);
  }
}

function analyse(
  variant: Variant,
  result: Omit<SessionsResult, 'messages'>,
  messages: SessionMessages,
  steps: SessionReload[],
): Omit<SessionsRun, 'load' | 'stayedUntilQuit'> {
  const warmUpUntil = result.streamedFrom + WARM_UP_MS;
  const windows = steps.map((step) => ({
    from: step.signalAt,
    to: (step.retiredAt ?? step.rounds.at(-1)?.loggedAt ?? step.activeAt) + WINDOW_TAIL_MS,
  }));
  // As long as its reload's window, just before the signal, after the warm-up and the previous window.
  const baselineWindows = windows.map((window, index) => {
    const to = window.from - BASELINE_GUARD_MS;
    const earliest = Math.max(warmUpUntil, windows[index - 1]?.to ?? warmUpUntil);
    return { from: Math.max(earliest, to - (window.to - window.from)), to };
  });
  const { during, without } = roundTripsDuringAndWithout(messages, windows, warmUpUntil);
  return {
    variant: variant.id,
    label: variant.label,
    transport: variant.transport,
    handoff: variant.handoff,
    intervalMs: variant.intervalMs,
    result,
    reloads: steps,
    windows,
    baselineWindows,
    duringReloads: during,
    withoutReloads: without,
    pauseAtReload: pauses(messages, windows),
    pauseSteady: pauses(messages, baselineWindows),
  };
}

const medianAndMax = (values: number[]) =>
  values.length === 0 ? 'n/a' : `${ms(median(values))} (max ${ms(Math.max(...values))})`;

/** `a / b (×a/b)`. */
const against = (during: number, without: number) =>
  `${ms(during)} / ${ms(without)} (${ratio(during / without)})`;

/** Each reload's first round: the one that moves the sessions (the `switch` round, with the commit protocol). */
function firstRounds(run: SessionsRun): HandoffRound[] {
  return run.reloads.flatMap((step) => step.rounds.slice(0, 1));
}

/** Sessions moved, kept or failed in all the rounds of a reload. */
function total(step: SessionReload, field: 'moved' | 'kept' | 'failed'): number {
  return step.rounds.reduce((sum, round) => sum + round[field], 0);
}

/** When the last round of a reload ended. */
function lastRoundAt(step: SessionReload): number | undefined {
  return step.rounds.at(-1)?.loggedAt;
}

function checksOf(run: SessionsRun): Check[] {
  const { result } = run;
  const newest = versionOf(run.reloads.length);
  const endVersion = run.handoff ? newest : versionOf(0);
  const probed = run.reloads.reduce(
    (sum, step) => sum + (step.probe.versions[versionOf(step.gen - 1)] ?? 0),
    0,
  );
  const checks: Check[] = [
    {
      what: `${run.label}: ${count(result.connected)} sessions, ${count(result.sent)} messages over ${run.reloads.length} reloads: 0 cut, 0 lost, 0 duplicated, 0 out of order`,
      ok:
        result.connected === result.sessions &&
        result.sent > 0 &&
        result.cut === 0 &&
        result.lost === 0 &&
        result.duplicated === 0 &&
        result.outOfOrder === 0 &&
        result.unexpected === 0,
    },
    {
      what: `${run.label}: every session ended on ${endVersion}${run.handoff ? ' (the newest)' : ' (the version that accepted it)'} with its coins intact`,
      ok: result.versionsAtEnd[endVersion] === result.connected && result.stateIntact === result.connected,
    },
    {
      what: `${run.label}: the ${PROBE_SESSIONS} sessions opened after each reload went to that reload's version`,
      ok: probed === PROBE_SESSIONS * run.reloads.length,
    },
  ];
  if (run.handoff) {
    checks.push({
      what: `${run.label}: at each reload every session moved and the old generation exited within ${ms(RETIRED_SOON_MS)} of the master's \`sessions moved\``,
      ok: run.reloads.every(
        (step) =>
          step.rounds.length > 0 &&
          step.rounds.every((round) => round.outcome === undefined || round.outcome === 'committed') &&
          total(step, 'moved') === result.connected &&
          total(step, 'kept') === 0 &&
          total(step, 'failed') === 0 &&
          step.retiredAt !== undefined &&
          !step.retiredForced &&
          step.retiredAt - (lastRoundAt(step) ?? Number.NaN) <= RETIRED_SOON_MS,
      ),
    });
  } else {
    checks.push({
      what: `${run.label}: the first generation served its sessions to the end and retired on its own once they left`,
      ok: run.stayedUntilQuit !== undefined && !run.stayedUntilQuit.forced,
    });
  }
  return checks;
}

/** `1.23`: a count of cores. */
const inCores = (value: number) => (Number.isFinite(value) ? value.toFixed(2) : 'n/a');

/** Whether the load got what it asked for, said plainly with the numbers when it did not. */
function loadNote(runs: SessionsRun[]): string {
  const short = runs.filter(
    (run) =>
      run.load.sentPerSecond < SATURATED_SENT_SHARE * run.load.intendedPerSecond ||
      run.load.cores.busy > SATURATED_BUSY_SHARE * run.load.cores.machine,
  );
  if (short.length === 0) return 'The load got what it asked for: every run sent its messages on time.';
  const described = short.map(
    ({ label, load, result }) =>
      `${label}: ${count(load.sentPerSecond)} of ${count(load.intendedPerSecond)} messages/s sent (${percent(load.sentPerSecond / load.intendedPerSecond)}), the client's event loop ${ms(result.eventLoopDelayMs.p99)} late at p99, ${inCores(load.cores.busy)} of ${load.cores.machine} cores busy (baton ${inCores(load.cores.baton)}, client ${inCores(load.cores.client)}, everything else ${inCores(load.cores.other)})`,
  );
  return `This load is more than the machine gives: ${described.join('; ')}. The client skips a beat it is more than one interval late for, so it sends fewer messages than asked, and every round trip includes waiting for a core or for the client's loop, around the reloads and outside them alike: compare each figure with the steady one of the same run.`;
}

/** Sessions moved per second in each reload's first round. */
function movedPerSecond(run: SessionsRun): number[] {
  return firstRounds(run).map((round) => (round.moved * 1000) / round.durationMs);
}

/** How long each reload's first round kept its sessions frozen (staged rounds: freeze → commit). */
function frozenWindows(run: SessionsRun): number[] {
  return firstRounds(run).flatMap((round) => (round.frozenMs === undefined ? [] : [round.frozenMs]));
}

/** The frozen window, median (max), or what the rounds did not report. */
function frozenCell(run: SessionsRun): string {
  const windows = frozenWindows(run);
  return windows.length > 0 ? medianAndMax(windows) : 'not staged';
}

/**
 * Issue 17's figures: for each count of TCP sessions, how fast they moved and the pause of a moved
 * session, against the pause of a draining one (the same count of sessions, left on their old version).
 */
function handoffAtScale(runs: SessionsRun[]): Section {
  const sizes = [...new Set(runs.filter((run) => run.transport === 'tcp').map((run) => run.result.sessions))];
  const pair = (sessions: number, handoff: boolean) =>
    runs.find(
      (run) => run.transport === 'tcp' && run.result.sessions === sessions && run.handoff === handoff,
    );
  const cell = (sessions: number, value: (moved: SessionsRun, draining: SessionsRun) => string) => {
    const moved = pair(sessions, true);
    const draining = pair(sessions, false);
    return moved && draining ? value(moved, draining) : 'n/a';
  };
  return {
    title:
      'Live handoff at each count of sessions (issue 17: ≥ 20,000 moved per second, a pause ≤ 60 ms at 1,000)',
    header: ['', ...sizes.map((sessions) => `${count(sessions)} TCP sessions`)],
    rows: [
      [
        'sessions moved per second: median (min)',
        ...sizes.map((sessions) =>
          cell(sessions, (moved) => {
            const rates = movedPerSecond(moved);
            return `${count(median(rates))} (${count(Math.min(...rates))})`;
          }),
        ),
      ],
      [
        'sessions frozen, from the freeze to the commit: median (max)',
        ...sizes.map((sessions) => cell(sessions, (moved) => frozenCell(moved))),
      ],
      [
        'pause of a moved session / a draining one: median',
        ...sizes.map((sessions) =>
          cell(sessions, (moved, draining) =>
            against(moved.pauseAtReload.median, draining.pauseAtReload.median),
          ),
        ),
      ],
      [
        'pause of a moved session / a draining one: p99',
        ...sizes.map((sessions) =>
          cell(sessions, (moved, draining) => against(moved.pauseAtReload.p99, draining.pauseAtReload.p99)),
        ),
      ],
      [
        'pause of a moved session at a reload / steady: median',
        ...sizes.map((sessions) =>
          cell(sessions, (moved) => against(moved.pauseAtReload.median, moved.pauseSteady.median)),
        ),
      ],
    ],
    note: "A session's pause is its longest round trip from the signal until the reload is over, median over sessions and reloads; a draining session crosses the same reloads on its old version (its own run, the same count of sessions and messages). Sessions moved per second: as in the table above, over the whole round. A staged round first sends every connection to the new workers while the old ones still serve them; only from the freeze to the commit do the sessions wait (the master's `frozenMs`).",
  };
}

/** Runs scenario 3: TCP sessions handed off and draining, and WebSocket sessions handed off. */
export async function longSessions(context: BenchContext): Promise<ScenarioOutcome> {
  const runs: SessionsRun[] = [];
  for (const variant of variants(context)) runs.push(await runVariant(context, variant));
  const row = (label: string, cell: (run: SessionsRun) => string) => [label, ...runs.map(cell)];
  const forHandoff = (cell: (run: SessionsRun) => string) => (run: SessionsRun) =>
    run.handoff ? cell(run) : 'n/a';
  const headline = runs
    .map(
      (run) =>
        `${run.label}: ${ms(run.pauseAtReload.median)} (max ${ms(run.pauseAtReload.max)}) against ${ms(run.pauseSteady.median)} when steady`,
    )
    .join('; ');
  return {
    id: 'sessions',
    title: TITLE,
    data: runs,
    sections: [
      handoffAtScale(runs),
      {
        title: 'Every message, every session',
        header: ['', ...runs.map((run) => run.label)],
        rows: [
          row('reloads, each with a new version', (run) => count(run.reloads.length)),
          row('sessions', (run) => `${count(run.result.connected)} / ${count(run.result.sessions)}`),
          row(
            'messages sent (answered)',
            (run) => `${count(run.result.sent)} (${count(run.result.answered)})`,
          ),
          row('cut', (run) => count(run.result.cut)),
          row('lost', (run) => count(run.result.lost)),
          row('duplicated', (run) => count(run.result.duplicated)),
          row('out of order', (run) => count(run.result.outOfOrder)),
          row(
            'coins intact at the end',
            (run) => `${count(run.result.stateIntact)} / ${count(run.result.connected)}`,
          ),
          row('at the end on', (run) => versions(run.result.versionsAtEnd)),
          row('new sessions after each reload, on its new version', (run) => {
            const onNew = run.reloads.reduce(
              (sum, step) => sum + (step.probe.versions[versionOf(step.gen - 1)] ?? 0),
              0,
            );
            return `${count(onNew)} / ${count(PROBE_SESSIONS * run.reloads.length)}`;
          }),
        ],
        note: `Each session sends a numbered message every ${INTERVAL_MS} ms (every ${ms(MANY_SESSIONS_INTERVAL_MS)} in the runs of ${count(manySessions(context))} sessions), \`work\` and \`ping <n>\` in turn, pipelined, and matches every reply to its message (\`pong <n>\`; \`coins <c>\` names the (c/${COINS_PER_WORK})-th \`work\`): lost = never answered, duplicated = answered twice, out of order = answered after a later one. At the end each session asks \`whoami\`: its version, and coins that must equal ${COINS_PER_WORK} × the \`work\`s it sent. TCP: the example app's game listener; WebSocket: test/fixtures/ws-game.mjs with \`ws\`, no compression. ${WORKERS} workers.`,
      },
      {
        title: 'Each reload (median over the reloads, max in brackets)',
        header: ['', ...runs.map((run) => run.label)],
        rows: [
          row('signal → new generation active', (run) =>
            medianAndMax(run.reloads.map((step) => step.activeAt - step.signalAt)),
          ),
          row(
            'sessions moved (kept, failed)',
            forHandoff((run) => {
              const moved = run.reloads.map((step) => total(step, 'moved'));
              const range =
                Math.min(...moved) === Math.max(...moved)
                  ? count(moved[0] ?? 0)
                  : `${count(Math.min(...moved))}–${count(Math.max(...moved))}`;
              const sum = (field: 'kept' | 'failed') =>
                run.reloads.reduce((all, step) => all + total(step, field), 0);
              return `${range} (${count(sum('kept'))}, ${count(sum('failed'))})`;
            }),
          ),
          row(
            'handoff round (`sessions moved` durationMs)',
            forHandoff((run) => medianAndMax(firstRounds(run).map((round) => round.durationMs))),
          ),
          row('sessions frozen (freeze → commit)', forHandoff(frozenCell)),
          row(
            'sessions moved per second (min)',
            forHandoff((run) => {
              const rates = movedPerSecond(run);
              return `${count(median(rates))} (${count(Math.min(...rates))})`;
            }),
          ),
          row(
            'sessions moved → old generation retired',
            forHandoff((run) =>
              medianAndMax(
                run.reloads.flatMap((step) => {
                  const movedAt = lastRoundAt(step);
                  return movedAt !== undefined && step.retiredAt !== undefined
                    ? [step.retiredAt - movedAt]
                    : [];
                }),
              ),
            ),
          ),
          row('signal → old generation retired', (run) =>
            run.handoff
              ? medianAndMax(
                  run.reloads.flatMap((step) =>
                    step.retiredAt === undefined ? [] : [step.retiredAt - step.signalAt],
                  ),
                )
              : `${ms(run.stayedUntilQuit?.quitToRetiredMs ?? Number.NaN)} after the clients left`,
          ),
        ],
        note: `Handed-off sessions: the reload is over when the master logged \`sessions moved\` and the old generation retired; the next comes ${ms(phases(context).gapMs)} later. Sessions moved per second: \`moved\` / \`durationMs\` of the master's \`sessions moved\` line, for the round that moves them (the \`switch\` round with the commit protocol; a \`sweep\` round after it, if any, counts in the sessions moved). Draining sessions stay on generation 1 (${versionOf(0)}) for the whole run (\`--drain-timeout ${STAY_DRAIN_TIMEOUT}\`); the later generations have none and retire at once.`,
      },
      {
        title: 'Round trip of a message around a reload, against the rest of the same run',
        header: ['', ...runs.map((run) => run.label)],
        rows: [
          row(
            'messages around reloads / the rest',
            (run) => `${count(run.duringReloads.count)} / ${count(run.withoutReloads.count)}`,
          ),
          row('p50 around reloads / the rest', (run) =>
            against(run.duringReloads.p50, run.withoutReloads.p50),
          ),
          row('p99 around reloads / the rest', (run) =>
            against(run.duringReloads.p99, run.withoutReloads.p99),
          ),
          row('max around reloads / the rest', (run) =>
            against(run.duringReloads.max, run.withoutReloads.max),
          ),
          row('pause of a session at a reload / steady (median)', (run) =>
            against(run.pauseAtReload.median, run.pauseSteady.median),
          ),
          row('pause of a session at a reload / steady (p99)', (run) =>
            against(run.pauseAtReload.p99, run.pauseSteady.p99),
          ),
          row('pause of a session at a reload / steady (max)', (run) =>
            against(run.pauseAtReload.max, run.pauseSteady.max),
          ),
        ],
        note: `The pause a session sees at a reload, median over sessions and reloads (max): ${headline}. "Around a reload" is every message sent from the signal until the reload was over, plus ${ms(WINDOW_TAIL_MS)}; "the rest" is every other message after the first ${ms(WARM_UP_MS)}. A session's pause is its longest round trip in a window, one per session and reload; "steady" is the same over a window of the same length ending ${ms(BASELINE_GUARD_MS)} before each signal.`,
      },
      {
        title: 'The load',
        header: ['', ...runs.map((run) => run.label)],
        rows: [
          row(
            'messages per second: sent / intended',
            (run) =>
              `${count(run.load.sentPerSecond)} / ${count(run.load.intendedPerSecond)} (${percent(run.load.sentPerSecond / run.load.intendedPerSecond)})`,
          ),
          row(
            'client event loop late: p99 (max)',
            (run) => `${ms(run.result.eventLoopDelayMs.p99)} (${ms(run.result.eventLoopDelayMs.max)})`,
          ),
          row(
            'CPU, in cores: machine busy (stolen)',
            (run) =>
              `${inCores(run.load.cores.busy)} of ${run.load.cores.machine} (${inCores(run.load.cores.steal)})`,
          ),
          row('CPU, in cores: baton master and workers', (run) => inCores(run.load.cores.baton)),
          row('CPU, in cores: the client', (run) => inCores(run.load.cores.client)),
          row('CPU, in cores: everything else (other processes, interrupts)', (run) =>
            inCores(run.load.cores.other),
          ),
        ],
        note: `Master, workers and the client share the machine's cores. ${loadNote(runs)}`,
      },
    ],
    checks: runs.flatMap(checksOf),
  };
}
