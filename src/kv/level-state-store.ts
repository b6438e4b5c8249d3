import { Level } from 'level';
import { assert } from '../util/assert.ts';
import {
  StateStoreError,
  isPage,
  prefixEnd,
  type PreparedContent,
  type RecordStream,
  type KeyRange,
  type StateRecord,
  type StateStore,
  type StateView,
  type StateWrite,
} from './state-store.ts';

/** LevelDB's block cache for the applied state: what bounds its reads' memory, not the number of records. */
export const STATE_CACHE_BYTES_DEFAULT = 8 * 1024 * 1024;
/** LevelDB's write buffer (memtable) for the applied state. */
export const STATE_WRITE_BUFFER_BYTES_DEFAULT = 4 * 1024 * 1024;
/** Records read per step of a range (one native call, and one turn of the event loop, each)... */
export const STATE_RANGE_PAGE_RECORDS = 1024;
/**
 * ... and at most about this many bytes (classic-level's `highWaterMarkBytes`; its default, 16 KiB,
 * ends a step after about 30 secrets: a snapshot of 40,000 streamed one native call at a time for
 * every 30 records, and under load each call waited its turn of a busy loop).
 */
export const STATE_RANGE_PAGE_BYTES = 1024 * 1024;
/** A snapshot install writes its records in batches of at most this many bytes... */
export const STATE_REPLACE_BATCH_BYTES_MAX = 1024 * 1024;
/** ... and at most this many records. */
export const STATE_REPLACE_BATCH_RECORDS_MAX = 4096;

/** `0x00 'g'`: the current generation (u32 BE). User keys live under `0x01 | generation (u32 BE)`. */
const GENERATION_KEY = Buffer.from([0x00, 0x67]);
const DATA_TAG = 0x01;
const PREFIX_BYTES = 5;

type Db = Level<Buffer, Buffer>;
type Snapshot = ReturnType<Db['snapshot']>;

export { StateStoreError };

/**
 * The applied state's StateStore in LevelDB (a directory of its own beside the Raft storage).
 *
 * `replaceAll` (a snapshot install) is crash safe through generations: every user key is stored
 * under a prefix naming the generation it belongs to; a replace writes the new content under the
 * next generation, then one synced batch moves the generation record to it, then the old
 * generation is cleared. A crash before the switch leaves the old content current (the partial
 * new generation is cleared when the store opens); after it, the new one.
 */
export class LevelStateStore implements StateStore {
  readonly path: string;
  readonly #db: Db;
  #generation: number;
  #prefix: Buffer;
  #replacing = false;
  /** Counts prepares (a newer one replaces an older one), and the one writing now. */
  #prepareToken = 0;
  #prepareRun: Promise<void> = Promise.resolve();

  private constructor(path: string, db: Db, generation: number) {
    this.path = path;
    this.#db = db;
    this.#generation = generation;
    this.#prefix = prefixOf(generation);
  }

  static async open(
    path: string,
    options: { readonly cacheBytes?: number; readonly writeBufferBytes?: number } = {},
  ): Promise<LevelStateStore> {
    const db: Db = new Level<Buffer, Buffer>(path, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
      cacheSize: options.cacheBytes ?? STATE_CACHE_BYTES_DEFAULT,
      writeBufferSize: options.writeBufferBytes ?? STATE_WRITE_BUFFER_BYTES_DEFAULT,
    });
    try {
      await db.open();
    } catch (error) {
      throw new StateStoreError(`cannot open the applied state's store in ${path}: ${(error as Error).message}`, {
        cause: error,
      });
    }
    try {
      const stored = await db.get(GENERATION_KEY);
      let generation = 0;
      if (stored === undefined) {
        // A new store, or a directory that is not one: it must then be empty.
        for await (const _ of db.keys({ limit: 1 }))
          throw new StateStoreError(
            `${path} holds data but no state store generation record: it is not an applied state's store`,
          );
        await db.put(GENERATION_KEY, u32(0), { sync: true });
      } else {
        if (stored.byteLength !== 4)
          throw new StateStoreError(`${path}: the state store's generation record has an unknown layout`);
        generation = stored.readUInt32BE(0);
      }
      // Leftovers of a replace that crashed before its switch (or of one whose clearing did not finish).
      const current = prefixOf(generation);
      await db.clear({ gte: Buffer.of(DATA_TAG), lt: current });
      const next = prefixEnd(current);
      if (next !== undefined) await db.clear({ gte: next, lt: Buffer.of(DATA_TAG + 1) });
      return new LevelStateStore(path, db, generation);
    } catch (error) {
      await db.close();
      throw error;
    }
  }

  /** The generation whose content is current (a test reads it; it grows by one per replaceAll). */
  get generation(): number {
    return this.#generation;
  }

  getSync(key: Uint8Array): Uint8Array | undefined {
    return this.#db.getSync(this.#key(key));
  }

  async get(key: Uint8Array): Promise<Uint8Array | undefined> {
    return this.#db.get(this.#key(key));
  }

  range(range: KeyRange): AsyncIterable<StateRecord> {
    return this.#range(range, this.#prefix, undefined);
  }

  pages(range: KeyRange): AsyncIterable<readonly StateRecord[]> {
    return this.#pages(range, this.#prefix, undefined);
  }

  async write(changes: readonly StateWrite[], options: { readonly sync?: boolean } = {}): Promise<void> {
    assert(!this.#replacing, () => `a write to the state store in ${this.path} while a snapshot is installed`);
    if (changes.length === 0) return;
    const batch = this.#db.batch();
    for (const change of changes) {
      if (change.type === 'put')
        batch.put(
          this.#key(change.key),
          Buffer.from(change.value.buffer, change.value.byteOffset, change.value.byteLength),
        );
      else batch.del(this.#key(change.key));
    }
    try {
      await batch.write({ sync: options.sync === true });
    } catch (error) {
      throw new StateStoreError(`a write to the state store in ${this.path} failed: ${(error as Error).message}`, {
        cause: error,
      });
    }
  }

  view(): StateView {
    const snapshot = this.#db.snapshot();
    const prefix = this.#prefix;
    const db = this.#db;
    return {
      get: async (key) => db.get(Buffer.concat([prefix, key]), { snapshot }),
      range: (range) => this.#range(range, prefix, snapshot),
      pages: (range) => this.#pages(range, prefix, snapshot),
      close: () => snapshot.close(),
    };
  }

  async replaceAll(records: RecordStream): Promise<void> {
    assert(!this.#replacing, () => `two snapshot installs at once in ${this.path}`);
    this.#replacing = true;
    try {
      await (await this.prepare(records)).install();
    } finally {
      this.#replacing = false;
    }
  }

  /**
   * Writes the records under the next generation's prefix in bounded batches (not synced: the
   * switch in `install` is, and LevelDB's log is written in order, so a synced write makes every
   * earlier one durable). The current generation is untouched, and writes to it go on meanwhile.
   */
  async prepare(records: RecordStream): Promise<PreparedContent> {
    const token = ++this.#prepareToken;
    const previous = this.#prepareRun;
    let finished!: () => void;
    this.#prepareRun = new Promise<void>((resolve) => {
      finished = resolve;
    });
    const replaced = (): StateStoreError =>
      new StateStoreError(`a newer snapshot replaced the one being written to ${this.path}`);
    const generation = this.#generation + 1;
    const prefix = prefixOf(generation);
    const clear = (): Promise<void> =>
      this.#db.clear({ gte: prefix, lt: prefixOf(generation + 1) }).catch(() => undefined);
    let count = 0;
    // A batch keeps references to what it is given only for 'write' listeners and prewrite hooks: none here.
    assert(
      this.#db.listenerCount('write') === 0 && (this.#db.hooks.prewrite as unknown as { noop: boolean }).noop,
      'the state store has write listeners or hooks: a snapshot install cannot reuse its key buffer',
    );
    let scratch = Buffer.allocUnsafe(PREFIX_BYTES + 1024);
    prefix.copy(scratch, 0);
    const prefixed = (key: Uint8Array): Buffer => {
      if (PREFIX_BYTES + key.byteLength > scratch.byteLength) {
        scratch = Buffer.allocUnsafe(2 * (PREFIX_BYTES + key.byteLength));
        prefix.copy(scratch, 0);
      }
      scratch.set(key, PREFIX_BYTES);
      return scratch.subarray(0, PREFIX_BYTES + key.byteLength);
    };
    try {
      // The prepare before this one stops at its next record and clears what it wrote.
      await previous;
      if (token !== this.#prepareToken) throw replaced();
      await clear();
      let batch = this.#db.batch();
      let bytes = 0;
      // One batch is written while the next is filled (the keys are distinct, so the order in
      // which LevelDB takes the two does not matter); never more than one, so memory stays bounded.
      let writing: Promise<void> = Promise.resolve();
      try {
        for await (const item of records) {
          if (token !== this.#prepareToken) throw replaced();
          for (const record of isPage(item) ? item : [item]) {
            // LevelDB copies a put's key and value into its batch at once, so the prefixed key is
            // built in one scratch buffer and the value passed as the view it came as.
            batch.put(prefixed(record.key), asBuffer(record.value));
            count++;
            bytes += record.key.byteLength + record.value.byteLength;
            if (batch.length >= STATE_REPLACE_BATCH_RECORDS_MAX || bytes >= STATE_REPLACE_BATCH_BYTES_MAX) {
              await writing;
              writing = batch.write();
              // Awaited at the next batch or at the end; until then its failure is not unhandled.
              writing.catch(() => undefined);
              batch = this.#db.batch();
              bytes = 0;
            }
          }
        }
      } finally {
        // A failed stream waits for the write in flight before clearing what was written.
        await writing.catch(() => undefined);
      }
      await writing;
      await batch.write();
      if (token !== this.#prepareToken) throw replaced();
    } catch (error) {
      // The current generation is untouched: drop what was written of the next one.
      await clear();
      throw error;
    } finally {
      finished();
    }
    let done = false;
    return {
      records: count,
      install: async () => {
        assert(
          !done && token === this.#prepareToken && generation === this.#generation + 1,
          () => `installing a prepared content of ${this.path} that was discarded or replaced`,
        );
        done = true;
        // The switch: one synced write. Before it the old content is current, after it the new.
        await this.#db.put(GENERATION_KEY, u32(generation), { sync: true });
        const old = this.#prefix;
        this.#generation = generation;
        this.#prefix = prefix;
        await this.#db.clear({ gte: old, lt: prefix });
      },
      discard: async () => {
        if (done) return;
        done = true;
        if (token === this.#prepareToken && generation === this.#generation + 1) await clear();
      },
    };
  }

  async reclaim(): Promise<void> {
    // `level` types the browser build too; on Node the database is classic-level's, which compacts.
    const db = this.#db as unknown as { compactRange?: (start: Buffer, end: Buffer) => Promise<void> };
    assert(typeof db.compactRange === 'function', 'this LevelDB binding cannot compact');
    await db.compactRange(Buffer.of(0x00), Buffer.alloc(8, 0xff));
  }

  async close(): Promise<void> {
    await this.#db.close();
  }

  #key(key: Uint8Array): Buffer {
    return Buffer.concat([this.#prefix, key]);
  }

  async *#range(range: KeyRange, prefix: Buffer, snapshot: Snapshot | undefined): AsyncGenerator<StateRecord> {
    for await (const page of this.#pages(range, prefix, snapshot)) yield* page;
  }

  async *#pages(
    range: KeyRange,
    prefix: Buffer,
    snapshot: Snapshot | undefined,
  ): AsyncGenerator<readonly StateRecord[]> {
    const gte = Buffer.concat([prefix, range.gte ?? Buffer.alloc(0)]);
    const lt = range.lt !== undefined ? Buffer.concat([prefix, range.lt]) : prefixEnd(prefix);
    if (range.limit !== undefined && range.limit <= 0) return;
    const iterator = this.#db.iterator({
      gte,
      ...(lt === undefined ? {} : { lt }),
      ...(range.limit === undefined ? {} : { limit: range.limit }),
      reverse: range.reverse === true,
      ...(snapshot === undefined ? {} : { snapshot }),
      highWaterMarkBytes: STATE_RANGE_PAGE_BYTES,
    });
    // The next page is read while the caller takes this one (a snapshot stream then waits for
    // LevelDB and for its consumer at once, not in turn). An empty page ends the range, as before.
    let next: ReturnType<typeof iterator.nextv> | null = null;
    try {
      let page = await iterator.nextv(STATE_RANGE_PAGE_RECORDS);
      while (page.length > 0) {
        next = iterator.nextv(STATE_RANGE_PAGE_RECORDS);
        // Awaited below, or in `finally` if the caller stops first: never an unhandled rejection.
        next.catch(() => undefined);
        yield page.map(([key, value]) => ({ key: key.subarray(PREFIX_BYTES), value }));
        page = await next;
        next = null;
      }
    } finally {
      // A caller that stopped early leaves a read in flight: it ends before the iterator closes.
      if (next !== null) await next.catch(() => undefined);
      await iterator.close();
    }
  }
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n, 0);
  return b;
}

function prefixOf(generation: number): Buffer {
  const b = Buffer.alloc(PREFIX_BYTES);
  b[0] = DATA_TAG;
  b.writeUInt32BE(generation, 1);
  return b;
}
