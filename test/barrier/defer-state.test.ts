import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Barrier, STATE_PENDING_BYTES_MAX } from '../../src/barrier/barrier.ts';
import { AppliedState, type AppliedResult } from '../../src/state/applied-state.ts';
import { secretPutEntries } from '../state/stores.ts';

/** A barrier over an in-memory applied state, its keyring's first term rotated in at index 1. */
function makeBarrier(): { barrier: Barrier<AppliedResult>; state: AppliedState } {
  const reserved = new Map<number, number>();
  const state = new AppliedState();
  const barrier = new Barrier<AppliedResult>({
    clusterId: 'c-defer',
    rootKey: Buffer.alloc(32, 7),
    local: {
      rootGen: 1,
      unlockGen: 0,
      usesReserved: (term: number) => reserved.get(term) ?? 0,
      reserveUses: async (term: number, uses: number) => void reserved.set(term, uses),
      rewrap: async () => undefined,
    },
    inner: state,
  });
  barrier.apply({ index: 1, term: 1, kind: 'normal', data: barrier.rotatePayload(0) });
  return { barrier, state };
}

/** Applies `count` puts from log index `from` on (each value `bytes` long). */
async function applyPuts(barrier: Barrier<AppliedResult>, from: number, count: number, bytes = 256): Promise<void> {
  const entries = secretPutEntries(
    count,
    (k) => `app/s${from + k}`,
    (k) => String(from + k).padEnd(bytes, 'v'),
  );
  for (const [k, e] of entries.entries()) {
    const data = await barrier.sealCommand(e.kind, e.data);
    const result = barrier.apply({ index: from + k, term: 1, kind: 'normal', data });
    assert.equal(result.type, 'applied', `the put at ${from + k} was not applied: ${JSON.stringify(result)}`);
  }
}

test("afterApply leaves the inner state's changes in memory only when asked, under the byte bound, and with nothing waiting on its effects", async () => {
  const { barrier, state } = makeBarrier();
  await state.reset();
  // Not asked: committed.
  await applyPuts(barrier, 2, 3);
  await barrier.afterApply();
  assert.equal(barrier.statePending, false, 'afterApply without deferState committed');
  assert.equal((await state.storedImage())?.index, 4, 'the store holds the applied index');
  // Asked: left in memory, where reads find them; the store's index stays.
  await applyPuts(barrier, 5, 3);
  await barrier.afterApply({ deferState: true });
  assert.equal(barrier.statePending, true, 'deferState left the changes pending');
  assert.ok(state.pendingBytes > 0);
  assert.equal((await state.storedImage())?.index, 4, 'the store moved on while the changes were deferred');
  const read = state.secrets.read('app/s7', {}, 1_700_000_000_000);
  assert.equal(read.value.toString().slice(0, 1), '7', 'a read sees a deferred put');
  read.value.fill(0);
  // writeState commits them.
  await barrier.writeState();
  assert.equal(barrier.statePending, false);
  assert.equal((await state.storedImage())?.index, 7, 'writeState moved the store to the applied index');
  // Past the byte bound: committed though asked to defer.
  const puts = Math.ceil(STATE_PENDING_BYTES_MAX / 1024) + 1;
  await applyPuts(barrier, 8, puts, 1024);
  assert.ok(
    state.pendingBytes >= STATE_PENDING_BYTES_MAX,
    `${puts} puts of 1 KiB pend only ${state.pendingBytes} bytes`,
  );
  await barrier.afterApply({ deferState: true });
  assert.equal(barrier.statePending, false, 'changes past STATE_PENDING_BYTES_MAX were left in memory');
  assert.equal((await state.storedImage())?.index, 7 + puts);
  // A rewrap asks for a snapshot its proposer waits for: committed though asked to defer.
  const next = 8 + puts;
  await applyPuts(barrier, next, 2);
  barrier.apply({ index: next + 2, term: 1, kind: 'normal', data: barrier.rewrapPayload() });
  assert.equal(barrier.answersWaitForAfterApply(), true, 'a rewrap is answered after afterApply');
  const request = await barrier.afterApply({ deferState: true });
  assert.ok(request !== null, 'the rewrap asked for a snapshot');
  assert.equal(barrier.statePending, false, 'a rewrap left the changes before it in memory');
  assert.equal((await state.storedImage())?.index, next + 2);
});
