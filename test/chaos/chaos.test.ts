import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatSummary, runChaos } from './run.ts';

// The short chaos run of `npm test`; `npm run chaos` runs longer ones.
test('a short chaos run (three manager processes; leader kills, minority kills, pauses, full restarts) stays linearizable, loses nothing and converges', { timeout: 240_000 }, async () => {
  const summary = await runChaos({ managers: 3, durationS: 45, nemeses: ['kill-leader', 'kill-minority', 'pause', 'restart-all'], seed: 2 });
  const text = formatSummary(summary);
  assert.ok(summary.faults.length >= 4, `faults were injected:\n${text}`);
  assert.ok(summary.operations.ok > 500, `the workload made progress:\n${text}`);
  assert.deepEqual(summary.lostWrites, [], text);
  assert.equal(summary.converged, true, text);
  assert.deepEqual(summary.verdict.staleAnomalies, [], text);
  assert.equal(summary.verdict.linearizable, true, text);
  for (const ms of summary.failoversMs) assert.ok(Number.isFinite(ms), `a write was acknowledged after every leader kill:\n${text}`);
});
