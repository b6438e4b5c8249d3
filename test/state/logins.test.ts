import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeAccessCommand, type AccessCommand, type Actor } from '../../src/state/access-state.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import { testRecordKeys } from './stores.ts';

// Logins in the replicated state: what applies, what is refused where it applies (so every
// manager agrees), what a snapshot keeps, and what a prune drops.

const T0 = 1_700_000_000_000;
const key = (n: number): string => n.toString(16).padStart(2, '0').repeat(32);
const ROOT: Actor = { name: 'admin', key: key(1) };
const NARROW: Actor = { name: 'narrow', key: key(2) };

function cluster(): {
  state: AppliedState;
  apply: (command: AccessCommand, actor: Actor | null) => { ok: boolean; reason?: string; reasonCode?: string };
} {
  const state = new AppliedState({ keys: testRecordKeys() });
  let index = 0;
  const apply = (command: AccessCommand, actor: Actor | null) =>
    state.apply({ index: ++index, ...encodeAccessCommand(command, actor) }) as {
      ok: boolean;
      reason?: string;
      reasonCode?: string;
    };
  apply(
    { op: 'identity-issue', name: 'admin', policies: ['root'], key: ROOT.key, serial: '01', caGen: 1, nowMs: T0 },
    null,
  );
  apply({ op: 'policy-put', name: 'app', rules: [{ path: 'app/**', capabilities: ['read'], deny: false }] }, ROOT);
  apply(
    { op: 'identity-issue', name: 'narrow', policies: ['app'], key: NARROW.key, serial: '02', caGen: 1, nowMs: T0 },
    ROOT,
  );
  apply(
    {
      op: 'auth-role-put',
      name: 'ci',
      role: {
        name: 'ci',
        method: 'jwt',
        boundAudiences: ['coffer'],
        boundSubject: '',
        boundClaims: [],
        userClaim: 'sub',
        groupsClaim: '',
        policies: ['app'],
        groupPolicies: [],
        ttlSeconds: 600,
        maxTtlSeconds: 600,
        totpRequired: false,
      },
    },
    ROOT,
  );
  return { state, apply };
}

const loginOf = (
  subject: string,
  n: number,
  nowMs: number,
  extra: Partial<Extract<AccessCommand, { op: 'identity-login' }>> = {},
): AccessCommand => ({
  op: 'identity-login',
  name: `ci:${subject}`,
  role: 'ci',
  generation: 1,
  subject,
  policies: ['app'],
  key: key(100 + n),
  serial: n.toString(16),
  caGen: 1,
  nowMs,
  notAfterMs: nowMs + 600_000,
  totpStep: 0,
  ...extra,
});

test('a client cannot name a login or a prune; a role is a grant its writer must hold', () => {
  const { state, apply } = cluster();
  assert.equal(apply(loginOf('x', 1, T0), NARROW).ok, false, 'a login named by a client');
  assert.equal(apply({ op: 'identity-prune', name: '', names: ['ci:x'], nowMs: T0 }, NARROW).ok, false);
  assert.equal(state.access.identities.has('ci:x'), false);
  const role = state.access.authRoles.get('ci')!;
  const escalate = apply(
    { op: 'auth-role-put', name: 'mine', role: { ...role, name: 'mine', policies: ['root'] } },
    NARROW,
  );
  assert.equal(escalate.ok, false, 'a role granting root, written by a narrow identity');
  assert.equal(escalate.reasonCode, 'GRANT_NOT_HELD');
});

test('a login applies while its role (the same generation) exists; a revoked subject stays out; a TOTP step is taken once', () => {
  const { state, apply } = cluster();
  assert.equal(apply(loginOf('a', 1, T0), null).ok, true);
  assert.equal(state.access.certificateValid('ci:a', key(101)), true);
  // A login proposed before the role was removed and put again is refused where it applies.
  apply({ op: 'auth-role-remove', name: 'ci' }, ROOT);
  assert.equal(state.access.certificateValid('ci:a', key(101)), false, 'the role removed: its certificates stop');
  const role = { ...cluster().state.access.authRoles.get('ci')! };
  apply({ op: 'auth-role-put', name: 'ci', role }, ROOT);
  assert.equal(state.access.authRoles.get('ci')!.generation, 2);
  assert.equal(state.access.certificateValid('ci:a', key(101)), false, 'a new role of that name does not revive them');
  assert.equal(apply(loginOf('a', 2, T0), null).reasonCode, 'ROLE_NOT_FOUND');
  assert.equal(apply(loginOf('a', 3, T0, { generation: 2 }), null).ok, true);
  apply({ op: 'identity-revoke', name: 'ci:a' }, ROOT);
  assert.equal(apply(loginOf('a', 4, T0, { generation: 2 }), null).reasonCode, 'IDENTITY_REVOKED');
  apply({ op: 'totp-enroll', name: 'ci:b', secret: 'JBSWY3DPEHPK3PXPJBSWY3DP', nowMs: T0 }, ROOT);
  assert.equal(apply(loginOf('b', 5, T0, { generation: 2, totpStep: 100 }), null).ok, true);
  assert.equal(apply(loginOf('b', 6, T0, { generation: 2, totpStep: 100 }), null).reasonCode, 'TOTP_REUSED');
  assert.equal(apply(loginOf('b', 7, T0, { generation: 2, totpStep: 99 }), null).reasonCode, 'TOTP_REUSED');
  assert.equal(apply(loginOf('b', 8, T0, { generation: 2, totpStep: 101 }), null).ok, true);
});

test('a snapshot keeps methods, roles (and the next generation), logins with their ends, TOTP enrolments', () => {
  const { state, apply } = cluster();
  apply(
    {
      op: 'auth-method-put',
      name: 'jwt',
      config: {
        method: 'jwt',
        discoveryUrl: 'https://issuer.example/.well-known/openid-configuration',
        discoveryCaPem: '',
        staticJwks: '',
        boundIssuer: '',
        algorithms: ['RS256'],
        clientId: '',
      },
    },
    ROOT,
  );
  apply(loginOf('a', 1, T0), null);
  apply({ op: 'totp-enroll', name: 'ci:a', secret: 'JBSWY3DPEHPK3PXPJBSWY3DP', nowMs: T0 }, ROOT);
  apply(loginOf('a', 2, T0 + 1000, { totpStep: 7 }), null);
  const copy = new AppliedState({ keys: testRecordKeys() });
  copy.access.restore(structuredClone(state.access.snapshot()));
  assert.deepEqual(copy.access.snapshot(), state.access.snapshot());
  assert.equal(copy.access.certificateKey('ci:a', key(102))?.notAfterMs, T0 + 1000 + 600_000);
  assert.equal(copy.access.totp.get('ci:a')?.lastTimeStep, 7);
  // The generation counter came along: a role put after a restore gets the same generation everywhere.
  const role = copy.access.authRoles.get('ci')!;
  for (const s of [state, copy])
    s.access.apply({ op: 'auth-role-put', name: 'other', role: { ...role, name: 'other' } });
  assert.equal(copy.access.authRoles.get('other')!.generation, state.access.authRoles.get('other')!.generation);
  // An image from before logins (two parts) still restores.
  const old = new AppliedState({ keys: testRecordKeys() });
  old.access.restore([
    [['app', [{ path: 'app/**', capabilities: ['read'], deny: false }]]],
    [['x', [], [[key(9), '09', T0, 1]], false, T0]],
  ]);
  assert.equal(old.access.identities.get('x')?.role, null);
  assert.equal(old.access.authRoles.size, 0);
});

test('a prune drops login identities whose certificates all ended, and keeps live, revoked and issued ones', () => {
  const { state, apply } = cluster();
  apply(loginOf('old', 1, T0), null);
  apply(loginOf('live', 2, T0), null);
  apply(loginOf('live', 3, T0 + 3_800_000), null);
  apply(loginOf('revoked', 4, T0), null);
  apply({ op: 'identity-revoke', name: 'ci:revoked' }, ROOT);
  const later = T0 + 3_600_000;
  assert.deepEqual(state.access.endedLogins(later, 10), ['ci:old']);
  // A name that logged in again after the leader looked is not dropped where the prune applies.
  apply(loginOf('old', 5, later), null);
  assert.equal(apply({ op: 'identity-prune', name: '', names: ['ci:old'], nowMs: later }, null).ok, true);
  assert.ok(state.access.identities.has('ci:old'), 'logged in again: kept');
  assert.equal(
    apply({ op: 'identity-prune', name: '', names: ['ci:old', 'ci:live', 'ci:revoked'], nowMs: later + 700_000 }, null)
      .ok,
    true,
  );
  assert.ok(!state.access.identities.has('ci:old'));
  assert.ok(state.access.identities.has('ci:live'), 'its second certificate still works');
  assert.ok(state.access.identities.has('ci:revoked'), 'a revoked subject stays revoked');
  assert.ok(state.access.identities.has('narrow'), 'an identity issued by hand is never pruned');
});

test('setting a method or a second factor is a grant too: an auth administrator cannot reach what the roles give', () => {
  const { state, apply } = cluster();
  const AUTH_ADMIN: Actor = { name: 'auth-admin', key: key(3) };
  apply(
    {
      op: 'policy-put',
      name: 'auth-admin',
      rules: [
        { path: 'sys/auth/**', capabilities: ['admin'], deny: false },
        { path: 'sys/identities/**', capabilities: ['admin'], deny: false },
      ],
    },
    ROOT,
  );
  apply(
    {
      op: 'identity-issue',
      name: 'auth-admin',
      policies: ['auth-admin'],
      key: AUTH_ADMIN.key,
      serial: '03',
      caGen: 1,
      nowMs: T0,
    },
    ROOT,
  );
  // Pointing the jwt method at keys of their own would let them log in as any subject of role ci (policy app).
  const ownKeys = apply(
    {
      op: 'auth-method-put',
      name: 'jwt',
      config: {
        method: 'jwt',
        discoveryUrl: '',
        discoveryCaPem: '',
        staticJwks: '{"keys":[{"kty":"OKP"}]}',
        boundIssuer: 'me',
        algorithms: ['EdDSA'],
        clientId: '',
      },
    },
    AUTH_ADMIN,
  );
  assert.equal(ownKeys.ok, false, 'an auth administrator re-keyed a method whose roles grant more than they hold');
  assert.equal(ownKeys.reasonCode, 'GRANT_NOT_HELD');
  // The ldap method has no role: configuring it grants nothing yet.
  assert.equal(
    apply(
      {
        op: 'auth-method-put',
        name: 'ldap',
        config: {
          method: 'ldap',
          url: 'ldaps://ldap.example:636',
          startTls: false,
          caPem: '',
          userDnTemplate: 'uid={{username}}',
          groupBaseDn: '',
          groupFilter: '(member={{dn}})',
          groupNameAttribute: 'cn',
        },
      },
      AUTH_ADMIN,
    ).ok,
    true,
  );
  // A second factor of a subject of role ci, whose record does not exist yet: the role's policies decide.
  const totp = apply(
    { op: 'totp-enroll', name: 'ci:someone', secret: 'JBSWY3DPEHPK3PXPJBSWY3DP', nowMs: T0 },
    AUTH_ADMIN,
  );
  assert.equal(totp.reasonCode, 'GRANT_NOT_HELD');
  assert.equal(state.access.totp.has('ci:someone'), false);
  assert.equal(
    apply({ op: 'totp-enroll', name: 'ci:someone', secret: 'JBSWY3DPEHPK3PXPJBSWY3DP', nowMs: T0 }, ROOT).ok,
    true,
  );
});

test('a subject can be shut out before it ever logs in; a role narrowed after a login narrows it at once', () => {
  const { state, apply } = cluster();
  assert.equal(apply({ op: 'identity-revoke', name: 'ci:future' }, ROOT).ok, true);
  assert.equal(apply(loginOf('future', 1, T0), null).reasonCode, 'IDENTITY_REVOKED');
  assert.equal(apply({ op: 'identity-revoke', name: 'nobody' }, ROOT).reasonCode, 'IDENTITY_NOT_FOUND');
  apply({ op: 'policy-put', name: 'extra', rules: [{ path: 'extra/**', capabilities: ['read'], deny: false }] }, ROOT);
  const role = state.access.authRoles.get('ci')!;
  apply({ op: 'auth-role-put', name: 'ci', role: { ...role, policies: ['app', 'extra'] } }, ROOT);
  apply(loginOf('a', 2, T0, { policies: ['app', 'extra'] }), null);
  assert.equal(state.access.decide('ci:a', 'read', 'extra/x').allowed, true);
  apply({ op: 'auth-role-put', name: 'ci', role: { ...role, policies: ['app'] } }, ROOT);
  assert.equal(state.access.decide('ci:a', 'read', 'extra/x').allowed, false, 'the role no longer gives extra');
  assert.equal(state.access.decide('ci:a', 'read', 'app/x').allowed, true);
});
