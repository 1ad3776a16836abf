/** The part of pidusage (which ships no types) that the master uses. */
declare module 'pidusage' {
  /** One process's usage: `cpu` in percent of one core since the previous sample, `memory` (RSS) in bytes. */
  interface Stat {
    cpu: number;
    memory: number;
    pid: number;
    ppid: number;
    ctime: number;
    elapsed: number;
    timestamp: number;
  }
  interface Options {
    /** How long (ms) the history of a pid not sampled again is kept, open descriptor included. */
    maxage?: number;
  }
  /** Samples several pids; a pid that is gone has no entry (or `undefined`), unless it is the only one. */
  function pidusage(pids: number[], options?: Options): Promise<Record<string, Stat | undefined>>;
  namespace pidusage {
    /** Forgets every pid and closes the /proc descriptors kept for them. */
    function clear(): void;
  }
  export default pidusage;
}
