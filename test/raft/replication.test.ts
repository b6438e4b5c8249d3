/**
 * Log replication: how a leader repairs followers, when it may commit, and what it refuses.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RAFT_CONFIG_DEFAULTS } from '../../src/raft/config.ts';
import type { Entry, Message } from '../../src/raft/types.ts';
import { Cluster, decoder } from './harness.ts';

const ELECTION_TICKS = RAFT_CONFIG_DEFAULTS.electionTimeoutTicks;

function dataOf(entry: Entry): string {
  return entry.kind === 'normal' ? decoder.decode(entry.data) : `conf:${entry.change.type}:${entry.change.nodeId}`;
}

test("an old leader's conflicting uncommitted entries are replaced by the leader's log, in few round trips", () => {
  // Reference: Raft paper §5.3 (Log replication): the leader forces followers' logs to duplicate
  // its own; the optimization at the end of §5.3 (and etcd's findConflictByTerm) lets it skip a
  // whole term of conflicting entries per rejection instead of one entry.
  const CONFLICTING = 50;
  const c = new Cluster({ voters: [1, 2, 3], seed: 29 });
  c.elect(1);
  c.tickAll(2);
  const firstConflict = c.raw(1).status().lastIndex + 1;

  // Node 1, still leader in its own view, appends entries nobody else will ever see.
  c.isolate(1);
  for (let i = 0; i < CONFLICTING; i++) c.propose(1, `old-${i}`);
  c.deliverAll();

  // The majority elects a new leader, which writes entries of a later term at the same indexes.
  const newLeaderTicks = c.tickUntil(
    () => c.raw(2).status().role === 'leader' || c.raw(3).status().role === 'leader',
    4 * ELECTION_TICKS,
  );
  assert.notEqual(newLeaderTicks, null, 'the majority side elected no leader');
  const second = c.raw(2).status().role === 'leader' ? 2 : 3;
  const other = second === 2 ? 3 : 2;
  for (let i = 0; i < 10; i++) c.propose(second, `new-${i}`);
  c.deliverAll();
  c.tickAll(2);
  // A second change of leader on the majority side: its progress for node 1 starts at its own
  // last index, far past the divergence, so it has to backtrack.
  c.raw(second).transferLeadership(other);
  c.deliverAll();
  assert.equal(c.leader(), other);
  const leader = other;
  c.tickAll(2);

  const conflictingOnOld = c.log(1).filter((e) => e.index >= firstConflict && e.term !== c.raw(leader).termAt(e.index));
  assert.equal(conflictingOnOld.length, CONFLICTING, 'node 1 holds the conflicting entries before healing');
  assert.ok(c.raw(1).status().commit < firstConflict, 'none of them is committed');

  c.heal();
  let rejections = 0;
  const countRejections = (m: Message): boolean => {
    if (m.type === 'append-response' && m.from === 1 && m.reject) rejections++;
    return true;
  };
  c.tickAll(3, countRejections);

  assert.deepEqual(c.log(1), c.log(leader), "node 1's log converged to the leader's");
  assert.ok(!c.log(1).some((e) => dataOf(e).startsWith('old-')), 'a conflicting entry survived');
  assert.deepEqual(c.node(1).applied, c.node(leader).applied);
  assert.deepEqual(
    c.node(1).applied,
    Array.from({ length: 10 }, (_, i) => `new-${i}`),
  );
  assert.ok(rejections >= 1, 'the divergence must be found through at least one rejection');
  assert.ok(
    rejections <= 2,
    `${rejections} rejections for ${CONFLICTING} conflicting entries: backtracking is not fast`,
  );
});

/**
 * Builds the situation of Figure 8 (c) in a five-voter cluster (no pre-vote or check-quorum, as
 * in the paper; one entry per append, so acknowledgements can be taken one index at a time):
 *
 *   index:   6    7    8
 *   S1      t2   t2   t4     leader of term 4
 *   S2      t2   t2   t4
 *   S3      t2   t2          the term-4 entry is held back on its way to S3
 *   S4      t2               cut off
 *   S5      t2   t3          crashed; was leader of term 3
 *
 * Index 7 (term 2) is on a majority (S1, S2, S3), index 8 (term 4) only on S1 and S2.
 * Returns the cluster and the held append carrying index 8 to S3.
 */
function figure8(): { c: Cluster; held: Message[] } {
  const c = new Cluster({
    voters: [1, 2, 3, 4, 5],
    seed: 31,
    config: { preVote: false, checkQuorum: false, appendBytesMax: 1 },
  });
  c.elect(1);
  c.tickAll(1);
  assert.equal(c.raw(1).status().term, 2);
  assert.equal(c.raw(1).status().lastIndex, 6);
  assert.equal(c.raw(5).status().commit, 6);

  // (a) S1, leader of term 2, replicates index 7 to S2 only, then crashes.
  c.propose(1, 'x');
  c.deliverAll((m) => m.type !== 'append' || m.to === 2);
  assert.equal(c.raw(2).termAt(7), 2);
  c.crash(1);

  // (b) S5 is elected in term 3 by S3, S4 and itself, appends index 7 locally, and crashes.
  c.raw(5).campaign();
  c.deliverAll((m) => !(m.type === 'append' && m.from === 5));
  assert.equal(c.raw(5).status().role, 'leader');
  assert.equal(c.raw(5).status().term, 3);
  assert.equal(c.raw(5).termAt(7), 3);
  c.crash(5);

  // (c) S1 restarts and is elected in term 4 by S2 and S3 (S4 is cut off). It brings S3's log up
  // to index 7, but the append carrying index 8 to S3 is held back.
  c.restart(1);
  c.isolate(4);
  const held: Message[] = [];
  const holdIndex8ToS3 = (m: Message): boolean => {
    if (m.type === 'append' && m.to === 3 && m.entries.some((e) => e.index === 8) && c.raw(3).termAt(7) === 2) {
      held.push(m);
      return false;
    }
    return true;
  };
  for (let attempt = 0; attempt < 3 && c.raw(1).status().role !== 'leader'; attempt++) {
    c.raw(1).campaign();
    c.deliverAll(holdIndex8ToS3);
  }
  const s1 = c.raw(1).status();
  assert.equal(s1.role, 'leader');
  assert.equal(s1.term, 4);
  assert.equal(c.raw(1).termAt(8), 4);
  assert.equal(held.length, 1, 'exactly one append to S3 carries index 8');
  return { c, held };
}

test("an entry of an earlier term on a majority is not committed until an entry of the leader's term is (Figure 8)", () => {
  // Reference: Raft paper §5.4.2 (Committing entries from previous terms), Figure 8.
  const { c } = figure8();
  for (const id of [1, 2, 3]) assert.equal(c.raw(id).termAt(7), 2, `S${id} holds index 7 of term 2`);
  assert.equal(c.raw(1).status().progress?.get(3)?.match, 7, 'the leader knows S3 holds index 7');
  assert.equal(c.raw(1).status().commit, 6, 'the leader committed index 7 by counting replicas of an old-term entry');

  // Figure 8 (d): why that would have been wrong. S1 crashes, S5 returns and wins with S3 and
  // S4 (its last term, 3, beats their 2), and overwrites index 7 everywhere.
  c.crash(1);
  c.heal();
  c.restart(5);
  for (let attempt = 0; attempt < 3 && c.raw(5).status().role !== 'leader'; attempt++) c.elect(5);
  assert.equal(c.raw(5).status().role, 'leader', 'S5 should win with votes from S3 and S4');
  c.tickAll(2);
  for (const id of [2, 3, 4, 5]) {
    assert.equal(c.raw(id).termAt(7), 3, `S${id} now holds S5's entry at index 7`);
    assert.ok(!c.node(id).applied.includes('x'), `S${id} applied the entry that was overwritten`);
  }
});

test("once an entry of the leader's term is on a majority, the earlier-term entries before it commit too", () => {
  // Reference: Raft paper §5.4.2, Figure 8 (e): committing index 8 (term 4) commits index 7 with
  // it, and from then on S5 can no longer be elected.
  const { c, held } = figure8();
  assert.equal(c.raw(1).status().commit, 6);
  c.queue.push(...held);
  c.deliverAll();
  assert.equal(c.raw(1).status().commit, 8, 'index 8 is on S1, S2 and S3 and must commit, and 7 with it');
  assert.deepEqual(c.node(1).applied, ['x']);

  c.crash(1);
  c.heal();
  c.restart(5);
  for (let attempt = 0; attempt < 3; attempt++) c.elect(5);
  assert.notEqual(c.raw(5).status().role, 'leader', 'S5 won although its log lacks a committed entry');
  const leader = c.tickUntilLeader(10 * ELECTION_TICKS);
  assert.ok(leader === 2 || leader === 3, `only S2 or S3 hold every committed entry; ${leader} leads`);
  c.tickAll(2);
  for (const id of [2, 3, 4, 5]) {
    assert.equal(c.raw(id).termAt(7), 2, `S${id} must keep the committed entry at index 7`);
    assert.deepEqual(c.node(id).applied, ['x'], `S${id} applied the committed entry`);
  }
});

test("a follower whose appends were all lost is caught up by the leader's heartbeats, with no new proposal", () => {
  // Reference: Raft paper §5.3: "If followers crash or run slowly, or if network packets are lost,
  // the leader retries AppendEntries RPCs indefinitely until all followers eventually store all
  // log entries." Here the leader's only traffic afterwards is heartbeats.
  const c = new Cluster({ voters: [1, 2, 3], seed: 37 });
  c.elect(1);
  c.tickAll(2);
  for (let i = 0; i < 5; i++) c.propose(1, `v${i}`);
  c.deliverAll((m) => !(m.type === 'append' && m.to === 3));
  assert.equal(c.raw(2).status().lastIndex, c.raw(1).status().lastIndex, 'node 2 got the entries');
  assert.ok(c.raw(3).status().lastIndex < c.raw(1).status().lastIndex, 'node 3 lost them');

  c.tickAll(3 * ELECTION_TICKS);
  assert.deepEqual(c.node(3).applied, ['v0', 'v1', 'v2', 'v3', 'v4'], 'node 3 was never sent the entries it lost');
  assert.equal(c.raw(3).status().lastIndex, c.raw(1).status().lastIndex);
});

test('a proposal on a follower is refused with NOT_LEADER, naming the leader', () => {
  // Reference: Raft paper §5.1 / §8: clients send all requests to the leader; a follower
  // redirects them.
  const c = new Cluster({ voters: [1, 2, 3], seed: 41 });
  c.elect(1);
  const lastIndex = c.raw(2).status().lastIndex;
  assert.throws(() => c.propose(2, 'v'), { name: 'RaftError', code: 'NOT_LEADER', leader: 1 });
  assert.throws(() => c.raw(3).proposeConfChange({ type: 'add-learner', nodeId: 4 }), {
    name: 'RaftError',
    code: 'NOT_LEADER',
    leader: 1,
  });
  assert.equal(c.raw(2).status().lastIndex, lastIndex, 'the refused proposal left a trace in the log');
});

test('an entry larger than entryBytesMax is refused with ENTRY_TOO_LARGE and not appended', () => {
  // Reference: not in the paper (Raft §5.3 takes entries of any size); a named limit in the manner
  // of etcd's MaxSizePerMsg: one oversized command must not become a message no one can carry.
  const c = new Cluster({ voters: [1, 2, 3], seed: 43, config: { entryBytesMax: 64 } });
  c.elect(1);
  const lastIndex = c.raw(1).status().lastIndex;
  assert.throws(() => c.propose(1, 'x'.repeat(100)), { name: 'RaftError', code: 'ENTRY_TOO_LARGE' });
  assert.equal(c.raw(1).status().lastIndex, lastIndex);
  c.propose(1, 'small');
  c.deliverAll();
  c.tickAll(1);
  for (const id of [1, 2, 3]) assert.deepEqual(c.node(id).applied, ['small']);
});

test('proposals beyond uncommittedBytesMax are refused with PROPOSALS_BACKLOGGED until commits drain them', () => {
  // Reference: not in the paper (Raft §5.3 leaves flow control to the implementation); etcd's
  // MaxUncommittedEntriesSize: a leader that cannot commit must not buffer without bound.
  const c = new Cluster({ voters: [1, 2, 3], seed: 163, config: { entryBytesMax: 64, uncommittedBytesMax: 100 } });
  c.elect(1);
  c.tickAll(1);
  c.isolate(1);
  // Each entry counts 30 bytes plus 16 of framing: two fit under 100, a third does not.
  c.propose(1, 'a'.repeat(30));
  c.propose(1, 'b'.repeat(30));
  assert.throws(() => c.propose(1, 'c'.repeat(30)), { name: 'RaftError', code: 'PROPOSALS_BACKLOGGED', leader: 1 });

  c.heal();
  c.tickAll(2);
  assert.equal(c.leader(), 1);
  assert.equal(c.node(2).applied.length, 2, 'the backlog committed once the leader could reach a quorum');
  c.propose(1, 'c'.repeat(30));
  c.deliverAll();
  c.tickAll(1);
  assert.deepEqual(c.node(2).applied, ['a'.repeat(30), 'b'.repeat(30), 'c'.repeat(30)]);
});

test('a single-voter cluster elects itself and commits and reads on its own', () => {
  // Reference: Raft paper §5.2 and §5.3 with a majority of one; Ongaro thesis §6.4 (a lone voter
  // needs no heartbeat round to confirm a read).
  const c = new Cluster({ voters: [1], seed: 167 });
  const leader = c.tickUntilLeader(3 * ELECTION_TICKS);
  assert.equal(leader, 1);
  c.propose(1, 'solo');
  assert.deepEqual(c.node(1).applied, ['solo'], 'a lone voter commits as soon as it persists');
  c.readIndex(1, 'r');
  assert.deepEqual(c.node(1).readStates, [{ context: 'r', index: c.raw(1).status().commit }]);
});
