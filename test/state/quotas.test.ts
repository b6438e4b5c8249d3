import { newSecretStore, testRecordKeys } from './stores.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeAccessCommand } from '../../src/state/access-state.ts';
import { IDENTITY_SECRETS_MAX, IDENTITY_VALUE_BYTES_MAX } from '../../src/state/limits.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import {
  type SecretStore,
  encodeSecretCommand,
  type Actor,
  type SecretCommand,
  type SecretResult,
} from '../../src/state/secret-store.ts';

const T0 = 1_700_000_000_000;
const ci: Actor = { name: 'ci', key: 'c1'.repeat(32) };
const ops: Actor = { name: 'ops', key: 'b2'.repeat(32) };

const put = (
  name: string,
  bytes: number,
  extra: Partial<Extract<SecretCommand, { op: 'put' }>> = {},
): SecretCommand => ({
  op: 'put',
  name,
  value: Buffer.alloc(bytes, 7),
  cas: null,
  expireAtMs: null,
  versionsKept: null,
  nowMs: T0,
  ...extra,
});

/** Applies through the encoded form, as the log carries it (the actor travels with the command). */
function apply(store: SecretStore, command: SecretCommand, actor: Actor | null): SecretResult {
  const { kind, data } = encodeSecretCommand(command, actor);
  const decoded = store.decode(kind, data);
  return decoded.ok ? store.apply(decoded.command, decoded.actor) : decoded;
}

function refusedLimit(result: SecretResult, pattern: RegExp): void {
  assert.equal(result.ok, false, 'the write was refused');
  assert.equal(!result.ok && result.code, 'LIMIT');
  assert.match(!result.ok ? result.reason : '', pattern);
}

test('the defaults: 10,000 secrets and 256 MiB of values per identity', () => {
  assert.equal(IDENTITY_SECRETS_MAX, 10_000);
  assert.equal(IDENTITY_VALUE_BYTES_MAX, 256 * 1024 * 1024);
});

test('value bytes: the write that would cross the limit is refused, and changes nothing; a destroy frees room', async () => {
  const store = newSecretStore({ identityValueBytesMax: 1000 });
  assert.deepEqual(apply(store, put('a', 400), ci), { ok: true, version: 1 });
  assert.deepEqual(apply(store, put('a', 400), ci), { ok: true, version: 2 });
  assert.deepEqual(store.usage('ci'), { secrets: 1, valueBytes: 800 });
  const before = await store.snapshot();
  refusedLimit(
    apply(store, put('a', 201), ci),
    /^identity "ci" holds 800 bytes of secret values; this value of 201 bytes would take it past 1000 bytes, the most one identity may \(IDENTITY_VALUE_BYTES_MAX\); destroy old versions or lower versions_kept$/,
  );
  refusedLimit(apply(store, put('b', 201), ci), /IDENTITY_VALUE_BYTES_MAX/);
  assert.deepEqual(await store.snapshot(), before, 'a refused write leaves the state as it was');
  assert.deepEqual(store.usage('ci'), { secrets: 1, valueBytes: 800 });
  assert.deepEqual(apply(store, put('a', 200), ci), { ok: true, version: 3 }, 'up to the limit exactly is fine');
  // Another identity has its own room.
  assert.deepEqual(apply(store, put('a', 900), ops), { ok: true, version: 4 });
  assert.deepEqual(store.usage('ops'), { secrets: 0, valueBytes: 900 }, 'ops wrote a version; ci created the secret');
  // Delete alone keeps the bytes charged; destroying a version frees them for its writer.
  apply(store, { op: 'delete', name: 'a' }, ci);
  assert.deepEqual(store.usage('ci'), { secrets: 1, valueBytes: 1000 });
  apply(store, { op: 'undelete', name: 'a' }, ci);
  assert.deepEqual(apply(store, { op: 'destroy', name: 'a', versions: [1] }, ci), { ok: true, version: 4 });
  assert.deepEqual(store.usage('ci'), { secrets: 1, valueBytes: 600 });
  assert.deepEqual(apply(store, put('b', 400), ci), { ok: true, version: 1 });
  // The leader's own commands (no actor) are charged to nobody.
  assert.deepEqual(apply(store, put('c', 5000), null), { ok: true, version: 1 });
  assert.deepEqual(store.usage('ci'), { secrets: 2, valueBytes: 1000 });
});

test('value bytes: versions dropped by versions_kept and wiped by expiry are uncharged; a put that frees its own room passes', async () => {
  const store = newSecretStore({ identityValueBytesMax: 1000 });
  for (let k = 0; k < 3; k++) apply(store, put('k', 300, { versionsKept: 3 }), ci);
  assert.deepEqual(store.usage('ci'), { secrets: 1, valueBytes: 900 });
  // The fourth version drops the first (300 bytes), so ci ends at 900 again: allowed at 900 of 1000.
  assert.deepEqual(apply(store, put('k', 300, { versionsKept: 3 }), ci), { ok: true, version: 4 });
  assert.deepEqual(store.usage('ci'), { secrets: 1, valueBytes: 900 });
  // Lowering versions_kept to 1 frees two versions as it writes a bigger one.
  assert.deepEqual(apply(store, put('k', 700, { versionsKept: 1 }), ci), { ok: true, version: 5 });
  assert.deepEqual(store.usage('ci'), { secrets: 1, valueBytes: 700 });
  apply(store, put('t', 300, { expireAtMs: T0 + 1000 }), ci);
  assert.deepEqual(store.usage('ci'), { secrets: 2, valueBytes: 1000 });
  apply(store, (await store.expiryCommand(T0 + 1000))!, null);
  assert.deepEqual(store.usage('ci'), { secrets: 2, valueBytes: 700 });
});

test('secrets: an identity creates at most the limit; new versions of its secrets, and secrets made by others, still go', () => {
  const store = newSecretStore({ identitySecretsMax: 3 });
  for (const name of ['a', 'b', 'c']) assert.equal(apply(store, put(name, 1), ci).ok, true);
  refusedLimit(
    apply(store, put('d', 1), ci),
    /^identity "ci" has created 3 secrets, the most one identity may \(IDENTITY_SECRETS_MAX\); write new versions of its secrets instead \(a name stays taken after delete and destroy\)$/,
  );
  assert.throws(() => store.read('d', {}, T0), /does not exist/);
  assert.equal(apply(store, put('a', 1), ci).ok, true, 'a new version of an existing secret');
  assert.equal(apply(store, put('d', 1), ops).ok, true, 'another identity');
  assert.equal(apply(store, put('d', 1), ci).ok, true, 'a version of a secret ops created');
  assert.deepEqual(store.usage('ci'), { secrets: 3, valueBytes: 5 });
  assert.deepEqual(store.usage('ops'), { secrets: 1, valueBytes: 1 });
});

test('snapshot and restore keep the accounting', async () => {
  const keys = testRecordKeys();
  const store = newSecretStore({ identityValueBytesMax: 1000, identitySecretsMax: 5 }, keys);
  apply(store, put('a', 300), ci);
  apply(store, put('a', 300), ops);
  apply(store, put('b', 200, { expireAtMs: T0 + 10 }), ci);
  apply(store, { op: 'destroy', name: 'a', versions: [2] }, ops);
  const copy = newSecretStore({ identityValueBytesMax: 1000, identitySecretsMax: 5 }, keys);
  await copy.restore(await store.snapshot(), 100);
  assert.deepEqual(copy.usage('ci'), { secrets: 2, valueBytes: 500 });
  assert.deepEqual(copy.usage('ops'), { secrets: 0, valueBytes: 0 });
  assert.deepEqual(await copy.snapshot(), await store.snapshot());
  refusedLimit(apply(copy, put('a', 501), ci), /holds 500 bytes/);
});

test('two stores applying the same commands agree: the same verdicts, the same accounting, the same image', async () => {
  const keys = testRecordKeys();
  const run = (): { store: SecretStore; results: SecretResult[] } => {
    const store = newSecretStore({ identityValueBytesMax: 4000, identitySecretsMax: 4 }, keys);
    const results: SecretResult[] = [];
    for (let k = 0; k < 60; k++) {
      const actor = k % 3 === 0 ? ops : ci;
      const command: SecretCommand =
        k % 7 === 6
          ? { op: 'destroy', name: `s${k % 5}`, versions: [1] }
          : k % 11 === 10
            ? {
                op: 'expire',
                nowMs: T0 + k,
                targets: [0, 1, 2, 3, 4].flatMap((n) =>
                  Array.from({ length: 14 }, (_, v) => [`s${n}`, v + 1] as [string, number]),
                ),
              }
            : put(`s${k % 5}`, 100 + 37 * k, {
                versionsKept: 1 + (k % 4),
                expireAtMs: k % 5 === 0 ? T0 + k + 5 : null,
              });
      results.push(apply(store, command, actor));
    }
    return { store, results };
  };
  const a = run();
  const b = run();
  assert.ok(
    a.results.some((r) => !r.ok && r.code === 'LIMIT'),
    'the run hits the limits',
  );
  assert.deepEqual(a.results, b.results);
  assert.deepEqual(a.store.usage('ci'), b.store.usage('ci'));
  assert.deepEqual(a.store.usage('ops'), b.store.usage('ops'));
  assert.ok(
    a.results.some((r, k) => k % 11 === 10 && r.ok && r.version > 0),
    'a sweep wipes something',
  );
  assert.deepEqual(await a.store.snapshot(), await b.store.snapshot());
});

test("through AppliedState: the client that asked is charged (not the leader's sweep), with the default secret limit, and the image keeps it", async () => {
  const keys = testRecordKeys();
  const state = new AppliedState({ keys });
  let index = 0;
  const step = (c: { kind: string; data: Buffer }) =>
    state.apply({ index: ++index, kind: c.kind, data: c.data }) as SecretResult;
  step(
    encodeAccessCommand({
      op: 'policy-put',
      name: 'writer',
      rules: [{ path: 'app/**', capabilities: ['read', 'write', 'delete'], deny: false }],
    }),
  );
  step(
    encodeAccessCommand({
      op: 'identity-issue',
      name: 'ci',
      policies: ['writer'],
      key: ci.key,
      serial: 'aa01',
      caGen: 1,
      nowMs: T0,
    }),
  );
  for (let k = 0; k < IDENTITY_SECRETS_MAX; k++)
    assert.equal(step(encodeSecretCommand(put(`app/s${k}`, 1), ci)).ok, true);
  refusedLimit(
    step(encodeSecretCommand(put('app/one-more', 1), ci)),
    /identity "ci" has created 10000 secrets, the most one identity may \(IDENTITY_SECRETS_MAX\)/,
  );
  assert.equal(step(encodeSecretCommand(put('app/s0', 1000), ci)).ok, true, 'a new version of one of its secrets');
  assert.equal(
    step(encodeSecretCommand(put('app/by-leader', 1000), null)).ok,
    true,
    'commands without an actor are not charged',
  );
  assert.equal(step(encodeSecretCommand({ op: 'destroy', name: 'app/s1', versions: [1] }, ci)).ok, true);
  assert.deepEqual(state.secrets.usage('ci'), {
    secrets: IDENTITY_SECRETS_MAX,
    valueBytes: IDENTITY_SECRETS_MAX - 1 + 1000,
  });
  const restored = new AppliedState({ keys });
  await restored.restore(await state.snapshot());
  assert.deepEqual(restored.secrets.usage('ci'), state.secrets.usage('ci'));
  refusedLimit(
    restored.apply({ index: ++index, ...encodeSecretCommand(put('app/one-more', 1), ci) }) as SecretResult,
    /IDENTITY_SECRETS_MAX/,
  );
});

test('the edge can ask the same question before proposing (the apply-time verdict is the one that counts)', () => {
  const store = newSecretStore({ identityValueBytesMax: 1000, identitySecretsMax: 1 });
  apply(store, put('a', 900), ci);
  assert.equal(store.putQuotaProblem('ci', put('a', 100) as Extract<SecretCommand, { op: 'put' }>), null);
  const bytes = store.putQuotaProblem('ci', put('a', 101) as Extract<SecretCommand, { op: 'put' }>);
  assert.match(bytes?.reason ?? '', /IDENTITY_VALUE_BYTES_MAX/);
  assert.deepEqual(
    [bytes?.code, bytes?.reasonCode, bytes?.metadata],
    ['LIMIT', 'QUOTA_EXCEEDED', { quota: 'IDENTITY_VALUE_BYTES_MAX', limit: '1000' }],
    'a program reads which quota and its limit without parsing the message',
  );
  const count = store.putQuotaProblem('ci', put('b', 1) as Extract<SecretCommand, { op: 'put' }>);
  assert.match(count?.reason ?? '', /IDENTITY_SECRETS_MAX/);
  assert.deepEqual(count?.metadata, { quota: 'IDENTITY_SECRETS_MAX', limit: '1' });
  assert.equal(store.putQuotaProblem('ops', put('b', 1000) as Extract<SecretCommand, { op: 'put' }>), null);
});

test('an identity with sudo on sys/quotas (root) is counted but not limited; one without it is limited', async () => {
  const keys = testRecordKeys();
  const state = new AppliedState({ keys, quotas: { identitySecretsMax: 3 } });
  let index = 0;
  const step = (c: { kind: string; data: Buffer }) =>
    state.apply({ index: ++index, kind: c.kind, data: c.data }) as SecretResult;
  step(
    encodeAccessCommand({
      op: 'policy-put',
      name: 'writer',
      rules: [{ path: 'app/**', capabilities: ['write'], deny: false }],
    }),
  );
  const issue = (name: string, policies: string[], key: string, serial: string) =>
    step(encodeAccessCommand({ op: 'identity-issue', name, policies, key, serial, caGen: 1, nowMs: T0 }));
  assert.equal(issue('ci', ['writer'], ci.key, 'aa01').ok, true);
  assert.equal(issue('ops', ['root'], ops.key, 'bb01').ok, true);
  for (let k = 0; k < 3; k++) assert.equal(step(encodeSecretCommand(put(`app/ci${k}`, 1), ci)).ok, true);
  refusedLimit(step(encodeSecretCommand(put('app/ci-more', 1), ci)), /IDENTITY_SECRETS_MAX/);
  for (let k = 0; k < 5; k++)
    assert.equal(step(encodeSecretCommand(put(`app/ops${k}`, 1), ops)).ok, true, `root's secret ${k}`);
  assert.deepEqual(state.secrets.usage('ops'), { secrets: 5, valueBytes: 5 }, 'counted all the same');
});
