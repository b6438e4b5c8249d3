/**
 * Membership changes, one server at a time: learners, promotion, removal (including of the
 * leader), and the rule that a change waits for the previous one to be applied.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RAFT_CONFIG_DEFAULTS } from '../../src/raft/config.ts';
import type { ConfChange, ConfState, Message, NodeId } from '../../src/raft/types.ts';
import { Cluster, decoder } from './harness.ts';

const ELECTION_TICKS = RAFT_CONFIG_DEFAULTS.electionTimeoutTicks;

/** Proposes a conf change on the leader and runs the cluster until it is applied everywhere. */
function change(c: Cluster, leader: NodeId, confChange: ConfChange): void {
  c.raw(leader).proposeConfChange(confChange);
  c.process(leader);
  c.deliverAll();
  c.tickAll(2);
}

function assertConfState(c: Cluster, ids: NodeId[], expected: ConfState): void {
  for (const id of ids) assert.deepEqual(c.raw(id).status().confState, expected, `node ${id}'s membership`);
}

/** node 1 leads [1, 2, 3] and has committed 'a'; node 4 exists with an empty log. */
function clusterWithNewNode(seed: number): Cluster {
  const c = new Cluster({ voters: [1, 2, 3], seed });
  c.elect(1);
  c.propose(1, 'a');
  c.deliverAll();
  c.tickAll(1);
  c.addEmptyNode(4);
  return c;
}

test('a learner added to the cluster receives the whole log but never campaigns', () => {
  // Reference: Ongaro thesis §4.2.1 (Catching up new servers): a new server joins without a vote
  // until it has caught up (etcd's learners).
  const c = clusterWithNewNode(89);
  change(c, 1, { type: 'add-learner', nodeId: 4 });
  assertConfState(c, [1, 2, 3, 4], { voters: [1, 2, 3], learners: [4] });
  assert.deepEqual(c.log(4), c.log(1), "the learner holds the leader's whole log");
  assert.deepEqual(c.node(4).applied, ['a']);
  c.propose(1, 'b');
  c.deliverAll();
  c.tickAll(1);
  assert.deepEqual(c.node(4).applied, ['a', 'b'], 'the learner keeps receiving new entries');

  // Cut off from everyone for many election timeouts, a learner still does not campaign.
  const term = c.raw(4).status().term;
  c.isolate(4);
  c.tickAll(10 * ELECTION_TICKS);
  assert.equal(c.raw(4).status().role, 'follower', 'the learner campaigned');
  assert.equal(c.raw(4).status().term, term);
});

test("learners' acknowledgements count neither for commitment nor for the leader's quorum check", () => {
  // Reference: Ongaro thesis §4.2.1: non-voting members are not counted in majorities; §6.2 for
  // check-quorum. With the leader, the two learners would make a majority of all five nodes.
  const c = clusterWithNewNode(97);
  c.addEmptyNode(5);
  change(c, 1, { type: 'add-learner', nodeId: 4 });
  change(c, 1, { type: 'add-learner', nodeId: 5 });
  assertConfState(c, [1, 2, 3, 4, 5], { voters: [1, 2, 3], learners: [4, 5] });
  const commit = c.raw(1).status().commit;
  c.crash(2);
  c.crash(3);

  const { index } = c.propose(1, 'b');
  c.deliverAll();
  const status = c.raw(1).status();
  assert.equal(status.progress?.get(4)?.match, index, 'learner 4 acknowledged the entry');
  assert.equal(status.progress?.get(5)?.match, index, 'learner 5 acknowledged the entry');
  assert.equal(status.commit, commit, "the leader committed an entry with only learners' acknowledgements");

  c.tickAll(2 * ELECTION_TICKS);
  assert.notEqual(c.raw(1).status().role, 'leader', "learners kept the leader's quorum check alive");
  assert.deepEqual(c.node(4).applied, ['a']);
});

test('a learner promoted to voter counts in the quorum', () => {
  // Reference: Ongaro thesis §4.1 (membership changes one server at a time).
  const c = clusterWithNewNode(101);
  change(c, 1, { type: 'add-learner', nodeId: 4 });
  change(c, 1, { type: 'add-voter', nodeId: 4 });
  assertConfState(c, [1, 2, 3, 4], { voters: [1, 2, 3, 4], learners: [] });

  // Four voters: 1, 3 and 4 are a majority without 2.
  c.crash(2);
  c.propose(1, 'b');
  c.deliverAll();
  c.tickAll(1);
  assert.deepEqual(c.node(1).applied, ['a', 'b']);
  assert.deepEqual(c.node(4).applied, ['a', 'b']);

  // 1 and 4 alone are not.
  c.crash(3);
  const commit = c.raw(1).status().commit;
  c.propose(1, 'c');
  c.deliverAll();
  assert.equal(c.raw(1).status().commit, commit, 'two of four voters committed an entry');
});

test('removing a voter shrinks the quorum and stops the leader replicating to it', () => {
  // Reference: Ongaro thesis §4.1. Unlike §4.1, where a server uses a configuration as soon as it
  // is in its log, this core (like etcd) switches when the change is applied; with one change
  // pending at a time, majorities of the old and new configurations still overlap.
  const c = new Cluster({ voters: [1, 2, 3, 4], seed: 103 });
  c.elect(1);
  c.tickAll(1);
  change(c, 1, { type: 'remove', nodeId: 4 });
  assertConfState(c, [1, 2, 3], { voters: [1, 2, 3], learners: [] });
  assert.equal(c.raw(1).status().progress?.has(4), false, 'the leader still tracks the removed node');

  // Three voters now: 1 and 2 are a majority (they were not among four).
  c.crash(3);
  c.crash(4);
  c.propose(1, 'a');
  c.deliverAll();
  c.tickAll(1);
  assert.deepEqual(c.node(1).applied, ['a']);
  assert.deepEqual(c.node(2).applied, ['a']);
  assert.equal(c.raw(1).status().role, 'leader', 'the leader lost its quorum with 2 of 3 voters up');
});

test('a leader that removes itself steps down once the removal is applied, and the rest elect a leader without it', () => {
  // Reference: Ongaro thesis §4.2.2 (Removing the current leader): the leader steps down after the
  // change commits; as a non-member it must not start elections afterwards.
  const c = new Cluster({ voters: [1, 2, 3], seed: 107 });
  c.elect(1);
  c.propose(1, 'a');
  c.deliverAll();
  c.tickAll(1);
  const term = c.raw(1).status().term;

  const { index } = c.raw(1).proposeConfChange({ type: 'remove', nodeId: 1 });
  c.process(1);
  assert.equal(c.raw(1).status().role, 'leader', 'the leader steps down on applying, not proposing');
  let campaignsByOldLeader = 0;
  const watch = (m: Message): boolean => {
    if (m.from === 1 && (m.type === 'vote' || m.type === 'pre-vote')) campaignsByOldLeader++;
    return true;
  };
  c.deliverAll(watch);
  assert.ok(c.raw(1).status().applied >= index, 'the old leader applied its removal');
  assert.notEqual(c.raw(1).status().role, 'leader', 'the removed leader did not step down');

  // The old leader hands over to the most caught-up voter (TimeoutNow), so no election timeout
  // has to pass: a leader is there before any tick.
  const leader = c.leader();
  assert.ok(leader === 2 || leader === 3, `expected a leader among 2 and 3 at once, got ${leader}`);
  assert.ok(c.raw(leader).status().term > term);
  assertConfState(c, [2, 3], { voters: [2, 3], learners: [] });

  c.tickAll(10 * ELECTION_TICKS, watch);
  assert.equal(campaignsByOldLeader, 0, 'the removed leader campaigned');
  assert.equal(c.raw(1).status().role, 'follower');
  assert.equal(c.leader(), leader, 'leadership moved again');
  c.propose(leader, 'b');
  c.deliverAll();
  c.tickAll(1);
  for (const id of [2, 3]) assert.deepEqual(c.node(id).applied, ['a', 'b']);
});

test('a conf change is refused with CONF_CHANGE_PENDING while the previous one is not applied', () => {
  // Reference: Ongaro thesis §4.1: one membership change at a time; the next may start only
  // once the previous has taken effect.
  const c = clusterWithNewNode(109);
  c.addEmptyNode(5);
  c.raw(1).proposeConfChange({ type: 'add-learner', nodeId: 4 });
  c.process(1);
  assert.throws(() => c.raw(1).proposeConfChange({ type: 'add-learner', nodeId: 5 }), {
    name: 'RaftError',
    code: 'CONF_CHANGE_PENDING',
    leader: 1,
  });
  c.deliverAll();
  c.tickAll(2);
  change(c, 1, { type: 'add-learner', nodeId: 5 });
  assertConfState(c, [1, 2, 3, 4, 5], { voters: [1, 2, 3], learners: [4, 5] });
});

test('a conf change that makes no sense for the membership is refused with CONF_CHANGE_INVALID', () => {
  // Reference: Ongaro thesis §4.1; a guard at the proposal, not a surprise at apply time.
  const c = new Cluster({ voters: [1, 2, 3], seed: 113 });
  c.elect(1);
  assert.throws(() => c.raw(1).proposeConfChange({ type: 'add-voter', nodeId: 2 }), {
    name: 'RaftError',
    code: 'CONF_CHANGE_INVALID',
  });
  assert.throws(() => c.raw(1).proposeConfChange({ type: 'remove', nodeId: 9 }), {
    name: 'RaftError',
    code: 'CONF_CHANGE_INVALID',
  });
  assert.throws(() => c.raw(1).proposeConfChange({ type: 'add-learner', nodeId: 1 }), {
    name: 'RaftError',
    code: 'CONF_CHANGE_INVALID',
  });
});

test('force-new-cluster: a survivor of a lost quorum takes its whole log as committed and leads alone', () => {
  // Reference: etcd's --force-new-cluster and Swarm's --force-new-cluster: the operator accepts
  // that entries the old majority never committed may become committed.
  const c = new Cluster({ voters: [1, 2, 3], seed: 211 });
  c.elect(1);
  c.propose(1, 'a');
  c.deliverAll();
  // 'b' reaches node 3's log, but no acknowledgement gets back: it is not committed.
  c.propose(1, 'b');
  c.deliverAll((m) => m.type === 'append' && m.to === 3);
  assert.ok(
    c.log(3).some((e) => e.kind === 'normal' && decoder.decode(e.data) === 'b'),
    'node 3 has b',
  );
  assert.deepEqual(c.node(3).applied, ['a']);
  c.crash(1);
  c.crash(2);
  c.crash(3);
  let removed: number[] = [];
  c.restart(3, (raw) => (removed = raw.forceNewCluster()));
  assert.deepEqual(removed.sort(), [1, 2]);
  assert.deepEqual(c.raw(3).status().confState, { voters: [3], learners: [] });
  assert.deepEqual(c.node(3).applied, ['a', 'b'], 'the whole surviving log is applied');
  const leader = c.tickUntil(() => c.raw(3).status().role === 'leader', 100);
  assert.notEqual(leader, null, 'the survivor elects itself');
  c.propose(3, 'c');
  c.process(3);
  assert.deepEqual(c.node(3).applied, ['a', 'b', 'c'], 'it commits alone');
  // Forcing again changes nothing: it is already the only voter.
  c.crash(3);
  c.restart(3, (raw) => (removed = raw.forceNewCluster()));
  assert.deepEqual(removed, []);
  assert.deepEqual(c.raw(3).status().confState, { voters: [3], learners: [] });
});
