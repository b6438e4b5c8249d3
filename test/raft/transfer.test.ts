/**
 * Leadership transfer: the leader brings the target's log up to date, then tells it to campaign
 * at once (TimeoutNow); proposals wait meanwhile, and the transfer gives up after an election
 * timeout.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RAFT_CONFIG_DEFAULTS } from '../../src/raft/config.ts';
import type { Message } from '../../src/raft/types.ts';
import { Cluster } from './harness.ts';

const ELECTION_TICKS = RAFT_CONFIG_DEFAULTS.electionTimeoutTicks;

test('leadership passes to an up-to-date follower at once, in the next term', () => {
  // Reference: Ongaro thesis §3.10 (Leadership transfer extension).
  const c = new Cluster({ voters: [1, 2, 3], seed: 71 });
  c.elect(1);
  c.propose(1, 'a');
  c.deliverAll();
  c.tickAll(1);
  const term = c.raw(1).status().term;
  assert.equal(c.raw(1).status().progress?.get(2)?.match, c.raw(1).status().lastIndex);

  c.raw(1).transferLeadership(2);
  c.process(1);
  // No ticks: the transfer does not wait for an election timeout.
  c.deliverAll();
  assert.equal(c.leader(), 2);
  assert.equal(c.raw(2).status().term, term + 1);
  assert.equal(c.raw(1).status().role, 'follower');
  c.tickAll(1);
  for (const id of [1, 2, 3]) {
    assert.equal(c.raw(id).status().lead, 2);
    assert.equal(c.raw(id).status().term, term + 1);
  }
  c.propose(2, 'b');
  c.deliverAll();
  c.tickAll(1);
  for (const id of [1, 2, 3]) assert.deepEqual(c.node(id).applied, ['a', 'b']);
});

test('leadership passes to a lagging follower only after the leader has caught it up', () => {
  // Reference: Ongaro thesis §3.10, step 2: "the prior leader sends its log entries to the
  // target server" before it sends TimeoutNow.
  const c = new Cluster({ voters: [1, 2, 3], seed: 73 });
  c.elect(1);
  c.tickAll(1);
  c.partition([1], [3]);
  for (let i = 0; i < 8; i++) c.propose(1, `v${i}`);
  c.deliverAll();
  c.heal();
  const leaderLast = c.raw(1).status().lastIndex;
  assert.ok(c.raw(3).status().lastIndex < leaderLast, 'node 3 lags before the transfer');

  let timeoutNowSent = 0;
  c.raw(1).transferLeadership(3);
  c.process(1);
  c.deliverAll((m: Message) => {
    if (m.type === 'timeout-now') {
      timeoutNowSent++;
      assert.equal(m.to, 3);
      assert.equal(c.raw(3).status().lastIndex, leaderLast, 'TimeoutNow reached a target that still lags');
    }
    return true;
  });
  assert.ok(timeoutNowSent >= 1, 'the target was never told to campaign');
  assert.equal(c.leader(), 3);
  c.tickAll(1);
  const expected = Array.from({ length: 8 }, (_, i) => `v${i}`);
  for (const id of [1, 2, 3]) assert.deepEqual(c.node(id).applied, expected);
});

test('a transfer to an unreachable node blocks proposals, then is abandoned after an election timeout', () => {
  // Reference: Ongaro thesis §3.10: "the prior leader stops accepting new client requests" during
  // the transfer, and aborts it if it does not complete within an election timeout.
  const c = new Cluster({ voters: [1, 2, 3], seed: 79 });
  c.elect(1);
  c.tickAll(1);
  const term = c.raw(1).status().term;
  c.isolate(3);

  c.raw(1).transferLeadership(3);
  c.process(1);
  assert.equal(c.raw(1).status().leadTransferee, 3);
  assert.throws(() => c.propose(1, 'during'), { name: 'RaftError', code: 'TRANSFER_IN_PROGRESS', leader: 1 });
  assert.throws(() => c.raw(1).proposeConfChange({ type: 'remove', nodeId: 3 }), {
    name: 'RaftError',
    code: 'TRANSFER_IN_PROGRESS',
  });

  c.tickAll(ELECTION_TICKS - 1);
  assert.equal(c.raw(1).status().leadTransferee, 3, 'the transfer gave up before an election timeout');
  assert.throws(() => c.propose(1, 'still-during'), { name: 'RaftError', code: 'TRANSFER_IN_PROGRESS' });
  c.tickAll(1);
  const status = c.raw(1).status();
  assert.equal(status.role, 'leader', 'the leader keeps leading after the transfer fails');
  assert.equal(status.term, term);
  assert.equal(status.leadTransferee, 0, 'the transfer was not abandoned after an election timeout');

  c.propose(1, 'after');
  c.deliverAll();
  c.tickAll(1);
  assert.deepEqual(c.node(1).applied, ['after']);
  assert.deepEqual(c.node(2).applied, ['after']);
});

test('a transfer to the leader itself or to a non-voter is refused with TRANSFER_INVALID', () => {
  // Reference: Ongaro thesis §3.10: only a voter can become leader.
  const c = new Cluster({ voters: [1, 2, 3], seed: 83 });
  c.elect(1);
  assert.throws(() => c.raw(1).transferLeadership(1), { name: 'RaftError', code: 'TRANSFER_INVALID' });
  assert.throws(() => c.raw(1).transferLeadership(9), { name: 'RaftError', code: 'TRANSFER_INVALID' });
  assert.throws(() => c.raw(2).transferLeadership(3), { name: 'RaftError', code: 'NOT_LEADER', leader: 1 });
  assert.equal(c.raw(1).status().leadTransferee, 0);
});
