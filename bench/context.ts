/** What every scenario is given: how big a run this is, and where to say what it is doing. */
export interface BenchContext {
  /** `--quick`: fewer reloads and shorter phases, the whole bench under a minute. */
  quick: boolean;
  /** One line of progress on stderr (the table goes to stdout). */
  progress(message: string): void;
}

/** `quick` or `full`, whichever the run is. */
export function pick<T>(context: BenchContext, quick: T, full: T): T {
  return context.quick ? quick : full;
}
