/**
 * Node's flags for a manager process (`npm start` spawns managers with them, the `coffer` bin's
 * first line holds the same, and the tests and benchmarks start managers with them).
 *
 * `--max-semi-space-size=32` (MiB; V8's default is 16 on 64-bit): a write makes many short-lived
 * objects (the request, its decoding, the sealed records, the audit line), and with the default
 * young generation the scavenger ran often enough to cost a leader about a fifth of its CPU per
 * write (its helper threads included). At 32 MiB, three managers under 64 writes in flight used
 * 15-20% less CPU per write and answered 10-25% more writes, for about 30-40 MB more RSS under
 * that load (docs/benchmarks.md). The young generation grows to it only under load.
 */
export const MANAGER_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=32'];

/** `execArgv` with the manager's flags added where it lacks them (a flag given already wins). */
export function withManagerFlags(execArgv: readonly string[]): string[] {
  const named = (flag: string): string => flag.split('=')[0]!;
  const given = new Set(execArgv.map(named));
  return [...MANAGER_NODE_FLAGS.filter((flag) => !given.has(named(flag))), ...execArgv];
}
