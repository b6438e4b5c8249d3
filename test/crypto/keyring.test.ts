import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Keyring } from '../../src/crypto/keyring.ts';
import { CryptoError, type CryptoErrorCode } from '../../src/crypto/errors.ts';

const refusedWith = (code: CryptoErrorCode) => (error: unknown) => error instanceof CryptoError && error.code === code;

test('what the active term seals, the keyring opens, and the sealed bytes do not contain the plaintext', () => {
  const keyring = Keyring.create('cluster-a', 0);
  const plaintext = randomBytes(300);
  const sealed = keyring.encrypt('command', plaintext);
  assert.equal(Keyring.termOf(sealed), 1);
  assert.ok(!sealed.includes(plaintext.subarray(0, 16)));
  assert.deepEqual(keyring.decrypt('command', sealed), plaintext);
});

test('sealed data cannot be opened as another kind of data, or after any byte of it changes', () => {
  const keyring = Keyring.create('cluster-a', 0);
  const sealed = keyring.encrypt('command', Buffer.from('put db/password'));
  assert.throws(() => keyring.decrypt('snapshot', sealed), refusedWith('DECRYPT_FAILED'));
  for (let at = 0; at < sealed.byteLength; at++) {
    const altered = Buffer.from(sealed);
    altered[at]! ^= 0x40;
    assert.throws(
      () => keyring.decrypt('command', altered),
      (e: unknown) => e instanceof CryptoError,
      `a change at byte ${at} went unnoticed`,
    );
  }
});

test('after a rotation new data uses the new term and old data still opens, until its term is destroyed', () => {
  const keyring = Keyring.create('cluster-a', 0);
  const old = keyring.encrypt('command', Buffer.from('v1'));
  keyring.addTerm(2, Keyring.newKey(), 1000);
  const fresh = keyring.encrypt('command', Buffer.from('v2'));
  assert.equal(Keyring.termOf(fresh), 2);
  assert.deepEqual(keyring.decrypt('command', old), Buffer.from('v1'));
  assert.throws(() => keyring.destroyTerm(2), /active; rotate before destroying it/);
  keyring.destroyTerm(1);
  assert.throws(() => keyring.decrypt('command', old), refusedWith('KEY_TERM_DESTROYED'));
  assert.deepEqual(keyring.decrypt('command', fresh), Buffer.from('v2'));
  assert.throws(() => keyring.addTerm(4, Keyring.newKey(), 0), /does not follow the active term 2/);
});

test('a wrapped keyring opens only with its root key and keeps its terms, destroyed ones included', () => {
  const root = randomBytes(32);
  const keyring = Keyring.create('cluster-a', 5);
  keyring.addTerm(2, Keyring.newKey(), 6);
  const sealed = keyring.encrypt('command', Buffer.from('x'));
  keyring.destroyTerm(1);
  const wrapped = keyring.wrap(root);
  assert.throws(() => Keyring.unwrap(randomBytes(32), 'cluster-a', wrapped), refusedWith('DECRYPT_FAILED'));
  assert.throws(() => Keyring.unwrap(root, 'cluster-b', wrapped), refusedWith('DECRYPT_FAILED'));
  const back = Keyring.unwrap(root, 'cluster-a', wrapped);
  assert.equal(back.activeTerm, 2);
  assert.deepEqual(back.terms(), [
    { term: 1, createdAtMs: 5, destroyed: true },
    { term: 2, createdAtMs: 6, destroyed: false },
  ]);
  assert.deepEqual(back.decrypt('command', sealed), Buffer.from('x'));
});

test('nonces do not repeat over many encryptions under one key', () => {
  const keyring = Keyring.create('cluster-a', 0);
  const seen = new Set<string>();
  for (let k = 0; k < 20_000; k++)
    seen.add(keyring.encrypt('command', Buffer.from('same')).subarray(4, 16).toString('hex'));
  assert.equal(seen.size, 20_000);
  assert.equal(keyring.usesOfActiveTerm(), 20_000);
});

test('rotation is due once the active key is older than the interval', () => {
  const keyring = Keyring.create('cluster-a', 1_000);
  const day = 24 * 3600 * 1000;
  assert.equal(keyring.needsRotation(1_000 + 29 * day, 30 * day), false);
  assert.equal(keyring.needsRotation(1_000 + 30 * day, 30 * day), true);
});
