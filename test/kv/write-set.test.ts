import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pagesOf, type KeyRange, type StateStore, type StateWrite } from '../../src/kv/state-store.ts';
import { MemoryStateStore } from '../../src/kv/memory-state-store.ts';
import { WriteSet } from '../../src/kv/write-set.ts';
import { SeededRandom } from '../../src/util/prng.ts';

/** A store of a sorted Map, with every batch it was given. */
function mapStore(): Pick<StateStore, 'getSync' | 'write'> & {
  map: Map<string, Buffer>;
  batches: StateWrite[][];
  failNext: boolean;
} {
  const store = {
    map: new Map<string, Buffer>(),
    batches: [] as StateWrite[][],
    failNext: false,
    getSync: (key: Uint8Array) => store.map.get(Buffer.from(key).toString('latin1')),
    write: async (changes: readonly StateWrite[]) => {
      await Promise.resolve();
      if (store.failNext) {
        store.failNext = false;
        throw new Error('disk full');
      }
      store.batches.push([...changes]);
      for (const c of changes) {
        const k = Buffer.from(c.key).toString('latin1');
        if (c.type === 'put') store.map.set(k, Buffer.from(c.value));
        else store.map.delete(k);
      }
    },
  };
  return store;
}

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

test('reads see the write set first, then the store; a delete hides the stored value', async () => {
  const store = mapStore();
  await store.write([
    { type: 'put', key: b('a'), value: b('stored-a') },
    { type: 'put', key: b('b'), value: b('stored-b') },
  ]);
  const set = new WriteSet(store);
  assert.equal(set.get(b('a'))?.toString(), 'stored-a');
  set.put(b('a'), b('new-a'));
  set.del(b('b'));
  set.put(b('c'), b('new-c'));
  assert.equal(set.get(b('a'))?.toString(), 'new-a');
  assert.equal(set.get(b('b')), undefined);
  assert.equal(set.get(b('c'))?.toString(), 'new-c');
  assert.equal(store.map.get('a')?.toString(), 'stored-a', 'nothing reaches the store before commit');
  assert.equal(set.size, 3);
});

test('commit writes every change and the extra records in one batch, in key order, then forgets them', async () => {
  const store = mapStore();
  const set = new WriteSet(store);
  set.put(b('z'), b('1'));
  set.put(b('\x00'), b('2'));
  set.put(b('\xff'), b('3'));
  set.del(b('m'));
  await set.commit([{ type: 'put', key: b('applied'), value: b('7') }]);
  assert.equal(store.batches.length, 1, 'one atomic batch');
  assert.deepEqual(
    store.batches[0]!.map((c) => `${c.type}:${Buffer.from(c.key).toString('latin1')}`),
    ['put:\x00', 'del:m', 'put:z', 'put:\xff', 'put:applied'],
  );
  assert.equal(set.size, 0);
  assert.equal(set.bytes, 0);
  assert.equal(set.get(b('z'))?.toString(), '1', 'now read from the store');
});

test('a failed commit keeps the changes for a retry; a change made while the write ran is kept too', async () => {
  const store = mapStore();
  const set = new WriteSet(store);
  set.put(b('k'), b('v1'));
  store.failNext = true;
  await assert.rejects(set.commit(), /disk full/);
  assert.equal(set.size, 1);
  assert.equal(set.get(b('k'))?.toString(), 'v1');
  const writing = set.commit();
  set.put(b('k'), b('v2'));
  await writing;
  assert.equal(store.map.get('k')?.toString(), 'v1');
  assert.equal(set.get(b('k'))?.toString(), 'v2', 'the newer change is still pending');
  await set.commit();
  assert.equal(store.map.get('k')?.toString(), 'v2');
});

test('property: after any sequence of puts, deletes and commits, reads equal a plain map of the same operations', async () => {
  const random = new SeededRandom(20261203);
  const store = mapStore();
  const set = new WriteSet(store);
  const reference = new Map<string, string>();
  const keys = Array.from({ length: 40 }, (_, k) => String.fromCharCode(k * 6));
  for (let step = 0; step < 3000; step++) {
    const key = keys[random.int(keys.length)]!;
    const roll = random.int(10);
    if (roll < 5) {
      const value = `v${step}`;
      set.put(b(key), b(value));
      reference.set(key, value);
    } else if (roll < 8) {
      set.del(b(key));
      reference.delete(key);
    } else if (roll === 8) {
      await set.commit();
    }
    const probe = keys[random.int(keys.length)]!;
    const read = set.get(b(probe));
    assert.equal(
      read === undefined ? undefined : Buffer.from(read).toString('latin1'),
      reference.get(probe),
      `step ${step}`,
    );
  }
  let pendingBytes = 0;
  for (const c of set.changes()) pendingBytes += c.key.byteLength + (c.type === 'put' ? c.value.byteLength : 0);
  assert.equal(set.bytes, pendingBytes);
});

test('property: a range with a limit over pending puts and deletes equals the same range of a plain map (the store is asked for no more than the limit could need)', async () => {
  const random = new SeededRandom(20261204);
  const keys = Array.from({ length: 30 }, (_, k) => `k${String(k).padStart(2, '0')}`);
  for (let round = 0; round < 200; round++) {
    const store = new MemoryStateStore();
    const reference = new Map<string, string>();
    await store.write(
      keys
        .filter(() => random.int(3) > 0)
        .map((key) => {
          reference.set(key, `stored-${key}`);
          return { type: 'put' as const, key: b(key), value: b(`stored-${key}`) };
        }),
    );
    const set = new WriteSet(store);
    for (let k = 0; k < 12; k++) {
      const key = keys[random.int(keys.length)]!;
      if (random.int(2) === 0) {
        set.del(b(key));
        reference.delete(key);
      } else {
        set.put(b(key), b(`new-${key}`));
        reference.set(key, `new-${key}`);
      }
    }
    const limit = random.int(8);
    const reverse = random.int(2) === 0;
    const got: string[] = [];
    for await (const record of set.range({ limit, reverse })) got.push(`${latin1(record.key)}=${latin1(record.value)}`);
    const sorted = [...reference].sort(([x], [y]) => (x < y ? -1 : 1));
    const expected = (reverse ? sorted.reverse() : sorted).slice(0, limit).map(([key, value]) => `${key}=${value}`);
    assert.deepEqual(got, expected, `round ${round}, limit ${limit}${reverse ? ', reverse' : ''}`);
    // The same a page at a time, over a store whose pages hold three records (pages with and
    // without pending changes in them), with no limit and with this one.
    const paged = new WriteSet(pagedBy(store, 3));
    for (const [key, value] of set.changes().map((c) => [c.key, c.type === 'put' ? c.value : null] as const))
      if (value === null) paged.del(key);
      else paged.put(key, value);
    for (const pageLimit of [undefined, limit]) {
      const fromPages: string[] = [];
      for await (const page of paged.pages({ ...(pageLimit === undefined ? {} : { limit: pageLimit }), reverse }))
        for (const record of page) fromPages.push(`${latin1(record.key)}=${latin1(record.value)}`);
      const all = (reverse ? sorted : [...sorted]).map(([key, value]) => `${key}=${value}`);
      assert.deepEqual(
        fromPages,
        pageLimit === undefined ? all : expected,
        `pages, round ${round}, limit ${pageLimit}${reverse ? ', reverse' : ''}`,
      );
    }
  }
});

const latin1 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('latin1');

/** The store with views whose pages hold `size` records. */
function pagedBy(store: MemoryStateStore, size: number): StateStore {
  return Object.assign(Object.create(store) as MemoryStateStore, {
    view: () => {
      const view = store.view();
      return { ...view, pages: (range: KeyRange) => pagesOf(view.range(range), size) };
    },
  });
}

test('a rollback undoes every change since the savepoint (puts, deletes, changes of pending keys) and their bytes; a release keeps them', async () => {
  const store = mapStore();
  await store.write([{ type: 'put', key: b('stored'), value: b('s0') }]);
  const set = new WriteSet(store);
  set.put(b('pending'), b('p0'));
  set.del(b('gone'));
  const before = { changes: set.changes(), bytes: set.bytes };

  set.savepoint();
  assert.throws(() => set.savepoint(), /already open/, 'one savepoint at a time');
  set.put(b('pending'), b('p1-longer'));
  set.put(b('pending'), b('p2'));
  set.put(b('gone'), b('back'));
  set.del(b('stored'));
  set.put(b('new'), b('n0'));
  assert.equal(set.get(b('stored')), undefined);
  await assert.rejects(set.commit(), /savepoint open/, 'never committed half-decided');
  set.rollback();
  assert.deepEqual(set.changes(), before.changes);
  assert.equal(set.bytes, before.bytes);
  assert.deepEqual(set.get(b('stored')), b('s0'), 'the store shows through again');
  assert.equal(set.get(b('new')), undefined);
  assert.equal(set.get(b('gone')), undefined, 'a delete pending before stays a delete');

  set.savepoint();
  set.put(b('new'), b('n1'));
  set.release();
  assert.deepEqual(set.get(b('new')), b('n1'));
  assert.throws(() => set.rollback(), /without a savepoint/);
  await set.commit();
  assert.deepEqual(store.map.get('new'), b('n1'));
  assert.deepEqual(store.map.get('pending'), b('p0'));
});
