import { crc32 } from 'node:zlib';
import { CorruptRecordError } from './errors.ts';

/**
 * Every stored value is framed as `version (1 byte) | crc32 of the payload (4 bytes, BE) | payload`.
 * The checksum catches a torn or flipped value before it is decoded; content that must not be
 * forged (secrets) is additionally authenticated by AES-GCM in the crypto layer.
 */
export const FRAME_VERSION = 1;
const HEADER_BYTES = 5;

export function frame(payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(HEADER_BYTES + payload.byteLength);
  out[0] = FRAME_VERSION;
  out.writeUInt32BE(crc32(payload), 1);
  out.set(payload, HEADER_BYTES);
  return out;
}

/** The payload of a framed value, after checking its version and checksum. */
export function unframe(value: Uint8Array, record: string): Buffer {
  const bytes = Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  if (bytes.byteLength < HEADER_BYTES)
    throw new CorruptRecordError(record, `${bytes.byteLength} bytes is shorter than a record header`);
  if (bytes[0] !== FRAME_VERSION) throw new CorruptRecordError(record, `unknown record format version ${bytes[0]}`);
  const payload = bytes.subarray(HEADER_BYTES);
  const expected = bytes.readUInt32BE(1);
  const actual = crc32(payload);
  if (actual !== expected) {
    throw new CorruptRecordError(record, `checksum mismatch (stored ${hex(expected)}, computed ${hex(actual)})`);
  }
  return payload;
}

function hex(n: number): string {
  return n.toString(16).padStart(8, '0');
}
