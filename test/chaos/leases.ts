/**
 * The leases checker (pure: a history in, violations out) and the lease run's history file.
 *
 * A lease run (leases-run.ts) records, for every credential handed out, its lease id, username and
 * the end the server stated (expiresAtMs); every renewal and revocation with its outcome; logins
 * tried with the credentials; PostgreSQL's users named `v-%` once a second (pg_roles, as the
 * harness's superuser over loopback); Leases.List once a second; and at the end, after waiting,
 * the users and leases left. The checker then holds the cluster to what docs/leases.md promises:
 *
 * (a) no user exists later than its lease's last end (the latest of: the ends acknowledged, those
 *     Leases.List showed, what each acknowledged renewal may have set, the lease's maximum after a
 *     renewal of unknown outcome) or its acknowledged revocation, plus LEASE_BOUND_MS; and none
 *     exists, nor logs in, after a revocation acknowledged as done (`revoked: true`);
 * (b) every user in PostgreSQL is one a lease was opened for: a user of a credential request that
 *     failed or timed out (its name says when it was made) is gone within the pending grace
 *     (LEASE_PENDING_GRACE_MS, or its ttl) plus the bound, and no user outlives its lease's record
 *     (seen in a Leases.List, then absent from a later one: the leader said its database confirmed);
 * (c) at the end no `v-` user is left and Leases.List is empty;
 * (d) no acknowledged credential stops working before its acknowledged end (the logins tried right
 *     after issuing, mid-life, and after a renewal), unless a revocation that may have covered it
 *     was asked for before.
 *
 * The history file is JSON lines, like the other chaos runs' (history-file.ts), one event per line
 * in time order, every time in ms since the epoch (the server's lease ends are wall-clock times):
 *
 *   {"f":"run","seed":7,"db":"chaos","roles":[{"role":"app","defaultTtlS":15,"maxTtlS":45}],"boundMs":30000,...}
 *   {"f":"issue","client":1,"role":"app","manager":"m2","start":...,"end":...,"outcome":"ok","leaseId":"chaos/app/..","username":"v-app-..","expiresAtMs":...}
 *   {"f":"renew","leaseId":"..","incrementS":0,"start":...,"end":...,"outcome":"ok","expiresAtMs":...}
 *   {"f":"revoke","prefix":"chaos/batch/","start":...,"end":...,"outcome":"ok","leaseIds":[..],"revoked":true}
 *   {"f":"login","leaseId":"..","username":"..","why":"mid-life","start":...,"end":...,"result":"ok"}
 *   {"f":"roles","start":...,"end":...,"users":["v-app-.."]}
 *   {"f":"list","start":...,"end":...,"leases":[{"leaseId":"..","username":"..","state":"active","expiresAtMs":...}]}
 *   {"f":"fault","nemesis":"kill-leader","targets":["m1"],"start":...,"end":...,"detail":".."}
 *   {"f":"final","at":...,"users":[],"leases":[]}
 *
 * `outcome` is ok, fail (certainly not done) or info (unknown); passwords are never written.
 * `npm run chaos -- --check FILE` (or `npm run chaos -- leases --check FILE`) checks one again.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { LEASE_PENDING_GRACE_MS } from '../../src/state/leases.ts';

/**
 * How long after a lease's end (or after its revocation was acknowledged) its user may still
 * exist in the database, under the faults of a lease run. Derived from the leader's duties
 * (src/server/leader-duties.ts) and the faults (nemesis.ts):
 *
 *    1 s  the leader looks for due leases once a second (LEASE_SCAN_INTERVAL_MS);
 *  + 5 s  a leader after a fault: a kill -9 of the leader costs ~0.3 s, a partition or a pause an
 *         election timeout and an election (1-3 s measured, docs/testing.md), a restart of every
 *         manager 2.6 s median, 4.9 s worst in the soaks;
 *  + 10 s a revocation that failed (a connection cut by a kill, two leaders revoking one user at
 *         once) is tried again at most 10 s later (LEASE_RETRY_MAX_MS);
 *  + 5 s  the revocation itself: 5 s to connect at most, then its statements, one lease after the
 *         other in a run of up to 64;
 *  + 5 s  faults follow each other 2-5 s apart: one more may cost one more election first;
 *  = 26 s, rounded up to 30 s.
 */
export const LEASE_BOUND_MS = 30_000;
/** A login refused this close to the lease's end does not count against (d): clocks and VALID UNTIL's rounding. */
export const LOGIN_SLACK_MS = 1_000;
/** The leader revokes a lease opened and never activated this long after (its request failed half way). */
export const PENDING_GRACE_MS = LEASE_PENDING_GRACE_MS;

export type Outcome = 'ok' | 'fail' | 'info';

export interface LeaseRole {
  readonly role: string;
  readonly defaultTtlS: number;
  readonly maxTtlS: number;
}

export interface LeaseRunInfo {
  readonly f: 'run';
  readonly seed: number;
  readonly managers: number;
  readonly durationS: number;
  readonly db: string;
  readonly roles: readonly LeaseRole[];
  readonly boundMs: number;
  readonly pendingGraceMs: number;
  /** How long making a user of the last role took at least (a pg_sleep in its creation SQL). */
  readonly createDelayMs?: number;
  /** When the workload began (ms since the epoch); times are printed relative to it. */
  readonly startedAtMs: number;
}

export interface IssueEvent {
  readonly f: 'issue';
  readonly client: number;
  readonly role: string;
  /** The manager asked. */
  readonly manager: string;
  readonly start: number;
  readonly end: number;
  readonly outcome: Outcome;
  readonly leaseId?: string;
  readonly username?: string;
  readonly expiresAtMs?: number;
  readonly ttlS?: number;
  readonly error?: string;
}

export interface RenewEvent {
  readonly f: 'renew';
  readonly leaseId: string;
  readonly incrementS: number;
  readonly start: number;
  readonly end: number;
  readonly outcome: Outcome;
  /** The lease's end the server stated (ok only). */
  readonly expiresAtMs?: number;
  readonly error?: string;
}

export interface RevokeEvent {
  readonly f: 'revoke';
  readonly leaseId?: string;
  readonly prefix?: string;
  readonly start: number;
  readonly end: number;
  readonly outcome: Outcome;
  /** ok only: the leases the revocation named, and whether the leader had revoked them all when it answered. */
  readonly leaseIds?: readonly string[];
  readonly revoked?: boolean;
  readonly error?: string;
}

export interface LoginEvent {
  readonly f: 'login';
  readonly leaseId: string;
  readonly username: string;
  /** Why it was tried: right after issuing, mid-life, after a renewal, after a revocation done. */
  readonly why: 'issued' | 'mid-life' | 'renewed' | 'revoked';
  readonly start: number;
  readonly end: number;
  /** ok: logged in; refused: the server refused the login; error: anything else (tells nothing). */
  readonly result: 'ok' | 'refused' | 'error';
  readonly error?: string;
}

export interface RolesEvent {
  readonly f: 'roles';
  readonly start: number;
  readonly end: number;
  readonly users: readonly string[];
}

export interface ListedLease {
  readonly leaseId: string;
  readonly username: string;
  readonly state: string;
  readonly expiresAtMs: number;
}

export interface ListEvent {
  readonly f: 'list';
  readonly start: number;
  readonly end: number;
  readonly leases: readonly ListedLease[];
}

export interface FaultEvent {
  readonly f: 'fault';
  readonly nemesis: string;
  readonly targets: readonly string[];
  readonly start: number;
  readonly end: number;
  readonly detail: string;
}

export interface FinalEvent {
  readonly f: 'final';
  readonly at: number;
  /** The `v-` users left, or null when PostgreSQL could not be asked. */
  readonly users: readonly string[] | null;
  /** Leases.List at the end, or null when no manager answered it. */
  readonly leases: readonly ListedLease[] | null;
  readonly error?: string;
}

export type LeaseEvent =
  | IssueEvent
  | RenewEvent
  | RevokeEvent
  | LoginEvent
  | RolesEvent
  | ListEvent
  | FaultEvent
  | FinalEvent;

export interface LeaseHistory {
  readonly info: LeaseRunInfo;
  readonly events: readonly LeaseEvent[];
}

export interface LeaseViolation {
  readonly rule: 'a' | 'b' | 'c' | 'd';
  readonly leaseId: string | null;
  readonly username: string | null;
  readonly message: string;
}

export interface LeaseVerdict {
  readonly violations: readonly LeaseViolation[];
  readonly stats: {
    readonly issued: { readonly ok: number; readonly fail: number; readonly info: number };
    readonly renewed: { readonly ok: number; readonly other: number };
    readonly revoked: { readonly byId: number; readonly byPrefix: number; readonly other: number };
    readonly logins: { readonly ok: number; readonly refused: number; readonly error: number };
    readonly usersSeen: number;
    readonly rolesPolls: number;
    readonly listPolls: number;
    readonly faults: number;
    readonly leaderKills: number;
  };
}

const eventTime = (e: LeaseEvent): number => (e.f === 'final' ? e.at : e.start);

/** `v-ROLE-RANDOM-SECONDS` (newUsername in postgres-engine.ts): the role and the second it was made, or null. */
export function parseUsername(username: string): { role: string; madeAtS: number } | null {
  const m = /^v-(.+)-[a-z0-9]{16}-(\d+)$/.exec(username);
  return m === null ? null : { role: m[1]!, madeAtS: Number(m[2]) };
}

/** Checks a lease run's history against rules (a) to (d) above. */
export function checkLeases(history: LeaseHistory): LeaseVerdict {
  const { info } = history;
  const events = [...history.events].sort((a, b) => eventTime(a) - eventTime(b));
  const at = (ms: number): string => `t+${((ms - info.startedAtMs) / 1000).toFixed(1)}s`;
  const roles = new Map(info.roles.map((r) => [r.role, r]));
  const issues = events.filter((e): e is IssueEvent => e.f === 'issue');
  const renews = events.filter((e): e is RenewEvent => e.f === 'renew');
  const revokes = events.filter((e): e is RevokeEvent => e.f === 'revoke');
  const logins = events.filter((e): e is LoginEvent => e.f === 'login');
  const polls = events.filter((e): e is RolesEvent => e.f === 'roles');
  const lists = events.filter((e): e is ListEvent => e.f === 'list');
  const faults = events.filter((e): e is FaultEvent => e.f === 'fault');
  const final = events.find((e): e is FinalEvent => e.f === 'final');
  const violations: LeaseViolation[] = [];
  const violation = (rule: LeaseViolation['rule'], leaseId: string | null, username: string | null, text: string) =>
    violations.push({ rule, leaseId, username, message: text });

  const acked = new Map<string, IssueEvent>();
  for (const issue of issues)
    if (issue.outcome === 'ok' && issue.leaseId !== undefined && issue.username !== undefined)
      acked.set(issue.leaseId, issue);
  const ackedByUser = new Map([...acked.values()].map((issue) => [issue.username!, issue]));
  const renewsOf = new Map<string, RenewEvent[]>();
  for (const renew of renews) renewsOf.set(renew.leaseId, [...(renewsOf.get(renew.leaseId) ?? []), renew]);
  /** Revocations of a lease: by its id, or by a prefix of it (named in the answer when ok; any outcome). */
  const revokesOf = (leaseId: string): RevokeEvent[] =>
    revokes.filter((r) =>
      r.leaseId !== undefined
        ? r.leaseId === leaseId
        : r.outcome === 'ok'
          ? (r.leaseIds ?? []).includes(leaseId)
          : leaseId.startsWith(r.prefix ?? '\u0000'),
    );
  const maxTtlMs = (role: string): number => (roles.get(role)?.maxTtlS ?? 0) * 1000;
  const defaultTtlMs = (role: string): number => (roles.get(role)?.defaultTtlS ?? 0) * 1000;

  // (a) Users of acknowledged credentials: gone by their lease's last end or acknowledged revocation, plus the bound.
  for (const [leaseId, issue] of acked) {
    const username = issue.username!;
    let endMs = issue.expiresAtMs ?? 0;
    let endWhy = 'the end stated when it was issued';
    const later = (ms: number, why: string): void => {
      if (ms > endMs) {
        endMs = ms;
        endWhy = why;
      }
    };
    // The lease's maximum: its role's max ttl from when it was opened (before the answer).
    const capMs = issue.end + maxTtlMs(issue.role);
    for (const renew of renewsOf.get(leaseId) ?? []) {
      if (renew.outcome === 'ok') {
        later(renew.expiresAtMs ?? 0, `the end acknowledged by a renewal at ${at(renew.end)}`);
        // What the renewal may have set: the answer can state the end from before it (it is read
        // from the answering manager's state, which may not have applied the renewal yet).
        const incrementMs = renew.incrementS > 0 ? renew.incrementS * 1000 : defaultTtlMs(issue.role);
        later(Math.min(renew.end + incrementMs, capMs), `the end a renewal at ${at(renew.start)} may have set`);
      } else if (renew.outcome === 'info')
        later(capMs, `the lease's maximum (a renewal at ${at(renew.start)} has an unknown outcome)`);
    }
    for (const list of lists)
      for (const lease of list.leases)
        if (lease.leaseId === leaseId) later(lease.expiresAtMs, `its end as Leases.List said at ${at(list.end)}`);
    // The moment the user must be gone by, less the bound: its last end, or its revocation's acknowledgement.
    let baseMs = endMs;
    let baseWhy = `${endWhy} (${at(endMs)})`;
    const covering = revokesOf(leaseId).filter((r) => r.outcome === 'ok');
    const firstAck = covering.reduce<RevokeEvent | null>((a, r) => (a === null || r.end < a.end ? r : a), null);
    if (firstAck !== null && firstAck.end < baseMs) {
      baseMs = firstAck.end;
      baseWhy = `its revocation (${firstAck.leaseId === undefined ? `prefix ${firstAck.prefix}` : 'by id'}) was acknowledged (${at(firstAck.end)})`;
    }
    const late = polls.find((p) => p.start > baseMs + info.boundMs && p.users.includes(username));
    if (late !== undefined)
      violation(
        'a',
        leaseId,
        username,
        `user still in pg_roles at ${at(late.start)}, ${((late.start - baseMs) / 1000).toFixed(1)} s after ${baseWhy} (bound ${info.boundMs / 1000} s)`,
      );
    const done = covering
      .filter((r) => r.revoked === true)
      .reduce<RevokeEvent | null>((a, r) => (a === null || r.end < a.end ? r : a), null);
    if (done !== null) {
      const seen = polls.find((p) => p.start > done.end && p.users.includes(username));
      if (seen !== undefined && (late === undefined || seen !== late))
        violation(
          'a',
          leaseId,
          username,
          `user still in pg_roles at ${at(seen.start)}, after its revocation was answered as done at ${at(done.end)}`,
        );
      const login = logins.find((l) => l.leaseId === leaseId && l.start > done.end && l.result === 'ok');
      if (login !== undefined)
        violation(
          'a',
          leaseId,
          username,
          `a login at ${at(login.start)} succeeded after its revocation was answered as done at ${at(done.end)}`,
        );
    }
  }

  // (b) Every user is one a lease was opened for, and gone when its lease is.
  const usersSeen = new Map<string, RolesEvent[]>();
  for (const poll of polls) for (const user of poll.users) usersSeen.set(user, [...(usersSeen.get(user) ?? []), poll]);
  for (const [user, seen] of usersSeen) {
    if (ackedByUser.has(user)) continue;
    const parsed = parseUsername(user);
    const listed = lists.flatMap((l) => l.leases).find((l) => l.username === user);
    const leaseNote = listed === undefined ? 'its lease never seen in Leases.List' : `lease ${listed.leaseId}`;
    if (parsed === null || !roles.has(parsed.role)) {
      violation('b', listed?.leaseId ?? null, user, `a user no role of this run makes, seen at ${at(seen[0]!.start)}`);
      continue;
    }
    const madeMs = parsed.madeAtS * 1000;
    // Its name holds the second it was made (the cluster's clock): a request of its role must have been open then.
    const request = issues.find(
      (e) => e.role === parsed.role && e.start <= madeMs + 2000 && (e.outcome === 'info' || e.end >= madeMs - 1000),
    );
    if (request === undefined)
      violation(
        'b',
        listed?.leaseId ?? null,
        user,
        `no credential request of role ${parsed.role} was open when this user was made (${at(madeMs)}); ${leaseNote}`,
      );
    const deadlineMs = madeMs + 1000 + Math.max(defaultTtlMs(parsed.role), info.pendingGraceMs) + info.boundMs;
    const late = seen.find((p) => p.start > deadlineMs);
    if (late !== undefined)
      violation(
        'b',
        listed?.leaseId ?? null,
        user,
        `user of a credential request that failed or timed out (made ${at(madeMs)}) still in pg_roles at ${at(late.start)}, past the pending grace ${info.pendingGraceMs / 1000} s + bound ${info.boundMs / 1000} s; ${leaseNote}`,
      );
  }
  // A user outlives its lease's record: listed once, absent from a later list, then still in pg_roles.
  const firstListed = new Map<string, { list: ListEvent; lease: ListedLease }>();
  for (const list of lists)
    for (const lease of list.leases)
      if (!firstListed.has(lease.username)) firstListed.set(lease.username, { list, lease });
  for (const [user, { list: seenIn, lease }] of firstListed) {
    const gone = lists.find((l) => l.start > seenIn.end && !l.leases.some((x) => x.leaseId === lease.leaseId));
    if (gone === undefined) continue;
    const after = (usersSeen.get(user) ?? []).find((p) => p.start > gone.end);
    if (after !== undefined)
      violation(
        'b',
        lease.leaseId,
        user,
        `user still in pg_roles at ${at(after.start)} after its lease was dropped (absent from Leases.List at ${at(gone.end)}): a user without a lease, never to be revoked`,
      );
  }

  // (c) Nothing left at the end.
  if (final === undefined) violation('c', null, null, 'the run has no final state (users and leases left)');
  else {
    if (final.users === null)
      violation('c', null, null, `PostgreSQL could not be asked for the users left (${final.error ?? 'no answer'})`);
    else
      for (const user of final.users) {
        const issue = ackedByUser.get(user);
        const listed = lists.flatMap((l) => l.leases).find((l) => l.username === user);
        violation(
          'c',
          issue?.leaseId ?? listed?.leaseId ?? null,
          user,
          `user left at the end (${at(final.at)})${issue !== undefined ? '' : listed === undefined ? ', of no acknowledged credential, its lease never seen in Leases.List' : ', of a credential request that failed or timed out'}`,
        );
      }
    if (final.leases === null)
      violation('c', null, null, `no manager answered Leases.List at the end (${final.error ?? 'no answer'})`);
    else
      for (const lease of final.leases)
        violation(
          'c',
          lease.leaseId,
          lease.username,
          `lease left at the end (${at(final.at)}), ${lease.state}, its end ${at(lease.expiresAtMs)}`,
        );
  }

  // (d) Acknowledged credentials work until their acknowledged end.
  for (const login of logins) {
    if (login.result !== 'refused') continue;
    const issue = acked.get(login.leaseId);
    if (issue === undefined) continue;
    let endMs = issue.expiresAtMs ?? 0;
    for (const renew of renewsOf.get(login.leaseId) ?? [])
      if (renew.outcome === 'ok' && renew.end <= login.start) endMs = Math.max(endMs, renew.expiresAtMs ?? 0);
    if (login.end >= endMs - LOGIN_SLACK_MS) continue;
    const exempt = revokesOf(login.leaseId).find((r) => r.outcome !== 'fail' && r.start <= login.end);
    if (exempt !== undefined) continue;
    violation(
      'd',
      login.leaseId,
      login.username,
      `login refused at ${at(login.start)}-${at(login.end)} (${login.why}), ${((endMs - login.end) / 1000).toFixed(1)} s before its acknowledged end ${at(endMs)}; no revocation of it was asked for`,
    );
  }

  const count = <T>(xs: readonly T[], p: (x: T) => boolean) => xs.filter(p).length;
  return {
    violations,
    stats: {
      issued: {
        ok: count(issues, (e) => e.outcome === 'ok'),
        fail: count(issues, (e) => e.outcome === 'fail'),
        info: count(issues, (e) => e.outcome === 'info'),
      },
      renewed: { ok: count(renews, (e) => e.outcome === 'ok'), other: count(renews, (e) => e.outcome !== 'ok') },
      revoked: {
        byId: count(revokes, (e) => e.outcome === 'ok' && e.leaseId !== undefined),
        byPrefix: count(revokes, (e) => e.outcome === 'ok' && e.prefix !== undefined),
        other: count(revokes, (e) => e.outcome !== 'ok'),
      },
      logins: {
        ok: count(logins, (e) => e.result === 'ok'),
        refused: count(logins, (e) => e.result === 'refused'),
        error: count(logins, (e) => e.result === 'error'),
      },
      usersSeen: usersSeen.size,
      rolesPolls: polls.length,
      listPolls: lists.length,
      faults: faults.length,
      leaderKills: count(faults, (f) => f.nemesis === 'kill-leader'),
    },
  };
}

/** The verdict as lines: the counts, then each violation with its lease id and times. */
export function formatLeaseVerdict(verdict: LeaseVerdict, info: LeaseRunInfo): string[] {
  const s = verdict.stats;
  const lines = [
    `credentials: ${s.issued.ok} issued, ${s.issued.fail} refused, ${s.issued.info} unknown; renewals ${s.renewed.ok} ok, ${s.renewed.other} not; revocations ${s.revoked.byId} by id, ${s.revoked.byPrefix} by prefix, ${s.revoked.other} not answered ok`,
    `logins tried: ${s.logins.ok} ok, ${s.logins.refused} refused, ${s.logins.error} inconclusive; ${s.usersSeen} users seen in ${s.rolesPolls} polls of pg_roles, ${s.listPolls} of Leases.List`,
    `faults: ${s.faults} (${s.leaderKills} leader kills); bound ${info.boundMs / 1000} s, pending grace ${info.pendingGraceMs / 1000} s`,
  ];
  const rules: Record<LeaseViolation['rule'], string> = {
    a: 'user outlived its lease',
    b: 'user without a lease',
    c: 'left at the end',
    d: 'credential stopped working early',
  };
  for (const v of verdict.violations)
    lines.push(
      `VIOLATION (${v.rule}: ${rules[v.rule]}) lease ${v.leaseId ?? '(unknown)'} user ${v.username ?? '(none)'}: ${v.message}`,
    );
  lines.push(
    verdict.violations.length === 0
      ? 'leases: no user outlived its lease, none without one, nothing left, no credential stopped early'
      : `leases: ${verdict.violations.length} VIOLATIONS (${[...new Set(verdict.violations.map((v) => v.rule))].join(', ')})`,
  );
  return lines;
}

/** The history as JSON lines: the run's line first, then the events in time order. */
export function leaseHistoryLines(history: LeaseHistory): string[] {
  const events = [...history.events].sort((a, b) => eventTime(a) - eventTime(b));
  return [JSON.stringify(history.info), ...events.map((e) => JSON.stringify(e))];
}

export function writeLeaseHistory(file: string, history: LeaseHistory): void {
  writeFileSync(file, `${leaseHistoryLines(history).join('\n')}\n`);
}

/** Whether a history file is a lease run's (its first line says `"f":"run"`). */
export function isLeaseHistory(text: string): boolean {
  const first = text.slice(0, text.indexOf('\n') === -1 ? text.length : text.indexOf('\n'));
  try {
    return (JSON.parse(first) as { f?: unknown }).f === 'run';
  } catch {
    return false;
  }
}

export function parseLeaseHistory(text: string): LeaseHistory {
  const lines = text.split('\n').filter((line) => line.trim() !== '');
  if (lines.length === 0) throw new Error('an empty lease history');
  const info = JSON.parse(lines[0]!) as LeaseRunInfo;
  if (info.f !== 'run') throw new Error('line 1: a lease history starts with its run line ("f":"run")');
  const kinds = new Set(['issue', 'renew', 'revoke', 'login', 'roles', 'list', 'fault', 'final']);
  const events = lines.slice(1).map((line, n) => {
    const event = JSON.parse(line) as LeaseEvent;
    if (!kinds.has(event.f)) throw new Error(`line ${n + 2}: unknown event "${String(event.f)}"`);
    return event;
  });
  return { info, events };
}

export function readLeaseHistory(file: string): LeaseHistory {
  return parseLeaseHistory(readFileSync(file, 'utf8'));
}
