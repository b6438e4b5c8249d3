import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';
import { KEY_CURVE, newKeyPair } from '../../src/crypto/key-pairs.ts';

test('a leaf key is a P-256 pair whose halves match, never the same twice', () => {
  const keys = [newKeyPair(), newKeyPair(), newKeyPair()];
  for (const key of keys) {
    const privateKey = createPrivateKey(key.privatePem);
    assert.equal(privateKey.asymmetricKeyType, 'ec');
    assert.equal(privateKey.asymmetricKeyDetails?.namedCurve, KEY_CURVE);
    const signature = sign('sha256', Buffer.from('proof'), privateKey);
    assert.ok(verify('sha256', Buffer.from('proof'), createPublicKey(key.publicPem), signature), 'the halves match');
  }
  assert.equal(new Set(keys.map((k) => k.privatePem)).size, 3, 'never the same key twice');
});
