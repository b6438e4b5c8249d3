import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LevelStorage } from '../../src/storage/level-storage.ts';

const writer = join(import.meta.dirname, 'fixtures/writer.ts');

/** Runs the writer until it has acknowledged at least `acks` more writes, then SIGKILLs it. */
function runAndKill(dir: string, acks: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', writer, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    const deadline = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error('the writer made no progress within 60 s'));
    }, 60_000);
    let start = -1;
    let lastAcked = 0;
    let buffered = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      buffered += chunk;
      const lines = buffered.split('\n');
      buffered = lines.pop()!;
      for (const line of lines) {
        const [word, n] = line.split(' ');
        if (word === 'ready') start = Number(n);
        if (word === 'acked') lastAcked = Number(n);
      }
      if (start >= 0 && lastAcked >= start + acks && child.exitCode === null && !child.killed) child.kill('SIGKILL');
    });
    child.on('exit', () => {
      clearTimeout(deadline);
      resolve(lastAcked);
    });
  });
}

test('after kill -9 at random moments, every acknowledged write is there and no Ready is half written', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-crash-'));
  try {
    for (let round = 0; round < 4; round++) {
      const acked = await runAndKill(dir, 20 + Math.floor(Math.random() * 120));
      const storage = await LevelStorage.open(dir);
      const state = await storage.load();
      await storage.close();
      const last = state.entries[state.entries.length - 1]!;
      assert.ok(
        last.index >= acked,
        `round ${round}: write ${acked} was acknowledged but the log ends at ${last.index}`,
      );
      // Entry i and the hard state of term i were one batch: they survive together or not at all.
      assert.equal(
        state.hardState.term,
        last.index,
        `round ${round}: hard state and entries were not written atomically`,
      );
      assert.equal(state.entries.length, last.index, 'the log is contiguous from index 1');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
