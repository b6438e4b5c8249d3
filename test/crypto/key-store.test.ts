import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CryptoError, type CryptoErrorCode } from '../../src/crypto/errors.ts';
import { KeyStore } from '../../src/crypto/key-store.ts';

const refusedWith = (code: CryptoErrorCode) => (error: unknown) => error instanceof CryptoError && error.code === code;

test('the key store keeps the root key wrapped, owner-readable only, and rewraps it under a new KEK', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-keystore-'));
  try {
    const root = randomBytes(32);
    const kek = randomBytes(32);
    await KeyStore.create(join(dir, 'keys'), { clusterId: 'c1', rootKey: root, kek, protection: 'key-file' });
    assert.equal(statSync(join(dir, 'keys')).mode & 0o777, 0o600);
    assert.ok(!readFileSync(join(dir, 'keys')).includes(root), 'the root key is not stored in the clear');
    const store = await KeyStore.read(join(dir, 'keys'));
    assert.deepEqual(store.openRoot(kek), root);
    assert.throws(() => store.openRoot(randomBytes(32)), refusedWith('KEY_FILE_INVALID'));

    const unlockKek = randomBytes(32);
    store.unlock(kek);
    await store.setSecrets(new Map([['tls-key', Buffer.from('private key bytes')]]));
    await store.rewrap({ rootGen: 1, rootKey: root, kek: unlockKek, protection: 'unlock-key', unlockGen: 1 });
    assert.deepEqual(store.kek, unlockKek, 'the store holds the new KEK after a rewrap');
    const again = await KeyStore.read(join(dir, 'keys'));
    assert.equal(again.protection, 'unlock-key');
    assert.throws(() => again.openRoot(kek), refusedWith('UNLOCK_KEY_WRONG'), 'the old KEK no longer opens it');
    assert.deepEqual(again.openRoot(unlockKek), root);
    assert.deepEqual(
      again.openSecrets(unlockKek).get('tls-key'),
      Buffer.from('private key bytes'),
      'local secrets moved to the new KEK',
    );
    assert.ok(!readFileSync(join(dir, 'keys')).includes(Buffer.from('private key bytes')));
    again.unlock(unlockKek);
    await assert.rejects(
      again.rewrap({ rootGen: 0, rootKey: root, kek, protection: 'key-file', unlockGen: 1 }),
      /older than the stored 1/,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('concurrent reservations and rewraps are applied one after another and none is lost', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-keystore-'));
  try {
    const root = randomBytes(32);
    const kek = randomBytes(32);
    const store = await KeyStore.create(join(dir, 'keys'), {
      clusterId: 'c1',
      rootKey: root,
      kek,
      protection: 'key-file',
    });
    store.unlock(kek);
    const nextKek = randomBytes(32);
    // A secret written while a rewrap to a new KEK is queued ends up sealed under the new KEK.
    await Promise.all([
      store.reserveUses(1, 100, [1, 2]),
      store.rewrap({ rootGen: 2, rootKey: root, kek: nextKek, protection: 'unlock-key', unlockGen: 1 }),
      store.setSecrets(new Map([['tls-key', Buffer.from('k')]])),
      store.reserveUses(2, 50, [1, 2]),
    ]);
    const back = await KeyStore.read(join(dir, 'keys'));
    assert.equal(back.rootGen, 2);
    assert.equal(back.usesReserved(1), 100);
    assert.equal(back.usesReserved(2), 50);
    assert.deepEqual(back.openSecrets(nextKek).get('tls-key'), Buffer.from('k'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a damaged or missing key store is refused with an error that says what and where', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-keystore-'));
  try {
    await assert.rejects(
      KeyStore.read(join(dir, 'keys')),
      (e: unknown) => refusedWith('KEY_STORE_MISSING')(e) && (e as Error).message.includes(dir),
    );
    await KeyStore.create(join(dir, 'keys'), {
      clusterId: 'c1',
      rootKey: randomBytes(32),
      kek: randomBytes(32),
      protection: 'key-file',
    });
    const bytes = readFileSync(join(dir, 'keys'));
    bytes[bytes.length - 3]! ^= 0x10;
    writeFileSync(join(dir, 'keys'), bytes);
    await assert.rejects(
      KeyStore.read(join(dir, 'keys')),
      (e: unknown) =>
        refusedWith('KEY_STORE_CORRUPT')(e) &&
        /checksum mismatch/.test((e as Error).message) &&
        (e as Error).message.includes(join(dir, 'keys')),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
