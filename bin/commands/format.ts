/**
 * How the CLI words what the master reports: durations, sizes, and one plain
 * line (or a few) per progress report.
 */

import type { ReloadAccepted } from '../../supervisor/control/reload.js';
import type { Progress } from '../../supervisor/model.js';

/** How many lines of a failed worker's stderr the CLI prints. */
export const STDERR_TAIL_LINES = 10;

/** `850 ms`, `1.2 s`, `3m04s`, `2h05m`. */
export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return formatUptime(ms);
}

/** `42s`, `3m04s`, `2h05m`, `3d04h`: coarse, for uptimes. */
export function formatUptime(ms: number): string {
  const seconds = Math.max(0, Math.floor(ms / 1000));
  const pad = (value: number) => String(value).padStart(2, '0');
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${pad(seconds % 60)}s`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h${pad(Math.floor(seconds / 60) % 60)}m`;
  return `${Math.floor(seconds / 86_400)}d${pad(Math.floor(seconds / 3600) % 24)}h`;
}

/** `512 KiB`, `38.2 MiB`, `1.1 GiB`. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 || value >= 100 ? Math.round(value) : value.toFixed(1)} ${units[unit]}`;
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

/** The plain lines that say what a progress report means. */
export function describeProgress(progress: Progress | ReloadAccepted): string[] {
  switch (progress.kind) {
    case 'reload-accepted':
      if (progress.outcome === 'started') return [`reload started: generation ${progress.generation}`];
      if (progress.outcome === 'queued') {
        return [`a reload is running: this one is queued and will start generation ${progress.generation}`];
      }
      return [`a reload is already queued: joined it (generation ${progress.generation})`];
    case 'generation-starting':
      return [
        `generation ${progress.generation} starting: ${plural(progress.workers, 'worker')}, version ${progress.version}`,
      ];
    case 'worker-ready':
      return [
        `generation ${progress.generation}: worker ${progress.worker} ready (${progress.ready}/${progress.of})`,
      ];
    case 'generation-active': {
      const draining =
        progress.draining.length === 0 ? '' : `; draining generation ${progress.draining.join(', ')}`;
      return [`generation ${progress.generation} active: ready in ${formatMs(progress.readyMs)}${draining}`];
    }
    case 'reload-failed': {
      const lines = [`reload failed: ${progress.message}`];
      const failure = progress.failure;
      if (failure.kind === 'worker-exited' && failure.stderrTail.trim() !== '') {
        const tail = failure.stderrTail.split('\n').slice(-STDERR_TAIL_LINES);
        lines.push(`  last lines of worker ${failure.worker}'s stderr (pid ${failure.pid ?? '?'}):`);
        for (const line of tail) lines.push(`  | ${line}`);
      }
      return lines;
    }
    case 'generation-draining':
      return [`generation ${progress.generation} draining: ${plural(progress.workers, 'worker')}`];
    case 'generation-retired':
      return progress.forced
        ? [
            `generation ${progress.generation} retired after ${formatMs(progress.drainMs)}: its last workers were killed before they drained`,
          ]
        : [`generation ${progress.generation} retired: drained in ${formatMs(progress.drainMs)}`];
    case 'sessions-moved':
      if (progress.aborted !== undefined) {
        return [
          `sessions not moved from generation ${progress.from} to ${progress.generation}: ${progress.aborted}; all ${progress.failed} stay on the old version`,
        ];
      }
      return [
        `sessions moved from generation ${progress.from} to ${progress.generation}: ${progress.moved} moved, ${progress.kept} kept on the old version, ${progress.failed} failed, in ${formatMs(progress.durationMs)}`,
      ];
    case 'stopping':
      return [
        progress.fast ? 'the master is stopping now' : 'the master is stopping: every generation drains',
      ];
    default:
      return []; // a kind from a newer master: clients skip what they do not know
  }
}

/** Pads every column but the last to its widest cell, two spaces apart. */
export function alignColumns(rows: string[][]): string[] {
  const widths = (rows[0] ?? []).map((_, column) =>
    Math.max(...rows.map((row) => (row[column] ?? '').length)),
  );
  return rows.map((row) =>
    row
      .map((cell, column) => (column === row.length - 1 ? cell : cell.padEnd(widths[column] ?? 0)))
      .join('  ')
      .trimEnd(),
  );
}
