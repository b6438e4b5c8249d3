import { createHash, hkdfSync } from 'node:crypto';
import { packr } from '../codec/msgpack.ts';
import { KEY_BYTES, open, seal } from '../crypto/aead.ts';
import { CryptoError } from '../crypto/errors.ts';
import { unwrapWithRecovery, wrapForRecovery, type RecoveryWrap } from '../crypto/recovery-key.ts';
import { kekFromUnlockKey, unwrapRootKey, wrapRootKey } from '../crypto/root-key.ts';

/**
 * A backup file: `CFRBAK1\n`, a 4-byte header length, the header (msgpack), then the image.
 *
 * The image is the replicated state exactly as a snapshot seals it: the state under the active
 * data key, the keyring wrapped by the root key. The header carries the root key wrapped for the
 * recovery key (always, once the cluster has one) and for the unlock key (when the manager that
 * made it was autolocked), and the CA key sealed under a key derived from the root key. The
 * header's fields are bound, as associated data, to that sealed CA key, and the image to them by
 * its SHA-256: a changed byte anywhere makes the restore fail. Nothing in the file opens without
 * the recovery key or the unlock key.
 */
export const BACKUP_MAGIC = Buffer.from('CFRBAK1\n', 'latin1');

export interface BackupHeader {
  readonly format: 1;
  readonly clusterId: string;
  readonly createdAtMs: number;
  /** The state is as of this log index and term. */
  readonly index: number;
  readonly term: number;
  readonly rootGen: number;
  readonly imageBytes: number;
  readonly imageSha256: Buffer;
  readonly caCertPem: string;
  readonly caKeySealed: Buffer;
  readonly recovery: RecoveryWrap | null;
  readonly unlock: Buffer | null;
}

export interface BackupContents {
  readonly clusterId: string;
  readonly createdAtMs: number;
  readonly index: number;
  readonly term: number;
  readonly rootGen: number;
  readonly image: Buffer;
  readonly caCertPem: string;
}

/** The header fields that the sealed parts are bound to. */
function boundFields(h: Omit<BackupHeader, 'caKeySealed' | 'recovery' | 'unlock'>): Buffer {
  return createHash('sha256')
    .update(
      packr.pack([
        'coffer backup v1',
        h.format,
        h.clusterId,
        h.createdAtMs,
        h.index,
        h.term,
        h.rootGen,
        h.imageBytes,
        h.imageSha256,
        h.caCertPem,
      ]),
    )
    .digest();
}

function caKeyKey(rootKey: Uint8Array, clusterId: string): Buffer {
  return Buffer.from(
    hkdfSync('sha256', rootKey, Buffer.from(clusterId, 'utf8'), Buffer.from('coffer backup ca key v1'), KEY_BYTES),
  );
}

export function encodeBackup(
  contents: BackupContents,
  keys: { rootKey: Buffer; caKeyPem: string; recoveryPublicKey: Buffer | null; unlockKek: Buffer | null },
): Buffer {
  const fields = {
    format: 1 as const,
    clusterId: contents.clusterId,
    createdAtMs: contents.createdAtMs,
    index: contents.index,
    term: contents.term,
    rootGen: contents.rootGen,
    imageBytes: contents.image.byteLength,
    imageSha256: createHash('sha256').update(contents.image).digest(),
    caCertPem: contents.caCertPem,
  };
  const header: BackupHeader = { ...fields, ...sealBackupKeys(contents.clusterId, boundFields(fields), keys) };
  const head = packr.pack(header);
  const length = Buffer.alloc(4);
  length.writeUInt32BE(head.byteLength);
  return Buffer.concat([BACKUP_MAGIC, length, head, contents.image]);
}

/** Reads a backup's header (no key needed: it says which keys open it). */
export function readBackupHeader(file: Buffer): { header: BackupHeader; image: Buffer } {
  const invalid = (why: string): CryptoError =>
    new CryptoError('BACKUP_INVALID', `not a Coffer backup, or a damaged one: ${why}`);
  if (file.byteLength < BACKUP_MAGIC.byteLength + 4 || !file.subarray(0, BACKUP_MAGIC.byteLength).equals(BACKUP_MAGIC))
    throw invalid('it does not start with CFRBAK1');
  const headLength = file.readUInt32BE(BACKUP_MAGIC.byteLength);
  const headStart = BACKUP_MAGIC.byteLength + 4;
  if (headStart + headLength > file.byteLength) throw invalid('it is cut short');
  let header: BackupHeader;
  try {
    header = packr.unpack(file.subarray(headStart, headStart + headLength)) as BackupHeader;
  } catch {
    throw invalid('its header does not decode');
  }
  if (header === null || typeof header !== 'object' || header.format !== 1 || typeof header.clusterId !== 'string')
    throw invalid('its header has an unknown format');
  const image = file.subarray(headStart + headLength);
  if (image.byteLength !== header.imageBytes)
    throw invalid(`the state should have ${header.imageBytes} bytes and has ${image.byteLength} (cut short?)`);
  if (!createHash('sha256').update(image).digest().equals(Buffer.from(header.imageSha256)))
    throw invalid('the state does not match its checksum');
  return { header, image };
}

/**
 * Opens a backup with the recovery key or the unlock key: the root key and the CA key, checked
 * against every header field (a wrong key or an altered file is refused by name).
 */
export function openBackup(
  file: Buffer,
  key: { recoveryKey: string } | { unlockKey: string },
): BackupContents & { rootKey: Buffer; caKeyPem: string } {
  const { header, image } = readBackupHeader(file);
  const { rootKey, caKeyPem } = openBackupKeys(header, boundFields(header), key);
  return {
    clusterId: header.clusterId,
    createdAtMs: header.createdAtMs,
    index: header.index,
    term: header.term,
    rootGen: header.rootGen,
    image,
    caCertPem: header.caCertPem,
    rootKey,
    caKeyPem,
  };
}

/** The keys' part of a header, bound to `ad` (the digest of the header's other fields). */
export function sealBackupKeys(
  clusterId: string,
  ad: Buffer,
  keys: { rootKey: Buffer; caKeyPem: string; recoveryPublicKey: Buffer | null; unlockKek: Buffer | null },
): SealedBackupKeys & { caKeySealed: Buffer; unlock: Buffer | null } {
  const key = caKeyKey(keys.rootKey, clusterId);
  try {
    return {
      clusterId,
      caKeySealed: seal(key, Buffer.from(keys.caKeyPem), ad),
      recovery:
        keys.recoveryPublicKey === null ? null : wrapForRecovery(keys.recoveryPublicKey, keys.rootKey, clusterId, ad),
      unlock: keys.unlockKek === null ? null : wrapRootKey(keys.unlockKek, keys.rootKey, clusterId),
    };
  } finally {
    key.fill(0);
  }
}

/** The header fields every format has that the keys are opened with. */
export interface SealedBackupKeys {
  readonly clusterId: string;
  readonly caKeySealed: Uint8Array;
  readonly recovery: RecoveryWrap | null;
  readonly unlock: Uint8Array | null;
}

/**
 * The root key and the CA key of a backup, opened with the recovery key or the unlock key and
 * checked against `ad` (the digest of the header's fields): a wrong key, or a header altered, is
 * refused by name.
 */
export function openBackupKeys(
  header: SealedBackupKeys,
  ad: Buffer,
  key: { recoveryKey: string } | { unlockKey: string },
): { rootKey: Buffer; caKeyPem: string } {
  let rootKey: Buffer;
  if ('recoveryKey' in key) {
    if (header.recovery === null)
      throw new CryptoError(
        'BACKUP_KEY_WRONG',
        'this backup was made before the cluster had a recovery key: open it with the unlock key',
      );
    rootKey = unwrapWithRecovery(
      key.recoveryKey,
      { ephemeralPublic: Buffer.from(header.recovery.ephemeralPublic), wrapped: Buffer.from(header.recovery.wrapped) },
      header.clusterId,
      ad,
    );
  } else {
    if (header.unlock === null)
      throw new CryptoError(
        'BACKUP_KEY_WRONG',
        'the manager that made this backup was not autolocked, so no unlock key opens it: use the recovery key',
      );
    const kek = kekFromUnlockKey(key.unlockKey, header.clusterId);
    try {
      rootKey = unwrapRootKey(kek, Buffer.from(header.unlock), header.clusterId, 'unlock key');
    } catch (error) {
      if (error instanceof CryptoError && error.code === 'UNLOCK_KEY_WRONG')
        throw new CryptoError('BACKUP_KEY_WRONG', 'this unlock key does not open the backup');
      throw error;
    } finally {
      kek.fill(0);
    }
  }
  const caKey = caKeyKey(rootKey, header.clusterId);
  let caKeyPem: string;
  try {
    caKeyPem = open(caKey, Buffer.from(header.caKeySealed), ad, "the backup's CA key").toString();
  } catch {
    throw new CryptoError('BACKUP_INVALID', "the backup's header was altered (its sealed CA key no longer matches it)");
  } finally {
    caKey.fill(0);
  }
  return { rootKey, caKeyPem };
}
