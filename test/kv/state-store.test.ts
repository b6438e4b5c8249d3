import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Level } from 'level';
import { LevelStateStore } from '../../src/kv/level-state-store.ts';
import { MemoryStateStore } from '../../src/kv/memory-state-store.ts';
import { prefixEnd, recordsOf, type StateRecord, type StateStore, type StateWrite } from '../../src/kv/state-store.ts';
import { SeededRandom } from '../../src/util/prng.ts';

/** One conformance suite for both StateStores: the applier and the snapshots rely on every line of it. */

const root = mkdtempSync(join(tmpdir(), 'coffer-kv-'));
after(() => rmSync(root, { recursive: true, force: true }));
let dirs = 0;

const kinds: Array<{ name: string; open: () => Promise<StateStore & { path?: string }> }> = [
  { name: 'memory', open: async () => new MemoryStateStore() },
  { name: 'LevelDB', open: () => LevelStateStore.open(join(root, `s${++dirs}`)) },
];

const b = (...bytes: number[]): Buffer => Buffer.from(bytes);
const s = (text: string): Buffer => Buffer.from(text);
const put = (key: Buffer, value: Buffer): StateWrite => ({ type: 'put', key, value });
const del = (key: Buffer): StateWrite => ({ type: 'del', key });

const line = (r: StateRecord): string => `${Buffer.from(r.key).toString('hex')}=${Buffer.from(r.value).toString()}`;

async function collect(records: AsyncIterable<StateRecord>): Promise<string[]> {
  const out: string[] = [];
  for await (const r of records) out.push(line(r));
  return out;
}

async function* from(records: Array<[Buffer, Buffer]>, failAt = -1): AsyncGenerator<StateRecord> {
  for (const [k, [key, value]] of records.entries()) {
    if (k === failAt) throw new Error('the sender went away');
    yield { key, value };
  }
}

for (const kind of kinds) {
  test(`${kind.name}: a batch applies whole; get and getSync agree; writes copy their values`, async () => {
    const store = await kind.open();
    try {
      const value = s('one');
      await store.write([put(s('a'), value), put(s('b'), s('two')), put(s('c'), s('three'))]);
      value.fill(0);
      assert.equal(
        Buffer.from(store.getSync(s('a'))!).toString(),
        'one',
        'the caller wiping its buffer changes nothing',
      );
      await store.write([del(s('b')), put(s('c'), s('3')), del(s('never'))]);
      assert.equal(store.getSync(s('b')), undefined);
      assert.equal(Buffer.from((await store.get(s('c')))!).toString(), '3');
      assert.equal(await store.get(s('b')), undefined);
      await store.write([]);
    } finally {
      await store.close();
    }
  });

  test(`${kind.name}: keys in unsigned byte order; ranges with bounds, limits, reverse and prefixes`, async () => {
    const store = await kind.open();
    try {
      const keys = [
        b(0x00),
        b(0x00, 0x00),
        b(0x01),
        b(0x7f),
        b(0x80),
        b(0xff),
        b(0xff, 0x00),
        b(0xff, 0xff),
        s('ab'),
        s('abc'),
        s('abd'),
        s('b'),
      ];
      await store.write(keys.map((k, n) => put(k, s(String(n)))));
      const hex = (k: Buffer) => k.toString('hex');
      const sorted = [...keys].sort(Buffer.compare);
      const keysOf = async (range: Parameters<StateStore['range']>[0]) =>
        (await collect(store.range(range))).map((r) => r.split('=')[0]);
      assert.deepEqual(await keysOf({}), sorted.map(hex));
      assert.deepEqual(await keysOf({ reverse: true }), [...sorted].reverse().map(hex));
      assert.deepEqual(
        await keysOf({ gte: b(0x01), lt: b(0xff) }),
        sorted.filter((k) => Buffer.compare(k, b(0x01)) >= 0 && Buffer.compare(k, b(0xff)) < 0).map(hex),
      );
      assert.deepEqual(await keysOf({ gte: s('ab'), lt: prefixEnd(s('ab')) }), [s('ab'), s('abc'), s('abd')].map(hex));
      assert.deepEqual(await keysOf({ gte: s('ab'), lt: prefixEnd(s('ab')), limit: 2 }), [s('ab'), s('abc')].map(hex));
      assert.deepEqual(
        await keysOf({ gte: s('ab'), lt: prefixEnd(s('ab')), limit: 2, reverse: true }),
        [s('abd'), s('abc')].map(hex),
      );
      assert.deepEqual(
        await keysOf({ gte: b(0xff), lt: prefixEnd(b(0xff)) }),
        [b(0xff), b(0xff, 0x00), b(0xff, 0xff)].map(hex),
      );
      assert.deepEqual(await keysOf({ limit: 0 }), []);
      assert.equal(prefixEnd(b(0xff, 0xff)), undefined);
      // Breaking out early closes the range: the store goes on working.
      for await (const _ of store.range({})) break;
      await store.write([put(s('z'), s('after a break'))]);
      assert.equal(Buffer.from(store.getSync(s('z'))!).toString(), 'after a break');
    } finally {
      await store.close();
    }
  });

  test(`${kind.name}: a view sees the moment it was taken; later writes and other views do not show through`, async () => {
    const store = await kind.open();
    try {
      await store.write([put(s('k1'), s('old')), put(s('k2'), s('gone later'))]);
      const first = store.view();
      await store.write([put(s('k1'), s('new')), del(s('k2')), put(s('k3'), s('added'))]);
      const second = store.view();
      await store.write([put(s('k4'), s('after both'))]);
      assert.equal(Buffer.from((await first.get(s('k1')))!).toString(), 'old');
      assert.deepEqual(await collect(first.range({})), ['6b31=old', '6b32=gone later']);
      assert.deepEqual(await collect(second.range({})), ['6b31=new', '6b33=added']);
      assert.deepEqual(await collect(store.range({})), ['6b31=new', '6b33=added', '6b34=after both']);
      await first.close();
      await second.close();
    } finally {
      await store.close();
    }
  });

  test(`${kind.name}: replaceAll swaps the whole content; one whose source fails leaves the old content whole`, async () => {
    const store = await kind.open();
    try {
      await store.write([put(s('old-1'), s('a')), put(s('old-2'), s('b'))]);
      const many: Array<[Buffer, Buffer]> = Array.from({ length: 5000 }, (_, n) => [
        s(`new-${String(n).padStart(5, '0')}`),
        s(`v${n}`),
      ]);
      await assert.rejects(store.replaceAll(from(many, 4500)), /went away/);
      assert.deepEqual(await collect(store.range({})), ['6f6c642d31=a', '6f6c642d32=b'], 'the old content, whole');
      const view = store.view();
      await store.replaceAll(from(many));
      assert.equal(store.getSync(s('old-1')), undefined);
      assert.equal(Buffer.from(store.getSync(s('new-04999'))!).toString(), 'v4999');
      assert.equal((await collect(store.range({}))).length, 5000);
      assert.deepEqual(
        await collect(view.range({})),
        ['6f6c642d31=a', '6f6c642d32=b'],
        'a view from before still reads the old',
      );
      await view.close();
      await store.replaceAll(from([]));
      assert.deepEqual(await collect(store.range({})), []);
    } finally {
      await store.close();
    }
  });

  test(`${kind.name}: prepare and replaceAll take pages as well as records, and copy what they keep (the sender reuses its buffers)`, async () => {
    const store = await kind.open();
    try {
      const scratch = Buffer.alloc(8);
      async function* pages(): AsyncGenerator<StateRecord | readonly StateRecord[]> {
        for (let p = 0; p < 5; p++) {
          const page: StateRecord[] = [];
          for (let k = 0; k < 1000; k++) {
            const n = p * 1000 + k;
            page.push({ key: s(`p${String(n).padStart(5, '0')}`), value: s(`v${n}`) });
          }
          yield page;
          // A single record between pages, then a buffer reused after it was given.
          scratch.write(`q${p}-value`, 'latin1');
          yield { key: s(`p${String(p * 1000 + 999).padStart(5, '0')}~`), value: scratch.subarray(0, 8) };
        }
      }
      const prepared = await store.prepare(pages());
      scratch.fill(0);
      assert.equal(prepared.records, 5005);
      assert.equal(store.getSync(s('p00000')), undefined, 'nothing visible before install');
      await prepared.install();
      assert.equal(Buffer.from(store.getSync(s('p04321'))!).toString(), 'v4321');
      assert.equal(
        Buffer.from(store.getSync(s('p00999~'))!).toString(),
        'q0-value',
        'the value as given, not the buffer reused',
      );
      assert.equal((await collect(store.range({}))).length, 5005);
      await store.replaceAll(
        (async function* () {
          yield [{ key: s('only'), value: s('one') }];
        })(),
      );
      assert.deepEqual(await collect(store.range({})), ['6f6e6c79=one']);
    } finally {
      await store.close();
    }
  });

  test(`${kind.name}: prepare writes a content aside while writes go on; install switches to it, discard drops it, a newer prepare replaces an older one`, async () => {
    const store = await kind.open();
    try {
      await store.write([put(s('live'), s('1'))]);
      const incoming: Array<[Buffer, Buffer]> = Array.from({ length: 3000 }, (_, n) => [
        s(`snap-${String(n).padStart(4, '0')}`),
        s(`v${n}`),
      ]);
      // The store is written to while the content streams in, as a follower applies meanwhile.
      async function* interleaved(): AsyncGenerator<StateRecord> {
        for (const [k, record] of incoming.entries()) {
          if (k === 1500) await store.write([put(s('live'), s('2')), put(s('during'), s('yes'))]);
          yield { key: record[0], value: record[1] };
        }
      }
      const prepared = await store.prepare(interleaved());
      assert.equal(prepared.records, 3000);
      assert.deepEqual(
        await collect(store.range({})),
        ['647572696e67=yes', '6c697665=2'],
        'nothing prepared is visible before install',
      );
      await prepared.discard();
      assert.deepEqual((await collect(store.range({}))).length, 2, 'discard leaves the current content');

      // A failing source leaves nothing; a newer prepare makes the older one fail or refuse to install.
      await assert.rejects(store.prepare(from(incoming, 10)), /went away/);
      const older = await store.prepare(from(incoming.slice(0, 5)));
      const newer = await store.prepare(from(incoming.slice(100, 103)));
      await assert.rejects(older.install(), /discarded or replaced/);
      const view = store.view();
      await newer.install();
      assert.deepEqual(await collect(store.range({})), [
        '736e61702d30313030=v100',
        '736e61702d30313031=v101',
        '736e61702d30313032=v102',
      ]);
      assert.deepEqual(
        (await collect(view.range({}))).length,
        2,
        'a view from before the install reads the old content',
      );
      await view.close();
      await store.write([put(s('after'), s('x'))]);
      assert.equal(Buffer.from(store.getSync(s('after'))!).toString(), 'x', 'writes go to the installed content');
      assert.equal(store.getSync(s('live')), undefined);
    } finally {
      await store.close();
    }
  });

  test(`${kind.name}: ranges over many pages: whole, page-sized, stopped early (a read ahead in flight), and through a view`, async () => {
    const store = await kind.open();
    try {
      const key = (k: number): Buffer => Buffer.from(`k${String(k).padStart(6, '0')}`);
      // Values of 600 bytes: 1,024 records (a page) pass 1 MiB-sized pages' worth of bytes too.
      const value = (k: number): Buffer => Buffer.alloc(600, k % 251);
      const writes: StateWrite[] = [];
      for (let k = 0; k < 5000; k++) writes.push(put(key(k), value(k)));
      await store.write(writes);
      const view = store.view();
      await store.write([del(key(0)), put(key(4999), s('later'))]);
      for (const [gte, lt, expected] of [
        [0, 5000, 5000],
        [0, 1024, 1024],
        [100, 2148, 2048],
        [4990, 5000, 10],
      ] as const) {
        let n = 0;
        for await (const r of view.range({ gte: key(gte), lt: key(lt) })) {
          assert.deepEqual(Buffer.from(r.key), key(gte + n), 'in order, none missed');
          assert.deepEqual(Buffer.from(r.value), value(gte + n), 'the view, not the later write');
          n++;
        }
        assert.equal(n, expected);
      }
      // Pages give the same records as the range, in order, in more than one page; the view's too.
      for (const source of [store, view]) {
        const paged: string[] = [];
        let pages = 0;
        for await (const page of source.pages({ gte: key(100), lt: key(4999), reverse: source === view })) {
          assert.ok(page.length > 0, 'no empty page');
          pages++;
          paged.push(...page.map(line));
        }
        assert.deepEqual(
          paged,
          await collect(source.range({ gte: key(100), lt: key(4999), reverse: source === view })),
        );
        assert.ok(pages >= 4, `${pages} pages for 4,899 records of 600 bytes`);
      }
      assert.deepEqual((await collect(recordsOf(store.pages({ limit: 3 })))).length, 3, 'a limit holds across pages');
      for (const stopAt of [1, 1023, 1024, 1500, 3000]) {
        let n = 0;
        for await (const _ of store.range({})) if (++n === stopAt) break;
        assert.equal(n, stopAt);
      }
      await view.close();
    } finally {
      await store.close();
    }
  });

  test(`${kind.name}: random batches, views and ranges agree with a sorted-map model`, async () => {
    const store = await kind.open();
    try {
      const random = new SeededRandom(17);
      const model = new Map<string, string>();
      const key = () =>
        Buffer.from(Array.from({ length: 1 + random.int(3) }, () => [0x00, 0x01, 0x7f, 0x80, 0xff][random.int(5)]!));
      const modelRange = (m: Map<string, string>, gte?: Buffer, lt?: Buffer) =>
        [...m.entries()]
          .filter(
            ([k]) =>
              (gte === undefined || Buffer.compare(Buffer.from(k, 'hex'), gte) >= 0) &&
              (lt === undefined || Buffer.compare(Buffer.from(k, 'hex'), lt) < 0),
          )
          .sort(([a], [c]) => Buffer.compare(Buffer.from(a, 'hex'), Buffer.from(c, 'hex')))
          .map(([k, v]) => `${k}=${v}`);
      const views: Array<{ view: ReturnType<StateStore['view']>; model: Map<string, string> }> = [];
      for (let step = 0; step < 300; step++) {
        const batch: StateWrite[] = [];
        for (let n = random.int(5); n >= 0; n--) {
          const k = key();
          if (random.float() < 0.3) {
            batch.push(del(k));
          } else batch.push(put(k, s(`v${step}.${n}`)));
        }
        await store.write(batch);
        for (const w of batch) {
          if (w.type === 'put') model.set(Buffer.from(w.key).toString('hex'), Buffer.from(w.value).toString());
          else model.delete(Buffer.from(w.key).toString('hex'));
        }
        if (step % 50 === 10) views.push({ view: store.view(), model: new Map(model) });
        const probe = key();
        const stored = store.getSync(probe);
        assert.equal(
          stored === undefined ? undefined : Buffer.from(stored).toString(),
          model.get(probe.toString('hex')),
          `step ${step}`,
        );
        if (step % 25 === 0) {
          const gte = key();
          const lt = key();
          assert.deepEqual(
            await collect(store.range({ gte, lt })),
            modelRange(model, gte, lt),
            `step ${step}: a range`,
          );
        }
      }
      assert.deepEqual(await collect(store.range({})), modelRange(model));
      for (const { view, model: then } of views) {
        assert.deepEqual(await collect(view.range({})), modelRange(then), 'a view taken midway');
        await view.close();
      }
    } finally {
      await store.close();
    }
  });
}

test('LevelDB: the content survives a close and an open; a replace cut by a crash before its switch leaves the old content and no leftovers', async () => {
  const path = join(root, 'crash');
  let store = await LevelStateStore.open(path);
  await store.write([put(s('kept'), s('yes'))], { sync: true });
  const generation = store.generation;
  await store.close();
  // A crash in the middle of a replace: records of the next generation written, the switch not.
  const raw = new Level<Buffer, Buffer>(path, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await raw.open();
  const next = Buffer.alloc(5);
  next[0] = 0x01;
  next.writeUInt32BE(generation + 1, 1);
  await raw.batch([
    { type: 'put', key: Buffer.concat([next, s('half')]), value: s('written') },
    { type: 'put', key: Buffer.concat([next, s('kept')]), value: s('replaced') },
  ]);
  await raw.close();
  store = await LevelStateStore.open(path);
  assert.equal(store.generation, generation);
  assert.deepEqual(await collect(store.range({})), ['6b657074=yes']);
  await store.close();
  const check = new Level<Buffer, Buffer>(path, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await check.open();
  const all: Buffer[] = [];
  for await (const k of check.keys()) all.push(k);
  await check.close();
  assert.equal(
    all.filter((k) => k[0] === 0x01 && k.readUInt32BE(1) !== generation).length,
    0,
    'the partial generation was cleared',
  );
});

test('LevelDB: a directory that holds something else is refused with what it is', async () => {
  const path = join(root, 'other');
  const raw = new Level<string, string>(path);
  await raw.open();
  await raw.put('hello', 'world');
  await raw.close();
  await assert.rejects(LevelStateStore.open(path), /not an applied state's store/);
});
