import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeBackupStream } from '../../src/backup/backup-stream.ts';
import { generateRecoveryKey } from '../../src/crypto/recovery-key.ts';
import { coffer } from '../processes/processes.ts';

/** A small backup file whose header opens with the keys asked for (nothing in it is restored here). */
async function backupFile(path: string, opensWith: { recovery: boolean; unlock: boolean }): Promise<void> {
  const pieces: Buffer[] = [];
  for await (const piece of encodeBackupStream(
    {
      clusterId: 'c-restore-key',
      createdAtMs: Date.now(),
      index: 1,
      term: 1,
      rootGen: 1,
      descriptor: Buffer.from('descriptor'),
      caCertPem: 'not read before the key',
      chunks: (async function* () {})(),
    },
    {
      rootKey: randomBytes(32),
      caKeyPem: 'not read before the key',
      recoveryPublicKey: opensWith.recovery ? generateRecoveryKey().publicKey : null,
      unlockKek: opensWith.unlock ? randomBytes(32) : null,
    },
  ))
    pieces.push(piece);
  writeFileSync(path, Buffer.concat(pieces));
}

test('snapshot restore with no key file and stdin closed names the key the backup needs and the flag that gives it', {
  timeout: 60_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-restore-key-'));
  try {
    const restore = (file: string) =>
      coffer(['snapshot', 'restore', file, '--data', join(root, 'data'), '--listen', '127.0.0.1:1'], '');
    await backupFile(join(root, 'recovery.cfrbak'), { recovery: true, unlock: false });
    const recoveryOnly = await restore(join(root, 'recovery.cfrbak'));
    assert.equal(recoveryOnly.code, 1);
    assert.match(
      recoveryOnly.stderr,
      /opens with its recovery key \(CFRREC-1-\.\.\.\): give it with --recovery-key-file FILE/,
    );
    assert.doesNotMatch(recoveryOnly.stderr, /unlock/, 'a backup no unlock key opens does not ask for one');

    await backupFile(join(root, 'both.cfrbak'), { recovery: true, unlock: true });
    const both = await restore(join(root, 'both.cfrbak'));
    assert.equal(both.code, 1);
    assert.match(both.stderr, /recovery key .* or the unlock key of the cluster it was made from/);
    assert.match(both.stderr, /--recovery-key-file FILE or --unlock-key-file FILE/);
    assert.match(both.stderr, /stdin closed before a key was given/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
