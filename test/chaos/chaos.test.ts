import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readHistoryFile } from './history-file.ts';
import { checkHistory } from './linearizability.ts';
import { NEMESES, formatSummary, runChaos } from './run.ts';

test('npm run chaos -- --help prints the options and exits 0; an unknown option exits 2 and says where the options are', () => {
  const run = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'test/chaos/cli.ts', ...args], {
      encoding: 'utf8',
      timeout: 30_000,
    });
  const help = run('--help');
  assert.equal(help.status, 0, help.stderr);
  for (const option of ['--managers', '--duration', '--nemesis', '--seed', '--history', '--state-dump', '--check'])
    assert.ok(help.stdout.includes(option), `--help names ${option}`);
  const bad = run('--no-such-option');
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /Unknown option '--no-such-option'[\s\S]*--help/);
});

// The short chaos run of `npm test`; `npm run chaos` runs longer ones.
// Partitions need network namespaces (root); without them the run says so and goes on without.
test('a short chaos run (three manager processes; kills, pauses, full restarts, partitions, link faults, leadership transfers, membership changes) stays linearizable, loses nothing and converges', {
  timeout: 300_000,
}, async () => {
  const out = mkdtempSync(join(tmpdir(), 'coffer-chaos-out-'));
  const historyFile = join(out, 'history.jsonl');
  const stateDumpDir = join(out, 'state');
  const summary = await runChaos({
    managers: 3,
    durationS: 60,
    nemeses: [...NEMESES],
    seed: 2,
    checkStepsMax: 20_000_000,
    historyFile,
    stateDumpDir,
    log: (line) => console.log(line),
  });
  const text = formatSummary(summary);
  // The evidence, checked again from the files alone: the history by the checker, convergence
  // by the state dumps (one digest, the same version and value of every key on every manager).
  try {
    const { ops, faults } = readHistoryFile(historyFile);
    assert.equal(faults.length, summary.faults.length, 'every fault has its line');
    assert.ok(ops.length >= summary.operations.ok, 'every operation has its lines');
    assert.equal(checkHistory(ops, 20_000_000).linearizable, summary.verdict.linearizable, text);
    const dumps = readdirSync(stateDumpDir).map(
      (f) => JSON.parse(readFileSync(join(stateDumpDir, f), 'utf8')) as { stateDigest: string; keys: unknown },
    );
    assert.equal(dumps.length, 3);
    assert.equal(new Set(dumps.map((d) => d.stateDigest)).size, 1, 'one state digest');
    assert.equal(new Set(dumps.map((d) => JSON.stringify(d.keys))).size, 1, 'the same keys, versions and values');
    assert.ok(Object.keys(dumps[0]!.keys as object).length > 3, 'the growing key set is in the dump');
    for (const kind of summary.availability) assert.ok(kind.faults > 0 && Number.isFinite(kind.writeGapMs.max), text);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
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
