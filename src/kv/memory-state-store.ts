import { assert, assertIndex } from '../util/assert.ts';
import {
  StateStoreError,
  isPage,
  pagesOf,
  type KeyRange,
  type PreparedContent,
  type RecordStream,
  type StateRecord,
  type StateStore,
  type StateView,
  type StateWrite,
} from './state-store.ts';

/** Records per page of `pages` (the memory store has them at hand; a page only bounds a step). */
const MEMORY_PAGE_RECORDS = 1024;

/**
 * One version of the content: values by latin1 key (latin1 strings are a one-to-one image of byte
 * strings, and compare as strings exactly as the bytes compare unsigned), plus the keys sorted.
 * A version that a reader holds is never changed again: the writer copies it first.
 */
interface Version {
  readonly values: Map<string, Buffer>;
  /** Every key of `values`, ascending. */
  readonly keys: string[];
  /** Open views and ranges in progress that read this version. */
  readers: number;
}

/**
 * A StateStore in memory (tests, the simulator, a dev server): a Map of values and a sorted array
 * of its keys, so a range costs a binary search plus the records it yields. Views are
 * copy-on-write: a view holds the current version, and the first write while any reader holds it
 * copies the version aside first (O(n) once, then writes are cheap again).
 *
 * `write` and `replaceAll` copy the values they are given (callers wipe their buffers). Values
 * returned by reads are the stored buffers themselves, shared with every other reader: callers
 * must not mutate them.
 */
export class MemoryStateStore implements StateStore {
  #version: Version = { values: new Map(), keys: [], readers: 0 };
  #replacing = false;
  /** Counts prepares: a prepare whose number is not the latest was replaced. */
  #preparing = 0;
  #closed = false;

  getSync(key: Uint8Array): Uint8Array | undefined {
    this.#assertOpen();
    return this.#version.values.get(latin1(key));
  }

  async get(key: Uint8Array): Promise<Uint8Array | undefined> {
    return this.getSync(key);
  }

  range(range: KeyRange): AsyncIterable<StateRecord> {
    this.#assertOpen();
    return rangeOf(() => this.#hold(), range);
  }

  pages(range: KeyRange): AsyncIterable<readonly StateRecord[]> {
    return pagesOf(this.range(range), MEMORY_PAGE_RECORDS);
  }

  /** Applies every change at once, before the returned promise resolves (in call order). */
  async write(changes: readonly StateWrite[], _options?: { readonly sync?: boolean }): Promise<void> {
    this.#assertOpen();
    assert(!this.#replacing, 'a write to the memory state store while replaceAll runs');
    // Copy the values first: nothing is applied unless every change is well formed.
    const prepared = changes.map((change) => ({
      key: latin1(change.key),
      value: change.type === 'put' ? Buffer.from(change.value) : null,
    }));
    const version = this.#writable();
    for (const { key, value } of prepared) {
      const at = lowerBound(version.keys, key);
      const present = version.keys[at] === key;
      if (value === null) {
        if (!present) continue;
        version.keys.splice(at, 1);
        version.values.delete(key);
      } else {
        if (!present) version.keys.splice(at, 0, key);
        version.values.set(key, value);
      }
    }
  }

  view(): StateView {
    this.#assertOpen();
    const version = this.#hold();
    let closed = false;
    const assertOpen = (): void => assert(!closed, 'a read through a closed view of the memory state store');
    return {
      get: async (key) => {
        assertOpen();
        return version.values.get(latin1(key));
      },
      range: (range) => {
        assertOpen();
        return rangeOf(() => {
          version.readers++;
          return version;
        }, range);
      },
      pages(range) {
        return pagesOf(this.range(range), MEMORY_PAGE_RECORDS);
      },
      close: async () => {
        if (closed) return;
        closed = true;
        version.readers--;
      },
    };
  }

  /**
   * Builds the new content aside and switches to it when `records` ends; if `records` throws, the
   * old content stays whole and the error propagates. Writes while it runs are refused.
   */
  async replaceAll(records: RecordStream): Promise<void> {
    this.#assertOpen();
    assert(!this.#replacing, 'two replaceAll calls at once on the memory state store');
    this.#replacing = true;
    try {
      await (await this.prepare(records)).install();
    } finally {
      this.#replacing = false;
    }
  }

  async prepare(records: RecordStream): Promise<PreparedContent> {
    this.#assertOpen();
    // A newer prepare discards the one before it.
    const generation = ++this.#preparing;
    const values = new Map<string, Buffer>();
    for await (const item of records) {
      if (generation !== this.#preparing)
        throw new StateStoreError('a newer snapshot replaced this one while it was written');
      for (const record of isPage(item) ? item : [item]) values.set(latin1(record.key), Buffer.from(record.value));
    }
    this.#assertOpen();
    let done = false;
    return {
      records: values.size,
      install: async () => {
        this.#assertOpen();
        assert(!done && generation === this.#preparing, 'installing a prepared content that was discarded or replaced');
        done = true;
        // Default string order compares UTF-16 code units: for latin1 strings, unsigned byte order.
        this.#version = { values, keys: [...values.keys()].sort(), readers: 0 };
      },
      discard: async () => {
        done = true;
        values.clear();
      },
    };
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  /** The current version, registered as read (the caller must release it: `readers--`). */
  #hold(): Version {
    this.#version.readers++;
    return this.#version;
  }

  /** The current version, copied first if a reader holds it. */
  #writable(): Version {
    const current = this.#version;
    if (current.readers > 0) {
      this.#version = { values: new Map(current.values), keys: [...current.keys], readers: 0 };
    }
    return this.#version;
  }

  #assertOpen(): void {
    assert(!this.#closed, 'the memory state store is closed');
  }
}

/**
 * The records of `range` in the version that `hold` registers when iteration starts (released
 * when it ends, however it ends).
 */
async function* rangeOf(hold: () => Version, range: KeyRange): AsyncGenerator<StateRecord> {
  const limit = range.limit ?? Number.POSITIVE_INFINITY;
  if (limit !== Number.POSITIVE_INFINITY) assertIndex(limit, 'a range limit');
  const version = hold();
  try {
    const { keys, values } = version;
    const start = range.gte === undefined ? 0 : lowerBound(keys, latin1(range.gte));
    const end = range.lt === undefined ? keys.length : lowerBound(keys, latin1(range.lt));
    const count = Math.min(Math.max(end - start, 0), limit);
    for (let n = 0; n < count; n++) {
      const key = keys[range.reverse === true ? end - 1 - n : start + n]!;
      const value = values.get(key);
      assert(value !== undefined, () => `the memory state store's key index names a missing key`);
      yield { key: Buffer.from(key, 'latin1'), value };
    }
  } finally {
    version.readers--;
  }
}

/** The first index of sorted `keys` whose key is not below `key`. */
function lowerBound(keys: readonly string[], key: string): number {
  let low = 0;
  let high = keys.length;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (keys[middle]! < key) low = middle + 1;
    else high = middle;
  }
  return low;
}

function latin1(key: Uint8Array): string {
  return Buffer.from(key.buffer, key.byteOffset, key.byteLength).toString('latin1');
}
