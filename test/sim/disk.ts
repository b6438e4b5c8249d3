import type { Entry, HardState, PersistedState, Snapshot } from '../../src/raft/types.ts';

/**
 * A node's stable storage in the simulator: exactly what its Readys asked to persist, written
 * synchronously and atomically (as the LevelDB storage will: one synced batch per Ready).
 * A crash keeps all of it and nothing else.
 */
export class SimDisk {
  hardState: HardState = { term: 0, vote: 0, commit: 0 };
  snapshot: Snapshot | null = null;
  entries: Entry[] = [];

  persist(hardState: HardState | null, entries: readonly Entry[], snapshot: Snapshot | null): void {
    if (snapshot !== null) {
      this.snapshot = snapshot;
      this.entries = [];
    }
    const first = entries[0];
    if (first !== undefined) {
      let keep = this.entries.length;
      while (keep > 0 && this.entries[keep - 1]!.index >= first.index) keep--;
      this.entries.length = keep;
      for (const entry of entries) this.entries.push(entry);
    }
    if (hardState !== null) this.hardState = hardState;
  }

  /** The application's own snapshot; entries before `compactTo` are dropped (the one at it stays). */
  saveSnapshot(snapshot: Snapshot, compactTo: number): void {
    this.snapshot = snapshot;
    let drop = 0;
    while (drop < this.entries.length && this.entries[drop]!.index < compactTo) drop++;
    if (drop > 0) this.entries.splice(0, drop);
  }

  termAt(index: number): number | undefined {
    const first = this.entries[0];
    if (first !== undefined && index >= first.index && index < first.index + this.entries.length) {
      return this.entries[index - first.index]!.term;
    }
    if (this.snapshot !== null && this.snapshot.metadata.index === index) return this.snapshot.metadata.term;
    return undefined;
  }

  state(): PersistedState {
    return { hardState: this.hardState, snapshot: this.snapshot, entries: [...this.entries] };
  }
}
