/**
 * One suite every RaftStorage must pass (as abstract-level does for its implementations).
 * `reopen` stands for a restart: for durable storage it closes and opens the directory again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { RawNode } from '../../src/raft/raw-node.ts';
import type { Entry, Snapshot } from '../../src/raft/types.ts';
import type { RaftStorage } from '../../src/storage/types.ts';
import { StorageError } from '../../src/storage/types.ts';
import { SeededRandom } from '../../src/util/prng.ts';

export interface StorageFactory {
  open(): Promise<RaftStorage>;
  reopen(storage: RaftStorage): Promise<RaftStorage>;
  cleanup(): Promise<void>;
}

const normal = (index: number, term: number, data: Uint8Array = randomBytes(1 + (index % 40))): Entry => ({
  kind: 'normal',
  index,
  term,
  data,
});
const range = (from: number, to: number, term: number): Entry[] =>
  Array.from({ length: to - from + 1 }, (_, k) => normal(from + k, term));
const snapshotAt = (index: number, term: number, bytes = 100): Snapshot => ({
  metadata: { index, term, confState: { voters: [1, 2, 3], learners: [4] } },
  data: randomBytes(bytes),
});

async function loaded(factory: StorageFactory): Promise<RaftStorage> {
  const storage = await factory.open();
  await storage.load();
  return storage;
}

export function storageConformance(name: string, makeFactory: () => StorageFactory): void {
  const run = (title: string, body: (factory: StorageFactory) => Promise<void>): void => {
    test(`${name}: ${title}`, async () => {
      const factory = makeFactory();
      try {
        await body(factory);
      } finally {
        await factory.cleanup();
      }
    });
  };

  run('a new store loads as empty', async (f) => {
    const s = await f.open();
    assert.deepEqual(await s.load(), { hardState: { term: 0, vote: 0, commit: 0 }, snapshot: null, entries: [] });
    await s.close();
  });

  run('hard state and entries come back exactly after a restart, bytes and conf changes included', async (f) => {
    let s = await loaded(f);
    const entries: Entry[] = [
      { kind: 'conf-change', index: 1, term: 1, change: { type: 'add-voter', nodeId: 1 } },
      { kind: 'conf-change', index: 2, term: 1, change: { type: 'add-learner', nodeId: 9 } },
      normal(3, 2, new Uint8Array(0)),
      ...range(4, 50, 2),
    ];
    await s.save({ hardState: { term: 2, vote: 1, commit: 2 }, entries, snapshot: null });
    s = await f.reopen(s);
    const state = await s.load();
    assert.deepEqual(state.hardState, { term: 2, vote: 1, commit: 2 });
    assert.equal(state.entries.length, entries.length);
    state.entries.forEach((e, k) => {
      const want = entries[k]!;
      assert.equal(e.index, want.index);
      assert.equal(e.term, want.term);
      assert.equal(e.kind, want.kind);
      if (e.kind === 'normal' && want.kind === 'normal') assert.deepEqual(Buffer.from(e.data), Buffer.from(want.data));
      if (e.kind === 'conf-change' && want.kind === 'conf-change') assert.deepEqual(e.change, want.change);
    });
    await s.close();
  });

  run('entries written from an index replace every stored entry from there on', async (f) => {
    let s = await loaded(f);
    await s.save({ hardState: { term: 2, vote: 1, commit: 3 }, entries: range(1, 10, 2), snapshot: null });
    await s.save({ hardState: { term: 3, vote: 2, commit: 3 }, entries: range(6, 7, 3), snapshot: null });
    s = await f.reopen(s);
    const { entries, hardState } = await s.load();
    assert.deepEqual(
      entries.map((e) => [e.index, e.term]),
      [
        [1, 2],
        [2, 2],
        [3, 2],
        [4, 2],
        [5, 2],
        [6, 3],
        [7, 3],
      ],
    );
    assert.deepEqual(hardState, { term: 3, vote: 2, commit: 3 });
    await s.close();
  });

  run('a received snapshot replaces the whole stored log, and the entries after it follow', async (f) => {
    let s = await loaded(f);
    await s.save({ hardState: { term: 1, vote: 1, commit: 5 }, entries: range(1, 20, 1), snapshot: null });
    const snapshot = snapshotAt(30, 4);
    await s.save({ hardState: { term: 4, vote: 0, commit: 30 }, entries: range(31, 33, 4), snapshot });
    s = await f.reopen(s);
    const state = await s.load();
    assert.deepEqual(state.snapshot?.metadata, snapshot.metadata);
    assert.deepEqual(Buffer.from(state.snapshot!.data), Buffer.from(snapshot.data));
    assert.deepEqual(
      state.entries.map((e) => e.index),
      [31, 32, 33],
    );
    await s.close();
  });

  run(
    'a snapshot with compaction keeps the tail from compactTo, and a restarted RawNode accepts the result',
    async (f) => {
      let s = await loaded(f);
      await s.save({ hardState: { term: 3, vote: 1, commit: 100 }, entries: range(1, 120, 3), snapshot: null });
      const snapshot = snapshotAt(100, 3, 3 * 1024 * 1024 + 17); // several chunks on LevelDB
      await s.saveSnapshot(snapshot, 90);
      s = await f.reopen(s);
      const state = await s.load();
      assert.equal(state.entries[0]!.index, 90);
      assert.equal(state.entries[state.entries.length - 1]!.index, 120);
      assert.deepEqual(Buffer.from(state.snapshot!.data), Buffer.from(snapshot.data));
      const node = new RawNode({ id: 1, random: new SeededRandom(1) }, state);
      const status = node.status();
      assert.equal(status.commit, 100);
      assert.equal(status.applied, 100);
      assert.equal(status.firstIndex, 91);
      assert.equal(status.lastIndex, 120);
      assert.deepEqual(status.confState, { voters: [1, 2, 3], learners: [4] });
      await s.close();
    },
  );

  run('an update that breaks the Ready contract is refused and changes nothing', async (f) => {
    let s = await loaded(f);
    await s.save({ hardState: { term: 1, vote: 1, commit: 0 }, entries: range(1, 3, 1), snapshot: null });
    await assert.rejects(
      s.save({ hardState: { term: 9, vote: 9, commit: 0 }, entries: [normal(5, 1), normal(7, 1)], snapshot: null }),
      (e: unknown) => e instanceof StorageError && e.code === 'STORAGE_INVALID_UPDATE',
    );
    await assert.rejects(
      s.save({ hardState: { term: 9, vote: 9, commit: 0 }, entries: [normal(6, 1)], snapshot: null }),
      (e: unknown) => e instanceof StorageError && e.code === 'STORAGE_INVALID_UPDATE' && /start at 6/.test(e.message),
    );
    s = await f.reopen(s);
    const state = await s.load();
    assert.deepEqual(state.hardState, { term: 1, vote: 1, commit: 0 });
    assert.deepEqual(
      state.entries.map((e) => e.index),
      [1, 2, 3],
    );
    await s.close();
  });
}
