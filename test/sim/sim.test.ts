import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { runSimulation } from './simulation.ts';

const root = join(import.meta.dirname, '../..');

test('the same seed gives the same run, event for event; another seed another run', () => {
  const a = runSimulation({ seed: 12345, nodes: 5 });
  const b = runSimulation({ seed: 12345, nodes: 5 });
  const c = runSimulation({ seed: 12346, nodes: 5 });
  assert.equal(a.ok, true, a.message);
  assert.equal(a.traceHash, b.traceHash);
  assert.deepEqual(a.stats, b.stats);
  assert.notEqual(a.traceHash, c.traceHash);
});

test('the simulated runs really inject every kind of fault and exercise every feature', () => {
  const totals: Record<string, number> = {};
  for (let seed = 1; seed <= 12; seed++) {
    const result = runSimulation({ seed, nodes: seed % 2 === 0 ? 5 : 3 });
    assert.equal(result.ok, true, `seed ${seed}: ${result.property}: ${result.message}`);
    for (const [key, value] of Object.entries(result.stats)) totals[key] = (totals[key] ?? 0) + value;
  }
  for (const key of [
    'dropped',
    'crashes',
    'crashesMidReady',
    'crashesAfterEarlyAppends',
    'restarts',
    'partitions',
    'snapshotsTaken',
    'snapshotsInstalled',
    'readsServed',
    'readsRefused',
    'confChangesApplied',
    'transfers',
  ]) {
    assert.ok((totals[key] ?? 0) > 0, `no ${key} in 12 seeds: the simulator is not exercising it`);
  }
  assert.ok(totals['leaders']! > 12 * 3, 'leaders should change many times per run');
});

test('a few hundred seeds of 3 and 5 nodes pass every safety, liveness and non-disruption check', () => {
  const run = spawnSync(
    process.execPath,
    ['--import', 'tsx', 'test/sim/cli.ts', '--seeds', '300', '--seed', '100000'],
    {
      cwd: root,
      encoding: 'utf8',
      timeout: 300_000,
    },
  );
  assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
  assert.match(run.stdout, /sim: all 300 seeds passed/);
});
