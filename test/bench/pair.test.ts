import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pairRatios, type PairRound } from '../../scripts/bench/pair.ts';
import { Processes } from '../processes/processes.ts';

const side = (opsPerSecond: number, cpu: number[]) => ({ opsPerSecond, p50Ms: 1, p99Ms: 2, cpuUsPerWrite: cpu });

test('the pair benchmark gives each round the tree-over-base ratios of CPU a write (three managers, the leader) and writes a second, and their medians', () => {
  const rounds: PairRound[] = [
    { tree: side(500, [600, 300, 300]), base: side(400, [800, 400, 400]) }, // 0.75, leader 0.75, writes 1.25
    { tree: side(450, [900, 450, 450]), base: side(450, [900, 450, 450]) }, // 1, 1, 1
    { tree: side(300, [1000, 500, 600]), base: side(600, [800, 400, 400]) }, // 1.0625, 1.25, 0.5
  ];
  const ratios = pairRatios(rounds);
  assert.deepEqual(ratios.cpu, [0.75, 1, 2100 / 1600]);
  assert.deepEqual(ratios.leaderCpu, [0.75, 1, 1.25]);
  assert.deepEqual(ratios.writes, [1.25, 1, 0.5]);
  assert.equal(ratios.medianCpu, 1);
  assert.equal(ratios.medianLeaderCpu, 1);
  assert.equal(ratios.medianWrites, 1);
});

test("managers of another build: Processes runs the compiled CLI it is given, not this tree's", {
  timeout: 30_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-pair-cli-'));
  const cli = join(dir, 'other-build.mjs');
  writeFileSync(cli, "console.log('other build', JSON.stringify(process.argv.slice(2)));\n");
  const procs = new Processes(dir, { cli });
  try {
    const child = procs.start('m1', ['server', '--data', 'x']);
    await new Promise<void>((resolve) => child.once('exit', () => resolve()));
    // The log is written through a stream: give it its turn.
    let log = '';
    for (let tries = 0; tries < 50 && !log.includes('other build'); tries++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      log = procs.log('m1');
    }
    assert.match(log, /other build \["server","--data","x"\]/);
  } finally {
    await procs.killAll();
    rmSync(dir, { recursive: true, force: true });
  }
});
