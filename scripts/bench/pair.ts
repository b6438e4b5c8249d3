/**
 * npm run bench -- pair [--base REF]: this tree's build beside another commit's, both running at
 * the same time. On these machines the speed drifts by up to 1.8x within minutes, so two builds
 * measured one after the other (or in turns) differ by more than most changes do; two clusters
 * run at once share the drift, and their ratio in each round is what a change did.
 *
 * The base commit (default HEAD, so a tree with no changes gives the noise of the method itself)
 * is checked out in a git worktree beside this one and built there (with this tree's node_modules:
 * a base whose dependencies differ needs its own `npm ci` first); three managers of each build
 * start (their data directories made by this tree's `coffer init`: nearby commits, one format),
 * each is loaded with the same secrets, and in every round one load generator (this process)
 * sends the same closed-loop puts to both leaders at once. The first round warms both up and is
 * not counted. Printed: each round's writes a second and CPU a write (leader, followers, all
 * three) for both, the ratios, and their medians; the JSON goes to bench-results/.
 *
 * PAIR_INFLIGHT (32 a cluster), PAIR_ROUNDS (5, the first a warm-up), PAIR_SECONDS (10 a round)
 * and PAIR_KEYS (1,000 secrets of 256 B) change the load.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fmt, median, table } from './format.ts';
import { cpuSeconds, runLoad, type LoadResult } from './load.ts';
import { CofferTarget, buildTree } from './targets.ts';

const ROOT = join(import.meta.dirname, '../..');
const INFLIGHT = Number(process.env['PAIR_INFLIGHT'] ?? 32);
const ROUNDS = Number(process.env['PAIR_ROUNDS'] ?? 5);
const SECONDS = Number(process.env['PAIR_SECONDS'] ?? 10);
const KEYS = Number(process.env['PAIR_KEYS'] ?? 1000);

/** One cluster's round: its load's figures and each manager's CPU a write, in microseconds (the leader first). */
export interface PairSide {
  readonly opsPerSecond: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
  readonly cpuUsPerWrite: readonly number[];
}

export interface PairRound {
  readonly tree: PairSide;
  readonly base: PairSide;
}

const total = (side: PairSide): number => side.cpuUsPerWrite.reduce((a, b) => a + b, 0);

/** The ratios the pair benchmark reports, tree over base, per counted round and as medians. */
export function pairRatios(rounds: readonly PairRound[]): {
  cpu: number[];
  leaderCpu: number[];
  writes: number[];
  medianCpu: number;
  medianLeaderCpu: number;
  medianWrites: number;
} {
  const cpu = rounds.map((r) => total(r.tree) / total(r.base));
  const leaderCpu = rounds.map((r) => r.tree.cpuUsPerWrite[0]! / r.base.cpuUsPerWrite[0]!);
  const writes = rounds.map((r) => r.tree.opsPerSecond / r.base.opsPerSecond);
  return {
    cpu,
    leaderCpu,
    writes,
    medianCpu: median(cpu),
    medianLeaderCpu: median(leaderCpu),
    medianWrites: median(writes),
  };
}

interface Side {
  readonly target: CofferTarget;
  readonly leader: number;
  readonly pids: () => Array<number | undefined>;
}

async function startSide(root: string, cli?: string): Promise<Side> {
  const target = await CofferTarget.start(root, 3, cli === undefined ? {} : { cli });
  const leader = await target.leader();
  await target.putNumbered(leader, KEYS, randomBytes(256));
  // The leader first, then the followers.
  const order = [leader, ...[0, 1, 2].filter((k) => k !== leader)];
  return { target, leader, pids: () => order.map((k) => target.pid(k)) };
}

async function measure(side: Side, value: Buffer): Promise<PairSide> {
  const before = side.pids().map((pid) => cpuSeconds(pid));
  const result: LoadResult = await runLoad({
    inflight: INFLIGHT,
    seconds: SECONDS,
    op: () => side.target.put(side.leader, `bench/k${Math.floor(Math.random() * KEYS)}`, value),
    pids: side.pids,
  });
  const after = side.pids().map((pid) => cpuSeconds(pid));
  return {
    opsPerSecond: result.opsPerSecond,
    p50Ms: result.p50Ms,
    p99Ms: result.p99Ms,
    cpuUsPerWrite: after.map((a, k) => ((a - before[k]!) * 1e6) / Math.max(1, result.ops)),
  };
}

function git(args: string[], cwd = ROOT): string {
  return execFileSync('git', args, { cwd, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).trim();
}

export async function benchPair(args: readonly string[]): Promise<void> {
  const at = args.indexOf('--base');
  const ref = at >= 0 ? args[at + 1] : 'HEAD';
  if (ref === undefined || ref.startsWith('--')) throw new Error('--base needs a commit (a hash, a branch, HEAD~1)');
  const baseCommit = git(['rev-parse', '--verify', `${ref}^{commit}`]);
  const changed = git(['status', '--porcelain', '--untracked-files=no']) !== '';
  const head = git(['rev-parse', 'HEAD']);
  const scratch = mkdtempSync(join(tmpdir(), 'coffer-pair-'));
  const worktree = join(scratch, 'base');
  console.log(
    `\nPair: this tree (${head.slice(0, 7)}${changed ? ' with uncommitted changes' : ''}) beside ${ref} (${baseCommit.slice(0, 7)}), both at once; ${INFLIGHT} puts in flight to each, ${fmt(KEYS)} secrets, ${ROUNDS} rounds of ${SECONDS} s (the first not counted)`,
  );
  if (baseCommit === head && !changed)
    console.log('  (the same code on both sides: the ratios show the noise of the method itself)');
  const sides: Side[] = [];
  try {
    git(['worktree', 'add', '--detach', worktree, baseCommit]);
    symlinkSync(join(ROOT, 'node_modules'), join(worktree, 'node_modules'));
    buildTree(worktree);
    const baseCli = join(worktree, 'dist', 'run', 'coffer.mjs');
    if (!existsSync(baseCli))
      throw new Error(`the base's build made no ${baseCli}: a commit too old for this benchmark`);
    const tree = await startSide(join(scratch, 'tree'));
    sides.push(tree);
    const base = await startSide(join(scratch, 'base-cluster'), baseCli);
    sides.push(base);
    const value = randomBytes(256);
    const rounds: PairRound[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      // The side whose load starts first changes each round (its workers go first in this process).
      const [treeSide, baseSide] =
        round % 2 === 0
          ? await Promise.all([measure(tree, value), measure(base, value)])
          : await Promise.all([measure(base, value), measure(tree, value)]).then(([b, t]) => [t, b] as const);
      const r: PairRound = { tree: treeSide, base: baseSide };
      const note = round === 0 ? ' (warm-up, not counted)' : '';
      console.log(
        `  round ${round + 1}${note}: tree ${fmt(r.tree.opsPerSecond)} w/s, ${fmt(total(r.tree))} us a write; base ${fmt(r.base.opsPerSecond)} w/s, ${fmt(total(r.base))} us; CPU ratio ${(total(r.tree) / total(r.base)).toFixed(3)}`,
      );
      if (round > 0) rounds.push(r);
    }
    if (rounds.length === 0) return;
    const ratios = pairRatios(rounds);
    const rows = rounds.map((r, k) => [
      String(k + 2),
      fmt(r.tree.opsPerSecond),
      fmt(r.base.opsPerSecond),
      r.tree.cpuUsPerWrite.map((c) => fmt(c)).join(' / '),
      r.base.cpuUsPerWrite.map((c) => fmt(c)).join(' / '),
      ratios.cpu[k]!.toFixed(3),
    ]);
    rows.push([
      'median',
      '',
      '',
      '',
      '',
      `${ratios.medianCpu.toFixed(3)} (leader ${ratios.medianLeaderCpu.toFixed(3)}, writes/s ${ratios.medianWrites.toFixed(3)})`,
    ]);
    table(
      'Pair: CPU a write, microseconds (tree beside base, at once)',
      [
        'round',
        'tree w/s',
        'base w/s',
        'tree CPU (leader / followers)',
        'base CPU (leader / followers)',
        'tree/base CPU a write (3 managers)',
      ],
      rows,
    );
    const out = join(process.cwd(), 'bench-results');
    mkdirSync(out, { recursive: true });
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    writeFileSync(
      join(out, `pair-${stamp}.json`),
      `${JSON.stringify({ head, changed, base: baseCommit, inflight: INFLIGHT, keys: KEYS, seconds: SECONDS, rounds, ratios }, null, 2)}\n`,
    );
  } finally {
    await Promise.all(sides.map((s) => s.target.stop()));
    try {
      git(['worktree', 'remove', '--force', worktree]);
    } catch {
      // Removed below with the rest; `git worktree prune` forgets it.
      git(['worktree', 'prune']);
    }
    rmSync(scratch, { recursive: true, force: true });
  }
}
