/**
 * The simulator's model of a manager's state store on disk (state/): a MemoryStateStore that
 * survives the node's crashes, whose writes are not fsynced. AppliedState commits each Ready's
 * changes with the applied index in one batch without a sync (the entries are in the fsynced Raft
 * log, and a store that lost its tail replays it), so a crash may drop the last few batches it
 * wrote: never a batch in the middle, never half of one. A synced write (and a content replaced
 * whole, which the StateStore contract says is switched to in one synced step) makes everything
 * before it durable. Older batches reach the disk anyway once `window` newer ones follow them (the
 * kernel writes its dirty pages back eventually), so a crash loses at most `window` batches.
 *
 * Streamed snapshots (`prepare`, then `install` or `discard`) are modelled on LevelStateStore,
 * which keeps every user key under a prefix naming its generation and the current generation in
 * one record. What LevelDB guarantees at each point, and so what this store does:
 *
 * - While the records are written aside (`prepare`): they go under the NEXT generation, in
 *   unsynced batches of SIM_PREPARE_BATCH_RECORDS records appended to LevelDB's one log, in order
 *   with the current generation's batches. Reads see the current generation only; writes to it go
 *   on. A crash here loses a suffix of that log (batches of both kinds, as `crash(lose)` says:
 *   the aside batches take their places in the unsynced queue, so they push older batches of the
 *   current generation to the disk as any batch does), and whatever of the next generation
 *   reached the disk is cleared when the store opens (its generation record still names the
 *   current one). So: the old content, minus its lost unsynced tail, and nothing of the prepared
 *   records. The hook is asked before every batch (point 'prepare').
 * - Between the last record and the switch: the same (point 'switch', asked before the switch).
 * - The switch (`install`): one synced write of the generation record. LevelDB's log is written in
 *   order and a synced write waits for everything before it, so after it the prepared records are
 *   durable and current, and the old generation's batches, lost or not, no longer matter.
 * - After the switch the old generation is cleared (unsynced; a store that opens clears it anyway).
 *   The hook is asked before that clear (point 'after-switch'): a crash there leaves the new
 *   content whole and durable, with the snapshot's applied index, before Raft persisted the
 *   snapshot (the replay then skips the secrets up to it).
 * - A newer prepare replaces an older one (the older stops at its next record, and cannot be
 *   installed); `discard` drops one; a content prepared in an earlier life cannot be installed.
 *
 * A hook asked before every write lets the simulator kill the process at that write (the write
 * then never happens): a crash between two writes of one commit, between a snapshot's content
 * and its applied index, while a snapshot's records are written aside, before its switch, after it.
 */
import { MemoryStateStore } from '../../src/kv/memory-state-store.ts';
import {
  StateStoreError,
  recordsOf,
  type KeyRange,
  type PreparedContent,
  type RecordStream,
  type StateRecord,
  type StateStore,
  type StateView,
  type StateWrite,
} from '../../src/kv/state-store.ts';
import { assert } from '../../src/util/assert.ts';

/** Records per batch a prepare writes aside (LevelStateStore writes up to 4096; runs here hold about a hundred). */
export const SIM_PREPARE_BATCH_RECORDS = 16;

/**
 * Where the hook is asked: an ordinary write (a commit, a sync, a whole replacement), a batch of a
 * snapshot's records written aside, the snapshot's switch, and the clear that follows the switch.
 */
export type CrashPoint = 'write' | 'prepare' | 'switch' | 'after-switch';

/** Thrown by a write the simulator chose to die at: the process is gone, the write never happened. */
export class SimCrash extends Error {
  override name = 'SimCrash';
  readonly point: CrashPoint;

  constructor(point: CrashPoint, message: string) {
    super(message);
    this.point = point;
  }
}

export class SimStateDisk implements StateStore {
  /** What the process reads and writes: the durable content with the unsynced batches over it. */
  #live = new MemoryStateStore();
  /** What survives any crash: values by latin1 key. */
  #durable = new Map<string, Buffer>();
  /**
   * Batches written since the last sync that the disk may still lose, oldest first. A batch of a
   * snapshot's records written aside is here as an empty batch: it takes its place in the log,
   * and what it holds never counts after a crash (the next generation is cleared at open).
   */
  #unsynced: StateWrite[][] = [];
  readonly #window: number;
  /** Set by a crash: the process that used this store is dead, and its later calls are bugs. */
  #dead = false;
  /** Counts prepares (a newer one replaces an older one) and lives (a content of an earlier life is gone). */
  #prepareToken = 0;
  /** Asked before each write, each batch written aside and each switch: true kills the process there. */
  dieAtWrite: ((point: CrashPoint) => boolean) | null = null;
  /**
   * Over the node's lives: batches written (the current generation's), batches lost to crashes,
   * prepares begun, batches written aside, and switches to a prepared content.
   */
  readonly stats = { batches: 0, lost: 0, prepares: 0, asideBatches: 0, switches: 0 };

  constructor(window: number) {
    this.#window = window;
  }

  /** Whether a crash left the store unopened (until `recover`). */
  get dead(): boolean {
    return this.#dead;
  }

  /** Batches a crash now could lose. */
  get unsynced(): number {
    return this.#unsynced.length;
  }

  /**
   * The process died: the newest `lose` unsynced batches never reached the disk (the others did).
   * Until `recover`, the store refuses every call.
   */
  crash(lose: number): void {
    const kept = this.#unsynced.length - Math.min(lose, this.#unsynced.length);
    this.stats.lost += this.#unsynced.length - kept;
    // What the disk kept is durable now; what it lost is gone for good.
    for (const batch of this.#unsynced.slice(0, kept)) this.#persist(batch);
    this.#unsynced = [];
    this.#dead = true;
    // A content prepared in this life is gone with it (its records are cleared when the store opens).
    this.#prepareToken++;
  }

  /** A new process opens the store: it sees what the disk kept (the current generation's records only). */
  async recover(): Promise<void> {
    const live = new MemoryStateStore();
    const records = [...this.#durable.entries()].map(([key, value]) => ({ key: Buffer.from(key, 'latin1'), value }));
    await live.replaceAll(iterate(records));
    this.#live = live;
    this.#dead = false;
  }

  getSync(key: Uint8Array): Uint8Array | undefined {
    this.#assertAlive();
    return this.#live.getSync(key);
  }

  async get(key: Uint8Array): Promise<Uint8Array | undefined> {
    this.#assertAlive();
    return this.#live.get(key);
  }

  range(range: KeyRange): AsyncIterable<StateRecord> {
    this.#assertAlive();
    return this.#live.range(range);
  }

  pages(range: KeyRange): AsyncIterable<readonly StateRecord[]> {
    this.#assertAlive();
    return this.#live.pages(range);
  }

  view(): StateView {
    this.#assertAlive();
    return this.#live.view();
  }

  async write(changes: readonly StateWrite[], options?: { readonly sync?: boolean }): Promise<void> {
    this.#assertAlive();
    if (this.dieAtWrite?.('write') === true) throw new SimCrash('write', 'died at a write of the state store');
    // Copied: the caller may wipe its buffers, and the disk must keep what was written.
    const batch = changes.map(
      (c): StateWrite =>
        c.type === 'put'
          ? { type: 'put', key: Buffer.from(c.key), value: Buffer.from(c.value) }
          : { type: 'del', key: Buffer.from(c.key) },
    );
    await this.#live.write(batch);
    this.stats.batches++;
    this.#append(batch, options?.sync === true);
  }

  async replaceAll(stream: RecordStream): Promise<void> {
    const records = recordsOf(stream);
    this.#assertAlive();
    if (this.dieAtWrite?.('write') === true) throw new SimCrash('write', 'died at a replacement of the state store');
    const all: StateRecord[] = [];
    for await (const record of records) all.push({ key: Buffer.from(record.key), value: Buffer.from(record.value) });
    await this.#switchTo(all);
    this.stats.batches++;
  }

  async prepare(stream: RecordStream): Promise<PreparedContent> {
    const records = recordsOf(stream);
    this.#assertAlive();
    const token = ++this.#prepareToken;
    this.stats.prepares++;
    const replaced = (): StateStoreError =>
      new StateStoreError('a newer snapshot replaced the one being written to the simulated state store');
    const content: StateRecord[] = [];
    let inBatch = 0;
    const writeBatch = (): void => {
      if (this.dieAtWrite?.('prepare') === true)
        throw new SimCrash('prepare', "died writing a snapshot's records aside");
      // Under the next generation: invisible to reads, a place in the log, nothing after a crash.
      this.#append([], false);
      this.stats.asideBatches++;
      inBatch = 0;
    };
    for await (const record of records) {
      this.#assertAlive();
      if (token !== this.#prepareToken) throw replaced();
      content.push({ key: Buffer.from(record.key), value: Buffer.from(record.value) });
      if (++inBatch >= SIM_PREPARE_BATCH_RECORDS) writeBatch();
    }
    this.#assertAlive();
    if (token !== this.#prepareToken) throw replaced();
    if (inBatch > 0) writeBatch();
    let done = false;
    return {
      records: content.length,
      install: async () => {
        this.#assertAlive();
        assert(
          !done && token === this.#prepareToken,
          'installing a prepared content of the simulated state store that was discarded, replaced or lost with a crash',
        );
        if (this.dieAtWrite?.('switch') === true)
          throw new SimCrash('switch', "died after a snapshot's records were written aside, before the switch");
        done = true;
        // The switch: one synced write; everything before it is durable, the old generation goes.
        await this.#switchTo(content);
        this.stats.switches++;
        // The clearing of the old generation (a store that opens clears it anyway).
        if (this.dieAtWrite?.('after-switch') === true)
          throw new SimCrash('after-switch', 'died right after the switch to a snapshot, clearing the old content');
      },
      discard: async () => {
        done = true;
        content.length = 0;
      },
    };
  }

  async close(): Promise<void> {}

  /** The content becomes `records`, durably (a synced switch: the unsynced batches before it no longer matter). */
  async #switchTo(records: readonly StateRecord[]): Promise<void> {
    const live = new MemoryStateStore();
    await live.replaceAll(iterate(records));
    // Then at once: views already taken of the old content go on reading it (a LevelDB snapshot does).
    this.#live = live;
    this.#durable = new Map(records.map(({ key, value }) => [latin1(key), Buffer.from(value)]));
    this.#unsynced = [];
  }

  /** A batch enters LevelDB's log: unsynced (the disk may lose it) unless `sync`, which makes everything before it durable. */
  #append(batch: StateWrite[], sync: boolean): void {
    this.#unsynced.push(batch);
    if (sync) {
      for (const b of this.#unsynced) this.#persist(b);
      this.#unsynced = [];
    }
    while (this.#unsynced.length > this.#window) this.#persist(this.#unsynced.shift()!);
  }

  /** A batch reaches the disk. */
  #persist(batch: readonly StateWrite[]): void {
    for (const change of batch) {
      if (change.type === 'put') this.#durable.set(latin1(change.key), Buffer.from(change.value));
      else this.#durable.delete(latin1(change.key));
    }
  }

  #assertAlive(): void {
    if (this.#dead) throw new Error('a dead process used the simulated state store after its crash');
  }
}

function latin1(key: Uint8Array): string {
  return Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString('latin1');
}

async function* iterate(records: readonly StateRecord[]): AsyncGenerator<StateRecord> {
  yield* records;
}
