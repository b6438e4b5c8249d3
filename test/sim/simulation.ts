/**
 * A deterministic simulator for the Raft core, after TigerBeetle's VOPR: N nodes, one seeded
 * PRNG for every decision, a simulated clock, and a network that delays, drops, duplicates,
 * reorders and partitions (symmetric halves, an isolated leader, a "bridge" node that sees both
 * halves, one-way cuts). Nodes crash (losing all that was not persisted, sometimes between
 * persisting a Ready and sending it), pause, restart, take snapshots and compact, and change
 * membership; leaders transfer leadership. After every step the Checker verifies the safety
 * properties. Then a liveness phase heals everything and demands progress, and a
 * non-disruption phase checks that a node returning from isolation does not depose the leader.
 *
 * Each node applies its committed entries twice: into a hash chain (the checker compares it
 * across nodes at every index), and (unless `appliedState: false`) through a real AppliedState
 * over a state store that is the node's disk (state-disk.ts): it survives the node's crashes, but
 * its batches are not synced, so a crash may lose the newest of them, which the replay of the
 * Raft log (fsynced) must make good. As the replica does, each Ready is persisted, sent, applied,
 * advanced, and then the state batch (the changes and the applied index) is committed; a node may
 * die on either side of that batch and at any write of its store. As the barrier does, a batch
 * also carries the image of the small parts (cluster and access) when they changed or this life
 * stored none yet. A start opens the store as the crash left it and `reset()`s the state; then,
 * as the replica's start does, it restores the store's image if the store holds one at or after
 * the newest snapshot (the state is then at the store's index: entries up to it are not applied
 * again, neither secrets nor small parts), and otherwise restores the newest snapshot and replays
 * the log. The checker demands that every committed secret.put is applied exactly once on every
 * node (applied-secrets.ts says what an entry puts), and that every node's policies are what the
 * committed policy writes give (applied-policies.ts), with the same small parts' image as every
 * other node's at the same index.
 *
 * Snapshots go as the replica's do (src/replica/replica.ts): one a node takes for itself is the
 * state's descriptor, saved after `sync` made the store durable through the applied index; one a
 * leader sends is its descriptor at its applied point plus the store's records streamed from a
 * point-in-time view taken in the same turn (after the Ready is applied and advanced). The
 * receiver writes the records aside (`prepareSnapshot`) before its core steps the message,
 * switches to them (`installSnapshot`) before the snapshot is persisted, then restores the
 * descriptor. A node may die while the records are written aside, between the last of them and
 * the switch, and right after the switch (before Raft persisted the snapshot); when it starts
 * again, its store must hold either the old content or exactly the snapshot's records with the
 * snapshot's index, never a mix.
 *
 * The same seed always gives the same run: the trace hash over every event proves it.
 */
import { createHash } from 'node:crypto';
import { RaftError } from '../../src/raft/errors.ts';
import { RawNode } from '../../src/raft/raw-node.ts';
import type {
  ConfChange,
  Entry,
  HardState,
  Message,
  NodeId,
  Ready,
  Snapshot,
  SnapshotMessage,
} from '../../src/raft/types.ts';
import type { StateRecord } from '../../src/kv/state-store.ts';
import { AssertionError } from '../../src/util/assert.ts';
import { SeededRandom } from '../../src/util/prng.ts';
import { Checker, SafetyViolation, type Property } from './checker.ts';
import { MemoryRaftState } from '../../src/storage/memory-storage.ts';
import { MinHeap } from './heap.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import { STATE_PENDING_BYTES_MAX } from '../../src/barrier/barrier.ts';
import type { RecordKeys } from '../../src/crypto/record-seal.ts';
import { encodePut, putOf, readSecret, secretNames, simRecordKeys } from './applied-secrets.ts';
import { encodePolicyPut, POLICY_TEXT_PREFIX, policyNames, policyOf, readPolicy } from './applied-policies.ts';
import { SimCrash, SimStateDisk, type CrashPoint } from './state-disk.ts';

/** Simulated time units per tick; messages take a few units, so several fit in a tick. */
const TICK_UNITS = 10;
const ELECTION_TIMEOUT_TICKS = 10;
const MEMBERS_MAX = 7;
const VOTERS_MIN = 3;
/** Bounds that turn a runaway run into a reported failure: a typical run has ~50,000 events. */
const EVENTS_MAX = 5_000_000;
const READY_ROUNDS_MAX = 1_000;
/** Applied-state mode, chaos phase: chances that a node dies right before its state batch, right after it, and at any write of its store. */
const STATE_CRASH_BEFORE_COMMIT = 0.003;
const STATE_CRASH_AFTER_COMMIT = 0.003;
const STATE_CRASH_AT_WRITE = 0.003;
/**
 * ... and that a Ready leaves its state changes in memory for a later one to commit (the
 * replica's `deferState`: a tick decides it there, and the barrier commits anyway when answers
 * wait for its local effects; a seeded draw here, more often than a tick would), while they stay
 * under the barrier's bound.
 */
const STATE_COMMIT_DEFERRED = 0.5;
/** ... and that it dies after applying a commit-only Ready, before writing its commit index. */
const COMMIT_INDEX_CRASH = 0.003;
/** ... and that a commit-only hard state is left for the next write to carry (the replica leaves every one). */
const COMMIT_INDEX_LEFT_UNWRITTEN = 0.5;
/**
 * ... and, in a streamed snapshot's install, that it dies at a batch of records written aside, at
 * the switch, and right after the switch (before the snapshot is persisted). Installs are few (a
 * few per run), so these are high enough that every few seeds hit each.
 */
const SNAPSHOT_CRASH: Readonly<Record<Exclude<CrashPoint, 'write'>, number>> = {
  prepare: 0.02,
  switch: 0.06,
  'after-switch': 0.06,
};
/** The state store's record of its applied index (AppliedState's APPLIED_KEY): read to know where a replay skips to. */
const APPLIED_INDEX_KEY = Buffer.from([0x00, 0x61]);
/**
 * One proposal in this many of the chaos workload writes a policy (a small part) instead of a
 * secret. Chosen by the proposal's number, not drawn, with a text of the same length as a put's:
 * the workload adds no draws and its entries split into appends as before.
 */
const POLICY_WRITE_EVERY = 6;

export interface SimOptions {
  readonly seed: number;
  /** Founding voters: 3 or 5. */
  readonly nodes: number;
  /** Ticks of the fault-injecting phase. */
  readonly chaosTicks?: number;
  /** Keep a readable trace of every event (for replaying a failure). */
  readonly trace?: boolean;
  /**
   * Each node also applies its committed entries through a real AppliedState over a state store
   * that survives its crashes and loses its unsynced tail (state-disk.ts), committing the state
   * batch after each Ready's applies as the replica does; the checker then demands that every
   * committed secret.put is applied exactly once on every node (default true; false: the hash
   * chain alone, as before).
   */
  readonly appliedState?: boolean;
}

export interface SimStats {
  events: number;
  messages: number;
  dropped: number;
  leaders: number;
  highestTerm: number;
  committed: number;
  crashes: number;
  crashesMidReady: number;
  /** Leaders that crashed after their appends went out and before they persisted them. */
  crashesAfterEarlyAppends: number;
  restarts: number;
  partitions: number;
  snapshotsTaken: number;
  snapshotsInstalled: number;
  readsServed: number;
  readsRefused: number;
  confChangesApplied: number;
  transfers: number;
  proposals: number;
  /** Applied-state mode: batches written to the nodes' state stores, and lost with a crash. */
  stateBatches: number;
  stateBatchesLost: number;
  /** ... crashes after a Ready's applies, before its state batch was committed. */
  crashesBeforeStateCommit: number;
  /** ... Readys whose state changes were left in memory for a later Ready's batch. */
  stateCommitsDeferred: number;
  /** Commit-only hard states left for a later write to carry. */
  commitIndexWritesLeft: number;
  /** ... crashes after the state batch was committed, before the next Ready was persisted. */
  crashesAfterStateCommit: number;
  /**
   * ... crashes after a commit-only Ready's entries were applied and their state batch committed,
   * before its commit index was written (the replica applies such a Ready while that write runs).
   */
  crashesBeforeCommitIndexWrite: number;
  /** ... crashes at a write of the state store (the write lost; after a snapshot's content, before its index). */
  crashesAtStateWrite: number;
  /** ... replayed secret commands the state store already held at a restart (skipped, not applied again). */
  skippedOnStart: number;
  /** ... checks of a node's secrets against the committed log applied once. */
  secretsChecked: number;
  /** ... snapshots sent as a descriptor and streamed records, and batches of records written aside by receivers. */
  snapshotsStreamed: number;
  snapshotBatchesAside: number;
  /** ... crashes while a snapshot's records were written aside, between the last of them and the switch, and right after the switch. */
  crashesPreparingSnapshot: number;
  crashesBeforeSnapshotSwitch: number;
  crashesAfterSnapshotSwitch: number;
  /** ... starts after a crash in a snapshot's install whose store was checked (old content, or the snapshot's records whole). */
  installsCheckedAfterCrash: number;
  /** ... state batches that carried a new image of the small parts. */
  imagesStored: number;
  /**
   * ... restarts (every start but a node's first) that restored the store's image and applied
   * nothing up to its index, and restarts that restored the snapshot and replayed the log (no
   * image stored, as after a crash right after a snapshot's switch).
   */
  restartsFromImage: number;
  restartsFromSnapshot: number;
  /** ... checks of a node's small parts (its policies against the committed log, its image against other nodes'). */
  smallPartsChecked: number;
}

/** Every count at zero: a simulation's start, and the CLI's totals over seeds. */
export function emptySimStats(): SimStats {
  return {
    events: 0,
    messages: 0,
    dropped: 0,
    leaders: 0,
    highestTerm: 0,
    committed: 0,
    crashes: 0,
    crashesMidReady: 0,
    crashesAfterEarlyAppends: 0,
    restarts: 0,
    partitions: 0,
    snapshotsTaken: 0,
    snapshotsInstalled: 0,
    readsServed: 0,
    readsRefused: 0,
    confChangesApplied: 0,
    transfers: 0,
    proposals: 0,
    stateBatches: 0,
    stateBatchesLost: 0,
    crashesBeforeStateCommit: 0,
    stateCommitsDeferred: 0,
    commitIndexWritesLeft: 0,
    crashesBeforeCommitIndexWrite: 0,
    crashesAfterStateCommit: 0,
    crashesAtStateWrite: 0,
    skippedOnStart: 0,
    secretsChecked: 0,
    snapshotsStreamed: 0,
    snapshotBatchesAside: 0,
    crashesPreparingSnapshot: 0,
    crashesBeforeSnapshotSwitch: 0,
    crashesAfterSnapshotSwitch: 0,
    installsCheckedAfterCrash: 0,
    imagesStored: 0,
    restartsFromImage: 0,
    restartsFromSnapshot: 0,
    smallPartsChecked: 0,
  };
}

export interface SimResult {
  readonly seed: number;
  readonly nodes: number;
  readonly ok: boolean;
  readonly property?: Property;
  readonly message?: string;
  readonly traceHash: string;
  readonly stats: SimStats;
  readonly trace?: string[];
  readonly finalTick: number;
}

interface SimNode {
  readonly id: NodeId;
  raw: RawNode | null;
  readonly disk: MemoryRaftState;
  /** Bumped on every crash, so events of an earlier life are ignored. */
  incarnation: number;
  retired: boolean;
  pausedUntil: number;
  inFlight: Ready | null;
  /** The in-flight Ready's write has not happened yet (a slow disk; its appends already left). */
  inFlightUnpersisted: boolean;
  appliedIndex: number;
  state: number;
  seenCommit: number;
  /** A commit-only hard state not written yet (as the replica's #hardStateUnwritten): the next write carries it. */
  hardStateUnwritten: HardState | null;
  ledTerm: number;
  /** Crash after persisting the next Ready, before sending it. */
  doomed: boolean;
  /** Applied-state mode: the node's state store (its disk: it survives crashes), and the state over it in this life. */
  readonly stateDisk: SimStateDisk | null;
  applied: AppliedState | null;
  /** The index the state store held when this life started (the replay skips the secrets up to it). */
  storedAtStart: number;
  /**
   * The index this life's state was restored at from the store's image (0: from the snapshot):
   * entries up to it are not handed to the state at all, as the replica's applied index starts
   * there. The core (and the hash chain) still replays them from its snapshot.
   */
  imageThrough: number;
  /** The store holds no image of this life's state yet (as the barrier's #imageStale): the next batch writes one. */
  imageStale: boolean;
  /** Of this life's state's stats.skippedOnStart, how many are in the run's stats. */
  skippedCounted: number;
  /**
   * A streamed snapshot being prepared or installed and not yet persisted: its index, the digest
   * of its records, and the index the state held before. A crash leaves it set for the next start
   * to check.
   */
  installing: { readonly index: number; readonly digest: string; readonly before: number } | null;
  /** The last snapshot whose records this node prepared (what `installing` takes at the switch). */
  prepared: { readonly index: number; readonly digest: string } | null;
  /** Reads in progress: context -> index committed anywhere when the read began. */
  readonly reads: Map<string, number>;
}

type Event =
  | { time: number; seq: number; kind: 'deliver'; message: Message }
  | { time: number; seq: number; kind: 'tick'; node: NodeId; incarnation: number }
  | { time: number; seq: number; kind: 'finish-ready'; node: NodeId; incarnation: number }
  | {
      time: number;
      seq: number;
      kind: 'report';
      node: NodeId;
      incarnation: number;
      peer: NodeId;
      what: 'unreachable' | 'snapshot-ok' | 'snapshot-failed';
    }
  | { time: number; seq: number; kind: 'restart'; node: NodeId }
  | { time: number; seq: number; kind: 'driver' };

type Phase = 'chaos' | 'liveness' | 'probe' | 'done';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class Simulation {
  readonly #options: Required<Omit<SimOptions, 'trace'>> & { trace: boolean };
  /** The cluster's record keys (the barrier's keyring on a manager), in applied-state mode. */
  readonly #keys: RecordKeys | null;
  readonly #random: SeededRandom;
  readonly #checker = new Checker();
  readonly #nodes = new Map<NodeId, SimNode>();
  readonly #events = new MinHeap<Event>();
  #seq = 0;
  #now = 0;
  #nextNodeId: NodeId;
  #proposalSeq = 0;
  #readSeq = 0;
  /** Directed links that drop everything: "from>to". */
  readonly #cut = new Set<string>();
  #dropRate = 0;
  #duplicateRate = 0;
  #longDelayRate = 0;
  #interleaveRate = 0;
  readonly #profile: FaultProfile;
  #phase: Phase = 'chaos';
  #phaseDeadline = 0;
  /** The membership as of the highest applied index anywhere (see #onApplied). */
  #applyFrontier = 0;
  readonly #voters = new Set<NodeId>();
  readonly #learners = new Set<NodeId>();
  /** Members whose removal is applied: they may be shut down. */
  readonly #removed = new Set<NodeId>();
  #liveness: { value: string; index: number; term: number } | null = null;
  #livenessAttempts = 0;
  #livenessStartedAt = 0;
  #probe: { leader: NodeId; term: number; isolated: NodeId; healAt: number; checkAt: number } | null = null;
  #traceHash = 0x811c9dc5;
  readonly #trace: string[] | null;
  readonly stats: SimStats = emptySimStats();
  /** The records streamed beside a snapshot message (applied-state mode), read from the sender's view when it was sent. */
  readonly #streams = new WeakMap<Message, readonly StateRecord[]>();

  constructor(options: SimOptions) {
    if (!Number.isSafeInteger(options.nodes) || options.nodes < 1 || options.nodes > MEMBERS_MAX) {
      throw new TypeError(`nodes must be 1..${MEMBERS_MAX}: got ${options.nodes}`);
    }
    this.#options = {
      chaosTicks: 600,
      ...options,
      trace: options.trace ?? false,
      appliedState: options.appliedState ?? true,
    };
    this.#random = new SeededRandom(options.seed);
    this.#trace = this.#options.trace ? [] : null;
    this.#nextNodeId = options.nodes + 1;
    this.#keys = this.#options.appliedState ? simRecordKeys() : null;
    this.#profile = drawFaultProfile(this.#random, this.#options.appliedState);
    this.#drawNetworkProfile();
  }

  /** Runs once (the nodes' states apply asynchronously: every step is awaited, in event order). */
  async run(): Promise<SimResult> {
    const chaosEnd = this.#options.chaosTicks * TICK_UNITS;
    let result: SimResult | null = null;
    try {
      const voters = Array.from({ length: this.#options.nodes }, (_, k) => k + 1);
      for (const id of voters) {
        const node = await this.#createNode(id);
        node.raw!.bootstrap(voters);
        await this.#processReady(node);
      }
      this.#schedule({ kind: 'driver' }, TICK_UNITS / 2);
      while (this.#phase !== 'done') {
        const event = this.#events.pop();
        if (event === undefined) throw new SafetyViolation('liveness', 'the event queue ran dry');
        this.#now = event.time;
        if (this.#phase === 'chaos' && this.#now >= chaosEnd) await this.#startLiveness();
        await this.#handle(event);
      }
      // Every node up holds what applying the committed log once gives, whatever it lived through.
      for (const node of this.#nodes.values()) {
        if (node.applied === null) continue;
        await this.#checkAllSecrets(node, true);
        this.#checkSmallParts(node);
        this.#countSkipped(node);
      }
    } catch (error) {
      result = this.#result(error);
    }
    return result ?? this.#result(null);
  }

  #result(error: unknown): SimResult {
    const base = {
      seed: this.#options.seed,
      nodes: this.#options.nodes,
      traceHash: (this.#traceHash >>> 0).toString(16).padStart(8, '0'),
      stats: this.stats,
      finalTick: Math.floor(this.#now / TICK_UNITS),
      ...(this.#trace === null ? {} : { trace: this.#trace }),
    };
    if (error === null) return { ...base, ok: true };
    if (error instanceof SafetyViolation)
      return { ...base, ok: false, property: error.property, message: error.detail };
    if (error instanceof AssertionError)
      return { ...base, ok: false, property: 'core-assertion', message: error.message };
    const message = error instanceof Error ? `${error.name}: ${error.message}\n${error.stack ?? ''}` : String(error);
    return { ...base, ok: false, property: 'core-assertion', message: `unexpected error: ${message}` };
  }

  // -------------------------------------------------------------------------------------------
  // Events
  // -------------------------------------------------------------------------------------------

  #schedule(event: DistributiveOmit<Event, 'time' | 'seq'>, delay: number): void {
    this.#events.push({ ...event, time: this.#now + delay, seq: this.#seq++ } as Event);
  }

  #record(text: string): void {
    for (let k = 0; k < text.length; k++) this.#traceHash = Math.imul(this.#traceHash ^ text.charCodeAt(k), 0x01000193);
    this.#trace?.push(`${this.#now.toString().padStart(7)} ${text}`);
  }

  async #handle(event: Event): Promise<void> {
    if (++this.stats.events > EVENTS_MAX)
      throw new SafetyViolation('liveness', `the run exceeded ${EVENTS_MAX} events`);
    switch (event.kind) {
      case 'driver':
        await this.#drive();
        this.#schedule({ kind: 'driver' }, TICK_UNITS);
        return;
      case 'deliver':
        await this.#deliver(event.message);
        return;
      case 'tick': {
        const node = this.#live(event.node, event.incarnation);
        if (node === null) return;
        // Clock drift: most ticks come on time, some a unit early or late.
        this.#schedule(
          { kind: 'tick', node: node.id, incarnation: node.incarnation },
          TICK_UNITS - 1 + this.#random.int(3),
        );
        if (node.pausedUntil > this.#now) return; // a paused process misses its ticks
        this.#record(`tick ${node.id}`);
        node.raw!.tick();
        await this.#afterStep(node);
        return;
      }
      case 'finish-ready': {
        const node = this.#live(event.node, event.incarnation);
        if (node === null || node.inFlight === null) return;
        const ready = node.inFlight;
        node.inFlight = null;
        if (node.inFlightUnpersisted) {
          node.inFlightUnpersisted = false;
          if (this.#phase === 'chaos' && this.#random.float() < 0.3) {
            // The slow write never finished: the followers may hold (and have acknowledged)
            // entries this leader never persisted.
            this.stats.crashesMidReady++;
            this.stats.crashesAfterEarlyAppends++;
            this.#crash(node, 'a slow write of entries whose appends already left');
            return;
          }
          this.#persist(node, ready);
        }
        await this.#finishReady(node, ready);
        await this.#afterStep(node);
        return;
      }
      case 'restart': {
        const node = this.#nodes.get(event.node);
        if (node !== undefined && this.#phase === 'chaos') await this.#restart(node);
        return;
      }
      case 'report': {
        const node = this.#live(event.node, event.incarnation);
        if (node === null) return;
        this.#record(`report ${node.id} ${event.what} ${event.peer}`);
        if (event.what === 'unreachable') node.raw!.reportUnreachable(event.peer);
        else node.raw!.reportSnapshot(event.peer, event.what === 'snapshot-ok');
        await this.#afterStep(node);
        return;
      }
    }
  }

  #live(id: NodeId, incarnation: number): SimNode | null {
    const node = this.#nodes.get(id);
    if (node === undefined || node.raw === null || node.incarnation !== incarnation) return null;
    return node;
  }

  // -------------------------------------------------------------------------------------------
  // Nodes: the Ready loop, crash and restart
  // -------------------------------------------------------------------------------------------

  async #createNode(id: NodeId): Promise<SimNode> {
    const node: SimNode = {
      id,
      raw: null,
      disk: new MemoryRaftState(),
      incarnation: 0,
      retired: false,
      pausedUntil: 0,
      inFlight: null,
      inFlightUnpersisted: false,
      appliedIndex: 0,
      state: 0,
      seenCommit: 0,
      hardStateUnwritten: null,
      ledTerm: 0,
      doomed: false,
      reads: new Map(),
      stateDisk: this.#options.appliedState ? new SimStateDisk(this.#profile.stateUnsyncedMax) : null,
      applied: null,
      storedAtStart: 0,
      imageThrough: 0,
      imageStale: true,
      skippedCounted: 0,
      installing: null,
      prepared: null,
    };
    this.#nodes.set(id, node);
    await this.#start(node);
    return node;
  }

  async #start(node: SimNode): Promise<void> {
    const persisted = node.incarnation === 0 ? undefined : node.disk.state();
    node.raw = new RawNode(
      {
        id: node.id,
        random: this.#random.fork(),
        electionTimeoutTicks: ELECTION_TIMEOUT_TICKS,
        heartbeatIntervalTicks: 1,
        appendBytesMax: this.#profile.appendBytesMax,
        inflightAppendsMax: this.#profile.inflightAppendsMax,
      },
      persisted,
    );
    node.incarnation++;
    node.inFlight = null;
    node.inFlightUnpersisted = false;
    node.reads.clear();
    node.pausedUntil = 0;
    const snapshot = node.disk.snapshot;
    node.appliedIndex = snapshot?.metadata.index ?? 0;
    node.state = snapshot === null ? 0 : decodeSnapshotState(snapshot);
    node.seenCommit = node.raw.basicStatus().commit;
    node.ledTerm = 0;
    node.doomed = false;
    this.#schedule({ kind: 'tick', node: node.id, incarnation: node.incarnation }, 1 + this.#random.int(TICK_UNITS));
    this.#record(`start ${node.id} life ${node.incarnation}`);
    if (node.stateDisk !== null) await this.#startState(node, snapshot);
  }

  /**
   * A life's applied state, as a manager starts one: the store opened as the crash left it,
   * `reset()` (the index it holds); then, as Replica.start with Barrier.restoreStored, the store's
   * image if it holds one at or after the newest snapshot's index (the state is at the store's
   * index, and nothing up to it is handed to the state again), else the newest snapshot: the
   * replica then replays the log after it (the core's first Readys), and the state skips the
   * secrets part of what the store already held.
   */
  async #startState(node: SimNode, snapshot: Snapshot | null): Promise<void> {
    const disk = node.stateDisk!;
    if (disk.dead) await disk.recover();
    const state = new AppliedState({ store: disk, keys: this.#keys! });
    await state.reset();
    const stored = await disk.get(APPLIED_INDEX_KEY);
    node.storedAtStart = stored === undefined ? 0 : Number(Buffer.from(stored).readBigUInt64BE(0));
    node.prepared = null;
    if (node.installing !== null) await this.#checkInterruptedInstall(node, state);
    const restart = node.incarnation > 1;
    const image = await state.storedImage();
    const snapshotIndex = snapshot?.metadata.index ?? 0;
    if (image !== null && image.index >= snapshotIndex) {
      // The image and the records are of the index the store holds, written in one batch.
      if (image.index !== node.storedAtStart || image.index === 0)
        throw new SafetyViolation(
          'core-assertion',
          `node ${node.id}: the state store's image is of index ${image.index}, its applied index record says ${node.storedAtStart}`,
        );
      await state.restore(image.image, image.index);
      node.imageThrough = image.index;
      node.imageStale = false;
      if (restart) this.stats.restartsFromImage++;
    } else {
      node.imageThrough = 0;
      node.imageStale = true;
      if (restart) this.stats.restartsFromSnapshot++;
      if (snapshot !== null) {
        try {
          await state.restore(decodeSnapshotImage(snapshot), snapshot.metadata.index);
        } catch (error) {
          // A persisted snapshot stands for the store's records: they must be there, durably.
          throw new SafetyViolation(
            'snapshot-install',
            `node ${node.id} cannot restore its snapshot at ${snapshot.metadata.index} over its state store (at ${node.storedAtStart}): ${(error as Error).message}`,
          );
        }
      }
    }
    node.applied = state;
    node.skippedCounted = 0;
    this.#record(
      `state ${node.id} store at ${node.storedAtStart}, snapshot at ${node.appliedIndex}, from ${node.imageThrough > 0 ? 'its image' : 'the snapshot'}`,
    );
    await this.#checkAllSecrets(node);
    this.#checkSmallParts(node);
  }

  /**
   * The node died while a streamed snapshot was prepared or installed, before Raft persisted it:
   * its store must hold the old content (at most the index the state held then) or the
   * snapshot's records exactly, with the snapshot's index, never a mix. (The old content's
   * secrets are then checked against the log, as at every start.)
   */
  async #checkInterruptedInstall(node: SimNode, state: AppliedState): Promise<void> {
    const { index, digest, before } = node.installing!;
    node.installing = null;
    const stored = node.storedAtStart;
    const actual = await secretsDigest(state);
    if (stored === index && actual !== digest)
      throw new SafetyViolation(
        'snapshot-install',
        `node ${node.id} started after a crash in the install of a snapshot at ${index} with a store at that index but other records (digest ${actual}, the snapshot's ${digest})`,
      );
    if (stored !== index && stored > before)
      throw new SafetyViolation(
        'snapshot-install',
        `node ${node.id} started after a crash in the install of a snapshot at ${index} with a store at ${stored}: neither the snapshot's index nor at most the ${before} it held before`,
      );
    // Nodes at the same index hold the same records: a mix would differ from the others'.
    if (stored > 0) this.#checker.onSecretsImage(node.id, stored, actual);
    this.stats.installsCheckedAfterCrash++;
    this.#record(`state ${node.id} after a crash installing ${index}: store at ${stored}`);
  }

  /** Adds the replayed secret commands the node's state skipped (already in its store) to the stats. */
  #countSkipped(node: SimNode): void {
    const skipped = node.applied?.stats.skippedOnStart ?? 0;
    this.stats.skippedOnStart += skipped - node.skippedCounted;
    node.skippedCounted = skipped;
  }

  /** The index a node's applied state holds the secrets of: its applied index, or the store's while the replay is below it. */
  #stateIndex(node: SimNode): number {
    return Math.max(node.appliedIndex, node.storedAtStart);
  }

  /**
   * The index a node's applied state holds the small parts of (and the replica's applied index,
   * which the barrier commits with): the core's while it replays from the snapshot (the small
   * parts are replayed with it), the image's while the core catches up to where the image was.
   */
  #smallPartsIndex(node: SimNode): number {
    return Math.max(node.appliedIndex, node.imageThrough);
  }

  /** A node's policies against the committed log applied once, and its small parts' image against other nodes' at the same index. */
  #checkSmallParts(node: SimNode): void {
    const state = node.applied!;
    const index = this.#smallPartsIndex(node);
    for (const name of policyNames()) this.#checker.onPolicyRead(node.id, index, name, readPolicy(state, name));
    this.#checker.onSmallPartsImage(node.id, index, smallPartsDigest(state));
    this.stats.smallPartsChecked++;
  }

  /**
   * Every name's versions against the committed log applied once, with the newest value of each
   * (after a start or a snapshot restored), or (`whole`: at the end of the run) every kept value
   * and a digest of the records, which nodes at the same index must share byte for byte.
   */
  async #checkAllSecrets(node: SimNode, whole = false): Promise<void> {
    const state = node.applied!;
    const index = this.#stateIndex(node);
    for (const name of secretNames())
      this.#checker.onSecretRead(node.id, index, name, readSecret(state, name, whole ? 'all' : 'last'));
    this.stats.secretsChecked++;
    if (!whole) return;
    this.#checker.onSecretsImage(node.id, index, await secretsDigest(state));
  }

  #crash(node: SimNode, why: string): void {
    if (node.raw === null) return;
    this.#record(`crash ${node.id} (${why})`);
    this.stats.crashes++;
    node.raw = null;
    node.inFlight = null;
    node.inFlightUnpersisted = false;
    node.hardStateUnwritten = null;
    node.incarnation++;
    node.applied = null;
    if (node.stateDisk !== null && !node.stateDisk.dead) {
      // The state store was not synced: the disk may lose the newest batches (the log replays them).
      const unsynced = node.stateDisk.unsynced;
      const lose = unsynced === 0 || this.#random.float() < 0.4 ? 0 : 1 + this.#random.int(unsynced);
      node.stateDisk.crash(lose);
      this.stats.stateBatchesLost += lose;
      if (lose > 0) this.#record(`crash ${node.id} loses ${lose} of ${unsynced} unsynced state batches`);
    }
    // Its peers' connections to it break: their transports notice soon.
    for (const peer of this.#nodes.values()) {
      if (peer.raw !== null && peer.id !== node.id) {
        this.#schedule(
          { kind: 'report', node: peer.id, incarnation: peer.incarnation, peer: node.id, what: 'unreachable' },
          1 + this.#random.int(20),
        );
      }
    }
  }

  async #restart(node: SimNode): Promise<void> {
    if (node.raw !== null || node.retired) return;
    this.stats.restarts++;
    await this.#start(node);
    await this.#afterStep(node);
  }

  /** After any input to a node: check its invariants, observe leadership, drain its Readys. */
  async #afterStep(node: SimNode): Promise<void> {
    const raw = node.raw;
    if (raw === null) return;
    raw.checkInvariants();
    this.#observe(node);
    await this.#processReady(node);
  }

  #observe(node: SimNode): void {
    const raw = node.raw!;
    const status = raw.basicStatus();
    if (status.term > this.stats.highestTerm) this.stats.highestTerm = status.term;
    if (status.role === 'leader' && node.ledTerm !== status.term) {
      node.ledTerm = status.term;
      this.stats.leaders++;
      this.#record(`leader ${node.id} term ${status.term}`);
      this.#checker.onLeader(node.id, status.term);
      this.#checker.onBecomeLeader(node.id, status.term, status.firstIndex, status.lastIndex, (i) => raw.termAt(i));
      if (this.#phase === 'chaos' && this.#random.float() < this.#profile.newLeaderDies) {
        // Dies young: its first appends may not reach anyone, leaving its term's entries on
        // its disk only (the S5 of Figure 8).
        node.doomed = true;
      }
    }
  }

  async #processReady(node: SimNode): Promise<void> {
    let rounds = 0;
    while (node.raw !== null && node.inFlight === null && node.raw.hasReady()) {
      // Each Ready drains what is pending; a loop that never ends is a core bug, not a hang.
      if (++rounds > READY_ROUNDS_MAX)
        throw new SafetyViolation(
          'core-assertion',
          `node ${node.id} still has a Ready after ${READY_ROUNDS_MAX} rounds`,
        );
      const raw = node.raw;
      const ready = raw.ready();
      // A leader's appends go out before its own write (the Ready contract allows it), and a
      // crash may come between the two: the followers then hold entries the leader lost.
      for (const message of ready.messages) if (message.type === 'append') this.#send(message);
      // A streamed snapshot's records become the store before the snapshot is persisted (the
      // replica's order): a crash between leaves a store ahead of the log, which the replay skips.
      if (ready.snapshot !== null && node.applied !== null) {
        // What earlier Readys left in memory is committed first (the replica's writeState).
        const state = node.applied;
        if (!(await this.#stateWrite(node, 'committing the state batch', () => this.#commitBatch(node, state)))) return;
        if (!(await this.#installSnapshot(node, ready.snapshot))) return;
      }
      if (this.#phase === 'chaos' && ready.entries.length > 0 && raw.basicStatus().role === 'leader') {
        const roll = this.#random.float();
        if (roll < 0.01) {
          this.stats.crashesMidReady++;
          this.stats.crashesAfterEarlyAppends++;
          this.#crash(node, 'after sending appends, before persisting them');
          return;
        }
        if (roll < 0.08) {
          // A slow write: the followers' acknowledgements may come back before it finishes.
          node.inFlight = ready;
          node.inFlightUnpersisted = true;
          this.#schedule(
            { kind: 'finish-ready', node: node.id, incarnation: node.incarnation },
            2 + this.#random.int(10),
          );
          return;
        }
      }
      if (
        this.#phase === 'chaos' &&
        node.applied !== null &&
        !ready.mustSync &&
        ready.entries.length === 0 &&
        ready.snapshot === null &&
        ready.committedEntries.length > 0 &&
        this.#random.float() < COMMIT_INDEX_CRASH
      ) {
        // The replica applies a commit-only Ready without writing its commit index (the next
        // write carries it): a crash before that leaves the state's store ahead of the commit
        // index on disk. The restart must apply
        // nothing twice (the store's index wins) and lose nothing (the entries are in the log).
        this.#noteCommit(node, ready);
        await this.#finishReady(node, ready, { send: false });
        if (node.raw === null) return; // it crashed committing the state batch
        this.stats.crashesMidReady++;
        this.stats.crashesBeforeCommitIndexWrite++;
        this.#crash(node, 'after applying a commit-only Ready, before writing its commit index');
        return;
      }
      const commitAdvanced = this.#persist(node, ready);
      if (
        commitAdvanced &&
        this.#phase === 'chaos' &&
        raw.basicStatus().role === 'leader' &&
        this.#random.float() < this.#profile.leaderDiesAfterCommit
      ) {
        node.doomed = true; // crash right after committing, before telling anyone
      }
      if (node.doomed && this.#phase !== 'chaos') node.doomed = false; // liveness: no more faults
      if (node.doomed) {
        node.doomed = false;
        this.stats.crashesMidReady++;
        this.#crash(node, 'doomed: dies after persisting, before sending');
        return;
      }
      if (this.#phase === 'chaos' && this.#random.float() < 0.002) {
        // Crash after the write is durable but before anything is sent or applied.
        this.stats.crashesMidReady++;
        this.#crash(node, 'after persisting a ready');
        return;
      }
      if (this.#random.float() < this.#interleaveRate) {
        // Finish later, so messages and ticks can step the node between ready() and advance().
        node.inFlight = ready;
        this.#schedule({ kind: 'finish-ready', node: node.id, incarnation: node.incarnation }, 1 + this.#random.int(4));
        return;
      }
      await this.#finishReady(node, ready);
      if (node.raw === null) return; // it crashed on the way
      raw.checkInvariants();
      this.#observe(node);
    }
  }

  /** Writes the Ready to the node's disk and checks what it wrote; true if commit advanced. */
  #persist(node: SimNode, ready: Ready): boolean {
    // The Ready contract's sync rule: synced exactly when it holds entries, a snapshot, or a term
    // or vote other than the one on disk (a commit-only write need not be).
    const onDisk = node.disk.hardState;
    const next = ready.hardState;
    const mustSync =
      ready.entries.length > 0 ||
      ready.snapshot !== null ||
      (next !== null && (next.term !== onDisk.term || next.vote !== onDisk.vote));
    if (ready.mustSync !== mustSync)
      throw new SafetyViolation(
        'core-assertion',
        `node ${node.id}: a Ready with ${ready.entries.length} entries and hard state ${JSON.stringify(next)} (on disk ${JSON.stringify(onDisk)}) says mustSync ${ready.mustSync}`,
      );
    // A commit-only hard state may be left for the next write to carry (the replica's rule; a
    // tick decides there, a seeded draw here); a crash meanwhile loses it.
    const commitOnly = next !== null && !mustSync;
    if (commitOnly && this.#random.float() < COMMIT_INDEX_LEFT_UNWRITTEN) {
      node.hardStateUnwritten = next;
      this.stats.commitIndexWritesLeft++;
      return this.#noteCommit(node, ready);
    }
    const hard = next ?? node.hardStateUnwritten;
    node.hardStateUnwritten = null;
    node.disk.save({ hardState: hard, entries: ready.entries, snapshot: ready.snapshot });
    if (ready.snapshot !== null) node.installing = null;
    for (const entry of ready.entries)
      this.#checker.onEntryPersisted(node.id, entry, node.disk.termAt(entry.index - 1));
    if (hard !== null) this.#checker.onDurableHardState(node.id, hard.term, hard.commit);
    return this.#noteCommit(node, ready);
  }

  /** Tells the checker the commit index a Ready carries, if it moved; true if it did. */
  #noteCommit(node: SimNode, ready: Ready): boolean {
    const raw = node.raw!;
    const hard = ready.hardState;
    if (hard === null || hard.commit <= node.seenCommit) return false;
    this.#checker.onCommit(node.id, hard.term, node.seenCommit, hard.commit, (i) => raw.entry(i));
    node.seenCommit = hard.commit;
    if (hard.commit > this.stats.committed) this.stats.committed = hard.commit;
    return true;
  }

  async #finishReady(node: SimNode, ready: Ready, options: { readonly send: boolean } = { send: true }): Promise<void> {
    const raw = node.raw!;
    let votedFor: NodeId = 0;
    // Applied-state mode: snapshots go streamed, as of the point applied once this Ready is advanced.
    const snapshots: SnapshotMessage[] = [];
    for (const message of options.send ? ready.messages : []) {
      if (message.type === 'append') continue; // sent before the write (#processReady)
      if (message.type === 'snapshot' && node.applied !== null) {
        snapshots.push(message);
        continue;
      }
      this.#send(message);
      if (message.type === 'vote-response' && !message.reject) votedFor = message.to;
    }
    if (votedFor !== 0 && this.#phase === 'chaos' && this.#random.float() < this.#profile.voterBounces) {
      // Crash just after the vote went out, and come back while the election may still run:
      // a node that forgot its vote would now vote again in the same term.
      this.#crash(node, `bounces after voting for ${votedFor}`);
      // Often fast enough that the other candidates' requests of the same term still arrive.
      this.#schedule(
        { kind: 'restart', node: node.id },
        1 + this.#random.int(this.#random.float() < 0.7 ? 4 : 3 * TICK_UNITS),
      );
      return;
    }
    const state = node.applied;
    /** Whether this Ready changed the applied state, and the secrets its puts wrote. */
    let applied = false;
    const touched = new Set<string>();
    if (ready.snapshot !== null) {
      const snapshot = ready.snapshot;
      node.state = decodeSnapshotState(snapshot);
      node.appliedIndex = snapshot.metadata.index;
      this.#checker.onSnapshotRestored(node.id, snapshot, node.state);
      this.stats.snapshotsInstalled++;
      this.#record(`restore ${node.id} snapshot ${snapshot.metadata.index}`);
      if (state !== null) {
        // The replica restores a leader's snapshot (its descriptor: the records are installed)
        // after persisting it, before applying entries.
        const restored = await this.#stateWrite(node, 'restoring a snapshot', () =>
          state.restore(decodeSnapshotImage(snapshot), snapshot.metadata.index),
        );
        if (!restored) return;
        // The store's image (if any) is not of this state: the next batch writes one (the barrier's restore).
        node.imageThrough = 0;
        node.imageStale = true;
        await this.#checkAllSecrets(node);
        this.#checkSmallParts(node);
        applied = true;
      }
    }
    for (const entry of ready.committedEntries) {
      if (entry.index <= node.appliedIndex) continue;
      node.state = this.#checker.onApply(node.id, node.appliedIndex, node.state, entry);
      node.appliedIndex = entry.index;
      if (state !== null) {
        applied = true;
        // Started from the store's image: entries up to its index are in it (the replica hands them to no one).
        if (entry.index > node.imageThrough) {
          const put = this.#applyToState(node, state, entry);
          if (put !== null) touched.add(put);
        }
      }
      this.#onApplied(entry.index, entry.kind === 'conf-change' ? entry.change : null);
    }
    for (const read of ready.readStates) {
      const required = node.reads.get(read.context);
      if (required === undefined) continue; // a duplicate answer, or one for an earlier life
      node.reads.delete(read.context);
      this.#checker.onReadState(node.id, read.context, read.index, required);
      this.stats.readsServed++;
    }
    for (const refusal of ready.readRefusals) {
      if (node.reads.delete(refusal.context)) this.stats.readsRefused++;
    }
    raw.advance();
    if (snapshots.length > 0) await this.#sendSnapshots(node, snapshots);
    if (applied) await this.#commitState(node, touched);
  }

  /** Applies a normal entry's command (a secret put, or a policy write) to the node's state; the secret it put, or null. */
  #applyToState(node: SimNode, state: AppliedState, entry: Entry): string | null {
    if (entry.kind !== 'normal') return null;
    const put = putOf(entry.data);
    const policy = put === null ? policyOf(entry.data) : null;
    const command = put !== null ? encodePut(put) : policy !== null ? encodePolicyPut(policy) : null;
    if (command === null) return null;
    const result = state.apply({ index: entry.index, ...command });
    if (!result.ok)
      throw new SafetyViolation(
        'core-assertion',
        `node ${node.id}: AppliedState refused the ${command.kind} of entry ${entry.index}: ${'reason' in result ? result.reason : JSON.stringify(result)}`,
      );
    return put?.name ?? null;
  }

  /**
   * As the replica's #sendSnapshots: each snapshot the core asked for goes as the state is now,
   * the core's applied point, the state's descriptor and its records read from a point-in-time
   * view, all taken in this turn. Not while a restart's replay is below what the store held.
   */
  async #sendSnapshots(node: SimNode, messages: readonly SnapshotMessage[]): Promise<void> {
    const raw = node.raw!;
    const state = node.applied!;
    for (const message of messages) {
      if (node.appliedIndex < node.storedAtStart || raw.basicStatus().applied !== node.appliedIndex) {
        this.#record(`snapshot ${node.id}>${message.to} refused: the core is behind the state`);
        raw.reportSnapshot(message.to, false);
        continue;
      }
      const at = raw.snapshotPoint();
      const data = encodeSnapshotState(node.state, state.descriptor());
      const view = state.snapshotPages();
      const records: StateRecord[] = [];
      for await (const page of view)
        for (const record of page) records.push({ key: Buffer.from(record.key), value: Buffer.from(record.value) });
      const streamed: SnapshotMessage = { ...message, snapshot: { metadata: at, data } };
      this.#streams.set(streamed, records);
      // The sender's records at its applied point: any node's at that index must be the same.
      this.#checker.onSecretsImage(node.id, at.index, digestOf(records));
      this.stats.snapshotsStreamed++;
      this.#record(`snapshot ${node.id}>${message.to} streamed at ${at.index}: ${records.length} records`);
      this.#send(streamed);
    }
  }

  /**
   * A receiver writes a streamed snapshot's records aside before its core steps the message; false
   * if it died doing so (the stream is lost with it).
   */
  async #prepareSnapshot(node: SimNode, message: SnapshotMessage): Promise<boolean> {
    const records = this.#streams.get(message);
    if (records === undefined)
      throw new SafetyViolation(
        'core-assertion',
        `a snapshot from ${message.from} to ${message.to} came without its records`,
      );
    const state = node.applied!;
    const index = message.snapshot.metadata.index;
    const digest = digestOf(records);
    node.installing = { index, digest, before: this.#stateIndex(node) };
    const ok = await this.#stateWrite(node, `preparing the snapshot at ${index}`, () =>
      state.prepareSnapshot(index, iterate(records)),
    );
    if (!ok) return false;
    node.installing = null;
    node.prepared = { index, digest };
    return true;
  }

  /**
   * Raft accepted a snapshot: the node switches its store to the records prepared for it, before
   * the snapshot is persisted, and may die right after (before persisting it); false if it died.
   */
  async #installSnapshot(node: SimNode, snapshot: Snapshot): Promise<boolean> {
    const state = node.applied!;
    const index = snapshot.metadata.index;
    const prepared = node.prepared;
    node.prepared = null;
    node.installing =
      prepared !== null && prepared.index === index
        ? { index, digest: prepared.digest, before: this.#stateIndex(node) }
        : null;
    let installed = false;
    const ok = await this.#stateWrite(node, `installing the snapshot at ${index}`, async () => {
      installed = await state.installSnapshot(index);
    });
    if (!ok) return false;
    if (!installed)
      throw new SafetyViolation(
        'snapshot-install',
        `node ${node.id}: Raft accepted the snapshot at ${index}, but no records were prepared for it`,
      );
    // The store holds the snapshot's index now (and no image), not what it held at the start of this life.
    node.storedAtStart = 0;
    node.imageThrough = 0;
    this.#record(`install ${node.id} snapshot ${index}`);
    return true;
  }

  /**
   * After a Ready's applies and advance, as the barrier's afterApply does: the state's changes, the
   * applied index and the small parts' image when due, in one batch (not synced), each side of it a
   * point where the node may die. Then the versions of the names this Ready wrote are read back
   * and checked, and the small parts.
   */
  async #commitState(node: SimNode, touched: ReadonlySet<string>): Promise<void> {
    const state = node.applied!;
    if (this.#phase === 'chaos' && this.#random.float() < STATE_CRASH_BEFORE_COMMIT) {
      this.stats.crashesBeforeStateCommit++;
      this.#crash(node, 'after applying, before committing the state batch');
      return;
    }
    // Left in memory, as the barrier may (reads see the changes; a crash loses them to the replay).
    const deferred = state.pendingBytes < STATE_PENDING_BYTES_MAX && this.#random.float() < STATE_COMMIT_DEFERRED;
    if (deferred) this.stats.stateCommitsDeferred++;
    else {
      const committed = await this.#stateWrite(node, 'committing the state batch', () =>
        this.#commitBatch(node, state),
      );
      if (!committed) return;
    }
    this.#countSkipped(node);
    const index = this.#stateIndex(node);
    // The versions only (their values are read at every start, snapshot restored and run's end).
    for (const name of touched) this.#checker.onSecretRead(node.id, index, name, readSecret(state, name, 'none'));
    this.#checkSmallParts(node);
    if (this.#phase === 'chaos' && this.#random.float() < STATE_CRASH_AFTER_COMMIT) {
      this.stats.crashesAfterStateCommit++;
      this.#crash(node, 'after committing the state batch, before the next Ready');
    }
  }

  /**
   * As the barrier's #commitInner: the state batch with the replica's applied index and, when the
   * small parts changed or the store holds no image of this life's state yet, their image (the
   * descriptor: what `restore` takes back at a start). The image counts as stored only if the
   * state says the batch wrote it (not while a restart's replay is below what the store held).
   */
  async #commitBatch(node: SimNode, state: AppliedState): Promise<void> {
    const image = node.imageStale || state.smallPartsChanged ? state.descriptor() : null;
    const written = await state.commit({ appliedIndex: this.#smallPartsIndex(node), image });
    if (written && image !== null) {
      node.imageStale = false;
      this.stats.imagesStored++;
    }
  }

  /**
   * Runs one operation of the applied state that writes its store, with a chance (in the chaos
   * phase) that the process dies at any of its writes, which then never happen; false if it died.
   */
  async #stateWrite(node: SimNode, what: string, operation: () => Promise<unknown>): Promise<boolean> {
    const disk = node.stateDisk!;
    const before = disk.stats.batches;
    const asideBefore = disk.stats.asideBatches;
    if (this.#phase === 'chaos')
      disk.dieAtWrite = (point) =>
        this.#random.float() < (point === 'write' ? STATE_CRASH_AT_WRITE : SNAPSHOT_CRASH[point]);
    try {
      await operation();
      return true;
    } catch (error) {
      if (!(error instanceof SimCrash)) throw error;
      if (error.point === 'write') this.stats.crashesAtStateWrite++;
      else if (error.point === 'prepare') this.stats.crashesPreparingSnapshot++;
      else if (error.point === 'switch') this.stats.crashesBeforeSnapshotSwitch++;
      else this.stats.crashesAfterSnapshotSwitch++;
      this.#crash(node, `at a write of the state store (${error.point}), ${what}`);
      return false;
    } finally {
      disk.dieAtWrite = null;
      this.stats.stateBatches += disk.stats.batches - before;
      this.stats.snapshotBatchesAside += disk.stats.asideBatches - asideBefore;
    }
  }

  /**
   * The membership as of the highest index any node has applied. Every index is first applied
   * by a node that applied all before it (snapshots only carry what some node applied), so
   * following that frontier sees each conf change once, in log order.
   */
  #onApplied(index: number, change: ConfChange | null): void {
    if (index !== this.#applyFrontier + 1) return;
    this.#applyFrontier = index;
    if (change === null) return;
    this.stats.confChangesApplied++;
    this.#record(`conf ${change.type} ${change.nodeId}`);
    const { type, nodeId } = change;
    if (type === 'add-voter') {
      this.#learners.delete(nodeId);
      this.#voters.add(nodeId);
    } else if (type === 'add-learner') {
      if (!(this.#voters.has(nodeId) && this.#voters.size === 1)) {
        this.#voters.delete(nodeId);
        this.#learners.add(nodeId);
      }
    } else if (this.#learners.has(nodeId) || (this.#voters.has(nodeId) && this.#voters.size > 1)) {
      this.#voters.delete(nodeId);
      this.#learners.delete(nodeId);
      this.#removed.add(nodeId);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Network
  // -------------------------------------------------------------------------------------------

  #send(message: Message): void {
    this.stats.messages++;
    const copies = this.#random.float() < this.#duplicateRate ? 2 : 1;
    for (let k = 0; k < copies; k++) {
      if (this.#cut.has(`${message.from}>${message.to}`) || this.#random.float() < this.#dropRate) {
        this.#dropped(message);
        continue;
      }
      const delay = this.#random.float() < this.#longDelayRate ? 5 + this.#random.int(60) : 1 + this.#random.int(4);
      this.#schedule({ kind: 'deliver', message }, delay);
    }
  }

  #dropped(message: Message): void {
    this.stats.dropped++;
    if (message.type === 'snapshot') this.#reportSnapshot(message, false);
  }

  #reportSnapshot(message: Message, ok: boolean): void {
    const sender = this.#nodes.get(message.from);
    if (sender === undefined || sender.raw === null) return;
    this.#schedule(
      {
        kind: 'report',
        node: sender.id,
        incarnation: sender.incarnation,
        peer: message.to,
        what: ok ? 'snapshot-ok' : 'snapshot-failed',
      },
      1,
    );
  }

  async #deliver(message: Message): Promise<void> {
    const target = this.#nodes.get(message.to);
    if (target === undefined || target.raw === null || this.#cut.has(`${message.from}>${message.to}`)) {
      this.#dropped(message);
      return;
    }
    if (target.pausedUntil > this.#now) {
      // The kernel buffers it; the paused process reads it when it wakes.
      this.#schedule({ kind: 'deliver', message }, target.pausedUntil - this.#now + this.#random.int(3));
      return;
    }
    this.#record(`deliver ${message.type} ${message.from}>${message.to} t${message.term}`);
    if (message.type === 'snapshot' && target.applied !== null && !(await this.#prepareSnapshot(target, message))) {
      this.#reportSnapshot(message, false);
      return;
    }
    target.raw!.step(message);
    if (message.type === 'snapshot') this.#reportSnapshot(message, true);
    await this.#afterStep(target);
  }

  #drawNetworkProfile(): void {
    const r = this.#random;
    this.#dropRate = r.float() < 0.3 ? 0 : r.float() * 0.15;
    this.#duplicateRate = r.float() < 0.5 ? 0 : r.float() * 0.05;
    this.#longDelayRate = r.float() < 0.3 ? 0 : r.float() * 0.1;
    this.#interleaveRate = r.float() < 0.5 ? 0 : r.float() * 0.3;
  }

  #cutLink(from: NodeId, to: NodeId): void {
    if (from === to || this.#cut.has(`${from}>${to}`)) return;
    this.#cut.add(`${from}>${to}`);
    // A broken link is noticed by the transports on both ends, sometimes, after a while.
    if (this.#random.float() < 0.6) {
      for (const [a, b] of [
        [from, to],
        [to, from],
      ] as const) {
        const node = this.#nodes.get(a);
        if (node?.raw)
          this.#schedule(
            { kind: 'report', node: a, incarnation: node.incarnation, peer: b, what: 'unreachable' },
            5 + this.#random.int(40),
          );
      }
    }
  }

  #partition(a: readonly NodeId[], b: readonly NodeId[], oneWay = false): void {
    for (const x of a) {
      for (const y of b) {
        this.#cutLink(x, y);
        if (!oneWay) this.#cutLink(y, x);
      }
    }
  }

  #heal(): void {
    if (this.#cut.size > 0) this.#record('heal');
    this.#cut.clear();
  }

  // -------------------------------------------------------------------------------------------
  // The driver: workload and faults, one decision round per tick
  // -------------------------------------------------------------------------------------------

  #upNodes(): SimNode[] {
    return [...this.#nodes.values()].filter((n) => n.raw !== null);
  }

  #pick<T>(items: readonly T[]): T | undefined {
    return items.length === 0 ? undefined : items[this.#random.int(items.length)];
  }

  /** The live leader of the highest term, if any. */
  #leader(): SimNode | null {
    let best: SimNode | null = null;
    let bestTerm = -1;
    for (const node of this.#nodes.values()) {
      const status = node.raw?.basicStatus();
      if (status?.role === 'leader' && status.term > bestTerm) {
        best = node;
        bestTerm = status.term;
      }
    }
    return best;
  }

  async #drive(): Promise<void> {
    if (this.#phase === 'chaos') await this.#driveChaos();
    else if (this.#phase === 'liveness') await this.#driveLiveness();
    else if (this.#phase === 'probe') this.#driveProbe();
  }

  async #propose(node: SimNode, value: string): Promise<{ index: number; term: number } | null> {
    if (node.raw === null) return null;
    try {
      const at = node.raw!.propose(encoder.encode(value));
      this.stats.proposals++;
      this.#record(`propose ${node.id} ${value}`);
      await this.#afterStep(node);
      return at;
    } catch (error) {
      if (error instanceof RaftError) return null;
      throw error;
    }
  }

  async #driveChaos(): Promise<void> {
    const r = this.#random;
    let leader = this.#leader();
    const up = this.#upNodes();

    // Workload: writes, mostly at the leader, and linearizable reads anywhere.
    const writes = r.int(3);
    for (let k = 0; k < writes; k++) {
      const target = leader !== null && r.float() < 0.8 ? leader : this.#pick(up);
      const seq = ++this.#proposalSeq;
      const prefix = seq % POLICY_WRITE_EVERY === 0 ? POLICY_TEXT_PREFIX : 'v';
      if (target) await this.#propose(target, `${prefix}${this.#options.seed}.${seq}`);
    }
    if (r.float() < 0.3) {
      const target = this.#pick(up);
      if (target) await this.#read(target);
    }

    // Faults.
    const p = this.#profile;
    if (r.float() < p.crash) {
      const victim = this.#pick(up.filter((n) => n.raw !== null && !n.retired));
      if (victim) this.#crash(victim, 'random');
    }
    leader = this.#leader();
    if (leader !== null && r.float() < p.leaderCrash) this.#crash(leader, 'leader');
    for (const node of this.#nodes.values()) {
      if (node.raw === null && !node.retired && r.float() < p.restart) await this.#restart(node);
    }
    if (r.float() < p.pause) {
      const victim = this.#pick(this.#upNodes());
      if (victim) {
        victim.pausedUntil = this.#now + (5 + r.int(40)) * TICK_UNITS;
        this.#record(`pause ${victim.id}`);
      }
    }
    leader = this.#leader();
    if (r.float() < p.partition) this.#randomPartition(leader);
    if (leader !== null && r.float() < p.minorityLeader) this.#minorityLeader(leader);
    if (this.#cut.size > 0 && r.float() < p.heal) this.#heal();
    if (r.float() < 0.005) this.#drawNetworkProfile();

    // Snapshots, membership, leadership transfer (the faults above may have changed the leader).
    leader = this.#leader();
    if (r.float() < 0.05) {
      const node = this.#pick(this.#upNodes());
      if (node) await this.#snapshot(node);
    }
    if (leader !== null && r.float() < 0.012) await this.#changeMembership(leader);
    if (leader !== null && leader.raw !== null && r.float() < 0.006) {
      const target = this.#pick(leader.raw.status().confState.voters.filter((id) => id !== leader.id));
      if (target !== undefined) {
        try {
          leader.raw!.transferLeadership(target);
          this.stats.transfers++;
          this.#record(`transfer ${leader.id} -> ${target}`);
          await this.#afterStep(leader);
        } catch (error) {
          if (!(error instanceof RaftError)) throw error;
        }
      }
    }
    // Removed members are shut down, eventually.
    for (const node of up) {
      if (node.raw !== null && !node.retired && this.#removed.has(node.id) && r.float() < 0.05) {
        node.retired = true;
        this.#crash(node, 'retired after removal');
      }
    }
  }

  async #read(node: SimNode): Promise<void> {
    if (node.raw === null) return;
    const context = `r${++this.#readSeq}`;
    let required = this.#checker.commitMax;
    for (const other of this.#nodes.values()) {
      const commit = other.raw?.basicStatus().commit ?? 0;
      if (commit > required) required = commit;
    }
    node.reads.set(context, required);
    this.#record(`read ${node.id} ${context}`);
    node.raw!.readIndex(context);
    await this.#afterStep(node);
  }

  #randomPartition(leader: SimNode | null): void {
    const ids = [...this.#nodes.values()].filter((n) => !n.retired).map((n) => n.id);
    if (ids.length < 2) return;
    this.#heal();
    this.stats.partitions++;
    const r = this.#random;
    const kind = r.int(5);
    const shuffled = ids
      .map((id) => ({ id, key: r.float() }))
      .sort((a, b) => a.key - b.key)
      .map((x) => x.id);
    if (kind === 0) {
      const cutAt = 1 + r.int(shuffled.length - 1);
      this.#record(`partition halves ${shuffled.slice(0, cutAt)} | ${shuffled.slice(cutAt)}`);
      this.#partition(shuffled.slice(0, cutAt), shuffled.slice(cutAt));
    } else if (kind === 1 && leader !== null) {
      this.#record(`partition isolate leader ${leader.id}`);
      this.#partition(
        [leader.id],
        ids.filter((id) => id !== leader.id),
      );
    } else if (kind === 2) {
      // A bridge: two halves that cannot talk, and one node that talks to both.
      const bridge = shuffled[0]!;
      const rest = shuffled.slice(1);
      const half = Math.ceil(rest.length / 2);
      this.#record(`partition bridge ${bridge}: ${rest.slice(0, half)} | ${rest.slice(half)}`);
      this.#partition(rest.slice(0, half), rest.slice(half));
    } else if (kind === 3) {
      const a = shuffled[0]!;
      const b = shuffled[1]!;
      this.#record(`partition one-way ${a}>${b}`);
      this.#partition([a], [b], true);
    } else {
      const victim = shuffled[0]!;
      this.#record(`partition isolate ${victim}`);
      this.#partition(
        [victim],
        ids.filter((id) => id !== victim),
      );
    }
  }

  /**
   * Leaves the leader on the minority side with as many followers as a minority allows: it goes
   * on taking writes it can replicate to them but never commit (until check-quorum deposes it),
   * which makes the logs of old terms that Figure 8 is about.
   */
  #minorityLeader(leader: SimNode): void {
    const others = [...this.#voters].filter((id) => id !== leader.id && this.#nodes.get(id)?.raw != null);
    const shuffled = others
      .map((id) => ({ id, key: this.#random.float() }))
      .sort((a, b) => a.key - b.key)
      .map((x) => x.id);
    const minority = Math.floor((this.#voters.size - 1) / 2); // followers that may join the leader
    const buddies = shuffled.slice(0, minority);
    const rest = [...this.#nodes.keys()].filter((id) => id !== leader.id && !buddies.includes(id));
    this.#heal();
    this.stats.partitions++;
    this.#record(`partition minority leader ${leader.id} with ${buddies} | ${rest}`);
    this.#partition([leader.id, ...buddies], rest);
  }

  async #snapshot(node: SimNode): Promise<void> {
    const raw = node.raw;
    if (raw === null || node.inFlight !== null) return;
    const status = raw.basicStatus();
    const snapshotIndex = node.disk.snapshot?.metadata.index ?? 0;
    if (status.applied - snapshotIndex < 5 || node.appliedIndex !== status.applied) return;
    // Not while a restart's replay is still below the index the store held, as the replica does
    // not snapshot while its core is behind the state.
    const state = node.applied;
    if (state !== null && node.appliedIndex < node.storedAtStart) return;
    // The descriptor stands for the store: the store is made durable through the applied index first
    // (the barrier's syncState: its batch, with the image if due, then the synced write).
    if (
      state !== null &&
      !(await this.#stateWrite(node, 'syncing before a snapshot', async () => {
        await this.#commitBatch(node, state);
        await state.sync(node.appliedIndex);
      }))
    )
      return;
    const image = state === null ? null : state.descriptor();
    const snapshot = raw.createSnapshot(encodeSnapshotState(node.state, image));
    const keep = this.#random.int(10);
    const compactTo = snapshot.metadata.index - keep;
    if (compactTo > status.firstIndex - 1) raw.compact(compactTo);
    node.disk.saveSnapshot(snapshot, Math.max(compactTo, status.firstIndex - 1));
    this.stats.snapshotsTaken++;
    this.#record(`snapshot ${node.id} at ${snapshot.metadata.index} compact ${compactTo}`);
  }

  async #changeMembership(leader: SimNode): Promise<void> {
    const raw = leader.raw;
    if (raw === null) return;
    const status = raw.status();
    const { voters, learners } = status.confState;
    const r = this.#random;
    const choice = r.int(4);
    let change: { type: 'add-voter' | 'add-learner' | 'remove'; nodeId: NodeId } | null = null;
    if (choice === 0 && voters.length + learners.length < MEMBERS_MAX) {
      const id = this.#nextNodeId++;
      await this.#createNode(id);
      change = { type: 'add-learner', nodeId: id };
    } else if (choice === 1 && learners.length > 0) {
      const id = this.#pick(learners)!;
      const pr = status.progress?.get(id);
      if (pr !== undefined && status.lastIndex - pr.match < 20) change = { type: 'add-voter', nodeId: id };
    } else if (choice === 2 && voters.length > VOTERS_MIN) {
      change = { type: 'remove', nodeId: this.#pick(voters)! };
    } else if (choice === 3 && learners.length > 0 && r.float() < 0.5) {
      change = { type: 'remove', nodeId: this.#pick(learners)! };
    }
    if (change === null) return;
    try {
      raw.proposeConfChange(change);
      this.#record(`propose conf ${change.type} ${change.nodeId}`);
      await this.#afterStep(leader);
    } catch (error) {
      if (!(error instanceof RaftError)) throw error;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Liveness: heal everything; a leader must emerge and commit within a bound
  // -------------------------------------------------------------------------------------------

  async #startLiveness(): Promise<void> {
    this.#phase = 'liveness';
    this.#livenessStartedAt = this.#now;
    this.#record('liveness phase');
    this.#heal();
    this.#dropRate = 0;
    this.#duplicateRate = 0;
    this.#longDelayRate = 0;
    for (const node of this.#nodes.values()) {
      node.pausedUntil = 0;
      if (node.raw === null && !node.retired) await this.#restart(node);
    }
    // Paused nodes wake now: what their kernels buffered arrives now, not at the old pause end.
    const buffered = this.#events.removeWhere((e) => e.kind === 'deliver' && e.time > this.#now + 100);
    for (const event of buffered) {
      if (event.kind === 'deliver')
        this.#schedule({ kind: 'deliver', message: event.message }, 1 + this.#random.int(4));
    }
    // Generous: a few election rounds plus catching up by snapshot.
    this.#phaseDeadline = this.#now + 60 * ELECTION_TIMEOUT_TICKS * TICK_UNITS;
  }

  #members(): NodeId[] {
    return [...this.#voters, ...this.#learners];
  }

  async #driveLiveness(): Promise<void> {
    if (this.#now > this.#phaseDeadline) {
      const leader = this.#leader();
      if (leader === null)
        throw new SafetyViolation('liveness', `no leader ${60 * ELECTION_TIMEOUT_TICKS} ticks after healing`);
      const status = leader.raw!.status();
      const lagging = this.#members()
        .filter((id) => (this.#nodes.get(id)?.appliedIndex ?? 0) < (this.#liveness?.index ?? Infinity))
        .map((id) => {
          const node = this.#nodes.get(id);
          const pr = status.progress?.get(id);
          return `${id} (${node?.raw === null ? 'down' : `applied ${node?.appliedIndex}`}, progress ${JSON.stringify(pr ?? null)})`;
        });
      throw new SafetyViolation(
        'liveness',
        `value ${String(this.#liveness?.value)} at ${String(this.#liveness?.index)} not applied on every member ` +
          `${60 * ELECTION_TIMEOUT_TICKS} ticks after healing; leader ${leader.id} term ${status.term} commit ${status.commit}; lagging: ${lagging.join(', ')}`,
      );
    }
    const leader = this.#leader();
    if (leader === null) return;
    if (this.#liveness === null) {
      const value = `live${this.#options.seed}.${++this.#livenessAttempts}`;
      const at = await this.#propose(leader, value);
      if (at !== null) this.#liveness = { value, ...at };
      return;
    }
    const committed = this.#checker.committedEntry(this.#liveness.index);
    if (committed === undefined) {
      // Proposed under a leader that has since lost its term: it may never commit.
      if (leader.raw!.basicStatus().term !== this.#liveness.term) this.#liveness = null;
      return;
    }
    if (committed.key !== `n:${this.#liveness.value}`) {
      this.#liveness = null; // lost to a leader change: propose again
      return;
    }
    // Done when every member (as the leader sees the membership) has applied it.
    const members = this.#members();
    const index = this.#liveness.index;
    const allApplied = members.every((id) => {
      const node = this.#nodes.get(id);
      return node !== undefined && node.raw !== null && node.appliedIndex >= index;
    });
    // The probe needs a calm cluster: no transfer under way, no chaos-era message still in flight.
    const calm = leader.raw!.status().leadTransferee === 0 && this.#now >= this.#livenessStartedAt + 100;
    if (allApplied && members.length > 0 && calm) this.#startProbe(leader);
  }

  // -------------------------------------------------------------------------------------------
  // Non-disruption: a voter cut off and brought back must not depose a healthy leader (§9.6)
  // -------------------------------------------------------------------------------------------

  #startProbe(leader: SimNode): void {
    this.#phase = 'probe';
    const status = leader.raw!.status();
    const followers = status.confState.voters.filter((id) => id !== leader.id);
    const isolated = this.#pick(followers);
    if (isolated === undefined) {
      this.#phase = 'done';
      return;
    }
    const ids = [...this.#nodes.keys()].filter((id) => id !== isolated);
    this.#record(`probe: isolate ${isolated} under leader ${leader.id} term ${status.term}`);
    for (const id of ids) {
      this.#cut.add(`${id}>${isolated}`);
      this.#cut.add(`${isolated}>${id}`);
    }
    // Both ends notice the broken connections, as a real transport would.
    const isolatedNode = this.#nodes.get(isolated)!;
    this.#schedule(
      { kind: 'report', node: isolated, incarnation: isolatedNode.incarnation, peer: leader.id, what: 'unreachable' },
      5,
    );
    this.#schedule(
      { kind: 'report', node: leader.id, incarnation: leader.incarnation, peer: isolated, what: 'unreachable' },
      5,
    );
    const healAt = this.#now + (3 * ELECTION_TIMEOUT_TICKS + this.#random.int(20)) * TICK_UNITS;
    this.#probe = {
      leader: leader.id,
      term: status.term,
      isolated,
      healAt,
      checkAt: healAt + 4 * ELECTION_TIMEOUT_TICKS * TICK_UNITS,
    };
  }

  #driveProbe(): void {
    const probe = this.#probe!;
    if (this.#cut.size > 0 && this.#now >= probe.healAt) this.#heal();
    for (const node of this.#nodes.values()) {
      const status = node.raw?.basicStatus();
      if (status === undefined) continue;
      if (status.term > probe.term) {
        throw new SafetyViolation(
          'non-disruption',
          `node ${node.id} reached term ${status.term} after node ${probe.isolated} was isolated under leader ${probe.leader} of term ${probe.term}`,
        );
      }
    }
    if (this.#now >= probe.checkAt) {
      const leader = this.#nodes.get(probe.leader)?.raw?.basicStatus();
      if (leader?.role !== 'leader') {
        throw new SafetyViolation(
          'non-disruption',
          `leader ${probe.leader} lost leadership after node ${probe.isolated} returned`,
        );
      }
      this.#phase = 'done';
      this.#record('done');
    }
  }
}

/** How hard a seed hits the cluster: calm seeds find slow bugs, storms find races. */
interface FaultProfile {
  readonly crash: number;
  readonly leaderCrash: number;
  readonly restart: number;
  readonly pause: number;
  readonly partition: number;
  readonly minorityLeader: number;
  readonly heal: number;
  /** Chance that a node crashes right after winning an election, before its first sends. */
  readonly newLeaderDies: number;
  /** Chance that a leader crashes right after its commit index advances, before sending. */
  readonly leaderDiesAfterCommit: number;
  /** Chance that a node crashes right after granting a vote, and restarts within 3 ticks. */
  readonly voterBounces: number;
  /** Small values split old-term and new-term entries into separate appends (Figure 8). */
  readonly appendBytesMax: number;
  readonly inflightAppendsMax: number;
  /** Applied-state mode: the unsynced state batches a crash may lose at most (state-disk.ts). */
  readonly stateUnsyncedMax: number;
}

function drawFaultProfile(r: SeededRandom, appliedState: boolean): FaultProfile {
  const storm = r.float() < 0.5;
  const pickOf = <T>(items: readonly T[]): T => items[r.int(items.length)]!;
  return {
    crash: storm ? 0.02 : 0.008,
    leaderCrash: storm ? 0.02 : 0.004,
    restart: storm ? 0.1 : 0.04,
    pause: 0.004,
    partition: storm ? 0.04 : 0.01,
    minorityLeader: storm ? 0.04 : 0.005,
    heal: storm ? 0.08 : 0.03,
    newLeaderDies: storm ? 0.15 : 0.02,
    leaderDiesAfterCommit: storm ? 0.03 : 0.002,
    voterBounces: storm ? 0.1 : 0.01,
    appendBytesMax: pickOf([1, 48, 256, 4096]),
    inflightAppendsMax: pickOf([1, 4, 8, 64]),
    // Drawn last, and only when there are state stores: hash-chain runs stay as they were.
    stateUnsyncedMax: appliedState ? pickOf([1, 2, 4, 16]) : 0,
  };
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** A snapshot's data: the hash chain's state, then (applied-state mode) a line break and the AppliedState image. */
function encodeSnapshotState(state: number, image: Uint8Array | null): Uint8Array {
  if (image === null) return encoder.encode(String(state));
  return Buffer.concat([encoder.encode(`${state}\n`), image]);
}

function decodeSnapshotState(snapshot: Snapshot): number {
  const end = snapshot.data.indexOf(0x0a);
  return Number(decoder.decode(end < 0 ? snapshot.data : snapshot.data.subarray(0, end)));
}

function decodeSnapshotImage(snapshot: Snapshot): Uint8Array {
  const end = snapshot.data.indexOf(0x0a);
  if (end < 0) throw new Error(`the snapshot at ${snapshot.metadata.index} holds no applied state image`);
  return snapshot.data.subarray(end + 1);
}

/** A digest of a state's secrets records (a point-in-time view), as nodes at the same index must share. */
async function secretsDigest(state: AppliedState): Promise<string> {
  const records: StateRecord[] = [];
  for await (const page of state.snapshotPages()) records.push(...page);
  return digestOf(records);
}

/** A digest of a state's small parts (its descriptor: the cluster and access images), as nodes at the same index must share. */
function smallPartsDigest(state: AppliedState): string {
  return createHash('sha256').update(state.descriptor()).digest('hex').slice(0, 16);
}

function digestOf(records: readonly StateRecord[]): string {
  const hash = createHash('sha256');
  for (const record of records) hash.update(record.key).update(record.value);
  return hash.digest('hex').slice(0, 16);
}

async function* iterate(records: readonly StateRecord[]): AsyncGenerator<StateRecord> {
  yield* records;
}

export function runSimulation(options: SimOptions): Promise<SimResult> {
  return new Simulation(options).run();
}
