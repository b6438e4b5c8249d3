/**
 * The simulator's safety properties, checked incrementally as the run goes (every check is
 * O(what changed), so it can run after every step). A violation throws SafetyViolation naming
 * the property; the simulator adds the seed and a replay command.
 */
import type { Entry, NodeId, Snapshot } from '../../src/raft/types.ts';

export type Property =
  | 'election-safety'
  | 'log-matching'
  | 'leader-completeness'
  | 'state-machine-safety'
  | 'apply-order'
  | 'monotonic-term'
  | 'monotonic-commit'
  | 'read-linearizability'
  | 'core-assertion'
  | 'liveness'
  | 'non-disruption'
  | 'determinism';

export class SafetyViolation extends Error {
  override name = 'SafetyViolation';
  readonly property: Property;
  readonly detail: string;

  constructor(property: Property, detail: string) {
    super(`${property}: ${detail}`);
    this.property = property;
    this.detail = detail;
  }
}

const decoder = new TextDecoder();

/** A printable identity for an entry's content. */
export function entryKey(entry: Entry): string {
  return entry.kind === 'normal' ? `n:${decoder.decode(entry.data)}` : `c:${entry.change.type}:${entry.change.nodeId}`;
}

/** The simulated state machine is a hash chain over applied entries: equal hashes, equal histories. */
export function nextState(state: number, entry: Entry): number {
  let h = (state ^ 0x9e3779b9) >>> 0;
  const key = `${entry.index}|${entry.term}|${entryKey(entry)}`;
  for (let k = 0; k < key.length; k++) h = Math.imul(h ^ key.charCodeAt(k), 0x01000193) >>> 0;
  return h;
}

interface CommittedEntry {
  readonly term: number;
  readonly key: string;
  /** The term of the node that first reported it committed: the term of the committing leader. */
  readonly commitTerm: number;
}

export class Checker {
  /** term -> the node that led it. */
  readonly #leaders = new Map<number, NodeId>();
  /** "index/term" -> what every log holding that (index, term) must hold there, and before it. */
  readonly #entriesSeen = new Map<string, { key: string; prevTerm: number | undefined }>();
  /** index -> the committed entry at that index. */
  readonly #committed = new Map<number, CommittedEntry>();
  /** index -> state machine hash after applying up to it. */
  readonly #stateAt = new Map<number, number>();
  /** The highest index known committed anywhere: reads must see at least this. */
  commitMax = 0;
  /** Per node, the highest term and commit ever persisted (across restarts). */
  readonly #durable = new Map<NodeId, { term: number; commit: number }>();

  constructor() {
    this.#stateAt.set(0, 0);
  }

  committedEntry(index: number): CommittedEntry | undefined {
    return this.#committed.get(index);
  }

  /** Election Safety (§5.2): at most one leader per term. */
  onLeader(id: NodeId, term: number): void {
    const existing = this.#leaders.get(term);
    if (existing !== undefined && existing !== id) {
      throw new SafetyViolation('election-safety', `nodes ${existing} and ${id} both led term ${term}`);
    }
    this.#leaders.set(term, id);
  }

  /** Terms and commit indexes on stable storage never go back, not even across a crash. */
  onDurableHardState(id: NodeId, term: number, commit: number): void {
    const last = this.#durable.get(id) ?? { term: 0, commit: 0 };
    if (term < last.term)
      throw new SafetyViolation('monotonic-term', `node ${id} persisted term ${term} after ${last.term}`);
    if (commit < last.commit) {
      throw new SafetyViolation('monotonic-commit', `node ${id} persisted commit ${commit} after ${last.commit}`);
    }
    this.#durable.set(id, { term, commit });
  }

  /**
   * Log Matching (§5.3): two logs with an entry of the same index and term hold the same
   * command there and the same term before it (hence, inductively, identical prefixes).
   * `prevTerm` is the node's term at index - 1, when it still has it.
   */
  onEntryPersisted(id: NodeId, entry: Entry, prevTerm: number | undefined): void {
    const at = `${entry.index}/${entry.term}`;
    const key = entryKey(entry);
    const seen = this.#entriesSeen.get(at);
    if (seen === undefined) {
      this.#entriesSeen.set(at, { key, prevTerm });
      return;
    }
    if (seen.key !== key) {
      throw new SafetyViolation('log-matching', `node ${id} holds ${key} at ${at} where another log holds ${seen.key}`);
    }
    if (prevTerm !== undefined && seen.prevTerm !== undefined && prevTerm !== seen.prevTerm) {
      throw new SafetyViolation(
        'log-matching',
        `node ${id} has term ${prevTerm} before ${at}, another log has term ${seen.prevTerm}: the prefixes differ`,
      );
    }
    if (seen.prevTerm === undefined && prevTerm !== undefined) this.#entriesSeen.set(at, { key, prevTerm });
  }

  /**
   * A node's commit index moved to `commit` in `term`; `entryAt` reads its log. Committed entries
   * never change (State Machine Safety, §5.4.3): whatever any node ever committed at an index,
   * every node commits the same there.
   */
  onCommit(
    id: NodeId,
    term: number,
    fromExclusive: number,
    commit: number,
    entryAt: (index: number) => Entry | undefined,
  ): void {
    for (let index = fromExclusive + 1; index <= commit; index++) {
      const entry = entryAt(index);
      if (entry === undefined) continue; // covered by a snapshot just installed
      this.#recordCommitted(id, index, entry.term, entryKey(entry), term);
    }
    if (commit > this.commitMax) this.commitMax = commit;
  }

  #recordCommitted(id: NodeId, index: number, entryTerm: number, key: string, commitTerm: number): void {
    const known = this.#committed.get(index);
    if (known === undefined) {
      this.#committed.set(index, { term: entryTerm, key, commitTerm });
    } else if (known.term !== entryTerm || known.key !== key) {
      throw new SafetyViolation(
        'state-machine-safety',
        `node ${id} committed ${key} (term ${entryTerm}) at index ${index}, where ${known.key} (term ${known.term}) was committed before`,
      );
    } else if (commitTerm < known.commitTerm) {
      this.#committed.set(index, { ...known, commitTerm });
    }
  }

  /**
   * Leader Completeness (§5.4): a leader of `term` holds every entry committed in an earlier
   * term. Entries it has compacted away are covered by its snapshot.
   */
  onBecomeLeader(
    id: NodeId,
    term: number,
    firstIndex: number,
    lastIndex: number,
    termAt: (index: number) => number | undefined,
  ): void {
    for (let index = 1; index <= this.commitMax; index++) {
      const committed = this.#committed.get(index);
      if (committed === undefined || committed.commitTerm >= term) continue;
      if (index > lastIndex) {
        throw new SafetyViolation(
          'leader-completeness',
          `leader ${id} of term ${term} lacks committed index ${index} (its last is ${lastIndex})`,
        );
      }
      if (index < firstIndex - 1) continue;
      const held = termAt(index);
      if (held !== committed.term) {
        throw new SafetyViolation(
          'leader-completeness',
          `leader ${id} of term ${term} holds term ${String(held)} at ${index}, where term ${committed.term} was committed`,
        );
      }
    }
  }

  /**
   * A node applies `entry` after `appliedIndex` with state `state`; returns the new state.
   * Every node applies the same entries in the same order, with no gaps, and each applied entry
   * is one that was committed.
   */
  onApply(id: NodeId, appliedIndex: number, state: number, entry: Entry): number {
    if (entry.index !== appliedIndex + 1) {
      throw new SafetyViolation('apply-order', `node ${id} applied index ${entry.index} right after ${appliedIndex}`);
    }
    const committed = this.#committed.get(entry.index);
    if (committed === undefined) {
      throw new SafetyViolation(
        'apply-order',
        `node ${id} applied index ${entry.index}, which no node reported committed`,
      );
    }
    const key = entryKey(entry);
    if (committed.term !== entry.term || committed.key !== key) {
      throw new SafetyViolation(
        'state-machine-safety',
        `node ${id} applied ${key} (term ${entry.term}) at ${entry.index}, where ${committed.key} (term ${committed.term}) was committed`,
      );
    }
    const next = nextState(state, entry);
    this.#checkState(id, entry.index, next);
    return next;
  }

  /** A node restored a snapshot: its state must be the one every node had at that index. */
  onSnapshotRestored(id: NodeId, snapshot: Snapshot, state: number): void {
    const { index, term } = snapshot.metadata;
    this.#checkState(id, index, state);
    const committed = this.#committed.get(index);
    if (committed === undefined) {
      throw new SafetyViolation(
        'state-machine-safety',
        `node ${id} restored a snapshot at ${index}, which no node reported committed`,
      );
    }
    if (committed.term !== term) {
      throw new SafetyViolation(
        'state-machine-safety',
        `node ${id} restored a snapshot of term ${term} at ${index}, where term ${committed.term} was committed`,
      );
    }
  }

  #checkState(id: NodeId, index: number, state: number): void {
    const known = this.#stateAt.get(index);
    if (known === undefined) this.#stateAt.set(index, state);
    else if (known !== state) {
      throw new SafetyViolation(
        'state-machine-safety',
        `node ${id} has state ${state} at index ${index}, others had ${known}`,
      );
    }
  }

  /** ReadIndex (§6.4): a read point covers every write committed before the read began. */
  onReadState(id: NodeId, context: string, index: number, requiredIndex: number): void {
    if (index < requiredIndex) {
      throw new SafetyViolation(
        'read-linearizability',
        `node ${id} got read index ${index} for ${context}, but index ${requiredIndex} was committed before the read began`,
      );
    }
  }
}
