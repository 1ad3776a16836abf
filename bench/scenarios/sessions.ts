/**
 * Scenario 3, long-lived sessions: many game sessions on the example app, each sending a message every
 * 50 ms, are open across a reload. None may be cut, no reply lost or out of order, and new sessions go
 * to the new version. Two ways, both with the example app: sessions that stay on the version that
 * accepted them (`GAME_HANDOFF=off`), whose old generation retires once the clients leave; and
 * sessions handed off live to the new version with their coins (the app's default).
 */
import type { SessionsResult } from '../clients/protocol.js';
import { type BenchContext, pick } from '../context.js';
import {
  exampleAppCopy,
  RELOAD_TIMEOUT_MS,
  reload,
  removeAppCopy,
  sleep,
  startBatonApp,
  startSessions,
  stopProcess,
  withDeadline,
} from '../harness.js';
import { type Check, count, ms, type ScenarioOutcome, versions } from '../report.js';

const WORKERS = 2;
/** A message per session every this many ms. */
const INTERVAL_MS = 50;
/** New sessions opened after the switch, to see which version takes them. */
const PROBE_SESSIONS = 20;
/**
 * The second probe waits this long after `generation active`: the old workers stop accepting only when
 * they have handled the drain signal, so a session opened at the very moment may still land on them.
 */
const SETTLED_PROBE_AFTER_MS = 250;
/** How many sessions connect at once. */
const CONNECT_BATCH = 100;
const OLD_VERSION = '1.0.0';
const NEW_VERSION = '1.1.0';

/** How the sessions cross the reload. */
type Crossing = 'stay' | 'handoff';

/** One variant's figures, as stored in latest.json. */
interface SessionsRun extends SessionsResult {
  crossing: Crossing;
  /** New sessions opened right at `generation active`, and `SETTLED_PROBE_AFTER_MS` later. */
  probeAtSwitch: { versions: Record<string, number>; failed: number };
  probe: { versions: Record<string, number>; failed: number };
  signalToActiveMs: number;
  /** From the signal, and from the clients' `quit`, to the old generation retired. */
  signalToRetiredMs: number;
  quitToRetiredMs: number;
  forced: boolean;
}

async function runVariant(context: BenchContext, crossing: Crossing, sessions: number): Promise<SessionsRun> {
  const beforeMs = pick(context, 700, 2000);
  const afterMs = pick(context, 700, 2000);
  context.progress(`scenario 3, ${sessions} long-lived sessions across a reload: ${crossing}`);
  const app = exampleAppCopy();
  app.setVersion(OLD_VERSION);
  const { baton, gamePort } = await startBatonApp({
    workers: WORKERS,
    app: { kind: 'example', dir: app },
    env: { GAME_HANDOFF: crossing === 'handoff' ? 'on' : 'off' },
  });
  try {
    const client = startSessions({
      port: gamePort as number,
      sessions,
      intervalMs: INTERVAL_MS,
      connectBatch: CONNECT_BATCH,
      maxDurationMs: beforeMs + afterMs + 2 * RELOAD_TIMEOUT_MS,
      replyTimeoutMs: 10_000,
    });
    await withDeadline(client.ready, RELOAD_TIMEOUT_MS, `${sessions} sessions to connect`);
    await sleep(beforeMs);
    app.setVersion(NEW_VERSION);
    const times = await reload(baton, 2, { workers: WORKERS, awaitRetired: false });
    const probeAtSwitch = await client.probe(PROBE_SESSIONS, RELOAD_TIMEOUT_MS);
    await sleep(SETTLED_PROBE_AFTER_MS);
    const probe = await client.probe(PROBE_SESSIONS, RELOAD_TIMEOUT_MS);
    await sleep(afterMs);
    const result = await client.stop();
    const retired = await baton.waitForLogMsg('generation retired', { gen: 1 }, RELOAD_TIMEOUT_MS);
    return {
      ...result,
      crossing,
      probeAtSwitch: { versions: probeAtSwitch.versions, failed: probeAtSwitch.failed },
      probe: { versions: probe.versions, failed: probe.failed },
      signalToActiveMs: times.activeAt - times.signalAt,
      signalToRetiredMs: (retired.time as number) - times.signalAt,
      quitToRetiredMs: (retired.time as number) - result.quitAt,
      forced: retired.forced === true,
    };
  } finally {
    await stopProcess(baton);
    removeAppCopy(app);
  }
}

const LABELS: Record<Crossing, string> = {
  stay: 'stay on their version (GAME_HANDOFF=off)',
  handoff: 'handed off live (the default)',
};

/** Runs scenario 3, both ways. */
export async function longSessions(context: BenchContext): Promise<ScenarioOutcome> {
  const sessions = pick(context, 200, 1000);
  const runs: SessionsRun[] = [];
  for (const crossing of ['stay', 'handoff'] as const)
    runs.push(await runVariant(context, crossing, sessions));
  const checks: Check[] = runs.flatMap((run) => [
    {
      what: `${LABELS[run.crossing]}: ${count(run.connected)} sessions, 0 cut, 0 lost, 0 out of order, every session's coins intact`,
      ok:
        run.connected === sessions &&
        run.cut === 0 &&
        run.lost === 0 &&
        run.outOfOrder === 0 &&
        run.stateIntact === run.connected &&
        run.sent > 0,
    },
    {
      what: `${LABELS[run.crossing]}: the ${PROBE_SESSIONS} sessions opened ${SETTLED_PROBE_AFTER_MS} ms after the switch went to ${NEW_VERSION}`,
      ok: run.probe.failed === 0 && run.probe.versions[NEW_VERSION] === PROBE_SESSIONS,
    },
    {
      what: `${LABELS[run.crossing]}: sessions ended on ${run.crossing === 'stay' ? OLD_VERSION : NEW_VERSION}, and the old generation retired on its own`,
      ok:
        run.versionsAtEnd[run.crossing === 'stay' ? OLD_VERSION : NEW_VERSION] === run.connected &&
        !run.forced,
    },
  ]);
  return {
    id: 'sessions',
    title: '3. Long-lived sessions across a reload',
    data: runs,
    sections: [
      {
        title: '',
        header: [
          'sessions',
          'messages',
          'cut',
          'lost',
          'out of order',
          'coins intact',
          'at the end on',
          'new sessions at the switch',
          `new sessions ${SETTLED_PROBE_AFTER_MS} ms later`,
          'old generation retired',
        ],
        rows: runs.map((run) => [
          `${count(run.connected)} that ${LABELS[run.crossing]}`,
          count(run.sent),
          count(run.cut),
          count(run.lost),
          count(run.outOfOrder),
          `${count(run.stateIntact)} / ${count(run.connected)}`,
          versions(run.versionsAtEnd),
          versions(run.probeAtSwitch.versions),
          versions(run.probe.versions),
          run.crossing === 'stay'
            ? `${ms(run.quitToRetiredMs)} after the clients quit`
            : `${ms(run.signalToRetiredMs)} after the signal`,
        ]),
        note: `Sessions of the example app's game listener (${WORKERS} workers), each sending \`work\` every ${INTERVAL_MS} ms and checking that its coins grow by 2 per reply; the reload comes after ${ms(pick(context, 700, 2000))} of traffic; "at the switch" is as soon as the master logged \`generation active\` (the old workers still accept until they handle the drain signal); the clients ask \`whoami\` and quit ${ms(pick(context, 700, 2000))} after the new generation is active.`,
      },
    ],
    checks,
  };
}
