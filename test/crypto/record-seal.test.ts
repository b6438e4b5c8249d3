import { test } from 'node:test';
import { createHmac } from 'node:crypto';
import assert from 'node:assert/strict';
import { CryptoError } from '../../src/crypto/errors.ts';
import { Keyring } from '../../src/crypto/keyring.ts';
import { KEY_BYTES, NONCE_BYTES, open, seal } from '../../src/crypto/aead.ts';
import {
  NAME_KEY_CACHE_NAMES,
  NAME_PARENT_CHAINS_CACHED,
  NAME_TAG_BYTES,
  keyedTag,
  nameKey,
  openRecord,
  recordTerm,
  sealRecord,
  segmentsKey,
} from '../../src/crypto/record-seal.ts';

const failsWith = (code: string) => (e: unknown) => e instanceof CryptoError && e.code === code;

test('a record opens under its key only: altered bytes, another key (a swap), another keyring all fail', () => {
  const keys = Keyring.create('c1', 0);
  const key = Buffer.from('sv-key-of-a/b-version-1');
  const sealed = sealRecord(keys, key, Buffer.from('hunter2'), { index: 7, seq: 0 });
  assert.equal(openRecord(keys, key, sealed, 'a value').toString(), 'hunter2');
  assert.equal(recordTerm(sealed), 1);
  assert.equal(sealed.includes(Buffer.from('hunter2')), false, 'no plaintext in the sealed bytes');
  for (let k = 0; k < sealed.length; k++) {
    const altered = Buffer.from(sealed);
    altered[k]! ^= 0x01;
    assert.throws(() => openRecord(keys, key, altered, 'a value'), CryptoError, `byte ${k} altered`);
  }
  assert.throws(
    () => openRecord(keys, Buffer.from('sv-key-of-a/b-version-2'), sealed, 'a value'),
    failsWith('DECRYPT_FAILED'),
  );
  assert.throws(() => openRecord(Keyring.create('c1', 0), key, sealed, 'a value'), failsWith('DECRYPT_FAILED'));
  assert.throws(() => openRecord(keys, key, sealed.subarray(0, 20), 'a value'), failsWith('ENVELOPE_MALFORMED'));
});

test('sealing is deterministic per (term, index, counter) and differs across them: equal stores on every manager, no nonce reused for two messages', () => {
  const keys = Keyring.create('c1', 0);
  const key = Buffer.from('k');
  const a = sealRecord(keys, key, Buffer.from('same'), { index: 5, seq: 0 });
  assert.deepEqual(sealRecord(keys, key, Buffer.from('same'), { index: 5, seq: 0 }), a);
  assert.notDeepEqual(sealRecord(keys, key, Buffer.from('same'), { index: 5, seq: 1 }), a);
  assert.notDeepEqual(sealRecord(keys, key, Buffer.from('same'), { index: 6, seq: 0 }), a);
  assert.throws(() => sealRecord(keys, key, Buffer.from('x'), { index: -1, seq: 0 }), TypeError);
  assert.throws(() => sealRecord(keys, key, Buffer.from('x'), { index: 1, seq: 2 ** 32 }), TypeError);
});

test('the records key is not the data key, and a destroyed term opens nothing', () => {
  const keys = Keyring.create('c1', 0);
  const sealed = sealRecord(keys, Buffer.from('k'), Buffer.from('v'), { index: 1, seq: 0 });
  keys.addTerm(2, Keyring.newKey(), 1);
  const newer = sealRecord(keys, Buffer.from('k'), Buffer.from('v'), { index: 2, seq: 0 });
  assert.equal(recordTerm(newer), 2);
  keys.destroyTerm(1);
  assert.throws(() => openRecord(keys, Buffer.from('k'), sealed, 'a value'), failsWith('KEY_TERM_DESTROYED'));
  assert.equal(openRecord(keys, Buffer.from('k'), newer, 'a value').toString(), 'v');
  assert.throws(() => keys.recordsKey(9), failsWith('KEY_TERM_UNKNOWN'));
});

test('the name index key survives the destruction of term 1 and the keyring round trip', () => {
  const keys = Keyring.create('c1', 0);
  const before = Buffer.from(keys.indexKey);
  keys.addTerm(2, Keyring.newKey(), 1);
  keys.destroyTerm(1);
  assert.deepEqual(keys.indexKey, before);
  const root = Buffer.alloc(32, 3);
  assert.deepEqual(Keyring.unwrap(root, 'c1', keys.wrap(root)).indexKey, before);
  assert.throws(() => Keyring.empty('c1').indexKey, failsWith('KEYRING_EMPTY'));
});

test('name keys: a tag per segment, shared by names under one parent; no segment text; keyed', () => {
  const index = Keyring.create('c1', 0).indexKey;
  const abc = nameKey(index, 'app/db/password');
  assert.equal(abc.length, 3 * NAME_TAG_BYTES);
  const abd = nameKey(index, 'app/db/user');
  assert.deepEqual(abc.subarray(0, 2 * NAME_TAG_BYTES), abd.subarray(0, 2 * NAME_TAG_BYTES), 'the parent app/db');
  assert.notDeepEqual(abc.subarray(2 * NAME_TAG_BYTES), abd.subarray(2 * NAME_TAG_BYTES));
  assert.deepEqual(segmentsKey(index, 'app/db'), abc.subarray(0, 2 * NAME_TAG_BYTES));
  assert.equal(segmentsKey(index, '').length, 0);
  // The same segment under two parents has unrelated tags.
  assert.notDeepEqual(nameKey(index, 'a/x').subarray(NAME_TAG_BYTES), nameKey(index, 'b/x').subarray(NAME_TAG_BYTES));
  // Segment boundaries count: "ab/c" and "a/bc" differ from the first tag on.
  assert.notDeepEqual(nameKey(index, 'ab/c').subarray(0, 16), nameKey(index, 'a/bc').subarray(0, 16));
  assert.equal(abc.includes(Buffer.from('app')), false);
  assert.notDeepEqual(nameKey(Keyring.create('c1', 0).indexKey, 'app/db/password'), abc, 'another cluster, other tags');
  assert.notDeepEqual(keyedTag(index, 'identity', 'ci'), keyedTag(index, 'other', 'ci'));
});

test('name keys are cached per index key: the same tags as computed afresh, another index key never gets them, a caller changing its copy changes nothing, and the cache stays bounded', () => {
  const index = Keyring.create('c1', 0).indexKey;
  const other = Keyring.create('c2', 0).indexKey;
  const first = nameKey(index, 'app/db/password');
  const again = nameKey(index, 'app/db/password');
  assert.deepEqual(again, first);
  assert.notEqual(again, first, 'each call gets its own buffer');
  // The other index key's tags are its own, asked after the first was cached (and the reverse).
  const otherTags = nameKey(other, 'app/db/password');
  assert.notDeepEqual(otherTags, first);
  assert.deepEqual(nameKey(index, 'app/db/password'), first);
  // A caller wiping what it got does not wipe the cache.
  again.fill(0);
  assert.deepEqual(nameKey(index, 'app/db/password'), first);
  // Past the bound the oldest go; every answer is still right.
  const names = Array.from({ length: NAME_KEY_CACHE_NAMES + 10 }, (_, k) => `bulk/n${k}`);
  const tags = names.map((name) => nameKey(index, name));
  assert.deepEqual(nameKey(index, names[0]!), tags[0], 'recomputed after it was dropped');
  assert.deepEqual(nameKey(index, names.at(-1)!), tags.at(-1));
  assert.notDeepEqual(tags[0], tags[1]);
});

test('seals draw a fresh nonce each, across refills of the nonce pool, and every seal opens', () => {
  const key = Buffer.alloc(KEY_BYTES, 7);
  const nonces = new Set<string>();
  for (let k = 0; k < 2000; k++) {
    const sealed = seal(key, Buffer.from(`value ${k}`), Buffer.from('aad'));
    nonces.add(sealed.subarray(0, NONCE_BYTES).toString('hex'));
    assert.equal(open(key, sealed, Buffer.from('aad'), 'a test value').toString(), `value ${k}`);
  }
  assert.equal(nonces.size, 2000, 'no nonce twice (the pool holds 341: five refills)');
});

test('name keys made from kept parents are the chain made segment by segment, for every shape of name and past the cache bounds', () => {
  // The chain as first defined: one HMAC per segment of the previous full digest and the segment.
  const reference = (indexKey: Buffer, name: string): Buffer => {
    const segments = name.split('/');
    const out = Buffer.alloc(segments.length * NAME_TAG_BYTES);
    let chain: Buffer = Buffer.from('coffer/1|name');
    for (const [k, segment] of segments.entries()) {
      chain = createHmac('sha256', indexKey).update(chain).update(segment).digest();
      chain.copy(out, k * NAME_TAG_BYTES, 0, NAME_TAG_BYTES);
    }
    return out;
  };
  const index = Keyring.create('c1', 0).indexKey;
  let seed = 11;
  const random = (n: number): number => {
    seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648;
    return Math.floor((seed / 2_147_483_648) * n);
  };
  const names = ['', '/', 'a', 'a/', '/a', 'a//b', 'app/db/password', 'é/ü/∑'];
  // More parents and names than either cache keeps, so both evict while they are checked.
  for (let k = 0; k < NAME_PARENT_CHAINS_CACHED + NAME_KEY_CACHE_NAMES; k++) {
    const depth = 1 + random(4);
    names.push(Array.from({ length: depth }, () => `s${random(k < 2000 ? 3000 : 40)}`).join('/'));
  }
  for (const name of names) assert.deepEqual(nameKey(index, name), reference(index, name), name);
  // Again, from the caches where they still hold the names and parents.
  for (const name of names.slice(-500)) assert.deepEqual(nameKey(index, name), reference(index, name), name);
  // What a caller is given is its own: changing it changes no later answer.
  nameKey(index, 'app/db/password').fill(0);
  assert.deepEqual(nameKey(index, 'app/db/other'), reference(index, 'app/db/other'));
  assert.deepEqual(nameKey(index, 'app/db/password'), reference(index, 'app/db/password'));
});
