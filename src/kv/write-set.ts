import { assert } from '../util/assert.ts';
import {
  compareKeys,
  type KeyRange,
  type PreparedContent,
  type StateRecord,
  type StateStore,
  type StateView,
  type StateWrite,
} from './state-store.ts';

/**
 * The applier's uncommitted writes over a StateStore: reads see the write set first (a deleted
 * key reads as absent), then the store. Entries of one Ready are applied into one write set, which
 * is then committed with the applied index in one atomic batch (`commit`), so the store never holds
 * half of an entry's effects, and the applied index always names the last entry whose effects it
 * holds: after a crash the replica replays exactly the entries after it, none twice.
 */
export class WriteSet<Store extends Pick<StateStore, 'getSync' | 'write'> = StateStore> {
  readonly #store: Store;
  /** latin1 strings are a one-to-one image of byte strings: usable as Map keys. */
  readonly #changes = new Map<string, Uint8Array | null>();
  #bytes = 0;
  /**
   * While a savepoint is open: what each key changed since held among the changes before its first
   * change (ABSENT: it was not among them, reads went to the store). Null: no savepoint open.
   */
  #undo: Map<string, Uint8Array | null | typeof ABSENT> | null = null;

  constructor(store: Store) {
    this.#store = store;
  }

  get(key: Uint8Array): Uint8Array | undefined {
    const pending = this.#changes.get(latin1(key));
    if (pending === null) return undefined;
    return pending ?? this.#store.getSync(key);
  }

  put(key: Uint8Array, value: Uint8Array): void {
    this.#set(key, value);
  }

  del(key: Uint8Array): void {
    this.#set(key, null);
  }

  /**
   * Opens a savepoint: the changes made after it can be undone together (`rollback`) or kept
   * (`release`). A command that must apply all or nothing (a batch of puts) writes between the
   * two, synchronously: one savepoint at a time, never open across a commit's await.
   */
  savepoint(): void {
    assert(this.#undo === null, 'a savepoint is already open');
    this.#undo = new Map();
  }

  /** Undoes every change since the savepoint (the changes are as they were when it opened), and closes it. */
  rollback(): void {
    const undo = this.#undo;
    assert(undo !== null, 'rollback without a savepoint');
    this.#undo = null;
    for (const [k, old] of undo) {
      const now = this.#changes.get(k);
      this.#bytes -= k.length + (now?.byteLength ?? 0);
      if (old === ABSENT) this.#changes.delete(k);
      else {
        this.#changes.set(k, old);
        this.#bytes += k.length + (old?.byteLength ?? 0);
      }
    }
  }

  /** Keeps the changes since the savepoint, and closes it. */
  release(): void {
    assert(this.#undo !== null, 'release without a savepoint');
    this.#undo = null;
  }

  /** Changes not yet committed. */
  get size(): number {
    return this.#changes.size;
  }

  /** Bytes of keys and values not yet committed (the replica bounds a Ready's apply by it). */
  get bytes(): number {
    return this.#bytes;
  }

  /** The changes as one batch, in key order. */
  changes(): StateWrite[] {
    return [...this.#changes.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([k, v]): StateWrite => {
        const key = Buffer.from(k, 'latin1');
        return v === null ? { type: 'del', key } : { type: 'put', key, value: v };
      });
  }

  /**
   * Writes the changes and `extra` (the applied index record) in one atomic batch, then forgets
   * them. Reads during the write still see them; a failed write keeps them for a retry.
   */
  async commit(extra: readonly StateWrite[] = [], options?: { readonly sync?: boolean }): Promise<void> {
    assert(this.#undo === null, 'a commit with a savepoint open');
    const batch = [...this.changes(), ...extra];
    const committed = new Map(this.#changes);
    await this.#store.write(batch, options);
    // Forget what was written, unless it was changed again while the write ran.
    for (const [k, v] of committed) if (this.#changes.get(k) === v) this.#changes.delete(k);
    this.#bytes = 0;
    for (const [k, v] of this.#changes) this.#bytes += k.length + (v?.byteLength ?? 0);
  }

  /**
   * Records in a range as the applier left them: the store's content at this moment (a
   * point-in-time view) with the uncommitted changes of this moment laid over it. Later applies
   * and commits do not show through, so a read that starts after the entries it must see were
   * applied sees them, however long it pages.
   */
  range(this: WriteSet<StateStore>, range: KeyRange): AsyncIterableIterator<StateRecord> {
    return this.#overlaid(range, overlay);
  }

  /** The records of `range` as `range` gives them, a page at a time (a snapshot's stream). */
  pages(this: WriteSet<StateStore>, range: KeyRange): AsyncIterableIterator<readonly StateRecord[]> {
    return this.#overlaid(range, overlayPages);
  }

  #overlaid<T>(
    this: WriteSet<StateStore>,
    range: KeyRange,
    merge: (view: StateView, pending: Pending, range: KeyRange) => AsyncGenerator<T>,
  ): AsyncIterableIterator<T> {
    // Taken now, not at the first step of the iteration: the caller's moment is the point.
    const inRange = (key: Buffer): boolean =>
      (range.gte === undefined || compareKeys(key, range.gte) >= 0) &&
      (range.lt === undefined || compareKeys(key, range.lt) < 0);
    const pending = [...this.#changes.entries()]
      .map(([k, v]) => [Buffer.from(k, 'latin1'), v] as const)
      .filter(([key]) => inRange(key))
      .sort(([a], [b]) => compareKeys(a, b) * (range.reverse === true ? -1 : 1));
    const view = this.#store.view();
    const records = merge(view, pending, range);
    // The view is open from now: a range never read is closed by `return()` (which a `for await`
    // that stops early calls), not only one that was begun.
    let begun = false;
    return {
      next: () => {
        begun = true;
        return records.next();
      },
      return: async () => {
        if (!begun) {
          begun = true;
          await view.close();
        }
        return records.return(undefined);
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  /**
   * Installs a content a snapshot brought (written aside by `StateStore.prepare`). Only between
   * applies: the applier's changes must have been committed (or there were none).
   */
  async install(prepared: PreparedContent): Promise<void> {
    assert(this.#changes.size === 0, () => `a snapshot install found ${this.#changes.size} uncommitted changes`);
    await prepared.install();
  }

  /**
   * Replaces the store's whole content (a snapshot being installed). Only between applies: the
   * applier's changes must have been committed (or there were none).
   */
  async replaceAll(this: WriteSet<StateStore>, records: AsyncIterable<StateRecord>): Promise<void> {
    assert(this.#changes.size === 0, () => `a snapshot install found ${this.#changes.size} uncommitted changes`);
    await this.#store.replaceAll(records);
  }

  #set(key: Uint8Array, value: Uint8Array | null): void {
    const k = latin1(key);
    const old = this.#changes.get(k);
    if (this.#undo !== null && !this.#undo.has(k)) this.#undo.set(k, this.#changes.has(k) ? old! : ABSENT);
    if (old !== undefined) this.#bytes -= k.length + (old?.byteLength ?? 0);
    this.#changes.set(k, value);
    this.#bytes += k.length + (value?.byteLength ?? 0);
  }
}

/** A key that was not among the changes when a savepoint opened (distinct from null: a delete). */
const ABSENT: unique symbol = Symbol('absent');

function latin1(key: Uint8Array): string {
  return Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString('latin1');
}

/** Uncommitted changes in a range, in the range's order (null: a delete). */
type Pending = ReadonlyArray<readonly [Buffer, Uint8Array | null]>;

/** The view's records in a range with the pending changes laid over them (deletes hide, puts replace). */
async function* overlay(view: StateView, pending: Pending, range: KeyRange): AsyncGenerator<StateRecord> {
  for await (const page of overlayPages(view, pending, range)) yield* page;
}

/** `overlay` a page at a time: each page of the view with the pending changes that fall in it laid over it. */
async function* overlayPages(
  view: StateView,
  pending: Pending,
  range: KeyRange,
): AsyncGenerator<readonly StateRecord[]> {
  const limit = range.limit ?? Number.POSITIVE_INFINITY;
  const before = (a: Uint8Array, b: Uint8Array): boolean => compareKeys(a, b) * (range.reverse === true ? -1 : 1) < 0;
  let given = 0;
  let p = 0;
  try {
    if (limit <= 0) return;
    // The store's records, as many as the limit could need: each pending change hides or replaces
    // at most one of them. (Unbounded, a range of one record read a whole page of 1 MiB.)
    const storedLimit = range.limit === undefined ? undefined : range.limit + pending.length;
    for await (const page of view.pages({ ...range, limit: storedLimit })) {
      // Nothing pending falls before this page's end: the page as the view gave it (the usual case).
      const last = page[page.length - 1];
      if (
        (last === undefined || p >= pending.length || before(last.key, pending[p]![0])) &&
        given + page.length <= limit
      ) {
        given += page.length;
        if (page.length > 0) yield page;
        continue;
      }
      const out: StateRecord[] = [];
      for (const record of page) {
        while (p < pending.length && before(pending[p]![0], record.key)) {
          const [key, value] = pending[p++]!;
          if (value !== null && given++ < limit) out.push({ key, value });
        }
        if (p < pending.length && compareKeys(pending[p]![0], record.key) === 0) {
          const [key, value] = pending[p++]!;
          if (value !== null && given++ < limit) out.push({ key, value });
        } else if (given++ < limit) out.push(record);
      }
      if (out.length > 0) yield out;
      if (given >= limit) return;
    }
    const rest: StateRecord[] = [];
    for (; p < pending.length && given < limit; p++) {
      const [key, value] = pending[p]!;
      if (value === null) continue;
      rest.push({ key, value });
      given++;
    }
    if (rest.length > 0) yield rest;
  } finally {
    await view.close();
  }
}
