import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { runSimulation } from './simulation.ts';

const root = join(import.meta.dirname, '../..');

test('the same seed gives the same run, event for event; another seed another run', async () => {
  const a = await runSimulation({ seed: 12345, nodes: 5 });
  const b = await runSimulation({ seed: 12345, nodes: 5 });
  const c = await runSimulation({ seed: 12346, nodes: 5 });
  assert.equal(a.ok, true, a.message);
  assert.equal(a.traceHash, b.traceHash);
  assert.deepEqual(a.stats, b.stats);
  assert.notEqual(a.traceHash, c.traceHash);
  // The hash chain alone (no AppliedState) is a run of its own, as deterministic.
  const d = await runSimulation({ seed: 12345, nodes: 5, appliedState: false });
  const e = await runSimulation({ seed: 12345, nodes: 5, appliedState: false });
  assert.equal(d.ok, true, d.message);
  assert.equal(d.traceHash, e.traceHash);
  assert.equal(d.stats.stateBatches, 0);
});

test('the simulated runs really inject every kind of fault and exercise every feature', async () => {
  const totals: Record<string, number> = {};
  for (let seed = 1; seed <= 12; seed++) {
    const result = await runSimulation({ seed, nodes: seed % 2 === 0 ? 5 : 3 });
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
    // The applied state: batches lost with a crash, crashes on each side of a state batch and at
    // a write of the store, replays that skipped what the store held, checks of the secrets.
    'stateBatchesLost',
    'crashesBeforeStateCommit',
    'stateCommitsDeferred',
    'crashesAfterStateCommit',
    'crashesBeforeCommitIndexWrite',
    'commitIndexWritesLeft',
    'crashesAtStateWrite',
    'skippedOnStart',
    'secretsChecked',
    // Streamed snapshots: sent with their records, written aside, and a crash at each point of
    // their install (writing aside, before the switch, after it), checked at the next start.
    'snapshotsStreamed',
    'snapshotBatchesAside',
    'crashesPreparingSnapshot',
    'crashesBeforeSnapshotSwitch',
    'crashesAfterSnapshotSwitch',
    'installsCheckedAfterCrash',
    // The small parts (policy writes): their image stored with the state batches, restarts from
    // that image and restarts that fall back to the snapshot and the log, and the checks of them.
    'imagesStored',
    'restartsFromImage',
    'restartsFromSnapshot',
    'smallPartsChecked',
  ]) {
    assert.ok((totals[key] ?? 0) > 0, `no ${key} in 12 seeds: the simulator is not exercising it`);
  }
  assert.ok(totals['leaders']! > 12 * 3, 'leaders should change many times per run');
});

test('two hundred seeds of 3 and 5 nodes, each node applying through AppliedState, pass every safety (applied exactly once included), liveness and non-disruption check', () => {
  // About 0.5 s of CPU a seed (the real apply path seals every record): 200 seeds, not the 300 of
  // the hash chain alone.
  const run = spawnSync(
    process.execPath,
    ['--import', 'tsx', 'test/sim/cli.ts', '--seeds', '200', '--seed', '100000'],
    {
      cwd: root,
      encoding: 'utf8',
      timeout: 540_000,
    },
  );
  assert.equal(run.status, 0, `${run.stdout}\n${run.stderr}`);
  assert.match(run.stdout, /sim: all 200 seeds passed/);
});
