import { newSecretStore, testRecordKeys } from './stores.ts';
import { MemoryStateStore } from '../../src/kv/memory-state-store.ts';
import { WriteSet } from '../../src/kv/write-set.ts';
import { nameKey, openRecord, recordTerm, sealRecord } from '../../src/crypto/record-seal.ts';
import { packr } from '../../src/codec/msgpack.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  INLINE_VALUE_BYTES_MAX,
  SecretStore,
  encodeSecretCommand,
  type SecretCommand,
  type SecretResult,
} from '../../src/state/secret-store.ts';
import { RefusalError, type RefusalCode } from '../../src/state/state-part.ts';

const T0 = 1_700_000_000_000;

/** Decodes, then applies, as AppliedState does (without authorization: these commands name no actor). */
function applyLogged(store: SecretStore, kind: string, data: Buffer): SecretResult {
  const decoded = store.decode(kind, data);
  return decoded.ok ? store.apply(decoded.command, decoded.actor) : decoded;
}
function apply(store: SecretStore, command: SecretCommand): SecretResult {
  const { kind, data } = encodeSecretCommand(command);
  return applyLogged(store, kind, data);
}
const put = (name: string, value: string, extra: Partial<Extract<SecretCommand, { op: 'put' }>> = {}) =>
  ({
    op: 'put',
    name,
    value: Buffer.from(value),
    cas: null,
    expireAtMs: null,
    versionsKept: null,
    nowMs: T0,
    ...extra,
  }) as const;
const refusedWith = (code: RefusalCode, pattern?: RegExp) => (e: unknown) =>
  e instanceof RefusalError && e.code === code && (pattern === undefined || pattern.test(e.message));

test('each put makes a new version; current and previous follow; a version or label reads back', () => {
  const store = newSecretStore();
  assert.deepEqual(apply(store, put('db/password', 'one')), { ok: true, version: 1 });
  assert.deepEqual(apply(store, put('db/password', 'two')), { ok: true, version: 2 });
  assert.equal(store.read('db/password', {}, T0).value.toString(), 'two');
  assert.equal(store.read('db/password', { label: 'previous' }, T0).value.toString(), 'one');
  assert.equal(store.read('db/password', { version: 1 }, T0).value.toString(), 'one');
  assert.throws(() => store.read('db/password', { version: 3 }, T0), refusedWith('NOT_FOUND', /no version 3/));
  assert.throws(() => store.read('db/other', {}, T0), refusedWith('NOT_FOUND', /does not exist/));
});

test('compare-and-set: 0 creates only; a stale version is refused and changes nothing', () => {
  const store = newSecretStore();
  assert.deepEqual(apply(store, put('k', 'a', { cas: 0 })), { ok: true, version: 1 });
  const again = apply(store, put('k', 'b', { cas: 0 }));
  assert.equal(again.ok, false);
  assert.equal(!again.ok && again.code, 'CAS_MISMATCH');
  const stale = apply(store, put('k', 'b', { cas: 7 }));
  assert.match(!stale.ok ? stale.reason : '', /is at version 1, not 7/);
  assert.deepEqual(apply(store, put('k', 'b', { cas: 1 })), { ok: true, version: 2 });
  assert.equal(store.read('k', {}, T0).value.toString(), 'b');
});

test('only the newest versions are kept; older ones are wiped and say so', () => {
  const store = newSecretStore();
  for (let k = 1; k <= 5; k++) apply(store, put('k', `v${k}`, { versionsKept: 3 }));
  assert.deepEqual(
    store.versions('k', T0).map((v) => v.version),
    [3, 4, 5],
  );
  assert.throws(
    () => store.read('k', { version: 2 }, T0),
    refusedWith('NOT_FOUND', /no longer kept \(the last 3 are\)/),
  );
});

test('soft delete hides a secret until undeleted; destroy wipes chosen versions for good', async () => {
  const store = newSecretStore();
  apply(store, put('k', 'v1'));
  apply(store, put('k', 'v2'));
  apply(store, { op: 'delete', name: 'k' });
  assert.throws(() => store.read('k', {}, T0), refusedWith('DELETED'));
  assert.equal((await store.list('', '', 10, false)).secrets.length, 0);
  assert.equal((await store.list('', '', 10, true)).secrets.length, 1);
  apply(store, { op: 'undelete', name: 'k' });
  assert.equal(store.read('k', {}, T0).value.toString(), 'v2');
  apply(store, { op: 'destroy', name: 'k', versions: [1] });
  assert.throws(() => store.read('k', { version: 1 }, T0), refusedWith('DESTROYED', /version 1 was destroyed/));
  assert.equal(store.read('k', {}, T0).value.toString(), 'v2');
  const missing = apply(store, { op: 'destroy', name: 'k', versions: [9] });
  assert.equal(!missing.ok && missing.code, 'NOT_FOUND');
});

test('labels: current can be moved back (rollback), user labels come and go, a destroyed version takes none', () => {
  const store = newSecretStore();
  apply(store, put('k', 'v1'));
  apply(store, put('k', 'v2'));
  apply(store, { op: 'label', name: 'k', label: 'current', version: 1 });
  assert.equal(store.read('k', {}, T0).value.toString(), 'v1');
  apply(store, { op: 'label', name: 'k', label: 'stable', version: 2 });
  assert.equal(store.read('k', { label: 'stable' }, T0).value.toString(), 'v2');
  apply(store, { op: 'unlabel', name: 'k', label: 'stable' });
  assert.throws(() => store.read('k', { label: 'stable' }, T0), refusedWith('NOT_FOUND', /no label "stable"/));
  const reserved = apply(store, { op: 'unlabel', name: 'k', label: 'current' });
  assert.equal(!reserved.ok && reserved.code, 'INVALID');
  apply(store, { op: 'destroy', name: 'k', versions: [1] });
  const onDestroyed = apply(store, { op: 'label', name: 'k', label: 'x', version: 1 });
  assert.equal(!onDestroyed.ok && onDestroyed.code, 'DESTROYED');
});

test('expiry: reads fail once the time has passed, and the sweep wipes the value', async () => {
  const store = newSecretStore();
  apply(store, put('k', 'short', { expireAtMs: T0 + 1000 }));
  apply(store, put('later', 'long', { expireAtMs: T0 + 9000 }));
  assert.equal(store.read('k', {}, T0 + 999).value.toString(), 'short');
  assert.throws(() => store.read('k', {}, T0 + 1000), refusedWith('EXPIRED'));
  assert.equal(await store.nextExpiryMs(), T0 + 1000);
  assert.equal(await store.expiryCommand(T0 + 999), null, 'nothing is due before the time');
  const sweep = await store.expiryCommand(T0 + 1000);
  assert.deepEqual(sweep, { op: 'expire', nowMs: T0 + 1000, targets: [['k', 1]] });
  // A sweep that names a version not yet expired at its time (a leader's clock ahead) wipes nothing of it.
  assert.deepEqual(apply(store, { op: 'expire', nowMs: T0 + 1000, targets: [['later', 1]] }), { ok: true, version: 0 });
  assert.deepEqual(apply(store, sweep!), { ok: true, version: 1 });
  assert.deepEqual(apply(store, sweep!), { ok: true, version: 0 }, 'a sweep applied twice wipes nothing more');
  assert.equal(await store.nextExpiryMs(), T0 + 9000);
  assert.equal(store.read('later', {}, T0 + 1000).value.toString(), 'long');
  assert.throws(() => store.read('k', {}, T0), refusedWith('EXPIRED'), 'wiped: even an earlier clock cannot read it');
  assert.deepEqual(
    store.versions('k', T0).map((v) => v.expired),
    [true],
  );
});

test('bad commands are refused as results, never thrown, and leave the state as it was', async () => {
  const store = newSecretStore();
  const bad = (kind: string, data: Buffer, pattern: RegExp) => {
    const result = applyLogged(store, kind, data);
    assert.equal(result.ok, false);
    assert.equal(!result.ok && result.code, 'INVALID');
    assert.match(!result.ok ? result.reason : '', pattern);
  };
  bad('secret.put', Buffer.from([0x92, 0x01]), /does not decode/);
  bad('secret.put', encodeSecretCommand(put('../etc', 'x')).data, /no "." or ".." segments/);
  bad('secret.put', encodeSecretCommand(put('a b', 'x')).data, /segments of letters/);
  bad('secret.put', encodeSecretCommand(put('k', 'x'.repeat(512 * 1024 + 1))).data, /at most 524288 bytes/);
  bad('secret.delete', encodeSecretCommand(put('k', 'x')).data, /names another operation/);
  bad('secret.expire', encodeSecretCommand({ op: 'expire', nowMs: T0, targets: [['../x', 1]] }).data, /expiry sweep/);
  assert.equal(await store.count(), 0);
});

test('a snapshot restores the same secrets, versions, labels and flags', async () => {
  const keys = testRecordKeys();
  const store = newSecretStore({}, keys);
  apply(store, put('a', '1'));
  apply(store, put('a', '2', { expireAtMs: T0 + 5000 }));
  apply(store, { op: 'label', name: 'a', label: 'pinned', version: 1 });
  apply(store, put('b', 'x'));
  apply(store, { op: 'delete', name: 'b' });
  const copy = newSecretStore({}, keys);
  await copy.restore(await store.snapshot(), 100);
  assert.deepEqual(await copy.snapshot(), await store.snapshot());
  assert.equal(copy.read('a', { label: 'pinned' }, T0).value.toString(), '1');
  assert.throws(() => copy.read('b', {}, T0), refusedWith('DELETED'));
});

test('list: by prefix (whole segments or a partial last one), paged without gaps or repeats; cost within the prefix', async () => {
  const store = newSecretStore();
  const names = ['app/db/password', 'app/db/user', 'app/dash', 'app/web/key', 'app', 'other/app/x', 'apple'];
  for (const name of names) apply(store, put(name, `v-${name}`));
  const all = async (prefix: string, pageSize: number): Promise<string[]> => {
    const seen: string[] = [];
    let after = '';
    for (let pages = 0; pages < 50; pages++) {
      const page = await store.list(prefix, after, pageSize, false);
      seen.push(...page.secrets.map((s) => s.name));
      if (page.next === '') return seen;
      after = page.next;
    }
    throw new Error('paging did not end');
  };
  const sorted = (xs: string[]) => [...xs].sort();
  assert.deepEqual(sorted(await all('app/', 100)), ['app/dash', 'app/db/password', 'app/db/user', 'app/web/key']);
  assert.deepEqual(sorted(await all('app/d', 1)), ['app/dash', 'app/db/password', 'app/db/user']);
  assert.deepEqual(sorted(await all('app/db/', 1)), ['app/db/password', 'app/db/user']);
  assert.deepEqual(sorted(await all('app', 2)), [
    'app',
    'app/dash',
    'app/db/password',
    'app/db/user',
    'app/web/key',
    'apple',
  ]);
  assert.deepEqual(sorted(await all('', 3)), sorted(names));
  assert.deepEqual(await all('nothing/', 10), []);
});

test('at rest: no secret name, value or identity in the store, only sealed records under keyed tags', async () => {
  const store = newSecretStore();
  const value = 'correct-horse-battery-staple';
  apply(store, put('payments/stripe/api-key', value, { expireAtMs: T0 + 60_000 }));
  apply(store, put('payments/stripe/api-key', `${value}-2`));
  const ci = { name: 'ci-deployer', key: 'aa'.repeat(32) };
  const { kind, data } = encodeSecretCommand(put('payments/other', value), ci);
  applyLogged(store, kind, data);
  const image = (await store.snapshot()) as Array<[Uint8Array, Uint8Array]>;
  assert.ok(image.length >= 6, 'meta, values, expiry, usage and term counts are records');
  const raw = Buffer.concat(image.flat());
  for (const text of [value, 'payments', 'stripe', 'api-key', 'other', 'ci-deployer'])
    assert.equal(raw.includes(Buffer.from(text)), false, `"${text}" is not readable in the records`);
  assert.equal(store.read('payments/stripe/api-key', { version: 1 }, T0).value.toString(), value);
});

test('a record moved to another key (one secret swapped for another) does not open', async () => {
  const keys = testRecordKeys();
  const store = newSecretStore({}, keys);
  // Version 1 of each moves out to a record of its own when version 2 comes; version 2 stays
  // inside its secret's record.
  for (const version of [1, 2]) {
    apply(store, put('a', `value ${version} of a`));
    apply(store, put('b', `value ${version} of b`));
  }
  const image = (await store.snapshot()) as Array<[Uint8Array, Uint8Array]>;
  const swap = (kind: number): Array<[Uint8Array, Uint8Array]> => {
    const pair = image.filter(([k]) => k[0] === 0x73 && k[1] === kind);
    assert.equal(pair.length, 2);
    return image.map(([k, v]): [Uint8Array, Uint8Array] => {
      if (Buffer.compare(k, pair[0]![0]) === 0) return [k, pair[1]![1]];
      if (Buffer.compare(k, pair[1]![0]) === 0) return [k, pair[0]![1]];
      return [k, v];
    });
  };
  const values = newSecretStore({}, keys);
  await values.restore(swap(0x76), 10);
  assert.throws(() => values.read('a', { version: 1 }, T0), /authentication failed/);
  assert.throws(() => values.read('b', { version: 1 }, T0), /authentication failed/);
  assert.equal(values.read('a', {}, T0).value.toString(), 'value 2 of a', 'the records not moved still open');
  // The secrets' records, with the values inside them, swapped: neither opens.
  const metas = newSecretStore({}, keys);
  await metas.restore(swap(0x6d), 10);
  assert.throws(() => metas.read('a', {}, T0), /authentication failed/);
  assert.throws(() => metas.read('b', { version: 1 }, T0), /authentication failed/);
});

test('records per keyring term are counted; a re-seal moves them to the active term, in batches, and reads still work', async () => {
  const keys = testRecordKeys() as ReturnType<typeof testRecordKeys> & {
    addTerm(t: number, k: Buffer, ms: number): void;
  };
  const store = newSecretStore({}, keys);
  for (let k = 0; k < 5; k++) apply(store, put(`s${k}`, `v${k}`));
  apply(store, { op: 'destroy', name: 's4', versions: [1] });
  // Five metadata records and four values under term 1.
  assert.equal(store.recordsSealedUnder(1), 9);
  keys.addTerm(2, Buffer.alloc(32, 9), 0);
  apply(store, put('s0', 'newer'));
  assert.equal(store.recordsSealedUnder(2), 2, 'the new value and the rewritten metadata');
  assert.equal(store.recordsSealedUnder(1), 8);
  let cursor: Uint8Array | null = null;
  let batches = 0;
  for (;;) {
    const next = await store.resealCommand(2, cursor, 3);
    if (next === null) break;
    batches++;
    assert.ok(next.command.keys.length <= 3);
    apply(store, next.command);
    cursor = next.last;
  }
  // Six records under term 1 (five secrets' records, with the values inside, and s0's first value,
  // moved out when its second came), three a batch.
  assert.equal(batches, 2);
  assert.equal(store.recordsSealedUnder(1), 0);
  assert.equal(store.recordsSealedUnder(2), 10);
  assert.deepEqual(await store.termsInUse(), [{ term: 2, records: 10 }]);
  for (let k = 1; k < 4; k++) assert.equal(store.read(`s${k}`, {}, T0).value.toString(), `v${k}`);
  assert.equal(store.read('s0', { version: 1 }, T0).value.toString(), 'v0');
});

test("the counts per term are the stored records' own terms through dropped versions, re-seals, destroys and expiry", async () => {
  const keys = testRecordKeys() as ReturnType<typeof testRecordKeys> & {
    addTerm(t: number, k: Buffer, ms: number): void;
  };
  const records = new WriteSet(new MemoryStateStore());
  const store = new SecretStore({ records, keys });
  // The truth: every sealed record's own term, read from the records themselves, and the term of
  // each value kept inside a secret's record (opened here), which must be its record's own.
  const truth = async (): Promise<Map<number, number>> => {
    const counts = new Map<number, number>();
    const count = (term: number): void => {
      counts.set(term, (counts.get(term) ?? 0) + 1);
    };
    for await (const r of records.range({ gte: Buffer.from('sm'), lt: Buffer.from('sw') })) {
      if (r.key[1] !== 0x6d && r.key[1] !== 0x76) continue; // sm, sv only
      count(recordTerm(r.value));
      if (r.key[1] !== 0x6d) continue;
      const fields = packr.unpack(openRecord(keys, r.key, r.value, 'a secret record')) as unknown[];
      const inside = fields[9] as [number, Uint8Array] | null | undefined;
      if (inside == null) continue;
      assert.equal(recordTerm(inside[1]), recordTerm(r.value), "a value inside is under its record's term");
      inlineSeen++;
      count(recordTerm(inside[1]));
    }
    return counts;
  };
  let inlineSeen = 0;
  const check = async (when: string): Promise<void> => {
    const counted = new Map((await store.termsInUse()).map((t) => [t.term, t.records]));
    assert.deepEqual(counted, await truth(), when);
  };
  let seed = 7;
  const random = (n: number): number => {
    seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
    return Math.floor((seed / 2_147_483_648) * n); // the high bits: an LCG's low bits cycle
  };
  let nowMs = T0;
  let valuesResealed = 0;
  for (let term = 1; term <= 3; term++) {
    if (term > 1) keys.addTerm(term, Buffer.alloc(32, term), 0);
    for (let k = 0; k < 120; k++) {
      const name = `s${random(12)}`;
      const roll = random(10);
      nowMs += 10;
      if (roll < 6)
        apply(
          store,
          put(name, `v${k}`, { versionsKept: 1 + random(3), nowMs, expireAtMs: roll === 0 ? nowMs + 50 : null }),
        );
      else if (roll < 8) apply(store, { op: 'destroy', name, versions: [1 + random(8)] });
      else {
        const sweep = await store.expiryCommand(nowMs);
        if (sweep !== null) apply(store, sweep);
      }
      if (k === 20 && term > 1) {
        // A re-seal half way: values it moves are then dropped by later puts, destroys and sweeps.
        let cursor: Uint8Array | null = null;
        for (;;) {
          const next = await store.resealCommand(term, cursor, 5);
          if (next === null) break;
          const result = apply(store, next.command);
          assert.ok(result.ok);
          for (const key of next.command.keys) if (key[1] === 0x76) valuesResealed++;
          cursor = next.last;
        }
        await check(`after the re-seal to term ${term}`);
        assert.equal((await store.termsInUse()).length, 1, 'only the active term seals records after a whole re-seal');
      }
    }
    await check(`after term ${term}'s commands`);
  }
  for (let k = 0; k < 12; k++) {
    let kept: number[] = [];
    try {
      kept = store.versions(`s${k}`, nowMs).map((v) => v.version);
    } catch {} // never written: the names are drawn at random
    if (kept.length > 0) assert.ok(apply(store, { op: 'destroy', name: `s${k}`, versions: kept }).ok);
  }
  assert.ok(valuesResealed >= 5, `values were re-sealed, then dropped (${valuesResealed})`);
  assert.ok(inlineSeen >= 20, `values inside secrets' records were counted (${inlineSeen})`);
  await check('after every version is destroyed');
  const values: unknown[] = [];
  for await (const r of records.range({ gte: Buffer.from('sv'), lt: Buffer.from('sw') })) values.push(r);
  assert.equal(values.length, 0, 'no value record is left');
  inlineSeen = 0;
  await truth();
  assert.equal(inlineSeen, 0, "no value is left inside a secret's record");
  assert.ok((await store.termsInUse()).length === 1, "the secrets' metadata records are left, counted");
});

test('a put checked (requiredCapabilities) and then applied reads the secret once; a record read for another command is never reused', () => {
  const store = newSecretStore();
  assert.deepEqual(apply(store, put('k', 'one')), { ok: true, version: 1 });
  // Checked, then another command on the same secret applies first: the checked one must see it.
  const checked = put('k', 'three', { cas: 1 });
  assert.deepEqual(store.requiredCapabilities(checked), { name: 'k', capabilities: ['write'] });
  assert.deepEqual(store.apply(put('k', 'two')), { ok: true, version: 2 });
  const stale = store.apply(checked);
  assert.equal(!stale.ok && stale.code, 'CAS_MISMATCH', 'it saw version 2, not the version 1 read when it was checked');
  // Checked and applied in turn, as AppliedState does: the read made by the check serves the put.
  const next = put('k', 'four', { cas: 2 });
  store.requiredCapabilities(next);
  assert.deepEqual(store.apply(next), { ok: true, version: 3 });
  assert.equal(store.read('k', {}, T0).value.toString(), 'four');
  assert.equal(store.read('k', { label: 'previous' }, T0).value.toString(), 'two');
  // A put applied without a check (a manager's own) reads afresh, not what the last check read.
  assert.deepEqual(store.apply(put('k', 'five')), { ok: true, version: 4 });
  assert.equal(store.read('k', { label: 'previous' }, T0).value.toString(), 'four');
});

test("a small value lives inside its secret's record: one record a secret; a newer version moves it out unchanged; a large one is its own record", async () => {
  const keys = testRecordKeys();
  const store = newSecretStore({}, keys);
  const stored = async (): Promise<{ metas: number; values: number }> => {
    const out = { metas: 0, values: 0 };
    for await (const r of store.records()) {
      if (r.key[1] === 0x6d) out.metas++;
      if (r.key[1] === 0x76) out.values++;
    }
    return out;
  };
  for (let k = 0; k < 10; k++) apply(store, put(`app/s${k}`, `value ${k}`));
  assert.deepEqual(await stored(), { metas: 10, values: 0 }, 'ten secrets of one small version: ten records');
  apply(store, put('app/s0', 'second'));
  assert.deepEqual(await stored(), { metas: 10, values: 1 }, 'the first version moved out');
  assert.equal(store.read('app/s0', { version: 1 }, T0).value.toString(), 'value 0');
  assert.equal(store.read('app/s0', {}, T0).value.toString(), 'second');
  const large = 'x'.repeat(INLINE_VALUE_BYTES_MAX + 1);
  apply(store, put('app/large', large));
  assert.deepEqual(await stored(), { metas: 11, values: 2 }, 'a value over the limit is a record of its own');
  assert.equal(store.read('app/large', {}, T0).value.toString(), large);
  // Kept one at a time: the version inside is dropped with its version, nothing moves out.
  apply(store, put('app/one', 'a', { versionsKept: 1 }));
  apply(store, put('app/one', 'b', { versionsKept: 1 }));
  assert.deepEqual(await stored(), { metas: 12, values: 2 });
  assert.equal(store.read('app/one', {}, T0).value.toString(), 'b');
  // Destroyed, the value inside goes: the record holds no ciphertext of it.
  apply(store, { op: 'destroy', name: 'app/one', versions: [2] });
  assert.throws(() => store.read('app/one', {}, T0), /destroyed/);
  let inside = 0;
  for (const r of (await store.snapshot()) as Array<[Uint8Array, Uint8Array]>) {
    if (r[0][1] !== 0x6d) continue;
    const fields = packr.unpack(openRecord(keys, r[0], r[1], 'a record')) as unknown[];
    if (fields[0] === 'app/one') assert.equal(fields[9], null);
    else inside++;
  }
  assert.equal(inside, 11, 'the other secrets were opened and checked the same way');
});

test('a secret stored before values lived inside their records (metadata and value apart) reads, and takes new versions', async () => {
  const keys = testRecordKeys();
  const nk = nameKey(keys.indexKey, 'old/one');
  const mk = Buffer.concat([Buffer.from('sm'), nk]);
  const version = Buffer.alloc(4);
  version.writeUInt32BE(1);
  const vk = Buffer.concat([Buffer.from('sv'), nk, version]);
  // The record as the layout before wrote it: nine fields, no tenth.
  const meta = packr.pack([
    'old/one',
    1,
    [['current', 1]],
    false,
    10,
    T0,
    T0,
    null,
    [[1, T0, null, false, false, null, 3, 1]],
  ]);
  const count = Buffer.alloc(6);
  count.writeUIntBE(2, 0, 6);
  const termKey = Buffer.concat([Buffer.from('st'), Buffer.from([0, 0, 0, 1])]);
  const image: Array<[Uint8Array, Uint8Array]> = [
    [mk, sealRecord(keys, mk, meta, { index: 1, seq: 1 })],
    [termKey, count],
    [vk, sealRecord(keys, vk, Buffer.from('old'), { index: 1, seq: 0 })],
  ];
  const store = newSecretStore({}, keys);
  await store.restore(image, 1);
  assert.equal(store.read('old/one', {}, T0).value.toString(), 'old');
  assert.deepEqual(apply(store, put('old/one', 'new')), { ok: true, version: 2 });
  assert.equal(store.read('old/one', {}, T0).value.toString(), 'new');
  assert.equal(store.read('old/one', { version: 1 }, T0).value.toString(), 'old');
  assert.equal(store.recordsSealedUnder(1), 3, 'its record, its old value, the new value inside');
});

test('a secret record kept opened serves only while the store holds its very bytes: not after a rollback, a restore or a swap', async () => {
  const records = new WriteSet(new MemoryStateStore());
  const store = new SecretStore({ records, keys: testRecordKeys() });
  apply(store, put('k', 'one'));
  apply(store, put('k', 'two')); // written twice: kept opened from here on
  const atTwo = (await store.snapshot()) as Array<[Uint8Array, Uint8Array]>;
  // A batch that writes k, then is refused: its write is rolled back, and so is what was kept.
  const refused = apply(store, {
    op: 'put-batch',
    nowMs: T0,
    items: [
      { name: 'k', value: Buffer.from('three'), cas: null, expireAtMs: null, versionsKept: null },
      { name: 'k', value: Buffer.from('four'), cas: 1, expireAtMs: null, versionsKept: null },
    ],
  });
  assert.equal(refused.ok, false);
  assert.equal(store.read('k', {}, T0).value.toString(), 'two');
  assert.deepEqual(
    store.versions('k', T0).map((v) => v.version),
    [1, 2],
  );
  // Written again, then the store restored to an image from before: the image is what reads.
  assert.deepEqual(apply(store, put('k', 'three')), { ok: true, version: 3 });
  assert.equal(store.metadata('k').lastVersion, 3);
  await records.commit();
  await store.restore(atTwo, 10);
  assert.equal(store.metadata('k').lastVersion, 2);
  assert.equal(store.read('k', {}, T0).value.toString(), 'two');
  // Two secrets' records swapped under the store's feet: neither is served from what was kept.
  apply(store, put('j', 'one'));
  apply(store, put('j', 'two'));
  store.read('j', {}, T0);
  await records.commit();
  const image = (await store.snapshot()) as Array<[Uint8Array, Uint8Array]>;
  const metas = image.filter(([k]) => k[0] === 0x73 && k[1] === 0x6d);
  assert.equal(metas.length, 2);
  await store.restore(
    image.map(([k, v]): [Uint8Array, Uint8Array] =>
      Buffer.compare(k, metas[0]![0]) === 0
        ? [k, metas[1]![1]]
        : Buffer.compare(k, metas[1]![0]) === 0
          ? [k, metas[0]![1]]
          : [k, v],
    ),
    20,
  );
  assert.throws(() => store.read('k', {}, T0), /authentication failed/);
  assert.throws(() => store.metadata('j'), /authentication failed/);
});
