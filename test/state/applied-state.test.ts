import { secretPutEntries, testRecordKeys } from './stores.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeAccessCommand } from '../../src/state/access-state.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import { encodeSecretCommand, type SecretCommand } from '../../src/state/secret-store.ts';

const T0 = 1_700_000_000_000;
const CI_KEY = 'c1'.repeat(32);
const put = (name: string, value: string, versionsKept: number | null = null): SecretCommand => ({
  op: 'put',
  name,
  value: Buffer.from(value),
  cas: null,
  expireAtMs: null,
  versionsKept,
  nowMs: T0,
});

function stateWithWriter(): {
  state: AppliedState;
  apply: (c: { kind: string; data: Buffer }) => ReturnType<AppliedState['apply']>;
} {
  const state = new AppliedState({ keys: testRecordKeys() });
  let index = 0;
  const apply = (c: { kind: string; data: Buffer }) => state.apply({ index: ++index, kind: c.kind, data: c.data });
  apply(
    encodeAccessCommand({
      op: 'policy-put',
      name: 'writer',
      rules: [{ path: 'app/**', capabilities: ['read', 'write'], deny: false }],
    }),
  );
  apply(
    encodeAccessCommand({
      op: 'identity-issue',
      name: 'ci',
      policies: ['writer'],
      key: CI_KEY,
      serial: 'aa01',
      caGen: 1,
      nowMs: T0,
    }),
  );
  return { state, apply };
}

test('a client write is authorized again where it applies: a revocation committed first wins, on every manager alike', () => {
  const { state, apply } = stateWithWriter();
  const ci = { name: 'ci', key: CI_KEY };
  assert.deepEqual(apply(encodeSecretCommand(put('app/k', 'v1'), ci)), { ok: true, version: 1 });
  apply(encodeAccessCommand({ op: 'identity-revoke', name: 'ci' }));
  const late = apply(encodeSecretCommand(put('app/k', 'v2'), ci));
  assert.equal(late.ok, false);
  assert.equal(!late.ok && 'code' in late && late.code, 'DENIED');
  assert.equal(state.secrets.read('app/k', {}, T0).value.toString(), 'v1');
});

test('write alone cannot wipe history: lowering the versions kept, or reviving a deleted secret, needs delete too', () => {
  const { state, apply } = stateWithWriter();
  const ci = { name: 'ci', key: CI_KEY };
  for (let k = 1; k <= 3; k++) apply(encodeSecretCommand(put('app/k', `v${k}`), ci));
  const trim = apply(encodeSecretCommand(put('app/k', 'v4', 1), ci));
  assert.equal(!trim.ok && 'code' in trim && trim.code, 'DENIED');
  assert.match(!trim.ok ? trim.reason : '', /may not delete "app\/k"/);
  assert.deepEqual(
    state.secrets.versions('app/k', T0).map((v) => v.version),
    [1, 2, 3],
  );
  apply(encodeSecretCommand({ op: 'delete', name: 'app/k' }, null));
  const revive = apply(encodeSecretCommand(put('app/k', 'v5'), ci));
  assert.equal(!revive.ok && 'code' in revive && revive.code, 'DENIED');
  // The leader's own commands (no actor) and admin-level callers are not limited this way.
  assert.deepEqual(apply(encodeSecretCommand(put('app/k', 'v5', 1), null)), { ok: true, version: 4 });
});

test('a state on a store restarts where its last commit left it: replayed entries already there are not applied twice, before or after a snapshot', async () => {
  const keys = testRecordKeys();
  const { MemoryStateStore } = await import('../../src/kv/memory-state-store.ts');
  const entries = secretPutEntries(
    30,
    (k) => `app/s${k % 4}`,
    (k) => `v${k}`,
  );
  // The reference: every entry applied once.
  const reference = new AppliedState({ keys });
  for (const e of entries) reference.apply(e);
  await reference.commit();
  const expected = Buffer.from(await reference.secrets.snapshot().then((i) => Buffer.from(JSON.stringify(i))));

  for (const committedThrough of [0, 7, 19, 30]) {
    for (const snapshotAt of [0, 5, 12, 25]) {
      const store = new MemoryStateStore();
      const first = new AppliedState({ store, keys });
      await first.reset();
      let image: Uint8Array | null = null;
      for (const e of entries) {
        first.apply(e);
        if (e.index === snapshotAt) {
          await first.commit();
          image = await first.snapshot();
        }
        if (e.index === committedThrough) await first.commit();
        if (e.index > committedThrough && e.index > snapshotAt) break; // a crash: nothing later committed
      }
      // The process dies; a new one opens the same store, restores the newest snapshot, replays the rest.
      const second = new AppliedState({ store, keys });
      await second.reset();
      const from = image === null ? 0 : snapshotAt;
      if (image !== null) await second.restore(image, snapshotAt);
      for (const e of entries) if (e.index > from) second.apply(e);
      await second.commit();
      const got = Buffer.from(JSON.stringify(await second.secrets.snapshot()));
      assert.ok(
        got.equals(expected),
        `committed through ${committedThrough}, snapshot at ${snapshotAt}: the same records`,
      );
      assert.deepEqual(
        second.secrets.versions('app/s0', 0).map((v) => v.version),
        Array.from({ length: 8 }, (_, k) => k + 1),
        `committed through ${committedThrough}, snapshot at ${snapshotAt}: no version applied twice`,
      );
      const already = Math.max(committedThrough, snapshotAt);
      assert.equal(second.stats.skippedOnStart, Math.max(0, already - from), 'what the store held was skipped');
    }
  }
});

test('a crash at any write of the store (the write lost) costs nothing but a replay: the applied index is in the same batch as the changes', async () => {
  const keys = testRecordKeys();
  const { MemoryStateStore } = await import('../../src/kv/memory-state-store.ts');
  const entries = secretPutEntries(
    20,
    (k) => `app/s${k % 3}`,
    (k) => `v${k}`,
  );
  const reference = new AppliedState({ keys });
  for (const e of entries) reference.apply(e);
  const expected = JSON.stringify(await reference.secrets.snapshot());

  class Crashed extends Error {}
  for (let crashAt = 1; crashAt <= 8; crashAt++) {
    const inner = new MemoryStateStore();
    let writes = 0;
    // The store as a process sees it until it dies at its `crashAt`-th write (which is lost).
    const dying = Object.assign(Object.create(inner) as typeof inner, {
      write: async (...args: Parameters<typeof inner.write>) => {
        if (++writes === crashAt) throw new Crashed(`died at write ${crashAt}`);
        return inner.write(...args);
      },
      view: () => inner.view(),
      getSync: (key: Uint8Array) => inner.getSync(key),
      get: (key: Uint8Array) => inner.get(key),
      range: (range: Parameters<typeof inner.range>[0]) => inner.range(range),
      replaceAll: (records: Parameters<typeof inner.replaceAll>[0]) => inner.replaceAll(records),
    });
    const first = new AppliedState({ store: dying, keys });
    await first.reset();
    try {
      for (const e of entries) {
        first.apply(e);
        if (e.index % 3 === 0) await first.commit();
      }
      await first.commit();
    } catch (error) {
      if (!(error instanceof Crashed)) throw error;
    }
    const second = new AppliedState({ store: inner, keys });
    await second.reset();
    for (const e of entries) second.apply(e);
    await second.commit();
    assert.equal(
      JSON.stringify(await second.secrets.snapshot()),
      expected,
      `a crash at write ${crashAt}: the same records`,
    );
  }
});

test("a restart's replay below what the store held stores no image: the stored one stays the state at the store's index, and a later start from it loses no command", async () => {
  const keys = testRecordKeys();
  const { MemoryStateStore } = await import('../../src/kv/memory-state-store.ts');
  const policy = (index: number, name: string, path: string) => ({
    index,
    ...encodeAccessCommand({
      op: 'policy-put',
      name,
      rules: [{ path, capabilities: ['read'], deny: false }],
    }),
  });
  const entries = [policy(1, 'first', 'app/a'), policy(2, 'second', 'app/b')];
  const store = new MemoryStateStore();
  const first = new AppliedState({ store, keys });
  await first.reset();
  for (const e of entries) {
    first.apply(e);
    assert.equal(first.smallPartsChanged, true);
    assert.equal(await first.commit({ appliedIndex: e.index, image: first.descriptor() }), true);
    assert.equal(first.smallPartsChanged, false, 'the image stored is the state');
  }
  // A restart that falls back to the snapshot (none here) and replays: its batch below the
  // store's index 2 must not store the image of index 1 as the image of index 2.
  const second = new AppliedState({ store, keys });
  await second.reset();
  second.apply(entries[0]!);
  assert.equal(await second.commit({ appliedIndex: 1, image: second.descriptor() }), false, 'below: not written');
  assert.equal(second.smallPartsChanged, true, 'still to store');
  second.apply(entries[1]!);
  assert.equal(await second.commit({ appliedIndex: 2, image: second.descriptor() }), true, 'caught up: written');
  // A start from the stored image holds both commands.
  const third = new AppliedState({ store, keys });
  await third.reset();
  const stored = await third.storedImage();
  assert.equal(stored?.index, 2);
  await third.restore(stored!.image, stored!.index);
  assert.deepEqual([...third.access.policies.keys()].sort(), ['first', 'second']);
});
