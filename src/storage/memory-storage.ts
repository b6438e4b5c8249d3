import type { Entry, HardState, PersistedState, Snapshot } from '../raft/types.ts';
import { validateUpdate } from './validate.ts';
import { StorageError, type RaftStorage, type StorageUpdate } from './types.ts';

/**
 * Raft state kept in memory, with the same rules as durable storage, synchronously: the disk of
 * the scenario harness and the simulator, and the body of MemoryStorage. A "crash" keeps this
 * object and drops everything else.
 */
export class MemoryRaftState {
  hardState: HardState = { term: 0, vote: 0, commit: 0 };
  snapshot: Snapshot | null = null;
  entries: Entry[] = [];

  save(update: StorageUpdate): void {
    validateUpdate(update);
    const first = update.entries[0];
    if (first !== undefined) {
      // Check before changing anything, so a refused update leaves no trace.
      const kept = update.snapshot !== null ? [] : this.entries.filter((e) => e.index < first.index);
      const base = kept[kept.length - 1]?.index ?? (update.snapshot ?? this.snapshot)?.metadata.index ?? 0;
      if (first.index !== base + 1) {
        throw new StorageError(
          'STORAGE_INVALID_UPDATE',
          `entries start at ${first.index}, but the stored log ends at ${base}`,
        );
      }
    }
    if (update.snapshot !== null) {
      this.snapshot = update.snapshot;
      this.entries = [];
    }
    if (first !== undefined) {
      let keep = this.entries.length;
      while (keep > 0 && this.entries[keep - 1]!.index >= first.index) keep--;
      this.entries.length = keep;
      for (const entry of update.entries) this.entries.push(entry);
    }
    if (update.hardState !== null) this.hardState = update.hardState;
  }

  /** The application's snapshot; entries before `compactTo` are dropped (the one at it stays). */
  saveSnapshot(snapshot: Snapshot, compactTo: number): void {
    this.snapshot = snapshot;
    let drop = 0;
    while (drop < this.entries.length && this.entries[drop]!.index < compactTo) drop++;
    if (drop > 0) this.entries.splice(0, drop);
  }

  /** The term at `index`, if an entry or the snapshot records it. */
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

/** RaftStorage in memory, for tests. */
export class MemoryStorage implements RaftStorage {
  readonly #state = new MemoryRaftState();
  #closed = false;

  async load(): Promise<PersistedState> {
    this.#checkOpen();
    return this.#state.state();
  }

  async save(update: StorageUpdate): Promise<void> {
    this.#checkOpen();
    this.#state.save(update);
  }

  async saveSnapshot(snapshot: Snapshot, compactTo: number): Promise<void> {
    this.#checkOpen();
    this.#state.saveSnapshot(snapshot, compactTo);
  }

  /** Nothing to do: dropped records are gone from memory at once. */
  async reclaim(): Promise<void> {
    this.#checkOpen();
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  #checkOpen(): void {
    if (this.#closed) throw new StorageError('STORAGE_CLOSED', 'the storage is closed');
  }
}
