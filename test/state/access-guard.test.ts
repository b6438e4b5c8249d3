import { testRecordKeys } from './stores.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodeAccessCommand, type AccessCommand, type Actor } from '../../src/state/access-state.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import type { PolicyRule } from '../../src/state/policy.ts';

const T0 = 1_700_000_000_000;
const key = (n: number): string => n.toString(16).padStart(2, '0').repeat(32);
const ROOT: Actor = { name: 'admin', key: key(1) };
const TEAM_ADMIN: Actor = { name: 'team-lead', key: key(2) };

/** A cluster's access state: the root admin, and a team lead who administers team-* policies and identities. */
function delegated(extra: PolicyRule[] = []): {
  state: AppliedState;
  apply: (command: AccessCommand, actor: Actor | null) => { ok: boolean; reason?: string; code?: string };
} {
  const state = new AppliedState({ keys: testRecordKeys() });
  let index = 0;
  const apply = (command: AccessCommand, actor: Actor | null) =>
    state.apply({ index: ++index, ...encodeAccessCommand(command, actor) }) as {
      ok: boolean;
      reason?: string;
      code?: string;
    };
  apply(
    { op: 'identity-issue', name: 'admin', policies: ['root'], key: ROOT.key, serial: '01', caGen: 1, nowMs: T0 },
    null,
  );
  apply(
    { op: 'policy-put', name: 'prod-reader', rules: [{ path: 'prod/**', capabilities: ['read'], deny: false }] },
    ROOT,
  );
  apply(
    {
      op: 'policy-put',
      name: 'team-admin',
      rules: [
        { path: 'sys/policies/team-*', capabilities: ['admin'], deny: false },
        { path: 'sys/identities/team-*', capabilities: ['admin'], deny: false },
        { path: 'team/**', capabilities: ['read', 'write', 'list'], deny: false },
        ...extra,
      ],
    },
    ROOT,
  );
  apply(
    {
      op: 'identity-issue',
      name: 'team-lead',
      policies: ['team-admin'],
      key: TEAM_ADMIN.key,
      serial: '02',
      caGen: 1,
      nowMs: T0,
    },
    ROOT,
  );
  return { state, apply };
}

const denied = (result: { ok: boolean; code?: string; reason?: string }, pattern: RegExp): void => {
  assert.equal(result.ok, false, 'refused');
  assert.equal(result.code, 'DENIED', result.reason);
  assert.match(result.reason ?? '', pattern);
};

test("the reviewer's escalation chain fails at every step: a delegated policy and identity administrator cannot make itself root", () => {
  const { state, apply } = delegated();
  // 1. Write "**" with every capability into a policy it administers.
  denied(
    apply(
      {
        op: 'policy-put',
        name: 'team-x',
        rules: [{ path: '**', capabilities: ['read', 'write', 'list', 'delete', 'admin', 'sudo'], deny: false }],
      },
      TEAM_ADMIN,
    ),
    /rule "\*\*" grants read, which you do not hold on all of "\*\*"/,
  );
  denied(
    apply(
      { op: 'policy-put', name: 'team-x', rules: [{ path: 'prod/**', capabilities: ['read'], deny: false }] },
      TEAM_ADMIN,
    ),
    /grants read/,
  );
  assert.equal(state.access.policies.has('team-x'), false);
  // 2. Bind itself (or a new identity) to a policy that grants more than it holds.
  denied(
    apply(
      {
        op: 'identity-issue',
        name: 'team-bot',
        policies: ['prod-reader'],
        key: key(3),
        serial: '03',
        caGen: 1,
        nowMs: T0,
      },
      TEAM_ADMIN,
    ),
    /may not admin "sys\/policies\/prod-reader"/,
  );
  denied(
    apply(
      { op: 'identity-issue', name: 'team-bot', policies: ['root'], key: key(3), serial: '03', caGen: 1, nowMs: T0 },
      TEAM_ADMIN,
    ),
    /may not admin "sys\/policies\/root"/,
  );
  // 3. Re-issue an existing identity, the admin's included, with no policies, to hold its name.
  const takeover = apply(
    { op: 'identity-issue', name: 'admin', policies: [], key: key(4), serial: '04', caGen: 1, nowMs: T0 },
    TEAM_ADMIN,
  );
  assert.equal(takeover.ok, false);
  denied(
    apply(
      {
        op: 'identity-issue',
        name: 'admin',
        policies: [],
        key: key(4),
        serial: '04',
        caGen: 1,
        nowMs: T0,
        reissue: true,
      },
      TEAM_ADMIN,
    ),
    /may not admin "sys\/identities\/admin"/,
  );
  assert.equal(state.access.certificateValid('admin', key(4)), false);
  assert.deepEqual(state.access.identities.get('admin')!.policies, ['root']);
});

test('within its own rights a delegated administrator writes and grants; a team identity it re-issues or revokes must hold only what it may grant', () => {
  const { state, apply } = delegated();
  assert.deepEqual(
    apply(
      {
        op: 'policy-put',
        name: 'team-reader',
        rules: [
          { path: 'team/app/**', capabilities: ['read', 'list'], deny: false },
          { path: 'team/app/secret', capabilities: ['read'], deny: true },
        ],
      },
      TEAM_ADMIN,
    ),
    { ok: true },
  );
  assert.deepEqual(
    apply(
      {
        op: 'identity-issue',
        name: 'team-bot',
        policies: ['team-reader'],
        key: key(5),
        serial: '05',
        caGen: 1,
        nowMs: T0,
      },
      TEAM_ADMIN,
    ),
    { ok: true },
  );
  // An issue never takes over a name silently: it needs the reissue flag.
  const again = apply(
    {
      op: 'identity-issue',
      name: 'team-bot',
      policies: ['team-reader'],
      key: key(6),
      serial: '06',
      caGen: 1,
      nowMs: T0,
    },
    TEAM_ADMIN,
  );
  assert.equal(again.code, 'EXISTS');
  assert.deepEqual(
    apply(
      {
        op: 'identity-issue',
        name: 'team-bot',
        policies: ['team-reader'],
        key: key(6),
        serial: '06',
        caGen: 1,
        nowMs: T0,
        reissue: true,
      },
      TEAM_ADMIN,
    ),
    { ok: true },
  );
  assert.equal(state.access.certificateValid('team-bot', key(6)), true);
  // Root binds team-bot to prod-reader too: the team lead can no longer re-issue or revoke it.
  assert.deepEqual(
    apply(
      {
        op: 'identity-issue',
        name: 'team-bot',
        policies: ['team-reader', 'prod-reader'],
        key: key(7),
        serial: '07',
        caGen: 1,
        nowMs: T0,
        reissue: true,
      },
      ROOT,
    ),
    { ok: true },
  );
  denied(
    apply(
      {
        op: 'identity-issue',
        name: 'team-bot',
        policies: ['team-reader'],
        key: key(8),
        serial: '08',
        caGen: 1,
        nowMs: T0,
        reissue: true,
      },
      TEAM_ADMIN,
    ),
    /hand out policy "prod-reader"/,
  );
  denied(apply({ op: 'identity-revoke', name: 'team-bot' }, TEAM_ADMIN), /prod-reader/);
  // Nor revoke the root admin; nor rewrite or remove a team-* policy root widened beyond it.
  denied(apply({ op: 'identity-revoke', name: 'admin' }, TEAM_ADMIN), /may not admin "sys\/identities\/admin"/);
  assert.deepEqual(
    apply(
      { op: 'policy-put', name: 'team-wide', rules: [{ path: 'prod/**', capabilities: ['read'], deny: false }] },
      ROOT,
    ),
    { ok: true },
  );
  denied(
    apply(
      { op: 'policy-put', name: 'team-wide', rules: [{ path: 'team/**', capabilities: ['read'], deny: false }] },
      TEAM_ADMIN,
    ),
    /grants read/,
  );
  denied(apply({ op: 'policy-remove', name: 'team-wide' }, TEAM_ADMIN), /grants read/);
  // A deny outside its rights is refused too (it would cut into rights others granted).
  denied(
    apply(
      { op: 'policy-put', name: 'team-deny', rules: [{ path: 'prod/**', capabilities: ['read'], deny: true }] },
      TEAM_ADMIN,
    ),
    /denies read/,
  );
});

test('an identity renews only its own certificate; the guard uses the state at apply time (a lost right is lost at once)', () => {
  const { state, apply } = delegated();
  denied(
    apply({ op: 'identity-renew', name: 'admin', key: key(9), serial: '09', caGen: 1, nowMs: T0 }, TEAM_ADMIN),
    /only its own certificate/,
  );
  assert.deepEqual(
    apply({ op: 'identity-renew', name: 'team-lead', key: key(9), serial: '09', caGen: 1, nowMs: T0 }, TEAM_ADMIN),
    { ok: true },
  );
  assert.equal(state.access.certificateValid('team-lead', key(9)), true);
  // Root narrows team-admin; a write the team lead proposed before applies after, and is refused.
  assert.deepEqual(
    apply(
      { op: 'policy-put', name: 'team-admin', rules: [{ path: 'team/**', capabilities: ['read'], deny: false }] },
      ROOT,
    ),
    { ok: true },
  );
  denied(
    apply(
      { op: 'policy-put', name: 'team-y', rules: [{ path: 'team/a', capabilities: ['read'], deny: false }] },
      TEAM_ADMIN,
    ),
    /may not admin "sys\/policies\/team-y"/,
  );
});
