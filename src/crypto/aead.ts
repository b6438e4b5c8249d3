import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { CryptoError } from './errors.ts';

/** AES-256-GCM with a random 96-bit nonce: `nonce (12) | ciphertext | tag (16)`. */
export const KEY_BYTES = 32;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;

export function seal(key: Uint8Array, plaintext: Uint8Array, associatedData: Uint8Array): Buffer {
  if (key.byteLength !== KEY_BYTES) throw new TypeError(`an AES-256 key has ${KEY_BYTES} bytes, not ${key.byteLength}`);
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(associatedData);
  const body = cipher.update(plaintext);
  const final = cipher.final();
  return Buffer.concat([nonce, body, final, cipher.getAuthTag()]);
}

export function open(key: Uint8Array, sealed: Uint8Array, associatedData: Uint8Array, what: string): Buffer {
  if (sealed.byteLength < NONCE_BYTES + TAG_BYTES) {
    throw new CryptoError('ENVELOPE_MALFORMED', `${what}: ${sealed.byteLength} bytes is too short to be sealed data`);
  }
  const bytes = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  const nonce = bytes.subarray(0, NONCE_BYTES);
  const tag = bytes.subarray(bytes.byteLength - TAG_BYTES);
  const body = bytes.subarray(NONCE_BYTES, bytes.byteLength - TAG_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce);
  decipher.setAAD(associatedData);
  decipher.setAuthTag(tag);
  try {
    return Buffer.concat([decipher.update(body), decipher.final()]);
  } catch (error) {
    throw new CryptoError('DECRYPT_FAILED', `${what}: authentication failed (altered data, or another key)`, {
      cause: error,
    });
  }
}
