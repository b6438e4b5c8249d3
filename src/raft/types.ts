/**
 * The Raft core's data types. Terms and indexes are non-negative safe integers; node ids are
 * positive safe integers (0 means "none"). Values that come from the network or disk are
 * validated once at the gateway (transport, storage) and trusted here.
 */

export type NodeId = number;
/** "No node": no leader known, no vote cast. */
export const NONE: NodeId = 0;

export type ConfChangeType = 'add-voter' | 'add-learner' | 'remove';

/**
 * One membership change. Changes are applied one at a time (the leader refuses a new one while
 * an earlier one is unapplied). `add-voter` on a learner promotes it; `add-learner` on a voter
 * demotes it.
 */
export interface ConfChange {
  readonly type: ConfChangeType;
  readonly nodeId: NodeId;
}

/** The membership as of some log index. */
export interface ConfState {
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

export type Entry = NormalEntry | ConfChangeEntry;

interface EntryBase {
  readonly term: number;
  readonly index: number;
}

/** A command for the state machine. A leader appends one with empty `data` when elected. */
export interface NormalEntry extends EntryBase {
  readonly kind: 'normal';
  readonly data: Uint8Array;
}

/** A membership change; it takes effect on a node when that node applies it (`advance`). */
export interface ConfChangeEntry extends EntryBase {
  readonly kind: 'conf-change';
  readonly change: ConfChange;
}

/**
 * Term, vote and commit: one record, always persisted together (a crash between writing the
 * term and the vote could otherwise let a node vote twice in one term).
 */
export interface HardState {
  readonly term: number;
  readonly vote: NodeId;
  readonly commit: number;
}

export interface SnapshotMetadata {
  /** The last log index the snapshot covers, and its term. */
  readonly index: number;
  readonly term: number;
  /** The membership as of `index`. */
  readonly confState: ConfState;
}

/** A state machine image up to `metadata.index`. `data` is opaque to Raft. */
export interface Snapshot {
  readonly metadata: SnapshotMetadata;
  readonly data: Uint8Array;
}

export type Role = 'follower' | 'pre-candidate' | 'candidate' | 'leader';

/** Volatile state worth telling the application about (who leads, what we are). */
export interface SoftState {
  readonly lead: NodeId;
  readonly role: Role;
}

/**
 * A linearizable read point: once the application has applied up to `index`, a read for
 * `context` may be served from local state.
 */
export interface ReadState {
  readonly context: string;
  readonly index: number;
}

/** A read request that cannot be served; the caller should retry (perhaps elsewhere). */
export interface ReadRefusal {
  readonly context: string;
  readonly reason: ReadRefusalReason;
}

export type ReadRefusalReason =
  /** The leader has not yet committed an entry of its term, so its commit index may be stale. */
  | 'leader-not-ready'
  /** This node knows no leader to ask. */
  | 'no-leader'
  /** The leader lost leadership before the read was confirmed by a quorum. */
  | 'leadership-lost'
  /** Too many reads are waiting for confirmation. */
  | 'too-many-pending';

// ---------------------------------------------------------------------------------------------
// Messages between nodes. Each kind carries only what it needs.
// ---------------------------------------------------------------------------------------------

interface MessageBase {
  readonly from: NodeId;
  readonly to: NodeId;
  readonly term: number;
}

/** Leader -> follower: entries following (prevIndex, prevTerm), and the leader's commit. */
export interface AppendMessage extends MessageBase {
  readonly type: 'append';
  readonly prevIndex: number;
  readonly prevTerm: number;
  readonly entries: readonly Entry[];
  readonly commit: number;
}

/**
 * Follower -> leader. Accepted: `index` is the last index now known to match the leader.
 * Rejected: `index` is the rejected prevIndex, and (hintIndex, hintTerm) let the leader skip
 * every index that cannot match in one step (fast backtracking).
 */
export interface AppendResponseMessage extends MessageBase {
  readonly type: 'append-response';
  readonly index: number;
  readonly reject: boolean;
  readonly hintIndex: number;
  readonly hintTerm: number;
}

/**
 * Candidate -> all voters. For a pre-vote, `term` is the term the sender would campaign in;
 * its own term has not changed. `transfer` marks a campaign started by a leadership transfer,
 * which voters honour even while they still hear from a leader.
 */
export interface VoteMessage extends MessageBase {
  readonly type: 'vote' | 'pre-vote';
  readonly lastIndex: number;
  readonly lastTerm: number;
  readonly transfer: boolean;
}

export interface VoteResponseMessage extends MessageBase {
  readonly type: 'vote-response' | 'pre-vote-response';
  readonly reject: boolean;
}

/** Leader -> follower: "I am still leader". `readSeq` > 0 asks the follower to confirm it. */
export interface HeartbeatMessage extends MessageBase {
  readonly type: 'heartbeat';
  readonly commit: number;
  readonly readSeq: number;
}

export interface HeartbeatResponseMessage extends MessageBase {
  readonly type: 'heartbeat-response';
  readonly readSeq: number;
}

/** Leader -> follower too far behind for the log: the whole state machine image. */
export interface SnapshotMessage extends MessageBase {
  readonly type: 'snapshot';
  readonly snapshot: Snapshot;
}

/** Leader -> transfer target: "campaign now", skipping pre-vote and the election timeout. */
export interface TimeoutNowMessage extends MessageBase {
  readonly type: 'timeout-now';
}

/** Follower -> leader: "tell me a safe read index for `context`". */
export interface ReadIndexMessage extends MessageBase {
  readonly type: 'read-index';
  readonly context: string;
}

export interface ReadIndexResponseMessage extends MessageBase {
  readonly type: 'read-index-response';
  readonly context: string;
  readonly index: number;
  /** Set when the leader refuses: `index` is then meaningless. */
  readonly refusal: ReadRefusalReason | null;
}

export type Message =
  | AppendMessage
  | AppendResponseMessage
  | VoteMessage
  | VoteResponseMessage
  | HeartbeatMessage
  | HeartbeatResponseMessage
  | SnapshotMessage
  | TimeoutNowMessage
  | ReadIndexMessage
  | ReadIndexResponseMessage;

export type MessageType = Message['type'];

/**
 * What the application must do, in this order, before calling `advance()`:
 *
 * 1. Persist, in ONE atomic write, synced if `mustSync`: `hardState` (if set), `entries` (if any; they
 *    replace every persisted entry from `entries[0].index` on), and `snapshot` (if set; it
 *    replaces the whole persisted log, and `entries`, if any, follow it). Nothing of this Ready may be sent or applied
 *    before this write is durable: a vote or an acknowledgement sent before its record is on
 *    disk can be forgotten by a crash, and Raft's safety rests on not forgetting. The one
 *    exception: `append` messages (a leader's) may be sent before or during the write, so the
 *    followers' writes overlap the leader's (thesis §10.2.1). That is safe because a leader
 *    counts itself towards a quorum only for entries it has persisted (advance() tells it).
 * 2. Send `messages` (after step 1; unreliable delivery is fine, Raft retries).
 * 3. If `snapshot` is set, restore the state machine from it; then apply `committedEntries` in
 *    order. Conf-change entries are applied to the Raft configuration by the core itself at
 *    `advance()`; the application only needs to learn of them (e.g. to dial a new peer).
 * 4. Release `readStates` once the applied index reaches each one's index; fail `readRefusals`.
 * 5. Call `advance()`.
 */
export interface Ready {
  /** Set when the leader or role changed since the last Ready. Not persisted. */
  readonly softState: SoftState | null;
  /** Set when term, vote or commit changed since the last Ready. */
  readonly hardState: HardState | null;
  readonly entries: readonly Entry[];
  readonly snapshot: Snapshot | null;
  readonly messages: readonly Message[];
  readonly committedEntries: readonly Entry[];
  readonly readStates: readonly ReadState[];
  readonly readRefusals: readonly ReadRefusal[];
  /**
   * Whether step 1's write must be synced before anything of this Ready goes out: true when it
   * holds entries, a snapshot, or a new term or vote (what votes and acknowledgements rest on).
   * False when there is nothing to write, or when only the commit index moved: that is written
   * without a sync, since a commit index lost in a crash is learnt again from the leader.
   */
  readonly mustSync: boolean;
}

/** What a restarted node was given back from its stable storage. */
export interface PersistedState {
  readonly hardState: HardState;
  /** The newest persisted snapshot, if any. */
  readonly snapshot: Snapshot | null;
  /**
   * Persisted entries in index order, contiguous. They may start before the snapshot's index
   * (a tail kept for slow followers) but must reach at least its index when both exist.
   */
  readonly entries: readonly Entry[];
}

/** Per-follower replication state as the leader sees it. */
export type ProgressState = 'probe' | 'replicate' | 'snapshot';

export interface ProgressStatus {
  readonly match: number;
  readonly next: number;
  readonly state: ProgressState;
  readonly learner: boolean;
  /** Heard from within the current or the previous check-quorum period (an election timeout each). */
  readonly recentActive: boolean;
  readonly inflight: number;
  /** In the snapshot state: the index of the snapshot being sent (0 otherwise). */
  readonly pendingSnapshot: number;
}

export interface BasicStatus {
  readonly id: NodeId;
  readonly role: Role;
  readonly lead: NodeId;
  readonly term: number;
  readonly commit: number;
  readonly applied: number;
  readonly firstIndex: number;
  readonly lastIndex: number;
}

export interface Status extends BasicStatus {
  readonly vote: NodeId;
  readonly confState: ConfState;
  readonly leadTransferee: NodeId;
  /** Present on the leader only. */
  readonly progress: ReadonlyMap<NodeId, ProgressStatus> | null;
}
