import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeBackupStream, readBackupFile } from '../../src/backup/backup-stream.ts';
import { Barrier } from '../../src/barrier/barrier.ts';
import { packr } from '../../src/codec/msgpack.ts';
import { createCa } from '../../src/crypto/pki.ts';
import { generateRecoveryKey } from '../../src/crypto/recovery-key.ts';
import { LevelStateStore } from '../../src/kv/level-state-store.ts';
import { DataDir } from '../../src/manager/data-dir.ts';
import { restoreBackup } from '../../src/server/restore.ts';
import { AppliedState, type AppliedResult } from '../../src/state/applied-state.ts';
import { LevelStorage } from '../../src/storage/level-storage.ts';
import { secretPutEntries } from '../state/stores.ts';

const SECRETS = 3000;
const reserved = new Map<number, number>();
const local = {
  rootGen: 1,
  unlockGen: 0,
  usesReserved: (term: number) => reserved.get(term) ?? 0,
  reserveUses: async (term: number, uses: number) => void reserved.set(term, uses),
  rewrap: async () => undefined,
};

/** A state of SECRETS secrets behind a barrier, as a manager's, and a streamed backup of it. */
async function makeBackup(root: string): Promise<{ file: Buffer; recoveryKey: string; values: string[] }> {
  const rootKey = Buffer.alloc(32, 9);
  const store = await LevelStateStore.open(join(root, 'source'));
  const state = new AppliedState({ store });
  const barrier = new Barrier<AppliedResult>({
    clusterId: 'c-backup',
    rootKey: Buffer.from(rootKey),
    local,
    inner: state,
  });
  await state.reset();
  barrier.apply({ index: 1, term: 1, kind: 'normal', data: barrier.rotatePayload(0) });
  const values = Array.from({ length: SECRETS }, (_, k) => `value-${k}-${'x'.repeat(k % 300)}`);
  const entries = secretPutEntries(
    SECRETS,
    (k) => `app/b${k % 7}/s${k}`,
    (k) => values[k]!,
  );
  for (const e of entries) {
    const data = await barrier.sealCommand(e.kind, e.data);
    barrier.apply({ index: e.index + 1, term: 1, kind: 'normal', data });
  }
  await barrier.syncState(SECRETS + 1);
  const stream = barrier.snapshotStream();
  assert.ok(stream !== null, 'a state on disk streams');
  const ca = createCa('c-backup', Date.now());
  const recovery = generateRecoveryKey();
  const pieces: Buffer[] = [];
  for await (const piece of encodeBackupStream(
    {
      clusterId: 'c-backup',
      createdAtMs: Date.now(),
      index: barrier.appliedIndex,
      term: 1,
      rootGen: 1,
      descriptor: stream.data,
      caCertPem: ca.certPem,
      chunks: stream.records,
    },
    { rootKey, caKeyPem: ca.keyPem, recoveryPublicKey: recovery.publicKey, unlockKek: null },
  ))
    pieces.push(piece);
  await store.close();
  return { file: Buffer.concat(pieces), recoveryKey: recovery.recoveryKey, values };
}

/** A format-2 file in its parts: everything before the records, each section's chunk, the trailer. */
function split(file: Buffer): {
  head: Buffer;
  chunks: Buffer[];
  trailer: { recordBytes: number; recordsSha256: Uint8Array; mac: Uint8Array };
} {
  const headLength = file.readUInt32BE(8);
  const header = packr.unpack(file.subarray(12, 12 + headLength)) as { descriptorBytes: number };
  let at = 12 + headLength + header.descriptorBytes;
  const head = file.subarray(0, at);
  const chunks: Buffer[] = [];
  for (;;) {
    const length = file.readUInt32BE(at);
    at += 4;
    if (length === 0) break;
    chunks.push(file.subarray(at, at + length));
    at += length;
  }
  const trailerLength = file.readUInt32BE(at);
  return { head, chunks, trailer: packr.unpack(file.subarray(at + 4, at + 4 + trailerLength)) };
}

/** Puts a file together again; the trailer's checksum is made to match (as an attacker without the root key can). */
function join2(head: Buffer, chunks: Buffer[], mac: Uint8Array): Buffer {
  const u32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  const sections = Buffer.concat([...chunks.flatMap((c) => [u32(c.byteLength), c]), u32(0)]);
  const trailer = packr.pack({
    recordBytes: chunks.reduce((n, c) => n + c.byteLength, 0),
    recordsSha256: createHash('sha256').update(sections).digest(),
    mac,
  });
  return Buffer.concat([head, sections, u32(trailer.byteLength), trailer]);
}

test('a streamed backup restores into a state store (records never held whole), and a changed, dropped, reordered or cut byte is refused with nothing left behind', {
  timeout: 120_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-backup-stream-'));
  try {
    const { file, recoveryKey, values } = await makeBackup(root);
    const parts = split(file);
    assert.ok(parts.chunks.length >= 2, `the records span several chunks (${parts.chunks.length})`);
    assert.ok(!file.includes(Buffer.from(values[5]!)), 'no value in the clear in the backup');
    assert.ok(!file.includes(Buffer.from('app/b5/s5')), 'no name in the clear in the backup');
    assert.ok(join2(parts.head, parts.chunks, parts.trailer.mac).equals(file), 'the test rebuilds files faithfully');

    const key = { recoveryKey };
    const attempt = async (name: string, bytes: Buffer) => {
      const path = join(root, `${name}.backup`);
      writeFileSync(path, bytes);
      const dir = new DataDir(join(root, `restored-${name}`));
      const outcome = restoreBackup({ file: path, key, dataDir: dir.root, listen: '127.0.0.1:7409' });
      return { dir, outcome };
    };

    // Attacks: each refused by name, with no state store and no manager left behind.
    const flipped = Buffer.from(parts.chunks[1]!);
    flipped[flipped.byteLength >> 1]! ^= 0x01;
    const cases: Array<[string, Buffer, RegExp]> = [
      [
        'a byte of a record changed (checksum made to match)',
        join2(parts.head, [parts.chunks[0]!, flipped, ...parts.chunks.slice(2)], parts.trailer.mac),
        /altered: its records do not match its header/,
      ],
      [
        'a chunk dropped',
        join2(parts.head, [parts.chunks[0]!, ...parts.chunks.slice(2)], parts.trailer.mac),
        /altered: its records do not match its header/,
      ],
      [
        'two chunks swapped',
        join2(parts.head, [parts.chunks[1]!, parts.chunks[0]!, ...parts.chunks.slice(2)], parts.trailer.mac),
        /altered: its records do not match its header/,
      ],
      [
        'a byte of a record changed (checksum left)',
        (() => {
          const b = Buffer.from(file);
          b[parts.head.byteLength + 40]! ^= 0x01;
          return b;
        })(),
        /damaged one: the records do not match their checksum/,
      ],
      ['the file cut short', file.subarray(0, file.byteLength - 100), /cut short|checksum/],
      ['bytes after the trailer', Buffer.concat([file, Buffer.from('more')]), /bytes follow its trailer/],
      [
        'a byte of the descriptor changed',
        (() => {
          const b = Buffer.from(file);
          b[parts.head.byteLength - 5]! ^= 0x01;
          return b;
        })(),
        /state descriptor does not match its checksum/,
      ],
    ];
    for (const [what, bytes, pattern] of cases) {
      const { dir, outcome } = await attempt(what.replace(/\W+/g, '-'), bytes);
      await assert.rejects(outcome, pattern, what);
      assert.equal(existsSync(dir.state), false, `${what}: no state store left`);
      assert.equal(existsSync(dir.nodeConfig), false, `${what}: no manager left`);
    }
    // A header field changed: the sealed CA key no longer opens.
    const headLength = file.readUInt32BE(8);
    const header = packr.unpack(file.subarray(12, 12 + headLength)) as Record<string, unknown>;
    const forgedHead = packr.pack({ ...header, index: (header['index'] as number) + 1000 });
    const lengthBytes = Buffer.alloc(4);
    lengthBytes.writeUInt32BE(forgedHead.byteLength);
    const forged = Buffer.concat([file.subarray(0, 8), lengthBytes, forgedHead, file.subarray(12 + headLength)]);
    const forgedAttempt = await attempt('forged-header', forged);
    // The recovery wrap is bound to the header too: the key no longer opens it (an altered header and a wrong key look alike).
    await assert.rejects(forgedAttempt.outcome, /does not open the backup|header was altered/);
    assert.equal(existsSync(forgedAttempt.dir.state), false);

    // The honest file: restored, with every record in the new manager's state store.
    const { dir, outcome } = await attempt('honest', file);
    const restored = await outcome;
    assert.equal(restored.secrets, SECRETS);
    assert.equal(restored.index, SECRETS + 1);
    assert.deepEqual(readdirSync(dir.root).sort(), ['keys', 'node.json', 'raft', 'state', 'tls']);
    const storage = await LevelStorage.open(dir.raft);
    try {
      const loaded = await storage.load();
      assert.equal(loaded.snapshot?.metadata.index, SECRETS + 1);
      assert.ok(
        Buffer.from(loaded.snapshot!.data).equals(split(file).head.subarray(12 + headLength)),
        "the Raft snapshot is the backup's descriptor",
      );
    } finally {
      await storage.close();
    }
    const { backup, handle } = await readBackupFile(join(root, 'honest.backup'));
    await handle.close();
    assert.equal(backup.format, 2);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
