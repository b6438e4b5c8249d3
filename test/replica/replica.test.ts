import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  READ_INDEX_RETRY_TICKS,
  SNAPSHOT_ACK_TIMEOUT_TICKS,
  Replica,
  ReplicaError,
  compactionIndex,
  followersNeed,
  type StateMachine,
} from '../../src/replica/replica.ts';
import { RaftError } from '../../src/raft/errors.ts';
import { COMMITTED_ENTRIES_BYTES_MAX } from '../../src/raft/raw-node.ts';
import type { Entry, Message, ProgressStatus, ReadIndexMessage, Status } from '../../src/raft/types.ts';
import { LevelStorage } from '../../src/storage/level-storage.ts';
import { MemoryStorage } from '../../src/storage/memory-storage.ts';
import type { RaftStorage, StorageUpdate } from '../../src/storage/types.ts';
import { SeededRandom } from '../../src/util/prng.ts';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A list of applied values; apply returns the value's position. */
class ListMachine implements StateMachine<number> {
  values: string[] = [];
  apply(entry: Entry): number {
    if (entry.kind === 'normal' && entry.data.byteLength > 0) this.values.push(decoder.decode(entry.data));
    return this.values.length;
  }
  snapshot(): Uint8Array {
    return encoder.encode(JSON.stringify(this.values));
  }
  restore(data: Uint8Array): void {
    this.values = JSON.parse(decoder.decode(data)) as string[];
  }
}

async function single(
  storage: RaftStorage,
  machine = new ListMachine(),
  snapshotEveryEntries?: number,
  bytes: { snapshotEveryBytes?: number; snapshotTailBytesMax?: number } = {},
): Promise<{ replica: Replica<number>; machine: ListMachine }> {
  const replica = await Replica.start({
    id: 1,
    storage,
    stateMachine: machine,
    peers: { send: () => assert.fail('a single voter has no peers') },
    random: new SeededRandom(1),
    bootstrapVoters: [1],
    ...(snapshotEveryEntries === undefined ? {} : { snapshotEveryEntries, snapshotTailEntries: 10 }),
    ...bytes,
  });
  await replica.settled(); // the bootstrap membership is applied once its first write is synced
  replica.campaign();
  await replica.settled();
  return { replica, machine };
}

test('concurrent proposals share synced writes (group commit) and each resolves with its own result', async () => {
  const { replica, machine } = await single(new MemoryStorage());
  const syncsBefore = replica.stats.syncs;
  const results = await Promise.all(Array.from({ length: 200 }, (_, k) => replica.propose(encoder.encode(`v${k}`))));
  assert.deepEqual(
    results,
    Array.from({ length: 200 }, (_, k) => k + 1),
  );
  assert.deepEqual(
    machine.values,
    Array.from({ length: 200 }, (_, k) => `v${k}`),
  );
  const syncs = replica.stats.syncs - syncsBefore;
  assert.ok(syncs <= 10, `200 proposals took ${syncs} synced writes; group commit should need a handful`);
  await replica.stop();
});

/** Remembers each write: what it held, whether it was synced, and what had been answered when it was made. */
class RecordingStorage extends MemoryStorage {
  readonly writes: Array<{
    term: number | null;
    vote: number | null;
    commit: number | null;
    entries: number;
    snapshot: boolean;
    sync: boolean;
    answered: number;
  }> = [];
  answered = 0;
  override async save(update: StorageUpdate): Promise<void> {
    const hard = update.hardState;
    this.writes.push({
      term: hard?.term ?? null,
      vote: hard?.vote ?? null,
      commit: hard?.commit ?? null,
      entries: update.entries.length,
      snapshot: update.snapshot !== null,
      sync: update.sync !== false,
      answered: this.answered,
    });
    await super.save(update);
  }
}

test('a write is synced when the core says it must be (entries, a snapshot, a new term or vote); a commit index alone is not written by a Ready but carried by the next write', async () => {
  const storage = new RecordingStorage();
  const { replica } = await single(storage);
  for (let k = 0; k < 20; k++) {
    await replica.propose(encoder.encode(`v${k}`));
    storage.answered++;
  }
  const commit = replica.raw.basicStatus().commit;
  const writesBeforeStop = storage.writes.length;
  await replica.stop();
  let last = { term: 0, vote: 0 };
  let votes = 0;
  let commitOnDisk = 0;
  for (const [n, write] of storage.writes.entries()) {
    const newTermOrVote = write.term !== null && (write.term !== last.term || write.vote !== last.vote);
    if (newTermOrVote) votes++;
    if (n < writesBeforeStop)
      assert.ok(
        write.sync && (write.entries > 0 || write.snapshot || newTermOrVote),
        `write ${n} (${JSON.stringify(write)}) was made by a Ready: it holds entries, a snapshot or a new term or vote, and is synced`,
      );
    if (write.commit !== null) {
      assert.ok(write.commit >= commitOnDisk, `write ${n} moved the commit index on disk back`);
      commitOnDisk = write.commit;
    }
    if (write.term !== null) last = { term: write.term, vote: write.vote! };
  }
  assert.ok(votes >= 2, "the bootstrap term and the campaign's new term and vote were written (synced)");
  // Each entry's write carries the commit index its predecessor reached (the single voter
  // commits an entry in the Ready after its write): the commit index lags the log by one write.
  const entryWrites = storage.writes.filter((w) => w.entries > 0);
  for (const [k, write] of entryWrites.slice(-19).entries())
    assert.ok(
      (write.commit ?? 0) >= 2 + k,
      `entry write ${k} carried commit ${write.commit}, behind the entries before it`,
    );
  // The last commit index reached the disk when the replica stopped: a write of its own, not synced.
  const final = storage.writes.at(-1)!;
  assert.deepEqual(
    { commit: final.commit, entries: final.entries, sync: final.sync },
    { commit, entries: 0, sync: false },
    `the stop wrote the commit index ${commit} (the writes: ${storage.writes.length - writesBeforeStop} after the stop)`,
  );
  // Each proposal was answered only after the synced write of its entry.
  for (const [k, write] of entryWrites.slice(-20).entries())
    assert.ok(write.answered <= k, `proposal ${k} was answered before its entry was synced`);
});

/**
 * A list whose afterApply, after entries were applied, is held until released (a store's write
 * of what they changed), and which says whether answers wait for it.
 */
class HeldAfterApplyMachine extends ListMachine {
  answersWait = false;
  holding = false;
  readonly held: Array<() => void> = [];
  #applied = false;
  override apply(entry: Entry): number {
    this.#applied = true;
    return super.apply(entry);
  }
  answersWaitForAfterApply(): boolean {
    return this.answersWait;
  }
  async afterApply(): Promise<null> {
    const applied = this.#applied;
    this.#applied = false;
    if (this.holding && applied) await new Promise<void>((resolve) => this.held.push(resolve));
    return null;
  }
  release(): void {
    this.holding = false;
    for (const resolve of this.held.splice(0)) resolve();
  }
}

/** Whether `promise` settles within `ms` (the loop gets every turn it needs meanwhile). */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const settled = await Promise.race([promise.then(() => true), late]);
  clearTimeout(timer);
  return settled;
}

test("a proposal is answered before the state's afterApply, unless the state says it has local effects to make durable first", async () => {
  const machine = new HeldAfterApplyMachine();
  const { replica } = await single(new MemoryStorage(), machine);
  // Nothing local to make durable: answered while afterApply is held.
  machine.holding = true;
  const first = replica.propose(encoder.encode('a'));
  assert.ok(await settlesWithin(first, 2000), 'the proposal was answered while afterApply was held');
  assert.equal(await first, 1);
  assert.equal(machine.held.length, 1, 'afterApply was still held when the proposal was answered');
  assert.deepEqual(machine.values, ['a']);
  machine.release();
  await replica.settled();
  // Local effects to make durable: the answer waits for afterApply.
  machine.answersWait = true;
  machine.holding = true;
  const second = replica.propose(encoder.encode('b'));
  assert.ok(!(await settlesWithin(second, 200)), 'answered before afterApply made its effects durable');
  assert.deepEqual(machine.values, ['a', 'b'], 'applied meanwhile');
  machine.release();
  assert.equal(await second, 2);
  await replica.stop();
});

/** A list that, asked to, leaves its applied values unwritten until a write that is not deferred (a state store's batch). */
class DeferringMachine extends ListMachine {
  written = 0;
  deferred = 0;
  readonly writes: Array<{ values: number; by: 'afterApply' | 'writeState' }> = [];
  get statePending(): boolean {
    return this.values.length > this.written;
  }
  async afterApply(options: { readonly deferState?: boolean } = {}): Promise<null> {
    if (options.deferState === true) this.deferred++;
    else if (this.statePending) this.#write('afterApply');
    return null;
  }
  async writeState(): Promise<void> {
    this.#write('writeState');
  }
  #write(by: 'afterApply' | 'writeState'): void {
    this.written = this.values.length;
    this.writes.push({ values: this.written, by });
  }
}

test("the state's store is written once per tick while Readys come, and a tick with no Ready writes what is left, with the commit index", async () => {
  const storage = new RecordingStorage();
  const machine = new DeferringMachine();
  const { replica } = await single(storage, machine);
  replica.tick();
  await replica.settled();
  const writesBefore = machine.writes.length;
  // No tick: every Ready after the first defers.
  for (let k = 0; k < 10; k++) await replica.propose(encoder.encode(`v${k}`));
  await replica.settled();
  const duringProposals = machine.writes.slice(writesBefore);
  assert.ok(duringProposals.length <= 1, `10 proposals without a tick wrote the state ${duringProposals.length} times`);
  assert.ok(machine.deferred >= 9, `only ${machine.deferred} Readys deferred the state's write`);
  assert.ok(machine.statePending, 'values applied since the last write are still pending');
  // A tick, and no Ready: the loop writes the state and the commit index.
  const storageWrites = storage.writes.length;
  replica.tick();
  await replica.settled();
  assert.deepEqual(machine.writes.at(-1), { values: 10, by: 'writeState' }, 'the tick wrote every value applied');
  assert.equal(machine.statePending, false);
  const commitWrites = storage.writes.slice(storageWrites);
  assert.deepEqual(
    commitWrites.map((w) => ({ commit: w.commit, entries: w.entries, sync: w.sync })),
    [{ commit: replica.raw.basicStatus().commit, entries: 0, sync: false }],
    'the tick wrote the commit index once, not synced',
  );
  // Nothing pending: a further tick writes nothing.
  const before = [machine.writes.length, storage.writes.length];
  replica.tick();
  await replica.settled();
  assert.deepEqual([machine.writes.length, storage.writes.length], before, 'an idle tick wrote again');
  // Values applied and not yet written are written when the replica stops.
  await replica.propose(encoder.encode('last'));
  await replica.settled();
  await replica.stop();
  assert.deepEqual(machine.writes.at(-1), { values: 11, by: 'writeState' }, 'the stop wrote the last value');
});

/** A list that runs a callback in each afterApply (a test keeps the loop busy with it). */
class CallbackMachine extends ListMachine {
  onAfterApply: (() => void) | null = null;
  async afterApply(): Promise<null> {
    this.onAfterApply?.();
    return null;
  }
}

test('a commit index no write carried goes to the disk with the first Ready after a tick, though heartbeats keep the loop from idling', async () => {
  const storage = new RecordingStorage();
  const machine = new CallbackMachine();
  const replica = await Replica.start({
    id: 2,
    storage,
    stateMachine: machine,
    peers: { send: () => undefined },
    random: new SeededRandom(1),
    bootstrapVoters: [1, 2, 3],
  });
  await replica.settled();
  const heartbeat = (commit: number) =>
    replica.step({ type: 'heartbeat', from: 1, to: 2, term: 1, commit, readSeq: 0 });
  heartbeat(3);
  await replica.settled();
  replica.step({
    type: 'append',
    from: 1,
    to: 2,
    term: 1,
    prevIndex: 3,
    prevTerm: 1,
    entries: [{ kind: 'normal', term: 1, index: 4, data: encoder.encode('a') }],
    commit: 3,
  });
  await replica.settled();
  const commits = () => storage.writes.filter((w) => w.commit !== null).map((w) => w.commit!);
  assert.equal(Math.max(...commits()), 3, 'the entry was written with the commit index it came with');
  // The leader commits the entry: the follower applies it, and writes no commit index for it yet.
  heartbeat(4);
  await replica.settled();
  assert.equal(replica.raw.basicStatus().commit, 4);
  assert.equal(Math.max(...commits()), 3, 'a Ready wrote a commit index alone');
  // Heartbeats keep coming (each Ready's afterApply steps the next), as a leader's come every
  // tick: the loop never idles, so the first Ready after the tick must write it.
  let beats = 0;
  machine.onAfterApply = () => {
    if (beats++ < 5) heartbeat(4);
  };
  heartbeat(4);
  replica.tick();
  await replica.settled();
  assert.ok(beats > 5, `only ${beats} heartbeats went through the loop`);
  const last = storage.writes.at(-1)!;
  assert.deepEqual(
    { commit: last.commit, entries: last.entries, sync: last.sync },
    { commit: 4, entries: 0, sync: false },
    'a Ready after the tick wrote the commit index, not synced',
  );
  machine.onAfterApply = null;
  const writes = storage.writes.length;
  replica.tick();
  heartbeat(4);
  await replica.settled();
  assert.equal(storage.writes.length, writes, 'with nothing left, a tick wrote again');
  await replica.stop();
});

test('a replica restarted on its LevelDB directory re-applies its log and ends in the same state', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-replica-'));
  try {
    let storage = await LevelStorage.open(dir);
    const first = await single(storage);
    for (let k = 0; k < 30; k++) await first.replica.propose(encoder.encode(`v${k}`));
    await first.replica.stop();
    await storage.close();

    storage = await LevelStorage.open(dir);
    const second = await single(storage);
    assert.deepEqual(second.machine.values, first.machine.values);
    assert.equal(await second.replica.propose(encoder.encode('after restart')), 31);
    await second.replica.stop();
    await storage.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('every N applied entries a snapshot is stored and the log compacted, and a restart starts from it', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-replica-'));
  try {
    let storage = await LevelStorage.open(dir);
    const first = await single(storage, new ListMachine(), 100);
    for (let k = 0; k < 350; k++) await first.replica.propose(encoder.encode(`v${k}`));
    assert.equal(first.replica.stats.snapshots, 3);
    await first.replica.stop();
    await storage.close();

    storage = await LevelStorage.open(dir);
    const persisted = await storage.load();
    await storage.close();
    assert.ok(
      persisted.snapshot !== null && persisted.snapshot.metadata.index >= 300,
      'a snapshot covers the first 300 entries',
    );
    assert.ok(
      persisted.entries.length <= 100 + 10 + 2,
      `the log holds ${persisted.entries.length} entries: it was not compacted`,
    );

    storage = await LevelStorage.open(dir);
    const restored = new ListMachine();
    const second = await single(storage, restored, 100);
    assert.equal(restored.values.length, 350);
    assert.deepEqual(restored.values, first.machine.values);
    await second.replica.stop();
    await storage.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** A list machine whose entries are batches: `a,b,c` applies three values (as a batch of puts does). */
class BatchMachine extends ListMachine {
  batchedChanges = 0;
  override apply(entry: Entry): number {
    if (entry.kind !== 'normal' || entry.data.byteLength === 0) return this.values.length;
    const items = decoder.decode(entry.data).split(',');
    this.values.push(...items);
    this.batchedChanges += items.length - 1;
    return this.values.length;
  }
}

test('snapshots count changes, not entries: entries that each apply a batch bring one after N changes, and without batches the cadence is the entries', async () => {
  const batched = await single(new MemoryStorage(), new BatchMachine(), 100);
  // 30 entries of 10 changes each: 300 changes, three snapshots (entries alone would give none).
  for (let k = 0; k < 30; k++)
    await batched.replica.propose(encoder.encode(Array.from({ length: 10 }, (_, i) => `v${k}.${i}`).join(',')));
  assert.equal(batched.machine.values.length, 300);
  assert.equal(batched.replica.stats.snapshots, 3, 'a snapshot per 100 changes');
  await batched.replica.stop();

  const plain = await single(new MemoryStorage(), new ListMachine(), 100);
  for (let k = 0; k < 30; k++) await plain.replica.propose(encoder.encode(`v${k}`));
  assert.equal(plain.replica.stats.snapshots, 0, '30 entries of one change each are under 100');
  await plain.replica.stop();
});

test('large entries: a snapshot every N bytes of applied entries bounds the log in memory, the tail is bounded by bytes too, and a restart restores every value', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-replica-'));
  // 16 KiB entries; a snapshot every 256 KiB (about 16 entries, far below the 10,000-entry count)
  // and a tail of at most 64 KiB (3 entries, far below the 1,000-entry tail).
  const valueBytes = 16 * 1024;
  const everyBytes = 256 * 1024;
  const tailBytes = 64 * 1024;
  const perEntry = valueBytes + 16;
  const value = (k: number) => `${String(k).padStart(6, '0')}${'x'.repeat(valueBytes - 6)}`;
  try {
    let storage = await LevelStorage.open(dir);
    const options = { snapshotEveryBytes: everyBytes, snapshotTailBytesMax: tailBytes };
    const first = await single(storage, new ListMachine(), undefined, options);
    let heldMax = 0;
    let snapshots = 0;
    for (let k = 0; k < 200; k++) {
      await first.replica.propose(encoder.encode(value(k)));
      const { firstIndex, lastIndex } = first.replica.raw.basicStatus();
      const held = lastIndex - firstIndex + 1;
      heldMax = Math.max(heldMax, held);
      if (first.replica.stats.snapshots > snapshots) {
        snapshots = first.replica.stats.snapshots;
        // Right after a snapshot at the last index, the log holds only the tail.
        assert.ok(
          held * perEntry <= tailBytes,
          `${held} entries of ${perEntry} bytes kept as the tail, over ${tailBytes} bytes`,
        );
      }
    }
    assert.ok(snapshots >= 10, `only ${snapshots} snapshots for ${200 * perEntry} bytes applied`);
    const bound = Math.ceil((everyBytes + tailBytes) / perEntry) + 1;
    assert.ok(heldMax <= bound, `the log held up to ${heldMax} entries in memory; the bound is ${bound}`);
    await first.replica.stop();
    await storage.close();

    storage = await LevelStorage.open(dir);
    const persisted = await storage.load();
    await storage.close();
    assert.ok(
      persisted.entries.length <= bound + 1,
      `${persisted.entries.length} entries persisted: the stored log was not compacted by bytes`,
    );

    storage = await LevelStorage.open(dir);
    const restored = new ListMachine();
    const second = await single(storage, restored, undefined, options);
    assert.equal(restored.values.length, 200);
    assert.deepEqual(restored.values, first.machine.values);
    assert.equal(restored.values[199], value(199));
    await second.replica.stop();
    await storage.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the compaction point: the tail is bounded by entries and by bytes; a follower being sent a snapshot keeps the entries after it, up to one snapshot interval', () => {
  const base = {
    snapshotIndex: 100,
    firstIndex: 1,
    entryBytesAt: () => 1000,
    tailEntries: 1000,
    tailBytesMax: 1_000_000,
    followersNeed: null,
    needEntriesMax: 10_000,
    needBytesMax: 64_000,
  };
  assert.equal(compactionIndex({ ...base, tailEntries: 5 }), 95, 'by entries');
  assert.equal(compactionIndex({ ...base, tailBytesMax: 2500 }), 98, 'by bytes: two entries of 1000 fit in 2500');
  assert.equal(compactionIndex({ ...base, tailBytesMax: 999 }), 100, 'no entry fits: no tail');
  assert.equal(compactionIndex({ ...base, firstIndex: 99 }), 98, 'never before the first index');
  assert.equal(
    compactionIndex({ ...base, entryBytesAt: (i) => (i > 97 ? 10 : 5000), tailBytesMax: 5100 }),
    96,
    'mixed sizes: 30 bytes, then one of 5000, then the next does not fit',
  );
  const sending = { ...base, tailBytesMax: 2500, followersNeed: 90 };
  assert.equal(compactionIndex(sending), 90, 'a follower being sent the snapshot at 90 finds the entries after it');
  assert.equal(
    compactionIndex({ ...sending, needBytesMax: 9999 }),
    98,
    'unless they hold more than one interval of bytes: it gets another snapshot',
  );
  assert.equal(compactionIndex({ ...sending, needEntriesMax: 9 }), 98, '... or of entries');
  assert.equal(compactionIndex({ ...sending, followersNeed: 99 }), 98, 'a need the tail covers changes nothing');
  assert.equal(
    compactionIndex({ ...sending, firstIndex: 95 }),
    98,
    'a need already compacted away is a snapshot anyway',
  );
});

test('what followers need: the snapshot being sent, where a probe stands, what was acknowledged; not what an unheard follower needs', () => {
  const pr = (p: Partial<ProgressStatus>): ProgressStatus => ({
    match: 0,
    next: 1,
    state: 'replicate',
    learner: false,
    recentActive: true,
    inflight: 0,
    pendingSnapshot: 0,
    ...p,
  });
  const status = (progress: Array<[number, ProgressStatus]> | null) =>
    ({ id: 1, progress: progress === null ? null : new Map(progress) }) as unknown as Status;
  assert.equal(followersNeed(status(null)), null, 'a follower knows no progress');
  assert.equal(followersNeed(status([[1, pr({ match: 5 })]])), null, 'the leader itself does not count');
  assert.equal(
    followersNeed(
      status([
        [1, pr({ match: 500 })],
        [2, pr({ match: 480, next: 500 })],
        [3, pr({ state: 'snapshot', match: 10, pendingSnapshot: 300 })],
      ]),
    ),
    300,
  );
  assert.equal(
    followersNeed(
      status([
        [2, pr({ state: 'probe', match: 10, next: 200 })],
        [3, pr({ match: 400 })],
      ]),
    ),
    199,
  );
  assert.equal(
    followersNeed(
      status([
        [2, pr({ match: 3, recentActive: false })],
        [3, pr({ match: 400 })],
      ]),
    ),
    400,
  );
});

test('a linearizable read resolves once everything committed before it is applied', async () => {
  const { replica, machine } = await single(new MemoryStorage());
  await replica.propose(encoder.encode('a'));
  await replica.propose(encoder.encode('b'));
  // A write still in flight may or may not be seen; every acknowledged one must be.
  const pending = replica.propose(encoder.encode('c'));
  const readAt = await replica.linearizableRead();
  assert.ok(
    machine.values.includes('a') && machine.values.includes('b'),
    'a read issued after proposals returned sees them',
  );
  assert.ok(readAt >= 3);
  await pending;
  assert.ok((await replica.linearizableRead()) >= 4);
  assert.ok(machine.values.includes('c'), 'and once the third returned, a read sees it too');
  await replica.stop();
});

test('a proposal to a replica that is not the leader is refused at once with NOT_LEADER', async () => {
  const replica = await Replica.start({
    id: 1,
    storage: new MemoryStorage(),
    stateMachine: new ListMachine(),
    peers: { send: () => undefined },
    random: new SeededRandom(1),
    bootstrapVoters: [1, 2, 3],
  });
  await assert.rejects(
    replica.propose(encoder.encode('x')),
    (e: unknown) => e instanceof RaftError && e.code === 'NOT_LEADER',
  );
  await assert.rejects(
    replica.linearizableRead(),
    // The reason travels with the error: a server waits out this one (src/server/read-point.ts).
    (e: unknown) =>
      e instanceof ReplicaError &&
      e.code === 'READ_REFUSED' &&
      e.readRefusal === 'no-leader' &&
      /no leader/.test(e.message),
  );
  await replica.stop();
});

test('a follower asks its leader for one read index per batch of reads, and asks again when an answer is slow or lost', async () => {
  const sent: Message[] = [];
  const replica = await Replica.start({
    id: 2,
    storage: new MemoryStorage(),
    stateMachine: new ListMachine(),
    peers: { send: (messages) => void sent.push(...messages) },
    random: new SeededRandom(1),
    bootstrapVoters: [1, 2, 3],
  });
  await replica.settled();
  replica.step({ type: 'heartbeat', from: 1, to: 2, term: 1, commit: 0, readSeq: 0 });
  await replica.settled();
  const requests = () => sent.filter((m): m is ReadIndexMessage => m.type === 'read-index');
  const answer = (request: ReadIndexMessage) =>
    replica.step({
      type: 'read-index-response',
      from: 1,
      to: 2,
      term: 1,
      context: request.context,
      index: 0,
      refusal: null,
    });

  // 50 reads at once: one request; they all resolve with its answer.
  const first = Array.from({ length: 50 }, () => replica.linearizableRead());
  await replica.settled();
  assert.equal(requests().length, 1, 'one read-index request for 50 reads that arrived together');
  // Reads that arrive while it is out wait for the next request, made only once it is answered.
  const second = Array.from({ length: 10 }, () => replica.linearizableRead());
  await replica.settled();
  assert.equal(requests().length, 1, 'no second request while the first is out');
  answer(requests()[0]!);
  assert.equal((await Promise.all(first)).length, 50);
  await replica.settled();
  assert.equal(requests().length, 2, 'the reads that arrived meanwhile got a request of their own');
  assert.notEqual(requests()[1]!.context, requests()[0]!.context);

  // The second request goes unanswered: after an election timeout of ticks it is sent again. A
  // slow answer to the first sending still counts (it was asked after these reads arrived), and
  // releases the batch once: the answer to the retry then finds nothing.
  for (let k = 0; k < READ_INDEX_RETRY_TICKS - 1; k++) replica.tick();
  await replica.settled();
  assert.equal(requests().length, 2, 'not sent again before the timeout');
  replica.tick();
  await replica.settled();
  assert.equal(requests().length, 3, 'sent again after the timeout');
  assert.equal(requests()[2]!.context === requests()[1]!.context, false);
  let resolved = 0;
  const secondDone = Promise.all(second.map((p) => p.then(() => resolved++)));
  const third = replica.linearizableRead();
  await replica.settled();
  answer(requests()[1]!);
  await Promise.race([secondDone, new Promise((resolve) => setTimeout(resolve, 2000))]);
  assert.equal(resolved, 10, 'the slow answer released the batch it was asked for');
  await replica.settled();
  assert.equal(requests().length, 4, 'the read that arrived after the batch went out gets a request of its own');
  answer(requests()[2]!); // the retry's answer, now for nothing
  answer(requests()[3]!);
  await third;
  await replica.stop();
});

/** A machine whose images are read later (as a state store's are): the image is of the moment it was asked, held until released. */
class SlowImageMachine extends ListMachine {
  readonly pending: Array<() => void> = [];
  /** How many values the state held when the last image was asked for. */
  askedAt = -1;
  override snapshot(): Uint8Array {
    throw new Error('only the asynchronous image is used');
  }
  snapshotLater(): Promise<Uint8Array> {
    const image = encoder.encode(JSON.stringify(this.values));
    this.askedAt = this.values.length;
    return new Promise((resolve) => this.pending.push(() => resolve(image)));
  }
}

test('a periodic snapshot is built in the background: writes go on meanwhile; it is saved at its point, and a restart restores it and replays the rest', async () => {
  const machine = new SlowImageMachine();
  const asynchronous: StateMachine<number> = {
    apply: (entry) => machine.apply(entry),
    snapshot: () => machine.snapshotLater(),
    restore: (data) => machine.restore(data),
  };
  const storage = new MemoryStorage();
  const replica = await Replica.start({
    id: 1,
    storage,
    stateMachine: asynchronous,
    peers: { send: () => assert.fail('a single voter has no peers') },
    random: new SeededRandom(1),
    bootstrapVoters: [1],
    snapshotEveryEntries: 5,
    snapshotTailEntries: 0,
  });
  await replica.settled();
  replica.campaign();
  await replica.settled();
  for (let k = 0; k < 6; k++) await replica.propose(encoder.encode(`v${k}`));
  assert.equal(machine.pending.length, 1, 'one image asked for');
  const point = machine.askedAt;
  // Proposals are answered while the image is being read.
  for (let k = 6; k < 12; k++) await replica.propose(encoder.encode(`v${k}`));
  assert.equal(replica.stats.snapshots, 0, 'not saved before its image is ready');
  assert.equal(machine.pending.length, 1, 'one build at a time');
  machine.pending.shift()!();
  await new Promise((resolve) => setTimeout(resolve, 20));
  await replica.settled();
  assert.equal(replica.stats.snapshots, 1);
  const saved = (await storage.load()).snapshot!;
  assert.deepEqual(JSON.parse(decoder.decode(saved.data)), machine.values.slice(0, point), 'the image of its point');
  assert.ok(
    saved.metadata.index < replica.raw.basicStatus().lastIndex,
    'entries applied after the point stay in the log',
  );
  await replica.stop();

  const restarted = new ListMachine();
  const again = await Replica.start({
    id: 1,
    storage,
    stateMachine: restarted,
    peers: { send: () => assert.fail('a single voter has no peers') },
    random: new SeededRandom(2),
  });
  again.campaign();
  await again.settled();
  await again.propose(encoder.encode('after'));
  assert.deepEqual(restarted.values, [...Array.from({ length: 12 }, (_, k) => `v${k}`), 'after'], 'each entry once');
  await again.stop();
});

test('a snapshot sent is not taken as installed: the leader waits for the follower to answer it (sending it neither entries it would reject nor the snapshot again), and sends it again only after SNAPSHOT_ACK_TIMEOUT_TICKS without an answer', async () => {
  const sent: Message[] = [];
  const replica = await Replica.start({
    id: 1,
    storage: new MemoryStorage(),
    stateMachine: new ListMachine(),
    peers: { send: (messages) => void sent.push(...messages) },
    random: new SeededRandom(7),
    bootstrapVoters: [1, 2, 3],
    snapshotEveryEntries: 5,
    snapshotTailEntries: 0,
  });
  await replica.settled();
  let last = 0;
  /** Snapshots sent to peer 2 (pump counts them: peer 2 never answers one by itself). */
  let count = 0;
  // Peer 3 answers everything; peer 2 answers what `twoAnswers` lets it.
  let twoAnswers: 'all' | 'heartbeats' | 'reject' | 'votes' = 'votes';
  const pump = async (): Promise<void> => {
    for (let round = 0; round < 20; round++) {
      await replica.settled();
      const batch = sent.splice(0);
      if (batch.length === 0) return;
      for (const m of batch) {
        if (m.to === 2 && m.type === 'snapshot') {
          count++;
          continue;
        }
        if (m.to === 2 && twoAnswers === 'votes' && m.type !== 'pre-vote' && m.type !== 'vote') continue;
        if (m.to === 2 && twoAnswers === 'heartbeats' && m.type !== 'heartbeat') continue;
        if (m.to === 2 && twoAnswers === 'reject' && m.type === 'append') {
          replica.step({
            type: 'append-response',
            from: 2,
            to: 1,
            term: m.term,
            index: m.prevIndex,
            reject: true,
            hintIndex: 0,
            hintTerm: 0,
          });
          continue;
        }

        if (m.type === 'pre-vote' || m.type === 'vote')
          replica.step({ type: `${m.type}-response`, from: m.to, to: 1, term: m.term, reject: false });
        else if (m.type === 'append') {
          const index = m.entries.at(-1)?.index ?? m.prevIndex;
          last = Math.max(last, index);
          replica.step({
            type: 'append-response',
            from: m.to,
            to: 1,
            term: m.term,
            index,
            reject: false,
            hintIndex: 0,
            hintTerm: 0,
          });
        } else if (m.type === 'heartbeat')
          replica.step({ type: 'heartbeat-response', from: m.to, to: 1, term: m.term, readSeq: m.readSeq });
      }
    }
  };
  replica.campaign();
  await pump();
  assert.equal(replica.raw.basicStatus().role, 'leader');
  for (let k = 0; k < 12; k++) {
    const done = replica.propose(encoder.encode(`v${k}`));
    await pump();
    await done;
  }
  // Peer 2 was cut off while the others went on and compacted: it answers again, rejects the
  // entries (its log is empty), and what it needs is gone: a snapshot.
  const term = replica.raw.basicStatus().term;
  const countSnapshots = pump;
  twoAnswers = 'reject';
  for (let k = 0; k < 30 && count === 0; k++) {
    replica.tick();
    await countSnapshots();
  }
  // It is still writing the snapshot: it answers heartbeats, and would reject entries (its log is still empty).
  twoAnswers = 'reject';
  assert.equal(count, 1, 'the follower is sent a snapshot');
  replica.reportSnapshot(2, true);
  // Nothing is sent again meanwhile: not the snapshot, and no entries it would reject.
  for (let k = 0; k < SNAPSHOT_ACK_TIMEOUT_TICKS - 1; k++) {
    replica.tick();
    if (k % 10 === 0) await countSnapshots();
  }
  await countSnapshots();
  assert.equal(count, 1, 'no second snapshot while the follower may still be installing the first');
  // No answer in time: taken as lost, and sent again once the follower is heard from.
  for (let k = 0; k < 30 && count < 2; k++) {
    replica.tick();
    await countSnapshots();
  }
  assert.equal(count, 2, 'after the timeout the snapshot is sent again');
  // This time peer 2 answers it: it gets entries from then on, never a third snapshot.
  replica.reportSnapshot(2, true);
  const snapshotIndex = replica.raw.basicStatus().applied;
  replica.step({
    type: 'append-response',
    from: 2,
    to: 1,
    term,
    index: snapshotIndex,
    reject: false,
    hintIndex: 0,
    hintTerm: 0,
  });
  twoAnswers = 'all';
  for (let k = 0; k < SNAPSHOT_ACK_TIMEOUT_TICKS + 20; k++) {
    replica.tick();
    if (k % 10 === 0) await countSnapshots();
  }
  const done = replica.propose(encoder.encode('after'));
  await pump();
  await done;
  await countSnapshots();
  assert.equal(count, 2, 'an answered snapshot is not sent again when the timeout passes');
  assert.ok(last > snapshotIndex, 'the follower is replicated to after its snapshot');
  await replica.stop();
});

test('an error in the Ready loop stops the replica and says why: waiting and later requests are refused REPLICA_FAILED, onFailure hears it once, nothing spins', {
  timeout: 10_000,
}, async () => {
  let failNext = false;
  // A storage whose next save fails (a full disk, a broken file): the core is then between
  // ready() and advance(), and nothing it handed out may be taken as done.
  const storage = new (class extends MemoryStorage {
    override async save(update: StorageUpdate): Promise<void> {
      if (failNext) throw new Error('the disk is full');
      return super.save(update);
    }
  })();
  const failures: Error[] = [];
  const replica = await Replica.start({
    id: 1,
    storage,
    stateMachine: new ListMachine(),
    peers: { send: () => assert.fail('a single voter has no peers') },
    random: new SeededRandom(1),
    bootstrapVoters: [1],
    onFailure: (error) => failures.push(error),
  });
  await replica.settled();
  replica.campaign();
  await replica.settled();
  assert.equal(await replica.propose(encoder.encode('before')), 1);
  failNext = true;
  const waiting = replica.propose(encoder.encode('lost'));
  await assert.rejects(waiting, (e: unknown) => e instanceof ReplicaError && e.code === 'REPLICA_FAILED');
  await replica.settled();
  assert.equal(failures.length, 1);
  assert.match(failures[0]!.message, /the disk is full/);
  assert.equal(replica.failure, failures[0]);
  // Refused at once afterwards, with the same code; ticks do not restart the loop.
  await assert.rejects(
    replica.propose(encoder.encode('after')),
    (e: unknown) => e instanceof ReplicaError && e.code === 'REPLICA_FAILED' && !/disk is full/.test(e.message),
    'the reason stays in the log, not in what clients are told',
  );
  for (let k = 0; k < 50; k++) replica.tick();
  await replica.settled();
  assert.equal(failures.length, 1, 'onFailure once');
  await replica.stop();
});

test('streamed snapshots are received one at a time: a second waits until the first is installed, and one the core does not take has its records dropped', {
  timeout: 20_000,
}, async () => {
  const calls: string[] = [];
  let releaseInstall!: () => void;
  const installGate = new Promise<void>((resolve) => {
    releaseInstall = resolve;
  });
  class StreamedMachine extends ListMachine {
    async prepareSnapshot(index: number, chunks: AsyncIterable<Uint8Array>): Promise<void> {
      calls.push(`prepare ${index}`);
      for await (const _ of chunks);
    }
    async installSnapshot(index: number): Promise<void> {
      calls.push(`install ${index}`);
      if (index === 10) await installGate; // the loop is slow to install the first
    }
    async discardSnapshot(index: number): Promise<void> {
      calls.push(`discard ${index}`);
    }
  }
  const replica = await Replica.start({
    id: 2,
    storage: new MemoryStorage(),
    stateMachine: new StreamedMachine(),
    peers: { send: () => undefined },
    random: new SeededRandom(1),
    bootstrapVoters: [1, 2, 3],
  });
  await replica.settled();
  const snapshot = (index: number, values: string[]) => ({
    type: 'snapshot' as const,
    from: 1,
    to: 2,
    term: 1,
    snapshot: {
      metadata: { index, term: 1, confState: { voters: [1, 2, 3], learners: [] } },
      data: encoder.encode(JSON.stringify(values)),
    },
  });
  async function* noChunks(): AsyncGenerator<Uint8Array> {}
  const first = replica.receiveSnapshot(snapshot(10, ['a']), noChunks());
  while (!calls.includes('install 10')) await new Promise((resolve) => setTimeout(resolve, 5));
  // A newer snapshot arrives while the first's records are being installed: its records are not
  // written aside (over the first's) until the first is done.
  const second = replica.receiveSnapshot(snapshot(20, ['a', 'b']), noChunks());
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(calls, ['prepare 10', 'install 10'], 'the second waits for the first');
  releaseInstall();
  await first;
  await second;
  assert.deepEqual(calls.slice(0, 5), ['prepare 10', 'install 10', 'discard 10', 'prepare 20', 'install 20']);
  // Older than what the follower has: the core does not take it, and its records are dropped.
  await replica.receiveSnapshot(snapshot(5, []), noChunks());
  assert.deepEqual(calls.slice(-2), ['prepare 5', 'discard 5']);
  assert.ok(!calls.includes('install 5'));
  await replica.stop();
});

test('a long committed tail is applied a capped Ready at a time, and the loop lets other work run between those Readys', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-replica-'));
  try {
    let storage = await LevelStorage.open(dir);
    const first = await single(storage);
    const value = 'x'.repeat(1024);
    const entries = Math.ceil((6 * COMMITTED_ENTRIES_BYTES_MAX) / 1024);
    for (let k = 0; k < entries; k += 50)
      await Promise.all(
        Array.from({ length: Math.min(50, entries - k) }, (_, j) =>
          first.replica.propose(encoder.encode(`${k + j}${value}`)),
        ),
      );
    await first.replica.stop();
    await storage.close();

    // On restart the whole log is a committed tail to apply. Other work (here a chain of
    // setImmediate turns) counts how often the loop let it run while the tail was applied.
    let turns = 0;
    let running = true;
    const spin = (): void => {
      turns++;
      if (running) setImmediate(spin);
    };
    const seen: number[] = [];
    const machine = new (class extends ListMachine {
      override apply(entry: Entry): number {
        seen.push(turns);
        return super.apply(entry);
      }
    })();
    storage = await LevelStorage.open(dir);
    setImmediate(spin);
    const second = await single(storage, machine);
    running = false;
    assert.equal(second.machine.values.length, entries);
    // Entries applied between two of those turns: one Ready's worth at most (its cap, plus one).
    const runs = new Map<number, number>();
    for (const at of seen) runs.set(at, (runs.get(at) ?? 0) + 1);
    assert.ok(runs.size >= 5, `the loop let other work run between Readys (${runs.size} runs)`);
    assert.ok(
      Math.max(...runs.values()) <= COMMITTED_ENTRIES_BYTES_MAX / 1024 + 1,
      `at most one Ready's entries at once: ${[...runs.values()].join(', ')}`,
    );
    await second.replica.stop();
    await storage.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
