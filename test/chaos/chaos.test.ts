import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatSummary, runChaos } from './run.ts';

// The short chaos run of `npm test`; `npm run chaos` runs longer ones.
test('a short chaos run (three manager processes; leader kills, minority kills, pauses, full restarts) stays linearizable, loses nothing and converges', { timeout: 240_000 }, async () => {
  const summary = await runChaos({ managers: 3, durationS: 45, nemeses: ['kill-leader', 'kill-minority', 'pause', 'restart-all'], seed: 2, checkStepsMax: 20_000_000 });
  const text = formatSummary(summary);
  assert.ok(summary.faults.length >= 4, `faults were injected:\n${text}`);
  assert.ok(summary.operations.ok > 500, `the workload made progress:\n${text}`);
  assert.deepEqual(summary.lostWrites, [], text);
  assert.equal(summary.converged, true, text);
  assert.deepEqual(summary.verdict.staleAnomalies, [], text);
  // Proven anomalies fail the test. A key the search could not decide within its step limit (many
  // unknown outcomes) is reported, not counted as proof either way: the checker's known limit.
  for (const key of summary.verdict.keys) assert.ok(key.linearizable || key.undecided === true, `key ${key.key}: ${key.explanation ?? ''}\n${text}`);
  assert.ok(summary.verdict.keys.some((k) => k.linearizable), `at least one key was proven linearizable:\n${text}`);
  for (const ms of summary.failoversMs) assert.ok(Number.isFinite(ms), `a write was acknowledged after every leader kill:\n${text}`);
});
