/**
 * Leader election: who leads, when a new leader is chosen, and when nobody may be.
 * The cluster runs the default configuration (pre-vote and check-quorum on) unless a test says
 * otherwise; time passes only through ticks, so every run is the same.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RAFT_CONFIG_DEFAULTS } from '../../src/raft/config.ts';
import type { Message, NodeId } from '../../src/raft/types.ts';
import { Cluster } from './harness.ts';

const ELECTION_TICKS = RAFT_CONFIG_DEFAULTS.electionTimeoutTicks;

/** Every live node agrees that `leader` leads in its term, and nobody else thinks it leads. */
function assertAgreedLeader(c: Cluster, leader: NodeId): void {
  const term = c.raw(leader).status().term;
  for (const node of c.nodes.values()) {
    if (!node.up) continue;
    const status = node.raw.status();
    assert.equal(status.lead, leader, `node ${node.id} follows ${status.lead}, not ${leader}`);
    assert.equal(status.term, term, `node ${node.id} is in term ${status.term}, the leader in ${term}`);
    assert.equal(status.role === 'leader', node.id === leader, `node ${node.id} is a ${status.role}`);
  }
}

test('a new cluster elects exactly one leader by timeouts, and every node agrees on it and its term', () => {
  // Reference: Raft paper §5.2 (Leader election); Election Safety, Figure 3.
  const c = new Cluster({ voters: [1, 2, 3, 4, 5], seed: 7 });
  const leader = c.tickUntilLeader(4 * ELECTION_TICKS);
  assert.notEqual(leader, null, 'no leader after four election timeouts');
  assertAgreedLeader(c, leader!);
  assert.ok(c.raw(leader!).status().term >= 2, 'the bootstrap term 1 has no leader; an election moves past it');
});

test('when the leader crashes, the others elect a new leader in a higher term', () => {
  // Reference: Raft paper §5.2: a follower that hears nothing for an election timeout campaigns.
  const c = new Cluster({ voters: [1, 2, 3], seed: 3 });
  c.elect(1);
  const oldTerm = c.raw(1).status().term;
  assert.equal(c.leader(), 1);

  c.crash(1);
  const leader = c.tickUntilLeader(4 * ELECTION_TICKS);
  assert.notEqual(leader, null, 'no new leader after four election timeouts');
  assert.notEqual(leader, 1);
  assert.ok(c.raw(leader!).status().term > oldTerm, 'the new leader must lead a later term');
  assertAgreedLeader(c, leader!);
});

test('without a quorum of live voters no leader is elected, however long the survivors wait', () => {
  // Reference: Raft paper §5.2: a candidate wins only with votes from a majority of the cluster.
  // Thesis §9.6: with pre-vote, the survivors' terms do not even grow while they try.
  const c = new Cluster({ voters: [1, 2, 3, 4, 5], seed: 11 });
  c.elect(1);
  const term = c.raw(4).status().term;
  c.crash(1);
  c.crash(2);
  c.crash(3);

  const leader = c.tickUntilLeader(20 * ELECTION_TICKS);
  assert.equal(leader, null, `node ${leader} became leader with only 2 of 5 voters up`);
  for (const id of [4, 5]) {
    const status = c.raw(id).status();
    assert.notEqual(status.role, 'leader');
    assert.notEqual(status.role, 'candidate', `node ${id} got past pre-vote without a quorum`);
    assert.equal(status.term, term, `node ${id} bumped its term without being able to win`);
  }
});

test('a split vote between two candidates of the same term resolves into one leader after timeouts', () => {
  // Reference: Raft paper §5.2: randomized election timeouts make split votes rare and resolve them.
  const c = new Cluster({ voters: [1, 2, 3, 4, 5], seed: 5 });
  // Both campaign at once. Node 3 hears only node 1's vote request, node 4 only node 2's, and
  // node 5 neither: each candidate ends with 2 of 5 votes.
  c.raw(1).campaign();
  c.raw(2).campaign();
  const splitVotes = (m: Message): boolean => {
    if (m.type !== 'vote') return true;
    if (m.from === 1) return m.to === 2 || m.to === 3;
    if (m.from === 2) return m.to === 1 || m.to === 4;
    return true;
  };
  c.deliverAll(splitVotes);
  const s1 = c.raw(1).status();
  const s2 = c.raw(2).status();
  assert.equal(s1.role, 'candidate');
  assert.equal(s2.role, 'candidate');
  assert.equal(s1.term, s2.term, 'both candidates campaign in the same term');
  assert.equal(c.raw(3).status().vote, 1);
  assert.equal(c.raw(4).status().vote, 2);
  assert.equal(c.leader(), null, 'nobody may win with 2 of 5 votes');

  const leader = c.tickUntilLeader(10 * ELECTION_TICKS);
  assert.notEqual(leader, null, 'the split vote never resolved');
  assert.ok(c.raw(leader!).status().term > s1.term, 'the winner is elected in a later term');
  assertAgreedLeader(c, leader!);
});

test('a follower cut off for many election timeouts does not raise its term or disturb the leader when it returns', () => {
  // Reference: Ongaro thesis §9.6 (Preventing disruptions when a server rejoins the cluster):
  // pre-vote keeps the isolated node's term still, so it cannot depose the leader on return.
  const c = new Cluster({ voters: [1, 2, 3], seed: 13 });
  c.elect(1);
  c.tickAll(2);
  const term = c.raw(1).status().term;

  c.isolate(3);
  c.tickAll(10 * ELECTION_TICKS);
  assert.equal(c.raw(3).status().term, term, 'the isolated node bumped its term');
  assert.equal(c.leader(), 1, 'the majority side keeps its leader');

  c.heal();
  c.tickAll(3 * ELECTION_TICKS);
  assert.equal(c.leader(), 1, 'the returning node deposed the leader');
  assert.equal(c.raw(1).status().term, term, 'the term changed after the node returned');
  assertAgreedLeader(c, 1);
  c.propose(1, 'after');
  c.tickAll(2);
  assert.deepEqual(c.node(3).applied, ['after'], 'the returning node follows the leader again');
});

test('a follower that cannot hear the leader, while the others can, does not depose it', () => {
  // Reference: Ongaro thesis §4.2.3 (Disruptive servers) and §9.6: a voter that hears from a
  // leader ignores vote requests for an election timeout (etcd's check-quorum lease), so a node
  // behind a partial partition cannot win votes from nodes that still hear the leader.
  const c = new Cluster({ voters: [1, 2, 3], seed: 23 });
  c.elect(1);
  c.tickAll(2);
  const term = c.raw(1).status().term;

  c.partition([1], [3]);
  c.tickAll(10 * ELECTION_TICKS);
  assert.equal(c.leader(), 1, 'node 3 deposed a leader that a majority still hears');
  assert.equal(c.raw(1).status().term, term);
  assert.equal(c.raw(2).status().lead, 1);
  assert.equal(c.raw(3).status().term, term, 'node 3 got past pre-vote');
});

test('a leader cut off from every follower steps down once a whole election timeout passes without a quorum', () => {
  // Reference: Ongaro thesis §6.2 (check-quorum): a leader that does not hear from a majority
  // for an election timeout steps down, so it stops accepting writes it can never commit.
  const c = new Cluster({ voters: [1, 2, 3], seed: 17 });
  c.elect(1);
  c.tickAll(2);
  assert.equal(c.leader(), 1);

  c.isolate(1);
  c.tick(1, ELECTION_TICKS / 2);
  assert.equal(c.raw(1).status().role, 'leader', 'the leader stepped down before an election timeout passed');
  // The check at the end of the current period may still count replies heard before the cut;
  // the one after it cannot.
  c.tick(1, 2 * ELECTION_TICKS - ELECTION_TICKS / 2);
  const status = c.raw(1).status();
  assert.notEqual(status.role, 'leader', 'the isolated leader still believes it leads');
  assert.equal(status.lead, 0, 'a deposed leader knows no leader');
});

test('on the majority side of a partition a new leader is elected while the old one steps down', () => {
  // Reference: Raft paper §5.2 and Ongaro thesis §6.2: both sides learn the truth without the other.
  const c = new Cluster({ voters: [1, 2, 3, 4, 5], seed: 19 });
  c.elect(1);
  c.tickAll(2);
  const term = c.raw(1).status().term;

  c.partition([1, 2], [3, 4, 5]);
  c.tickAll(4 * ELECTION_TICKS);
  const leader = c.leader();
  assert.ok(leader === 3 || leader === 4 || leader === 5, `expected a leader among 3, 4, 5, got ${leader}`);
  assert.ok(c.raw(leader).status().term > term);
  assert.notEqual(c.raw(1).status().role, 'leader', 'the minority leader did not step down');
});

test('followers told by their transport that the leader is unreachable elect a new leader within a few ticks', () => {
  // Reference: Raft paper §5.2 (election timeout), shortened here by the transport's report
  // (config leaderLostCampaignTicksMax, not in the paper); pre-vote (Ongaro thesis §9.6) still
  // decides, so it is safe.
  const c = new Cluster({ voters: [1, 2, 3], seed: 181 });
  c.elect(1);
  c.tickAll(2);
  const term = c.raw(1).status().term;
  c.crash(1);
  for (const id of [2, 3]) c.raw(id).reportUnreachable(1);
  const ticks = c.tickUntil(() => c.leader() !== null, ELECTION_TICKS);
  assert.notEqual(ticks, null, 'no leader within an election timeout');
  assert.ok(ticks! <= RAFT_CONFIG_DEFAULTS.leaderLostCampaignTicksMax + 1, `a leader took ${ticks} ticks`);
  assert.ok(c.raw(c.leader()!).status().term > term);
});

test('followers that lose the leader together do not split the vote: a leader within a few ticks on every seed, three or five voters', () => {
  // Drawing the campaign tick at random let two followers campaign in the same tick about once
  // in three failovers; both then became candidates, split the vote and waited a full election
  // timeout. They now go a tick apart, by id.
  // With five voters, also when the follower whose turn is first went down with the leader.
  for (const [voters, down] of [
    [[1, 2, 3], 1],
    [[1, 2, 3, 4, 5], 1],
    [[1, 2, 3, 4, 5], 2],
  ] as const) {
    for (let seed = 1; seed <= 100; seed++) {
      const c = new Cluster({ voters: [...voters], seed });
      const first = voters[seed % voters.length]!;
      c.elect(first);
      c.tickAll(2);
      c.crash(first);
      if (down === 2) c.crash(Math.min(...voters.filter((id) => id !== first)));
      for (const id of voters) if (id !== first && c.node(id).up) c.raw(id).reportUnreachable(first);
      const ticks = c.tickUntil(() => c.leader() !== null, 3 * ELECTION_TICKS);
      assert.ok(
        ticks !== null && ticks <= RAFT_CONFIG_DEFAULTS.leaderLostCampaignTicksMax,
        `${voters.length} voters, ${down} down, seed ${seed}: a leader took ${ticks ?? 'more than 30'} ticks`,
      );
    }
  }
});

test('a follower whose own link to a live leader broke campaigns, but cannot depose it', () => {
  // Reference: Ongaro thesis §9.6 and §4.2.3: the others still hear the leader and refuse the
  // pre-vote.
  const c = new Cluster({ voters: [1, 2, 3], seed: 191 });
  c.elect(1);
  c.tickAll(2);
  const term = c.raw(1).status().term;
  c.partition([1], [3]);
  c.raw(3).reportUnreachable(1);
  let preVotesBy3 = 0;
  c.tickAll(3 * ELECTION_TICKS, (m) => {
    if (m.type === 'pre-vote' && m.from === 3) preVotesBy3++;
    return true;
  });
  assert.ok(preVotesBy3 > 0, 'node 3 did not campaign after being told its leader was unreachable');
  assert.equal(c.leader(), 1);
  assert.equal(c.raw(1).status().term, term);
  assert.equal(c.raw(3).status().term, term);
});

test('a restarted follower learns its leader from the heartbeat its reconnection prompts, not at the next tick; no one else is told anything', () => {
  const c = new Cluster({ voters: [1, 2, 3], seed: 7 });
  c.elect(1);
  c.propose(1, 'a');
  c.deliverAll();
  c.processAll();
  const term = c.raw(1).status().term;
  c.crash(3);
  c.restart(3);
  assert.equal(c.raw(3).status().lead, 0, 'just restarted: no leader known');
  c.queue = [];
  // The transport reports 3 reachable on every manager; only the leader acts, and only towards 3.
  for (const id of [1, 2, 3]) {
    c.raw(id).reportReachable(3);
    c.process(id);
  }
  assert.deepEqual(
    c.queue.map((m) => [m.type, m.from, m.to, m.term]),
    [['heartbeat', 1, 3, term]],
  );
  c.deliverAll();
  c.processAll();
  assert.equal(c.raw(3).status().lead, 1, 'no tick passed, and the follower knows its leader');
  assert.equal(c.raw(3).status().term, term);
  // A follower told its own id, or of an unknown peer, sends nothing.
  c.raw(1).reportReachable(1);
  c.raw(1).reportReachable(9);
  c.process(1);
  assert.equal(c.queue.filter((m) => m.type === 'heartbeat').length, 0);
});

test('voters that all restart at once elect a leader within a few ticks of starting, not after an election timeout', () => {
  // Not in the paper: a node that starts knows no leader and campaigns at its turn by id (as when
  // its transport reports the leader lost); pre-vote (thesis §9.6) still decides who may win.
  for (const voters of [
    [1, 2, 3],
    [1, 2, 3, 4, 5],
  ]) {
    for (let seed = 1; seed <= 50; seed++) {
      const c = new Cluster({ voters, seed });
      c.elect(voters[seed % voters.length]!);
      c.propose(c.leader()!, 'a');
      c.deliverAll();
      const term = c.raw(c.leader()!).status().term;
      for (const id of voters) c.crash(id);
      for (const id of voters) c.restart(id);
      const ticks = c.tickUntil(() => c.leader() !== null, 3 * ELECTION_TICKS);
      assert.ok(
        ticks !== null && ticks <= RAFT_CONFIG_DEFAULTS.leaderLostCampaignTicksMax + 1,
        `${voters.length} voters, seed ${seed}: a leader took ${ticks ?? 'more than 30'} ticks`,
      );
      assert.ok(c.raw(c.leader()!).status().term > term);
      assertAgreedLeader(c, c.leader()!);
    }
  }
});

test('a voter restarted into a working cluster campaigns at once but deposes no one: same leader, same term', () => {
  // Reference: Ongaro thesis §9.6 (pre-vote) and §4.2.3 (voters that hear a leader refuse).
  // (One that hears the leader's heartbeat before its first tick does not campaign at all.)
  let campaigned = 0;
  for (const restarted of [1, 2, 3]) {
    const c = new Cluster({ voters: [1, 2, 3, 4, 5], seed: 17 });
    c.elect(4);
    c.tickAll(2);
    const term = c.raw(4).status().term;
    c.crash(restarted);
    c.tickAll(2);
    let preVotes = 0;
    c.restart(restarted);
    c.tickAll(3 * ELECTION_TICKS, (m: Message) => {
      if (m.type === 'pre-vote' && m.from === restarted) preVotes++;
      return true;
    });
    if (preVotes > 0) campaigned++;
    assert.equal(c.leader(), 4, `node ${restarted}'s start left the leader in place`);
    for (const id of [1, 2, 3, 4, 5]) assert.equal(c.raw(id).status().term, term, `node ${id}'s term`);
    assertAgreedLeader(c, 4);
  }
  assert.ok(campaigned > 0, 'a restarted voter campaigned after its start');
});
