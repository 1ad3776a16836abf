/**
 * The master's V8 settings. A master lives as long as the server and mostly waits: run lean, it
 * needs far less memory (`npm run bench -- --only cost`, README). Each flag is read by V8 when it
 * decides, not only at start-up, so that setting it before the first module loads still counts (a
 * re-exec would change the pid the user started), and the optimizing compilers can come back later.
 */
import { setFlagsFromString } from 'node:v8';

/**
 * - No optimizing compilers (TurboFan, Maglev): compiling touches megabytes of the Node binary's code
 *   and keeps its zone memory in malloc, about 11 MB of an idle master's RSS; the interpreter and
 *   Sparkplug run what a master does between handoffs.
 * - A young generation that keeps its first size (1 MB; it grew to 8 MB in a master that ran a
 *   while): the master allocates little, and a larger young generation only stays resident.
 */
export const LEAN_V8_FLAGS = ['--no-turbofan', '--no-maglev', '--semi-space-growth-factor=1'] as const;

/** The compilers the lean settings turn off, and that a handoff turns back on. */
const OPTIMIZING_COMPILERS = ['--turbofan', '--maglev'] as const;

let optimizing = true;

/** Runs this process lean; `bin/baton.js` calls it for `start`, before any other module loads. */
export function runLean(): void {
  for (const flag of LEAN_V8_FLAGS) setFlagsFromString(flag);
  optimizing = false;
}

/**
 * Turns the optimizing compilers back on for the rest of the process's life (a no-op where they are
 * on). A handoff moves thousands of sessions through the master's JavaScript: interpreted, 3,000
 * sessions took it twice the CPU time; a master that hands off pays the compilers' memory instead.
 */
export function optimizeFromNowOn(): void {
  if (optimizing) return;
  optimizing = true;
  for (const flag of OPTIMIZING_COMPILERS) setFlagsFromString(flag);
}
