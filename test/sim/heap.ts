/** A binary min-heap ordered by (time, seq): the simulator's event queue. Ties keep insertion order. */
export interface Timed {
  readonly time: number;
  readonly seq: number;
}

export class MinHeap<T extends Timed> {
  #items: T[] = [];

  get size(): number {
    return this.#items.length;
  }

  peek(): T | undefined {
    return this.#items[0];
  }

  push(item: T): void {
    const items = this.#items;
    items.push(item);
    let k = items.length - 1;
    while (k > 0) {
      const parent = (k - 1) >> 1;
      if (!before(items[k]!, items[parent]!)) break;
      [items[k], items[parent]] = [items[parent]!, items[k]!];
      k = parent;
    }
  }

  pop(): T | undefined {
    const items = this.#items;
    const top = items[0];
    const last = items.pop();
    if (items.length > 0 && last !== undefined) {
      items[0] = last;
      let k = 0;
      for (;;) {
        const l = 2 * k + 1;
        const r = l + 1;
        let m = k;
        if (l < items.length && before(items[l]!, items[m]!)) m = l;
        if (r < items.length && before(items[r]!, items[m]!)) m = r;
        if (m === k) break;
        [items[k], items[m]] = [items[m]!, items[k]!];
        k = m;
      }
    }
    return top;
  }

  /** Removes every item for which `drop` is true (O(n), rebuilds the heap). */
  removeWhere(drop: (item: T) => boolean): T[] {
    const removed: T[] = [];
    const kept: T[] = [];
    for (const item of this.#items) (drop(item) ? removed : kept).push(item);
    if (removed.length === 0) return removed;
    this.#items = [];
    for (const item of kept) this.push(item);
    return removed;
  }
}

function before(a: Timed, b: Timed): boolean {
  return a.time < b.time || (a.time === b.time && a.seq < b.seq);
}
