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
 * A hook asked before every write lets the simulator kill the process at that write (the write
 * then never happens): a crash between two writes of one commit, or between a snapshot's content
 * and its applied index.
 */
import { MemoryStateStore } from '../../src/kv/memory-state-store.ts';
import type {
  KeyRange,
  PreparedContent,
  StateRecord,
  StateStore,
  StateView,
  StateWrite,
} from '../../src/kv/state-store.ts';

/** Thrown by a write the simulator chose to die at: the process is gone, the write never happened. */
export class SimCrash extends Error {
  override name = 'SimCrash';
}

export class SimStateDisk implements StateStore {
  /** What the process reads and writes: the durable content with the unsynced batches over it. */
  #live = new MemoryStateStore();
  /** What survives any crash: values by latin1 key. */
  readonly #durable = new Map<string, Buffer>();
  /** Batches written since the last sync that the disk may still lose, oldest first. */
  #unsynced: StateWrite[][] = [];
  readonly #window: number;
  /** Set by a crash: the process that used this store is dead, and its later calls are bugs. */
  #dead = false;
  /** Asked before each write and content replacement: true kills the process there. */
  dieAtWrite: (() => boolean) | null = null;
  /** Batches written, and batches lost to crashes, over the node's lives. */
  readonly stats = { batches: 0, lost: 0 };

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
  }

  /** A new process opens the store: it sees what the disk kept. */
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

  view(): StateView {
    this.#assertAlive();
    return this.#live.view();
  }

  async write(changes: readonly StateWrite[], options?: { readonly sync?: boolean }): Promise<void> {
    this.#assertAlive();
    if (this.dieAtWrite?.() === true) throw new SimCrash('died at a write of the state store');
    // Copied: the caller may wipe its buffers, and the disk must keep what was written.
    const batch = changes.map(
      (c): StateWrite =>
        c.type === 'put'
          ? { type: 'put', key: Buffer.from(c.key), value: Buffer.from(c.value) }
          : { type: 'del', key: Buffer.from(c.key) },
    );
    await this.#live.write(batch);
    this.stats.batches++;
    this.#unsynced.push(batch);
    if (options?.sync === true) {
      for (const b of this.#unsynced) this.#persist(b);
      this.#unsynced = [];
    }
    while (this.#unsynced.length > this.#window) this.#persist(this.#unsynced.shift()!);
  }

  async replaceAll(records: AsyncIterable<StateRecord>): Promise<void> {
    this.#assertAlive();
    if (this.dieAtWrite?.() === true) throw new SimCrash('died at a replacement of the state store');
    const all: StateRecord[] = [];
    for await (const record of records) all.push({ key: Buffer.from(record.key), value: Buffer.from(record.value) });
    // Synced, whole or not at all: the batches before it are part of what it replaced.
    await this.#live.replaceAll(iterate(all));
    this.#durable.clear();
    for (const { key, value } of all) this.#durable.set(latin1(key), Buffer.from(value));
    this.#unsynced = [];
    this.stats.batches++;
  }

  prepare(_records: AsyncIterable<StateRecord>): Promise<PreparedContent> {
    // The simulator's snapshots are whole images (AppliedState.snapshot/restore), never streamed records.
    throw new Error('the simulated state store does not take streamed snapshots');
  }

  async close(): Promise<void> {}

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
