import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { LevelStorage } from '../../src/storage/level-storage.ts';
import { StorageError } from '../../src/storage/types.ts';
import type { Entry } from '../../src/raft/types.ts';
import { storageConformance } from './conformance.ts';

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'coffer-level-'));
}

storageConformance('LevelStorage', () => {
  const dir = tempDir();
  return {
    open: () => LevelStorage.open(dir),
    reopen: async (storage) => {
      await storage.close();
      return LevelStorage.open(dir);
    },
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
});

const entries = (from: number, to: number): Entry[] =>
  Array.from({ length: to - from + 1 }, (_, k) => ({
    kind: 'normal',
    index: from + k,
    term: 2,
    data: Buffer.from(`value-${from + k}`),
  }));

/** Writes a small log, then lets `damage` change the raw LevelDB contents. */
async function damaged(damage: (db: Level<string, Buffer>) => Promise<void>): Promise<{ dir: string; error: unknown }> {
  const dir = tempDir();
  const storage = await LevelStorage.open(dir);
  await storage.load();
  await storage.save({ hardState: { term: 2, vote: 1, commit: 10 }, entries: entries(1, 20), snapshot: null });
  await storage.close();
  const raw = new Level<string, Buffer>(dir, { keyEncoding: 'utf8', valueEncoding: 'buffer' });
  await damage(raw);
  await raw.close();
  const reopened = await LevelStorage.open(dir);
  const error = await reopened.load().then(
    () => null,
    (e: unknown) => e,
  );
  await reopened.close();
  return { dir, error };
}

const entryKey = (index: number): string => 'e' + index.toString(16).padStart(14, '0');

test('a flipped byte in a stored entry stops the load with an error naming the entry and the directory', async () => {
  const { dir, error } = await damaged(async (db) => {
    const value = (await db.get(entryKey(7)))!;
    value[value.length - 2]! ^= 0x01;
    await db.put(entryKey(7), value);
  });
  try {
    assert.ok(error instanceof StorageError && error.code === 'STORAGE_CORRUPT', String(error));
    assert.match(error.message, /raft entry 7 is corrupt: checksum mismatch/);
    assert.ok(error.message.includes(dir), 'the message names the data directory');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a missing entry in the middle of the log is reported as a gap', async () => {
  const { dir, error } = await damaged((db) => db.del(entryKey(12)));
  try {
    assert.ok(error instanceof StorageError && error.code === 'STORAGE_CORRUPT', String(error));
    assert.match(error.message, /raft entry 13 is corrupt: the log has a gap after entry 11/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a hard state whose commit index is past the stored log is refused', async () => {
  const { dir, error } = await damaged(async (db) => {
    for (let i = 11; i <= 20; i++) await db.del(entryKey(i));
    for (let i = 1; i <= 9; i++) await db.del(entryKey(i));
    await db.del(entryKey(10));
  });
  try {
    assert.ok(error instanceof StorageError && error.code === 'STORAGE_CORRUPT', String(error));
    assert.match(error.message, /hard state is corrupt: its commit index 10 is beyond the stored log/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
