/**
 * What survives a crash: term, vote and log are persisted before anything is sent, and a node
 * rebuilt from its disk behaves as if it had never stopped (minus volatile state).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Message, VoteResponseMessage } from '../../src/raft/types.ts';
import { Cluster, decoder } from './harness.ts';

test('a node that voted in a term and restarted refuses to vote for another candidate in that term', () => {
  // Reference: Raft paper §5.2 and Figure 2 ("Persistent state on all servers: currentTerm,
  // votedFor ... updated on stable storage before responding to RPCs"). Pre-vote is off so a
  // second candidate can ask in the very same term.
  const c = new Cluster({ voters: [1, 2, 3], seed: 139, config: { preVote: false } });
  // Node 1 campaigns in term 2; node 3 votes for it, node 2 never hears of it. Node 1 wins with
  // 2 of 3, but nothing it sends as leader arrives.
  c.raw(1).campaign();
  c.deliverAll((m) => m.to !== 2 && m.type !== 'append');
  assert.equal(c.raw(1).status().role, 'leader');
  assert.equal(c.raw(1).status().term, 2);
  assert.deepEqual(c.node(3).disk.hardState, { term: 2, vote: 1, commit: 3 }, 'the vote is on disk');

  c.crash(3);
  c.restart(3);
  assert.equal(c.raw(3).status().term, 2, 'the term came back from disk');
  assert.equal(c.raw(3).status().vote, 1, 'the vote came back from disk');

  // Node 2, still in term 1, campaigns into term 2 too.
  const answersTo2: VoteResponseMessage[] = [];
  c.raw(2).campaign();
  assert.equal(c.raw(2).status().term, 2);
  c.deliverAll((m: Message) => {
    if (m.type === 'vote-response' && m.to === 2) answersTo2.push(m);
    return m.type !== 'append';
  });
  const from3 = answersTo2.find((m) => m.from === 3);
  assert.ok(from3 !== undefined, 'node 3 did not answer');
  assert.equal(from3.reject, true, 'node 3 voted twice in term 2');
  assert.equal(c.raw(3).status().vote, 1);
  assert.notEqual(c.raw(2).status().role, 'leader', 'two leaders in term 2');
});

test('a restarted node never returns to an earlier term, so it rejects its old leader', () => {
  // Reference: Raft paper Figure 2: currentTerm is persistent; §5.1: a server rejects requests
  // with a stale term.
  const c = new Cluster({ voters: [1, 2, 3], seed: 149 });
  c.elect(1);
  c.tickAll(1);
  const oldTerm = c.raw(1).status().term;
  c.isolate(1);
  const leader = c.tickUntil(() => c.raw(2).status().role === 'leader' || c.raw(3).status().role === 'leader', 100);
  assert.notEqual(leader, null);
  const newTerm = c.raw(2).status().term;
  assert.ok(newTerm > oldTerm);

  // Node 2 restarts in the new term, and then hears the old leader's heartbeat of the old term.
  c.crash(2);
  c.restart(2);
  assert.equal(c.raw(2).status().term, newTerm);
  c.raw(2).step({ type: 'heartbeat', from: 1, to: 2, term: oldTerm, commit: 0, readSeq: 0 });
  c.process(2);
  assert.equal(c.raw(2).status().term, newTerm);
  assert.notEqual(c.raw(2).status().lead, 1, 'a leader of an older term was followed');
});

test('entries a follower persisted before a crash, uncommitted, are committed after it restarts and applied exactly once', () => {
  // Reference: Raft paper §5.3 and Figure 2: log entries are persistent; a restarted follower
  // keeps them and the leader's later commit index covers them (§5.4.2 Leader Completeness).
  const c = new Cluster({ voters: [1, 2, 3], seed: 151 });
  c.elect(1);
  c.propose(1, 'a');
  c.deliverAll();
  c.tickAll(1);

  // 'b' and 'c' reach both followers' disks, but no acknowledgement reaches the leader.
  const b = c.propose(1, 'b');
  const cc = c.propose(1, 'c');
  c.deliverAll((m) => m.type !== 'append-response');
  assert.ok(c.raw(1).status().commit < b.index, 'nothing new committed');
  const persisted = c.node(3).disk.entries.filter((e) => e.index >= b.index);
  assert.deepEqual(
    persisted.map((e) => (e.kind === 'normal' ? decoder.decode(e.data) : '?')),
    ['b', 'c'],
    'node 3 persisted the entries',
  );
  assert.ok(c.node(3).disk.hardState.commit < b.index);

  c.crash(3);
  c.restart(3);
  assert.equal(c.raw(3).status().lastIndex, cc.index, 'the restarted node still holds the entries');
  assert.deepEqual(c.node(3).applied, ['a'], 'uncommitted entries must not be applied on restart');

  c.tickAll(3);
  for (const id of [1, 2, 3]) {
    assert.ok(c.raw(id).status().commit >= cc.index, `node ${id} did not learn the commit`);
    assert.deepEqual(c.node(id).applied, ['a', 'b', 'c'], `node ${id}'s applied values`);
    assert.equal(c.node(id).reappliedEntries, 0, `node ${id} was handed entries it had applied`);
  }
  assert.equal(c.raw(3).termAt(b.index), b.term);
  assert.equal(c.raw(3).termAt(cc.index), cc.term);
});

test('a whole cluster restarted from disk keeps every committed entry and elects a leader again', () => {
  // Reference: Raft paper §5.4 (Safety): committed entries are durable on a majority and survive
  // any crash; Figure 2 persistent state.
  const c = new Cluster({ voters: [1, 2, 3], seed: 157 });
  c.elect(1);
  for (const v of ['a', 'b', 'c']) c.propose(1, v);
  c.deliverAll();
  c.tickAll(1);
  for (const id of [1, 2, 3]) c.crash(id);
  for (const id of [1, 2, 3]) c.restart(id);
  for (const id of [1, 2, 3]) assert.deepEqual(c.node(id).applied, ['a', 'b', 'c'], `node ${id} after restart`);

  const leader = c.tickUntilLeader(100);
  assert.notEqual(leader, null);
  c.propose(leader!, 'd');
  c.deliverAll();
  c.tickAll(1);
  for (const id of [1, 2, 3]) assert.deepEqual(c.node(id).applied, ['a', 'b', 'c', 'd']);
});
