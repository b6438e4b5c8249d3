/**
 * Dynamic database credentials, as the replicated state holds them: the databases Coffer may make
 * users in (an admin connection string each), the roles (SQL templates and lifetimes), and the
 * leases of the users it made. A lease is opened (pending) before its user is made in the
 * database and activated after, so a manager that dies between the two leaves a lease the leader
 * revokes, never a user nobody knows of. The leader revokes a lease when it ends (or is asked to),
 * and drops it only once the database confirmed; until then every manager knows it is due.
 *
 * Held by the access part (its commands are `access.db-*` and `access.lease-*`), as a book of its
 * own with its image inside the access part's.
 */

import {
  STATIC_ROLE_OPS,
  StaticRoleBook,
  checkedStaticRoleCommand,
  serverOfUrl,
  type StaticRoleCommand,
} from './static-roles.ts';

export const DB_NAME_PATTERN = /^[a-z][a-z0-9_-]{0,63}$/;
export const LEASE_ID_PATTERN = /^[a-z][a-z0-9_-]{0,63}\/[a-z][a-z0-9_-]{0,63}\/[0-9a-f]{32}$/;
/** A database user Coffer made: `v-ROLE-RANDOM-SECONDS`, lower case, at most 63 characters. */
export const LEASE_USERNAME_PATTERN = /^v-[a-z0-9_-]{1,61}$/;
export const DATABASES_MAX = 256;
export const DB_ROLES_MAX = 4096;
export const LEASES_MAX = 100_000;
export const DB_SQL_CHARS_MAX = 16 * 1024;
export const DB_URL_CHARS_MAX = 4096;
/** Lease lifetimes: at least 10 s, at most 30 days. */
export const LEASE_TTL_SECONDS_MIN = 10;
export const LEASE_TTL_SECONDS_MAX = 30 * 24 * 3600;
/**
 * A lease opened and never activated is revoked this long after it was opened (its manager died
 * while making the user, or the lease was revoked while it was being made), and not sooner: a
 * creation commits only within LEASE_CREATE_WINDOW_MS of the lease's opening, so by then the user
 * exists or never will, and the revocation finds it.
 */
export const LEASE_PENDING_GRACE_MS = 60_000;
/** The manager making a lease's user sends its statements and COMMIT only within this long of the lease's opening. */
export const LEASE_CREATE_WINDOW_MS = 30_000;
/** Leases one revoke command names at most. */
export const LEASE_IDS_PER_COMMAND_MAX = 256;

export interface Database {
  readonly name: string;
  /** The admin connection string: a secret (sealed in the log, snapshots and backups; never shown). */
  readonly url: string;
}

export interface DbRole {
  readonly db: string;
  readonly role: string;
  readonly creationSql: string;
  /** '' = the engine's default (revoke everything, drop the user). */
  readonly revocationSql: string;
  /** '' = the engine's default (move VALID UNTIL). */
  readonly renewSql: string;
  readonly defaultTtlSeconds: number;
  readonly maxTtlSeconds: number;
}

export type LeaseState = 'pending' | 'active' | 'revoking';

export interface Lease {
  /** DB/ROLE/32 hex: the path a prefix revocation matches. */
  readonly id: string;
  readonly db: string;
  readonly role: string;
  readonly username: string;
  /** The identity that asked for it (it may renew and revoke it). */
  readonly owner: string;
  readonly issuedAtMs: number;
  expiresAtMs: number;
  readonly maxExpiresAtMs: number;
  state: LeaseState;
  /**
   * Whether its user was reported made (lease-activate). One that never was may still be in the
   * making (a transaction not yet committed): it is revoked only after the pending grace, when no
   * creation may commit any more (LEASE_CREATE_WINDOW_MS). Absent in images from before: taken as made.
   */
  activated?: boolean;
}

export type LeaseCommand =
  | { readonly op: 'db-configure'; readonly name: string; readonly url: string }
  | { readonly op: 'db-remove'; readonly name: string }
  | { readonly op: 'db-role-put'; readonly name: string; readonly dbRole: DbRole }
  | { readonly op: 'db-role-remove'; readonly name: string }
  | {
      readonly op: 'lease-open';
      readonly name: string;
      readonly db: string;
      readonly role: string;
      readonly username: string;
      readonly owner: string;
      readonly nowMs: number;
      readonly expiresAtMs: number;
      readonly maxExpiresAtMs: number;
    }
  | { readonly op: 'lease-activate'; readonly name: string }
  | { readonly op: 'lease-renew'; readonly name: string; readonly expiresAtMs: number }
  /** Asked for (a client, or the leader for a pending lease that was never activated): the leader revokes them. */
  | { readonly op: 'lease-revoke'; readonly name: ''; readonly ids: readonly string[] }
  /**
   * The leader found these leases ended by `endedByMs` (its clock): those still ended when this
   * applies are revoked. One renewed meanwhile (its renewal applied first) stays active: a renewal
   * the cluster acknowledged is never undone by a revocation decided before it.
   */
  | { readonly op: 'lease-expire'; readonly name: ''; readonly ids: readonly string[]; readonly endedByMs: number }
  /** The leader's report that the database no longer has these users: the leases go. */
  | { readonly op: 'lease-revoked'; readonly name: ''; readonly ids: readonly string[] }
  /** Static roles: existing users whose passwords are rotated (static-roles.ts). */
  | StaticRoleCommand;

export const LEASE_OPS: ReadonlySet<string> = new Set([
  'db-configure',
  'db-remove',
  'db-role-put',
  'db-role-remove',
  'lease-open',
  'lease-activate',
  'lease-renew',
  'lease-revoke',
  'lease-expire',
  'lease-revoked',
  ...STATIC_ROLE_OPS,
]);

export type LeaseOutcome =
  | { readonly ok: true }
  | { readonly refused: 'NOT_FOUND' | 'PRECONDITION' | 'LIMIT'; readonly reason: string };

const OK: LeaseOutcome = Object.freeze({ ok: true });

/** The book: applies lease commands (already checked in form), answers reads. Deterministic: no clock, no randomness. */
export class LeaseBook {
  readonly databases = new Map<string, Database>();
  readonly roles = new Map<string, DbRole>();
  readonly leases = new Map<string, Lease>();
  readonly statics = new StaticRoleBook();

  apply(command: LeaseCommand): LeaseOutcome {
    switch (command.op) {
      case 'static-role-put':
      case 'static-role-remove':
      case 'static-rotate-request':
      case 'static-rotate-begin':
      case 'static-rotate-done':
        return this.statics.apply(command, (db) => {
          const database = this.databases.get(db);
          return database === undefined ? undefined : serverOfUrl(database.url);
        });
      case 'db-configure':
        if (!this.databases.has(command.name) && this.databases.size >= DATABASES_MAX)
          return { refused: 'LIMIT', reason: `at most ${DATABASES_MAX} databases` };
        this.databases.set(command.name, { name: command.name, url: command.url });
        return OK;
      case 'db-remove': {
        if (!this.databases.has(command.name))
          return { refused: 'NOT_FOUND', reason: `database "${command.name}" is not configured` };
        const held = [...this.leases.values()].filter((l) => l.db === command.name).length;
        if (held > 0)
          return {
            refused: 'PRECONDITION',
            reason: `database "${command.name}" has ${held} leases: revoke them first (coffer lease revoke --prefix ${command.name})`,
          };
        const rotated = [...this.statics.roles.values()].filter((r) => r.db === command.name).length;
        if (rotated > 0)
          return {
            refused: 'PRECONDITION',
            reason: `database "${command.name}" has ${rotated} static roles: remove them first (coffer db static rm)`,
          };
        this.databases.delete(command.name);
        for (const key of [...this.roles.keys()]) if (key.startsWith(`${command.name}/`)) this.roles.delete(key);
        return OK;
      }
      case 'db-role-put':
        if (!this.databases.has(command.dbRole.db))
          return { refused: 'NOT_FOUND', reason: `database "${command.dbRole.db}" is not configured` };
        if (!this.roles.has(command.name) && this.roles.size >= DB_ROLES_MAX)
          return { refused: 'LIMIT', reason: `at most ${DB_ROLES_MAX} database roles` };
        this.roles.set(command.name, command.dbRole);
        return OK;
      case 'db-role-remove':
        if (!this.roles.delete(command.name))
          return { refused: 'NOT_FOUND', reason: `database role "${command.name}" does not exist` };
        return OK;
      case 'lease-open': {
        const role = this.roles.get(`${command.db}/${command.role}`);
        if (role === undefined)
          return { refused: 'NOT_FOUND', reason: `database role "${command.db}/${command.role}" does not exist` };
        if (this.leases.size >= LEASES_MAX)
          return { refused: 'LIMIT', reason: `at most ${LEASES_MAX} leases: revoke some, or wait for them to end` };
        if (this.leases.has(command.name)) return { refused: 'PRECONDITION', reason: 'that lease id is taken' };
        this.leases.set(command.name, {
          id: command.name,
          db: command.db,
          role: command.role,
          username: command.username,
          owner: command.owner,
          issuedAtMs: command.nowMs,
          expiresAtMs: command.expiresAtMs,
          maxExpiresAtMs: command.maxExpiresAtMs,
          state: 'pending',
          activated: false,
        });
        return OK;
      }
      case 'lease-activate': {
        const lease = this.leases.get(command.name);
        if (lease === undefined || lease.state !== 'pending')
          return { refused: 'NOT_FOUND', reason: `lease ${command.name} is not pending (revoked meanwhile?)` };
        lease.state = 'active';
        lease.activated = true;
        return OK;
      }
      case 'lease-renew': {
        const lease = this.leases.get(command.name);
        if (lease === undefined || lease.state !== 'active')
          return { refused: 'NOT_FOUND', reason: `lease ${command.name} does not exist or is being revoked` };
        // Never past the maximum, never backwards.
        lease.expiresAtMs = Math.max(lease.expiresAtMs, Math.min(command.expiresAtMs, lease.maxExpiresAtMs));
        return OK;
      }
      case 'lease-revoke':
        for (const id of command.ids) {
          const lease = this.leases.get(id);
          if (lease !== undefined) lease.state = 'revoking';
        }
        return OK;
      case 'lease-expire':
        for (const id of command.ids) {
          const lease = this.leases.get(id);
          if (lease !== undefined && lease.state === 'active' && lease.expiresAtMs <= command.endedByMs)
            lease.state = 'revoking';
        }
        return OK;
      case 'lease-revoked':
        for (const id of command.ids) this.leases.delete(id);
        return OK;
    }
  }

  /**
   * Leases the leader must revoke at `nowMs`: asked for, or ended; oldest end first, at most
   * `max`. A lease whose user was never reported made is due only `pendingGraceMs` after it was
   * opened, whatever else: its user may still be in the making, and a revocation that found no
   * user before the creation committed would leave one that no lease names. After the grace
   * (longer than the window a creation may commit in), the user exists or never will.
   */
  due(nowMs: number, pendingGraceMs: number, max: number): Lease[] {
    const due: Lease[] = [];
    for (const lease of this.leases.values()) {
      const made = lease.activated !== false;
      if (!made && lease.issuedAtMs + pendingGraceMs > nowMs) continue;
      if (!made || lease.state === 'revoking' || lease.expiresAtMs <= nowMs) due.push(lease);
    }
    return due.sort((a, b) => a.expiresAtMs - b.expiresAtMs || a.id.localeCompare(b.id)).slice(0, max);
  }

  /** Leases whose id starts with `prefix` (a database, or DB/ROLE), in id order. */
  withPrefix(prefix: string): Lease[] {
    return [...this.leases.values()].filter((l) => l.id.startsWith(prefix)).sort((a, b) => a.id.localeCompare(b.id));
  }

  snapshot(): unknown {
    return [
      [...this.databases.values()],
      [...this.roles.entries()],
      [...this.leases.values()].map((l) => ({ ...l })),
      this.statics.snapshot(),
    ];
  }

  restore(image: unknown): void {
    // Images from before static roles have three elements.
    const [databases = [], roles = [], leases = [], statics = []] = (image ?? []) as [
      Database[]?,
      Array<[string, DbRole]>?,
      Lease[]?,
      unknown?,
    ];
    this.databases.clear();
    for (const db of databases) this.databases.set(db.name, db);
    this.roles.clear();
    for (const [name, role] of roles) this.roles.set(name, role);
    this.leases.clear();
    for (const lease of leases) this.leases.set(lease.id, { ...lease });
    this.statics.restore(statics);
  }
}

const text = (value: unknown, max: number): value is string => typeof value === 'string' && value.length <= max;
const count = (value: unknown): value is number =>
  typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
const ids = (value: unknown): value is string[] =>
  Array.isArray(value) &&
  value.length <= LEASE_IDS_PER_COMMAND_MAX &&
  value.every((id) => typeof id === 'string' && LEASE_ID_PATTERN.test(id));

/** What is wrong with a database role as written, or null. */
export function dbRoleProblem(role: Record<string, unknown>): string | null {
  const { db, role: name, creationSql, revocationSql, renewSql, defaultTtlSeconds, maxTtlSeconds } = role;
  if (!text(db, 64) || !DB_NAME_PATTERN.test(db) || !text(name, 64) || !DB_NAME_PATTERN.test(name))
    return 'a database and a role name are each a lower-case letter then up to 63 of [a-z0-9_-]';
  if (!text(creationSql, DB_SQL_CHARS_MAX) || creationSql.trim() === '' || !creationSql.includes('{{name}}'))
    return `creation SQL: 1 to ${DB_SQL_CHARS_MAX} characters, naming the user as {{name}}`;
  if (!text(revocationSql, DB_SQL_CHARS_MAX) || !text(renewSql, DB_SQL_CHARS_MAX))
    return `revocation and renew SQL: at most ${DB_SQL_CHARS_MAX} characters`;
  if (!count(defaultTtlSeconds) || !count(maxTtlSeconds)) return 'ttls are whole seconds';
  if (
    defaultTtlSeconds < LEASE_TTL_SECONDS_MIN ||
    maxTtlSeconds < defaultTtlSeconds ||
    maxTtlSeconds > LEASE_TTL_SECONDS_MAX
  )
    return `default ttl at least ${LEASE_TTL_SECONDS_MIN} s, max ttl at least the default and at most ${LEASE_TTL_SECONDS_MAX} s`;
  return null;
}

/** A decoded lease command checked field by field (it came through the log), or what is wrong. */
export function checkedLeaseCommand(c: Record<string, unknown>): LeaseCommand | string {
  if (STATIC_ROLE_OPS.has(String(c['op']))) return checkedStaticRoleCommand(c);
  const name = c['name'];
  if (typeof name !== 'string') return 'a name is required';
  switch (c['op']) {
    case 'db-configure':
      if (!DB_NAME_PATTERN.test(name)) return 'a database name is a lower-case letter then up to 63 of [a-z0-9_-]';
      if (!text(c['url'], DB_URL_CHARS_MAX) || !/^postgres(ql)?:\/\//.test(c['url']))
        return 'a database url is postgres://...';
      return { op: 'db-configure', name, url: c['url'] };
    case 'db-remove':
      return { op: 'db-remove', name };
    case 'db-role-put': {
      const role = c['dbRole'] as Record<string, unknown> | null;
      if (typeof role !== 'object' || role === null || `${String(role['db'])}/${String(role['role'])}` !== name)
        return 'a database role names itself as DB/ROLE';
      const problem = dbRoleProblem(role);
      return problem ?? { op: 'db-role-put', name, dbRole: role as unknown as DbRole };
    }
    case 'db-role-remove':
      return { op: 'db-role-remove', name };
    case 'lease-open': {
      const { db, role, username, owner, nowMs, expiresAtMs, maxExpiresAtMs } = c;
      if (!LEASE_ID_PATTERN.test(name) || !name.startsWith(`${String(db)}/${String(role)}/`))
        return 'a lease id is DB/ROLE/32 hex';
      if (typeof username !== 'string' || !LEASE_USERNAME_PATTERN.test(username)) return 'a lease names its user';
      if (!text(owner, 512) || owner === '') return 'a lease names its owner';
      if (!count(nowMs) || !count(expiresAtMs) || !count(maxExpiresAtMs) || expiresAtMs > maxExpiresAtMs)
        return 'a lease needs its times, its end within its maximum';
      return {
        op: 'lease-open',
        name,
        db: db as string,
        role: role as string,
        username,
        owner,
        nowMs,
        expiresAtMs,
        maxExpiresAtMs,
      };
    }
    case 'lease-activate':
      return LEASE_ID_PATTERN.test(name) ? { op: 'lease-activate', name } : 'a lease id is DB/ROLE/32 hex';
    case 'lease-renew':
      if (!LEASE_ID_PATTERN.test(name) || !count(c['expiresAtMs'])) return 'a renewal names its lease and its new end';
      return { op: 'lease-renew', name, expiresAtMs: c['expiresAtMs'] };
    case 'lease-revoke':
    case 'lease-revoked':
      if (name !== '' || !ids(c['ids'])) return `at most ${LEASE_IDS_PER_COMMAND_MAX} lease ids`;
      return { op: c['op'], name: '', ids: c['ids'] };
    case 'lease-expire':
      if (name !== '' || !ids(c['ids']) || !count(c['endedByMs']))
        return `at most ${LEASE_IDS_PER_COMMAND_MAX} lease ids and the time they had ended by`;
      return { op: 'lease-expire', name: '', ids: c['ids'], endedByMs: c['endedByMs'] };
    default:
      return `unknown lease operation ${String(c['op']).slice(0, 40)}`;
  }
}
