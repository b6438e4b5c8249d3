import { StateStoreError, isPage, type RecordStream, type StateRecord } from './state-store.ts';

/**
 * Records of a state store as a stream of chunks (a snapshot sent to another manager). A chunk is
 * one format byte (`RECORD_CHUNK_FORMAT`), then records one after another, each
 * `u32 BE key length | key | u32 BE value length | value`. The records are the store's own bytes
 * (sealed values, keyed name tags), so a chunk holds nothing the disk does not.
 *
 * Not msgpack: packing a megabyte of small byte strings through it cost about 24 ms of the
 * leader's CPU per chunk, and this layout is a copy.
 */

/** What a sender packs into one chunk before it starts the next (one record larger than this goes alone). */
export const RECORD_CHUNK_BYTES = 1024 * 1024;
/** The largest chunk a receiver accepts (a frame of the peer stream is at most 4 MiB). */
export const RECORD_CHUNK_BYTES_MAX = 3 * 1024 * 1024;
/** The longest key a receiver accepts (the secrets' keys are a few hundred bytes). */
export const RECORD_KEY_BYTES_MAX = 16 * 1024;
/** The first byte of every chunk: the layout above (another layout would take another byte). */
export const RECORD_CHUNK_FORMAT = 0x01;

const LENGTH_BYTES = 4;

/** Packs records (one at a time or in pages), in the order given, into chunks of about `chunkBytes`. */
export async function* encodeRecordChunks(
  records: RecordStream,
  chunkBytes = RECORD_CHUNK_BYTES,
): AsyncGenerator<Uint8Array> {
  let items: StateRecord[] = [];
  let bytes = 1;
  for await (const item of records) {
    for (const record of isPage(item) ? item : [item]) {
      items.push(record);
      bytes += 2 * LENGTH_BYTES + record.key.byteLength + record.value.byteLength;
      if (bytes >= chunkBytes) {
        yield packChunk(items, bytes);
        items = [];
        bytes = 1;
      }
    }
  }
  if (items.length > 0) yield packChunk(items, bytes);
}

function packChunk(records: readonly StateRecord[], bytes: number): Buffer {
  const chunk = Buffer.allocUnsafe(bytes);
  chunk[0] = RECORD_CHUNK_FORMAT;
  let at = 1;
  for (const { key, value } of records) {
    at = chunk.writeUInt32BE(key.byteLength, at);
    chunk.set(key, at);
    at += key.byteLength;
    at = chunk.writeUInt32BE(value.byteLength, at);
    chunk.set(value, at);
    at += value.byteLength;
  }
  if (at !== bytes) throw new Error(`a record chunk was packed to ${at} bytes, not the ${bytes} counted`);
  return chunk;
}

/**
 * The records of chunks from another manager, checked: a chunk of another format, one cut short,
 * a key out of bounds, or keys out of ascending order, stop the stream with a StateStoreError that
 * says what was wrong (nothing is installed from a stream that fails). Each chunk's records come
 * as one page, checked whole before it is given; they are views of the chunk's bytes, not copies.
 */
export async function* decodeRecordChunks(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<readonly StateRecord[]> {
  let last: Buffer | null = null;
  let chunkNumber = 0;
  for await (const bytes of chunks) {
    chunkNumber++;
    if (bytes.byteLength > RECORD_CHUNK_BYTES_MAX)
      throw new StateStoreError(
        `snapshot chunk ${chunkNumber} has ${bytes.byteLength} bytes, more than ${RECORD_CHUNK_BYTES_MAX}`,
      );
    const chunk = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (chunk.byteLength === 0 || chunk[0] !== RECORD_CHUNK_FORMAT)
      throw new StateStoreError(
        `snapshot chunk ${chunkNumber} is not of record format ${RECORD_CHUNK_FORMAT} (the sender runs another version?)`,
      );
    let at = 1;
    const field = (what: 'key' | 'value'): Buffer => {
      if (at + LENGTH_BYTES > chunk.byteLength)
        throw new StateStoreError(`snapshot chunk ${chunkNumber} is cut short in the length of a ${what}`);
      const length = chunk.readUInt32BE(at);
      at += LENGTH_BYTES;
      if (at + length > chunk.byteLength)
        throw new StateStoreError(`snapshot chunk ${chunkNumber} is cut short in a ${what} of ${length} bytes`);
      const out = chunk.subarray(at, at + length);
      at += length;
      return out;
    };
    const page: StateRecord[] = [];
    while (at < chunk.byteLength) {
      const key = field('key');
      if (key.byteLength === 0 || key.byteLength > RECORD_KEY_BYTES_MAX)
        throw new StateStoreError(
          `snapshot chunk ${chunkNumber} holds a key of ${key.byteLength} bytes (1 to ${RECORD_KEY_BYTES_MAX})`,
        );
      const value = field('value');
      if (last !== null && Buffer.compare(last, key) >= 0)
        throw new StateStoreError(`snapshot chunk ${chunkNumber} holds keys out of order`);
      last = key;
      page.push({ key, value });
    }
    if (page.length > 0) yield page;
  }
}
