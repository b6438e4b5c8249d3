#!/usr/bin/env node
// Proves the simulator catches real bugs: for each mutant (one Raft rule, or one rule of the
// applied state's store, deliberately broken),
// copy the tree to a temporary directory, apply the mutation there (src/ is never touched), run
// the simulator over seeds until one fails, and print the seed and the violated property.
// A mutant that survives every seed makes this script fail.
// The simulator runs as `npm run sim` does: every node applies through the real AppliedState.
// Usage: npm run sim:mutants -- [--seeds N] [--only NAME]
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { parseArgs } from 'node:util';

const { values } = parseArgs({ options: { seeds: { type: 'string', default: '400' }, only: { type: 'string' } } });

const MUTANTS = [
  {
    name: 'commit-by-counting-old-terms',
    what: 'the leader commits an entry of an older term by counting its replicas (Figure 8)',
    file: 'src/raft/raft.ts',
    from: 'if (index <= this.log.committed || this.log.term(index) !== this.term) return false;',
    to: 'if (index <= this.log.committed) return false;',
  },
  {
    name: 'vote-not-persisted',
    what: 'the vote is left out of the hard state a Ready asks to persist',
    file: 'src/raft/raw-node.ts',
    from: 'hardState: hardChanged ? hard : null,',
    to: 'hardState: hardChanged ? { ...hard, vote: 0 } : null,',
    // Keep RawNode's own bookkeeping right, so only what reaches storage is wrong.
    also: [
      [
        'if (ready.hardState !== null) this.#prevHardState = ready.hardState;',
        'if (ready.hardState !== null) this.#prevHardState = { ...ready.hardState, vote: this.#raft.vote };',
      ],
    ],
  },
  {
    name: 'pre-vote-ignores-leader-lease',
    what: 'a voter grants a pre-vote while it still hears from a leader',
    file: 'src/raft/raft.ts',
    from: 'if (inLease && !m.transfer) return;',
    to: "if (inLease && !m.transfer && m.type === 'vote') return;",
  },
  {
    name: 'vote-ignores-log-up-to-date',
    what: 'a voter grants its vote without checking that the candidate log is at least as up to date (§5.4.1)',
    file: 'src/raft/raft.ts',
    from: 'if (canVote && this.log.isUpToDate(m.lastIndex, m.lastTerm)) {',
    to: "if (canVote && (m.type === 'vote' || this.log.isUpToDate(m.lastIndex, m.lastTerm))) {",
  },
  {
    name: 'read-index-without-heartbeat-round',
    what: 'a leader releases a read at once instead of confirming its leadership with a quorum',
    file: 'src/raft/raft.ts',
    from: 'if (this.voters.size === 1 && this.voters.has(this.id)) {',
    to: 'if (true) {',
  },
  {
    name: 'applied-index-not-in-the-same-batch',
    what: 'the applied state writes its applied index in a store write of its own, before the changes it covers (a crash between them skips entries at the replay)',
    file: 'src/state/applied-state.ts',
    // In AppliedState.commit(): extra[0] is the applied index record.
    from: 'await this.#records.commit(extra);',
    to: 'await this.#store.write(extra.slice(0, 1)); await this.#records.commit(extra.slice(1));',
  },
];

const root = resolve(import.meta.dirname, '..');
const seeds = Number(values.seeds);
let survivors = 0;

for (const mutant of MUTANTS) {
  if (values.only !== undefined && mutant.name !== values.only) continue;
  const dir = mkdtempSync(join(tmpdir(), `coffer-mutant-${mutant.name}-`));
  try {
    for (const part of ['src', 'test', 'package.json', 'tsconfig.json'])
      cpSync(join(root, part), join(dir, part), { recursive: true });
    symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
    const path = join(dir, mutant.file);
    let text = readFileSync(path, 'utf8');
    for (const [from, to] of [[mutant.from, mutant.to], ...(mutant.also ?? [])]) {
      if (!text.includes(from))
        throw new Error(
          `mutant ${mutant.name}: the code to break is not in ${mutant.file} any more; update this script`,
        );
      text = text.replace(from, to);
    }
    writeFileSync(path, text);
    const started = Date.now();
    const run = spawnSync(
      process.execPath,
      ['--import', 'tsx', 'test/sim/cli.ts', '--seeds', String(seeds), '--jobs', '1', '--stop-at-first'],
      { cwd: dir, encoding: 'utf8' },
    );
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    const fail = /FAIL seed (\d+) \((\d+) nodes\): ([a-z-]+): (.*)/.exec(run.stderr);
    if (fail === null) {
      survivors++;
      console.log(`SURVIVED ${mutant.name} (${mutant.what}): no violation in ${seeds} seeds (${seconds} s)`);
    } else {
      console.log(`caught   ${mutant.name} (${mutant.what})`);
      console.log(
        `         seed ${fail[1]}, ${fail[2]} nodes, after ${seconds} s: ${fail[3]}: ${fail[4].slice(0, 240)}`,
      );
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
if (survivors > 0) {
  console.log(`${survivors} mutant(s) survived: the simulator missed a broken rule`);
  process.exit(1);
}
