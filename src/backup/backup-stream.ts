import { createHash, createHmac, hkdfSync, type Hash } from 'node:crypto';
import { open as openFile, type FileHandle } from 'node:fs/promises';
import { packr } from '../codec/msgpack.ts';
import { KEY_BYTES } from '../crypto/aead.ts';
import { CryptoError } from '../crypto/errors.ts';
import { RECORD_CHUNK_BYTES_MAX } from '../kv/record-chunks.ts';
import {
  BACKUP_MAGIC,
  openBackupKeys,
  readBackupHeader,
  sealBackupKeys,
  type SealedBackupKeys,
} from './backup-file.ts';

/**
 * A backup of format 2: the state as a snapshot streams it to another manager, never one image.
 *
 *   `CFRBAK2\n` | u32 header length | header (msgpack) | the sealed descriptor
 *   | sections: u32 length | record chunk (src/kv/record-chunks.ts), ... | u32 0
 *   | u32 trailer length | trailer (msgpack: record bytes, their SHA-256, a MAC)
 *
 * The descriptor is the barrier's sealed snapshot descriptor (the key state wrapped by the root
 * key; the cluster and access parts under the data key); the records are the state store's own
 * bytes (sealed values, keyed name tags). The header's fields, the descriptor's SHA-256 among
 * them, are bound as associated data to the sealed CA key; the sections are bound to the header
 * by the trailer's MAC, an HMAC under a key derived from the root key. A changed, dropped or
 * reordered byte anywhere makes the restore fail, and a restore installs nothing before the MAC
 * has been checked. Nothing opens without the recovery key or the unlock key.
 */
export const BACKUP_MAGIC_V2 = Buffer.from('CFRBAK2\n', 'latin1');
/** Largest header or trailer a reader accepts (a header holds a CA certificate chain and wrapped keys). */
const HEAD_BYTES_MAX = 1024 * 1024;
/** Largest sealed descriptor a reader accepts (the cluster and access parts, bounded by their quotas). */
const DESCRIPTOR_BYTES_MAX = 512 * 1024 * 1024;

export interface StreamedBackupHeader extends SealedBackupKeys {
  readonly format: 2;
  readonly createdAtMs: number;
  /** The state is as of this log index and term. */
  readonly index: number;
  readonly term: number;
  readonly rootGen: number;
  readonly descriptorBytes: number;
  readonly descriptorSha256: Uint8Array;
  readonly caCertPem: string;
}

interface Trailer {
  readonly recordBytes: number;
  readonly recordsSha256: Uint8Array;
  readonly mac: Uint8Array;
}

type HeaderFields = Omit<StreamedBackupHeader, keyof SealedBackupKeys> & { readonly clusterId: string };

function boundFields(h: HeaderFields): Buffer {
  return createHash('sha256')
    .update(
      packr.pack([
        'coffer backup v2',
        h.format,
        h.clusterId,
        h.createdAtMs,
        h.index,
        h.term,
        h.rootGen,
        h.descriptorBytes,
        Buffer.from(h.descriptorSha256),
        h.caCertPem,
      ]),
    )
    .digest();
}

function macKey(rootKey: Uint8Array, clusterId: string): Buffer {
  return Buffer.from(
    hkdfSync('sha256', rootKey, Buffer.from(clusterId, 'utf8'), Buffer.from('coffer backup records v2'), KEY_BYTES),
  );
}

function recordsMac(key: Buffer, ad: Buffer, recordBytes: number, digest: Uint8Array): Buffer {
  const count = Buffer.alloc(8);
  count.writeBigUInt64BE(BigInt(recordBytes));
  return createHmac('sha256', key).update(ad).update(count).update(digest).digest();
}

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};

export interface StreamedBackupContents {
  readonly clusterId: string;
  readonly createdAtMs: number;
  readonly index: number;
  readonly term: number;
  readonly rootGen: number;
  readonly descriptor: Uint8Array;
  readonly caCertPem: string;
  /** The record chunks of the same moment as the descriptor (read to the end, or returned). */
  readonly chunks: AsyncIterable<Uint8Array>;
}

/**
 * The bytes of a backup, piece by piece as the chunks are read: the header and descriptor first,
 * a section per chunk, the trailer last. `keys.rootKey` is read at the start and at the end (the
 * caller keeps it until the generator is done, and wipes it then).
 */
export async function* encodeBackupStream(
  contents: StreamedBackupContents,
  keys: { rootKey: Buffer; caKeyPem: string; recoveryPublicKey: Buffer | null; unlockKek: Buffer | null },
): AsyncGenerator<Buffer> {
  const fields: HeaderFields = {
    format: 2,
    clusterId: contents.clusterId,
    createdAtMs: contents.createdAtMs,
    index: contents.index,
    term: contents.term,
    rootGen: contents.rootGen,
    descriptorBytes: contents.descriptor.byteLength,
    descriptorSha256: createHash('sha256').update(contents.descriptor).digest(),
    caCertPem: contents.caCertPem,
  };
  const ad = boundFields(fields);
  const header: StreamedBackupHeader = { ...fields, ...sealBackupKeys(contents.clusterId, ad, keys) };
  const head = packr.pack(header);
  yield Buffer.concat([BACKUP_MAGIC_V2, u32(head.byteLength), head, contents.descriptor]);
  const digest = createHash('sha256');
  let recordBytes = 0;
  for await (const chunk of contents.chunks) {
    if (chunk.byteLength === 0) continue;
    const section = Buffer.concat([u32(chunk.byteLength), chunk]);
    digest.update(section);
    recordBytes += chunk.byteLength;
    yield section;
  }
  const end = u32(0);
  digest.update(end);
  const recordsSha256 = digest.digest();
  const key = macKey(keys.rootKey, contents.clusterId);
  let trailer: Buffer;
  try {
    trailer = packr.pack({ recordBytes, recordsSha256, mac: recordsMac(key, ad, recordBytes, recordsSha256) });
  } finally {
    key.fill(0);
  }
  yield Buffer.concat([end, u32(trailer.byteLength), trailer]);
}

const invalid = (why: string): CryptoError =>
  new CryptoError('BACKUP_INVALID', `not a Coffer backup, or a damaged one: ${why}`);

/** Reads exactly `length` bytes at the reader's position, or says the file is cut short. */
class FileCursor {
  position = 0;
  constructor(
    readonly file: FileHandle,
    readonly size: number,
  ) {}

  async read(length: number, what: string): Promise<Buffer> {
    if (this.position + length > this.size) throw invalid(`it is cut short in ${what}`);
    const out = Buffer.allocUnsafe(length);
    for (let done = 0; done < length; ) {
      const { bytesRead } = await this.file.read(out, done, length - done, this.position + done);
      if (bytesRead === 0) throw invalid(`it is cut short in ${what}`);
      done += bytesRead;
    }
    this.position += length;
    return out;
  }

  async u32(what: string): Promise<number> {
    return (await this.read(4, what)).readUInt32BE(0);
  }

  /** A msgpack value after its u32 length (the header, the trailer), at most HEAD_BYTES_MAX. */
  async packed(what: 'header' | 'trailer'): Promise<unknown> {
    const length = await this.u32(`its ${what}`);
    if (length > HEAD_BYTES_MAX) throw invalid(`its ${what} would have ${length} bytes`);
    const bytes = await this.read(length, `its ${what}`);
    try {
      return packr.unpack(bytes);
    } catch {
      throw invalid(`its ${what} does not decode`);
    }
  }
}

/** A backup file as read from disk: format 1 (one image, read whole) or 2 (streamed), header first. */
export type BackupFile =
  | { readonly format: 1; readonly header: ReturnType<typeof readBackupHeader>['header']; readonly bytes: Buffer }
  | StreamedBackupFile;

/**
 * A backup of format 2, open for reading: its header and descriptor are read and checked against
 * each other; `chunks()` reads the record chunks and, at the end, the trailer (checked without a
 * key by its SHA-256, and with the root key by its MAC).
 */
export class StreamedBackupFile {
  readonly format = 2 as const;
  readonly #cursor: FileCursor;
  readonly #recordsStart: number;

  private constructor(
    readonly header: StreamedBackupHeader,
    readonly descriptor: Buffer,
    cursor: FileCursor,
  ) {
    this.#cursor = cursor;
    this.#recordsStart = cursor.position;
  }

  /** Bytes of record chunks and their framing: what `chunks()` reads (for progress). */
  get recordsSpan(): number {
    return this.#cursor.size - this.#recordsStart;
  }

  static async read(file: FileHandle, size: number): Promise<StreamedBackupFile> {
    const cursor = new FileCursor(file, size);
    await cursor.read(BACKUP_MAGIC_V2.byteLength, 'its first bytes');
    const header = (await cursor.packed('header')) as StreamedBackupHeader;
    if (
      header === null ||
      typeof header !== 'object' ||
      header.format !== 2 ||
      typeof header.clusterId !== 'string' ||
      !Number.isSafeInteger(header.descriptorBytes) ||
      header.descriptorBytes < 0 ||
      header.descriptorBytes > DESCRIPTOR_BYTES_MAX
    )
      throw invalid('its header has an unknown format');
    const descriptor = await cursor.read(header.descriptorBytes, 'the state descriptor');
    if (!createHash('sha256').update(descriptor).digest().equals(Buffer.from(header.descriptorSha256)))
      throw invalid('the state descriptor does not match its checksum');
    return new StreamedBackupFile(header, descriptor, cursor);
  }

  /** The root key and the CA key (a wrong key or an altered header is refused by name). */
  openKeys(key: { recoveryKey: string } | { unlockKey: string }): { rootKey: Buffer; caKeyPem: string } {
    return openBackupKeys(this.header, boundFields(this.header), key);
  }

  /**
   * The record chunks in order, read from the start each time it is called. After the last, the
   * trailer is read and checked: its SHA-256 always, its MAC when `rootKey` is given; a mismatch
   * throws there, so a consumer that installs only what it read to the end installs nothing
   * damaged. `onBytes` hears of each section read (for progress).
   */
  async *chunks(rootKey: Uint8Array | null, onBytes?: (bytes: number) => void): AsyncGenerator<Buffer> {
    const cursor = this.#cursor;
    cursor.position = this.#recordsStart;
    const digest: Hash = createHash('sha256');
    let recordBytes = 0;
    for (;;) {
      const lengthBytes = await cursor.read(4, 'the records');
      digest.update(lengthBytes);
      const length = lengthBytes.readUInt32BE(0);
      if (length === 0) break;
      if (length > RECORD_CHUNK_BYTES_MAX) throw invalid(`a record chunk would have ${length} bytes`);
      const chunk = await cursor.read(length, 'the records');
      digest.update(chunk);
      recordBytes += length;
      onBytes?.(4 + length);
      yield chunk;
    }
    const trailer = (await cursor.packed('trailer')) as Trailer;
    if (cursor.position !== cursor.size) throw invalid('bytes follow its trailer');
    const recordsSha256 = digest.digest();
    if (
      trailer === null ||
      typeof trailer !== 'object' ||
      trailer.recordBytes !== recordBytes ||
      !(trailer.recordsSha256 instanceof Uint8Array) ||
      !recordsSha256.equals(Buffer.from(trailer.recordsSha256))
    )
      throw invalid('the records do not match their checksum');
    if (rootKey !== null) {
      const key = macKey(rootKey, this.header.clusterId);
      try {
        const expected = recordsMac(key, boundFields(this.header), recordBytes, recordsSha256);
        if (!(trailer.mac instanceof Uint8Array) || !expected.equals(Buffer.from(trailer.mac)))
          throw new CryptoError('BACKUP_INVALID', 'the backup was altered: its records do not match its header');
      } finally {
        key.fill(0);
      }
    }
  }
}

/** Opens a backup file of either format (the caller closes `handle`). */
export async function readBackupFile(path: string): Promise<{ backup: BackupFile; handle: FileHandle }> {
  const handle = await openFile(path, 'r');
  try {
    const { size } = await handle.stat();
    const magic = Buffer.alloc(BACKUP_MAGIC.byteLength);
    await handle.read(magic, 0, magic.byteLength, 0);
    if (magic.equals(BACKUP_MAGIC_V2)) return { backup: await StreamedBackupFile.read(handle, size), handle };
    if (!magic.equals(BACKUP_MAGIC)) throw invalid('it does not start with CFRBAK1 or CFRBAK2');
    // Format 1: one image, read whole (as it was written).
    const bytes = await handle.readFile();
    return { backup: { format: 1, header: readBackupHeader(bytes).header, bytes }, handle };
  } catch (error) {
    await handle.close();
    throw error;
  }
}
