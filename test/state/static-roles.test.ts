import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeAccessCommand, type AccessCommand, type Actor } from '../../src/state/access-state.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import { checkedLeaseCommand } from '../../src/state/leases.ts';
import { encodeSecretCommand, type SecretCommand } from '../../src/state/secret-store.ts';
import { STATIC_ROTATION_SPACING_MS, type StaticRoleConfig, staticSecretName } from '../../src/state/static-roles.ts';
import { testRecordKeys } from './stores.ts';

// Static database roles in the replicated state: a rotation's two phases (begin with the
// password, done), the spacing between begins, what the leader finds due, who may name which
// command, the secret only rotations write, and what a snapshot keeps.

const T0 = 1_700_000_000_000;
const key = (n: number): string => n.toString(16).padStart(2, '0').repeat(32);
const ROOT: Actor = { name: 'admin', key: key(1) };
const DBA: Actor = { name: 'dba', key: key(2) };
const PASSWORD = 'Abcdefghij0123456789Abcdefghij01';
const SECRET = staticSecretName('main', 'owner');

type Result = { ok: boolean; code?: string; reasonCode?: string; reason?: string };

function cluster(): {
  state: AppliedState;
  apply: (c: AccessCommand, a: Actor | null) => Result;
  put: (c: SecretCommand, a: Actor | null) => Result;
} {
  const state = new AppliedState({ keys: testRecordKeys() });
  let index = 0;
  const apply = (c: AccessCommand, a: Actor | null) =>
    state.apply({ index: ++index, ...encodeAccessCommand(c, a) }) as Result;
  const put = (c: SecretCommand, a: Actor | null) =>
    state.apply({ index: ++index, ...encodeSecretCommand(c, a) }) as Result;
  apply(
    { op: 'identity-issue', name: 'admin', policies: ['root'], key: ROOT.key, serial: '01', caGen: 1, nowMs: T0 },
    null,
  );
  apply(
    {
      op: 'policy-put',
      name: 'dba',
      rules: [
        { path: 'sys/db/main/static-roles/owner', capabilities: ['admin'], deny: false },
        { path: 'sys/db/main/static/**', capabilities: ['read', 'write', 'delete'], deny: false },
      ],
    },
    ROOT,
  );
  apply(
    { op: 'identity-issue', name: 'dba', policies: ['dba'], key: DBA.key, serial: '02', caGen: 1, nowMs: T0 },
    ROOT,
  );
  assert.equal(
    apply({ op: 'db-configure', name: 'main', url: 'postgres://admin:pw@127.0.0.1:5432/app' }, ROOT).ok,
    true,
  );
  return { state, apply, put };
}

const config = (role = 'owner', username = 'app_owner'): StaticRoleConfig => ({
  db: 'main',
  role,
  username,
  rotationSql: '',
  rotationPeriodSeconds: 3600,
});
const putRole = (role = 'owner', username = 'app_owner'): AccessCommand => ({
  op: 'static-role-put',
  name: `main/${role}`,
  staticRole: config(role, username),
});
const begin = (nowMs: number, baseVersion = 0, password = PASSWORD, username = 'app_owner'): AccessCommand => ({
  op: 'static-rotate-begin',
  name: 'main/owner',
  username,
  password,
  nowMs,
  baseVersion,
});
const done = (startedAtMs: number, nowMs: number): AccessCommand => ({
  op: 'static-rotate-done',
  name: 'main/owner',
  startedAtMs,
  nowMs,
});
const secretPut = (value: string, cas: number | null): SecretCommand => ({
  op: 'put',
  name: SECRET,
  value: Buffer.from(value),
  cas,
  expireAtMs: null,
  versionsKept: 2,
  nowMs: T0,
});

test('a static role is due at once; a rotation is pending from its begin to its done, and then due again after its period', () => {
  const { state, apply } = cluster();
  const statics = state.access.leases.statics;
  assert.equal(apply(putRole(), DBA).ok, true);
  assert.deepEqual(
    statics.due(T0).map((r) => r.role),
    ['owner'],
  );
  assert.equal(apply(begin(T0), null).ok, true);
  assert.equal(statics.roles.get('main/owner')!.pending!.password, PASSWORD);
  // A done that names another begin (one that ran out of its window) changes nothing.
  assert.equal(apply(done(T0 - 1, T0 + 100), null).ok, false);
  assert.equal(apply(done(T0, T0 + 100), null).ok, true);
  const role = statics.roles.get('main/owner')!;
  assert.equal(role.pending, null);
  assert.equal(role.lastRotatedAtMs, T0 + 100);
  assert.deepEqual(statics.due(T0 + 1000), []);
  assert.deepEqual(
    statics.due(T0 + 100 + 3600_000).map((r) => r.role),
    ['owner'],
  );
  // On demand: due at once, and the request is cleared by a rotation that began after it.
  assert.equal(apply({ op: 'static-rotate-request', name: 'main/owner', nowMs: T0 + 5000 }, DBA).ok, true);
  assert.equal(statics.due(T0 + 5000).length, 1);
  const next = T0 + STATIC_ROTATION_SPACING_MS;
  assert.equal(apply(begin(next, 1), null).ok, true);
  assert.equal(apply(done(next, next + 50), null).ok, true);
  assert.equal(statics.roles.get('main/owner')!.requestedAtMs, 0);
  assert.deepEqual(statics.due(next + 100), []);
});

test("a begin names the role's user: one read before the role changed to another user is refused", () => {
  const { state, apply } = cluster();
  apply(putRole(), DBA);
  apply(putRole('owner', 'other_user'), DBA);
  const stale = apply(begin(T0, 0, PASSWORD, 'app_owner'), null);
  assert.equal(stale.ok, false);
  assert.match(stale.reason ?? '', /now rotates another user/);
  assert.equal(apply(begin(T0, 0, PASSWORD, 'other_user'), null).ok, true);
  assert.equal(state.access.leases.statics.roles.get('main/owner')!.pending!.username, 'other_user');
  // While pending, the user cannot change.
  assert.equal(apply(putRole('owner', 'third_user'), DBA).ok, false);
});

test('a rotation begins (or begins again) only the spacing after the previous began', () => {
  const { state, apply } = cluster();
  apply(putRole(), DBA);
  assert.equal(apply(begin(T0), null).ok, true);
  const early = apply(begin(T0 + STATIC_ROTATION_SPACING_MS - 1, 0, 'Zbcdefghij0123456789Abcdefghij01'), null);
  assert.equal(early.ok, false);
  assert.match(early.reason ?? '', /the next may begin from/);
  assert.equal(state.access.leases.statics.roles.get('main/owner')!.pending!.password, PASSWORD);
  // A pending rotation that never finished is begun again, with another password.
  assert.equal(apply(begin(T0 + STATIC_ROTATION_SPACING_MS, 0, 'Zbcdefghij0123456789Abcdefghij01'), null).ok, true);
  assert.equal(
    state.access.leases.statics.roles.get('main/owner')!.pending!.password,
    'Zbcdefghij0123456789Abcdefghij01',
  );
});

test('clients ask for rotations; only managers begin and finish them; admin on the static role is needed', () => {
  const { apply } = cluster();
  const stranger: Actor = { name: 'stranger', key: key(9) };
  apply(
    { op: 'identity-issue', name: 'stranger', policies: [], key: stranger.key, serial: '09', caGen: 1, nowMs: T0 },
    ROOT,
  );
  assert.equal(apply(putRole(), stranger).ok, false);
  assert.equal(apply(putRole('other', 'someone'), DBA).ok, false); // admin on main/owner only
  assert.equal(apply(putRole(), DBA).ok, true);
  for (const command of [begin(T0), done(T0, T0)]) {
    const refused = apply(command, ROOT);
    assert.equal(refused.ok, false);
    assert.match(refused.reason ?? '', /begun and finished by the leader/);
  }
  assert.equal(apply({ op: 'static-rotate-request', name: 'main/owner', nowMs: T0 }, stranger).ok, false);
});

test("the password's secret is written only by rotations: no client's put or label, root's included; deleting goes by policy", () => {
  const { state, apply, put } = cluster();
  apply(putRole(), DBA);
  for (const actor of [DBA, ROOT]) {
    const refused = put(secretPut('chosen-by-a-client', null), actor);
    assert.equal(refused.ok, false);
    assert.equal(refused.reasonCode, 'NAME_RESERVED');
  }
  // The leader's own put (no actor), compare-and-set on the version the rotation began from.
  assert.equal(put(secretPut(PASSWORD, 0), null).ok, true);
  // The same rotation's put again (a new leader finishing it) is refused: it is known to be done.
  const again = put(secretPut(PASSWORD, 0), null);
  assert.equal(again.ok, false);
  assert.equal(again.code, 'CAS_MISMATCH');
  assert.equal(state.secrets.read(SECRET, {}, T0).value.toString(), PASSWORD);
  const label = put({ op: 'label', name: SECRET, label: 'current', version: 1 }, ROOT);
  assert.equal(label.ok, false);
  const batch = put(
    {
      op: 'put-batch',
      items: [{ name: SECRET, value: Buffer.from('x'), cas: null, expireAtMs: null, versionsKept: null }],
      nowMs: T0,
    },
    ROOT,
  );
  assert.equal(batch.ok, false);
  assert.equal(state.secrets.read(SECRET, {}, T0).value.toString(), PASSWORD);
  assert.equal(put({ op: 'delete', name: SECRET }, DBA).ok, true);
});

test('a user is rotated by one static role of a database; removal waits for a pending rotation; a database with static roles stays', () => {
  const { state, apply } = cluster();
  apply(putRole(), DBA);
  const twice = apply(putRole('owner2', 'app_owner'), ROOT);
  assert.equal(twice.ok, false);
  assert.match(twice.reason ?? '', /already rotated by static role main\/owner/);
  assert.equal(apply({ op: 'db-remove', name: 'main' }, ROOT).ok, false);
  apply(begin(T0), null);
  assert.equal(apply({ op: 'static-role-remove', name: 'main/owner' }, DBA).ok, false);
  apply(done(T0, T0 + 1), null);
  assert.equal(apply({ op: 'static-role-remove', name: 'main/owner' }, DBA).ok, true);
  assert.equal(state.access.leases.statics.roles.size, 0);
  assert.equal(apply({ op: 'db-remove', name: 'main' }, ROOT).ok, true);
});

test('a snapshot keeps static roles with a pending rotation; a lease image from before static roles restores with none', () => {
  const { state, apply } = cluster();
  apply(putRole(), DBA);
  apply(begin(T0, 0), null);
  const copy = new AppliedState({ keys: testRecordKeys() });
  copy.access.restore(structuredClone(state.access.snapshot()));
  assert.deepEqual(
    copy.access.leases.statics.roles.get('main/owner'),
    state.access.leases.statics.roles.get('main/owner'),
  );
  const image = state.access.snapshot() as unknown[];
  const leases = image[image.length - 1] as unknown[];
  const old = new AppliedState({ keys: testRecordKeys() });
  old.access.restore([...image.slice(0, -1), leases.slice(0, 3)]);
  assert.equal(old.access.leases.statics.roles.size, 0);
  assert.equal(old.access.leases.databases.size, 1);
});

test('static role commands are checked in form where they apply: usernames that could break out of SQL quotes, odd passwords, short periods', () => {
  const bad: Array<Record<string, unknown>> = [
    { op: 'static-role-put', name: 'main/owner', staticRole: { ...config(), username: 'bob"; DROP ROLE admin; --' } },
    { op: 'static-role-put', name: 'main/owner', staticRole: { ...config(), username: "o'hara" } },
    { op: 'static-role-put', name: 'main/owner', staticRole: { ...config(), username: 'v-readonly-x' } },
    { op: 'static-role-put', name: 'main/owner', staticRole: { ...config(), rotationPeriodSeconds: 59 } },
    { op: 'static-role-put', name: 'main/other', staticRole: config() },
    {
      op: 'static-rotate-begin',
      name: 'main/owner',
      username: 'app_owner',
      password: "abc'; --",
      nowMs: T0,
      baseVersion: 0,
    },
    {
      op: 'static-rotate-begin',
      name: 'main/owner',
      username: 'app_owner',
      password: 'short',
      nowMs: T0,
      baseVersion: 0,
    },
    { op: 'static-rotate-begin', name: 'main/owner', username: 'x"y', password: PASSWORD, nowMs: T0, baseVersion: 0 },
    { op: 'static-rotate-done', name: 'main/owner', startedAtMs: -1, nowMs: T0 },
  ];
  for (const command of bad) assert.equal(typeof checkedLeaseCommand(command), 'string', JSON.stringify(command));
  assert.equal(typeof checkedLeaseCommand(putRole() as unknown as Record<string, unknown>), 'object');
});

test('a rotation SQL of its own (it runs as the database admin) needs admin on the database too; users are one per server, across configured databases', () => {
  const { apply } = cluster();
  const custom: AccessCommand = {
    op: 'static-role-put',
    name: 'main/owner',
    staticRole: { ...config(), rotationSql: `ALTER ROLE "{{name}}" PASSWORD '{{password}}' SUPERUSER` },
  };
  const refused = apply(custom, DBA);
  assert.equal(refused.ok, false);
  assert.match(refused.reason ?? '', /may not admin "sys\/db\/main"/);
  assert.equal(apply(putRole(), DBA).ok, true);
  assert.equal(apply(custom, ROOT).ok, true);
  // Another name for the same server (its users are the same users).
  assert.equal(apply({ op: 'db-configure', name: 'again', url: 'postgres://admin:pw@127.0.0.1/other' }, ROOT).ok, true);
  const twice = apply(
    {
      op: 'static-role-put',
      name: 'again/owner',
      staticRole: { ...config(), db: 'again' },
    },
    ROOT,
  );
  assert.equal(twice.ok, false);
  assert.match(twice.reason ?? '', /already rotated by static role main\/owner/);
  assert.equal(
    apply({ op: 'db-configure', name: 'elsewhere', url: 'postgres://admin:pw@10.0.0.2:5432/app' }, ROOT).ok,
    true,
  );
  assert.equal(
    apply({ op: 'static-role-put', name: 'elsewhere/owner', staticRole: { ...config(), db: 'elsewhere' } }, ROOT).ok,
    true,
  );
});
