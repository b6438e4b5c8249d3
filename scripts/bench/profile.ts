/**
 * Where a request's CPU goes (issue 19): a three-manager cluster whose managers run with
 * `--cpu-prof`, a write load on the leader and then a linearizable read load on a follower, each
 * after a warm-up (a JIT-compiled server is measured in the steady state it runs in). Each
 * manager's profile is cut to each load's window and split by part (profile-parts.ts); the table
 * gives microseconds of main-thread CPU per request on the leader and on that follower, part by
 * part, and beside it each process's whole CPU per request (all threads: LevelDB's, libuv's
 * fsyncs, V8's helpers), so what the main thread does not show is visible as the difference.
 * The profiles are kept (open them in Chrome's DevTools or any .cpuprofile viewer).
 *
 *   npm run bench -- profile    (PROFILE_SECONDS, default 10; PROFILE_WARM_UP_SECONDS, default 20;
 *                                PROFILE_INFLIGHT, default 64; PROFILE_KEYS, default 1,000)
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fmt, table } from './format.ts';
import { cpuSeconds, runLoad, type LoadResult } from './load.ts';
import { PARTS, monotonicMicros, partTimes, type CpuProfile, type PartTimes } from './profile-parts.ts';
import { CofferTarget } from './targets.ts';

const SECONDS = Number(process.env['PROFILE_SECONDS'] ?? 10);
const WARM_UP_SECONDS = Number(process.env['PROFILE_WARM_UP_SECONDS'] ?? 20);
function positiveWhole(name: string, otherwise: number): number {
  const text = process.env[name];
  if (text === undefined) return otherwise;
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} wants a positive whole number, not ${text}`);
  return value;
}
/** Requests in flight (PROFILE_INFLIGHT; the scale bench's writes run 16). */
const INFLIGHT = positiveWhole('PROFILE_INFLIGHT', 64);
/** Secrets written before the loads and then written and read at random (PROFILE_KEYS). */
const KEYS = positiveWhole('PROFILE_KEYS', 1000);
/** Sampling interval of the profiles, microseconds (V8's default is 1,000). */
const SAMPLE_INTERVAL_US = 500;

interface Phase {
  readonly name: 'write' | 'read';
  readonly fromUs: number;
  readonly toUs: number;
  readonly load: LoadResult;
  /** Whole-process CPU seconds in the window, by manager index. */
  readonly processCpuSeconds: readonly number[];
  /** The main thread's own CPU seconds in the window, by manager index. */
  readonly mainThreadCpuSeconds: readonly number[];
  /** CPU seconds of V8's sampling thread (`--cpu-prof`'s own cost, not Coffer's) in the window, by manager index. */
  readonly profilerCpuSeconds: readonly number[];
}

/** User + system CPU seconds of a process's main thread (Linux /proc: the task whose id is the pid). */
function mainThreadCpuSeconds(pid: number | undefined): number {
  return pid === undefined ? 0 : cpuSeconds(pid, `/proc/${pid}/task/${pid}/stat`);
}

/** The name V8 gives the thread that takes `--cpu-prof`'s samples (Linux shows its first 15 bytes). */
const PROFILER_THREAD = 'v8:ProfEvntProc';

/**
 * User + system CPU seconds of the profiler's sampling thread: it runs only because the bench
 * profiles (a sample every 500 us costs it about a quarter of a follower's main thread), so it
 * is taken out of the other threads' row and shown apart.
 */
export function profilerCpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return 0;
  let seconds = 0;
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return 0;
  }
  for (const task of tasks) {
    let name: string;
    try {
      name = readFileSync(`/proc/${pid}/task/${task}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    if (name === PROFILER_THREAD) seconds += cpuSeconds(pid, `/proc/${pid}/task/${task}/stat`);
  }
  return seconds;
}

export async function benchProfile(): Promise<void> {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const out = join(process.cwd(), 'bench-results', `profile-${stamp}`);
  mkdirSync(out, { recursive: true });
  const root = mkdtempSync(join(tmpdir(), 'coffer-profile-'));
  process.env['COFFER_NODE_ARGS'] = `--cpu-prof --cpu-prof-dir=${out} --cpu-prof-interval=${SAMPLE_INTERVAL_US}`;
  // The managers run the build's module per source, not its bundle: a sample's part is told by
  // the file its function comes from (profile-parts.ts). The code run is the same.
  process.env['COFFER_COMPILED_CLI'] = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));
  console.log(
    `\nProfile: three Coffer managers with --cpu-prof (every ${SAMPLE_INTERVAL_US} us), ${INFLIGHT} requests in flight over ${fmt(KEYS)} secrets, ${WARM_UP_SECONDS} s warm-up and ${SECONDS} s measured per load`,
  );
  const coffer = await CofferTarget.start(join(root, 'coffer'), 3);
  try {
    const leader = await coffer.leader();
    const follower = (leader + 1) % coffer.size;
    const value = randomBytes(256);
    const key = () => `bench/k${Math.floor(Math.random() * KEYS)}`;
    const pids = () => Array.from({ length: coffer.size }, (_, k) => coffer.pid(k));
    await coffer.putNumbered(leader, KEYS, value);
    const phases: Phase[] = [];
    for (const name of ['write', 'read'] as const) {
      const op = name === 'write' ? () => coffer.put(leader, key(), value) : () => coffer.get(follower, key(), false);
      await runLoad({ inflight: INFLIGHT, seconds: WARM_UP_SECONDS, op, pids });
      const cpuBefore = pids().map((pid) => cpuSeconds(pid));
      const mainBefore = pids().map(mainThreadCpuSeconds);
      const profilerBefore = pids().map(profilerCpuSeconds);
      const fromUs = monotonicMicros();
      const load = await runLoad({ inflight: INFLIGHT, seconds: SECONDS, op, pids });
      const toUs = monotonicMicros();
      const cpuAfter = pids().map((pid) => cpuSeconds(pid));
      const mainAfter = pids().map(mainThreadCpuSeconds);
      const profilerAfter = pids().map(profilerCpuSeconds);
      phases.push({
        name,
        fromUs,
        toUs,
        load,
        processCpuSeconds: cpuAfter.map((c, k) => c - cpuBefore[k]!),
        mainThreadCpuSeconds: mainAfter.map((c, k) => c - mainBefore[k]!),
        profilerCpuSeconds: profilerAfter.map((c, k) => c - profilerBefore[k]!),
      });
      console.log(
        `  ${name}s: ${fmt(load.opsPerSecond)}/s, p50 ${fmt(load.p50Ms, 1)} ms, p99 ${fmt(load.p99Ms, 1)} ms (${load.errors} failed)`,
      );
    }
    // A profile is written when its process exits normally: SIGTERM, and wait for each to go.
    const profiled = [leader, follower].map((at) => ({ at, pid: coffer.pid(at)! }));
    const running = pids().filter((pid): pid is number => pid !== undefined);
    for (const pid of running) process.kill(pid, 'SIGTERM');
    for (const pid of running) await exited(pid, 30_000);
    const profileOf = (pid: number): CpuProfile => {
      const file = readdirSync(out).find((name) => name.includes(`.${pid}.`) && name.endsWith('.cpuprofile'));
      if (file === undefined) throw new Error(`manager ${pid} wrote no profile in ${out} (did it exit on SIGTERM?)`);
      return JSON.parse(readFileSync(join(out, file), 'utf8')) as CpuProfile;
    };
    const roles = profiled.map(({ at, pid }) => ({
      role: at === leader ? 'leader' : 'follower',
      at,
      profile: profileOf(pid),
    }));
    const cells = new Map<string, PartTimes>();
    for (const phase of phases)
      for (const { role, profile } of roles)
        cells.set(`${phase.name}/${role}`, partTimes(profile, phase.fromUs, phase.toUs));
    printTable(phases, roles, cells);
    writeFileSync(
      join(out, 'profile.json'),
      JSON.stringify(
        {
          secondsMeasured: SECONDS,
          warmUpSeconds: WARM_UP_SECONDS,
          inflight: INFLIGHT,
          phases: phases.map((phase) => ({
            name: phase.name,
            // The window on the monotonic clock (microseconds), to cut the profiles again.
            fromUs: phase.fromUs,
            toUs: phase.toUs,
            opsPerSecond: phase.load.opsPerSecond,
            p50Ms: phase.load.p50Ms,
            p99Ms: phase.load.p99Ms,
            ops: phase.load.ops,
            byRole: Object.fromEntries(
              roles.map(({ role, at }) => {
                const cell = cells.get(`${phase.name}/${role}`)!;
                return [
                  role,
                  {
                    processCpuSeconds: phase.processCpuSeconds[at],
                    mainThreadCpuSeconds: phase.mainThreadCpuSeconds[at],
                    profilerCpuSeconds: phase.profilerCpuSeconds[at],
                    mainThreadBusyMs: cell.busyMs,
                    byPartMs: Object.fromEntries(cell.byPart),
                  },
                ];
              }),
            ),
          })),
        },
        null,
        2,
      ),
    );
    console.log(`\nprofiles and JSON: ${out}`);
  } finally {
    // Managers still up (a run that failed) are killed: their profiles are of no use.
    await coffer.stop();
    rmSync(root, { recursive: true, force: true });
    delete process.env['COFFER_COMPILED_CLI'];
    delete process.env['COFFER_NODE_ARGS'];
  }
}

function printTable(
  phases: readonly Phase[],
  roles: ReadonlyArray<{ role: string; at: number }>,
  cells: ReadonlyMap<string, PartTimes>,
): void {
  const columns = phases.flatMap((phase) => roles.map(({ role, at }) => ({ phase, role, at })));
  const perRequestUs = (ms: number, phase: Phase) => (ms * 1000) / Math.max(1, phase.load.ops);
  const cell = (phase: Phase, role: string) => cells.get(`${phase.name}/${role}`)!;
  // The profiler samples by the wall clock: a sample lasts until the next, descheduled time
  // included. Parts are scaled to the main thread's CPU as /proc counts it, in the same shares.
  const cpuShare = (phase: Phase, role: string, at: number) => {
    const busyMs = cell(phase, role).busyMs;
    return busyMs > 0 ? Math.min(1, ((phase.mainThreadCpuSeconds[at] ?? 0) * 1000) / busyMs) : 0;
  };
  const rows: string[][] = [];
  for (const part of PARTS) {
    const values = columns.map(({ phase, role, at }) =>
      perRequestUs((cell(phase, role).byPart.get(part) ?? 0) * cpuShare(phase, role, at), phase),
    );
    if (values.every((v) => v < 0.5)) continue;
    rows.push([part, ...values.map((v) => fmt(v))]);
  }
  rows.push([
    'main thread (CPU, /proc)',
    ...columns.map(({ phase, at }) => fmt(perRequestUs((phase.mainThreadCpuSeconds[at] ?? 0) * 1000, phase))),
  ]);
  // The process's CPU without the profiler's sampling thread: what Coffer spends.
  const ownCpuSeconds = (phase: Phase, at: number) =>
    (phase.processCpuSeconds[at] ?? 0) - (phase.profilerCpuSeconds[at] ?? 0);
  rows.push([
    'other threads (LevelDB, libuv, V8)',
    ...columns.map(({ phase, at }) =>
      fmt(perRequestUs((ownCpuSeconds(phase, at) - (phase.mainThreadCpuSeconds[at] ?? 0)) * 1000, phase)),
    ),
  ]);
  rows.push([
    'whole process',
    ...columns.map(({ phase, at }) => fmt(perRequestUs(ownCpuSeconds(phase, at) * 1000, phase))),
  ]);
  rows.push([
    "the profiler's own thread (not counted)",
    ...columns.map(({ phase, at }) => fmt(perRequestUs((phase.profilerCpuSeconds[at] ?? 0) * 1000, phase))),
  ]);
  rows.push([
    'main thread idle, % of the window',
    ...columns.map(({ phase, role }) => {
      const c = cell(phase, role);
      return fmt((100 * c.idleMs) / Math.max(1, c.idleMs + c.busyMs));
    }),
  ]);
  rows.push([
    'busy but off the CPU, % of busy',
    ...columns.map(({ phase, role, at }) => fmt(100 * (1 - cpuShare(phase, role, at)))),
  ]);
  table(
    'CPU per request, microseconds (writes: 256 B to the leader; reads: linearizable, at a follower)',
    ['part', ...columns.map(({ phase, role }) => `${phase.name}s: ${role}`)],
    rows,
  );
}

async function exited(pid: number, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`manager ${pid} did not exit within ${timeoutMs} ms of SIGTERM`);
}
