/**
 * Coffer beside etcd, on this machine, in one run: a three-manager Coffer cluster and a
 * three-member etcd cluster (both on 127.0.0.1, TLS with client certificates, fsync on), driven
 * in turn by the same closed-loop Node gRPC load (CofferClient; the etcd3 package), the same
 * concurrency, value sizes and keys. Every cell runs in rounds (Coffer, etcd, Coffer, etcd, ...);
 * each figure printed is the median over the rounds, and each ratio the median of the rounds'
 * ratios (one round's two runs are seconds apart, so the machine's drift between rounds cancels).
 * Prints tables with the etcd figure and the ratio beside each Coffer figure, and writes every
 * round as JSON and a PNG chart (bench-results/). Many secrets (memory, disk, restart, catch-up)
 * are the scale suite's (scale.ts).
 *
 *   npm run bench -- cluster [--full]   (BENCH_SECONDS: seconds per run of a cell; BENCH_ROUNDS: rounds per cell, default 3)
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { drawChart } from './chart.ts';
import { percentile, runLoad, type LoadResult } from './load.ts';
import { CofferTarget, EtcdTarget, ensureEtcd, type Target } from './targets.ts';
import { fmt, median, table } from './format.ts';
import { measureFloor } from './floor.ts';
import { FLOOR_LEVEL_NAMES, measureReplicationFloor } from './replication-floor.ts';

const KEYS = 1000;
/**
 * Seconds of writes, then of reads, before anything is measured, the same for both systems. A
 * JIT-compiled server needs them: Coffer's CPU per write fell from about 1.5 to 0.85 ms over its
 * first 40 s of writes, so 3 s measured it half compiled. BENCH_WARM_UP_SECONDS overrides.
 */
const WARM_UP_SECONDS = Number(process.env['BENCH_WARM_UP_SECONDS'] ?? 20);

/** Rounds of every cell (BENCH_ROUNDS overrides): the figures printed are medians over them. */
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 3);

/** One cell's runs for one system, a run per round, in round order. */
type Rounds = readonly LoadResult[];

interface SystemResults {
  writes: Array<{ bytes: number; inflight: number; rounds: LoadResult[] }>;
  reads: Array<{ kind: 'linearizable' | 'stale'; where: 'leader' | 'spread'; inflight: number; rounds: LoadResult[] }>;
  failoverMs: number[];
}

/** A ratio as printed: `1.23x`. */
const times = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(2)}x` : '-');

/** A figure of a cell: its median over the rounds. */
const med = (rounds: Rounds, figure: (r: LoadResult) => number): number => median(rounds.map(figure));

/**
 * Coffer's figure over etcd's, round by round (the two runs of a round are back to back): the
 * median of those ratios, and the lowest and highest, to show how much the rounds agree.
 */
function roundRatios(
  coffer: Rounds,
  etcd: Rounds,
  figure: (r: LoadResult) => number,
): { median: number; low: number; high: number } {
  const ratios = coffer.map((c, k) => figure(c) / figure(etcd[k]!)).filter((x) => Number.isFinite(x));
  return { median: median(ratios), low: Math.min(...ratios), high: Math.max(...ratios) };
}

const spread = (r: { low: number; high: number }): string =>
  Number.isFinite(r.low) ? `${r.low.toFixed(2)}-${r.high.toFixed(2)}` : '-';

/** Server CPU seconds per 1,000 requests of a run. */
const cpuPer1000 = (r: LoadResult): number => (r.ops === 0 ? NaN : (r.serverCpuSeconds / r.ops) * 1000);
const clientCpuPer1000 = (r: LoadResult): number => (r.ops === 0 ? NaN : (r.clientCpuSeconds / r.ops) * 1000);

/**
 * Every cell is run in rounds, each system in turn within a round, back to back (both clusters
 * are up, the idle one ticking over): this machine's speed drifts by a factor of two over minutes
 * (other tenants), and measuring one system after the other turned that drift into the ratios.
 */
async function measure(
  targets: readonly Target[],
  options: { seconds: number; rounds: number; sizes: number[]; inflights: number[]; kills: number },
  log: (line: string) => void,
): Promise<Map<Target, SystemResults>> {
  const results = new Map<Target, SystemResults>(targets.map((t) => [t, { writes: [], reads: [], failoverMs: [] }]));
  const pidsOf = (target: Target) => () => Array.from({ length: target.size }, (_, k) => target.pid(k));
  const key = () => `bench/k${Math.floor(Math.random() * KEYS)}`;
  const leaders = new Map<Target, number>();
  // Warm up, the same for both: connections, every key written once (reads need them), and a
  // few seconds of writes and reads so a JIT-compiled server (Node) is measured in the steady
  // state it runs in, not while it compiles (that showed as CPU per request several times higher
  // at one request in flight).
  const seed = randomBytes(256);
  for (const target of targets) {
    const leader = await target.leader();
    leaders.set(target, leader);
    const pids = pidsOf(target);
    for (let k = 0; k < KEYS; k += 64)
      await Promise.all(
        Array.from({ length: Math.min(64, KEYS - k) }, (_, j) => target.put(leader, `bench/k${k + j}`, seed)),
      );
    await runLoad({ inflight: 64, seconds: WARM_UP_SECONDS, op: async () => target.put(leader, key(), seed), pids });
    await runLoad({
      inflight: 64,
      seconds: WARM_UP_SECONDS,
      op: async (w) => target.get(w % target.size, key(), w % 2 === 0),
      pids,
    });
  }
  // One cell: its rounds, each system in turn within a round; each run is logged as it ends.
  const runRounds = async (
    cellOf: (target: Target) => { rounds: LoadResult[] },
    inflight: number,
    op: (target: Target, leader: number) => (worker: number) => Promise<void>,
    describe: (target: Target, round: number, result: LoadResult) => string,
  ): Promise<void> => {
    for (let round = 1; round <= options.rounds; round++) {
      for (const target of targets) {
        const result = await runLoad({
          inflight,
          seconds: options.seconds,
          op: op(target, leaders.get(target)!),
          pids: pidsOf(target),
        });
        cellOf(target).rounds.push(result);
        log(`${describe(target, round, result)}${result.errors > 0 ? `, ${result.errors} errors` : ''}`);
      }
    }
  };
  for (const bytes of options.sizes) {
    const value = randomBytes(bytes);
    for (const inflight of options.inflights) {
      for (const target of targets) results.get(target)!.writes.push({ bytes, inflight, rounds: [] });
      await runRounds(
        (target) => results.get(target)!.writes.at(-1)!,
        inflight,
        (target, leader) => () => target.put(leader, key(), value),
        (target, round, result) =>
          `  ${target.name} writes ${bytes} B x${inflight}, round ${round}/${options.rounds}: ${fmt(result.opsPerSecond)}/s, p99 ${fmt(result.p99Ms, 1)} ms`,
      );
    }
  }
  for (const kind of ['linearizable', 'stale'] as const) {
    for (const where of ['leader', 'spread'] as const) {
      const inflight = 64;
      for (const target of targets) results.get(target)!.reads.push({ kind, where, inflight, rounds: [] });
      await runRounds(
        (target) => results.get(target)!.reads.at(-1)!,
        inflight,
        (target, leader) => (w) => target.get(where === 'leader' ? leader : w % target.size, key(), kind === 'stale'),
        (target, round, result) =>
          `  ${target.name} ${kind} reads at the ${where === 'leader' ? 'leader' : 'members, spread'}, round ${round}/${options.rounds}: ${fmt(result.opsPerSecond)}/s`,
      );
    }
  }
  // Failover: kill -9 of the leader, then writes through a client that knows every member until
  // one is acknowledged; the time is from the kill to that acknowledgement.
  const value = randomBytes(256);
  for (let k = 0; k < options.kills; k++) {
    for (const target of targets) {
      const leader = await target.leader();
      const killedAt = performance.now();
      await target.kill(leader);
      for (;;) {
        try {
          await target.putAnywhere(key(), value, 1000);
          break;
        } catch {
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
        if (performance.now() - killedAt > 60_000)
          throw new Error(`${target.name}: no write acknowledged within 60 s of killing the leader`);
      }
      const failoverMs = results.get(target)!.failoverMs;
      failoverMs.push(performance.now() - killedAt);
      log(`  ${target.name} failover ${k + 1}/${options.kills}: ${fmt(failoverMs[failoverMs.length - 1]!)} ms`);
      target.restart(leader);
      await target.ready(leader, 60_000);
      await new Promise((resolve) => setTimeout(resolve, 1000)); // settle: the restarted member catches up
    }
  }
  return results;
}

export async function benchCluster(args: readonly string[]): Promise<void> {
  const full = args.includes('--full');
  const seconds = Number(process.env['BENCH_SECONDS'] ?? (full ? 10 : 3));
  const options = {
    seconds,
    rounds: ROUNDS,
    sizes: full ? [256, 4096] : [256],
    inflights: [1, 16, 64, 256],
    kills: full ? 10 : 5,
  };
  const etcdVersion = ensureEtcd();
  console.log(
    `\nCluster benchmark: Coffer beside ${etcdVersion}, 3 members each on 127.0.0.1, TLS with client certificates, fsync on; ${options.rounds} rounds of ${seconds} s per cell${full ? ' (--full)' : ''}; medians over the rounds`,
  );
  const root = mkdtempSync(join(tmpdir(), 'coffer-bench-'));
  const all: Record<'coffer' | 'etcd', SystemResults> = {} as Record<'coffer' | 'etcd', SystemResults>;
  const log = (line: string): void => console.log(line);
  // The floor, before and after the clusters (the machine's speed drifts; both are printed).
  const floorBefore = await measureFloor({ seconds, inflights: [1, 64], bytes: 256 });
  const targets: Target[] = [];
  try {
    targets.push(await CofferTarget.start(join(root, 'coffer'), 3));
    targets.push(await EtcdTarget.start(join(root, 'etcd'), 3));
    const measured = await measure(targets, options, log);
    for (const target of targets) all[target.name] = measured.get(target)!;
  } catch (error) {
    // The members' logs and data stay for a look at what went wrong.
    console.error(`the benchmark failed; the members' logs and data are kept in ${root}`);
    for (const target of targets) await target.stop();
    throw error;
  }
  for (const target of targets) await target.stop();
  rmSync(root, { recursive: true, force: true });
  const floorAfter = await measureFloor({ seconds, inflights: [1, 64], bytes: 256 });
  const floor = [
    ...floorBefore.map((f) => ({ ...f, when: 'before' })),
    ...floorAfter.map((f) => ({ ...f, when: 'after' })),
  ];
  const replicationFloor = await measureReplicationFloor({
    seconds,
    warmUpSeconds: Math.min(WARM_UP_SECONDS, 10),
    inflights: [1, 64, 256],
    bytes: 256,
  });
  const c = all.coffer;
  const e = all.etcd;
  const rounds = `medians of ${options.rounds} rounds; ratio: the median of the rounds' ratios, and their range`;
  table(
    `Writes (closed loop, to the leader; keys from 1,000; ${rounds})`,
    [
      'value, in flight',
      'coffer w/s',
      'p50 ms',
      'p99 ms',
      'etcd w/s',
      'p50 ms',
      'p99 ms',
      'coffer/etcd w/s',
      'range',
      'coffer/etcd p99',
    ],
    c.writes.map((w, k) => {
      const x = e.writes[k]!.rounds;
      const r = w.rounds;
      const perSecond = roundRatios(r, x, (l) => l.opsPerSecond);
      return [
        `${w.bytes} B, ${w.inflight}`,
        fmt(med(r, (l) => l.opsPerSecond)),
        fmt(
          med(r, (l) => l.p50Ms),
          2,
        ),
        fmt(
          med(r, (l) => l.p99Ms),
          2,
        ),
        fmt(med(x, (l) => l.opsPerSecond)),
        fmt(
          med(x, (l) => l.p50Ms),
          2,
        ),
        fmt(
          med(x, (l) => l.p99Ms),
          2,
        ),
        times(perSecond.median),
        spread(perSecond),
        times(roundRatios(r, x, (l) => l.p99Ms).median),
      ];
    }),
  );
  table(
    `Reads (64 in flight, 256 B values; ${rounds})`,
    ['kind, sent to', 'coffer r/s', 'p99 ms', 'etcd r/s', 'p99 ms', 'coffer/etcd r/s', 'range'],
    c.reads.map((read, k) => {
      const x = e.reads[k]!.rounds;
      const r = read.rounds;
      const perSecond = roundRatios(r, x, (l) => l.opsPerSecond);
      return [
        `${read.kind}, ${read.where === 'leader' ? 'the leader' : 'every member'}`,
        fmt(med(r, (l) => l.opsPerSecond)),
        fmt(
          med(r, (l) => l.p99Ms),
          2,
        ),
        fmt(med(x, (l) => l.opsPerSecond)),
        fmt(
          med(x, (l) => l.p99Ms),
          2,
        ),
        times(perSecond.median),
        spread(perSecond),
      ];
    }),
  );
  const cpuRows: Array<[string, (s: SystemResults) => Rounds]> = [
    ['writes (256 B, 64 in flight)', (s) => s.writes.find((w) => w.bytes === 256 && w.inflight === 64)!.rounds],
    ...(['linearizable', 'stale'] as const).flatMap((kind) =>
      (['leader', 'spread'] as const).map((where): [string, (s: SystemResults) => Rounds] => [
        `${kind} reads (${where === 'leader' ? 'the leader' : 'spread'})`,
        (s) => s.reads.find((r) => r.kind === kind && r.where === where)!.rounds,
      ]),
    ),
  ];
  table(
    `CPU per 1,000 requests (server: user + system summed over the three members; client: the load generator; ${rounds})`,
    ['per 1,000', 'coffer server s', 'etcd server s', 'coffer/etcd', 'range', 'coffer client s', 'etcd client s'],
    cpuRows.map(([label, pick]) => {
      const rc = pick(c);
      const re = pick(e);
      const server = roundRatios(rc, re, cpuPer1000);
      return [
        label,
        fmt(med(rc, cpuPer1000), 3),
        fmt(med(re, cpuPer1000), 3),
        times(server.median),
        spread(server),
        fmt(med(rc, clientCpuPer1000), 3),
        fmt(med(re, clientCpuPer1000), 3),
      ];
    }),
  );
  const sortedC = [...c.failoverMs].sort((a, b) => a - b);
  const sortedE = [...e.failoverMs].sort((a, b) => a - b);
  table(
    `Failover: kill -9 of the leader to the first acknowledged write (${options.kills} kills)`,
    ['', 'coffer ms', 'etcd ms', 'coffer/etcd'],
    [
      [
        'median',
        fmt(percentile(sortedC, 0.5)),
        fmt(percentile(sortedE, 0.5)),
        times(percentile(sortedC, 0.5) / percentile(sortedE, 0.5)),
      ],
      [
        'max',
        fmt(sortedC[sortedC.length - 1]!),
        fmt(sortedE[sortedE.length - 1]!),
        times(sortedC[sortedC.length - 1]! / sortedE[sortedE.length - 1]!),
      ],
    ],
  );
  table(
    'The floor: an empty grpc-js service (echo, 256 B) in one Node process, same TLS and load, measured before and after the clusters',
    [
      'in flight',
      'requests/s',
      'p50 ms',
      'server CPU s per 1,000',
      'client CPU s per 1,000',
      'etcd writes/s at this in flight',
    ],
    floor.map(({ inflight, result, when }) => {
      const etcdRounds = e.writes.find((w) => w.bytes === 256 && w.inflight === inflight)?.rounds ?? [];
      return [
        `${inflight} (${when})`,
        fmt(result.opsPerSecond),
        fmt(result.p50Ms, 2),
        fmt((result.serverCpuSeconds / result.ops) * 1000, 3),
        fmt((result.clientCpuSeconds / result.ops) * 1000, 3),
        fmt(med(etcdRounds, (l) => l.opsPerSecond)),
      ];
    }),
  );
  table(
    'The floor under a replicated write: three bare Node processes (grpc-js, same TLS and load; a leader batches, sends to two followers, answers once it and one follower have fdatasynced; see replication-floor.ts), measured after the clusters',
    [
      'level, in flight',
      'writes/s',
      'p50 ms',
      'p99 ms',
      'server CPU s per 1,000',
      'coffer: w/s, CPU',
      'etcd: w/s, CPU',
    ],
    replicationFloor.map(({ level, inflight, result }) => {
      const at = (s: SystemResults) => s.writes.find((w) => w.bytes === 256 && w.inflight === inflight)?.rounds ?? [];
      const both = (s: SystemResults) => `${fmt(med(at(s), (l) => l.opsPerSecond))}, ${fmt(med(at(s), cpuPer1000), 3)}`;
      return [
        `${FLOOR_LEVEL_NAMES[level]}, ${inflight}`,
        fmt(result.opsPerSecond),
        fmt(result.p50Ms, 2),
        fmt(result.p99Ms, 2),
        fmt((result.serverCpuSeconds / result.ops) * 1000, 3),
        both(c),
        both(e),
      ];
    }),
  );
  // The goals (issue 19), met or not, from the rounds' median ratios above.
  const writesAt = (s: SystemResults, inflight: number): Rounds =>
    s.writes.find((w) => w.bytes === 256 && w.inflight === inflight)!.rounds;
  const linSpread = (s: SystemResults): Rounds =>
    s.reads.find((r) => r.kind === 'linearizable' && r.where === 'spread')!.rounds;
  const linLeader = (s: SystemResults): Rounds =>
    s.reads.find((r) => r.kind === 'linearizable' && r.where === 'leader')!.rounds;
  const maxOf = (xs: number[]) => (xs.length === 0 ? NaN : Math.max(...xs));
  const atMost = (value: number, limit: number): boolean => value <= limit;
  const atLeast = (value: number, limit: number): boolean => value >= limit;
  const goals: Array<[string, number, (value: number) => boolean]> = [
    [
      'p50, 1 write in flight <= etcd',
      roundRatios(writesAt(c, 1), writesAt(e, 1), (l) => l.p50Ms).median,
      (v) => atMost(v, 1),
    ],
    ...[64, 256].flatMap(
      (inflight): Array<[string, number, (value: number) => boolean]> => [
        [
          `writes/s, ${inflight} in flight >= 1.2x etcd`,
          roundRatios(writesAt(c, inflight), writesAt(e, inflight), (l) => l.opsPerSecond).median,
          (v) => atLeast(v, 1.2),
        ],
        [
          `write p99, ${inflight} in flight <= etcd`,
          roundRatios(writesAt(c, inflight), writesAt(e, inflight), (l) => l.p99Ms).median,
          (v) => atMost(v, 1),
        ],
      ],
    ),
    [
      'server CPU per write (64 in flight) <= etcd',
      roundRatios(writesAt(c, 64), writesAt(e, 64), cpuPer1000).median,
      (v) => atMost(v, 1),
    ],
    [
      'server CPU per linearizable read (the leader) <= etcd',
      roundRatios(linLeader(c), linLeader(e), cpuPer1000).median,
      (v) => atMost(v, 1),
    ],
    [
      'server CPU per linearizable read (spread) <= etcd',
      roundRatios(linSpread(c), linSpread(e), cpuPer1000).median,
      (v) => atMost(v, 1),
    ],
    [
      'linearizable reads/s spread >= 1.5x etcd',
      roundRatios(linSpread(c), linSpread(e), (l) => l.opsPerSecond).median,
      (v) => atLeast(v, 1.5),
    ],
  ];
  table(
    'Goals',
    ['goal', 'measured', 'met'],
    [
      ...goals.map(([goal, value, met]) => [goal, `${value.toFixed(2)}x`, met(value) ? 'yes' : 'no']),
      ['failover max < 500 ms', `${fmt(maxOf(c.failoverMs))} ms`, maxOf(c.failoverMs) < 500 ? 'yes' : 'no'],
    ],
  );
  const out = join(process.cwd(), 'bench-results');
  mkdirSync(out, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const jsonFile = join(out, `cluster-${stamp}.json`);
  writeFileSync(
    jsonFile,
    JSON.stringify({ etcdVersion, options, coffer: c, etcd: e, grpcFloor: floor, replicationFloor }, null, 2),
  );
  const pngFile = join(out, `cluster-${stamp}.png`);
  await drawChart(pngFile, {
    title: 'Writes, 256 B: p99 latency against throughput (1, 16, 64, 256 in flight; medians of rounds)',
    xLabel: 'writes/s',
    yLabel: 'p99 ms',
    series: [
      {
        name: 'coffer',
        color: '#1f77b4',
        points: c.writes
          .filter((w) => w.bytes === 256)
          .map((w) => ({
            x: med(w.rounds, (l) => l.opsPerSecond),
            y: med(w.rounds, (l) => l.p99Ms),
            label: String(w.inflight),
          })),
      },
      {
        name: 'etcd',
        color: '#d62728',
        points: e.writes
          .filter((w) => w.bytes === 256)
          .map((w) => ({
            x: med(w.rounds, (l) => l.opsPerSecond),
            y: med(w.rounds, (l) => l.p99Ms),
            label: String(w.inflight),
          })),
      },
    ],
  });
  console.log(`\nresults: ${jsonFile}\nchart:   ${pngFile}`);
}
