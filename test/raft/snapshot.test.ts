/**
 * Snapshots and log compaction: a follower that needs compacted entries gets the state machine
 * image instead; a node restarts from its own snapshot plus the log after it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Message } from '../../src/raft/types.ts';
import { Cluster } from './harness.ts';

const values = (n: number, prefix = 'v'): string[] => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

test('a follower that missed compacted entries is sent a snapshot and ends with the same applied values', () => {
  // Reference: Raft paper §7 (Log compaction), InstallSnapshot: "the leader must occasionally
  // send snapshots to followers that lag behind".
  const c = new Cluster({ voters: [1, 2, 3], seed: 127 });
  c.elect(1);
  c.tickAll(1);
  c.crash(3);
  for (const v of values(30)) c.propose(1, v);
  c.deliverAll();
  c.tickAll(1);
  c.snapshotAndCompact(1);
  const leader = c.raw(1).status();
  assert.ok(leader.firstIndex > c.raw(3).status().lastIndex + 1, 'the entries node 3 needs are compacted away');

  c.restart(3);
  let snapshotsSent = 0;
  let appendsBelowSnapshot = 0;
  const watch = (m: Message): boolean => {
    if (m.type === 'snapshot' && m.to === 3) snapshotsSent++;
    if (m.type === 'append' && m.to === 3 && m.entries.length > 0 && m.entries[0]!.index < leader.firstIndex)
      appendsBelowSnapshot++;
    return true;
  };
  c.tickAll(3, watch);
  assert.equal(snapshotsSent, 1, 'one snapshot is enough to catch node 3 up');
  assert.equal(appendsBelowSnapshot, 0);
  assert.deepEqual(c.node(3).applied, values(30));
  assert.deepEqual(c.node(3).applied, c.node(1).applied);
  assert.equal(c.node(3).reappliedEntries, 0);
  const s3 = c.raw(3).status();
  assert.equal(s3.lastIndex, leader.lastIndex);
  assert.equal(s3.commit, leader.commit);
  assert.deepEqual(c.node(3).disk.snapshot?.metadata.index, leader.lastIndex, 'the received snapshot was persisted');

  // Afterwards it follows by plain appends again.
  c.propose(1, 'after');
  c.deliverAll(watch);
  c.tickAll(1, watch);
  assert.equal(snapshotsSent, 1);
  assert.deepEqual(c.node(3).applied, [...values(30), 'after']);

  // And after a crash it restarts from the received snapshot plus the entries after it.
  c.crash(3);
  c.restart(3);
  assert.deepEqual(c.node(3).applied, [...values(30), 'after']);
});

test('a follower whose missing entries are still in the retained tail is caught up by appends, not a snapshot', () => {
  // Reference: Raft paper §7: a snapshot is needed only when "the leader has already discarded
  // the next log entry that it needs to send to a follower".
  const c = new Cluster({ voters: [1, 2, 3], seed: 131 });
  c.elect(1);
  c.tickAll(1);
  c.crash(3);
  for (const v of values(5)) c.propose(1, v);
  c.deliverAll();
  c.tickAll(1);
  c.snapshotAndCompact(1, 10);
  assert.ok(c.raw(1).status().firstIndex <= c.raw(3).status().lastIndex, 'node 3 needs only retained entries');

  c.restart(3);
  let snapshotsSent = 0;
  c.tickAll(3, (m) => {
    if (m.type === 'snapshot') snapshotsSent++;
    return true;
  });
  assert.equal(snapshotsSent, 0);
  assert.deepEqual(c.node(3).applied, values(5));
});

test('a leader restarted from its own snapshot and log tail rebuilds the same state and can lead again', () => {
  // Reference: Raft paper §7: a server's state is its snapshot plus the log entries after it.
  const c = new Cluster({ voters: [1, 2, 3], seed: 137 });
  c.elect(1);
  for (const v of values(10)) c.propose(1, v);
  c.deliverAll();
  c.tickAll(1);
  c.snapshotAndCompact(1, 3);
  c.propose(1, 'tail');
  c.deliverAll();
  c.tickAll(1);
  const before = c.raw(1).status();

  c.crash(1);
  c.restart(1);
  const after = c.raw(1).status();
  assert.deepEqual(c.node(1).applied, [...values(10), 'tail']);
  assert.equal(after.lastIndex, before.lastIndex);
  assert.equal(after.term, before.term);
  assert.deepEqual(after.confState, before.confState, 'the membership comes back from the snapshot');
  assert.equal(c.node(1).reappliedEntries, 0);

  // The restarted node rejoins as a follower. Whoever the cluster elects hands leadership back
  // to it, which only works if the log it rebuilt is complete (a transfer target must be caught
  // up and win votes on an up-to-date log).
  const interim = c.tickUntilLeader(100);
  assert.notEqual(interim, null);
  if (interim !== 1) {
    c.raw(interim!).transferLeadership(1);
    c.process(interim!);
    c.deliverAll();
  }
  assert.equal(c.leader(), 1, 'the restarted node could not lead again');
  c.propose(1, 'again');
  c.deliverAll();
  c.tickAll(1);
  for (const id of [1, 2, 3]) assert.deepEqual(c.node(id).applied, [...values(10), 'tail', 'again']);
});

test('a brand-new node added after the log was compacted is seeded with a snapshot and then follows', () => {
  // Reference: Raft paper §7: InstallSnapshot also brings new servers up to speed; Ongaro
  // thesis §4.2.1 (catching up new servers as learners first).
  const c = new Cluster({ voters: [1, 2, 3], seed: 173 });
  c.elect(1);
  for (const v of values(10)) c.propose(1, v);
  c.deliverAll();
  c.tickAll(1);
  c.snapshotAndCompact(1);
  c.addEmptyNode(4);

  let snapshotsTo4 = 0;
  const watch = (m: Message): boolean => {
    if (m.type === 'snapshot' && m.to === 4) snapshotsTo4++;
    return true;
  };
  c.raw(1).proposeConfChange({ type: 'add-learner', nodeId: 4 });
  c.process(1);
  c.deliverAll(watch);
  c.tickAll(2, watch);
  assert.equal(snapshotsTo4, 1);
  assert.deepEqual(c.node(4).applied, values(10));
  assert.deepEqual(c.raw(4).status().confState, { voters: [1, 2, 3], learners: [4] });

  c.raw(1).proposeConfChange({ type: 'add-voter', nodeId: 4 });
  c.process(1);
  c.propose(1, 'after');
  c.deliverAll(watch);
  c.tickAll(2, watch);
  assert.equal(snapshotsTo4, 1);
  assert.deepEqual(c.node(4).applied, [...values(10), 'after']);
  assert.deepEqual(c.raw(4).status().confState, { voters: [1, 2, 3, 4], learners: [] });
  c.crash(4);
  c.restart(4);
  assert.deepEqual(c.raw(4).status().confState, { voters: [1, 2, 3, 4], learners: [] }, 'membership after a restart');
  assert.deepEqual(c.node(4).applied, [...values(10), 'after']);
});

test('a snapshot lost in transit is sent again once the transport reports the failure', () => {
  // Reference: Raft paper §7; etcd's ReportSnapshot: the leader waits in the snapshot state until
  // the transport says how the send ended, then probes again.
  const c = new Cluster({ voters: [1, 2, 3], seed: 179 });
  c.elect(1);
  c.tickAll(1);
  c.crash(3);
  for (const v of values(10)) c.propose(1, v);
  c.deliverAll();
  c.tickAll(1);
  c.snapshotAndCompact(1);
  c.restart(3);

  let snapshotsSent = 0;
  let dropped = false;
  const dropFirstSnapshot = (m: Message): boolean => {
    if (m.type !== 'snapshot') return true;
    snapshotsSent++;
    if (dropped) return true;
    dropped = true;
    return false;
  };
  c.tickAll(3, dropFirstSnapshot);
  assert.equal(snapshotsSent, 1, "the leader waits for the transport's report before resending");
  assert.deepEqual(c.node(3).applied, []);
  assert.equal(c.raw(1).status().progress?.get(3)?.state, 'snapshot');

  c.raw(1).reportSnapshot(3, false);
  c.process(1);
  c.tickAll(3, dropFirstSnapshot);
  assert.equal(snapshotsSent, 2);
  assert.deepEqual(c.node(3).applied, values(10));
});
