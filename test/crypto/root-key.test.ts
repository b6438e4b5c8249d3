import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CryptoError, type CryptoErrorCode } from '../../src/crypto/errors.ts';
import {
  createKeyFile,
  generateRootKey,
  kekFromUnlockKey,
  readKeyFile,
  unwrapRootKey,
  wrapRootKey,
} from '../../src/crypto/root-key.ts';
import { formatUnlockKey, generateUnlockKey, parseUnlockKey } from '../../src/crypto/unlock-key.ts';

const refusedWith = (code: CryptoErrorCode) => (error: unknown) => error instanceof CryptoError && error.code === code;

test('an unlock key has the CFRKEY-1 form and parses back to its bytes, whatever the case and spacing', () => {
  const key = generateUnlockKey();
  assert.match(key, /^CFRKEY-1-[A-Z2-7]{52}-[A-Z2-7]{4}$/);
  const bytes = parseUnlockKey(key);
  assert.equal(bytes.byteLength, 32);
  assert.equal(formatUnlockKey(bytes), key);
  assert.deepEqual(parseUnlockKey(`  ${key.toLowerCase()}\n`), bytes);
});

test('a typo in an unlock key is caught by its checksum, before any decryption', () => {
  const key = generateUnlockKey();
  for (const at of [9, 20, 60]) {
    const char = key[at]!;
    const typo = key.slice(0, at) + (char === 'A' ? 'B' : 'A') + key.slice(at + 1);
    assert.throws(
      () => parseUnlockKey(typo),
      (e: unknown) => refusedWith('UNLOCK_KEY_MALFORMED')(e) && /typo/.test((e as Error).message),
    );
  }
  assert.throws(() => parseUnlockKey('CFRKEY-2-ABC'), refusedWith('UNLOCK_KEY_MALFORMED'));
  assert.throws(() => parseUnlockKey(''), refusedWith('UNLOCK_KEY_MALFORMED'));
});

test('the root key opens with the right unlock key; a well-formed wrong one gets its own error', () => {
  const root = generateRootKey();
  const unlock = generateUnlockKey();
  const wrapped = wrapRootKey(kekFromUnlockKey(unlock, 'c1'), root, 'c1');
  assert.deepEqual(unwrapRootKey(kekFromUnlockKey(unlock, 'c1'), wrapped, 'c1', 'unlock key'), root);
  assert.throws(
    () => unwrapRootKey(kekFromUnlockKey(generateUnlockKey(), 'c1'), wrapped, 'c1', 'unlock key'),
    refusedWith('UNLOCK_KEY_WRONG'),
  );
  const message = (() => {
    try {
      unwrapRootKey(kekFromUnlockKey(generateUnlockKey(), 'c1'), wrapped, 'c1', 'unlock key');
      return '';
    } catch (error) {
      return (error as Error).message;
    }
  })();
  assert.ok(!message.includes(unlock) && !message.includes(root.toString('hex')), 'no key material in the error');
});

test('a key file is created readable by its owner only, and refused when others can read it or it is damaged', () => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-keyfile-'));
  try {
    const path = join(dir, 'coffer.key');
    const kek = createKeyFile(path);
    assert.equal(statSync(path).mode & 0o777, 0o600);
    assert.deepEqual(readKeyFile(path), kek);
    assert.throws(() => createKeyFile(path), /EEXIST/);
    chmodSync(path, 0o644);
    assert.throws(
      () => readKeyFile(path),
      (e: unknown) => refusedWith('KEY_FILE_INVALID')(e) && /chmod 600/.test((e as Error).message),
    );
    writeFileSync(join(dir, 'short.key'), Buffer.alloc(7), { mode: 0o600 });
    assert.throws(() => readKeyFile(join(dir, 'short.key')), /holds 7 bytes, not 32/);
    assert.throws(() => readKeyFile(join(dir, 'missing.key')), /ENOENT/);
    const root = generateRootKey();
    const wrapped = wrapRootKey(kek, root, 'c1');
    assert.throws(() => unwrapRootKey(generateRootKey(), wrapped, 'c1', 'key file'), refusedWith('KEY_FILE_INVALID'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
