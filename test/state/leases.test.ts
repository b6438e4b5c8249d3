import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeAccessCommand, type AccessCommand, type Actor } from '../../src/state/access-state.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import { testRecordKeys } from './stores.ts';

// Dynamic database credentials in the replicated state: a lease's life (pending, active, renewed
// within its maximum, revoked), what the leader finds due, who may renew and revoke, and what a
// snapshot keeps.

const T0 = 1_700_000_000_000;
const key = (n: number): string => n.toString(16).padStart(2, '0').repeat(32);
const ROOT: Actor = { name: 'admin', key: key(1) };
const APP: Actor = { name: 'app', key: key(2) };
const OTHER: Actor = { name: 'other', key: key(3) };
const ID = (n: number): string => `main/readonly/${n.toString(16).padStart(32, '0')}`;

function cluster(): {
  state: AppliedState;
  apply: (c: AccessCommand, a: Actor | null) => { ok: boolean; code?: string; reasonCode?: string };
} {
  const state = new AppliedState({ keys: testRecordKeys() });
  let index = 0;
  const apply = (c: AccessCommand, a: Actor | null) =>
    state.apply({ index: ++index, ...encodeAccessCommand(c, a) }) as {
      ok: boolean;
      code?: string;
      reasonCode?: string;
    };
  apply(
    { op: 'identity-issue', name: 'admin', policies: ['root'], key: ROOT.key, serial: '01', caGen: 1, nowMs: T0 },
    null,
  );
  apply(
    { op: 'policy-put', name: 'creds', rules: [{ path: 'sys/db/main/creds/*', capabilities: ['read'], deny: false }] },
    ROOT,
  );
  apply(
    { op: 'identity-issue', name: 'app', policies: ['creds'], key: APP.key, serial: '02', caGen: 1, nowMs: T0 },
    ROOT,
  );
  apply(
    { op: 'identity-issue', name: 'other', policies: ['creds'], key: OTHER.key, serial: '03', caGen: 1, nowMs: T0 },
    ROOT,
  );
  assert.equal(
    apply({ op: 'db-configure', name: 'main', url: 'postgres://admin:pw@127.0.0.1:5432/app' }, ROOT).ok,
    true,
  );
  assert.equal(
    apply(
      {
        op: 'db-role-put',
        name: 'main/readonly',
        dbRole: {
          db: 'main',
          role: 'readonly',
          creationSql: `CREATE ROLE "{{name}}" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'`,
          revocationSql: '',
          renewSql: '',
          defaultTtlSeconds: 3600,
          maxTtlSeconds: 7200,
        },
      },
      ROOT,
    ).ok,
    true,
  );
  return { state, apply };
}

const open = (n: number, owner = 'app', nowMs = T0): AccessCommand => ({
  op: 'lease-open',
  name: ID(n),
  db: 'main',
  role: 'readonly',
  username: `v-readonly-${n}`,
  owner,
  nowMs,
  expiresAtMs: nowMs + 3_600_000,
  maxExpiresAtMs: nowMs + 7_200_000,
});

test('a lease is opened and activated by managers, renewed within its maximum by its owner, revoked, then dropped', () => {
  const { state, apply } = cluster();
  assert.equal(apply(open(1), APP).ok, false, 'a client cannot open a lease itself');
  assert.equal(apply(open(1), null).ok, true);
  assert.equal(state.access.leases.leases.get(ID(1))?.state, 'pending');
  assert.equal(apply({ op: 'lease-renew', name: ID(1), expiresAtMs: T0 + 5_000_000 }, APP).ok, false, 'not active yet');
  assert.equal(apply({ op: 'lease-activate', name: ID(1) }, null).ok, true);
  assert.equal(apply({ op: 'lease-renew', name: ID(1), expiresAtMs: T0 + 99_000_000 }, APP).ok, true);
  assert.equal(state.access.leases.leases.get(ID(1))?.expiresAtMs, T0 + 7_200_000, 'capped at the maximum');
  // Another identity with no right on sys/leases may neither renew nor revoke it.
  assert.equal(
    apply({ op: 'lease-renew', name: ID(1), expiresAtMs: T0 + 7_000_000 }, OTHER).reasonCode,
    'GRANT_NOT_HELD',
  );
  assert.equal(apply({ op: 'lease-revoke', name: '', ids: [ID(1)] }, OTHER).reasonCode, 'GRANT_NOT_HELD');
  assert.equal(apply({ op: 'lease-revoke', name: '', ids: [ID(1)] }, APP).ok, true);
  assert.equal(state.access.leases.leases.get(ID(1))?.state, 'revoking');
  assert.equal(
    apply({ op: 'lease-revoked', name: '', ids: [ID(1)] }, APP).ok,
    false,
    'a client cannot report a revocation',
  );
  assert.equal(apply({ op: 'lease-revoked', name: '', ids: [ID(1)] }, null).ok, true);
  assert.equal(state.access.leases.leases.size, 0);
});

test('the leader finds due: asked to revoke, ended, or pending too long; a database with leases is not removed', () => {
  const { state, apply } = cluster();
  apply(open(1), null);
  apply({ op: 'lease-activate', name: ID(1) }, null);
  apply(open(2, 'app', T0 + 1000), null); // never activated (its manager died)
  apply(open(3), null);
  apply({ op: 'lease-activate', name: ID(3) }, null);
  apply({ op: 'lease-revoke', name: '', ids: [ID(3)] }, ROOT);
  const book = state.access.leases;
  assert.deepEqual(
    book.due(T0 + 10_000, 60_000, 10).map((l) => l.id),
    [ID(3)],
  );
  assert.deepEqual(
    book.due(T0 + 120_000, 60_000, 10).map((l) => l.id),
    [ID(3), ID(2)],
  );
  assert.deepEqual(new Set(book.due(T0 + 3_600_000, 60_000, 10).map((l) => l.id)), new Set([ID(1), ID(2), ID(3)]));
  assert.equal(apply({ op: 'db-remove', name: 'main' }, ROOT).code, 'PRECONDITION');
  assert.deepEqual(book.withPrefix('main/readonly/').length, 3);
});

test('a lease whose user is still being made is not revoked before the pending grace, even when asked to or ended: a revocation that finds no user yet would leave one', () => {
  const { state, apply } = cluster();
  apply({ ...open(4), expiresAtMs: T0 + 10_000 } as AccessCommand, null);
  apply({ op: 'lease-revoke', name: '', ids: [ID(4)] }, ROOT);
  const book = state.access.leases;
  assert.equal(book.leases.get(ID(4))?.state, 'revoking');
  // Asked to be revoked, and past its end: still not due while a creation might commit.
  assert.deepEqual(book.due(T0 + 30_000, 60_000, 10), []);
  // The creation's report comes too late: the lease stays revoking, never active.
  assert.equal(apply({ op: 'lease-activate', name: ID(4) }, null).ok, false);
  assert.deepEqual(
    book.due(T0 + 60_000, 60_000, 10).map((l) => l.id),
    [ID(4)],
  );
  // An image from before the flag: its leases count as made (revoked at once, as then).
  const image = structuredClone(book.snapshot()) as unknown[][];
  for (const lease of image[2] as Array<Record<string, unknown>>) delete lease['activated'];
  book.restore(image);
  assert.deepEqual(
    book.due(T0 + 1_000, 60_000, 10).map((l) => l.id),
    [ID(4)],
  );
});

test('a snapshot keeps databases, roles and leases; an access image from before leases restores with none', () => {
  const { state, apply } = cluster();
  apply(open(1), null);
  apply({ op: 'lease-activate', name: ID(1) }, null);
  const copy = new AppliedState({ keys: testRecordKeys() });
  copy.access.restore(structuredClone(state.access.snapshot()));
  assert.deepEqual(copy.access.snapshot(), state.access.snapshot());
  assert.equal(copy.access.leases.leases.get(ID(1))?.state, 'active');
  const image = state.access.snapshot() as unknown[];
  const old = new AppliedState({ keys: testRecordKeys() });
  old.access.restore(image.slice(0, 6));
  assert.equal(old.access.leases.leases.size, 0);
  assert.equal(old.access.leases.databases.size, 0);
});

test('an end the leader found is marked through the log: a renewal applied first keeps the lease, one applied after is refused; only managers mark', () => {
  const { state, apply } = cluster();
  const book = state.access.leases;
  for (const n of [5, 6]) {
    apply(open(n), null);
    apply({ op: 'lease-activate', name: ID(n) }, null);
  }
  const endedBy = T0 + 3_600_000;
  // Lease 5 is renewed before the leader's mark applies; lease 6 is not.
  assert.equal(apply({ op: 'lease-renew', name: ID(5), expiresAtMs: T0 + 3_700_000 }, APP).ok, true);
  const expire: AccessCommand = { op: 'lease-expire', name: '', ids: [ID(5), ID(6)], endedByMs: endedBy };
  assert.equal(apply(expire, APP).reasonCode, 'GRANT_NOT_HELD', 'a client cannot mark a lease ended');
  assert.equal(book.leases.get(ID(6))?.state, 'active');
  assert.equal(apply(expire, null).ok, true);
  assert.equal(book.leases.get(ID(5))?.state, 'active', 'renewed before the mark: it stays');
  assert.equal(book.leases.get(ID(5))?.expiresAtMs, T0 + 3_700_000);
  assert.equal(book.leases.get(ID(6))?.state, 'revoking');
  // A renewal that comes after the mark is refused: its client is told, not acknowledged.
  assert.equal(apply({ op: 'lease-renew', name: ID(6), expiresAtMs: T0 + 3_700_000 }, APP).ok, false);
  assert.equal(book.leases.get(ID(6))?.expiresAtMs, T0 + 3_600_000);
  assert.deepEqual(
    book.due(endedBy, 60_000, 10).map((l) => l.id),
    [ID(6)],
  );
});
