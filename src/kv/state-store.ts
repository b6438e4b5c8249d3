/**
 * The applied state's storage: an ordered key-value store of byte strings, small on purpose (as
 * Vault's physical backend is: get, put, delete, list), plus what a replicated state machine
 * needs beyond it: atomic batches, and point-in-time reads for snapshots.
 *
 * Reads during `apply` are synchronous (`get`): a Raft state machine applies entries in order
 * and must decide each one from what the entries before it left, so the applier reads through a
 * `WriteSet` (its own uncommitted writes first, then the store) and writes into it; the write set
 * is committed, with the applied index, in one atomic `write`. Ranges are asynchronous: they serve
 * requests, snapshots and background work, never `apply`.
 *
 * Keys and values are opaque bytes here. Order is unsigned lexicographic byte order. Nothing in
 * this module knows what a secret is, and nothing it stores is plaintext of a secret: the applied
 * state seals values and names before they reach it.
 */

/** One change of an atomic batch. */
export type StateWrite =
  | { readonly type: 'put'; readonly key: Uint8Array; readonly value: Uint8Array }
  | { readonly type: 'del'; readonly key: Uint8Array };

/** A key range: `gte` inclusive, `lt` exclusive (either may be absent: unbounded). */
export interface KeyRange {
  readonly gte?: Uint8Array;
  readonly lt?: Uint8Array;
  /** At most this many records (default: no limit). */
  readonly limit?: number;
  readonly reverse?: boolean;
}

export interface StateRecord {
  readonly key: Uint8Array;
  readonly value: Uint8Array;
}

/**
 * Records in key order, one at a time or a page (an array) at a time, as a snapshot install takes
 * them: a stream of pages costs one asynchronous step per page.
 */
export type RecordStream = AsyncIterable<StateRecord | readonly StateRecord[]>;

/** Pages of at most `pageRecords` records, for a store whose records come one at a time. */
export async function* pagesOf(
  records: AsyncIterable<StateRecord>,
  pageRecords: number,
): AsyncGenerator<readonly StateRecord[]> {
  let page: StateRecord[] = [];
  for await (const record of records) {
    page.push(record);
    if (page.length >= pageRecords) {
      yield page;
      page = [];
    }
  }
  if (page.length > 0) yield page;
}

/** The records of a stream one by one (pages taken apart), for a consumer that wants them so. */
export async function* recordsOf(stream: RecordStream): AsyncGenerator<StateRecord> {
  for await (const item of stream) {
    if (isPage(item)) yield* item;
    else yield item;
  }
}

export function isPage(item: StateRecord | readonly StateRecord[]): item is readonly StateRecord[] {
  return Array.isArray(item);
}
/** Reads of the store as it was at one moment (a snapshot); it must be closed. */
export interface StateView {
  get(key: Uint8Array): Promise<Uint8Array | undefined>;
  /** Records in key order (or reverse), read in pages; stop early by breaking out of the loop. */
  range(range: KeyRange): AsyncIterable<StateRecord>;
  /**
   * The same records as `range`, a page (an array, in order) at a time: a snapshot's stream then
   * takes one asynchronous step per page rather than one per record (`range` is for requests).
   */
  pages(range: KeyRange): AsyncIterable<readonly StateRecord[]>;
  close(): Promise<void>;
}

export interface StateStore extends StateView {
  /** The current value, synchronously (the applier's read). */
  getSync(key: Uint8Array): Uint8Array | undefined;
  /** Applies every change or none. `sync` waits for the disk (fsync) before resolving. */
  write(changes: readonly StateWrite[], options?: { readonly sync?: boolean }): Promise<void>;
  /** A point-in-time view: later writes are not visible through it. */
  view(): StateView;
  /**
   * Replaces the whole content with what `records` yields (a snapshot being installed): written
   * aside and switched to atomically, so a crash in the middle leaves the old content whole.
   * The same as `prepare` then `install`.
   */
  replaceAll(records: RecordStream): Promise<void>;
  /**
   * Writes what `records` yields aside, as a content to switch to later (a snapshot streamed from
   * a leader, before Raft has accepted it): the store goes on serving reads and writes meanwhile.
   * One prepared content at a time: a new one discards the one before. Nothing of it is visible
   * until `install`; a crash before that leaves nothing of it.
   */
  prepare(records: RecordStream): Promise<PreparedContent>;
  /** Rewrites the files so deleted and replaced records leave the disk (LevelDB keeps them until a compaction). */
  reclaim?(): Promise<void>;
}

/** A content written aside by `StateStore.prepare`. */
export interface PreparedContent {
  /** Records written. */
  readonly records: number;
  /** Makes it the store's whole content in one synced step (between writes); the old content goes. */
  install(): Promise<void>;
  /** Drops it (a snapshot Raft did not accept, or a newer one); idempotent. */
  discard(): Promise<void>;
}

/** The store failed (a disk error, a directory that is not a state store, a prepare replaced by a newer one). */
export class StateStoreError extends Error {
  override name = 'StateStoreError';
}

/** Keys compare as unsigned bytes. */
export function compareKeys(a: Uint8Array, b: Uint8Array): number {
  return Buffer.compare(a, b);
}

/** The smallest key greater than every key that starts with `prefix` (for `lt`), or undefined (no bound). */
export function prefixEnd(prefix: Uint8Array): Uint8Array | undefined {
  const end = Buffer.from(prefix);
  for (let k = end.length - 1; k >= 0; k--) {
    if (end[k]! < 0xff) {
      end[k]! += 1;
      return end.subarray(0, k + 1);
    }
  }
  return undefined;
}
