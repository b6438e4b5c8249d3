import { RaftError } from '../raft/errors.ts';
import { isDiskFull } from '../util/disk-full.ts';
import { entryBytes } from '../raft/log.ts';
import { COMMITTED_ENTRIES_BYTES_MAX, RawNode } from '../raft/raw-node.ts';
import type { RaftConfigInput } from '../raft/config.ts';
import type {
  ConfChange,
  Entry,
  HardState,
  Message,
  NodeId,
  Ready,
  ReadRefusalReason,
  SnapshotMessage,
  SnapshotMetadata,
  Status,
} from '../raft/types.ts';
import type { RaftStorage } from '../storage/types.ts';
import { AssertionError, assert } from '../util/assert.ts';
import { reached } from '../util/crash-points.ts';
import type { Random } from '../util/prng.ts';

/**
 * The application state the log drives. `apply` must be deterministic: every manager applies
 * the same entries in the same order and must end in the same state.
 */
export interface StateMachine<Result> {
  apply(entry: Entry): Result;
  /**
   * An image of the whole state as of the last applied entry. A promise must capture that
   * moment when it is made (a point-in-time view): the replica goes on applying while a periodic
   * snapshot's image is read.
   */
  snapshot(): Uint8Array | Promise<Uint8Array>;
  /** Replaces the whole state with an image made by `snapshot`, of the state at log index `index`. */
  restore(data: Uint8Array, index: number): void | Promise<void>;
  /**
   * Local effects of the entries just applied (e.g. rewrapping this manager's key record), made
   * durable before their proposers hear back; may ask for a snapshot at once.
   */
  afterApply?(options?: { readonly deferState?: boolean }): Promise<SnapshotRequest | null>;
  /**
   * Whether entries applied hold changes the state's store has not written yet (`afterApply`
   * with `deferState` may leave them in memory: the log holds them, and reads see them).
   */
  readonly statePending?: boolean;
  /** Writes the changes `afterApply` left in memory (not synced: the log holds them). */
  writeState?(): Promise<void>;
  /**
   * Whether the entries just applied have local effects or a snapshot to make durable before
   * their proposers hear back; false lets the replica answer them before `afterApply` (which
   * then only writes what the log already holds). Absent: answers always wait for `afterApply`.
   */
  answersWaitForAfterApply?(): boolean;
  /** A snapshot made by `snapshot()` is now durable. */
  snapshotDurable?(): Promise<void>;
  /**
   * Changes applied beyond one per entry since the process started (a batch of 256 puts in one
   * entry adds 255), so that snapshots come after `snapshotEveryEntries` changes, not entries: a
   * state loaded in batches is otherwise a few hundred entries, and a new member is sent the log
   * and applies every batch instead of being streamed the records. Absent: one change per entry.
   */
  readonly batchedChanges?: number;
  /**
   * A state whose bulk lives in a store of its own: `snapshot()` is then a small descriptor that
   * stands for the store, and a snapshot sent to another manager is that descriptor plus the
   * store's records as a stream of chunks, both as of the moment of the call (synchronous).
   * Null: the descriptor alone is the whole state (send it as it is).
   */
  snapshotStream?(): { readonly data: Uint8Array; readonly records: SnapshotChunks } | null;
  /** Before a `snapshotStream()` is taken (the barrier reserves the nonce uses of its seal). */
  beforeSnapshotStream?(): Promise<void>;
  /** Writes the record chunks a leader streams for its snapshot at `index` aside, before Raft sees the snapshot. */
  prepareSnapshot?(index: number, chunks: AsyncIterable<Uint8Array>): Promise<void>;
  /** Raft accepted the snapshot at `index`: switch to its prepared records (before its descriptor is persisted). */
  installSnapshot?(index: number): Promise<void>;
  /** Raft did not take the snapshot at `index`: drop its records prepared aside, if they are still there. */
  discardSnapshot?(index: number): Promise<void>;
  /**
   * Makes the state's store durable through every entry applied, up to `appliedIndex` (entries
   * that changed nothing in it included): before a snapshot standing for it is saved.
   */
  syncState?(appliedIndex: number): Promise<void>;
  /**
   * At start: restores the state its own store holds, if that is at `atLeast` (the newest
   * snapshot's index) or later; returns its index (the replica then applies only what follows),
   * or null (the replica restores the snapshot and replays the log after it).
   */
  restoreStored?(atLeast: number): Promise<number | null>;
  /** After a key was destroyed: rewrite the state's store so its deleted records leave the disk. */
  reclaimState?(): Promise<void>;
}

export interface SnapshotRequest {
  readonly reason: string;
  /** Drop the whole log up to the snapshot, keeping no tail (key rotation: old ciphertext goes). */
  readonly compactAll: boolean;
  /** Ask the storage to reclaim the space of deleted records, so they leave the disk too. */
  readonly reclaimDisk: boolean;
}

/** Where messages to peers go; the mTLS transport plugs in here (a later issue). */
export interface PeerSender {
  send(messages: readonly Message[]): void;
  /** A snapshot whose records follow its descriptor as a stream of chunks (read as they are sent). */
  sendSnapshot?(message: SnapshotMessage, records: SnapshotChunks): void;
}

/**
 * A snapshot's records as chunks, read as they are sent. They hold a point-in-time view of the
 * state's store open: whoever takes them reads them to the end or calls `close`.
 */
export interface SnapshotChunks extends AsyncIterable<Uint8Array> {
  close(): Promise<void>;
}

/**
 * Timings the replica reports as it works (metrics plug in here; the replica knows no metrics
 * library). Seconds, measured with performance.now().
 */
export interface ReplicaObserver {
  /** One synced storage write of `entries` entries took `seconds`. */
  persisted(seconds: number, entries: number): void;
  /** A proposal made here was durably in this manager's log `seconds` after it was proposed. */
  proposed(seconds: number): void;
  /** A proposal made here was committed `seconds` after it was proposed. */
  committed(seconds: number): void;
  /** ... and applied here `seconds` after it was proposed (what its proposer waits). */
  applied(seconds: number): void;
  /** A linearizable read got its read index, and the state caught up to it, after `seconds`. */
  readIndex(seconds: number): void;
  /** The leader this replica knows changed (0: none known). */
  leaderChanged(lead: NodeId): void;
}

export interface ReplicaOptions<Result> {
  readonly id: NodeId;
  readonly storage: RaftStorage;
  readonly stateMachine: StateMachine<Result>;
  readonly peers: PeerSender;
  readonly random: Random;
  /** Founding voters, used only when the storage is empty (a brand-new cluster). */
  readonly bootstrapVoters?: readonly NodeId[];
  readonly raft?: Partial<Omit<RaftConfigInput, 'id' | 'random'>>;
  /**
   * Take a snapshot and compact after this many applied changes (10,000: docs/design.md, "Snapshots
   * and compaction"): an entry is one change, a batch of puts one per item (`batchedChanges`).
   */
  readonly snapshotEveryEntries?: number;
  /** ... or once the entries applied since the last snapshot hold this many bytes, if sooner. */
  readonly snapshotEveryBytes?: number;
  /** Entries kept before the snapshot for slow followers. */
  readonly snapshotTailEntries?: number;
  /** ... and at most this many bytes of them. */
  readonly snapshotTailBytesMax?: number;
  readonly observer?: ReplicaObserver;
  /**
   * The Ready loop failed (a write to the Raft storage or the state refused, an invariant broken):
   * the replica stopped there, every request waiting on it was refused, and so is every later
   * one. The process should say why and exit; a supervisor restarts it from what is on disk.
   */
  readonly onFailure?: (error: Error) => void;
  /**
   * Quorum-loss recovery: take this node's whole log as committed and become the only voter
   * (RawNode.forceNewCluster). Only for a node with a log.
   */
  readonly forceNewCluster?: boolean;
}

export const SNAPSHOT_EVERY_ENTRIES = 10_000;
/**
 * A snapshot also once the entries applied since the last one hold 64 MiB (entryBytes: data plus
 * 16), whichever comes first: the count alone let 10,000 entries of 1 MiB (10 GiB) pile up in
 * memory. 64 MiB matches the core's uncommittedBytesMax, so the log in memory holds at most about
 * 64 MiB uncommitted + 64 MiB applied + the tail (+ one Ready's 16 MiB of committed entries).
 * The cost: a whole-state snapshot per 64 MiB written.
 */
export const SNAPSHOT_EVERY_BYTES = 64 * 1024 * 1024;
export const SNAPSHOT_TAIL_ENTRIES = 1_000;
/**
 * The tail kept behind a snapshot holds at most 16 MiB too (16 entries of the largest size): a
 * follower further behind than that is sent the snapshot.
 */
export const SNAPSHOT_TAIL_BYTES_MAX = 16 * 1024 * 1024;
/** Ticks a read-index request may go unanswered before it is sent again (an election timeout). */
export const READ_INDEX_RETRY_TICKS = 10;
/**
 * Ticks a follower has to answer a snapshot sent to it (30 election timeouts: it writes what
 * the stream buffered, switches its store, persists the descriptor) before the snapshot is taken
 * as lost and sent again.
 */
export const SNAPSHOT_ACK_TIMEOUT_TICKS = 300;
/** Requests remembered for the batch that is out (the oldest is forgotten beyond). */
const READ_CONTEXTS_MAX = 64;
/** Reads waiting locally for their read index before the replica refuses more. */
export const LOCAL_READS_MAX = 65_536;

export type ReplicaErrorCode = 'PROPOSAL_LOST' | 'READ_REFUSED' | 'REPLICA_STOPPED' | 'REPLICA_FAILED' | 'DISK_FULL';

export class ReplicaError extends Error {
  override name = 'ReplicaError';
  readonly code: ReplicaErrorCode;
  /** Why the Raft core refused a read (READ_REFUSED from the core; null otherwise). */
  readonly readRefusal: ReadRefusalReason | null;

  constructor(code: ReplicaErrorCode, message: string, readRefusal: ReadRefusalReason | null = null) {
    super(message);
    this.code = code;
    this.readRefusal = readRefusal;
  }
}

interface Waiter<T> {
  resolve(value: T): void;
  reject(error: Error): void;
}

export interface ReplicaStats {
  /** Synced storage writes (one per Ready that had something to persist). */
  syncs: number;
  /** Entries persisted through those writes. */
  entriesPersisted: number;
  snapshots: number;
  /** Background snapshot builds that failed and were dropped (the next interval tries again). */
  snapshotBuildsDropped: number;
}

/**
 * The one IO loop of a manager: clock -> tick; peers -> step; Ready -> persist (one synced
 * write) -> send -> apply -> advance. Proposals that arrive while a write is being synced are
 * taken by the core at once and leave in the next Ready together: that is the group commit, so
 * throughput is not one fsync per write.
 */
export class Replica<Result> {
  readonly id: NodeId;
  readonly #raw: RawNode;
  readonly #storage: RaftStorage;
  readonly #stateMachine: StateMachine<Result>;
  readonly #peers: PeerSender;
  readonly #snapshotEvery: number;
  readonly #snapshotEveryBytes: number;
  readonly #snapshotTail: number;
  readonly #snapshotTailBytes: number;
  /** Followers sent a snapshot, and the ticks left for their answer (see reportSnapshot). */
  readonly #snapshotAcks = new Map<NodeId, number>();
  /**
   * A tick passed since the state's store was last written: the next Ready writes it (or the loop
   * does, if none comes and changes are pending). In between, Readys leave their changes in memory
   * (afterApply's `deferState`): each write is a trip to the thread pool that the Ready loop waits
   * for, and under load it came once per Ready. Reads see the changes in memory; the log holds
   * them for a restart to apply again.
   */
  #stateWriteDue = true;
  /** The newest hard state whose only change was the commit index, while no write has carried it. */
  #hardStateUnwritten: HardState | null = null;
  /** Bytes of the entries applied since the last snapshot (entryBytes). */
  #bytesSinceSnapshot = 0;
  /** Proposals by index, with the term they must be applied in. */
  readonly #proposals = new Map<number, { term: number; waiter: Waiter<Result>; startMs: number }>();
  /**
   * Linearizable reads, batched as etcd does: reads that arrive while a read-index request is out
   * wait for the next one, and one request (one context, one heartbeat round on the leader)
   * serves every read queued before it was made. Any read index obtained after a read arrived is
   * a valid one for it. Then they wait for the applied index to reach it.
   */
  #readsQueued: Array<Waiter<number>> = [];
  /**
   * The batch whose request is out (one at a time), the contexts it was sent under, and ticks
   * since it was last sent. A batch asked again keeps its earlier contexts: an answer to any of
   * them was obtained after all of its reads arrived, so the first to come releases it (a retry
   * must not throw away an answer that was merely slow). Answers to other contexts are ignored.
   */
  #readInFlight: { readonly waiters: Array<Waiter<number>>; readonly contexts: Set<string>; ticks: number } | null =
    null;
  /** Tells this replica's contexts from an earlier one's in the same process (lock, unlock). */
  readonly #readContextPrefix: string;
  #readsAwaitingApply: Array<{ index: number; waiter: Waiter<number> }> = [];
  #readRequestDue = false;
  readonly #observer: ReplicaObserver | null;
  #lead: NodeId = 0;
  #readSeq = 0;
  #applied: number;
  #lastSnapshotIndex: number;
  /** The state machine's `batchedChanges` when the last snapshot was due (see #changesSinceSnapshot). */
  #batchedAtSnapshot = 0;
  /** A periodic snapshot being built in the background (see #maybeSnapshot), and one built, to save. */
  #building: Promise<void> | null = null;
  #built: { at: SnapshotMetadata; data: Uint8Array | null; error: unknown } | null = null;
  #running = false;
  #stopped = false;
  /** The streamed snapshot being received, until its records are installed or dropped (receiveSnapshot). */
  #receiving: Promise<void> = Promise.resolve();
  /** Receipts waiting for the loop to handle the snapshot the core took (resolved at each one handled). */
  #snapshotsHandled: Array<() => void> = [];
  /** Why the Ready loop stopped the replica (null while it runs, or after a plain stop). */
  #failure: Error | null = null;
  readonly #onFailure: ((error: Error) => void) | null;
  #idle: Promise<void> = Promise.resolve();
  readonly stats: ReplicaStats = { syncs: 0, entriesPersisted: 0, snapshots: 0, snapshotBuildsDropped: 0 };
  /** Where the state stood when the replica started, and whether its own store gave it (nothing replayed up to there). */
  startedFrom: { readonly index: number; readonly fromStore: boolean } = { index: 0, fromStore: false };
  /** Members a force-new-cluster start removed (empty otherwise). */
  forcedOut: readonly NodeId[] = [];

  private constructor(options: ReplicaOptions<Result>, raw: RawNode, applied: number) {
    this.id = options.id;
    this.#raw = raw;
    this.#storage = options.storage;
    this.#stateMachine = options.stateMachine;
    this.#peers = options.peers;
    this.#snapshotEvery = options.snapshotEveryEntries ?? SNAPSHOT_EVERY_ENTRIES;
    this.#snapshotEveryBytes = options.snapshotEveryBytes ?? SNAPSHOT_EVERY_BYTES;
    this.#snapshotTail = options.snapshotTailEntries ?? SNAPSHOT_TAIL_ENTRIES;
    this.#snapshotTailBytes = options.snapshotTailBytesMax ?? SNAPSHOT_TAIL_BYTES_MAX;
    this.#observer = options.observer ?? null;
    this.#onFailure = options.onFailure ?? null;
    this.#readContextPrefix = `${options.id}.${options.random.int(2 ** 31).toString(36)}`;
    this.#applied = applied;
    this.#lastSnapshotIndex = applied;
    this.#batchedAtSnapshot = this.#batchedChanges();
  }

  #batchedChanges(): number {
    return this.#stateMachine.batchedChanges ?? 0;
  }

  /** Changes applied since the last snapshot: entries, plus what batches added beyond one each. */
  #changesSinceSnapshot(): number {
    return this.#applied - this.#lastSnapshotIndex + (this.#batchedChanges() - this.#batchedAtSnapshot);
  }

  #snapshotCounted(index: number): void {
    this.#lastSnapshotIndex = index;
    this.#batchedAtSnapshot = this.#batchedChanges();
    this.#bytesSinceSnapshot = 0;
  }

  /** Loads the storage, restores the state machine from the snapshot and starts the node. */
  static async start<Result>(options: ReplicaOptions<Result>): Promise<Replica<Result>> {
    for (const [name, min] of [
      ['snapshotEveryEntries', 1],
      ['snapshotEveryBytes', 1],
      ['snapshotTailEntries', 0],
      ['snapshotTailBytesMax', 0],
    ] as const) {
      const value = options[name];
      if (value !== undefined && !(Number.isSafeInteger(value) && value >= min))
        throw new TypeError(`replica option ${name} must be a whole number of at least ${min}: got ${value}`);
    }
    const persisted = await options.storage.load();
    const empty = persisted.entries.length === 0 && persisted.snapshot === null && persisted.hardState.term === 0;
    const raw = new RawNode({ ...options.raft, id: options.id, random: options.random }, empty ? undefined : persisted);
    const snapshotIndex = persisted.snapshot?.metadata.index ?? 0;
    // The state's own store may hold it as of a later index than the snapshot (every batch is
    // written with its index): then nothing up to there is restored or applied again.
    const stored = empty ? null : ((await options.stateMachine.restoreStored?.(snapshotIndex)) ?? null);
    if (stored === null && persisted.snapshot !== null)
      await options.stateMachine.restore(persisted.snapshot.data, persisted.snapshot.metadata.index);
    const applied = stored ?? snapshotIndex;
    if (empty && options.bootstrapVoters !== undefined) raw.bootstrap(options.bootstrapVoters);
    if (options.forceNewCluster === true && empty)
      throw new TypeError('force-new-cluster needs a data directory with a log: this one is empty');
    const forcedOut = options.forceNewCluster === true ? raw.forceNewCluster() : [];
    const replica = new Replica(options, raw, applied);
    replica.startedFrom = { index: applied, fromStore: stored !== null };
    replica.forcedOut = forcedOut;
    replica.#kick();
    return replica;
  }

  get raw(): Pick<RawNode, 'status' | 'basicStatus' | 'entry'> {
    return this.#raw;
  }

  /** The transport found `peer` reachable again (it dialled in). */
  reportReachable(peer: NodeId): void {
    this.#raw.reportReachable(peer);
    this.#kick();
  }

  /** The transport lost its stream to `peer`. */
  reportUnreachable(peer: NodeId): void {
    this.#raw.reportUnreachable(peer);
    this.#kick();
  }

  /** The transport finished sending a snapshot to `peer` (or gave up). */
  reportSnapshot(peer: NodeId, ok: boolean): void {
    if (ok) {
      // Sent is not yet installed: the follower may still be writing what the stream buffered.
      // Its answer to the snapshot moves its progress on; told "done" now, the core would probe
      // it, hear that it lacks the log, and send the whole snapshot again (a catch-up under load
      // streamed twice). If no answer comes in time, the snapshot is taken as lost.
      this.#snapshotAcks.set(peer, SNAPSHOT_ACK_TIMEOUT_TICKS);
      return;
    }
    this.#snapshotAcks.delete(peer);
    this.#raw.reportSnapshot(peer, false);
    this.#kick();
  }

  transferLeadership(to: NodeId): void {
    this.#raw.transferLeadership(to);
    this.#kick();
  }

  tick(): void {
    this.#raw.tick();
    this.#stateWriteDue = true;
    for (const [peer, left] of this.#snapshotAcks) {
      if (left > 1) this.#snapshotAcks.set(peer, left - 1);
      else {
        this.#snapshotAcks.delete(peer);
        // Still unanswered: the core sends it again if the follower still needs it (a follower
        // that did answer left the snapshot state, and this changes nothing).
        this.#raw.reportSnapshot(peer, false);
      }
    }
    // A read-index request or its answer can be lost (the leader died, the stream broke): ask
    // again, for the same reads, after an election timeout without an answer.
    const inFlight = this.#readInFlight;
    if (inFlight !== null && ++inFlight.ticks >= READ_INDEX_RETRY_TICKS) this.#sendReadIndex();
    this.#kick();
  }

  /** Sends one read-index request for every queued read, unless one is already out. */
  #requestReadIndex(): void {
    if (this.#readInFlight !== null || this.#readsQueued.length === 0 || this.#stopped) return;
    this.#readInFlight = { waiters: this.#readsQueued, contexts: new Set(), ticks: 0 };
    this.#readsQueued = [];
    this.#sendReadIndex();
  }

  /** Sends the request for the batch that is out, first or again (reads queued since wait for their own). */
  #sendReadIndex(): void {
    const inFlight = this.#readInFlight;
    if (inFlight === null || this.#stopped) return;
    const context = `${this.#readContextPrefix}:${++this.#readSeq}`;
    // Bounded: a batch nobody answers is asked again once per election timeout.
    if (inFlight.contexts.size >= READ_CONTEXTS_MAX) inFlight.contexts.delete(inFlight.contexts.values().next().value!);
    inFlight.contexts.add(context);
    inFlight.ticks = 0;
    this.#raw.readIndex(context);
  }

  /** The reads out under `context`, once: answers to any other context find nothing. */
  #takeReadBatch(context: string): Array<Waiter<number>> | null {
    const inFlight = this.#readInFlight;
    if (inFlight === null || !inFlight.contexts.has(context)) return null;
    this.#readInFlight = null;
    return inFlight.waiters;
  }

  step(message: Message): void {
    this.#raw.step(message);
    this.#kick();
  }

  campaign(): void {
    this.#raw.campaign();
    this.#kick();
  }

  /**
   * Proposes a command; resolves with the state machine's result once it is committed and
   * applied here. Rejects with RaftError (NOT_LEADER with the leader, ...) at once, or with
   * ReplicaError PROPOSAL_LOST if a leader change dropped it.
   */
  propose(data: Uint8Array): Promise<Result> {
    return this.#proposeWith(() => this.#raw.propose(data));
  }

  /** Proposes a membership change; resolves once it is applied here (the change then holds). */
  proposeConfChange(change: ConfChange): Promise<Result> {
    return this.#proposeWith(() => this.#raw.proposeConfChange(change));
  }

  #proposeWith(propose: () => { index: number; term: number }): Promise<Result> {
    if (this.#stopped) return Promise.reject(this.#stoppedError());
    let at: { index: number; term: number };
    try {
      at = propose();
    } catch (error) {
      return Promise.reject(error instanceof RaftError ? error : new Error(String(error)));
    }
    const promise = new Promise<Result>((resolve, reject) =>
      this.#proposals.set(at.index, { term: at.term, waiter: { resolve, reject }, startMs: performance.now() }),
    );
    this.#kick();
    return promise;
  }

  /** Resolves with an index once this replica has applied every write committed before the call. */
  linearizableRead(): Promise<number> {
    if (this.#stopped) return Promise.reject(this.#stoppedError());
    if (
      this.#readsQueued.length + (this.#readInFlight?.waiters.length ?? 0) + this.#readsAwaitingApply.length >=
      LOCAL_READS_MAX
    ) {
      return Promise.reject(
        new ReplicaError('READ_REFUSED', `more than ${LOCAL_READS_MAX} reads are waiting; retry later`),
      );
    }
    const observer = this.#observer;
    const startMs = performance.now();
    const promise = new Promise<number>((resolve, reject) =>
      this.#readsQueued.push({
        resolve:
          observer === null
            ? resolve
            : (index) => {
                observer.readIndex((performance.now() - startMs) / 1000);
                resolve(index);
              },
        reject,
      }),
    );
    // Reads that arrive in the same turn of the event loop share the request.
    if (!this.#readRequestDue) {
      this.#readRequestDue = true;
      queueMicrotask(() => {
        this.#readRequestDue = false;
        this.#requestReadIndex();
        this.#kick();
      });
    }
    return promise;
  }

  /** Waits until no Ready is being processed. */
  async settled(): Promise<void> {
    while (this.#running) await this.#idle;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.settled();
    // A background snapshot still reading the state: let it end before the state is closed.
    while (this.#building !== null) await this.#building;
    // What the last Readys left in memory is written, so that a restart need not apply it again.
    // A failed write loses nothing (the log holds those entries); a broken invariant still throws.
    if (this.#failure === null)
      await this.#writeLeftovers().catch((error: unknown) => {
        if (error instanceof AssertionError) throw error;
      });
    this.#releaseSnapshotWaiters();
    const stopped = new ReplicaError('REPLICA_STOPPED', 'the replica stopped before the request finished');
    for (const { waiter } of this.#proposals.values()) waiter.reject(stopped);
    for (const waiter of [...this.#readsQueued, ...(this.#readInFlight?.waiters ?? [])]) waiter.reject(stopped);
    for (const { waiter } of this.#readsAwaitingApply) waiter.reject(stopped);
    this.#proposals.clear();
    this.#readsQueued = [];
    this.#readInFlight = null;
    this.#readsAwaitingApply = [];
  }

  #releaseSnapshotWaiters(): void {
    const waiting = this.#snapshotsHandled;
    this.#snapshotsHandled = [];
    for (const resolve of waiting) resolve();
  }

  /** Why the replica failed, if its Ready loop stopped it (see ReplicaOptions.onFailure). */
  get failure(): Error | null {
    return this.#failure;
  }

  #stoppedError(): ReplicaError {
    if (this.#failure !== null && isDiskFull(this.#failure))
      return new ReplicaError(
        'DISK_FULL',
        "this manager's disk is full: it serves nothing until space is freed in its data directory, then resumes by itself; another manager can serve",
      );
    return this.#failure === null
      ? new ReplicaError('REPLICA_STOPPED', 'the replica is stopped')
      : new ReplicaError(
          'REPLICA_FAILED',
          "this manager's replica stopped on an error it cannot recover from (the manager's log says which); another manager can serve",
        );
  }

  /**
   * The Ready loop threw: the core is between ready() and advance() and nothing it handed out can
   * be taken as done, so the replica stops here (a loop that went on would ask the core for a
   * Ready it cannot give, again and again) and says why.
   */
  #fail(error: unknown): void {
    if (this.#failure !== null) return;
    this.#failure = error instanceof Error ? error : new Error(String(error));
    this.#stopped = true;
    this.#releaseSnapshotWaiters();
    const failed = this.#stoppedError();
    for (const { waiter } of this.#proposals.values()) waiter.reject(failed);
    for (const waiter of [...this.#readsQueued, ...(this.#readInFlight?.waiters ?? [])]) waiter.reject(failed);
    for (const { waiter } of this.#readsAwaitingApply) waiter.reject(failed);
    this.#proposals.clear();
    this.#readsQueued = [];
    this.#readInFlight = null;
    this.#readsAwaitingApply = [];
    this.#onFailure?.(this.#failure);
  }

  /** Starts the Ready loop unless it is already running (it then picks up the new work). */
  #kick(): void {
    if (this.#running || this.#stopped) return;
    this.#running = true;
    this.#idle = this.#loop()
      .catch((error: unknown) => this.#fail(error))
      .finally(() => {
        this.#running = false;
        // Work that arrived between the loop's last check and now must not wait for a tick.
        if (!this.#stopped && this.#hasWork()) this.#kick();
      });
  }

  #hasWork(): boolean {
    return (
      this.#raw.hasReady() ||
      this.#built !== null ||
      (this.#stateWriteDue && (this.#stateMachine.statePending === true || this.#hardStateUnwritten !== null))
    );
  }

  async #loop(): Promise<void> {
    while (!this.#stopped && this.#hasWork()) {
      if (!this.#raw.hasReady()) {
        if (this.#built !== null) await this.#saveBuilt();
        else {
          // A tick after they were applied: the state's pending changes, and the commit index.
          this.#stateWriteDue = false;
          await this.#writeLeftovers();
        }
        continue;
      }
      const ready = this.#raw.ready();
      // 1. Persist: one atomic, synced write (the core's contract).
      if (ready.softState !== null && ready.softState.lead !== this.#lead) {
        this.#lead = ready.softState.lead;
        this.#observer?.leaderChanged(this.#lead);
        // A request sent to the old leader may never be answered.
        if (this.#lead !== 0) this.#sendReadIndex();
      }
      // A leader's appends leave before its own write, so the followers' writes overlap it (the
      // Ready contract allows it for appends only); everything else waits for the write.
      const early = ready.messages.filter((m) => m.type === 'append');
      let late = early.length === 0 ? ready.messages : ready.messages.filter((m) => m.type !== 'append');
      // A state with a store of its own sends snapshots as of its applied point, streamed: taken
      // after this Ready is applied and advanced (the point must not be between the two).
      let snapshots: SnapshotMessage[] = [];
      if (this.#stateMachine.snapshotStream !== undefined && this.#peers.sendSnapshot !== undefined) {
        snapshots = late.filter((m): m is SnapshotMessage => m.type === 'snapshot');
        if (snapshots.length > 0) late = late.filter((m) => m.type !== 'snapshot');
      }
      if (early.length > 0) this.#peers.send(early);
      // A streamed snapshot's records, prepared aside, become the state's store before the
      // snapshot is persisted: a crash between leaves a store ahead of the log, which the replay
      // skips; the other order would leave a persisted snapshot whose records are not there.
      if (ready.snapshot !== null) {
        // A snapshot replaces the state's store: what earlier Readys left in memory goes first
        // (AppliedState's install commits them too; a whole image's restore would not).
        await this.#stateMachine.writeState?.();
        await this.#stateMachine.installSnapshot?.(ready.snapshot.metadata.index);
        this.#releaseSnapshotWaiters();
      }
      // The core says whether the write must be synced: entries, a snapshot, a new term or vote
      // must (they are acknowledged after this write). A hard state where only the commit index
      // moved is not written on its own (it was a trip to the thread pool in every round of a
      // write, on every manager): it goes with the next write, or once a tick passed (#hardStateUnwritten).
      // A commit index lost with a crash is learnt again from the leader (a lone voter commits
      // its log again with its next term's first entry); the committed entries are in this log
      // already (and on a majority), and a restart whose state's store is ahead of the commit
      // index it finds applies nothing twice (see `start`).
      const commitOnly =
        ready.hardState !== null && !ready.mustSync && ready.entries.length === 0 && ready.snapshot === null;
      if (commitOnly) this.#hardStateUnwritten = ready.hardState;
      else if (ready.hardState !== null || ready.entries.length > 0 || ready.snapshot !== null) {
        const hardState = ready.hardState ?? this.#hardStateUnwritten;
        this.#hardStateUnwritten = null;
        const startMs = performance.now();
        await this.#storage.save({ hardState, entries: ready.entries, snapshot: ready.snapshot, sync: ready.mustSync });
        this.#notePersisted(ready, startMs);
      }
      if (this.#stopped) return;
      // 2. Send what did not go out early.
      if (late.length > 0) this.#peers.send(late);
      // 3. Apply.
      if (ready.snapshot !== null) await this.#stateMachine.restore(ready.snapshot.data, ready.snapshot.metadata.index);
      const outcomes = this.#apply(ready);
      this.#raw.advance();
      // Proposers hear back after the advance (where the core applies a committed membership
      // change: a demote answered before it still counted as a voter), and before afterApply
      // when all the entries did was change the state's records: the log holds them (a restart
      // applies again what the store had not written), so the store's write need not come
      // first. Local effects (a key record to rewrap) and a snapshot the state asked for are
      // made durable first, in afterApply.
      const answeredEarly = outcomes.length > 0 && this.#stateMachine.answersWaitForAfterApply?.() === false;
      if (answeredEarly) for (const settle of outcomes) settle();
      if (snapshots.length > 0) await this.#sendSnapshots(snapshots);
      const deferState = !this.#stateWriteDue;
      this.#stateWriteDue = false;
      const request = (await this.#stateMachine.afterApply?.({ deferState })) ?? null;
      // A tick passed: a commit index no write carried goes now (a leader's heartbeats make a
      // Ready every tick, so the idle branch above would never write it).
      if (!deferState) await this.#writeHardStateLeft();
      await this.#maybeSnapshot(request);
      if (!answeredEarly) for (const settle of outcomes) settle();
      // A Ready near its cap of committed entries (a follower given a long tail after a
      // snapshot, about 1 ms an entry to apply): requests and messages waiting on this loop are
      // served between such Readys, not after all of them (a poll waited 0.4-0.7 s).
      if (this.#raw.hasReady() && committedBytes(ready) >= COMMITTED_ENTRIES_BYTES_MAX / 2)
        await new Promise(setImmediate);
    }
  }

  /** Writes what Readys left for later: the state's changes held in memory, and a commit index (neither synced). */
  async #writeLeftovers(): Promise<void> {
    if (this.#stateMachine.statePending === true) await this.#stateMachine.writeState?.();
    await this.#writeHardStateLeft();
  }

  /** Writes a commit-only hard state no write has carried, if there is one (not synced). */
  async #writeHardStateLeft(): Promise<void> {
    const hardState = this.#hardStateUnwritten;
    if (hardState === null) return;
    this.#hardStateUnwritten = null;
    await this.#storage.save({ hardState, entries: [], snapshot: null, sync: false });
  }

  /** Counts a Ready's write, once it is done, and tells the observer how long it and its proposals took. */
  #notePersisted(ready: Ready, startMs: number): void {
    const observer = this.#observer;
    if (observer !== null) {
      const now = performance.now();
      observer.persisted((now - startMs) / 1000, ready.entries.length);
      for (const entry of ready.entries) {
        const proposal = this.#proposals.get(entry.index);
        if (proposal !== undefined && proposal.term === entry.term) observer.proposed((now - proposal.startMs) / 1000);
      }
    }
    if (ready.mustSync) this.stats.syncs++;
    this.stats.entriesPersisted += ready.entries.length;
  }

  /**
   * Sends each snapshot the core asked for as the state is now: the point applied here (at or after
   * the snapshot the core holds, and committed, so the follower may take it), the state's
   * descriptor and its records' stream, all taken in one turn.
   */
  async #sendSnapshots(messages: readonly SnapshotMessage[]): Promise<void> {
    await this.#stateMachine.beforeSnapshotStream?.();
    if (this.#stopped) return;
    for (const message of messages) {
      if (this.#coreBehind()) {
        // Started from the state's store, ahead of what the core has applied yet: no point to
        // take. The core sends the snapshot again once it has caught up.
        this.#raw.reportSnapshot(message.to, false);
        continue;
      }
      const stream = this.#stateMachine.snapshotStream!();
      if (stream === null) {
        this.#peers.send([message]);
        continue;
      }
      this.#snapshotAcks.delete(message.to);
      const at = this.#raw.snapshotPoint();
      assert(
        at.index >= message.snapshot.metadata.index,
        () => `a snapshot sent at ${at.index}, behind the one the core holds (${message.snapshot.metadata.index})`,
      );
      this.#peers.sendSnapshot!({ ...message, snapshot: { metadata: at, data: stream.data } }, stream.records);
    }
  }

  /**
   * A snapshot a leader streamed: its records are written aside first (the state keeps serving),
   * then the core sees the snapshot; if it takes it, the records are switched to before the
   * snapshot is persisted (see the loop). A stream that fails leaves nothing installed.
   */
  async receiveSnapshot(message: SnapshotMessage, chunks: AsyncIterable<Uint8Array>): Promise<void> {
    if (this.#stopped) throw this.#stoppedError();
    const prepare = this.#stateMachine.prepareSnapshot;
    if (prepare === undefined) throw new TypeError('this state keeps no records apart from its snapshots');
    const index = message.snapshot.metadata.index;
    // One at a time. The records of a snapshot the core took wait aside until the loop installs
    // them; a second snapshot prepared meanwhile (a new leader's, or one sent again) would drop
    // them from under the Ready about to install them, and its descriptor would be restored over
    // a store without its records.
    const before = this.#receiving;
    let finished!: () => void;
    this.#receiving = new Promise<void>((resolve) => {
      finished = resolve;
    });
    try {
      await before;
      if (this.#stopped) return;
      await prepare.call(this.#stateMachine, index, chunks);
      if (this.#stopped) return;
      this.step(message);
      // Taken: the loop installs its records with the Ready that holds it; wait for that (not for
      // the loop to be idle, which a busy follower may not be for long). Not taken (older than
      // the log, a stale term): its records go now.
      if (this.#raw.pendingSnapshotIndex() === index)
        await new Promise<void>((resolve) => this.#snapshotsHandled.push(resolve));
      await this.#stateMachine.discardSnapshot?.(index);
    } finally {
      finished();
    }
  }

  /** Whether the state is ahead of the core's applied index (a start from the state's store, until the core catches up). */
  #coreBehind(): boolean {
    return this.#raw.basicStatus().applied < this.#applied;
  }

  #apply(ready: Ready): Array<() => void> {
    const outcomes: Array<() => void> = [];
    if (ready.snapshot !== null) {
      this.#applied = ready.snapshot.metadata.index;
      this.#snapshotCounted(this.#applied);
      for (const [index, proposal] of this.#proposals) {
        if (index <= this.#applied) {
          this.#proposals.delete(index);
          proposal.waiter.reject(
            new ReplicaError(
              'PROPOSAL_LOST',
              `the proposal at index ${index} was superseded by a snapshot; its outcome is unknown`,
            ),
          );
        }
      }
    }
    for (const entry of ready.committedEntries) {
      if (entry.index <= this.#applied) continue;
      assert(entry.index === this.#applied + 1, () => `applying ${entry.index} after ${this.#applied}`);
      const result = this.#stateMachine.apply(entry);
      this.#applied = entry.index;
      this.#bytesSinceSnapshot += entryBytes(entry);
      const proposal = this.#proposals.get(entry.index);
      if (proposal !== undefined) {
        this.#proposals.delete(entry.index);
        const observer = this.#observer;
        if (observer !== null && proposal.term === entry.term)
          observer.committed((performance.now() - proposal.startMs) / 1000);
        if (proposal.term === entry.term)
          outcomes.push(() => {
            observer?.applied((performance.now() - proposal.startMs) / 1000);
            proposal.waiter.resolve(result);
          });
        else
          proposal.waiter.reject(
            new ReplicaError(
              'PROPOSAL_LOST',
              `the proposal at index ${entry.index} was replaced by a new leader's entry; it was not applied`,
            ),
          );
      }
    }
    for (const read of ready.readStates) {
      const waiters = this.#takeReadBatch(read.context);
      if (waiters === null) continue;
      for (const waiter of waiters) this.#readsAwaitingApply.push({ index: read.index, waiter });
    }
    for (const refusal of ready.readRefusals) {
      const waiters = this.#takeReadBatch(refusal.context);
      if (waiters === null) continue;
      const error = new ReplicaError(
        'READ_REFUSED',
        `the read was refused: ${describeRefusal(refusal.reason)}`,
        refusal.reason,
      );
      for (const waiter of waiters) waiter.reject(error);
    }
    // The reads that arrived meanwhile go out in the next Ready.
    this.#requestReadIndex();
    if (this.#readsAwaitingApply.length > 0) {
      const still: Array<{ index: number; waiter: Waiter<number> }> = [];
      for (const read of this.#readsAwaitingApply) {
        if (read.index <= this.#applied) read.waiter.resolve(this.#applied);
        else still.push(read);
      }
      this.#readsAwaitingApply = still;
    }
    return outcomes;
  }

  /**
   * Snapshots when one is due. A periodic one (every `snapshotEvery` entries or bytes) is built in
   * the background: its point (index, term, membership) is taken now and the state machine's
   * `snapshot()` begins now (from a point-in-time view), while entries go on being applied; it
   * is saved by a later turn of the loop. One the state machine asks for (a rewrap, a destroy)
   * is built and saved before the entries that asked for it are answered, as before.
   */
  async #maybeSnapshot(request: SnapshotRequest | null): Promise<void> {
    if (this.#built !== null) await this.#saveBuilt();
    // The state is ahead of the core's applied index (started from its store): the core's point
    // would not be the state's. Committed entries bring the core there; snapshots wait for it.
    if (this.#coreBehind()) return;
    if (request !== null) {
      // One at a time: let a background build finish (and save it) first.
      while (this.#building !== null) {
        await this.#building;
        if (this.#built !== null) await this.#saveBuilt();
      }
      const at = this.#raw.snapshotPoint();
      await this.#save(at, await this.#stateMachine.snapshot(), request);
      return;
    }
    if (
      this.#building !== null ||
      (this.#changesSinceSnapshot() < this.#snapshotEvery && this.#bytesSinceSnapshot < this.#snapshotEveryBytes)
    )
      return;
    const at = this.#raw.snapshotPoint();
    const image = this.#stateMachine.snapshot();
    // A state machine whose image is at hand (in memory) is snapshotted at once.
    if (!(image instanceof Promise)) return this.#save(at, image, null);
    // Counted from the point taken: the next is due an interval after it, not after the save.
    this.#snapshotCounted(at.index);
    const building = image.then(
      (data) => {
        this.#built = { at, data, error: null };
      },
      (error: unknown) => {
        this.#built = { at, data: null, error };
      },
    );
    this.#building = building.finally(() => {
      this.#building = null;
      this.#kick();
    });
  }

  /** Saves the snapshot the background build finished, unless a newer one came meanwhile (a leader's). */
  async #saveBuilt(): Promise<void> {
    const built = this.#built!;
    this.#built = null;
    if (built.data === null) {
      // Dropped (a key destroyed meanwhile, the state closing): the next interval builds again.
      this.stats.snapshotBuildsDropped++;
      return;
    }
    const current = this.#raw.basicStatus().firstIndex - 1;
    if (built.at.index <= current) return;
    try {
      await this.#save(built.at, built.data, null);
    } catch (error) {
      // A leader's snapshot installed while this one was built supersedes it.
      if (error instanceof RaftError && error.code === 'COMPACTION_INVALID') return;
      throw error;
    }
  }

  async #save(at: SnapshotMetadata, data: Uint8Array, request: SnapshotRequest | null): Promise<void> {
    const snapshot = this.#raw.createSnapshot(data, at);
    const index = snapshot.metadata.index;
    const status = this.#raw.basicStatus();
    const compactTo =
      request?.compactAll === true
        ? Math.max(status.firstIndex - 1, index)
        : compactionIndex({
            snapshotIndex: index,
            firstIndex: status.firstIndex,
            entryBytesAt: (i) => {
              const entry = this.#raw.entry(i);
              return entry === undefined ? 0 : entryBytes(entry);
            },
            tailEntries: this.#snapshotTail,
            tailBytesMax: this.#snapshotTailBytes,
            followersNeed: status.role === 'leader' ? followersNeed(this.#raw.status()) : null,
            needEntriesMax: this.#snapshotEvery,
            needBytesMax: this.#snapshotEveryBytes,
          });
    // The snapshot may stand for the state's store (a descriptor): the store must hold its point
    // durably before the log behind it goes.
    await this.#stateMachine.syncState?.(this.#applied);
    await this.#storage.saveSnapshot(snapshot, compactTo);
    if (compactTo > status.firstIndex - 1) this.#raw.compact(compactTo);
    if (this.#lastSnapshotIndex < index) this.#snapshotCounted(index);
    this.stats.snapshots++;
    reached('replica:snapshot-saved');
    if (request?.reclaimDisk === true) {
      await this.#storage.reclaim();
      await this.#stateMachine.reclaimState?.();
    }
    await this.#stateMachine.snapshotDurable?.();
  }
}

/**
 * Where to compact after a snapshot at `snapshotIndex`: entries up to the returned index are
 * dropped, the later ones stay in memory. The tail kept behind the snapshot has at most
 * `tailEntries` entries and at most `tailBytesMax` bytes. Beyond that, the one thing worth keeping
 * is what a follower that is heard from still needs (`followersNeed`): above all the entries after
 * a snapshot it is being sent, or it would need another one as soon as it has installed this one,
 * and under a steady write load never catch up. That is kept only while it is at most one
 * snapshot interval (`needEntriesMax`, `needBytesMax`); a follower further behind is sent a
 * snapshot anyway, and memory stays bounded. Never before the log's first index.
 */
export function compactionIndex(input: {
  readonly snapshotIndex: number;
  readonly firstIndex: number;
  readonly entryBytesAt: (index: number) => number;
  readonly tailEntries: number;
  readonly tailBytesMax: number;
  /** The lowest index a follower that is heard from still needs the term of (it needs the entries after it), or null. */
  readonly followersNeed: number | null;
  readonly needEntriesMax: number;
  readonly needBytesMax: number;
}): number {
  const floor = input.firstIndex - 1;
  let point = input.snapshotIndex;
  let bytes = 0;
  while (point > floor && input.snapshotIndex - point < input.tailEntries) {
    const next = bytes + input.entryBytesAt(point);
    if (next > input.tailBytesMax) break;
    bytes = next;
    point--;
  }
  const need = input.followersNeed;
  if (need !== null && need < point && need >= floor && input.snapshotIndex - need <= input.needEntriesMax) {
    let kept = point;
    while (kept > need && bytes <= input.needBytesMax) bytes += input.entryBytesAt(kept--);
    if (bytes <= input.needBytesMax) point = need;
  }
  return Math.max(floor, point);
}

/**
 * The lowest index a follower the leader hears from still needs, given its progress: the snapshot
 * being sent to it, where its probing stands, or what it acknowledged (entries after it may be
 * sent again after a lost message). Null when no follower is heard from.
 */
export function followersNeed(status: Status): number | null {
  let need: number | null = null;
  for (const [id, pr] of status.progress ?? []) {
    if (id === status.id || !pr.recentActive) continue;
    const index = pr.state === 'snapshot' ? pr.pendingSnapshot : pr.state === 'probe' ? pr.next - 1 : pr.match;
    need = need === null ? index : Math.min(need, index);
  }
  return need;
}

/** The bytes of the committed entries a Ready hands out, as the core counts them against its cap. */
function committedBytes(ready: Ready): number {
  let bytes = 0;
  for (const entry of ready.committedEntries) bytes += entryBytes(entry);
  return bytes;
}

function describeRefusal(reason: ReadRefusalReason): string {
  switch (reason) {
    case 'leader-not-ready':
      return 'a new leader has not committed an entry of its term yet; retry in a moment';
    case 'no-leader':
      return 'no leader is known; retry once one is elected';
    case 'leadership-lost':
      return 'the leader lost leadership before confirming the read; retry';
    case 'too-many-pending':
      return 'too many reads are waiting on the leader; retry later';
  }
}
