/**
 * Linearizable reads by ReadIndex: the leader records its commit index, confirms with a heartbeat
 * round that it still leads, and only then lets the read be served at that index.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RAFT_CONFIG_DEFAULTS } from '../../src/raft/config.ts';
import type { Message } from '../../src/raft/types.ts';
import { Cluster } from './harness.ts';

const ELECTION_TICKS = RAFT_CONFIG_DEFAULTS.electionTimeoutTicks;

/** A three-voter cluster with node 1 leading and its term's first entry committed everywhere. */
function readyCluster(seed: number): Cluster {
  const c = new Cluster({ voters: [1, 2, 3], seed });
  c.elect(1);
  c.tickAll(1);
  const status = c.raw(1).status();
  assert.equal(c.raw(1).termAt(status.commit), status.term, 'the leader committed an entry of its term');
  return c;
}

test('a new leader refuses reads until it has committed an entry of its own term, then answers them', () => {
  // Reference: Ongaro thesis §6.4 (Processing read-only queries more efficiently), step 1: a new
  // leader's commit index may be stale until its no-op entry commits (also Raft paper §8).
  const c = new Cluster({ voters: [1, 2, 3], seed: 47 });
  c.raw(1).campaign();
  const noAcks = (m: Message): boolean => m.type !== 'append-response';
  c.deliverAll(noAcks);
  const before = c.raw(1).status();
  assert.equal(before.role, 'leader');
  const noopIndex = before.lastIndex;
  assert.equal(c.raw(1).termAt(noopIndex), before.term, 'the leader appended a no-op of its term');
  assert.ok(before.commit < noopIndex, 'the no-op must not be committed yet');

  c.readIndex(1, 'early');
  assert.deepEqual(c.node(1).readRefusals, [{ context: 'early', reason: 'leader-not-ready' }]);
  assert.deepEqual(c.node(1).readStates, []);
  // A follower's read goes to the leader and is refused for the same reason.
  c.readIndex(2, 'early-from-2');
  c.deliverAll(noAcks);
  assert.deepEqual(c.node(2).readRefusals, [{ context: 'early-from-2', reason: 'leader-not-ready' }]);
  assert.deepEqual(c.node(2).readStates, []);

  // Let the acknowledgements through: the no-op commits and reads are served.
  c.tickAll(1);
  const after = c.raw(1).status();
  assert.ok(after.commit >= noopIndex, 'the no-op committed once acknowledgements got through');
  c.readIndex(1, 'late');
  c.deliverAll();
  assert.deepEqual(c.node(1).readStates, [{ context: 'late', index: after.commit }]);
  assert.ok(c.node(1).readStates[0]!.index >= noopIndex);
  assert.equal(c.node(1).readRefusals.length, 1, 'the late read was not refused');
});

test("a read asked on a follower is confirmed by the leader and released on the follower at the leader's commit index", () => {
  // Reference: Ongaro thesis §6.4: "followers can also serve read-only queries" by asking the
  // leader for its read index, then waiting until they have applied that far.
  const c = readyCluster(53);
  c.propose(1, 'a');
  c.deliverAll();
  const commit = c.raw(1).status().commit;

  let readHeartbeats = 0;
  c.readIndex(2, 'f1');
  c.deliverAll((m) => {
    if (m.type === 'heartbeat' && m.readSeq > 0) readHeartbeats++;
    return true;
  });
  assert.deepEqual(c.node(2).readStates, [{ context: 'f1', index: commit }]);
  assert.deepEqual(c.node(2).readRefusals, []);
  assert.deepEqual(c.node(1).readStates, [], "the follower's read is released on the follower, not the leader");
  assert.ok(readHeartbeats >= 1, 'the leader confirmed its leadership with a heartbeat round first');
  c.tickAll(1);
  assert.ok(c.node(2).appliedIndex >= commit, 'the follower can serve the read once it applies that far');
  assert.deepEqual(c.node(2).applied, ['a']);
});

test('a read on the leader is held until a quorum answers a heartbeat round sent after it', () => {
  // Reference: Ongaro thesis §6.4, step 3: the leader exchanges heartbeats with a majority to
  // make sure it was not deposed before it serves the read. Answers to a round sent before the
  // read asked cannot confirm it.
  const c = readyCluster(59);
  const commit = c.raw(1).status().commit;

  // Read r0's heartbeat round goes out; its answers are held back.
  const held: Message[] = [];
  c.readIndex(1, 'r0');
  c.deliverAll((m) => {
    if (m.type !== 'heartbeat-response') return true;
    held.push(m);
    return false;
  });
  assert.equal(held.length, 2);
  // Read r1's round is lost entirely, and so are the answers to plain heartbeats for a while.
  c.readIndex(1, 'r1');
  c.deliverAll((m) => m.type !== 'heartbeat-response');
  c.tickAll(ELECTION_TICKS / 2, (m) => m.type !== 'heartbeat-response');
  assert.deepEqual(c.node(1).readStates, [], 'a read was released without any heartbeat confirmation');
  assert.deepEqual(c.node(1).readRefusals, []);

  // The late answers to r0's round confirm r0, not r1, which was asked after that round left.
  c.queue.push(...held);
  c.deliverAll((m) => m.type !== 'heartbeat-response' || held.includes(m));
  assert.deepEqual(c.node(1).readStates, [{ context: 'r0', index: commit }]);

  // One follower's answer to a fresh round makes a quorum of two out of three.
  c.tickAll(1, (m) => m.type !== 'heartbeat-response' || m.from === 2);
  assert.deepEqual(c.node(1).readStates, [
    { context: 'r0', index: commit },
    { context: 'r1', index: commit },
  ]);
});

test('a leader deposed while reads wait for confirmation refuses them with leadership-lost', () => {
  // Reference: Ongaro thesis §6.4 and §6.2: a leader that cannot confirm its leadership must not
  // serve the read; check-quorum makes it step down and the waiting reads fail.
  const c = readyCluster(61);
  c.readIndex(1, 'r1');
  c.isolate(1);
  c.tick(1, 2 * ELECTION_TICKS);
  assert.notEqual(c.raw(1).status().role, 'leader');
  assert.deepEqual(c.node(1).readStates, []);
  assert.deepEqual(c.node(1).readRefusals, [{ context: 'r1', reason: 'leadership-lost' }]);
});

test('a node that knows no leader refuses a read with no-leader', () => {
  // Reference: Ongaro thesis §6.4: only the leader can establish a read index.
  const c = new Cluster({ voters: [1, 2, 3], seed: 67 });
  c.readIndex(2, 'r');
  assert.deepEqual(c.node(2).readRefusals, [{ context: 'r', reason: 'no-leader' }]);
});

test('reads beyond pendingReadsMax waiting for confirmation are refused with too-many-pending', () => {
  // Reference: Ongaro thesis §6.4; a limit on everything: the queue of unconfirmed reads is bounded.
  const c = new Cluster({ voters: [1, 2, 3], seed: 71, config: { pendingReadsMax: 2 } });
  c.elect(1);
  c.tickAll(1);
  const noConfirmations = (m: Message): boolean => m.type !== 'heartbeat-response';
  for (const context of ['r1', 'r2', 'r3']) {
    c.readIndex(1, context);
    c.deliverAll(noConfirmations);
  }
  assert.deepEqual(c.node(1).readRefusals, [{ context: 'r3', reason: 'too-many-pending' }]);
  c.tickAll(1);
  assert.deepEqual(
    c.node(1).readStates.map((r) => r.context),
    ['r1', 'r2'],
  );
});
