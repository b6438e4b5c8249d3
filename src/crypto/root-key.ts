import { randomBytes } from 'node:crypto';
import {
  closeSync,
  existsSync,
  fchmodSync,
  fsyncSync,
  linkSync,
  openSync,
  readFileSync,
  statSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { dirname } from 'node:path';
import { KEY_BYTES, open, seal } from './aead.ts';
import { CryptoError } from './errors.ts';
import { parseUnlockKey, unlockKeyKek } from './unlock-key.ts';

/**
 * The root key wraps the keyring; it is itself stored only wrapped by a key-encryption key (KEK):
 * the key file's contents (default) or one derived from an operator's unlock key (autolock).
 * Changing the KEK rewraps 32 bytes and touches no data.
 */
export function generateRootKey(): Buffer {
  return randomBytes(KEY_BYTES);
}

export function wrapRootKey(kek: Uint8Array, rootKey: Uint8Array, clusterId: string): Buffer {
  return seal(kek, rootKey, rootKeyAd(clusterId));
}

export function unwrapRootKey(
  kek: Uint8Array,
  wrapped: Uint8Array,
  clusterId: string,
  how: 'key file' | 'unlock key',
): Buffer {
  try {
    return open(kek, wrapped, rootKeyAd(clusterId), 'the root key');
  } catch (error) {
    if (error instanceof CryptoError && error.code === 'DECRYPT_FAILED') {
      throw how === 'unlock key'
        ? new CryptoError(
            'UNLOCK_KEY_WRONG',
            "this unlock key does not open this manager (it is well formed, but it is not this cluster's)",
          )
        : new CryptoError(
            'KEY_FILE_INVALID',
            "the key file does not open this manager's root key (is it another cluster's key file?)",
          );
    }
    throw error;
  }
}

/** The KEK of an unlock key, after its format and checksum are checked. */
export function kekFromUnlockKey(unlockKey: string, clusterId: string): Buffer {
  return unlockKeyKek(parseUnlockKey(unlockKey), clusterId);
}

function rootKeyAd(clusterId: string): Buffer {
  return Buffer.from(`coffer/1|root-key|${clusterId}`, 'utf8');
}

/**
 * Creates a key file of 32 random bytes, readable by its owner only; refuses to overwrite one.
 * Durable before it returns (temporary file, fsync, link into place, fsync of the directory): a
 * key store is about to be wrapped under it, and a power loss must not leave that store pointing
 * at an empty file.
 */
export function createKeyFile(path: string): Buffer {
  const kek = randomBytes(KEY_BYTES);
  const temporary = `${path}.${process.pid}.tmp`;
  const fd = openSync(temporary, 'w', 0o600);
  try {
    writeSync(fd, kek);
    fchmodSync(fd, 0o600);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(temporary, path); // fails if `path` exists: never overwrite a key file
  } finally {
    unlinkSync(temporary);
  }
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
  return kek;
}

/**
 * The key file at `path`: used as it is when it exists (a Docker secret, or one made by
 * `coffer keyfile new`), after the checks of readKeyFile; created otherwise.
 */
export function adoptOrCreateKeyFile(path: string): { kek: Buffer; adopted: boolean } {
  if (existsSync(path)) return { kek: readKeyFile(path), adopted: true };
  return { kek: createKeyFile(path), adopted: false };
}

/** Reads a key file, refusing one that others can read (as ssh refuses such a private key). */
export function readKeyFile(path: string): Buffer {
  let mode: number;
  let bytes: Buffer;
  try {
    mode = statSync(path).mode;
    bytes = readFileSync(path);
  } catch (error) {
    throw new CryptoError(
      'KEY_FILE_INVALID',
      `cannot read the key file ${path}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`,
      { cause: error },
    );
  }
  if ((mode & 0o077) !== 0) {
    throw new CryptoError(
      'KEY_FILE_INVALID',
      `the key file ${path} can be read by others (mode ${(mode & 0o777).toString(8)}); run chmod 600 on it`,
    );
  }
  if (bytes.byteLength !== KEY_BYTES) {
    throw new CryptoError(
      'KEY_FILE_INVALID',
      `the key file ${path} holds ${bytes.byteLength} bytes, not ${KEY_BYTES}: it is not a Coffer key file (make one with coffer keyfile new)`,
    );
  }
  return bytes;
}

/**
 * Root key generation `gen`, sealed under generation `gen - 1`: the link a manager that was down
 * during a root-key rotation follows to the new generation (replicated in the log and snapshots).
 */
export function wrapRootLink(previousRoot: Uint8Array, nextRoot: Uint8Array, clusterId: string, gen: number): Buffer {
  return seal(previousRoot, nextRoot, Buffer.from(`coffer/1|root-link|${clusterId}|${gen}`, 'utf8'));
}

export function unwrapRootLink(previousRoot: Uint8Array, wrapped: Uint8Array, clusterId: string, gen: number): Buffer {
  return open(
    previousRoot,
    wrapped,
    Buffer.from(`coffer/1|root-link|${clusterId}|${gen}`, 'utf8'),
    `root key generation ${gen}`,
  );
}

/** An unlock key's KEK as it travels in the log to every manager: sealed under the root key. */
export function wrapUnlockKek(
  rootKey: Uint8Array,
  kek: Uint8Array,
  clusterId: string,
  gen: number,
  rootGen: number,
): Buffer {
  return seal(rootKey, kek, Buffer.from(`coffer/1|unlock-kek|${clusterId}|${gen}|${rootGen}`, 'utf8'));
}

export function unwrapUnlockKek(
  rootKey: Uint8Array,
  wrapped: Uint8Array,
  clusterId: string,
  gen: number,
  rootGen: number,
): Buffer {
  return open(
    rootKey,
    wrapped,
    Buffer.from(`coffer/1|unlock-kek|${clusterId}|${gen}|${rootGen}`, 'utf8'),
    `unlock key generation ${gen}`,
  );
}
