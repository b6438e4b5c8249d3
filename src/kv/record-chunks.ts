import { packr } from '../codec/msgpack.ts';
import { StateStoreError, type StateRecord } from './state-store.ts';

/**
 * Records of a state store as a stream of chunks (a snapshot sent to another manager): each chunk
 * is one msgpack list `[key, value, key, value, ...]` of about `chunkBytes`. The records are the
 * store's own bytes (sealed values, keyed name tags), so a chunk holds nothing the disk does not.
 */

/** What a sender packs into one chunk before it starts the next (one record larger than this goes alone). */
export const RECORD_CHUNK_BYTES = 1024 * 1024;
/** The largest chunk a receiver accepts (a frame of the peer stream is at most 4 MiB). */
export const RECORD_CHUNK_BYTES_MAX = 3 * 1024 * 1024;
/** The longest key a receiver accepts (the secrets' keys are a few hundred bytes). */
export const RECORD_KEY_BYTES_MAX = 16 * 1024;

/** Packs records, in the order given, into chunks of about `chunkBytes`. */
export async function* encodeRecordChunks(
  records: AsyncIterable<StateRecord>,
  chunkBytes = RECORD_CHUNK_BYTES,
): AsyncGenerator<Uint8Array> {
  let items: Uint8Array[] = [];
  let bytes = 0;
  for await (const record of records) {
    items.push(record.key, record.value);
    bytes += record.key.byteLength + record.value.byteLength + 10;
    if (bytes >= chunkBytes) {
      yield packr.pack(items);
      items = [];
      bytes = 0;
    }
  }
  if (items.length > 0) yield packr.pack(items);
}

/**
 * The records of chunks from another manager, checked: a chunk that is not a list of byte-string
 * pairs, a key out of bounds, or keys out of ascending order, stop the stream with a
 * StateStoreError that says what was wrong (nothing is installed from a stream that fails).
 */
export async function* decodeRecordChunks(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<StateRecord> {
  let last: Buffer | null = null;
  let chunkNumber = 0;
  for await (const chunk of chunks) {
    chunkNumber++;
    if (chunk.byteLength > RECORD_CHUNK_BYTES_MAX)
      throw new StateStoreError(
        `snapshot chunk ${chunkNumber} has ${chunk.byteLength} bytes, more than ${RECORD_CHUNK_BYTES_MAX}`,
      );
    let items: unknown;
    try {
      items = packr.unpack(chunk);
    } catch {
      throw new StateStoreError(`snapshot chunk ${chunkNumber} does not decode`);
    }
    if (!Array.isArray(items) || items.length % 2 !== 0)
      throw new StateStoreError(`snapshot chunk ${chunkNumber} is not a list of key and value pairs`);
    for (let k = 0; k < items.length; k += 2) {
      const key: unknown = items[k];
      const value: unknown = items[k + 1];
      if (!(key instanceof Uint8Array) || !(value instanceof Uint8Array))
        throw new StateStoreError(`snapshot chunk ${chunkNumber} holds a record that is not two byte strings`);
      if (key.byteLength === 0 || key.byteLength > RECORD_KEY_BYTES_MAX)
        throw new StateStoreError(
          `snapshot chunk ${chunkNumber} holds a key of ${key.byteLength} bytes (1 to ${RECORD_KEY_BYTES_MAX})`,
        );
      const keyBuffer = Buffer.from(key.buffer, key.byteOffset, key.byteLength);
      if (last !== null && Buffer.compare(last, keyBuffer) >= 0)
        throw new StateStoreError(`snapshot chunk ${chunkNumber} holds keys out of order`);
      last = keyBuffer;
      yield { key: keyBuffer, value };
    }
  }
}
