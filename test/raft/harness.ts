/**
 * A small, fully controlled cluster for scenario tests: every node's Ready is processed as the
 * RawNode contract says (persist, send, apply, advance), messages wait in a queue until the test
 * delivers them, and links can be cut. Crashes keep only what was persisted. Unlike the seeded
 * simulator (test/sim/), nothing here is random except the election jitter, which is seeded.
 */
import { RawNode } from '../../src/raft/raw-node.ts';
import type { RaftConfigInput } from '../../src/raft/config.ts';
import type {
  Entry,
  HardState,
  Message,
  NodeId,
  PersistedState,
  Ready,
  ReadRefusal,
  ReadState,
} from '../../src/raft/types.ts';
import { SeededRandom } from '../../src/util/prng.ts';
import { MemoryRaftState } from '../../src/storage/memory-storage.ts';

/**
 * The Ready contract's sync rule, checked on every Ready: a write must be synced exactly when it
 * holds entries, a snapshot, or a term or vote other than the one on disk (what votes and
 * acknowledgements rest on); a write that only moves the commit index need not be.
 */
export function assertMustSync(id: NodeId, ready: Ready, onDisk: HardState): void {
  const hard = ready.hardState;
  const expected =
    ready.entries.length > 0 ||
    ready.snapshot !== null ||
    (hard !== null && (hard.term !== onDisk.term || hard.vote !== onDisk.vote));
  if (ready.mustSync !== expected) {
    throw new Error(
      `node ${id}: a Ready with ${ready.entries.length} entries, ${ready.snapshot === null ? 'no' : 'a'} snapshot and hard state ${JSON.stringify(hard)} (on disk ${JSON.stringify(onDisk)}) says mustSync ${ready.mustSync}`,
    );
  }
}

export const encoder = new TextEncoder();
export const decoder = new TextDecoder();

export interface HarnessNode {
  id: NodeId;
  raw: RawNode;
  disk: MemoryRaftState;
  up: boolean;
  /** Data of applied normal entries (the no-op entries excluded), in order. */
  applied: string[];
  appliedIndex: number;
  /**
   * Committed entries handed out again after this state machine had applied them (skipped
   * here, but a core bug: every committed entry is handed out once per state machine).
   */
  reappliedEntries: number;
  readStates: ReadState[];
  readRefusals: ReadRefusal[];
}

export interface ClusterOptions {
  /** Voters that bootstrap the cluster. */
  voters: NodeId[];
  seed?: number;
  config?: Partial<RaftConfigInput>;
}

export class Cluster {
  readonly nodes = new Map<NodeId, HarnessNode>();
  /** Messages sent and not yet delivered or dropped. */
  queue: Message[] = [];
  /** Directed links that drop every message: "from->to". */
  readonly cut = new Set<string>();
  readonly #random: SeededRandom;
  readonly #config: Partial<RaftConfigInput>;

  constructor(options: ClusterOptions) {
    this.#random = new SeededRandom(options.seed ?? 1);
    this.#config = options.config ?? {};
    for (const id of options.voters) {
      const node = this.#makeNode(id, undefined);
      node.raw.bootstrap(options.voters);
      this.nodes.set(id, node);
      this.process(id);
    }
  }

  #makeNode(id: NodeId, persisted: PersistedState | undefined, disk = new MemoryRaftState()): HarnessNode {
    const raw = new RawNode({ id, random: this.#random.fork(), ...this.#config }, persisted);
    const applied: string[] = [];
    const appliedIndex = persisted?.snapshot?.metadata.index ?? 0;
    if (persisted?.snapshot) applied.push(...(JSON.parse(decoder.decode(persisted.snapshot.data)) as string[]));
    return { id, raw, disk, up: true, applied, appliedIndex, reappliedEntries: 0, readStates: [], readRefusals: [] };
  }

  node(id: NodeId): HarnessNode {
    const node = this.nodes.get(id);
    if (node === undefined) throw new Error(`no node ${id}`);
    return node;
  }

  raw(id: NodeId): RawNode {
    return this.node(id).raw;
  }

  /** Adds a brand-new node with an empty log (to be added to the membership by a leader). */
  addEmptyNode(id: NodeId): HarnessNode {
    const node = this.#makeNode(id, undefined);
    this.nodes.set(id, node);
    return node;
  }

  /** Handles every Ready of one node, following the RawNode contract. */
  process(id: NodeId): void {
    const node = this.node(id);
    if (!node.up) return;
    while (node.raw.hasReady()) {
      const ready = node.raw.ready();
      assertMustSync(id, ready, node.disk.hardState);
      node.disk.save({ hardState: ready.hardState, entries: ready.entries, snapshot: ready.snapshot });
      for (const m of ready.messages) this.queue.push(m);
      if (ready.snapshot !== null) {
        node.applied = JSON.parse(decoder.decode(ready.snapshot.data)) as string[];
        node.appliedIndex = ready.snapshot.metadata.index;
      }
      for (const entry of ready.committedEntries) {
        if (entry.index <= node.appliedIndex) {
          node.reappliedEntries++;
          continue;
        }
        if (entry.index !== node.appliedIndex + 1) {
          throw new Error(
            `node ${id} was handed entry ${entry.index} to apply after applying up to ${node.appliedIndex}: a gap`,
          );
        }
        if (entry.kind === 'normal' && entry.data.byteLength > 0) node.applied.push(decoder.decode(entry.data));
        node.appliedIndex = entry.index;
      }
      node.readStates.push(...ready.readStates);
      node.readRefusals.push(...ready.readRefusals);
      node.raw.advance();
      // The core's own invariants, after every Ready (as the simulator does after every step).
      node.raw.checkInvariants();
    }
  }

  processAll(): void {
    for (const id of this.nodes.keys()) this.process(id);
  }

  /**
   * Delivers queued messages (and those they cause) until none is left, or `rounds` passes.
   * `filter` may drop messages (return false) before delivery.
   */
  deliverAll(filter: (m: Message) => boolean = () => true, rounds = 1000): void {
    for (let round = 0; round < rounds; round++) {
      this.processAll();
      if (this.queue.length === 0) return;
      const batch = this.queue;
      this.queue = [];
      for (const m of batch) this.#deliver(m, filter);
    }
  }

  /** Delivers only the messages queued now (one hop), then processes the receivers. */
  deliverOnce(filter: (m: Message) => boolean = () => true): void {
    this.processAll();
    const batch = this.queue;
    this.queue = [];
    for (const m of batch) this.#deliver(m, filter);
    this.processAll();
  }

  #deliver(m: Message, filter: (m: Message) => boolean): void {
    const target = this.nodes.get(m.to);
    if (target === undefined || !target.up) return;
    if (!this.nodes.get(m.from)?.up) return;
    if (this.cut.has(`${m.from}->${m.to}`) || !filter(m)) return;
    target.raw.step(m);
    this.process(m.to);
  }

  tick(id: NodeId, count = 1): void {
    for (let i = 0; i < count; i++) {
      const node = this.node(id);
      if (!node.up) return;
      node.raw.tick();
      this.process(id);
    }
  }

  /**
   * Ticks every live node `count` times, delivering all messages after each tick (through
   * `filter`, which may drop some, as in `deliverAll`).
   */
  tickAll(count = 1, filter: (m: Message) => boolean = () => true): void {
    for (let i = 0; i < count; i++) {
      for (const node of this.nodes.values()) if (node.up) node.raw.tick();
      this.deliverAll(filter);
    }
  }

  /**
   * Ticks every live node (delivering after each tick) until `done()` holds, at most `ticksMax`
   * times. Returns how many ticks it took, or null if `done()` never held.
   */
  tickUntil(done: () => boolean, ticksMax: number, filter: (m: Message) => boolean = () => true): number | null {
    for (let i = 1; i <= ticksMax; i++) {
      this.tickAll(1, filter);
      if (done()) return i;
    }
    return null;
  }

  /**
   * Ticks every live node (delivering after each tick) until some node leads, at most
   * `ticksMax` times. Returns the leader, or null if none emerged.
   */
  tickUntilLeader(ticksMax: number, filter: (m: Message) => boolean = () => true): NodeId | null {
    return this.tickUntil(() => this.leader() !== null, ticksMax, filter) === null ? null : this.leader();
  }

  /** Campaigns `id` and delivers until quiet. */
  elect(id: NodeId): void {
    this.raw(id).campaign();
    this.deliverAll();
  }

  leader(): NodeId | null {
    let found: NodeId | null = null;
    for (const node of this.nodes.values()) {
      if (node.up && node.raw.status().role === 'leader') {
        if (found === null || node.raw.status().term > this.raw(found).status().term) found = node.id;
      }
    }
    return found;
  }

  propose(id: NodeId, value: string): { index: number; term: number } {
    const result = this.raw(id).propose(encoder.encode(value));
    this.process(id);
    return result;
  }

  /** Asks `id` for a read index; the answer lands in its `readStates` or `readRefusals`. */
  readIndex(id: NodeId, context: string): void {
    this.raw(id).readIndex(context);
    this.process(id);
  }

  /** Every entry `id` still holds (after its compaction point), in index order. */
  log(id: NodeId): Entry[] {
    const raw = this.raw(id);
    const { firstIndex, lastIndex } = raw.status();
    const out: Entry[] = [];
    for (let index = firstIndex; index <= lastIndex; index++) {
      const entry = raw.entry(index);
      if (entry === undefined) throw new Error(`node ${id} has no entry at ${index} in [${firstIndex}, ${lastIndex}]`);
      out.push(entry);
    }
    return out;
  }

  /** Cuts both directions between every node in `a` and every node in `b`. */
  partition(a: NodeId[], b: NodeId[]): void {
    for (const x of a)
      for (const y of b) {
        this.cut.add(`${x}->${y}`);
        this.cut.add(`${y}->${x}`);
      }
  }

  isolate(id: NodeId): void {
    this.partition(
      [id],
      [...this.nodes.keys()].filter((x) => x !== id),
    );
  }

  heal(): void {
    this.cut.clear();
  }

  /** Loses everything not persisted, and messages in flight to or from it. */
  crash(id: NodeId): void {
    const node = this.node(id);
    node.up = false;
    this.queue = this.queue.filter((m) => m.to !== id && m.from !== id);
  }

  /** Rebuilds a node from its disk; `prepare` runs on the new core before its first Ready. */
  restart(id: NodeId, prepare?: (raw: RawNode) => void): void {
    const old = this.node(id);
    const node = this.#makeNode(id, old.disk.state(), old.disk);
    prepare?.(node.raw);
    this.nodes.set(id, node);
    this.process(id);
  }

  /** The application's snapshot: the applied values as JSON. Compacts to `index - keep`. */
  snapshotAndCompact(id: NodeId, keep = 0): void {
    const node = this.node(id);
    const snapshot = node.raw.createSnapshot(encoder.encode(JSON.stringify(node.applied)));
    const compactTo = snapshot.metadata.index - keep;
    const compacting = compactTo > node.raw.status().firstIndex - 1;
    if (compacting) node.raw.compact(compactTo);
    node.disk.saveSnapshot(snapshot, compacting ? compactTo : 0);
  }
}
