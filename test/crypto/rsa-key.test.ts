import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createPrivateKey, createPublicKey, sign, verify } from 'node:crypto';
import { LEAF_KEY_BITS, startLeafKeyEarly, takeLeafKey } from '../../src/crypto/rsa-key.ts';

function check(key: { privatePem: string; publicPem: string }): void {
  const privateKey = createPrivateKey(key.privatePem);
  assert.equal(privateKey.asymmetricKeyDetails?.modulusLength, LEAF_KEY_BITS);
  const signature = sign('sha256', Buffer.from('proof'), privateKey);
  assert.ok(verify('sha256', Buffer.from('proof'), createPublicKey(key.publicPem), signature), 'the halves match');
}

test('a leaf key begun early is taken once; later takes make new keys; each is a 2048-bit pair whose halves match', async () => {
  startLeafKeyEarly();
  startLeafKeyEarly(); // idempotent: still one key begun
  const first = await takeLeafKey();
  const second = await takeLeafKey();
  const third = await takeLeafKey();
  for (const key of [first, second, third]) check(key);
  assert.equal(new Set([first.privatePem, second.privatePem, third.privatePem]).size, 3, 'never the same key twice');
});
