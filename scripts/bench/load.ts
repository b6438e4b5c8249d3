/** Closed-loop load: `inflight` workers, each sending its next request when the last returns. */
import { readFileSync } from 'node:fs';

export interface LoadResult {
  readonly ops: number;
  readonly errors: number;
  readonly seconds: number;
  readonly opsPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly p999Ms: number;
  /** Server CPU (user + system) over the run, summed over the members, in seconds. */
  readonly serverCpuSeconds: number;
  /** CPU of the load generator (this process) over the run, in seconds. */
  readonly clientCpuSeconds: number;
  /** With `bucketMs`: the requests answered in each interval of the run (by when they began), and the slowest. */
  readonly buckets?: ReadonlyArray<{ readonly ops: number; readonly maxMs: number }>;
}

const CLOCK_TICKS_PER_SECOND = 100;

/** User + system CPU seconds a process has used (Linux /proc), or one of its threads' (`statPath`). */
export function cpuSeconds(pid: number | undefined, statPath = `/proc/${pid}/stat`): number {
  if (pid === undefined) return 0;
  try {
    const stat = readFileSync(statPath, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return 0;
  }
}

/** Resident memory of a process in bytes (Linux /proc); `peak`: the most it has had (VmHWM). */
export function rssBytes(pid: number | undefined, peak = false): number {
  if (pid === undefined) return 0;
  try {
    const match = new RegExp(`${peak ? 'VmHWM' : 'VmRSS'}:\\s+(\\d+) kB`).exec(
      readFileSync(`/proc/${pid}/status`, 'utf8'),
    );
    return match === null ? 0 : Number(match[1]) * 1024;
  } catch {
    return 0;
  }
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

export async function runLoad(options: {
  inflight: number;
  seconds: number;
  op: (worker: number, n: number) => Promise<void>;
  pids: () => Array<number | undefined>;
  /** Stop early when this settles (`seconds` is then the most it runs). */
  until?: Promise<unknown>;
  /** Also count the requests per interval of this many milliseconds (`buckets`). */
  bucketMs?: number;
}): Promise<LoadResult> {
  const latencies: number[] = [];
  const buckets: Array<{ ops: number; maxMs: number }> = [];
  let errors = 0;
  const cpuBefore = options.pids().map((pid) => cpuSeconds(pid));
  const clientBefore = process.cpuUsage();
  const start = performance.now();
  const end = start + options.seconds * 1000;
  let stopped = false;
  void options.until?.finally(() => (stopped = true)).catch(() => {});
  const worker = async (w: number): Promise<void> => {
    let n = 0;
    while (!stopped && performance.now() < end) {
      const t0 = performance.now();
      try {
        await options.op(w, n++);
        const ms = performance.now() - t0;
        latencies.push(ms);
        if (options.bucketMs !== undefined) {
          const at = Math.floor((t0 - start) / options.bucketMs);
          while (buckets.length <= at) buckets.push({ ops: 0, maxMs: 0 });
          buckets[at]!.ops++;
          buckets[at]!.maxMs = Math.max(buckets[at]!.maxMs, ms);
        }
      } catch {
        errors++;
      }
    }
  };
  await Promise.all(Array.from({ length: options.inflight }, (_, w) => worker(w)));
  const seconds = (performance.now() - start) / 1000;
  const cpuAfter = options.pids().map((pid) => cpuSeconds(pid));
  const client = process.cpuUsage(clientBefore);
  const serverCpuSeconds = cpuAfter.reduce((sum, c, k) => sum + Math.max(0, c - (cpuBefore[k] ?? 0)), 0);
  latencies.sort((a, b) => a - b);
  return {
    ops: latencies.length,
    errors,
    seconds,
    opsPerSecond: latencies.length / seconds,
    p50Ms: percentile(latencies, 0.5),
    p99Ms: percentile(latencies, 0.99),
    p999Ms: percentile(latencies, 0.999),
    serverCpuSeconds,
    clientCpuSeconds: (client.user + client.system) / 1e6,
    ...(options.bucketMs === undefined ? {} : { buckets }),
  };
}
