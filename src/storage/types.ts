import type { Entry, HardState, PersistedState, Snapshot } from '../raft/types.ts';

/** What one Ready asks to persist (see the Ready contract in src/raft/types.ts). */
export interface StorageUpdate {
  readonly hardState: HardState | null;
  /** Replace every stored entry from `entries[0].index` on. */
  readonly entries: readonly Entry[];
  /** A received snapshot: replaces the whole stored log; `entries` then follow it. */
  readonly snapshot: Snapshot | null;
  /**
   * False when the update only moves the commit index forward: it is written but not synced (as
   * etcd's MustSync decides). A commit index lost to a power cut is learned again from the
   * quorum that holds the entries; terms, votes and entries are always synced.
   */
  readonly sync?: boolean;
}

/**
 * A manager's stable storage for Raft: the hard state, the log and the newest snapshot.
 * Every method's changes are atomic: after a crash either all of them are there or none.
 * `save` resolves only once the update is durable (synced).
 */
export interface RaftStorage {
  /** Everything persisted, validated; throws a StorageError naming any damaged record. */
  load(): Promise<PersistedState>;
  save(update: StorageUpdate): Promise<void>;
  /**
   * The application's own snapshot at its applied index. Entries before `compactTo` are dropped;
   * the entry at `compactTo` is kept (its term anchors the log), and so is every later one.
   */
  saveSnapshot(snapshot: Snapshot, compactTo: number): Promise<void>;
  /**
   * Rewrites the store so deleted records leave the disk too (LevelDB keeps them in older files
   * until a compaction): used after a key is destroyed. Resolves once done.
   */
  reclaim(): Promise<void>;
  close(): Promise<void>;
}

export type StorageErrorCode = 'STORAGE_CORRUPT' | 'STORAGE_CLOSED' | 'STORAGE_INVALID_UPDATE';

export class StorageError extends Error {
  override name = 'StorageError';
  readonly code: StorageErrorCode;

  constructor(code: StorageErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}
