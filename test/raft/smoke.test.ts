import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Cluster } from './harness.ts';

test('three nodes elect a leader and replicate a proposal to all of them', () => {
  const c = new Cluster({ voters: [1, 2, 3] });
  c.elect(1);
  assert.equal(c.leader(), 1);
  c.propose(1, 'a');
  c.deliverAll();
  c.tickAll(2);
  for (const id of [1, 2, 3]) assert.deepEqual(c.node(id).applied, ['a']);
});
