/**
 * The simulator's safety properties, checked incrementally as the run goes (every check is
 * O(what changed), so it can run after every step). A violation throws SafetyViolation naming
 * the property; the simulator adds the seed and a replay command.
 */
import type { Entry, NodeId, Snapshot } from '../../src/raft/types.ts';
import { putOf, VERSIONS_KEPT, type ReadVersion } from './applied-secrets.ts';
import { policyOf, type PolicyWrite } from './applied-policies.ts';

export type Property =
  | 'election-safety'
  | 'log-matching'
  | 'leader-completeness'
  | 'state-machine-safety'
  | 'apply-order'
  | 'monotonic-term'
  | 'monotonic-commit'
  | 'read-linearizability'
  | 'applied-exactly-once'
  | 'small-parts'
  | 'snapshot-install'
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
  /** The secret.put it carries (applied-secrets.ts), or null. */
  readonly put: { readonly name: string; readonly value: string } | null;
  /** The policy write it carries (applied-policies.ts), or null. */
  readonly policy: PolicyWrite | null;
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
  /** Secret name -> the committed indexes that put it, ascending. */
  readonly #putsByName = new Map<string, number[]>();
  /** Every index up to this one is known committed. */
  #committedPrefix = 0;
  /** Index -> a digest of the secrets' records (sealed, so byte-equal on every node) at that index, and who had it. */
  readonly #secretsAt = new Map<number, { digest: string; node: NodeId }>();
  /** Policy name -> the committed indexes that write it, ascending. */
  readonly #policyWritesByName = new Map<string, number[]>();
  /** Index -> a digest of the small parts' image (cluster and access) at that index, and who had it. */
  readonly #smallPartsAt = new Map<number, { digest: string; node: NodeId }>();

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
      this.#recordCommitted(id, index, entry.term, entryKey(entry), term, {
        put: entry.kind === 'normal' ? putOf(entry.data) : null,
        policy: entry.kind === 'normal' ? policyOf(entry.data) : null,
      });
    }
    if (commit > this.commitMax) this.commitMax = commit;
  }

  #recordCommitted(
    id: NodeId,
    index: number,
    entryTerm: number,
    key: string,
    commitTerm: number,
    { put, policy }: Pick<CommittedEntry, 'put' | 'policy'>,
  ): void {
    const known = this.#committed.get(index);
    if (known === undefined) {
      this.#committed.set(index, { term: entryTerm, key, commitTerm, put, policy });
      if (put !== null) insertSorted(this.#putsByName, put.name, index);
      if (policy !== null) insertSorted(this.#policyWritesByName, policy.name, index);
      while (this.#committed.has(this.#committedPrefix + 1)) this.#committedPrefix++;
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

  /**
   * Applied exactly once: a node whose applied state holds the effects of every committed entry up
   * to `index` (and of none after it) holds under `name` exactly what applying the committed log
   * once, up to `index`, gives: the same versions (the newest VERSIONS_KEPT of one per put), each
   * with the value of its put. `actual` is what the node's AppliedState returns through its secrets
   * API; a value not read is null. A put applied twice shows as a version too many, one skipped or
   * lost with the store's tail as one too few, one applied out of place as a wrong value.
   */
  onSecretRead(id: NodeId, index: number, name: string, actual: readonly ReadVersion[]): void {
    if (index > this.#committedPrefix) {
      throw new SafetyViolation(
        'applied-exactly-once',
        `node ${id} holds the secrets of index ${index}, but index ${this.#committedPrefix + 1} was never reported committed`,
      );
    }
    const expected = this.expectedSecret(name, index);
    const show = (versions: readonly { version: number }[]): string =>
      versions.length === 0
        ? 'no versions'
        : `versions ${versions[0]!.version}..${versions[versions.length - 1]!.version}`;
    const where = `node ${id} (its applied state at index ${index}): secret ${name}`;
    const n = Math.max(expected.length, actual.length);
    for (let k = 0; k < n; k++) {
      const want = expected[k];
      const got = actual[k];
      if (want !== undefined && got !== undefined && want.version === got.version) {
        if (got.value !== null && got.value !== want.value) {
          throw new SafetyViolation(
            'applied-exactly-once',
            `${where}: version ${got.version} holds ${got.value}${this.#entryOf(got.value)}, where the committed log applied once gives ${want.value} (entry ${want.index})`,
          );
        }
        continue;
      }
      const differs = `${where} has ${show(actual)}, where the committed log applied once gives ${show(expected)}`;
      if (actual.length > expected.length || (got !== undefined && want !== undefined && got.version > want.version)) {
        // More versions than puts: some put was applied again.
        const last = expected[expected.length - 1];
        throw new SafetyViolation(
          'applied-exactly-once',
          `${differs}: a put applied twice (the last put to it at or below ${index} is entry ${last?.index ?? 'none'}` +
            `${got?.value != null ? `; version ${got.version} holds ${got.value}${this.#entryOf(got.value)}` : ''})`,
        );
      }
      throw new SafetyViolation(
        'applied-exactly-once',
        `${differs}: the put of entry ${want?.index} (version ${want?.version}, ${want?.value}) is not applied`,
      );
    }
  }

  /** What applying the committed log once, up to `index`, leaves under `name`. */
  expectedSecret(name: string, index: number): Array<{ version: number; value: string; index: number }> {
    const indexes = (this.#putsByName.get(name) ?? []).filter((i) => i <= index);
    const kept = indexes.slice(Math.max(0, indexes.length - VERSIONS_KEPT));
    const first = indexes.length - kept.length + 1;
    return kept.map((i, k) => ({ version: first + k, value: this.#committed.get(i)!.put!.value, index: i }));
  }

  /** All nodes whose applied state is at the same index hold the same secrets' records, byte for byte. */
  onSecretsImage(id: NodeId, index: number, digest: string): void {
    const known = this.#secretsAt.get(index);
    if (known === undefined) this.#secretsAt.set(index, { digest, node: id });
    else if (known.digest !== digest) {
      throw new SafetyViolation(
        'applied-exactly-once',
        `node ${id} holds other secrets' records at index ${index} than node ${known.node} did there (digest ${digest}, not ${known.digest})`,
      );
    }
  }

  /**
   * The small parts applied once: a node whose small parts hold the effects of every committed
   * entry up to `index` (and of none after it) holds under the policy `name` the rules of the last
   * committed write to it up to `index` (`actual`: a canonical text, null for no such policy). A
   * write lost (a restart from an image that missed it, a replay skipped) shows as the rules of
   * an earlier write, or none; one applied from beyond `index` as the rules of a later one.
   */
  onPolicyRead(id: NodeId, index: number, name: string, actual: string | null): void {
    if (index > this.#committedPrefix) {
      throw new SafetyViolation(
        'small-parts',
        `node ${id} holds the small parts of index ${index}, but index ${this.#committedPrefix + 1} was never reported committed`,
      );
    }
    const indexes = this.#policyWritesByName.get(name) ?? [];
    let at = indexes.length;
    while (at > 0 && indexes[at - 1]! > index) at--;
    const last = at === 0 ? null : indexes[at - 1]!;
    const expected = last === null ? null : this.#committed.get(last)!.policy!.rulesText;
    if (actual === expected) return;
    const writeOf = (rules: string | null): string => {
      if (rules === null) return 'no such policy';
      const writers = indexes.filter((i) => this.#committed.get(i)!.policy!.rulesText === rules);
      return `rules ${rules} (written by ${writers.length === 0 ? 'no committed entry' : `entries ${writers.join(', ')}`})`;
    };
    throw new SafetyViolation(
      'small-parts',
      `node ${id} (its small parts at index ${index}): policy ${name} has ${writeOf(actual)}, where the committed log applied once gives ${expected === null ? 'no such policy' : `the rules of entry ${last}`}`,
    );
  }

  /** All nodes whose small parts are at the same index hold the same image of them, byte for byte. */
  onSmallPartsImage(id: NodeId, index: number, digest: string): void {
    const known = this.#smallPartsAt.get(index);
    if (known === undefined) this.#smallPartsAt.set(index, { digest, node: id });
    else if (known.digest !== digest) {
      throw new SafetyViolation(
        'small-parts',
        `node ${id} holds other small parts at index ${index} than node ${known.node} did there (digest ${digest}, not ${known.digest})`,
      );
    }
  }

  /** ` (the put of entry N)` for a value some committed entry put, or ''. */
  #entryOf(value: string): string {
    for (const [index, entry] of this.#committed) if (entry.put?.value === value) return ` (the put of entry ${index})`;
    return ' (no committed entry puts it)';
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

/** Adds `index` to the ascending list of `name` (entries are reported committed out of order). */
function insertSorted(byName: Map<string, number[]>, name: string, index: number): void {
  const indexes = byName.get(name) ?? [];
  let at = indexes.length;
  while (at > 0 && indexes[at - 1]! > index) at--;
  indexes.splice(at, 0, index);
  byName.set(name, indexes);
}
