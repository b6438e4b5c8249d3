import { assert } from '../util/assert.ts';
import { Level } from 'level';
import {
  decodeEntry,
  decodeHardState,
  decodeSnapshotMetadata,
  encodeEntry,
  encodeHardState,
  encodeSnapshotMetadata,
} from '../codec/raft-records.ts';
import { CorruptRecordError } from '../codec/errors.ts';
import { frame, unframe } from '../codec/frame.ts';
import type { Entry, HardState, PersistedState, Snapshot } from '../raft/types.ts';
import { StorageError, type RaftStorage, type StorageUpdate } from './types.ts';
import { validateUpdate } from './validate.ts';

/** Snapshot data is stored in values of at most this size, so no single LevelDB value is huge. */
export const SNAPSHOT_CHUNK_BYTES_MAX = 1024 * 1024;

const KEY_HARD_STATE = 'h';
const KEY_SNAPSHOT_METADATA = 's';
const ENTRY_PREFIX = 'e';
const CHUNK_PREFIX = 'c';

const entryKey = (index: number): string => ENTRY_PREFIX + index.toString(16).padStart(14, '0');
const chunkKey = (n: number): string => CHUNK_PREFIX + n.toString(16).padStart(8, '0');

type Batch = Array<{ type: 'put'; key: string; value: Buffer } | { type: 'del'; key: string }>;

/** Entries read per native step when the log is loaded at start... */
const LOAD_PAGE_ENTRIES = 4096;
/** ... and at most about this many bytes. */
const LOAD_PAGE_BYTES = 1024 * 1024;

/**
 * RaftStorage in LevelDB. Each method is one atomic batch written with `sync: true`, so a Ready's
 * hard state and entries reach the disk together or not at all (no double vote after a crash).
 * Every value is framed with a checksum and decoded with validation; `load` refuses a damaged
 * store with an error that names the record and the directory.
 */
export class LevelStorage implements RaftStorage {
  readonly path: string;
  readonly #db: Level<string, Buffer>;
  /** The stored entries' index range (0, 0 when none), known after `load`. */
  #firstIndex = 0;
  #lastIndex = 0;
  #snapshotIndex = 0;
  #snapshotChunks = 0;
  #loaded = false;
  /** Writes run one after another, in call order. */
  #tail: Promise<void> = Promise.resolve();

  private constructor(path: string, db: Level<string, Buffer>) {
    this.path = path;
    this.#db = db;
  }

  static async open(path: string): Promise<LevelStorage> {
    const db = new Level<string, Buffer>(path, { keyEncoding: 'utf8', valueEncoding: 'buffer' });
    await db.open();
    return new LevelStorage(path, db);
  }

  async load(): Promise<PersistedState> {
    try {
      const state = await this.#read();
      this.#loaded = true;
      return state;
    } catch (error) {
      if (error instanceof CorruptRecordError || (error instanceof StorageError && error.code === 'STORAGE_CORRUPT')) {
        throw new StorageError(
          'STORAGE_CORRUPT',
          `Cannot load the Raft state in ${this.path}: ${error.message}. The data directory is damaged; ` +
            'restore it from a backup, or remove it and join this manager to the cluster again.',
          { cause: error },
        );
      }
      throw error;
    }
  }

  /**
   * The stored entries' records in order, read a page at a time (classic-level's default ends a
   * native read at 16 KiB: a start reading the log after a snapshot made hundreds of them).
   */
  async *#entryRecords(): AsyncGenerator<[string, Buffer]> {
    const iterator = this.#db.iterator({
      gte: ENTRY_PREFIX,
      lt: `${ENTRY_PREFIX}~`,
      highWaterMarkBytes: LOAD_PAGE_BYTES,
    });
    try {
      for (;;) {
        const page = await iterator.nextv(LOAD_PAGE_ENTRIES);
        if (page.length === 0) return;
        yield* page;
      }
    } finally {
      await iterator.close();
    }
  }

  async #read(): Promise<PersistedState> {
    const hardValue = await this.#db.get(KEY_HARD_STATE);
    const hardState: HardState =
      hardValue === undefined ? { term: 0, vote: 0, commit: 0 } : decodeHardState(hardValue, 'the hard state');

    let snapshot: Snapshot | null = null;
    const metaValue = await this.#db.get(KEY_SNAPSHOT_METADATA);
    if (metaValue !== undefined) {
      const stored = decodeSnapshotMetadata(metaValue, 'the snapshot metadata');
      const data = Buffer.allocUnsafe(stored.bytes);
      let offset = 0;
      for (let n = 0; n < stored.chunks; n++) {
        const value = await this.#db.get(chunkKey(n));
        if (value === undefined)
          throw new CorruptRecordError(`snapshot chunk ${n} of ${stored.chunks}`, 'it is missing');
        const payload = unframe(value, `snapshot chunk ${n} of ${stored.chunks}`);
        if (offset + payload.byteLength > stored.bytes)
          throw new CorruptRecordError(`snapshot chunk ${n}`, 'the chunks hold more than the recorded size');
        payload.copy(data, offset);
        offset += payload.byteLength;
      }
      if (offset !== stored.bytes)
        throw new CorruptRecordError(
          'the snapshot',
          `its chunks hold ${offset} bytes, not the recorded ${stored.bytes}`,
        );
      snapshot = { metadata: stored.metadata, data };
      this.#snapshotIndex = stored.metadata.index;
      this.#snapshotChunks = stored.chunks;
    }

    const entries: Entry[] = [];
    for await (const [key, value] of this.#entryRecords()) {
      const keyIndex = Number.parseInt(key.slice(1), 16);
      const record = `raft entry ${keyIndex}`;
      const entry = decodeEntry(value, record);
      if (entry.index !== keyIndex) throw new CorruptRecordError(record, `it holds index ${entry.index}`);
      const previous = entries[entries.length - 1];
      if (previous !== undefined && entry.index !== previous.index + 1) {
        throw new CorruptRecordError(record, `the log has a gap after entry ${previous.index}`);
      }
      if (previous !== undefined && entry.term < previous.term) {
        throw new CorruptRecordError(record, `its term ${entry.term} is below the previous entry's ${previous.term}`);
      }
      entries.push(entry);
    }
    this.#firstIndex = entries[0]?.index ?? 0;
    this.#lastIndex = entries[entries.length - 1]?.index ?? 0;

    if (snapshot !== null && entries.length > 0) {
      const { index, term } = snapshot.metadata;
      if (this.#firstIndex > index + 1)
        throw new CorruptRecordError(
          `raft entry ${this.#firstIndex}`,
          `the log starts after a gap following the snapshot at ${index}`,
        );
      if (this.#firstIndex <= index) {
        const at = entries[index - this.#firstIndex];
        if (at === undefined || at.term !== term) {
          throw new CorruptRecordError(
            `raft entry ${index}`,
            `it does not match the snapshot's term ${term} at that index`,
          );
        }
      }
    }
    const lastKnown = Math.max(this.#lastIndex, this.#snapshotIndex);
    if (hardState.commit > lastKnown) {
      throw new CorruptRecordError(
        'the hard state',
        `its commit index ${hardState.commit} is beyond the stored log (${lastKnown})`,
      );
    }
    return { hardState, snapshot, entries };
  }

  save(update: StorageUpdate): Promise<void> {
    return this.#enqueue(async () => {
      validateUpdate(update);
      const batch: Batch = [];
      if (update.snapshot !== null) {
        this.#deleteEntries(batch, this.#firstIndex, this.#lastIndex);
        this.#firstIndex = 0;
        this.#lastIndex = 0;
        this.#putSnapshot(batch, update.snapshot);
      }
      const first = update.entries[0];
      if (first !== undefined) {
        const base = this.#lastIndex === 0 ? this.#snapshotIndex : this.#lastIndex;
        if (first.index > base + 1 || (this.#firstIndex !== 0 && first.index < this.#firstIndex)) {
          throw new StorageError(
            'STORAGE_INVALID_UPDATE',
            `entries start at ${first.index}, but the stored log holds ${this.#firstIndex}..${this.#lastIndex}`,
          );
        }
        const newLast = first.index + update.entries.length - 1;
        // Entries past the new last index belong to a replaced suffix.
        this.#deleteEntries(batch, newLast + 1, this.#lastIndex);
        for (const entry of update.entries)
          batch.push({ type: 'put', key: entryKey(entry.index), value: encodeEntry(entry) });
        if (this.#firstIndex === 0) this.#firstIndex = first.index;
        this.#lastIndex = newLast;
      }
      if (update.hardState !== null)
        batch.push({ type: 'put', key: KEY_HARD_STATE, value: encodeHardState(update.hardState) });
      if (batch.length > 0) await this.#write(batch, update.sync !== false);
    });
  }

  saveSnapshot(snapshot: Snapshot, compactTo: number): Promise<void> {
    return this.#enqueue(async () => {
      if (snapshot.metadata.index < this.#snapshotIndex) {
        throw new StorageError(
          'STORAGE_INVALID_UPDATE',
          `snapshot at ${snapshot.metadata.index} is older than the stored one at ${this.#snapshotIndex}`,
        );
      }
      if (compactTo > snapshot.metadata.index) {
        throw new StorageError(
          'STORAGE_INVALID_UPDATE',
          `cannot compact to ${compactTo}, past the snapshot at ${snapshot.metadata.index}`,
        );
      }
      const batch: Batch = [];
      this.#putSnapshot(batch, snapshot);
      if (this.#firstIndex !== 0 && compactTo > this.#firstIndex) {
        const last = Math.min(compactTo - 1, this.#lastIndex);
        this.#deleteEntries(batch, this.#firstIndex, last);
        this.#firstIndex = last === this.#lastIndex ? 0 : last + 1;
        if (this.#firstIndex === 0) this.#lastIndex = 0;
      }
      await this.#write(batch, true);
    });
  }

  /**
   * One atomic write, through a chained batch: abstract-level's array form checks and re-encodes
   * every operation in JavaScript and classic-level then reads each one's fields one native call
   * at a time (about 45 us a write on a busy leader, `npm run bench -- profile`); a chained batch
   * takes each operation in one native call.
   */
  async #write(batch: Batch, sync: boolean): Promise<void> {
    const chained = this.#db.batch();
    for (const op of batch) {
      if (op.type === 'put') chained.put(op.key, op.value);
      else chained.del(op.key);
    }
    await chained.write({ sync });
  }

  /** Compacts every key range, so deleted entries and snapshots leave LevelDB's files. */
  reclaim(): Promise<void> {
    return this.#enqueue(async () => {
      // `level` types the browser build too; on Node the database is classic-level's, which compacts.
      const db = this.#db as unknown as { compactRange?: (start: string, end: string) => Promise<void> };
      assert(typeof db.compactRange === 'function', 'this LevelDB binding cannot compact');
      await db.compactRange('\u0000', '\uffff');
    });
  }

  async close(): Promise<void> {
    await this.#tail.catch(() => undefined);
    await this.#db.close();
  }

  #enqueue(write: () => Promise<void>): Promise<void> {
    if (!this.#loaded)
      return Promise.reject(new StorageError('STORAGE_INVALID_UPDATE', 'load() must come before any write'));
    const run = this.#tail.then(write);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  #deleteEntries(batch: Batch, from: number, to: number): void {
    if (from === 0) return;
    for (let index = from; index <= to; index++) batch.push({ type: 'del', key: entryKey(index) });
  }

  #putSnapshot(batch: Batch, snapshot: Snapshot): void {
    const data = snapshot.data;
    const chunks = Math.max(1, Math.ceil(data.byteLength / SNAPSHOT_CHUNK_BYTES_MAX));
    for (let n = 0; n < chunks; n++) {
      const part = data.subarray(n * SNAPSHOT_CHUNK_BYTES_MAX, (n + 1) * SNAPSHOT_CHUNK_BYTES_MAX);
      batch.push({ type: 'put', key: chunkKey(n), value: frame(part) });
    }
    for (let n = chunks; n < this.#snapshotChunks; n++) batch.push({ type: 'del', key: chunkKey(n) });
    batch.push({
      type: 'put',
      key: KEY_SNAPSHOT_METADATA,
      value: encodeSnapshotMetadata({ metadata: snapshot.metadata, chunks, bytes: data.byteLength }),
    });
    this.#snapshotChunks = chunks;
    this.#snapshotIndex = snapshot.metadata.index;
  }
}
