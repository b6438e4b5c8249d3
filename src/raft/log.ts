import { assert } from '../util/assert.ts';
import type { Entry, PersistedState, Snapshot } from './types.ts';

/** Bytes an entry counts for in size limits: its payload plus a fixed allowance for framing. */
export function entryBytes(entry: Entry): number {
  return entry.kind === 'normal' ? normalEntryBytes(entry.data) : 32;
}

/** What a normal entry carrying `data` counts for, before it is numbered. */
export function normalEntryBytes(data: Uint8Array): number {
  return data.byteLength + 16;
}

/**
 * The replicated log as one node holds it: entries after a compaction point, the newest
 * snapshot (what a lagging follower is sent), and the commit/applied/stable indexes.
 *
 * Invariants (checked in `checkInvariants`):
 *   offsetIndex <= applied <= committed <= lastIndex   (applied may trail offsetIndex only while
 *                                                       a received snapshot awaits advance)
 *   offsetIndex <= stableIndex <= lastIndex
 *   snapshot === null ? offsetIndex is 0 or the start of persisted entries : offsetIndex <= snapshot.index
 *   entries are contiguous from offsetIndex + 1, terms never decrease
 */
export class RaftLog {
  /** The index before `entries[0]`; its term is known (for matching appends), its entry is not. */
  #offsetIndex = 0;
  #offsetTerm = 0;
  #entries: Entry[] = [];
  /** Entries up to here are on stable storage; later ones are handed out by `unstableEntries`. */
  #stableIndex = 0;
  #committed = 0;
  #applied = 0;
  /** The newest snapshot this node has (its own or received), sent to followers left behind. */
  #snapshot: Snapshot | null = null;
  /** A received snapshot not yet persisted and applied by the application. */
  #pendingSnapshot: Snapshot | null = null;

  /** A log rebuilt from stable storage. Everything given back is stable by definition. */
  static fromPersisted(persisted: PersistedState): RaftLog {
    const log = new RaftLog();
    const { snapshot, entries, hardState } = persisted;
    let rest: readonly Entry[] = entries;
    if (snapshot !== null) {
      log.#snapshot = snapshot;
      log.#offsetIndex = snapshot.metadata.index;
      log.#offsetTerm = snapshot.metadata.term;
      const first = entries[0];
      if (first !== undefined && first.index <= snapshot.metadata.index) {
        // A tail kept before the snapshot: the first entry becomes the new offset (its term is
        // what matters for matching appends), the rest stay as entries.
        log.#offsetIndex = first.index;
        log.#offsetTerm = first.term;
        rest = entries.slice(1);
      } else if (first !== undefined) {
        assert(
          first.index === snapshot.metadata.index + 1,
          () => `persisted entries start at ${first.index}, after the snapshot at ${snapshot.metadata.index}: a gap`,
        );
      }
    } else if (entries.length > 0) {
      const first = entries[0]!;
      if (first.index !== 1) {
        log.#offsetIndex = first.index;
        log.#offsetTerm = first.term;
        rest = entries.slice(1);
      }
    }
    for (const entry of rest) log.#pushChecked(entry);
    log.#stableIndex = log.lastIndex();
    const snapshotIndex = snapshot?.metadata.index ?? 0;
    if (snapshot !== null) {
      assert(
        log.term(snapshotIndex) === snapshot.metadata.term,
        () => `persisted entries do not agree with the snapshot at ${snapshotIndex} (a stale tail was left behind)`,
      );
    }
    assert(
      hardState.commit <= log.lastIndex() || hardState.commit <= snapshotIndex,
      () => `persisted commit ${hardState.commit} is beyond the persisted log (last index ${log.lastIndex()})`,
    );
    log.#committed = Math.max(hardState.commit, snapshotIndex);
    log.#applied = snapshotIndex;
    log.checkInvariants();
    return log;
  }

  get committed(): number {
    return this.#committed;
  }

  get applied(): number {
    return this.#applied;
  }

  get snapshot(): Snapshot | null {
    return this.#snapshot;
  }

  get pendingSnapshot(): Snapshot | null {
    return this.#pendingSnapshot;
  }

  firstIndex(): number {
    return this.#offsetIndex + 1;
  }

  lastIndex(): number {
    return this.#offsetIndex + this.#entries.length;
  }

  lastTerm(): number {
    const last = this.#entries[this.#entries.length - 1];
    return last === undefined ? this.#offsetTerm : last.term;
  }

  /** The term of the entry at `index`, or undefined when it is compacted away or not there yet. */
  term(index: number): number | undefined {
    if (index === this.#offsetIndex) return this.#offsetTerm;
    if (index < this.#offsetIndex || index > this.lastIndex()) return undefined;
    return this.#entries[index - this.#offsetIndex - 1]!.term;
  }

  entry(index: number): Entry | undefined {
    if (index <= this.#offsetIndex) return undefined;
    return this.#entries[index - this.#offsetIndex - 1];
  }

  matchTerm(index: number, term: number): boolean {
    return this.term(index) === term;
  }

  /** Raft §5.4.1: a candidate's log is at least as up to date as ours. */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourTerm = this.lastTerm();
    return lastTerm > ourTerm || (lastTerm === ourTerm && lastIndex >= this.lastIndex());
  }

  /**
   * The largest index <= `index` whose term is <= `term`, with that term; used by both sides of
   * fast backtracking. Stops at the compaction point (term 0 = unknown below it).
   */
  findConflictByTerm(index: number, term: number): { index: number; term: number } {
    for (let i = Math.min(index, this.lastIndex()); i >= this.#offsetIndex; i--) {
      const ourTerm = this.term(i)!;
      if (ourTerm <= term) return { index: i, term: ourTerm };
    }
    return { index: this.#offsetIndex, term: 0 };
  }

  /**
   * Follower side of AppendEntries (§5.3): if our entry at prevIndex has prevTerm, append the
   * entries (dropping any conflicting suffix) and advance commit. Returns the last index now
   * known to match the leader, or null when prevIndex/prevTerm do not match.
   */
  maybeAppend(prevIndex: number, prevTerm: number, commit: number, entries: readonly Entry[]): number | null {
    if (!this.matchTerm(prevIndex, prevTerm)) return null;
    const lastNew = prevIndex + entries.length;
    let conflictAt = -1;
    for (let k = 0; k < entries.length; k++) {
      const entry = entries[k]!;
      assert(entry.index === prevIndex + k + 1, 'append entries must be contiguous after prevIndex');
      if (!this.matchTerm(entry.index, entry.term)) {
        conflictAt = k;
        break;
      }
    }
    if (conflictAt >= 0) {
      const first = entries[conflictAt]!;
      assert(
        first.index > this.#committed,
        () => `conflicting entry at ${first.index} would overwrite committed entries (commit ${this.#committed})`,
      );
      this.append(entries.slice(conflictAt));
    }
    this.commitTo(Math.min(commit, lastNew));
    return lastNew;
  }

  /** Appends entries, replacing any of ours from the first one's index on. */
  append(entries: readonly Entry[]): void {
    const first = entries[0];
    if (first === undefined) return;
    assert(first.index > this.#committed, () => `cannot append at ${first.index}: committed up to ${this.#committed}`);
    assert(
      first.index > this.#offsetIndex,
      () => `cannot append at ${first.index}: compacted up to ${this.#offsetIndex}`,
    );
    assert(
      first.index <= this.lastIndex() + 1,
      () => `append at ${first.index} leaves a gap after ${this.lastIndex()}`,
    );
    if (first.index <= this.lastIndex()) {
      this.#entries.length = first.index - this.#offsetIndex - 1;
      this.#stableIndex = Math.min(this.#stableIndex, first.index - 1);
    }
    for (const entry of entries) this.#pushChecked(entry);
  }

  #pushChecked(entry: Entry): void {
    assert(
      entry.index === this.lastIndex() + 1,
      () => `entry ${entry.index} is not contiguous after ${this.lastIndex()}`,
    );
    assert(
      entry.term >= this.lastTerm(),
      () => `entry ${entry.index} has term ${entry.term} below the previous ${this.lastTerm()}`,
    );
    this.#entries.push(entry);
  }

  /** Entries in [lo, hi), at most `bytesMax` of them but always at least one. */
  slice(lo: number, hi: number, bytesMax: number): Entry[] {
    assert(
      lo > this.#offsetIndex && hi <= this.lastIndex() + 1 && lo <= hi,
      () => `slice [${lo}, ${hi}) is out of range`,
    );
    const out: Entry[] = [];
    let bytes = 0;
    for (let index = lo; index < hi; index++) {
      const entry = this.#entries[index - this.#offsetIndex - 1]!;
      bytes += entryBytes(entry);
      if (out.length > 0 && bytes > bytesMax) break;
      out.push(entry);
    }
    return out;
  }

  commitTo(index: number): void {
    if (index <= this.#committed) return;
    assert(index <= this.lastIndex(), () => `commit ${index} is beyond the last index ${this.lastIndex()}`);
    this.#committed = index;
  }

  hasUnstableEntries(): boolean {
    return this.#stableIndex < this.lastIndex();
  }

  unstableEntries(): Entry[] {
    return this.#entries.slice(this.#stableIndex - this.#offsetIndex);
  }

  /** Entries up to this index are persisted (or covered by a snapshot). */
  stableIndex(): number {
    return this.#stableIndex;
  }

  /** Marks entries up to `index` stable if the log still holds `term` there (it may have changed). */
  stableTo(index: number, term: number): void {
    if (index > this.#stableIndex && this.matchTerm(index, term)) this.#stableIndex = index;
  }

  /** Committed entries not yet applied, starting after any pending snapshot. */
  nextCommittedEntries(bytesMax: number): Entry[] {
    const lo = Math.max(this.#applied + 1, this.#offsetIndex + 1);
    if (lo > this.#committed) return [];
    return this.slice(lo, this.#committed + 1, bytesMax);
  }

  hasNextCommittedEntries(): boolean {
    return Math.max(this.#applied + 1, this.#offsetIndex + 1) <= this.#committed;
  }

  appliedTo(index: number): void {
    assert(
      index >= this.#applied && index <= this.#committed,
      () => `applied ${index} outside [${this.#applied}, ${this.#committed}]`,
    );
    this.#applied = index;
  }

  /** Replaces the whole log with a received snapshot (follower side of InstallSnapshot, §7). */
  restore(snapshot: Snapshot): void {
    const { index, term } = snapshot.metadata;
    assert(index > this.#committed, () => `restoring snapshot ${index} at or below commit ${this.#committed}`);
    this.#offsetIndex = index;
    this.#offsetTerm = term;
    this.#entries = [];
    this.#stableIndex = index;
    this.#committed = index;
    this.#snapshot = snapshot;
    this.#pendingSnapshot = snapshot;
  }

  /** The application persisted and applied the pending snapshot. */
  snapshotApplied(index: number): void {
    const pending = this.#pendingSnapshot;
    if (pending === null || pending.metadata.index !== index) return;
    this.#pendingSnapshot = null;
    if (index > this.#applied) this.#applied = index;
  }

  /** Records a snapshot the application took of its own state at `applied`. */
  setSnapshot(snapshot: Snapshot): void {
    const current = this.#snapshot;
    assert(current === null || snapshot.metadata.index >= current.metadata.index, 'snapshots never go back');
    this.#snapshot = snapshot;
  }

  /** Drops entries up to `index`; a snapshot must already cover them. */
  compact(index: number): void {
    assert(index > this.#offsetIndex, 'compact index must be past the compaction point');
    assert(index <= this.#applied && index <= this.#stableIndex, 'only applied, stable entries can be compacted');
    assert(
      this.#snapshot !== null && this.#snapshot.metadata.index >= index,
      'compacted entries must be covered by a snapshot',
    );
    const term = this.term(index)!;
    this.#entries = this.#entries.slice(index - this.#offsetIndex);
    this.#offsetIndex = index;
    this.#offsetTerm = term;
  }

  checkInvariants(): void {
    assert(this.#applied <= this.#committed, () => `applied ${this.#applied} > committed ${this.#committed}`);
    assert(this.#committed <= this.lastIndex(), () => `committed ${this.#committed} > last ${this.lastIndex()}`);
    assert(
      this.#offsetIndex <= this.#stableIndex && this.#stableIndex <= this.lastIndex(),
      () => `stable ${this.#stableIndex} outside [${this.#offsetIndex}, ${this.lastIndex()}]`,
    );
    assert(
      this.#pendingSnapshot !== null || this.#applied >= this.#offsetIndex || this.#snapshot === null,
      () => `applied ${this.#applied} is behind the compaction point ${this.#offsetIndex} with no pending snapshot`,
    );
    assert(
      this.#snapshot === null || this.#offsetIndex <= this.#snapshot.metadata.index,
      'compacted past the newest snapshot',
    );
  }
}
