import { test } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cpuSeconds } from '../../scripts/bench/load.ts';
import { profilerCpuSeconds } from '../../scripts/bench/profile.ts';

/** A Node process that spins for up to 20 s (killed sooner by the test). */
function spinner(nodeArgs: string[]): ChildProcess {
  return spawn(process.execPath, [...nodeArgs, '-e', 'const end = Date.now() + 20000; while (Date.now() < end);'], {
    stdio: 'ignore',
  });
}

async function until(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return check();
}

test("the profile bench finds V8's sampling thread and counts its CPU apart, and finds none in a process not profiled", {
  timeout: 30_000,
}, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-profiler-thread-'));
  const profiled = spinner([`--cpu-prof`, `--cpu-prof-dir=${dir}`, '--cpu-prof-interval=100']);
  const plain = spinner([]);
  try {
    assert.ok(
      await until(() => profilerCpuSeconds(profiled.pid) > 0, 15_000),
      'the sampling thread of a process run with --cpu-prof took some CPU',
    );
    // The process's whole CPU includes the sampling thread's, which is only part of it.
    assert.ok(profilerCpuSeconds(profiled.pid) < cpuSeconds(profiled.pid));
    assert.ok(await until(() => cpuSeconds(plain.pid) > 0.3, 15_000), 'the plain spinner ran');
    assert.equal(profilerCpuSeconds(plain.pid), 0, 'no sampling thread without --cpu-prof');
    assert.equal(profilerCpuSeconds(undefined), 0);
  } finally {
    profiled.kill('SIGKILL');
    plain.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
