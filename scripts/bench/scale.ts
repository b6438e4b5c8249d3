/**
 * Coffer beside etcd with many secrets (issue 17): a three-manager Coffer cluster and a
 * three-member etcd cluster (127.0.0.1, TLS with client certificates, fsync on), both up for the
 * whole run and measured phase by phase, Coffer then etcd (this machine's speed drifts):
 *   - load: N secrets of 256 random bytes, named scale/d{k % 1000}/s{k}; Coffer through
 *     `coffer secret import`'s code from a JSON-lines file, batches of 256 puts, 4 in flight (loadCoffer), etcd
 *     by transactions of 128 puts, 2 in flight (loadEtcd);
 *   - leader and follower RSS (/proc VmRSS, and the leader's peak VmHWM), and disk bytes per
 *     secret (du of the leader's data directory, divided by N);
 *   - restart: kill -9 of a follower, then from the spawn of its process to the first
 *     linearizable read it serves (a client of that member only); the median of RESTART_ROUNDS,
 *     the two systems taking turns;
 *   - catch-up: a new member is added (coffer join; etcd member add and start), from the spawn of
 *     its process until it has applied the leader's applied index as of just before it was added;
 *     whether the leader streamed it a snapshot is reported; CATCH_UP_ROUNDS rounds, the two
 *     systems taking turns, the member of one round removed before the next; the median;
 *   - writes to the leader (16 in flight, 256 B, over the loaded secrets): p50 and p99 for
 *     STEADY_SECONDS just before the new member is added (after ROUND_WARM_UP_SECONDS of the
 *     same writes, not measured), and over the catch-up; the table shows the round whose p99 grew
 *     by the median ratio;
 *   - the floor under that growth (catch-up-floor.ts), in each round just before each system's
 *     catch-up, from the same three members: the same steady writes (the first round's after
 *     WARM_UP_SECONDS of them), then two bare Node processes move the N names and values over
 *     mutual TLS from one LevelDB to a fresh one (the pulling one spawned inside the timing, as a
 *     new member is) instead of a member joining; the medians of the move's time, its CPU and the
 *     write p99 growth;
 *   - the server CPU (all members) over the catch-up of the round in the table.
 * Prints a table per N (figure, etcd's, the ratio, the goal, met or not), then the floor under a
 * restart here (start-floor.ts: an empty grpc-js server's spawn to first answer), and writes JSON
 * and a PNG bar chart to bench-results/.
 *
 *   npm run bench -- scale [--secrets N] [--full]      (N 100,000; --full: 100,000 then 1,000,000)
 */
import { randomBytes } from 'node:crypto';
import {
  createReadStream,
  createWriteStream,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { once } from 'node:events';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { importSecrets, parseImport } from '../../src/cli/import.ts';
import { drawBars, type Panel } from './chart.ts';
import { fmt, median, table } from './format.ts';
import { CatchUpFloor, FLOOR_STEP_MS_MAX } from './catch-up-floor.ts';
import { rssBytes, runLoad, type LoadResult } from './load.ts';
import { measureStartFloor } from './start-floor.ts';
import { CofferTarget, EtcdTarget, ensureEtcd, type Target } from './targets.ts';

const STEADY_SECONDS = Number(process.env['BENCH_SECONDS'] ?? 10);
/**
 * Unmeasured writes before the steady ones, the same for both systems. Without them the steady
 * figure measured a Coffer leader still compiling its single-put path (the load used batches) and
 * a follower just restarted: in a throwaway run, 16 writes in flight went from 177 to 390 a second
 * over the first 20 s. BENCH_WARM_UP_SECONDS overrides.
 */
const WARM_UP_SECONDS = Number(process.env['BENCH_WARM_UP_SECONDS'] ?? 10);
const WRITE_INFLIGHT = 16;
/** The catch-up's writes are also counted per interval of this many milliseconds. */
const CATCH_UP_BUCKET_MS = 500;
const MB = 1e6;
/** Restarts of a follower per system, taking turns with the other system's. */
const RESTART_ROUNDS = 3;
/**
 * A new member's catch-up per system, taking turns with the other system's (Coffer, etcd, Coffer,
 * ...); the member added in one round is removed before the next, so each starts from three
 * members. One catch-up is one draw of the machine's speed: over a day's runs the same code's
 * catch-up at 100,000 secrets ranged over 1.0x-1.4x etcd's. BENCH_CATCH_UP_ROUNDS overrides.
 */
const CATCH_UP_ROUNDS = Number(process.env['BENCH_CATCH_UP_ROUNDS'] ?? 3);
/** Unmeasured writes before each catch-up and each floor after the first (which has WARM_UP_SECONDS). */
const ROUND_WARM_UP_SECONDS = 3;

interface Figures {
  loadSeconds: number;
  /** Requests that failed in the load (a leader change) and were sent again. */
  failedWrites: number;
  leaderRssBytes: number;
  leaderPeakRssBytes: number;
  /** The larger of the two followers'. */
  followerRssBytes: number;
  leaderDiskBytes: number;
  /** The median of restartsMs. */
  restartMs: number;
  restartsMs: number[];
  /** The median of the rounds' catch-ups. */
  catchUpMs: number;
  /** The round whose write p99 grew by the median ratio (its steady load, and its load during the catch-up). */
  steady: LoadResult;
  duringCatchUp: LoadResult;
  catchUps: CatchUp[];
  /** The floor's rounds (catch-up-floor.ts) under this system's writes, and their medians. */
  floorRounds: FloorRound[];
  floorMoveMs: number;
  floorCpuSeconds: number;
  floorP99Growth: number;
}

/** One round of the floor: the bare parts move the secrets while the writes go on. */
interface FloorRound {
  moveMs: number;
  /** CPU of the two bare processes over the move. */
  cpuSeconds: number;
  steady: LoadResult;
  duringMove: LoadResult;
}

/** One round: a new member's catch-up, and the writes before and during it. */
interface CatchUp {
  catchUpMs: number;
  snapshotStreamed: boolean;
  steady: LoadResult;
  duringCatchUp: LoadResult;
}

/** How many of a system's catch-up rounds were sent a snapshot, e.g. "2 of 3" (etcd sends its log until its snapshot count). */
const streamedRounds = (f: Figures): string =>
  `${f.catchUps.filter((r) => r.snapshotStreamed).length} of ${f.catchUps.length}`;
const floorGrowth = (round: FloorRound): number => round.duringMove.p99Ms / round.steady.p99Ms;
const p99Growth = (round: { steady: LoadResult; duringCatchUp: LoadResult }): number =>
  round.duringCatchUp.p99Ms / round.steady.p99Ms;

/** The rounds' figures: the median catch-up, and the round of the median p99 growth. */
function summarize(rounds: readonly CatchUp[]): Pick<Figures, 'catchUpMs' | 'steady' | 'duringCatchUp' | 'catchUps'> {
  const byGrowth = [...rounds].sort((a, b) => p99Growth(a) - p99Growth(b));
  // The middle round; of an even number, the upper of the two (the worse growth, not the better).
  const middle = byGrowth[byGrowth.length >> 1]!;
  return {
    catchUpMs: median(rounds.map((r) => r.catchUpMs)),
    steady: middle.steady,
    duringCatchUp: middle.duringCatchUp,
    catchUps: [...rounds],
  };
}

interface Run {
  secrets: number;
  coffer: Figures;
  etcd: Figures;
}

export const secretName = (k: number): string => `scale/d${k % 1000}/s${k}`;

/**
 * Writes secrets 0 .. count-1 to the leader, `batch` to a request and `window` requests in flight.
 * A request that fails (a leader change: a long pause can cost a leader its office) is sent again
 * to whoever leads then; the failures are counted and printed, not hidden.
 */
async function loadSecrets(
  target: Target,
  count: number,
  shape: { batch: number; window: number },
  send: (leader: number, puts: Array<[string, Buffer]>) => Promise<void>,
): Promise<{ loadSeconds: number; failedWrites: number }> {
  let leader = await target.leader();
  const started = performance.now();
  let next = 0;
  let failedWrites = 0;
  let finding: Promise<number> | null = null;
  await Promise.all(
    Array.from({ length: shape.window }, async () => {
      while (next < count) {
        const first = next;
        next = Math.min(count, next + shape.batch);
        const puts = Array.from({ length: next - first }, (_, j): [string, Buffer] => [
          secretName(first + j),
          randomBytes(256),
        ]);
        for (let attempt = 0; ; attempt++) {
          try {
            await send(leader, puts);
            break;
          } catch (error) {
            failedWrites++;
            if (attempt >= 20) throw error;
            finding ??= target.leader().finally(() => (finding = null));
            leader = await finding;
          }
        }
      }
    }),
  );
  return { loadSeconds: (performance.now() - started) / 1000, failedWrites };
}

/**
 * Coffer's loader: `coffer secret import`'s own code (src/cli/import.ts) reading a JSON-lines
 * file of the N secrets, in batches of 256 puts (Secrets.PutBatch, one Raft entry each), 4 in
 * flight to the leader (the import's default), with its retries on rate limits and
 * unavailability. The file is written first, outside the timing.
 */
export async function loadCoffer(
  target: CofferTarget,
  count: number,
): Promise<{ loadSeconds: number; failedWrites: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-scale-import-'));
  try {
    const file = join(dir, 'secrets.jsonl');
    const out = createWriteStream(file);
    for (let k = 0; k < count; k++) {
      const line = `${JSON.stringify({ name: secretName(k), value_base64: randomBytes(256).toString('base64') })}\n`;
      if (!out.write(line)) await once(out, 'drain');
    }
    out.end();
    await once(out, 'finish');
    const leader = await target.leader();
    const started = performance.now();
    const summary = await importSecrets(parseImport(createReadStream(file), { format: 'jsonl' }), {
      concurrency: 256,
      put: (name, value) => target.put(leader, name, value),
      putBatch: (items) => target.putBatch(leader, items),
    });
    const loadSeconds = (performance.now() - started) / 1000;
    if (summary.imported !== count)
      throw new Error(
        `the import loaded ${summary.imported} of ${count} secrets: ${summary.failures
          .slice(0, 3)
          .map((f) => f.reason)
          .join('; ')}`,
      );
    return { loadSeconds, failedWrites: summary.retries };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** etcd's loader: transactions of 128 puts (etcd's default --max-txn-ops), 2 in flight (256 puts). */
export const loadEtcd = (target: EtcdTarget, count: number) =>
  loadSecrets(target, count, { batch: 128, window: 2 }, (leader, puts) => target.putMany(leader, puts));

/** What a directory takes on disk (du: allocated blocks, so etcd's preallocated WAL counts in full). */
function diskBytes(path: string): number {
  const s = statSync(path);
  if (!s.isDirectory()) return s.blocks * 512;
  return readdirSync(path).reduce((sum, name) => sum + diskBytes(join(path, name)), s.blocks * 512);
}

const pidsOf = (target: Target) => () => Array.from({ length: target.size }, (_, k) => target.pid(k));
const settle = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function measureRun(
  coffer: CofferTarget,
  etcd: EtcdTarget,
  secrets: number,
  log: (line: string) => void,
): Promise<Run> {
  const targets: Target[] = [coffer, etcd];
  const figures = new Map<Target, Partial<Figures>>(targets.map((t) => [t, {}]));
  const set = (target: Target, values: Partial<Figures>) => Object.assign(figures.get(target)!, values);
  for (const target of targets) {
    const loaded = target === coffer ? await loadCoffer(coffer, secrets) : await loadEtcd(etcd, secrets);
    set(target, loaded);
    log(
      `  ${target.name}: ${fmt(secrets)} secrets loaded in ${fmt(loaded.loadSeconds, 1)} s (${loaded.failedWrites} requests failed and were sent again)`,
    );
  }
  await settle(2000);
  for (const target of targets) {
    const leader = await target.leader();
    const followers = Array.from({ length: target.size }, (_, k) => k).filter((k) => k !== leader);
    set(target, {
      leaderRssBytes: rssBytes(target.pid(leader)),
      leaderPeakRssBytes: rssBytes(target.pid(leader), true),
      followerRssBytes: Math.max(...followers.map((k) => rssBytes(target.pid(k)))),
      leaderDiskBytes: diskBytes(target.dataDir(leader)),
    });
    const f = figures.get(target)!;
    log(
      `  ${target.name}: leader RSS ${fmt(f.leaderRssBytes! / MB)} MB (peak ${fmt(f.leaderPeakRssBytes! / MB)}), follower ${fmt(f.followerRssBytes! / MB)} MB, ${fmt(f.leaderDiskBytes! / secrets)} bytes on disk per secret`,
    );
  }
  // One restart is one draw of the machine's speed: RESTART_ROUNDS of them, the two systems taking
  // turns (Coffer, etcd, Coffer, ...), and the median of each is the figure.
  const restartsMs = new Map<Target, number[]>(targets.map((t) => [t, []]));
  for (let round = 0; round < RESTART_ROUNDS; round++) {
    for (const target of targets) {
      const follower = ((await target.leader()) + 1) % target.size;
      await target.kill(follower);
      const startedAt = performance.now();
      target.restart(follower);
      await target.ready(follower, 600_000);
      restartsMs.get(target)!.push(performance.now() - startedAt);
      await settle(1000);
    }
  }
  for (const target of targets) {
    const times = restartsMs.get(target)!;
    set(target, { restartMs: median(times), restartsMs: times });
    log(
      `  ${target.name}: a follower restarted to its first linearizable read in ${fmt(median(times))} ms (median of ${times.length}: ${times.map((t) => fmt(t)).join(', ')} ms)`,
    );
  }
  const catchUps = new Map<Target, CatchUp[]>(targets.map((t) => [t, []]));
  const floorRounds = new Map<Target, FloorRound[]>(targets.map((t) => [t, []]));
  // The floor under the catch-up's cost to the writes (catch-up-floor.ts): in each round, just
  // before a system's catch-up, the bare parts move the same secrets beside its writes instead.
  const floor = await CatchUpFloor.prepare(secrets);
  try {
    for (let round = 0; round < CATCH_UP_ROUNDS; round++) {
      for (const target of targets) {
        // The member the round before added leaves first: every round starts from three members.
        if (round > 0) {
          await target.removeMember(target.size - 1);
          await settle(2000);
        }
        // The first round's floor warms each system up as its catch-up did before the floor came.
        const moved = await floorRound(target, secrets, floor, round === 0 ? WARM_UP_SECONDS : ROUND_WARM_UP_SECONDS);
        floorRounds.get(target)!.push(moved);
        log(
          `  ${target.name}, round ${round + 1}, the floor: bare processes moved ${fmt(secrets)} names and values in ${fmt(moved.moveMs)} ms (${fmt(moved.cpuSeconds, 2)} CPU s); write p99 ${fmt(moved.duringMove.p99Ms, 1)} ms meanwhile, ${fmt(moved.steady.p99Ms, 1)} ms steady (${floorGrowth(moved).toFixed(2)}x)`,
        );
        const caughtUp = await catchUpRound(target, secrets, ROUND_WARM_UP_SECONDS);
        catchUps.get(target)!.push(caughtUp);
        log(
          `  ${target.name}, round ${round + 1}: a new member caught up in ${fmt(caughtUp.catchUpMs)} ms (${caughtUp.snapshotStreamed ? 'a snapshot was streamed' : 'no snapshot: the log was sent'}); write p99 ${fmt(caughtUp.duringCatchUp.p99Ms, 1)} ms meanwhile, ${fmt(caughtUp.steady.p99Ms, 1)} ms steady (${p99Growth(caughtUp).toFixed(2)}x)`,
        );
        // Where in the catch-up the writes slowed (its start and join, or the records' stream).
        log(
          `    writes answered per ${CATCH_UP_BUCKET_MS} ms of the catch-up (and the slowest, ms): ${(
            caughtUp.duringCatchUp.buckets ?? []
          )
            .map((b) => `${b.ops}/${fmt(b.maxMs)}`)
            .join(' ')}`,
        );
      }
    }
  } finally {
    floor.remove();
  }
  for (const target of targets) {
    const rounds = floorRounds.get(target)!;
    set(target, {
      floorRounds: rounds,
      floorMoveMs: median(rounds.map((r) => r.moveMs)),
      floorCpuSeconds: median(rounds.map((r) => r.cpuSeconds)),
      floorP99Growth: median(rounds.map(floorGrowth)),
    });
  }
  for (const target of targets) {
    const rounds = catchUps.get(target)!;
    set(target, summarize(rounds));
    log(
      `  ${target.name}: catch-up median ${fmt(median(rounds.map((r) => r.catchUpMs)))} ms of ${rounds.length} (${rounds.map((r) => fmt(r.catchUpMs)).join(', ')} ms); write p99 growth ${rounds.map((r) => `${p99Growth(r).toFixed(2)}x`).join(', ')}`,
    );
  }
  return { secrets, coffer: figures.get(coffer) as Figures, etcd: figures.get(etcd) as Figures };
}

/**
 * The writes a round measures (16 in flight to the leader, over the loaded secrets): `warmUpSeconds`
 * of them unmeasured, then STEADY_SECONDS measured; `write` goes on under what the round adds.
 */
async function steadyWrites(
  target: Target,
  secrets: number,
  warmUpSeconds: number,
): Promise<{ leader: number; write: () => Promise<void>; steady: LoadResult }> {
  const leader = await target.leader();
  const value = randomBytes(256);
  const write = () => target.put(leader, secretName(Math.floor(Math.random() * secrets)), value);
  await runLoad({ inflight: WRITE_INFLIGHT, seconds: warmUpSeconds, op: write, pids: pidsOf(target) });
  const steady = await runLoad({ inflight: WRITE_INFLIGHT, seconds: STEADY_SECONDS, op: write, pids: pidsOf(target) });
  return { leader, write, steady };
}

/** A steady write load, then a new member added under the same load until it has caught up. */
async function catchUpRound(target: Target, secrets: number, warmUpSeconds: number): Promise<CatchUp> {
  const { leader, write, steady } = await steadyWrites(target, secrets, warmUpSeconds);
  const snapshotsBefore = await target.snapshotsSent(leader);
  const goal = await target.applied(leader);
  const added = await target.addMember();
  const caughtUp = target.caughtUp(added.at, goal, 1_800_000);
  const duringCatchUp = await runLoad({
    inflight: WRITE_INFLIGHT,
    seconds: 1_800,
    op: write,
    pids: pidsOf(target),
    until: caughtUp,
    bucketMs: CATCH_UP_BUCKET_MS,
  });
  await caughtUp;
  const catchUpMs = performance.now() - added.startedAt;
  const snapshotStreamed = (await target.snapshotsSent(leader)) > snapshotsBefore;
  return { catchUpMs, snapshotStreamed, steady, duringCatchUp };
}

/** The catch-up round's steady writes, then the floor's bare move (instead of a new member) under the same writes. */
async function floorRound(
  target: Target,
  secrets: number,
  floor: CatchUpFloor,
  warmUpSeconds: number,
): Promise<FloorRound> {
  const pair = await floor.ready();
  try {
    const { write, steady } = await steadyWrites(target, secrets, warmUpSeconds);
    const { done } = pair.go();
    const duringMove = await runLoad({
      inflight: WRITE_INFLIGHT,
      seconds: FLOOR_STEP_MS_MAX / 1000,
      op: write,
      pids: pidsOf(target),
      until: done,
    });
    const { moveMs, cpuSeconds } = await done;
    return { moveMs, cpuSeconds, steady, duringMove };
  } finally {
    await pair.stop();
  }
}

const ratio = (a: number, b: number): number => (b > 0 ? a / b : NaN);
const times = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(2)}x` : '-');
const verdict = (met: boolean | null): string => (met === null ? 'n/a' : met ? 'yes' : 'no');

/** The table of one run: each figure, etcd's, the ratio, the goal and whether it is met. */
function report(run: Run, smaller: Run | undefined): void {
  const c = run.coffer;
  const e = run.etcd;
  const atMillion = run.secrets === 1_000_000;
  const onlyAtMillion = (met: boolean): boolean | null => (atMillion ? met : null);
  type Row = [label: string, coffer: number, etcd: number, digits: number, goal: string, met: boolean | null];
  const rows: Row[] = [
    ['load, s', c.loadSeconds, e.loadSeconds, 1, '', null],
    ['requests failed in the load (sent again)', c.failedWrites, e.failedWrites, 0, '', null],
    [
      'leader RSS, MB',
      c.leaderRssBytes / MB,
      e.leaderRssBytes / MB,
      0,
      '<= 300 MB and <= 0.50x, at 1,000,000',
      onlyAtMillion(c.leaderRssBytes <= 300 * MB && c.leaderRssBytes <= 0.5 * e.leaderRssBytes),
    ],
    ['leader peak RSS (VmHWM), MB', c.leaderPeakRssBytes / MB, e.leaderPeakRssBytes / MB, 0, '', null],
    ['follower RSS (the larger), MB', c.followerRssBytes / MB, e.followerRssBytes / MB, 0, '', null],
    [
      'disk bytes per secret (the leader)',
      c.leaderDiskBytes / run.secrets,
      e.leaderDiskBytes / run.secrets,
      0,
      '',
      null,
    ],
    [
      'restart of a follower to its first linearizable read, ms',
      c.restartMs,
      e.restartMs,
      0,
      '<= 1.00x',
      c.restartMs <= e.restartMs,
    ],
    [
      `a new member caught up, ms (median of ${c.catchUps.length})`,
      c.catchUpMs,
      e.catchUpMs,
      0,
      '<= 1.00x',
      c.catchUpMs <= e.catchUpMs,
    ],
    ['steady writes (16 in flight), w/s', c.steady.opsPerSecond, e.steady.opsPerSecond, 0, '', null],
    ['steady write p50, ms', c.steady.p50Ms, e.steady.p50Ms, 1, '', null],
    ['steady write p99, ms', c.steady.p99Ms, e.steady.p99Ms, 1, '', null],
    ['writes during the catch-up, w/s', c.duringCatchUp.opsPerSecond, e.duringCatchUp.opsPerSecond, 0, '', null],
    ['write p50 during the catch-up, ms', c.duringCatchUp.p50Ms, e.duringCatchUp.p50Ms, 1, '', null],
    ['write p99 during the catch-up, ms', c.duringCatchUp.p99Ms, e.duringCatchUp.p99Ms, 1, '', null],
  ];
  const lines = rows.map(([label, cv, ev, digits, goal, met]) => [
    label,
    fmt(cv, digits),
    fmt(ev, digits),
    times(ratio(cv, ev)),
    goal,
    goal === '' ? '' : verdict(met),
  ]);
  // Goals on a system's own ratio: etcd's is printed beside it, for comparison.
  lines.push([
    `write p99 during the catch-up / steady p99 (median of ${c.catchUps.length})`,
    times(p99Growth(c)),
    times(p99Growth(e)),
    '-',
    '<= 2.00x (its own)',
    verdict(p99Growth(c) <= 2),
  ]);
  lines.push([
    `server CPU during the catch-up, s (that round)`,
    fmt(c.duringCatchUp.serverCpuSeconds, 1),
    fmt(e.duringCatchUp.serverCpuSeconds, 1),
    times(ratio(c.duringCatchUp.serverCpuSeconds, e.duringCatchUp.serverCpuSeconds)),
    '',
    '',
  ]);
  lines.push([
    `the floor beside its writes: bare processes moved the names and values, spawn to synced, ms (median of ${c.floorRounds.length})`,
    fmt(c.floorMoveMs),
    fmt(e.floorMoveMs),
    '-',
    '',
    '',
  ]);
  lines.push([
    'the floor: CPU of its two processes over the move, s (median)',
    fmt(c.floorCpuSeconds, 1),
    fmt(e.floorCpuSeconds, 1),
    '-',
    '',
    '',
  ]);
  lines.push([
    `the floor: write p99 while they moved / steady p99 (median of ${c.floorRounds.length})`,
    times(c.floorP99Growth),
    times(e.floorP99Growth),
    '-',
    '',
    '',
  ]);
  lines.push([
    'catch-up rounds in which a snapshot was sent (not the log)',
    streamedRounds(c),
    streamedRounds(e),
    '-',
    '',
    '',
  ]);
  if (smaller !== undefined) {
    const growth = (f: (r: Run) => Figures) => ratio(f(run).leaderRssBytes, f(smaller).leaderRssBytes);
    lines.push([
      `leader RSS at ${fmt(run.secrets)} / at ${fmt(smaller.secrets)}`,
      times(growth((r) => r.coffer)),
      times(growth((r) => r.etcd)),
      '-',
      '<= 1.30x (its own)',
      verdict(atMillion && smaller.secrets === 100_000 ? growth((r) => r.coffer) <= 1.3 : null),
    ]);
  }
  table(`${fmt(run.secrets)} secrets of 256 B`, ['', 'coffer', 'etcd', 'coffer/etcd', 'goal', 'met'], lines);
  console.log(
    '(the write rows are those of the round whose p99 grew by the median ratio; each round of either system is in the log above and in the JSON)',
  );
  const floorErrors = (f: Figures): number =>
    f.floorRounds.reduce((sum, r) => sum + r.steady.errors + r.duringMove.errors, 0);
  const failed =
    c.steady.errors +
    c.duringCatchUp.errors +
    e.steady.errors +
    e.duringCatchUp.errors +
    floorErrors(c) +
    floorErrors(e);
  if (failed > 0)
    console.log(`(${failed} writes failed during the steady, catch-up and floor loads: not in the latencies)`);
}

function panels(runs: readonly Run[]): Panel[] {
  const figure = (title: string, pick: (f: Figures, secrets: number) => number): Panel => ({
    title,
    bars: runs.flatMap((run) => {
      const suffix =
        runs.length > 1 ? ` ${run.secrets >= 1e6 ? `${run.secrets / 1e6}M` : `${run.secrets / 1e3}k`}` : '';
      return [
        { name: `coffer${suffix}`, color: '#1f77b4', value: pick(run.coffer, run.secrets) },
        { name: `etcd${suffix}`, color: '#d62728', value: pick(run.etcd, run.secrets) },
      ];
    }),
  });
  return [
    figure('load, s', (f) => f.loadSeconds),
    figure('leader RSS, MB', (f) => f.leaderRssBytes / MB),
    figure('follower RSS, MB', (f) => f.followerRssBytes / MB),
    figure('disk bytes per secret', (f, n) => f.leaderDiskBytes / n),
    figure('restart to first read, ms', (f) => f.restartMs),
    figure('new member caught up, ms', (f) => f.catchUpMs),
    figure('steady write p99, ms', (f) => f.steady.p99Ms),
    figure('write p99 in catch-up, ms', (f) => f.duringCatchUp.p99Ms),
  ];
}

export async function benchScale(args: readonly string[]): Promise<void> {
  const at = args.indexOf('--secrets');
  const asked = at >= 0 ? Number(args[at + 1]) : 100_000;
  if (!Number.isInteger(asked) || asked < 1)
    throw new Error(`--secrets wants a positive whole number, not ${args[at + 1]}`);
  const counts = args.includes('--full') ? [asked, 1_000_000] : [asked];
  const etcdVersion = ensureEtcd();
  console.log(
    `\nScale benchmark: Coffer beside ${etcdVersion}, 3 members each on 127.0.0.1, TLS with client certificates, fsync on; ${counts.map((n) => fmt(n)).join(' then ')} secrets`,
  );
  const log = (line: string): void => console.log(line);
  const runs: Run[] = [];
  for (const secrets of counts) {
    const root = mkdtempSync(join(tmpdir(), 'coffer-bench-scale-'));
    const targets: Target[] = [];
    try {
      const coffer = await CofferTarget.start(join(root, 'coffer'), 3);
      targets.push(coffer);
      const etcd = await EtcdTarget.start(join(root, 'etcd'), 3);
      targets.push(etcd);
      runs.push(await measureRun(coffer, etcd, secrets, log));
    } finally {
      for (const target of targets) await target.stop();
      rmSync(root, { recursive: true, force: true });
    }
  }
  for (const [k, run] of runs.entries()) report(run, runs[k - 1]);
  // What any Node gRPC manager pays before its own start work: the restart figure's floor here.
  const startFloorMs = await measureStartFloor();
  const floorMedianMs = median(startFloorMs);
  console.log(
    `\nthe floor under a restart here: an empty grpc-js server over mutual TLS answers ${fmt(floorMedianMs)} ms after its spawn (median of ${startFloorMs.length}: ${startFloorMs.map((t) => fmt(t)).join(', ')} ms); the rest of Coffer's restart is its own start work`,
  );
  const out = join(process.cwd(), 'bench-results');
  mkdirSync(out, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const jsonFile = join(out, `scale-${stamp}.json`);
  writeFileSync(
    jsonFile,
    JSON.stringify(
      {
        etcdVersion,
        warmUpSeconds: WARM_UP_SECONDS,
        steadySeconds: STEADY_SECONDS,
        writeInflight: WRITE_INFLIGHT,
        startFloorMs,
        runs,
      },
      null,
      2,
    ),
  );
  const pngFile = join(out, `scale-${stamp}.png`);
  await drawBars(pngFile, {
    title: `Coffer beside etcd with ${counts.map((n) => fmt(n)).join(' and ')} secrets`,
    panels: panels(runs),
  });
  console.log(`\nresults: ${jsonFile}\nchart:   ${pngFile}`);
}
