import { assert } from '../util/assert.ts';
import { resolveRaftConfig, type RaftConfigInput } from './config.ts';
import { RaftError } from './errors.ts';
import { RaftLog } from './log.ts';
import { Raft } from './raft.ts';
import type {
  BasicStatus,
  ConfChange,
  ConfState,
  Entry,
  HardState,
  Message,
  NodeId,
  PersistedState,
  Ready,
  Snapshot,
  SnapshotMetadata,
  SoftState,
  Status,
} from './types.ts';

/**
 * Committed entries handed out in one Ready, by size (at least one is always handed out). A
 * follower given a long tail after a snapshot applies it a Ready at a time (about 100 small
 * entries, 0.1 s on a busy core), and its loop serves other work between them.
 */
export const COMMITTED_ENTRIES_BYTES_MAX = 64 * 1024;

const EMPTY_HARD_STATE: HardState = { term: 0, vote: 0, commit: 0 };

/**
 * The synchronous facade over the Raft core, in the shape of etcd's RawNode. Drive it with
 * `tick()` (time), `step()` (messages from peers) and the request methods; then, whenever
 * `hasReady()`, take `ready()`, do what its type says (persist, send, apply) and `advance()`.
 *
 * `step`, `tick` and requests may be called between `ready()` and `advance()` (for example while
 * the write is being synced); their effects come out in the next Ready.
 */
export class RawNode {
  readonly #raft: Raft;
  #prevHardState: HardState;
  #prevSoftState: SoftState;
  #inFlight: Ready | null = null;

  /**
   * A node with the state it persisted, or with none: a brand-new node has no log and no
   * membership; it either bootstraps a cluster (`bootstrap`) or waits to be added by a leader.
   */
  constructor(config: RaftConfigInput, persisted?: PersistedState) {
    const resolved = resolveRaftConfig(config);
    const state: PersistedState = persisted ?? { hardState: EMPTY_HARD_STATE, snapshot: null, entries: [] };
    const log = RaftLog.fromPersisted(state);
    const confState: ConfState = state.snapshot?.metadata.confState ?? { voters: [], learners: [] };
    this.#raft = new Raft(resolved, log, state.hardState, confState);
    this.#prevHardState = persisted === undefined ? EMPTY_HARD_STATE : state.hardState;
    this.#prevSoftState = this.#raft.softState();
  }

  get id(): NodeId {
    return this.#raft.id;
  }

  /**
   * Starts a new cluster with these voters: the same conf-change entries (term 1, indexes
   * 1..n, committed) on every founding node, so their logs agree from the start. Call once, on
   * a node with an empty log; the entries come out in the next Ready like any others.
   */
  bootstrap(voters: readonly NodeId[]): void {
    const raft = this.#raft;
    if (raft.log.lastIndex() !== 0 || raft.term !== 0) throw new TypeError('bootstrap needs a node with an empty log');
    if (voters.length === 0 || new Set(voters).size !== voters.length) {
      throw new TypeError(`bootstrap needs distinct voters: got ${JSON.stringify(voters)}`);
    }
    const entries: Entry[] = voters.map((nodeId, k) => ({
      kind: 'conf-change',
      term: 1,
      index: k + 1,
      change: { type: 'add-voter', nodeId },
    }));
    raft.log.append(entries);
    raft.log.commitTo(entries.length);
    raft.becomeFollower(1, 0);
  }

  /**
   * Quorum-loss recovery (`--force-new-cluster`): everything in this node's log is taken as
   * committed, and conf changes are appended (committed at once) that leave this node the only
   * voter. Entries the old majority never committed may so become committed: the operator accepts
   * that by forcing. Call right after construction, before the first Ready. Returns the members
   * removed.
   */
  forceNewCluster(): NodeId[] {
    const raft = this.#raft;
    const log = raft.log;
    const last = log.lastIndex();
    // The membership once every entry is applied: the snapshot's, then each conf change in order.
    const voters = new Set(log.snapshot?.metadata.confState.voters ?? raft.confState().voters);
    const learners = new Set(log.snapshot?.metadata.confState.learners ?? raft.confState().learners);
    for (let index = log.firstIndex(); index <= last; index++) {
      const entry = log.entry(index);
      if (entry?.kind !== 'conf-change') continue;
      const { type, nodeId } = entry.change;
      if (type === 'add-voter') {
        learners.delete(nodeId);
        voters.add(nodeId);
      } else if (type === 'add-learner' && !(voters.has(nodeId) && voters.size === 1)) {
        voters.delete(nodeId);
        learners.add(nodeId);
      } else if (type === 'remove' && !(voters.has(nodeId) && voters.size === 1)) {
        voters.delete(nodeId);
        learners.delete(nodeId);
      }
    }
    const others = [...voters, ...learners].filter((id) => id !== raft.id);
    const term = Math.max(raft.term, log.lastTerm());
    const changes: ConfChange[] = [
      ...(voters.has(raft.id) ? [] : [{ type: 'add-voter' as const, nodeId: raft.id }]),
      ...others.map((nodeId) => ({ type: 'remove' as const, nodeId })),
    ];
    const entries: Entry[] = changes.map((change, k) => ({ kind: 'conf-change', term, index: last + 1 + k, change }));
    if (entries.length > 0) log.append(entries);
    log.commitTo(log.lastIndex());
    raft.becomeFollower(term, 0);
    return others;
  }

  tick(): void {
    this.#raft.tick();
  }

  /** A message from a peer, already validated by the transport. */
  step(message: Message): void {
    this.#raft.step(message);
  }

  /** Starts an election now (with pre-vote when enabled). */
  campaign(): void {
    this.#raft.campaign();
  }

  /**
   * Appends a command on the leader. Returns where it will be in the log: when the entry at
   * `index` is applied with this `term`, it committed; with another term, it was lost.
   * Throws RaftError NOT_LEADER (with the leader to retry at), TRANSFER_IN_PROGRESS,
   * ENTRY_TOO_LARGE or PROPOSALS_BACKLOGGED.
   */
  propose(data: Uint8Array): { index: number; term: number } {
    return this.#raft.propose(data);
  }

  /** Like `propose`, for a membership change; also CONF_CHANGE_PENDING or CONF_CHANGE_INVALID. */
  proposeConfChange(change: ConfChange): { index: number; term: number } {
    return this.#raft.proposeConfChange(change);
  }

  /**
   * Asks for a linearizable read point. The answer comes in a later Ready: a ReadState with
   * the same `context` (serve the read once applied reaches its index) or a ReadRefusal.
   * Contexts must be unique among reads in progress on this node.
   */
  readIndex(context: string): void {
    this.#raft.readIndex(context);
  }

  /** Hands leadership to `to` (a voter). Throws NOT_LEADER or TRANSFER_INVALID. */
  transferLeadership(to: NodeId): void {
    this.#raft.transferLeadership(to);
  }

  /** The transport found `peer` reachable again (see Raft.reportReachable). */
  reportReachable(peer: NodeId): void {
    this.#raft.reportReachable(peer);
  }

  /** The transport lost its connection to `peer` (see Raft.reportUnreachable). */
  reportUnreachable(peer: NodeId): void {
    this.#raft.reportUnreachable(peer);
  }

  /** The transport finished sending a snapshot to `peer`, or gave up. */
  reportSnapshot(peer: NodeId, ok: boolean): void {
    this.#raft.reportSnapshot(peer, ok);
  }

  hasReady(): boolean {
    const raft = this.#raft;
    const hard = raft.hardState();
    const soft = raft.softState();
    return (
      raft.messages.length > 0 ||
      raft.readHeartbeatPending ||
      raft.readStates.length > 0 ||
      raft.readRefusals.length > 0 ||
      raft.log.hasUnstableEntries() ||
      raft.log.pendingSnapshot !== null ||
      raft.log.hasNextCommittedEntries() ||
      !sameHardState(hard, this.#prevHardState) ||
      soft.lead !== this.#prevSoftState.lead ||
      soft.role !== this.#prevSoftState.role
    );
  }

  ready(): Ready {
    assert(this.#inFlight === null, 'ready() called again before advance()');
    const raft = this.#raft;
    raft.flushReadHeartbeat();
    const hard = raft.hardState();
    const soft = raft.softState();
    const hardChanged = !sameHardState(hard, this.#prevHardState);
    const entries = raft.log.unstableEntries();
    const snapshot = raft.log.pendingSnapshot;
    const ready: Ready = {
      softState: soft.lead !== this.#prevSoftState.lead || soft.role !== this.#prevSoftState.role ? soft : null,
      hardState: hardChanged ? hard : null,
      entries,
      snapshot,
      messages: raft.messages,
      committedEntries: raft.log.nextCommittedEntries(COMMITTED_ENTRIES_BYTES_MAX),
      readStates: raft.readStates,
      readRefusals: raft.readRefusals,
      mustSync:
        entries.length > 0 ||
        snapshot !== null ||
        hard.term !== this.#prevHardState.term ||
        hard.vote !== this.#prevHardState.vote,
    };
    raft.messages = [];
    raft.readStates = [];
    raft.readRefusals = [];
    if (ready.softState !== null) this.#prevSoftState = ready.softState;
    this.#inFlight = ready;
    return ready;
  }

  /** The application did everything the last Ready asked. */
  advance(): void {
    const ready = this.#inFlight;
    assert(ready !== null, 'advance() without a ready()');
    this.#inFlight = null;
    const raft = this.#raft;
    if (ready.hardState !== null) this.#prevHardState = ready.hardState;
    const lastEntry = ready.entries[ready.entries.length - 1];
    if (lastEntry !== undefined) {
      raft.log.stableTo(lastEntry.index, lastEntry.term);
      raft.onStable(raft.log.stableIndex());
    }
    if (ready.snapshot !== null) raft.log.snapshotApplied(ready.snapshot.metadata.index);
    // A snapshot received after this Ready was taken supersedes its older conf changes.
    const supersededUpTo = raft.log.pendingSnapshot?.metadata.index ?? 0;
    for (const entry of ready.committedEntries) {
      if (entry.index <= raft.log.applied) continue;
      if (entry.kind === 'conf-change' && entry.index > supersededUpTo) raft.applyConfChange(entry.change);
      raft.log.appliedTo(entry.index);
    }
  }

  /**
   * Records a snapshot of the application's state at the applied index (call between Readys),
   * so lagging followers can be sent it; it does not compact the log by itself.
   */
  /**
   * What a snapshot taken now covers: the applied index, its term and the membership as of it.
   * The application may build the snapshot's data later (from a point-in-time view of its state)
   * and hand both to `createSnapshot`, while entries go on being applied.
   */
  snapshotPoint(): SnapshotMetadata {
    assert(this.#inFlight === null, 'snapshotPoint() between ready() and advance()');
    const raft = this.#raft;
    const index = raft.log.applied;
    const term = raft.log.term(index);
    if (term === undefined || index === 0) {
      throw new RaftError('COMPACTION_INVALID', `no snapshot can be taken at applied index ${index}`);
    }
    return { index, term, confState: raft.confState() };
  }

  /** Records a snapshot of `data`, the state as of `at` (a `snapshotPoint()`, by default now). */
  createSnapshot(data: Uint8Array, at?: SnapshotMetadata): Snapshot {
    assert(this.#inFlight === null, 'createSnapshot() between ready() and advance()');
    const raft = this.#raft;
    const metadata = at ?? this.snapshotPoint();
    const { index } = metadata;
    if (index > raft.log.applied || raft.log.term(index) !== metadata.term) {
      throw new RaftError(
        'COMPACTION_INVALID',
        `no snapshot can be taken at index ${index} (term ${metadata.term}): applied ${raft.log.applied}, term there ${String(raft.log.term(index))}`,
      );
    }
    const current = raft.log.snapshot;
    if (current !== null && current.metadata.index > index) {
      throw new RaftError('COMPACTION_INVALID', `a newer snapshot (at ${current.metadata.index}) already exists`);
    }
    const snapshot: Snapshot = { metadata, data };
    raft.log.setSnapshot(snapshot);
    return snapshot;
  }

  /** Drops log entries up to `index`, which the newest snapshot must cover (keep a tail). */
  compact(index: number): void {
    assert(this.#inFlight === null, 'compact() between ready() and advance()');
    const log = this.#raft.log;
    const snapshotIndex = log.snapshot?.metadata.index ?? 0;
    if (index <= log.firstIndex() - 1 || index > snapshotIndex || index > log.applied) {
      throw new RaftError(
        'COMPACTION_INVALID',
        `cannot compact to ${index}: compacted to ${log.firstIndex() - 1}, snapshot at ${snapshotIndex}, applied ${log.applied}`,
      );
    }
    log.compact(index);
  }

  /** Everything, including the leader's view of each follower (allocates; not for hot paths). */
  status(): Status {
    return this.#raft.status();
  }

  /** The cheap part of the status, without the leader's progress map. */
  /** The index of a snapshot the core took and has not yet seen advanced past (null: none). */
  pendingSnapshotIndex(): number | null {
    return this.#raft.log.pendingSnapshot?.metadata.index ?? null;
  }

  basicStatus(): BasicStatus {
    const raft = this.#raft;
    return {
      id: raft.id,
      role: raft.role,
      lead: raft.lead,
      term: raft.term,
      commit: raft.log.committed,
      applied: raft.log.applied,
      firstIndex: raft.log.firstIndex(),
      lastIndex: raft.log.lastIndex(),
    };
  }

  /** The entry at `index` if this node still holds it (for checks and tests). */
  entry(index: number): Entry | undefined {
    return this.#raft.log.entry(index);
  }

  /** The term of the entry at `index`, if known. */
  termAt(index: number): number | undefined {
    return this.#raft.log.term(index);
  }

  checkInvariants(): void {
    this.#raft.checkInvariants();
  }
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}
