import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  SecretStore,
  encodeSecretCommand,
  type SecretCommand,
  type SecretResult,
} from '../../src/state/secret-store.ts';
import { RefusalError, type RefusalCode } from '../../src/state/state-part.ts';

const T0 = 1_700_000_000_000;

/** Decodes, then applies, as AppliedState does (without authorization: these commands name no actor). */
function applyLogged(store: SecretStore, kind: string, data: Buffer): SecretResult {
  const decoded = store.decode(kind, data);
  return decoded.ok ? store.apply(decoded.command, decoded.actor) : decoded;
}
function apply(store: SecretStore, command: SecretCommand): SecretResult {
  const { kind, data } = encodeSecretCommand(command);
  return applyLogged(store, kind, data);
}
const put = (name: string, value: string, extra: Partial<Extract<SecretCommand, { op: 'put' }>> = {}) =>
  ({
    op: 'put',
    name,
    value: Buffer.from(value),
    cas: null,
    expireAtMs: null,
    versionsKept: null,
    nowMs: T0,
    ...extra,
  }) as const;
const refusedWith = (code: RefusalCode, pattern?: RegExp) => (e: unknown) =>
  e instanceof RefusalError && e.code === code && (pattern === undefined || pattern.test(e.message));

test('each put makes a new version; current and previous follow; a version or label reads back', () => {
  const store = new SecretStore();
  assert.deepEqual(apply(store, put('db/password', 'one')), { ok: true, version: 1 });
  assert.deepEqual(apply(store, put('db/password', 'two')), { ok: true, version: 2 });
  assert.equal(store.read('db/password', {}, T0).value.toString(), 'two');
  assert.equal(store.read('db/password', { label: 'previous' }, T0).value.toString(), 'one');
  assert.equal(store.read('db/password', { version: 1 }, T0).value.toString(), 'one');
  assert.throws(() => store.read('db/password', { version: 3 }, T0), refusedWith('NOT_FOUND', /no version 3/));
  assert.throws(() => store.read('db/other', {}, T0), refusedWith('NOT_FOUND', /does not exist/));
});

test('compare-and-set: 0 creates only; a stale version is refused and changes nothing', () => {
  const store = new SecretStore();
  assert.deepEqual(apply(store, put('k', 'a', { cas: 0 })), { ok: true, version: 1 });
  const again = apply(store, put('k', 'b', { cas: 0 }));
  assert.equal(again.ok, false);
  assert.equal(!again.ok && again.code, 'CAS_MISMATCH');
  const stale = apply(store, put('k', 'b', { cas: 7 }));
  assert.match(!stale.ok ? stale.reason : '', /is at version 1, not 7/);
  assert.deepEqual(apply(store, put('k', 'b', { cas: 1 })), { ok: true, version: 2 });
  assert.equal(store.read('k', {}, T0).value.toString(), 'b');
});

test('only the newest versions are kept; older ones are wiped and say so', () => {
  const store = new SecretStore();
  for (let k = 1; k <= 5; k++) apply(store, put('k', `v${k}`, { versionsKept: 3 }));
  assert.deepEqual(
    store.versions('k', T0).map((v) => v.version),
    [3, 4, 5],
  );
  assert.throws(
    () => store.read('k', { version: 2 }, T0),
    refusedWith('NOT_FOUND', /no longer kept \(the last 3 are\)/),
  );
});

test('soft delete hides a secret until undeleted; destroy wipes chosen versions for good', () => {
  const store = new SecretStore();
  apply(store, put('k', 'v1'));
  apply(store, put('k', 'v2'));
  apply(store, { op: 'delete', name: 'k' });
  assert.throws(() => store.read('k', {}, T0), refusedWith('DELETED'));
  assert.equal(store.list('', '', 10, false).secrets.length, 0);
  assert.equal(store.list('', '', 10, true).secrets.length, 1);
  apply(store, { op: 'undelete', name: 'k' });
  assert.equal(store.read('k', {}, T0).value.toString(), 'v2');
  apply(store, { op: 'destroy', name: 'k', versions: [1] });
  assert.throws(() => store.read('k', { version: 1 }, T0), refusedWith('DESTROYED', /version 1 was destroyed/));
  assert.equal(store.read('k', {}, T0).value.toString(), 'v2');
  const missing = apply(store, { op: 'destroy', name: 'k', versions: [9] });
  assert.equal(!missing.ok && missing.code, 'NOT_FOUND');
});

test('labels: current can be moved back (rollback), user labels come and go, a destroyed version takes none', () => {
  const store = new SecretStore();
  apply(store, put('k', 'v1'));
  apply(store, put('k', 'v2'));
  apply(store, { op: 'label', name: 'k', label: 'current', version: 1 });
  assert.equal(store.read('k', {}, T0).value.toString(), 'v1');
  apply(store, { op: 'label', name: 'k', label: 'stable', version: 2 });
  assert.equal(store.read('k', { label: 'stable' }, T0).value.toString(), 'v2');
  apply(store, { op: 'unlabel', name: 'k', label: 'stable' });
  assert.throws(() => store.read('k', { label: 'stable' }, T0), refusedWith('NOT_FOUND', /no label "stable"/));
  const reserved = apply(store, { op: 'unlabel', name: 'k', label: 'current' });
  assert.equal(!reserved.ok && reserved.code, 'INVALID');
  apply(store, { op: 'destroy', name: 'k', versions: [1] });
  const onDestroyed = apply(store, { op: 'label', name: 'k', label: 'x', version: 1 });
  assert.equal(!onDestroyed.ok && onDestroyed.code, 'DESTROYED');
});

test('expiry: reads fail once the time has passed, and the sweep wipes the value', () => {
  const store = new SecretStore();
  apply(store, put('k', 'short', { expireAtMs: T0 + 1000 }));
  assert.equal(store.read('k', {}, T0 + 999).value.toString(), 'short');
  assert.throws(() => store.read('k', {}, T0 + 1000), refusedWith('EXPIRED'));
  assert.equal(store.nextExpiryMs(), T0 + 1000);
  assert.deepEqual(apply(store, { op: 'expire', nowMs: T0 + 1000 }), { ok: true, version: 1 });
  assert.equal(store.nextExpiryMs(), null);
  assert.throws(() => store.read('k', {}, T0), refusedWith('EXPIRED'), 'wiped: even an earlier clock cannot read it');
  assert.deepEqual(
    store.versions('k', T0).map((v) => v.expired),
    [true],
  );
});

test('bad commands are refused as results, never thrown, and leave the state as it was', () => {
  const store = new SecretStore();
  const bad = (kind: string, data: Buffer, pattern: RegExp) => {
    const result = applyLogged(store, kind, data);
    assert.equal(result.ok, false);
    assert.equal(!result.ok && result.code, 'INVALID');
    assert.match(!result.ok ? result.reason : '', pattern);
  };
  bad('secret.put', Buffer.from([0x92, 0x01]), /does not decode/);
  bad('secret.put', encodeSecretCommand(put('../etc', 'x')).data, /no "." or ".." segments/);
  bad('secret.put', encodeSecretCommand(put('a b', 'x')).data, /segments of letters/);
  bad('secret.put', encodeSecretCommand(put('k', 'x'.repeat(512 * 1024 + 1))).data, /at most 524288 bytes/);
  bad('secret.delete', encodeSecretCommand(put('k', 'x')).data, /names another operation/);
  assert.equal(store.size, 0);
});

test('a snapshot restores the same secrets, versions, labels and flags', () => {
  const store = new SecretStore();
  apply(store, put('a', '1'));
  apply(store, put('a', '2', { expireAtMs: T0 + 5000 }));
  apply(store, { op: 'label', name: 'a', label: 'pinned', version: 1 });
  apply(store, put('b', 'x'));
  apply(store, { op: 'delete', name: 'b' });
  const copy = new SecretStore();
  copy.restore(store.snapshot());
  assert.deepEqual(copy.snapshot(), store.snapshot());
  assert.equal(copy.read('a', { label: 'pinned' }, T0).value.toString(), '1');
  assert.throws(() => copy.read('b', {}, T0), refusedWith('DELETED'));
});
