import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FLOOR_LEVELS, measureReplicationFloor } from '../../scripts/bench/replication-floor.ts';

/**
 * The floor the cluster bench prints beside etcd (`npm run bench -- floor`) must measure writes
 * that were answered, at every level: a floor whose members failed would print a fast nothing.
 * Short runs; the figures themselves are the bench's to print, not this test's to judge.
 */
test('the replication floor answers every write at every level, with its three members on CPU', {
  timeout: 120_000,
}, async () => {
  const results = await measureReplicationFloor({ seconds: 0.5, warmUpSeconds: 0.3, inflights: [1, 8], bytes: 256 });
  assert.deepEqual(
    results.map((r) => `${r.level} ${r.inflight}`),
    FLOOR_LEVELS.flatMap((level) => [`${level} 1`, `${level} 8`]),
  );
  for (const { level, inflight, result } of results) {
    assert.equal(result.errors, 0, `${level} at ${inflight} in flight: ${result.errors} writes failed`);
    assert.ok(result.ops > 0, `${level} at ${inflight} in flight answered no write`);
    assert.ok(result.serverCpuSeconds > 0, `${level}: no CPU counted for the three members`);
  }
});
