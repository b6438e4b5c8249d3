import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packr } from '../../src/codec/msgpack.ts';
import { LevelStateStore } from '../../src/kv/level-state-store.ts';
import { decodeRecordChunks, encodeRecordChunks, RECORD_CHUNK_FORMAT } from '../../src/kv/record-chunks.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import { secretPutEntries, testRecordKeys } from './stores.ts';

/**
 * A snapshot of a state on disk is a small descriptor plus the store's records, streamed in
 * chunks: the receiver writes them aside, installs them only once Raft accepts the snapshot, and
 * a stream cut short or a crash before the install leaves its old state whole.
 */

const keys = testRecordKeys();
const entries = secretPutEntries(
  60,
  (k) => `app/stream/s${k % 7}`,
  (k) => `stream-value-${k}`,
);

async function image(state: AppliedState): Promise<string> {
  return JSON.stringify(await state.secrets.snapshot());
}

async function* cutAfter(chunks: AsyncIterable<Uint8Array>, n: number): AsyncGenerator<Uint8Array> {
  let k = 0;
  for await (const chunk of chunks) {
    if (k++ === n) throw new Error('the leader went away mid-stream');
    yield chunk;
  }
}

/** The items, one at a time, as a stream gives them. */
async function* listOf<T>(items: readonly T[]): AsyncGenerator<T> {
  yield* items;
}

test('a descriptor and streamed records rebuild the state on another store; a cut stream or a crash before the install leaves the old state; after it a restart repeats nothing', async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-stream-'));
  try {
    // The leader: 50 entries applied and committed.
    const leader = new AppliedState({ keys });
    await leader.reset();
    for (const e of entries.slice(0, 50)) leader.apply(e);
    await leader.commit();
    const descriptor = leader.descriptor();
    assert.ok(descriptor.byteLength < 2048, `the descriptor is small (${descriptor.byteLength} bytes)`);
    assert.equal(Buffer.from(descriptor).includes('stream-value'), false, 'and holds no value');
    const chunks = async (): Promise<Uint8Array[]> => {
      const out: Uint8Array[] = [];
      for await (const chunk of encodeRecordChunks(leader.snapshotPages(), 300)) out.push(chunk);
      return out;
    };
    const streamed = await chunks();
    assert.ok(streamed.length > 5, `the records go in several chunks (${streamed.length})`);
    assert.equal(
      streamed.some((c) => Buffer.from(c).includes('stream-value')),
      false,
      'no chunk holds a value in plaintext',
    );

    // The follower: 10 entries of its own so far, on LevelDB.
    const path = join(root, 'follower');
    let store = await LevelStateStore.open(path);
    let follower = new AppliedState({ store, keys });
    await follower.reset();
    for (const e of entries.slice(0, 10)) follower.apply(e);
    await follower.commit();
    const before = await image(follower);

    // A stream cut short: refused, nothing of it visible, the old state serves on.
    await assert.rejects(
      follower.prepareSnapshot(50, decodeRecordChunks(cutAfter(listOf(streamed), 3))),
      /went away mid-stream/,
    );
    assert.equal(await follower.installSnapshot(50), false, 'nothing prepared to install');
    assert.equal(await image(follower), before);

    // Prepared in full, then a crash before Raft accepted it: a restart finds the old state.
    await follower.prepareSnapshot(50, decodeRecordChunks(listOf(streamed)));
    assert.equal(await image(follower), before, 'prepared records are not visible');
    await store.close();
    store = await LevelStateStore.open(path);
    follower = new AppliedState({ store, keys });
    await follower.reset();
    assert.equal(await image(follower), before, 'a crash before the install leaves the old state');
    await assert.rejects(
      follower.restore(descriptor, 50),
      /holds only index 10/,
      "the descriptor is refused while the store is behind it, with what to do: it names the store's index",
    );

    // Prepared, and Raft did not take it: dropped (only for its own index), nothing installs.
    await follower.prepareSnapshot(50, decodeRecordChunks(listOf(streamed)));
    await follower.discardSnapshot(49);
    await follower.discardSnapshot(50);
    assert.equal(await follower.installSnapshot(50), false, 'a discarded snapshot does not install');
    assert.equal(await image(follower), before);

    // Prepared and installed (Raft took it): the leader's state, index and all.
    await follower.prepareSnapshot(50, decodeRecordChunks(listOf(streamed)));
    assert.equal(await follower.installSnapshot(50), true);
    await follower.restore(descriptor, 50);
    assert.equal(await image(follower), await image(leader));
    // The next entries apply once; a restart (from the same descriptor, as the Raft storage holds it) skips what is there.
    for (const e of entries.slice(50, 55)) follower.apply(e);
    await follower.commit();
    await store.close();
    store = await LevelStateStore.open(path);
    follower = new AppliedState({ store, keys });
    await follower.reset();
    await follower.restore(descriptor, 50);
    for (const e of entries.slice(50)) follower.apply(e);
    await follower.commit();
    for (const e of entries.slice(50)) leader.apply(e);
    await leader.commit();
    assert.equal(await image(follower), await image(leader), 'the same state, no entry applied twice');
    assert.equal(follower.stats.skippedOnStart, 5);
    assert.deepEqual(
      follower.secrets.versions('app/stream/s0', 0).map((v) => v.version),
      Array.from({ length: 9 }, (_, k) => k + 1),
    );
    await store.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

/** A chunk in the record format holding these fields, each after its length (keys and values alternate). */
function chunkOf(fields: Buffer[]): Buffer {
  const parts: Buffer[] = [Buffer.of(RECORD_CHUNK_FORMAT)];
  for (const field of fields) {
    const length = Buffer.alloc(4);
    length.writeUInt32BE(field.byteLength, 0);
    parts.push(length, field);
  }
  return Buffer.concat(parts);
}

test('streamed records that are not the secrets, out of order, or not pairs of byte strings are refused, and nothing is installed', async () => {
  const state = new AppliedState({ keys });
  await state.reset();
  state.apply(entries[0]!);
  await state.commit();
  const before = await image(state);
  const secretKey = Buffer.from('sm-some-key');
  const cases: Array<[string, AsyncIterable<Uint8Array>, RegExp]> = [
    [
      'a record of another part',
      encodeRecordChunks(listOf([{ key: Buffer.from('x-other'), value: Buffer.from('v') }])),
      /not one of the secrets/,
    ],
    [
      'keys out of order',
      encodeRecordChunks(
        listOf([
          { key: Buffer.from('sm-b'), value: Buffer.from('v') },
          { key: Buffer.from('sm-a'), value: Buffer.from('v') },
        ]),
      ),
      /out of order/,
    ],
    ['a key without its value', listOf([chunkOf([secretKey])]), /cut short in the length of a value/],
    ['a value cut short', listOf([chunkOf([secretKey, Buffer.from('value')]).subarray(0, -2)]), /cut short in a value/],
    [
      'a length beyond the chunk',
      listOf([Buffer.concat([Buffer.of(RECORD_CHUNK_FORMAT, 0xff, 0xff, 0xff, 0x00), secretKey])]),
      /cut short in a key of 4294967040 bytes/,
    ],
    ['msgpack (another format)', listOf([packr.pack([secretKey, Buffer.from('v')])]), /not of record format/],
    ['an empty chunk', listOf([Buffer.alloc(0)]), /not of record format/],
    ['an empty key', listOf([chunkOf([Buffer.alloc(0), Buffer.from('v')])]), /key of 0 bytes/],
    [
      'a key over the limit',
      listOf([chunkOf([Buffer.alloc(16 * 1024 + 1, 0x73), Buffer.from('v')])]),
      /key of 16385 bytes/,
    ],
  ];
  for (const [what, chunks, pattern] of cases) {
    await assert.rejects(state.prepareSnapshot(9, decodeRecordChunks(chunks)), pattern, what);
    assert.equal(await state.installSnapshot(9), false, `${what}: nothing to install`);
    assert.equal(await image(state), before, `${what}: the state is unchanged`);
  }
});

test('a kept descriptor at an entry that reached no part (a key operation, a new leader) finds the store far enough once the replica synced it through its applied index', async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-stream-'));
  try {
    const path = join(root, 'kept');
    let store = await LevelStateStore.open(path);
    let state = new AppliedState({ store, keys });
    await state.reset();
    for (const e of entries.slice(0, 5)) state.apply(e);
    await state.commit();
    // Entries 6 to 8 were the barrier's own (no part applied them); the replica snapshots at 8.
    await state.sync(8);
    const descriptor = state.descriptor();
    await store.close();
    store = await LevelStateStore.open(path);
    state = new AppliedState({ store, keys });
    await state.reset();
    await state.restore(descriptor, 8);
    assert.deepEqual(
      state.secrets.versions('app/stream/s0', 0).map((v) => v.version),
      [1],
      'the secrets are those of the store',
    );
    await store.close();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
