import { sign, type KeyObject } from 'node:crypto';
import { CryptoError } from './errors.ts';

/**
 * A small DER writer (X.690) for the two structures a joining manager and a logging-in client
 * make themselves: a self-signed certificate and a certification request. Both are a handful of
 * fixed fields around a public key OpenSSL encodes, so they need no ASN.1 library: node-forge,
 * which the rest of the PKI uses to encode certificates' fields, took 47 ms to load on an idle
 * machine and 100-170 ms beside a loaded cluster, all of it on a new member's way to serving.
 *
 * Only what those structures need: lengths of any size, SEQUENCE, SET, INTEGER (unsigned, from
 * bytes or a small number), OBJECT IDENTIFIER, UTF8String, UTCTime/GeneralizedTime, BIT STRING,
 * NULL, and context-specific tags. And one reader, `elementAt`: where an element's bytes are
 * (a certification request's signature is checked over its signed part exactly as sent).
 */

const TAG_INTEGER = 0x02;
const TAG_BIT_STRING = 0x03;
const TAG_NULL = 0x05;
const TAG_OID = 0x06;
const TAG_UTF8_STRING = 0x0c;
const TAG_UTC_TIME = 0x17;
const TAG_GENERALIZED_TIME = 0x18;
const TAG_SEQUENCE = 0x30;
const TAG_SET = 0x31;

/**
 * Where the element at `offset` of `bytes` starts its contents and where it ends; null if its
 * header or contents do not fit in `bytes` (lengths of up to three bytes: 16 MiB).
 */
export function elementAt(bytes: Uint8Array, offset: number): { contentsAt: number; end: number } | null {
  if (offset + 2 > bytes.length) return null;
  const first = bytes[offset + 1]!;
  let length = first;
  let at = offset + 2;
  if (first & 0x80) {
    const count = first & 0x7f;
    if (count === 0 || count > 3 || at + count > bytes.length) return null;
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + bytes[at + i]!;
    at += count;
  }
  return at + length <= bytes.length ? { contentsAt: at, end: at + length } : null;
}

/** An element: its tag byte and its contents (already DER). */
export function element(tag: number, contents: Uint8Array): Buffer {
  if (!(Number.isInteger(tag) && tag >= 0 && tag <= 0xfe && (tag & 0x1f) !== 0x1f))
    throw new TypeError(`a DER tag of one byte (low tag number) was expected, not ${tag}`);
  return Buffer.concat([Buffer.of(tag), lengthBytes(contents.byteLength), contents]);
}

function lengthBytes(length: number): Buffer {
  if (length < 0x80) return Buffer.of(length);
  const bytes: number[] = [];
  for (let rest = length; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest % 256);
  return Buffer.from([0x80 | bytes.length, ...bytes]);
}

export const sequence = (...items: readonly Uint8Array[]): Buffer => element(TAG_SEQUENCE, Buffer.concat(items));
export const set = (...items: readonly Uint8Array[]): Buffer => element(TAG_SET, Buffer.concat(items));
/** A constructed context-specific element, `[n]` (EXPLICIT, or an IMPLICIT SET/SEQUENCE). */
export const context = (n: number, ...items: readonly Uint8Array[]): Buffer => element(0xa0 | n, Buffer.concat(items));
export const nullValue = (): Buffer => element(TAG_NULL, Buffer.alloc(0));
export const utf8String = (text: string): Buffer => element(TAG_UTF8_STRING, Buffer.from(text, 'utf8'));
/** A BIT STRING of whole bytes (no unused bits). */
export const bitString = (bytes: Uint8Array): Buffer => element(TAG_BIT_STRING, Buffer.concat([Buffer.of(0), bytes]));

/** A non-negative INTEGER from its big-endian magnitude (a 0x00 is put before a high first bit). */
export function unsignedInteger(magnitude: Uint8Array): Buffer {
  let start = 0;
  while (start < magnitude.byteLength - 1 && magnitude[start] === 0) start++;
  const trimmed = magnitude.subarray(start);
  if (trimmed.byteLength === 0) return element(TAG_INTEGER, Buffer.of(0));
  return element(TAG_INTEGER, trimmed[0]! & 0x80 ? Buffer.concat([Buffer.of(0), trimmed]) : trimmed);
}

export function smallInteger(n: number): Buffer {
  if (!(Number.isInteger(n) && n >= 0 && n <= 0xffff)) throw new TypeError(`a small integer was expected, not ${n}`);
  return unsignedInteger(Buffer.of(n >> 8, n & 0xff));
}

export function oid(text: string): Buffer {
  const arcs = text.split('.').map((arc) => {
    if (!/^\d{1,9}$/.test(arc)) throw new TypeError(`"${text}" is not an object identifier`);
    return Number(arc);
  });
  if (arcs.length < 2 || arcs[0]! > 2 || (arcs[0]! < 2 && arcs[1]! > 39))
    throw new TypeError(`"${text}" is not an object identifier`);
  const bytes: number[] = [];
  const base128 = (value: number): void => {
    const digits = [value & 0x7f];
    for (let rest = Math.floor(value / 128); rest > 0; rest = Math.floor(rest / 128))
      digits.unshift(0x80 | (rest & 0x7f));
    bytes.push(...digits);
  };
  base128(arcs[0]! * 40 + arcs[1]!);
  for (const arc of arcs.slice(2)) base128(arc);
  return element(TAG_OID, Buffer.from(bytes));
}

/** A certificate's time as RFC 5280 (4.1.2.5) has it: UTCTime through 2049, GeneralizedTime from 2050, in whole seconds. */
export function time(at: Date): Buffer {
  const iso = at.toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = `${iso.slice(0, 4)}${iso.slice(5, 7)}${iso.slice(8, 10)}${iso.slice(11, 13)}${iso.slice(14, 16)}${iso.slice(17, 19)}Z`;
  const year = at.getUTCFullYear();
  if (year < 1950 || year > 9999) throw new TypeError(`a certificate time in 1950-9999 was expected, not ${iso}`);
  return year < 2050
    ? element(TAG_UTC_TIME, Buffer.from(digits.slice(2)))
    : element(TAG_GENERALIZED_TIME, Buffer.from(digits));
}

/** A Name of one relative name: the common name (2.5.4.3), as a UTF8String. */
export function commonNameOnly(commonName: string): Buffer {
  return sequence(set(sequence(oid('2.5.4.3'), utf8String(commonName))));
}

export const OID_SHA256_WITH_RSA = '1.2.840.113549.1.1.11';
export const OID_ECDSA_WITH_SHA256 = '1.2.840.10045.4.3.2';

/** The AlgorithmIdentifier of a SHA-256 signature by `signer`: RSA PKCS #1 v1.5 (NULL parameters), or ECDSA (none). */
export function signatureAlgorithmDer(signer: KeyObject): Buffer {
  if (signer.asymmetricKeyType === 'rsa') return sequence(oid(OID_SHA256_WITH_RSA), nullValue());
  if (signer.asymmetricKeyType === 'ec') return sequence(oid(OID_ECDSA_WITH_SHA256));
  throw new CryptoError('CERTIFICATE_INVALID', `cannot sign with a ${signer.asymmetricKeyType ?? 'typeless'} key`);
}

/** `body` (a TBSCertificate or a CertificationRequestInfo, DER) signed by `signer` with SHA-256: body, algorithm, signature. */
export function signed(body: Buffer, signer: KeyObject): Buffer {
  return sequence(body, signatureAlgorithmDer(signer), bitString(sign('sha256', body, signer)));
}
