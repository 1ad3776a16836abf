/**
 * What a scenario hands back (its data for latest.json, its tables for latest.md, the promises it
 * checked), and the Markdown that puts them together. Only what was measured gets a row.
 */
import type { FailureCounts } from './analysis.js';

/** One table of the report. */
export interface Section {
  title: string;
  header: string[];
  rows: string[][];
  /** A line under the table: how to read it, or what was not measured. */
  note?: string;
}

/** A promise of the README checked against this run ("0 failed"), not a timing. */
export interface Check {
  what: string;
  ok: boolean;
}

/** One scenario's outcome. */
export interface ScenarioOutcome {
  id: string;
  title: string;
  data: unknown;
  sections: Section[];
  checks: Check[];
}

/** A scenario that threw: it has no table, only the reason. */
export interface ScenarioError {
  id: string;
  title: string;
  error: string;
}

/** The machine and run a report describes. */
export interface RunInfo {
  date: string;
  quick: boolean;
  durationMs: number;
  machine: string;
  node: string;
  baton: string;
}

/** `123 ms`, rounded; `n/a` for NaN. */
export function ms(value: number): string {
  if (!Number.isFinite(value)) return 'n/a';
  return `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
}

/** `×1.23`; `n/a` for NaN or infinity. */
export function ratio(value: number): string {
  return Number.isFinite(value) ? `×${value.toFixed(2)}` : 'n/a';
}

/** `12,345`. */
export function count(value: number): string {
  return Math.round(value).toLocaleString('en-US');
}

/** `12.3 %` of one core. */
export function percent(share: number): string {
  return Number.isFinite(share) ? `${(share * 100).toFixed(1)} %` : 'n/a';
}

/** `45.6 MB`. */
export function megabytes(bytes: number): string {
  return Number.isFinite(bytes) ? `${(bytes / 1024 / 1024).toFixed(1)} MB` : 'n/a';
}

/** `0` or `3 (reset 2, timeout 1)`: the total, then the kinds that are not zero. */
export function failures(counts: FailureCounts): string {
  const nonZero = Object.entries(counts).filter(([, n]) => n > 0);
  const total = nonZero.reduce((sum, [, n]) => sum + n, 0);
  if (total === 0) return '0';
  return `${count(total)} (${nonZero.map(([kind, n]) => `${kind} ${count(n)}`).join(', ')})`;
}

/** `1.0.0: 1,234, 1.1.0: 56`. */
export function versions(byVersion: Record<string, number>): string {
  const entries = Object.entries(byVersion);
  return entries.length === 0 ? 'none' : entries.map(([version, n]) => `${version}: ${count(n)}`).join(', ');
}

function table({ header, rows }: Section): string {
  const escapeCell = (cell: string) => cell.replaceAll('|', '\\|');
  return [
    `| ${header.map(escapeCell).join(' | ')} |`,
    `| ${header.map((_, index) => (index === 0 ? '---' : '---:')).join(' | ')} |`,
    ...rows.map((row) => `| ${row.map(escapeCell).join(' | ')} |`),
  ].join('\n');
}

/** The whole report as Markdown: the run, then each scenario's tables and checks, then what failed to run. */
export function renderMarkdown(info: RunInfo, outcomes: ScenarioOutcome[], errors: ScenarioError[]): string {
  const lines = [
    `# baton benchmark${info.quick ? ' (quick)' : ''}`,
    '',
    `${info.date}, ${info.machine}, Node ${info.node}, baton ${info.baton}; ran ${(info.durationMs / 1000).toFixed(0)} s.`,
    'Loopback only; the load runs in its own process. Ratios compare figures of this same run.',
  ];
  for (const outcome of outcomes) {
    lines.push('', `## ${outcome.title}`);
    for (const section of outcome.sections) {
      if (section.title !== '') lines.push('', `**${section.title}**`);
      lines.push('', table(section));
      if (section.note) lines.push('', section.note);
    }
    if (outcome.checks.length > 0) {
      lines.push('', outcome.checks.map((check) => `${check.ok ? '✅' : '❌'} ${check.what}`).join('  \n'));
    }
  }
  for (const error of errors) lines.push('', `## ${error.title}`, '', `Not measured: ${error.error}`);
  return `${lines.join('\n')}\n`;
}
