/**
 * Static database roles, as the replicated state holds them: an existing database user whose
 * password Coffer sets, every `rotationPeriodSeconds` and on demand, and keeps as the secret
 * `sys/db/DB/static/ROLE` (its `current` and `previous` labels, as any secret's).
 *
 * A rotation is two-phase, so a crash anywhere leaves a state the next leader finishes:
 *   1. `static-rotate-begin` puts the new password in the log (pending), with the secret's
 *      version it will follow;
 *   2. the leader sets it in the database (the same password again is harmless);
 *   3. it writes the secret's next version, compare-and-set on that version (a second write of
 *      the same rotation is refused, and so is known to be done);
 *   4. `static-rotate-done` clears the pending password.
 * While a rotation is pending, the secret is not served: between steps 2 and 3 the database
 * accepts only the new password, and the secret still holds the old one.
 *
 * A deposed leader may still be on its way to the database with a pending password. So a manager
 * sends a rotation's statements only within STATIC_ROTATION_SEND_WINDOW_MS of its begin (by the
 * cluster's clock), and a rotation begins (or begins again, when one never finished) only
 * STATIC_ROTATION_SPACING_MS after the previous began: an old statement cannot land after a newer
 * password was set.
 */

/** A rotation's statements are sent within this long of its begin; after it, it begins again. */
export const STATIC_ROTATION_SEND_WINDOW_MS = 10_000;
/** Between the begins of two rotations of one role at least this long (the window, plus a margin for pauses and clock error). */
export const STATIC_ROTATION_SPACING_MS = 30_000;
/** Rotation periods: at least a minute, at most a year. */
export const STATIC_ROTATION_PERIOD_SECONDS_MIN = 60;
export const STATIC_ROTATION_PERIOD_SECONDS_MAX = 365 * 24 * 3600;
export const STATIC_ROLES_MAX = 1024;
/** What a static role's username may be: it goes into SQL inside "..." and '...', so no quote of either kind. */
export const STATIC_USERNAME_PATTERN = /^[A-Za-z_][A-Za-z0-9_.-]{0,62}$/;
/** A pending password, as the leader makes them (newPassword): letters and digits. */
const PASSWORD_PATTERN = /^[A-Za-z0-9]{16,128}$/;
const SQL_CHARS_MAX = 16 * 1024;
const DB_NAME_PATTERN = /^[a-z][a-z0-9_-]{0,63}$/;

/** The secret that holds a static role's password. */
export function staticSecretName(db: string, role: string): string {
  return `sys/db/${db}/static/${role}`;
}

/** Names of that form: only rotations write them (clients may read, delete and destroy them). */
export const STATIC_SECRET_NAME_PATTERN = /^sys\/db\/[^/]+\/static\/[^/]+$/;

export interface StaticRoleConfig {
  readonly db: string;
  readonly role: string;
  /** The existing database user whose password is rotated. */
  readonly username: string;
  /** '' = the engine's default (ALTER ROLE ... WITH PASSWORD). {{name}} and {{password}}. */
  readonly rotationSql: string;
  readonly rotationPeriodSeconds: number;
}

export interface PendingRotation {
  /** The user it sets the password of (the role's when it began; the role's user cannot change while it is pending). */
  readonly username: string;
  readonly password: string;
  readonly startedAtMs: number;
  /** The secret's last version when it began: its write is compare-and-set on it. */
  readonly baseVersion: number;
}

export interface StaticRole extends StaticRoleConfig {
  /** When the last rotation began (0: never). */
  lastBeganAtMs: number;
  /** When the last rotation finished (0: never; the first is due at once). */
  lastRotatedAtMs: number;
  /** When a rotation was asked for (0: none waiting). */
  requestedAtMs: number;
  pending: PendingRotation | null;
}

export type StaticRoleCommand =
  | { readonly op: 'static-role-put'; readonly name: string; readonly staticRole: StaticRoleConfig }
  | { readonly op: 'static-role-remove'; readonly name: string }
  | { readonly op: 'static-rotate-request'; readonly name: string; readonly nowMs: number }
  | {
      readonly op: 'static-rotate-begin';
      readonly name: string;
      /** The user the leader read in the role: a role changed meanwhile refuses the begin. */
      readonly username: string;
      readonly password: string;
      readonly nowMs: number;
      readonly baseVersion: number;
    }
  | { readonly op: 'static-rotate-done'; readonly name: string; readonly startedAtMs: number; readonly nowMs: number };

export const STATIC_ROLE_OPS: ReadonlySet<string> = new Set([
  'static-role-put',
  'static-role-remove',
  'static-rotate-request',
  'static-rotate-begin',
  'static-rotate-done',
]);

export type StaticOutcome =
  | { readonly ok: true }
  | { readonly refused: 'NOT_FOUND' | 'PRECONDITION' | 'LIMIT'; readonly reason: string };

const OK: StaticOutcome = Object.freeze({ ok: true });

/** Static roles: applies their commands (checked in form), answers what is due. Deterministic. */
export class StaticRoleBook {
  readonly roles = new Map<string, StaticRole>();

  /**
   * `serverOf(db)`: the server a configured database is on (host:port of its URL), or undefined if
   * it is not configured. Users belong to a server, not to one of its databases: two configured
   * databases on one server share them.
   */
  apply(command: StaticRoleCommand, serverOf: (db: string) => string | undefined): StaticOutcome {
    switch (command.op) {
      case 'static-role-put': {
        const config = command.staticRole;
        const server = serverOf(config.db);
        if (server === undefined) return { refused: 'NOT_FOUND', reason: `database "${config.db}" is not configured` };
        const existing = this.roles.get(command.name);
        if (existing === undefined && this.roles.size >= STATIC_ROLES_MAX)
          return { refused: 'LIMIT', reason: `at most ${STATIC_ROLES_MAX} static roles` };
        for (const other of this.roles.values())
          if (serverOf(other.db) === server && other.username === config.username && other !== existing)
            return {
              refused: 'PRECONDITION',
              reason: `user "${config.username}" of the server of database "${config.db}" is already rotated by static role ${other.db}/${other.role}`,
            };
        if (existing !== undefined && existing.pending !== null && existing.username !== config.username)
          return { refused: 'PRECONDITION', reason: 'a rotation is in progress: change the user when it is done' };
        // Another user is another role: its password is not known, so it is rotated at once.
        const kept = existing !== undefined && existing.username === config.username;
        this.roles.set(command.name, {
          ...config,
          lastBeganAtMs: existing?.lastBeganAtMs ?? 0,
          lastRotatedAtMs: kept ? existing.lastRotatedAtMs : 0,
          requestedAtMs: kept ? existing.requestedAtMs : 0,
          pending: kept ? existing.pending : null,
        });
        return OK;
      }
      case 'static-role-remove': {
        const role = this.roles.get(command.name);
        if (role === undefined) return { refused: 'NOT_FOUND', reason: `static role "${command.name}" does not exist` };
        // Its password may be set in the database and not yet in the secret: removing now would lose it.
        if (role.pending !== null)
          return { refused: 'PRECONDITION', reason: 'a rotation is in progress: remove the role when it is done' };
        this.roles.delete(command.name);
        return OK;
      }
      case 'static-rotate-request': {
        const role = this.roles.get(command.name);
        if (role === undefined) return { refused: 'NOT_FOUND', reason: `static role "${command.name}" does not exist` };
        if (role.requestedAtMs === 0) role.requestedAtMs = command.nowMs;
        return OK;
      }
      case 'static-rotate-begin': {
        const role = this.roles.get(command.name);
        if (role === undefined) return { refused: 'NOT_FOUND', reason: `static role "${command.name}" does not exist` };
        if (role.username !== command.username)
          return { refused: 'PRECONDITION', reason: `static role ${command.name} now rotates another user` };
        const allowedAtMs = role.lastBeganAtMs + STATIC_ROTATION_SPACING_MS;
        if (role.lastBeganAtMs !== 0 && command.nowMs < allowedAtMs)
          return {
            refused: 'PRECONDITION',
            reason: `the last rotation began at ${new Date(role.lastBeganAtMs).toISOString()}: the next may begin from ${new Date(allowedAtMs).toISOString()}`,
          };
        role.pending = {
          username: command.username,
          password: command.password,
          startedAtMs: command.nowMs,
          baseVersion: command.baseVersion,
        };
        role.lastBeganAtMs = command.nowMs;
        return OK;
      }
      case 'static-rotate-done': {
        const role = this.roles.get(command.name);
        // Another rotation began meanwhile (this one ran out of its window), or it is done already.
        if (role?.pending?.startedAtMs !== command.startedAtMs)
          return { refused: 'PRECONDITION', reason: `that rotation of ${command.name} is not the pending one` };
        role.pending = null;
        role.lastRotatedAtMs = command.nowMs;
        if (role.requestedAtMs !== 0 && role.requestedAtMs <= command.startedAtMs) role.requestedAtMs = 0;
        return OK;
      }
    }
  }

  /**
   * Static roles the leader has work for at `nowMs`: a pending rotation to finish (or begin again),
   * or a rotation due (never rotated, the period passed, or asked for), in name order.
   */
  due(nowMs: number): StaticRole[] {
    return [...this.roles.entries()]
      .filter(
        ([, r]) =>
          r.pending !== null ||
          r.lastRotatedAtMs === 0 ||
          r.lastRotatedAtMs + r.rotationPeriodSeconds * 1000 <= nowMs ||
          r.requestedAtMs !== 0,
      )
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([, r]) => r);
  }

  /** When the next rotation of `role` is due by its period (the first: at once). */
  static nextRotationAtMs(role: StaticRole): number {
    return role.lastRotatedAtMs === 0 ? 0 : role.lastRotatedAtMs + role.rotationPeriodSeconds * 1000;
  }

  snapshot(): unknown {
    return [...this.roles.values()].map((r) => ({ ...r }));
  }

  restore(image: unknown): void {
    this.roles.clear();
    for (const role of (image ?? []) as StaticRole[]) this.roles.set(`${role.db}/${role.role}`, { ...role });
  }
}

const text = (value: unknown, max: number): value is string => typeof value === 'string' && value.length <= max;
const time = (value: unknown): value is number =>
  typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;

/** The server a database URL names (host:port, 5432 by default), for telling that two databases share their users. */
export function serverOfUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname.toLowerCase()}:${parsed.port === '' ? '5432' : parsed.port}`;
  } catch {
    return url;
  }
}

/** What is wrong with a static role as written, or null. */
export function staticRoleProblem(config: Record<string, unknown>): string | null {
  const { db, role, username, rotationSql, rotationPeriodSeconds } = config;
  if (!text(db, 64) || !DB_NAME_PATTERN.test(db) || !text(role, 64) || !DB_NAME_PATTERN.test(role))
    return 'a database and a role name are each a lower-case letter then up to 63 of [a-z0-9_-]';
  if (typeof username !== 'string' || !STATIC_USERNAME_PATTERN.test(username))
    return 'the username is a letter or _ then up to 62 of [A-Za-z0-9_.-] (no quotes)';
  if (/^v-/.test(username)) return 'users named v-... are the ones Coffer makes for leases, not static users';
  if (!text(rotationSql, SQL_CHARS_MAX)) return `rotation SQL: at most ${SQL_CHARS_MAX} characters`;
  if (
    !time(rotationPeriodSeconds) ||
    rotationPeriodSeconds < STATIC_ROTATION_PERIOD_SECONDS_MIN ||
    rotationPeriodSeconds > STATIC_ROTATION_PERIOD_SECONDS_MAX
  )
    return `the rotation period is whole seconds, at least ${STATIC_ROTATION_PERIOD_SECONDS_MIN} and at most ${STATIC_ROTATION_PERIOD_SECONDS_MAX}`;
  return null;
}

/** A decoded static role command checked field by field (it came through the log), or what is wrong. */
export function checkedStaticRoleCommand(c: Record<string, unknown>): StaticRoleCommand | string {
  const name = c['name'];
  if (typeof name !== 'string' || !/^[a-z][a-z0-9_-]{0,63}\/[a-z][a-z0-9_-]{0,63}$/.test(name))
    return 'a static role is named DB/ROLE';
  switch (c['op']) {
    case 'static-role-put': {
      const config = c['staticRole'] as Record<string, unknown> | null;
      if (typeof config !== 'object' || config === null || `${String(config['db'])}/${String(config['role'])}` !== name)
        return 'a static role names itself as DB/ROLE';
      const problem = staticRoleProblem(config);
      if (problem !== null) return problem;
      const { db, role, username, rotationSql, rotationPeriodSeconds } = config as unknown as StaticRoleConfig;
      return { op: 'static-role-put', name, staticRole: { db, role, username, rotationSql, rotationPeriodSeconds } };
    }
    case 'static-role-remove':
      return { op: 'static-role-remove', name };
    case 'static-rotate-request':
      return time(c['nowMs']) ? { op: 'static-rotate-request', name, nowMs: c['nowMs'] } : 'a request has its time';
    case 'static-rotate-begin': {
      const { username, password, nowMs, baseVersion } = c;
      if (typeof username !== 'string' || !STATIC_USERNAME_PATTERN.test(username)) return 'a rotation names its user';
      if (typeof password !== 'string' || !PASSWORD_PATTERN.test(password))
        return 'a rotation carries a password the leader made';
      if (!time(nowMs) || !time(baseVersion)) return 'a rotation has its time and base version';
      return { op: 'static-rotate-begin', name, username, password, nowMs, baseVersion };
    }
    case 'static-rotate-done':
      if (!time(c['startedAtMs']) || !time(c['nowMs'])) return 'a finished rotation names its begin and its end';
      return { op: 'static-rotate-done', name, startedAtMs: c['startedAtMs'], nowMs: c['nowMs'] };
    default:
      return `unknown static role operation ${String(c['op']).slice(0, 40)}`;
  }
}
