import {
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  type KeyObject,
} from 'node:crypto';
import { KEY_BYTES, open, seal } from './aead.ts';
import { CryptoError } from './errors.ts';
import { formatKeyText, parseKeyText } from './unlock-key.ts';

/**
 * Recovery keys open backups when every manager is lost. A recovery key is the private half of an
 * X25519 key pair, shown once (at init, or by `coffer key rotate-recovery`) as
 * `CFRREC-1-<base32>-<checksum>`; the cluster keeps only the public half, in its replicated
 * state. A backup wraps the root key for that public key (an ephemeral X25519 agreement, HKDF,
 * AES-256-GCM), so any manager can make a backup that only the recovery key opens.
 */
const PREFIX = 'CFRREC-1-';
const PKCS8_X25519 = Buffer.from('302e020100300506032b656e04220420', 'hex');
const SPKI_X25519 = Buffer.from('302a300506032b656e032100', 'hex');

export interface RecoveryWrap {
  /** The ephemeral public key of this wrap (32 bytes). */
  readonly ephemeralPublic: Buffer;
  readonly wrapped: Buffer;
}

export function generateRecoveryKey(): { recoveryKey: string; publicKey: Buffer } {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  const raw = privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(PKCS8_X25519.length);
  return { recoveryKey: formatKeyText(PREFIX, raw), publicKey: rawPublic(publicKey) };
}

/** The public key of a recovery key (to check that a key belongs to a cluster). */
export function recoveryPublicKey(recoveryKey: string): Buffer {
  return rawPublic(createPublicKey(privateKeyOf(recoveryKey)));
}

function privateKeyOf(recoveryKey: string): KeyObject {
  const raw = parseKeyText(PREFIX, recoveryKey, 'a recovery key', 'RECOVERY_KEY_MALFORMED');
  return createPrivateKey({ key: Buffer.concat([PKCS8_X25519, raw]), format: 'der', type: 'pkcs8' });
}

function rawPublic(key: KeyObject): Buffer {
  return Buffer.from(key.export({ format: 'der', type: 'spki' }).subarray(SPKI_X25519.length));
}

function publicKeyOf(raw: Uint8Array): KeyObject {
  if (raw.byteLength !== 32) throw new CryptoError('BACKUP_INVALID', 'a recovery public key has 32 bytes');
  return createPublicKey({ key: Buffer.concat([SPKI_X25519, raw]), format: 'der', type: 'spki' });
}

function wrapKey(shared: Buffer, clusterId: string): Buffer {
  return Buffer.from(
    hkdfSync('sha256', shared, Buffer.from(clusterId, 'utf8'), Buffer.from('coffer recovery wrap v1'), KEY_BYTES),
  );
}

/** Wraps `secret` (a root key) so that only the recovery key of `publicKey` opens it. */
export function wrapForRecovery(
  publicKey: Uint8Array,
  secret: Uint8Array,
  clusterId: string,
  associatedData: Uint8Array,
): RecoveryWrap {
  const ephemeral = generateKeyPairSync('x25519');
  const shared = diffieHellman({ privateKey: ephemeral.privateKey, publicKey: publicKeyOf(publicKey) });
  const key = wrapKey(shared, clusterId);
  try {
    return { ephemeralPublic: rawPublic(ephemeral.publicKey), wrapped: seal(key, secret, associatedData) };
  } finally {
    key.fill(0);
    shared.fill(0);
  }
}

export function unwrapWithRecovery(
  recoveryKey: string,
  wrap: RecoveryWrap,
  clusterId: string,
  associatedData: Uint8Array,
): Buffer {
  const shared = diffieHellman({ privateKey: privateKeyOf(recoveryKey), publicKey: publicKeyOf(wrap.ephemeralPublic) });
  const key = wrapKey(shared, clusterId);
  try {
    return open(key, wrap.wrapped, associatedData, "the backup's root key (recovery wrap)");
  } catch {
    throw new CryptoError(
      'BACKUP_KEY_WRONG',
      "this recovery key does not open the backup: it is another cluster's, or an older one that was rotated",
    );
  } finally {
    key.fill(0);
    shared.fill(0);
  }
}
