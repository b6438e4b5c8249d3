import { test } from 'node:test';
import assert from 'node:assert/strict';
import { NEMESES, formatSummary, runChaos } from './run.ts';

// The short chaos run of `npm test`; `npm run chaos` runs longer ones.
// Partitions need network namespaces (root); without them the run says so and goes on without.
test('a short chaos run (three manager processes; kills, pauses, full restarts, partitions, leadership transfers, membership changes) stays linearizable, loses nothing and converges', {
  timeout: 300_000,
}, async () => {
  const summary = await runChaos({
    managers: 3,
    durationS: 60,
    nemeses: [...NEMESES],
    seed: 2,
    checkStepsMax: 20_000_000,
    log: (line) => console.log(line),
  });
  const text = formatSummary(summary);
  assert.ok(summary.faults.length >= 6, `faults were injected:\n${text}`);
  assert.ok(new Set(summary.faults.map((f) => f.nemesis)).size >= 4, `several kinds of faults:\n${text}`);
  assert.ok(summary.operations.ok > 500, `the workload made progress:\n${text}`);
  assert.deepEqual(summary.lostWrites, [], text);
  assert.equal(summary.converged, true, text);
  assert.deepEqual(summary.verdict.staleAnomalies, [], text);
  // Proven anomalies fail the test. A key the search could not decide within its step limit (many
  // unknown outcomes) is reported, not counted as proof either way: the checker's known limit.
  for (const key of summary.verdict.keys)
    assert.ok(key.linearizable || key.undecided === true, `key ${key.key}: ${key.explanation ?? ''}\n${text}`);
  assert.ok(
    summary.verdict.keys.some((k) => k.linearizable),
    `at least one key was proven linearizable:\n${text}`,
  );
  for (const ms of summary.failoversMs)
    assert.ok(Number.isFinite(ms), `a write was acknowledged after every leader kill:\n${text}`);
});
