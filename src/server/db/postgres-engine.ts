import { randomInt } from 'node:crypto';
import { createRequire } from 'node:module';
import type pg from 'pg';
import { STATIC_USERNAME_PATTERN } from '../../state/static-roles.ts';

/**
 * The PostgreSQL side of dynamic database credentials: with the admin connection string an
 * operator configured, create a short-lived role from the role's SQL template, move its VALID
 * UNTIL on renewal, and take it away on revocation. The leases (when to call which) are the
 * caller's; this module holds no state and opens one connection per call, closed before it
 * returns, so a database that is down costs a failed call and nothing that lingers.
 *
 * What the errors say is written for logs and for the client: they name the URL with its password
 * replaced, the SQLSTATE and PostgreSQL's own message, and never a password or the SQL that was
 * run (a rendered creation template holds the new role's password).
 */

let pgLoaded: typeof pg | null = null;
/** The pg driver, loaded at the first connection: a manager with no database role starts without it. */
function pgDriver(): typeof pg {
  pgLoaded ??= createRequire(import.meta.url)('pg') as typeof pg;
  return pgLoaded;
}

/** A PostgreSQL error (only a connection made through pgDriver can have raised one). */
function isDatabaseError(error: unknown): error is pg.DatabaseError {
  return pgLoaded !== null && error instanceof pgLoaded.DatabaseError;
}

/** Connecting, TLS and the admin's authentication together give up after this long. */
export const DB_CONNECT_TIMEOUT_MS = 5_000;
/** The server cancels any one statement after this long (statement_timeout, sent at connect). */
export const DB_STATEMENT_TIMEOUT_MS = 10_000;
/**
 * A statement whose answer never comes (the server or the network stopped, so statement_timeout
 * cannot fire) is given up by the client after this long: the server's own timeout first, it says more.
 */
const READ_TIMEOUT_MS = DB_STATEMENT_TIMEOUT_MS + 2_000;
/**
 * A transaction this module left open (the process stalled between statements) is ended by the
 * server after this long, so a half-made role never stays locked in an open transaction.
 */
const IDLE_IN_TRANSACTION_TIMEOUT_MS = 30_000;
/** A polite close (Terminate) that gets no answer within this long is replaced by dropping the socket. */
const CLOSE_TIMEOUT_MS = 2_000;
/** PostgreSQL's NAMEDATALEN - 1: a longer name is silently truncated, which would make two leases share a role. */
export const DB_USERNAME_MAX = 63;
/** Random characters in a username: 36^16, about 82 bits, so two names never meet even within one second. */
const USERNAME_RANDOM_CHARS = 16;
const USERNAME_RANDOM_ALPHABET = 'abcdefghijklmnopqrstuvwxyz0123456789';
/**
 * What newUsername makes: `v-ROLE-RANDOM-SECONDS`, lower case, nothing that needs quoting inside a
 * quoted identifier or a string literal, so a template can put it in either without escaping.
 */
export const DB_USERNAME_PATTERN = /^v-[a-z0-9_-]*-[a-z0-9]{16}-[0-9]{1,20}$/;
export const DB_PASSWORD_CHARS = 32;
/**
 * Letters and digits only: no quote, backslash, `$` or brace, so a password is safe inside '...',
 * E'...', $$...$$ and the template itself, and survives any shell or URL it is pasted into.
 */
const PASSWORD_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
/** What renderTemplate takes as {{password}}: newPassword's alphabet, a length no guess reaches. */
const PASSWORD_PATTERN = /^[A-Za-z0-9]{16,128}$/;
/** What renderTemplate takes as {{expiration}}: ISO-8601 with a time zone (toISOString's form), PG's timestamptz input. */
const EXPIRATION_PATTERN = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})$/;
/** `{{name}}`, `{{ name }}`, and anything else in double braces, which is refused by name. */
const PLACEHOLDER = /\{\{\s*([^{}]*?)\s*\}\}/g;
/** A password fragment this long or longer is taken out of an error message wherever it shows. */
const PASSWORD_FRAGMENT_MIN = 6;
/** A message from the server or a socket is cut to this many characters. */
const MESSAGE_CHARS_MAX = 300;

/** The rotation of a static role's password when the role names none. */
export const DEFAULT_ROTATION_SQL = `ALTER ROLE "{{name}}" WITH PASSWORD '{{password}}';`;

/** The renewal run when a role names none: the role's password keeps working until the new time. */
export const DEFAULT_RENEW_SQL = `ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}';`;
/**
 * The revocation run when a role names none. Idempotent by itself (the role may be gone: a retry
 * after a revocation whose answer was lost), since DROP OWNED and REASSIGN OWNED fail on a role that
 * does not exist. Objects the role made are handed to the admin rather than dropped (a migration
 * run with a short-lived credential leaves tables the application still needs); DROP OWNED then
 * removes the grants that would keep DROP ROLE from succeeding.
 */
export const DEFAULT_REVOCATION_SQL = `DO $coffer$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = '{{name}}') THEN
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'public') THEN
      REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM "{{name}}";
    END IF;
    REASSIGN OWNED BY "{{name}}" TO CURRENT_USER;
    DROP OWNED BY "{{name}}";
    DROP ROLE IF EXISTS "{{name}}";
  END IF;
END
$coffer$;`;

/**
 * SQLSTATEs that say "not now" rather than "not this": connection exceptions (08), too many
 * connections or out of memory or disk (53), the server shutting down or starting (57P0x), a
 * cancelled statement (57014: statement_timeout), an operator intervention, lock and serialization
 * failures, and the admin's login refused (28). Retrying later may succeed; a template's error will not.
 */
const UNREACHABLE_SQLSTATE = /^(?:08|53|57|58|28|40001$|40P01$|55P03$)/;

/** Admin connection to the database, as the operator configured it. */
export interface DbConnectionConfig {
  /** postgres://admin:pw@host:port/db; `?sslmode=...` and other parameters as pg reads them. */
  readonly url: string;
}

/** A role's SQL, with {{name}}, {{password}} and {{expiration}} placeholders (Vault's database engine is the model). */
export interface DbRoleTemplates {
  /** Run in one transaction; needs {{name}} and {{password}}. */
  readonly creationSql: string;
  /** '' = DEFAULT_REVOCATION_SQL. Only {{name}}. */
  readonly revocationSql: string;
  /** '' = DEFAULT_RENEW_SQL. {{name}} and {{expiration}}. */
  readonly renewSql: string;
}

export type DatabaseEngineErrorCode = 'DB_UNREACHABLE' | 'DB_REFUSED' | 'DB_TEMPLATE_INVALID';

/**
 * DB_UNREACHABLE: no usable answer (connection refused, a timeout, the admin's login refused, the
 * server going away or saying "try later"); retrying may succeed. DB_REFUSED: the database ran a
 * template statement and refused it (SQLSTATE and PostgreSQL's message in the message); a retry
 * fails the same way until the template or the database changes. DB_TEMPLATE_INVALID: the
 * template cannot be run at all (an unknown placeholder, transaction control); nothing was sent.
 */
export class DatabaseEngineError extends Error {
  override name = 'DatabaseEngineError';
  readonly code: DatabaseEngineErrorCode;
  /** PostgreSQL's SQLSTATE, when the database answered with one. */
  readonly sqlState: string | undefined;

  constructor(code: DatabaseEngineErrorCode, message: string, sqlState?: string) {
    super(message);
    this.code = code;
    this.sqlState = sqlState;
  }
}

/**
 * A new username for a credential of `role`: `v-ROLE-RANDOM-SECONDS`, at most 63 characters, the
 * role part lower-cased, other characters made `_`, and cut to what fits. The seconds say, to
 * someone reading pg_roles, when it was made; the random part makes it unique.
 */
export function newUsername(role: string, nowMs: number): string {
  if (!Number.isFinite(nowMs) || nowMs < 0) throw new TypeError('newUsername: nowMs must be a time in milliseconds');
  const seconds = String(Math.floor(nowMs / 1000));
  const random = randomString(USERNAME_RANDOM_ALPHABET, USERNAME_RANDOM_CHARS);
  const room = DB_USERNAME_MAX - 'v-'.length - 1 - USERNAME_RANDOM_CHARS - 1 - seconds.length;
  const rolePart = role
    .toLowerCase()
    .replace(/[^a-z0-9_-]+/g, '_')
    .slice(0, Math.max(0, room));
  return `v-${rolePart}-${random}-${seconds}`;
}

/** A new password: 32 letters and digits (about 190 bits), with at least one upper, one lower and one digit. */
export function newPassword(): string {
  // The three classes keep a database's password-complexity check (passwordcheck, a DBA's hook)
  // from refusing one in a few hundred; drawing again keeps every character uniform.
  for (;;) {
    const password = randomString(PASSWORD_ALPHABET, DB_PASSWORD_CHARS);
    if (/[A-Z]/.test(password) && /[a-z]/.test(password) && /[0-9]/.test(password)) return password;
  }
}

/**
 * `sql` with its placeholders replaced: {{name}} (a name newUsername made), {{password}} (letters
 * and digits) and {{expiration}} (ISO-8601 with a time zone), each as it is: their checked alphabets
 * need no quoting inside "..." or '...'. Any other {{...}}, or one with no value here (a password
 * in a renewal), is DB_TEMPLATE_INVALID naming it. A value that is not of its form is a bug of
 * the caller (TypeError): templates may put it anywhere in SQL, so nothing else may get there.
 */
export function renderTemplate(
  sql: string,
  values: { readonly name: string; readonly password?: string; readonly expiration?: string },
  nameRule: NameRule = 'generated',
): string {
  assertUsername(values.name, nameRule);
  if (values.password !== undefined && !PASSWORD_PATTERN.test(values.password))
    throw new TypeError('renderTemplate: the password is not one newPassword makes');
  if (
    values.expiration !== undefined &&
    (!EXPIRATION_PATTERN.test(values.expiration) || Number.isNaN(Date.parse(values.expiration)))
  )
    throw new TypeError('renderTemplate: the expiration is not an ISO-8601 timestamp with a time zone');
  const known: Record<string, string | undefined> = {
    name: values.name,
    password: values.password,
    expiration: values.expiration,
  };
  // All placeholders first, so the error names every unknown one, not only the first.
  const unknown = new Set<string>();
  const missing = new Set<string>();
  for (const [whole, key] of sql.matchAll(PLACEHOLDER)) {
    if (key === undefined || !Object.hasOwn(known, key)) unknown.add(whole.slice(0, 60));
    else if (known[key] === undefined) missing.add(`{{${key}}}`);
  }
  if (unknown.size > 0)
    throw new DatabaseEngineError(
      'DB_TEMPLATE_INVALID',
      `unknown placeholder ${[...unknown].join(', ')}: a template may use {{name}}, {{password}} and {{expiration}}`,
    );
  if (missing.size > 0)
    throw new DatabaseEngineError(
      'DB_TEMPLATE_INVALID',
      `${[...missing].join(', ')} has no value in this template (a creation template has all three, a renewal {{name}} and {{expiration}}, a revocation {{name}} only)`,
    );
  return sql.replace(PLACEHOLDER, (_whole, key: string) => known[key]!);
}

/**
 * Refuses templates that could not be run (DB_TEMPLATE_INVALID), without a database: for
 * `coffer db role put` to refuse them when they are written rather than when a lease needs them.
 */
export function checkTemplates(templates: DbRoleTemplates): void {
  const sample = {
    name: newUsername('check', Date.now()),
    password: newPassword(),
    expiration: new Date().toISOString(),
  };
  creationStatements(templates, sample);
  templateStatements('renewal', renderTemplate(templates.renewSql || DEFAULT_RENEW_SQL, sample));
  templateStatements('revocation', renderTemplate(templates.revocationSql || DEFAULT_REVOCATION_SQL, sample));
}

/**
 * Creates the user: the creation template, rendered, in one transaction; on any error it is
 * rolled back, so the database has the whole role or none of it. `mayProceed` is asked before
 * each statement and before COMMIT: once it says no, the transaction is dropped (the lease's
 * window to commit in has passed; see LEASE_CREATE_WINDOW_MS). After DB_UNREACHABLE the outcome
 * may be unknown (the connection went while COMMIT was on its way): revokeUser, which is
 * idempotent, settles it.
 */
export async function createUser(
  config: DbConnectionConfig,
  templates: DbRoleTemplates,
  user: { readonly name: string; readonly password: string; readonly expiresAtMs: number },
  mayProceed: () => boolean = () => true,
): Promise<void> {
  const statements = creationStatements(templates, {
    name: user.name,
    password: user.password,
    expiration: expirationOf(user.expiresAtMs),
  });
  await withSession(config, [user.password], (session) =>
    inTransaction(session, 'creation template', statements, { mayProceed }),
  );
}

/**
 * Moves the user's expiry (its VALID UNTIL, by default) to `expiresAtMs`; never earlier than the
 * VALID UNTIL it has (then nothing is run). DB_REFUSED if the role is gone.
 */
export async function renewUser(
  config: DbConnectionConfig,
  templates: DbRoleTemplates,
  user: { readonly name: string; readonly expiresAtMs: number },
): Promise<void> {
  const expiration = expirationOf(user.expiresAtMs);
  const statements = templateStatements(
    'renewal',
    renderTemplate(templates.renewSql || DEFAULT_RENEW_SQL, { name: user.name, expiration }),
  );
  await withSession(config, [], (session) =>
    inTransaction(session, 'renewal template', statements, {
      // Renewals of one user, one at a time, and never backwards: one decided earlier but late to
      // arrive (its manager paused, say) must not shorten what a later one set, which the lease
      // may already say. Read committed, so the end read after the lock is the last one written
      // (under REPEATABLE READ the snapshot would be taken before the wait). By VALID UNTIL, for
      // the default template only: a role's own renew SQL may keep the end elsewhere, and runs.
      readCommitted: true,
      beforeStatements: async () => {
        await step(
          session,
          'SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext($1), pg_catalog.hashtext($2))',
          [RENEWAL_LOCK_CLASS, user.name],
          'waiting for other renewals of the user',
        );
        const { rows } = await step(
          session,
          'SELECT rolvaliduntil >= $2::timestamptz AS covered FROM pg_catalog.pg_roles WHERE rolname = $1',
          [user.name, expiration],
          "reading the user's end",
        );
        return templates.renewSql !== '' || (rows[0] as { covered?: unknown } | undefined)?.covered !== true;
      },
    }),
  );
}

/** Renewals lock (class, user) for their transaction: the class keeps clear of other advisory locks. */
const RENEWAL_LOCK_CLASS = 'coffer-lease-renewal';

/**
 * Takes the user away: no new logins (NOLOGIN, committed first), its open sessions ended, the
 * revocation template run in one transaction, then any session that got in meanwhile ended too.
 * Idempotent: a user that does not exist (revoked before, or never made) is revoked already, and
 * a revocation that fails because another one dropped the role meanwhile has succeeded.
 */
export async function revokeUser(config: DbConnectionConfig, templates: DbRoleTemplates, name: string): Promise<void> {
  const statements = templateStatements(
    'revocation',
    renderTemplate(templates.revocationSql || DEFAULT_REVOCATION_SQL, { name }),
  );
  await withSession(config, [], async (session) => {
    // By OID, not name: a session keeps its role's OID after DROP ROLE (pg_stat_activity.usename
    // is then null), so the last sweep below still finds what logged in during the revocation.
    const oid = await roleOid(session, name);
    if (oid === null) return;
    try {
      // Committed on its own, before the sessions are ended: otherwise a login between the sweep
      // and the template's commit would find the role still able to log in and outlive it.
      await step(
        session,
        `ALTER ROLE ${session.client.escapeIdentifier(name)} NOLOGIN`,
        [],
        "disabling the role's login",
      );
      // Before the template as well as after: an open transaction of the user's can hold locks
      // DROP OWNED would wait on until statement_timeout.
      await terminateSessions(session, oid);
      await inTransaction(session, 'revocation template', statements);
    } catch (error) {
      // Another revocation (an old leader's) dropped it between our look and our statements.
      if (
        error instanceof DatabaseEngineError &&
        error.code === 'DB_REFUSED' &&
        (await roleOid(session, name)) === null
      )
        return;
      throw error;
    }
    await terminateSessions(session, oid);
  });
}

/**
 * Sets a static role's user's password: the rotation template (default DEFAULT_ROTATION_SQL)
 * with {{name}} and {{password}}, in one transaction. `mayProceed` is asked before each statement
 * and before COMMIT: once it says no (the rotation's time to send ran out), nothing more is sent
 * and the transaction is dropped, so a late statement cannot land.
 */
export async function rotatePassword(
  config: DbConnectionConfig,
  rotationSql: string,
  user: { readonly name: string; readonly password: string },
  mayProceed: () => boolean,
): Promise<void> {
  const statements = templateStatements(
    'rotation',
    renderTemplate(rotationSql || DEFAULT_ROTATION_SQL, { name: user.name, password: user.password }, 'static'),
  );
  await withSession(config, [user.password], (session) =>
    inTransaction(session, 'rotation template', statements, {
      mayProceed,
      beforeCommit: async () => {
        // Checked again at every rotation, inside its transaction (the template may have granted
        // something, or a right was granted since the role was written): a password whose reader
        // would hold the database's administration is not set, and not handed out.
        const facts = await userFacts(session, user.name);
        if (facts === null || facts.isAdmin || facts.isPrivileged)
          throw new DatabaseEngineError(
            'DB_REFUSED',
            `user "${user.name}" ${facts === null ? 'does not exist' : facts.isAdmin ? "is Coffer's admin" : "is (or is a member of) a superuser or a role that may create roles, bypass row security, replicate or reach the server's files"}: its password was not rotated`,
          );
      },
    }),
  );
}

/** Refuses a rotation template that could not be run (DB_TEMPLATE_INVALID), without a database. */
export function checkRotationTemplate(rotationSql: string): void {
  const sample = { name: 'check_user', password: newPassword() };
  const sql = rotationSql || DEFAULT_ROTATION_SQL;
  const used = new Set([...sql.matchAll(PLACEHOLDER)].map((match) => match[1]));
  for (const key of ['name', 'password'])
    if (!used.has(key))
      throw new DatabaseEngineError('DB_TEMPLATE_INVALID', `the rotation template must use {{${key}}}`);
  templateStatements('rotation', renderTemplate(sql, sample, 'static'));
}

/**
 * Whether `name` is a user of the database; whether it is the admin the URL logs in as (whose
 * password Coffer must not rotate: it would lock itself out); whether it may administer roles (a
 * superuser, CREATEROLE, or the right to bypass row security: whoever may read its password would
 * hold that power).
 */
export async function describeUser(
  config: DbConnectionConfig,
  name: string,
): Promise<{ readonly exists: boolean; readonly isAdmin: boolean; readonly isPrivileged: boolean }> {
  return withSession(config, [], async (session) => {
    const row = await userFacts(session, name);
    return { exists: row !== null, isAdmin: row?.isAdmin === true, isPrivileged: row?.isPrivileged === true };
  });
}

/**
 * The user's row: whether it is the admin, and whether it (or a role it is a member of, directly
 * or not) is a superuser, may create roles, bypass row security or replicate, or is one of the
 * roles that reach the server's files and programs (a way to superuser). Null: no such user.
 */
const USER_FACTS_SQL = `SELECT u.rolname = current_user AS is_admin,
  EXISTS (
    SELECT 1 FROM pg_catalog.pg_roles r
    WHERE pg_catalog.pg_has_role(u.oid, r.oid, 'MEMBER')
      AND (r.rolsuper OR r.rolcreaterole OR r.rolbypassrls OR r.rolreplication
        OR r.rolname IN ('pg_execute_server_program', 'pg_write_server_files', 'pg_read_server_files'))
  ) AS privileged
FROM pg_catalog.pg_roles u WHERE u.rolname = $1`;

async function userFacts(session: Session, name: string): Promise<{ isAdmin: boolean; isPrivileged: boolean } | null> {
  const result = await step(session, USER_FACTS_SQL, [name], 'looking up the user');
  const row = result.rows[0] as { is_admin?: unknown; privileged?: unknown } | undefined;
  return row === undefined ? null : { isAdmin: row.is_admin === true, isPrivileged: row.privileged === true };
}

/** Connects as the admin and runs SELECT 1: DB_UNREACHABLE unless the URL works. */
export async function checkConnection(config: DbConnectionConfig): Promise<void> {
  await withSession(config, [], (session) => step(session, 'SELECT 1', [], 'SELECT 1'));
}

/**
 * The URL with its password (and a password=... parameter, which pg also reads) replaced by ***,
 * for messages. A string that is not a postgres:// URL comes back as a placeholder: it might be
 * anything, a password included.
 */
export function redactedUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return '(not a postgres:// URL)';
  }
  // Another scheme may keep its secret anywhere (`admin:s3cret@db` parses, with `admin:` as the scheme).
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') return '(not a postgres:// URL)';
  if (parsed.password !== '') parsed.password = '***';
  for (const key of [...parsed.searchParams.keys()]) if (/password$/i.test(key)) parsed.searchParams.set(key, '***');
  // searchParams.set re-encodes * as %2A; say it plainly.
  return parsed.href.replace(/%2A%2A%2A/g, '***');
}

// ---------------------------------------------------------------------------------------------

function randomString(alphabet: string, length: number): string {
  let out = '';
  for (let i = 0; i < length; i++) out += alphabet[randomInt(alphabet.length)];
  return out;
}

/** 'generated': a name newUsername made; 'static': an existing user a static role names (no quote of either kind). */
type NameRule = 'generated' | 'static';

function assertUsername(name: string, rule: NameRule): void {
  const pattern = rule === 'generated' ? DB_USERNAME_PATTERN : STATIC_USERNAME_PATTERN;
  if (name.length > DB_USERNAME_MAX || !pattern.test(name))
    throw new TypeError(
      rule === 'generated'
        ? 'not a username newUsername makes: templates put it into SQL'
        : "not a static role's username: templates put it into SQL",
    );
}

function expirationOf(ms: number): string {
  if (!Number.isFinite(ms)) throw new TypeError('expiresAtMs must be a time in milliseconds');
  return new Date(ms).toISOString();
}

function creationStatements(
  templates: DbRoleTemplates,
  values: { name: string; password: string; expiration: string },
): Statement[] {
  // Without {{password}} the role gets no password, or one other than the credential handed out;
  // without {{name}}, not the role the lease will revoke. Either way the credential would not work.
  const used = new Set([...templates.creationSql.matchAll(PLACEHOLDER)].map((match) => match[1]));
  for (const key of ['name', 'password'])
    if (!used.has(key))
      throw new DatabaseEngineError('DB_TEMPLATE_INVALID', `the creation template must use {{${key}}}`);
  return templateStatements('creation', renderTemplate(templates.creationSql, values));
}

interface Statement {
  readonly text: string;
}

/**
 * The rendered template's statements, split on `;` outside quotes, dollar quotes and comments.
 * Run one by one inside our own transaction; so a template's BEGIN, COMMIT or ROLLBACK would end
 * that transaction early and break "all or nothing", and is refused.
 */
function templateStatements(what: string, sql: string): Statement[] {
  const statements = splitStatements(sql, what);
  if (statements.length === 0)
    throw new DatabaseEngineError('DB_TEMPLATE_INVALID', `the ${what} template has no statement`);
  for (const [index, statement] of statements.entries()) {
    const [first = '', second = ''] = statement.words;
    if (
      /^(?:begin|start|commit|end|rollback|abort|savepoint|release)$/.test(first) ||
      (first === 'prepare' && second === 'transaction')
    )
      throw new DatabaseEngineError(
        'DB_TEMPLATE_INVALID',
        `statement ${index + 1} of the ${what} template is transaction control (${first.toUpperCase()}): Coffer runs the template in a transaction of its own`,
      );
  }
  return statements.map(({ text }) => ({ text }));
}

/**
 * Splits on `;` at the top level. Knows what PostgreSQL's lexer knows about where a `;` does not
 * end a statement: '...' (with '' inside), E'...' (with backslash escapes), "..." identifiers,
 * $tag$...$tag$ bodies (DO blocks, functions), -- comments and nested /* comments. Each statement
 * also comes with its first two words (lower-cased, outside comments) to tell what it is.
 */
function splitStatements(sql: string, what: string): Array<{ text: string; words: string[] }> {
  const out: Array<{ text: string; words: string[] }> = [];
  let start = 0;
  let code = ''; // the statement with quoted parts and comments blanked, for its words
  const identifierChar = (c: string | undefined) => c !== undefined && /[A-Za-z0-9_$\u0080-\uffff]/.test(c);
  const unterminated = (kind: string) =>
    new DatabaseEngineError('DB_TEMPLATE_INVALID', `the ${what} template has an unterminated ${kind}`);
  const finish = (end: number) => {
    const text = sql.slice(start, end).trim();
    const words = code.trim().toLowerCase().split(/\s+/).filter(Boolean).slice(0, 2);
    // Nothing but comments and blanks (after the last `;`, say) is no statement.
    if (words.length > 0) out.push({ text, words });
    start = end + 1;
    code = '';
  };
  let i = 0;
  while (i < sql.length) {
    const c = sql[i]!;
    const next = sql[i + 1];
    if (c === ';') {
      finish(i);
      i++;
    } else if (c === '-' && next === '-') {
      const end = sql.indexOf('\n', i);
      i = end === -1 ? sql.length : end + 1;
      code += ' ';
    } else if (c === '/' && next === '*') {
      let depth = 1;
      i += 2;
      while (depth > 0) {
        if (i >= sql.length) throw unterminated('/* comment');
        if (sql[i] === '/' && sql[i + 1] === '*') {
          depth++;
          i += 2;
        } else if (sql[i] === '*' && sql[i + 1] === '/') {
          depth--;
          i += 2;
        } else i++;
      }
      code += ' ';
    } else if (c === "'") {
      // E'...' when the E starts a token (not the end of a word like `type'...'`).
      const escapes = (sql[i - 1] === 'E' || sql[i - 1] === 'e') && !identifierChar(sql[i - 2]);
      i++;
      for (;;) {
        if (i >= sql.length) throw unterminated('string');
        if (escapes && sql[i] === '\\') i += 2;
        else if (sql[i] === "'" && sql[i + 1] === "'") i += 2;
        else if (sql[i] === "'") break;
        else i++;
      }
      i++;
      code += " '' ";
    } else if (c === '"') {
      const end = sql.indexOf('"', i + 1);
      let j = end;
      while (j !== -1 && sql[j + 1] === '"') j = sql.indexOf('"', j + 2);
      if (j === -1) throw unterminated('quoted identifier');
      i = j + 1;
      code += ' "" ';
    } else if (c === '$' && !identifierChar(sql[i - 1])) {
      const tag = /^\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$/.exec(sql.slice(i))?.[0];
      if (tag === undefined) {
        code += c; // $1, a parameter, or a $ inside a word
        i++;
      } else {
        const end = sql.indexOf(tag, i + tag.length);
        if (end === -1) throw unterminated(`${tag} quote`);
        i = end + tag.length;
        code += ' $$ ';
      }
    } else {
      code += c;
      i++;
    }
  }
  finish(sql.length);
  return out;
}

/** One admin connection, and what must not appear in any message about it. */
interface Session {
  readonly client: pg.Client;
  readonly secrets: readonly string[];
}

/**
 * Opens one connection as the admin, runs `work`, and closes it whatever happened. `secrets`
 * (with the admin's password) are taken out of every message.
 */
async function withSession<T>(
  config: DbConnectionConfig,
  secrets: readonly string[],
  work: (session: Session) => Promise<T>,
): Promise<T> {
  const target = redactedUrl(config.url);
  const hidden = [...secrets, ...urlSecrets(config.url)];
  let protocol: string;
  try {
    protocol = new URL(config.url).protocol;
  } catch {
    throw new DatabaseEngineError(
      'DB_UNREACHABLE',
      'the database URL is not a URL: postgres://USER:PASSWORD@HOST:PORT/DB',
    );
  }
  if (protocol !== 'postgres:' && protocol !== 'postgresql:')
    throw new DatabaseEngineError('DB_UNREACHABLE', `${target} is not a postgres:// or postgresql:// URL`);
  let client: pg.Client;
  try {
    client = new (pgDriver().Client)({
      // The URL's own parameters (sslmode, host=...) win over these, as pg merges them.
      connectionString: config.url,
      connectionTimeoutMillis: DB_CONNECT_TIMEOUT_MS,
      statement_timeout: DB_STATEMENT_TIMEOUT_MS,
      query_timeout: READ_TIMEOUT_MS,
      idle_in_transaction_session_timeout: IDLE_IN_TRANSACTION_TIMEOUT_MS,
      application_name: 'coffer',
      keepAlive: true,
    });
  } catch (error) {
    throw new DatabaseEngineError('DB_UNREACHABLE', `cannot use ${target}: ${describe(error, hidden)}`);
  }
  // A connection ended by the server between two statements emits 'error'; unhandled, that ends
  // the process. The statement that follows fails, and that failure is what is reported.
  client.on('error', () => {});
  try {
    try {
      await client.connect();
    } catch (error) {
      // A server that answered (a refused login, no such database) will answer the same until the
      // URL or the server changes; no answer at all may be over soon.
      const sqlState = sqlStateOf(error);
      const next = sqlState === undefined ? 'retry' : "check the URL's user, password and database";
      throw new DatabaseEngineError(
        'DB_UNREACHABLE',
        `could not connect to ${target}: ${describe(error, hidden)}; ${next}`,
        sqlState,
      );
    }
    return await work({ client, secrets: hidden });
  } finally {
    await close(client);
  }
}

/** Ends the connection; one that does not answer the goodbye (a hung server) has its socket dropped. */
async function close(client: pg.Client): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const ended = await Promise.race([
    client.end().then(
      () => true,
      () => true,
    ),
    new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), CLOSE_TIMEOUT_MS);
    }),
  ]);
  clearTimeout(timer);
  if (!ended) client.connection.stream.destroy();
}

/** One statement of ours (not a template's): errors become DB_UNREACHABLE or DB_REFUSED naming `what`. */
async function step(session: Session, sql: string, params: readonly unknown[], what: string): Promise<pg.QueryResult> {
  try {
    return await session.client.query(sql, [...params]);
  } catch (error) {
    throw unreachableOrRefused(error, what, session.secrets);
  }
}

interface TransactionHooks {
  /** Checked before BEGIN, each statement and COMMIT: false drops the transaction uncommitted. */
  readonly mayProceed?: () => boolean;
  /** Run after BEGIN: false commits without the statements (there is nothing left for them to do). */
  readonly beforeStatements?: () => Promise<boolean>;
  /** READ COMMITTED whatever the database's default: each statement sees what committed before it. */
  readonly readCommitted?: boolean;
  /** Run before COMMIT: throwing drops the transaction. */
  readonly beforeCommit?: () => Promise<void>;
}

/**
 * The statements in BEGIN ... COMMIT, one at a time (the simple query protocol, as psql sends
 * them: no parameters, so a `$1` in a template means what it means to PostgreSQL). On an error the
 * transaction is rolled back; if the connection is what failed, dropping it rolls back instead.
 */
async function inTransaction(
  session: Session,
  what: string,
  statements: readonly Statement[],
  hooks: TransactionHooks = {},
): Promise<void> {
  const {
    mayProceed = () => true,
    beforeStatements = async () => true,
    beforeCommit = async () => {},
    readCommitted = false,
  } = hooks;
  const { client, secrets } = session;
  const stopIfLate = (): void => {
    // Dropping the connection (close(), after this throws) rolls the transaction back.
    if (!mayProceed())
      throw new DatabaseEngineError(
        'DB_UNREACHABLE',
        `the ${what} ran out of its time to be sent; it was not committed`,
      );
  };
  stopIfLate();
  await step(session, readCommitted ? 'BEGIN ISOLATION LEVEL READ COMMITTED' : 'BEGIN', [], `BEGIN before the ${what}`);
  // A failure here drops the connection (close(), after this throws): the transaction is rolled back.
  const run = await beforeStatements();
  for (const [index, statement] of run ? statements.entries() : []) {
    stopIfLate();
    try {
      await client.query(statement.text);
    } catch (error) {
      // A statement the server refused leaves the connection usable: roll back here. Any other
      // failure (a timeout, a dead socket) may have left a statement in flight, and a ROLLBACK
      // would queue behind it; close() drops the connection and the server rolls back.
      if (isDatabaseError(error)) await client.query('ROLLBACK').catch(() => undefined);
      throw unreachableOrRefused(error, `statement ${index + 1} of ${statements.length} of the ${what}`, secrets);
    }
  }
  // A refusal here drops the connection (close(), after this throws): the transaction is rolled back.
  await beforeCommit();
  stopIfLate();
  try {
    await client.query('COMMIT');
  } catch (error) {
    const unknown = isDatabaseError(error) ? '' : ' (whether it committed is unknown)';
    throw unreachableOrRefused(error, `COMMIT of the ${what}${unknown}`, secrets);
  }
}

async function roleOid(session: Session, name: string): Promise<string | null> {
  const result = await step(
    session,
    'SELECT oid::text AS oid FROM pg_catalog.pg_roles WHERE rolname = $1',
    [name],
    'looking up the role',
  );
  const row = result.rows[0] as { oid?: unknown } | undefined;
  return typeof row?.oid === 'string' ? row.oid : null;
}

/**
 * Ends every session of the role, in any database: a revoked credential must not go on working
 * on a connection it opened before.
 */
async function terminateSessions(session: Session, oid: string): Promise<void> {
  try {
    await session.client.query(
      'SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usesysid = $1::oid AND pid <> pg_catalog.pg_backend_pid()',
      [oid],
    );
  } catch (error) {
    const hint =
      isDatabaseError(error) && error.code === '42501'
        ? ' (the admin must be a superuser or a member of pg_signal_backend)'
        : '';
    throw unreachableOrRefused(error, `ending the role's sessions${hint}`, session.secrets);
  }
}

/** A failure of `what`: DB_REFUSED when the server refused it for good, DB_UNREACHABLE otherwise. */
function unreachableOrRefused(error: unknown, what: string, secrets: readonly string[]): DatabaseEngineError {
  const sqlState = sqlStateOf(error);
  const text = describe(error, secrets);
  if (isDatabaseError(error) && sqlState !== undefined && !UNREACHABLE_SQLSTATE.test(sqlState))
    return new DatabaseEngineError('DB_REFUSED', `the database refused ${what}: ${text}`, sqlState);
  return new DatabaseEngineError('DB_UNREACHABLE', `the database did not complete ${what}: ${text}; retry`, sqlState);
}

function sqlStateOf(error: unknown): string | undefined {
  return isDatabaseError(error) && typeof error.code === 'string' ? error.code : undefined;
}

/**
 * An error in a few words: its code, message, and (from the server) detail and hint, with every
 * secret taken out. Never the error's `where` or `internalQuery`: for a statement inside a DO
 * block they quote the statement, which may hold the password.
 */
function describe(error: unknown, secrets: readonly string[]): string {
  const e = error as { code?: unknown; message?: unknown; detail?: unknown; hint?: unknown; errors?: unknown };
  let message = typeof e.message === 'string' ? e.message : String(error);
  // Node's AggregateError (both of localhost's addresses refused) has an empty message of its own.
  if (message === '' && Array.isArray(e.errors))
    message = e.errors.map((inner: { message?: unknown }) => String(inner.message ?? inner)).join('; ');
  // Scrubbed before being cut: a secret cut in two would no longer be found.
  const clean = (text: string) => scrub(text, secrets).slice(0, MESSAGE_CHARS_MAX);
  const parts = [typeof e.code === 'string' ? clean(e.code) : '', clean(message)];
  if (isDatabaseError(error)) {
    if (typeof e.detail === 'string') parts.push(`(${clean(e.detail)})`);
    if (typeof e.hint === 'string') parts.push(`(hint: ${clean(e.hint)})`);
  }
  return parts.filter(Boolean).join(' ');
}

/**
 * `text` with each secret replaced by ***, and with any word that is a piece of one of our
 * passwords: PostgreSQL's "syntax error at or near ..." quotes a token, and a password put into a
 * template unquoted may be split into tokens (a leading digit lexes as a number).
 */
function scrub(text: string, secrets: readonly string[]): string {
  let out = text;
  // Longest first: a secret that holds a shorter one is still found whole.
  for (const secret of [...secrets].sort((a, b) => b.length - a.length))
    if (secret.length > 0) out = out.split(secret).join('***');
  return out.replace(/[A-Za-z0-9]+/g, (word) =>
    word.length >= PASSWORD_FRAGMENT_MIN &&
    secrets.some((secret) => PASSWORD_PATTERN.test(secret) && secret.includes(word))
      ? '***'
      : word,
  );
}

/** The admin's password as it is in the URL and decoded, to be scrubbed from messages. */
function urlSecrets(url: string): string[] {
  try {
    const parsed = new URL(url);
    const raw = [parsed.password, ...[...parsed.searchParams].filter(([k]) => /password$/i.test(k)).map(([, v]) => v)];
    const out = new Set<string>();
    for (const value of raw) {
      if (value === '') continue;
      out.add(value);
      try {
        out.add(decodeURIComponent(value));
      } catch {
        // Not percent-encoding after all: the raw form is there.
      }
    }
    return [...out];
  } catch {
    return [];
  }
}
