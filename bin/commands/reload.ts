/**
 * `baton reload`: asks the master for a reload and follows it to its end,
 * printing progress as it comes (plain lines, or a live view on a terminal);
 * the exit code says how it ended (EXIT_CODES).
 */
import { ControlClient, connectToMaster, type MasterTarget } from '../../supervisor/control/client.js';
import type { ErrorAnswer } from '../../supervisor/control/protocol.js';
import type { ReloadAccepted, ReloadResult } from '../../supervisor/control/reload.js';
import type { MasterStatus } from '../../supervisor/control/status.js';
import type { StartFailure } from '../../supervisor/errors.js';
import {
  ConfigRefusedError,
  ControlProtocolError,
  DrainForcedError,
  EXIT_CODES,
  MasterStoppingError,
  ReloadFailedError,
} from '../../supervisor/errors.js';
import type { Progress } from '../../supervisor/model.js';
import { describeProgress } from './format.js';

/** How often the live view asks the master how many connections the draining generations still hold. */
export const LIVE_VIEW_POLL_MS = 500;

/** Where a command writes for people. */
export interface Output {
  write(text: string): unknown;
  readonly isTTY?: boolean;
  readonly columns?: number;
}

/** Sends a reload and follows it; resolves with 0, or throws the BatonError that says how it failed. */
export async function reloadCommand(
  target: MasterTarget,
  wait: boolean,
  out: Output,
  /** `--config`: read the master's config file again (true), or this one (an absolute path). */
  config?: true | string,
): Promise<number> {
  const client = await connectToMaster(target);
  const view = out.isTTY ? new LiveReloadView(out, client.path) : new PlainReloadView(out);
  try {
    const request = {
      kind: 'reload',
      until: wait ? 'drained' : 'active',
      ...(config === undefined ? {} : { config }),
    };
    for await (const line of client.request(request)) {
      if ('progress' in line) view.progress(line.progress as Progress | ReloadAccepted);
      else if (line.ok) {
        view.end();
        out.write(`${doneLine(line.reload as ReloadResult)}\n`);
        return EXIT_CODES.ok;
      } else {
        view.end();
        throw reloadError(line as ErrorAnswer);
      }
    }
    throw new ControlProtocolError('closed', 'The master ended the answer without a result.');
  } finally {
    view.end();
    client.close();
  }
}

/** The last line of a reload that went through. */
export function doneLine(result: ReloadResult): string {
  const retired = result.retired.map((old) => old.generation);
  const parts = [`reload done: generation ${result.generation} serves`];
  if (retired.length > 0) parts.push(`generation ${retired.join(', ')} drained`);
  if (result.draining.length > 0) parts.push(`generation ${result.draining.join(', ')} still draining`);
  if (result.cutShort === 'reexec') {
    parts.push('the master re-executed itself (baton reexec): baton status shows the rest of the drain');
  }
  return parts.join('; ');
}

/** The BatonError (and so the exit code) for a reload's error answer. */
export function reloadError(answer: ErrorAnswer): Error {
  const { code, message } = answer.error;
  const generation = Number(answer.error.generation);
  switch (code) {
    case 'worker-exited':
    case 'ready-timeout':
    case 'listens-elsewhere':
    case 'command-not-found':
    case 'handoff-failed':
      return new ReloadFailedError(
        generation,
        answer.error.failure as StartFailure,
        typeof answer.error.serving === 'number' ? answer.error.serving : undefined,
      );
    case 'drain-forced':
      return new DrainForcedError(generation, (answer.error.forced as number[]) ?? []);
    case 'stopping':
      return new MasterStoppingError(message);
    case 'config-refused':
      return new ConfigRefusedError(message);
    default:
      return new ControlProtocolError(code, `The master refused the reload: ${message}`);
  }
}

interface ReloadView {
  progress(progress: Progress | ReloadAccepted): void;
  end(): void;
}

/** One plain line per report: for logs, pipes and CI. */
class PlainReloadView implements ReloadView {
  constructor(private readonly out: Output) {}

  progress(progress: Progress | ReloadAccepted): void {
    for (const line of describeProgress(progress)) this.out.write(`${line}\n`);
  }

  end(): void {}
}

/**
 * On a terminal: the milestones as lines, and under them one line redrawn in
 * place (new generation: 2/4 ready; old generation: draining, 37 connections left).
 */
class LiveReloadView implements ReloadView {
  private generation: number | undefined;
  private ready = 0;
  private of = 0;
  private active = false;
  private draining = new Set<number>();
  private connectionsLeft = new Map<number, string>();
  private shown = '';
  private poller: ControlClient | undefined;
  private timer: NodeJS.Timeout | undefined;
  private polling = false;
  private ended = false;

  constructor(
    private readonly out: Output,
    private readonly path: string,
  ) {
    this.timer = setInterval(() => this.poll(), LIVE_VIEW_POLL_MS);
  }

  progress(progress: Progress | ReloadAccepted): void {
    if (progress.kind === 'reload-accepted') this.generation = progress.generation;
    const ours = 'generation' in progress && progress.generation === this.generation;
    if (progress.kind === 'generation-starting' && ours) this.of = progress.workers;
    if (progress.kind === 'worker-ready' && ours) {
      this.ready = progress.ready;
      this.of = progress.of;
      this.redraw();
      return; // counted in the live line, not worth a line of its own
    }
    if (progress.kind === 'generation-active' && ours) {
      this.active = true;
      for (const old of progress.draining) this.draining.add(old);
    }
    if (progress.kind === 'generation-retired') this.draining.delete(progress.generation);
    this.clear();
    for (const line of describeProgress(progress)) this.out.write(`${line}\n`);
    this.redraw();
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.timer);
    this.poller?.close();
    this.clear();
  }

  private liveLine(): string {
    if (this.generation === undefined) return '';
    const parts = [
      this.active
        ? `generation ${this.generation}: active`
        : `generation ${this.generation}: ${this.ready}/${this.of || '?'} ready`,
    ];
    for (const old of this.draining) {
      const left = this.connectionsLeft.get(old);
      parts.push(`generation ${old}: draining${left === undefined ? '' : `, ${left} left`}`);
    }
    return parts.join(' · ');
  }

  private redraw(): void {
    if (this.ended) return;
    const line = this.liveLine().slice(0, Math.max(20, (this.out.columns || 80) - 1));
    if (line === this.shown) return;
    this.out.write(`\r\x1b[2K${line}`);
    this.shown = line;
  }

  private clear(): void {
    if (this.shown === '') return;
    this.out.write('\r\x1b[2K');
    this.shown = '';
  }

  /** Reads connection counts on a second connection; the view goes on without them if that fails. */
  private async poll(): Promise<void> {
    if (this.draining.size === 0 || this.ended || this.polling) return;
    this.polling = true;
    try {
      this.poller ??= await ControlClient.connect(this.path);
      if (this.ended) {
        this.poller.close();
        return;
      }
      const answer = await this.poller.ask({ kind: 'status' });
      const status = (answer as { status?: MasterStatus }).status;
      for (const generation of status?.generations ?? []) {
        if (!this.draining.has(generation.id)) continue;
        const live = generation.workers.filter((worker) => worker.state !== 'exited');
        const counts = live.map((worker) => worker.connections);
        const known = counts.every((count) => typeof count === 'number');
        this.connectionsLeft.set(
          generation.id,
          known
            ? `${counts.reduce((sum, count) => sum + (count as number), 0)} connections`
            : `${live.length} workers`,
        );
      }
      this.redraw();
    } catch {
      clearInterval(this.timer);
    } finally {
      this.polling = false;
    }
  }
}
