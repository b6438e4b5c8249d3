import { createHash, hkdfSync, randomBytes } from 'node:crypto';
import { CryptoError } from './errors.ts';
import { KEY_BYTES } from './aead.ts';

/**
 * Unlock keys: `CFRKEY-1-<52 base32 characters: 32 random bytes>-<4 base32 characters: checksum>`.
 * The prefix makes a leaked key easy to recognize (and to scan for); the checksum catches a typo
 * before any decryption is tried, so a mistyped key is told apart from a wrong one.
 */
const PREFIX = 'CFRKEY-1-';
const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
const BODY_CHARS = 52;
const CHECK_CHARS = 4;

export function generateUnlockKey(): string {
  return formatUnlockKey(randomBytes(KEY_BYTES));
}

export function formatUnlockKey(secret: Uint8Array): string {
  return formatKeyText(PREFIX, secret);
}

/** The 32 secret bytes of an unlock key; tolerant of case and surrounding whitespace. */
export function parseUnlockKey(text: string): Buffer {
  return parseKeyText(PREFIX, text, 'an unlock key', 'UNLOCK_KEY_MALFORMED');
}

/** 32 secret bytes as `<prefix><base32>-<checksum>` (unlock keys, recovery keys). */
export function formatKeyText(prefix: string, secret: Uint8Array): string {
  if (secret.byteLength !== KEY_BYTES) throw new TypeError(`a key holds ${KEY_BYTES} bytes`);
  const body = base32(secret);
  return `${prefix}${body}-${checksum(body)}`;
}

/** The 32 bytes of a key written by formatKeyText; a typo is told apart by the checksum. */
export function parseKeyText(
  prefix: string,
  text: string,
  what: string,
  code: 'UNLOCK_KEY_MALFORMED' | 'RECOVERY_KEY_MALFORMED',
): Buffer {
  const normalized = text.trim().toUpperCase();
  const body = normalized.startsWith(prefix) ? normalized.slice(prefix.length) : null;
  const match = body === null ? null : /^([A-Z2-7]+)-([A-Z2-7]+)$/.exec(body);
  if (match === null || match[1]!.length !== BODY_CHARS || match[2]!.length !== CHECK_CHARS) {
    throw new CryptoError(
      code,
      `${what} looks like ${prefix}<${BODY_CHARS} characters>-<${CHECK_CHARS} characters>; this one does not`,
    );
  }
  if (checksum(match[1]!) !== match[2]) {
    throw new CryptoError(code, `${what} has a typo: its checksum does not match; check every character`);
  }
  return unbase32(match[1]!).subarray(0, KEY_BYTES);
}

/** The key-encryption key an unlock key stands for, bound to one cluster. */
export function unlockKeyKek(secret: Uint8Array, clusterId: string): Buffer {
  return Buffer.from(
    hkdfSync('sha256', secret, Buffer.from(clusterId, 'utf8'), Buffer.from('coffer unlock key v1'), KEY_BYTES),
  );
}

function checksum(body: string): string {
  return base32(createHash('sha256').update(body).digest()).slice(0, CHECK_CHARS);
}

function base32(bytes: Uint8Array): string {
  let bits = 0;
  let value = 0;
  let out = '';
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

function unbase32(text: string): Buffer {
  const out: number[] = [];
  let bits = 0;
  let value = 0;
  for (const char of text) {
    value = (value << 5) | ALPHABET.indexOf(char);
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}
