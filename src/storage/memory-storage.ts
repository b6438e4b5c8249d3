import type { Entry, HardState, PersistedState, Snapshot } from '../raft/types.ts';
import { validateUpdate } from './validate.ts';
import { StorageError, type RaftStorage, type StorageUpdate } from './types.ts';

/** RaftStorage in memory: for tests and the simulator. A "crash" is simply dropping the object. */
export class MemoryStorage implements RaftStorage {
  #hardState: HardState = { term: 0, vote: 0, commit: 0 };
  #snapshot: Snapshot | null = null;
  #entries: Entry[] = [];
  #closed = false;

  async load(): Promise<PersistedState> {
    this.#checkOpen();
    return { hardState: this.#hardState, snapshot: this.#snapshot, entries: [...this.#entries] };
  }

  async save(update: StorageUpdate): Promise<void> {
    this.#checkOpen();
    validateUpdate(update);
    if (update.snapshot !== null) {
      this.#snapshot = update.snapshot;
      this.#entries = [];
    }
    const first = update.entries[0];
    if (first !== undefined) {
      let keep = this.#entries.length;
      while (keep > 0 && this.#entries[keep - 1]!.index >= first.index) keep--;
      const last = this.#entries[keep - 1];
      const base = last?.index ?? this.#snapshot?.metadata.index ?? 0;
      if (first.index !== base + 1) {
        throw new StorageError('STORAGE_INVALID_UPDATE', `entries start at ${first.index}, but the stored log ends at ${base}`);
      }
      this.#entries.length = keep;
      this.#entries.push(...update.entries);
    }
    if (update.hardState !== null) this.#hardState = update.hardState;
  }

  async saveSnapshot(snapshot: Snapshot, compactTo: number): Promise<void> {
    this.#checkOpen();
    this.#snapshot = snapshot;
    this.#entries = this.#entries.filter((e) => e.index >= compactTo);
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  #checkOpen(): void {
    if (this.#closed) throw new StorageError('STORAGE_CLOSED', 'the storage is closed');
  }
}
