import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TEST_COMPILED } from '../processes/processes.ts';
import {
  LEASE_BOUND_MS,
  PENDING_GRACE_MS,
  checkLeases,
  isLeaseHistory,
  leaseHistoryLines,
  parseLeaseHistory,
  type LeaseEvent,
  type LeaseHistory,
  type LeaseViolation,
} from './leases.ts';
import { formatLeasesSummary, runLeasesChaos } from './leases-run.ts';

// The checker first, on histories made by hand: one that keeps every rule, then one breaking each
// rule, so the checker is shown able to fail. Then a short run against a real PostgreSQL.

const T0 = 1_700_000_000_000;
const S = 1000;
const USER = 'v-app-abcdefghijklmnop-1700000000';
const LEASE = 'chaos/app/0123456789abcdef0123456789abcdef';
const info = {
  f: 'run',
  seed: 1,
  managers: 3,
  durationS: 60,
  db: 'chaos',
  roles: [
    { role: 'app', defaultTtlS: 15, maxTtlS: 45 },
    { role: 'batch', defaultTtlS: 10, maxTtlS: 30 },
  ],
  boundMs: LEASE_BOUND_MS,
  pendingGraceMs: PENDING_GRACE_MS,
  startedAtMs: T0,
} as const;

/** Users seen once a second from `fromS` to `toS` (seconds after T0). */
function polls(fromS: number, toS: number, users: (s: number) => string[]): LeaseEvent[] {
  const out: LeaseEvent[] = [];
  for (let s = fromS; s <= toS; s++) out.push({ f: 'roles', start: T0 + s * S, end: T0 + s * S + 50, users: users(s) });
  return out;
}

const issued: LeaseEvent = {
  f: 'issue',
  client: 0,
  role: 'app',
  manager: 'm1',
  start: T0 + 200,
  end: T0 + 400,
  outcome: 'ok',
  leaseId: LEASE,
  username: USER,
  expiresAtMs: T0 + 15 * S,
  ttlS: 15,
};
const renewed: LeaseEvent = {
  f: 'renew',
  leaseId: LEASE,
  incrementS: 0,
  start: T0 + 5 * S,
  end: T0 + 5 * S + 100,
  outcome: 'ok',
  expiresAtMs: T0 + 20 * S,
};
const finalEmpty: LeaseEvent = { f: 'final', at: T0 + 120 * S, users: [], leases: [] };

/** A history that keeps every rule: issued, logged in, renewed, dropped 2 s after its end, nothing left. */
function good(): LeaseEvent[] {
  return [
    issued,
    { f: 'login', leaseId: LEASE, username: USER, why: 'issued', start: T0 + 500, end: T0 + 600, result: 'ok' },
    renewed,
    {
      f: 'login',
      leaseId: LEASE,
      username: USER,
      why: 'renewed',
      start: T0 + 17 * S,
      end: T0 + 17 * S + 80,
      result: 'ok',
    },
    ...polls(1, 40, (s) => (s <= 22 ? [USER] : [])),
    {
      f: 'list',
      start: T0 + 2 * S,
      end: T0 + 2 * S + 20,
      leases: [{ leaseId: LEASE, username: USER, state: 'active', expiresAtMs: T0 + 15 * S }],
    },
    { f: 'list', start: T0 + 30 * S, end: T0 + 30 * S + 20, leases: [] },
    {
      f: 'fault',
      nemesis: 'kill-leader',
      targets: ['m1'],
      start: T0 + 3 * S,
      end: T0 + 5 * S,
      detail: 'kill -9 m1 (the leader), restarted',
    },
    finalEmpty,
  ];
}

const verdictOf = (events: LeaseEvent[]) => checkLeases({ info, events });
const rules = (violations: readonly LeaseViolation[]) => [...new Set(violations.map((v) => v.rule))].sort();

test('the lease checker passes a history that keeps every rule, and reads it back from its file form', () => {
  const history: LeaseHistory = { info, events: good() };
  const verdict = checkLeases(history);
  assert.deepEqual(verdict.violations, []);
  assert.equal(verdict.stats.issued.ok, 1);
  assert.equal(verdict.stats.leaderKills, 1);
  const text = `${leaseHistoryLines(history).join('\n')}\n`;
  assert.ok(isLeaseHistory(text));
  assert.ok(!isLeaseHistory('{"process":1,"type":"invoke","f":"put","key":"k","value":"v","time":1}\n'));
  const back = parseLeaseHistory(text);
  assert.deepEqual(back.info, history.info);
  assert.equal(back.events.length, history.events.length);
  assert.deepEqual(checkLeases(back).violations, []);
  assert.ok(!text.includes('password'), 'no password in a history');
});

test('(a) a user that outlives its last acknowledged end by more than the bound is a violation', () => {
  // Seen until 20 s + the bound + 2 s: its renewed end was 20 s.
  // (Without the list that no longer showed its lease: that alone would be rule b.)
  const events = good().filter((e) => e.f !== 'roles' && !(e.f === 'list' && e.leases.length === 0));
  events.push(...polls(1, 60, (s) => (s <= 20 + LEASE_BOUND_MS / S + 2 ? [USER] : [])));
  const verdict = verdictOf(events);
  assert.deepEqual(rules(verdict.violations), ['a']);
  assert.equal(verdict.violations[0]!.leaseId, LEASE);
  assert.match(verdict.violations[0]!.message, /t\+51\.0s.*renewal/);
  // A renewal of unknown outcome may have moved the end to the lease's maximum (45 s after it was issued).
  events.push({
    f: 'renew',
    leaseId: LEASE,
    incrementS: 0,
    start: T0 + 9 * S,
    end: T0 + 14 * S,
    outcome: 'info',
    error: 'timeout',
  });
  assert.deepEqual(verdictOf(events).violations, []);
});

test('(a) a user seen, or logging in, after its revocation was answered as done is a violation; within the bound of a revocation not yet done it is not', () => {
  const revoke: LeaseEvent = {
    f: 'revoke',
    leaseId: LEASE,
    start: T0 + 6 * S,
    end: T0 + 7 * S,
    outcome: 'ok',
    leaseIds: [LEASE],
    revoked: true,
  };
  const events = [...good(), revoke];
  const verdict = verdictOf(events);
  assert.deepEqual(rules(verdict.violations), ['a']);
  assert.match(verdict.violations[0]!.message, /answered as done at t\+7\.0s/);
  events.push({
    f: 'login',
    leaseId: LEASE,
    username: USER,
    why: 'revoked',
    start: T0 + 7100,
    end: T0 + 7200,
    result: 'ok',
  });
  assert.equal(verdictOf(events).violations.filter((v) => /login/.test(v.message)).length, 1);
  // Not done when answered (revoked: false): the user may stay up to the bound after.
  const notYet = [...good(), { ...revoke, revoked: false }];
  assert.deepEqual(verdictOf(notYet).violations, []);
});

test('(b) a failed request’s user past the pending grace plus the bound, a user no role makes, and a user whose lease was dropped are violations', () => {
  const orphan = 'v-batch-zzzzzzzzzzzzzzzz-1700000010';
  const failed: LeaseEvent = {
    f: 'issue',
    client: 1,
    role: 'batch',
    manager: 'm2',
    start: T0 + 9800,
    end: T0 + 11_000,
    outcome: 'info',
    error: 'Connection dropped',
  };
  // Gone within the grace plus the bound: kept.
  const within = [...good(), failed, ...polls(11, 12, () => [orphan])];
  assert.deepEqual(verdictOf(within).violations, []);
  // Still there past it: a violation.
  const lastS = 11 + (PENDING_GRACE_MS + LEASE_BOUND_MS) / S + 1;
  const past = [...good(), failed, ...polls(lastS, lastS, () => [orphan])];
  assert.deepEqual(rules(verdictOf(past).violations), ['b']);
  // Not a name Coffer makes for these roles; and one made when no request of its role was open.
  const stranger = [
    ...good(),
    ...polls(3, 3, () => ['v-other-zzzzzzzzzzzzzzzz-1700000003', 'v-batch-yyyyyyyyyyyyyyyy-1700000003']),
  ];
  const strangers = verdictOf(stranger).violations;
  assert.deepEqual(rules(strangers), ['b']);
  assert.equal(strangers.length, 2);
  // Listed as a lease, then absent from Leases.List (dropped: its database confirmed), then seen: no lease will ever revoke it.
  const dropped = [
    ...good(),
    failed,
    {
      f: 'list',
      start: T0 + 10_500,
      end: T0 + 10_520,
      leases: [
        { leaseId: LEASE, username: USER, state: 'active', expiresAtMs: T0 + 20 * S },
        {
          leaseId: 'chaos/batch/ffffffffffffffffffffffffffffffff',
          username: orphan,
          state: 'pending',
          expiresAtMs: T0 + 20 * S,
        },
      ],
    },
    {
      f: 'list',
      start: T0 + 11_500,
      end: T0 + 11_520,
      leases: [{ leaseId: LEASE, username: USER, state: 'active', expiresAtMs: T0 + 20 * S }],
    },
    ...polls(12, 12, () => [orphan]),
  ] as LeaseEvent[];
  const violations = verdictOf(dropped).violations;
  assert.deepEqual(rules(violations), ['b']);
  assert.equal(violations[0]!.leaseId, 'chaos/batch/ffffffffffffffffffffffffffffffff');
  assert.match(violations[0]!.message, /after its lease was dropped/);
});

test('(c) a user or a lease left at the end, or no final state, is a violation', () => {
  const withFinal = (final: LeaseEvent) => good().map((e) => (e.f === 'final' ? final : e));
  const userLeft = verdictOf(withFinal({ ...finalEmpty, users: [USER] } as LeaseEvent));
  assert.ok(userLeft.violations.some((v) => v.rule === 'c' && v.username === USER && v.leaseId === LEASE));
  const leaseLeft = verdictOf(
    withFinal({
      ...finalEmpty,
      leases: [{ leaseId: LEASE, username: USER, state: 'revoking', expiresAtMs: T0 }],
    } as LeaseEvent),
  );
  assert.deepEqual(rules(leaseLeft.violations), ['c']);
  assert.deepEqual(rules(verdictOf(good().filter((e) => e.f !== 'final')).violations), ['c']);
  assert.deepEqual(
    rules(verdictOf(withFinal({ ...finalEmpty, users: null, error: 'down' } as LeaseEvent)).violations),
    ['c'],
  );
});

test('(d) a login refused before the acknowledged end is a violation, unless a revocation of it was asked for first', () => {
  // Refused at 17 s: the renewal acknowledged at 5.1 s said 20 s.
  const refused = good().map((e) =>
    e.f === 'login' && e.why === 'renewed' ? { ...e, result: 'refused' as const } : e,
  );
  const verdict = verdictOf(refused);
  assert.deepEqual(rules(verdict.violations), ['d']);
  assert.match(verdict.violations[0]!.message, /2\.9 s before its acknowledged end t\+20\.0s/);
  // A prefix revocation of unknown outcome asked for before: exempt. One certainly refused: not.
  const prefix = (outcome: 'info' | 'fail'): LeaseEvent => ({
    f: 'revoke',
    prefix: 'chaos/',
    start: T0 + 16 * S,
    end: T0 + 16 * S + 10,
    outcome,
    error: 'x',
  });
  assert.deepEqual(verdictOf([...refused, prefix('info')]).violations, []);
  assert.deepEqual(rules(verdictOf([...refused, prefix('fail')]).violations), ['d']);
  // Refused after the end acknowledged when the login began: not a violation.
  const late = good().map((e) =>
    e.f === 'login' && e.why === 'renewed'
      ? { ...e, start: T0 + 20_500, end: T0 + 20_600, result: 'refused' as const }
      : e,
  );
  assert.deepEqual(verdictOf(late).violations, []);
});

test('npm run chaos -- leases --help prints its options; an unknown one exits 2', () => {
  const run = (...args: string[]) =>
    spawnSync(process.execPath, ['--import', 'tsx', 'test/chaos/cli.ts', 'leases', ...args], {
      encoding: 'utf8',
      timeout: 30_000,
    });
  const help = run('--help');
  assert.equal(help.status, 0, help.stderr);
  for (const option of ['--duration', '--seed', '--nemesis', '--history', '--check'])
    assert.ok(help.stdout.includes(option));
  const bad = run('--no-such-option');
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /--no-such-option[\s\S]*--help/);
});

// The short lease run of `npm test`: a real PostgreSQL, three manager processes, leader kills (every
// other fault), other kills, pauses and partitions (namespaces: as root), then the checker.
test('a short lease run (kills of the leader and others, pauses, partitions): no user outlives its lease or lacks one, nothing is left, no credential stops early', {
  timeout: 420_000,
}, async () => {
  const out = mkdtempSync(join(tmpdir(), 'coffer-leases-out-'));
  const historyFile = join(out, 'leases.jsonl');
  try {
    const summary = await runLeasesChaos({
      managers: 3,
      durationS: 30,
      seed: 22,
      compiled: TEST_COMPILED,
      historyFile,
      log: (line) => console.log(line),
    });
    const text = formatLeasesSummary(summary);
    console.log(text);
    const { stats } = summary.verdict;
    assert.ok(stats.leaderKills >= 2, `at least two leader kills:\n${text}`);
    assert.ok(stats.issued.ok >= 10, `credentials were issued:\n${text}`);
    assert.ok(stats.renewed.ok >= 1 && stats.revoked.byId >= 1 && stats.revoked.byPrefix >= 1, text);
    assert.ok(stats.logins.ok >= 10 && stats.rolesPolls >= 40, text);
    // The file alone tells the same.
    const again = checkLeases(parseLeaseHistory(readFileSync(historyFile, 'utf8')));
    assert.deepEqual(again.violations, summary.verdict.violations);
    assert.deepEqual(summary.verdict.violations, [], text);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});
