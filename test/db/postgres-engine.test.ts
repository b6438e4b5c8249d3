import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  checkConnection,
  checkTemplates,
  createUser,
  DatabaseEngineError,
  type DatabaseEngineErrorCode,
  DB_PASSWORD_CHARS,
  DB_USERNAME_PATTERN,
  type DbConnectionConfig,
  type DbRoleTemplates,
  newPassword,
  newUsername,
  redactedUrl,
  renderTemplate,
  renewUser,
  revokeUser,
} from '../../src/server/db/postgres-engine.ts';
import { ADMIN_USER, TestPostgres } from './support/postgres.ts';

// The engine against a real PostgreSQL: a role made from a template logs in and reads what it was
// granted, renewal moves the date the server enforces, revocation ends its sessions and drops it
// (twice, harmlessly), a template that fails halfway leaves nothing, and a database that is
// wrong, down or hung gives up within the timeouts with messages that hold no password.

const TIMEOUT = { timeout: 90_000 };
const HOUR = 3_600_000;
/** With characters that are percent-encoded in the URL, so both forms are looked for in messages. */
const ADMIN_PASSWORD = 'adm1n pw/with:odd@chars';

const CREATION = `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";`;
const TEMPLATES: DbRoleTemplates = { creationSql: CREATION, revocationSql: '', renewSql: '' };

/** Asserts a DatabaseEngineError with `code`, and returns it for more checks. */
async function refusal(promise: Promise<unknown>, code: DatabaseEngineErrorCode): Promise<DatabaseEngineError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof DatabaseEngineError, `not a DatabaseEngineError: ${String(error)}`);
    assert.equal(error.code, code, error.message);
    return error;
  }
  assert.fail(`no ${code}`);
}

/** Nothing secret in a message: no password, in any form, and no piece of a generated one. */
function assertClean(message: string, passwords: readonly string[]): void {
  for (const password of passwords) {
    assert.ok(!message.includes(password), `a password is in: ${message}`);
    assert.ok(!message.includes(encodeURIComponent(password)), `a password is in: ${message}`);
    if (/^[A-Za-z0-9]+$/.test(password))
      for (let i = 0; i + 8 <= password.length; i++)
        assert.ok(!message.includes(password.slice(i, i + 8)), `a piece of a password is in: ${message}`);
  }
}

describe('usernames, passwords, templates and URLs', () => {
  it('usernames are unique, at most 63 characters, of [a-z0-9_-], the role cut to fit', () => {
    const now = Date.parse('2030-01-02T03:04:05Z');
    const names = new Set<string>();
    for (let i = 0; i < 1000; i++) names.add(newUsername('app', now));
    assert.equal(names.size, 1000);
    for (const name of names) {
      assert.match(name, /^v-app-[a-z0-9]{16}-1893553445$/);
      assert.match(name, DB_USERNAME_PATTERN);
    }
    const long = newUsername('A Very/Long.Role-Name_'.repeat(10), now);
    assert.ok(long.length <= 63, long);
    assert.match(long, /^v-a_very_long_role-name_a_very_long-[a-z0-9]{16}-1893553445$/);
    assert.match(newUsername('', now), DB_USERNAME_PATTERN);
    // Far in the future the seconds take more room, the role part less.
    assert.ok(newUsername('x'.repeat(100), 1e16).length <= 63);
  });

  it('passwords are 32 letters and digits, each class present, all different', () => {
    const passwords = new Set<string>();
    for (let i = 0; i < 1000; i++) {
      const password = newPassword();
      assert.equal(password.length, DB_PASSWORD_CHARS);
      assert.match(password, /^[A-Za-z0-9]{32}$/);
      assert.match(password, /[A-Z]/);
      assert.match(password, /[a-z]/);
      assert.match(password, /[0-9]/);
      passwords.add(password);
    }
    assert.equal(passwords.size, 1000);
  });

  it('renderTemplate substitutes the three placeholders and refuses any other by name', () => {
    const name = newUsername('app', Date.now());
    const password = newPassword();
    const expiration = '2030-01-02T03:04:05.000Z';
    assert.equal(
      renderTemplate(`CREATE ROLE "{{name}}" PASSWORD '{{ password }}' VALID UNTIL '{{expiration}}'`, {
        name,
        password,
        expiration,
      }),
      `CREATE ROLE "${name}" PASSWORD '${password}' VALID UNTIL '${expiration}'`,
    );
    // A two-dimensional array literal is not a placeholder.
    assert.equal(renderTemplate(`SELECT '{{1,2},{3,4}}'::int[]`, { name }), `SELECT '{{1,2},{3,4}}'::int[]`);
    assert.throws(
      () => renderTemplate('GRANT x TO "{{username}}"; {{ db }}', { name }),
      (error: unknown) =>
        error instanceof DatabaseEngineError &&
        error.code === 'DB_TEMPLATE_INVALID' &&
        error.message.includes('{{username}}') &&
        error.message.includes('{{ db }}'),
    );
    // A placeholder with no value here: a password in a renewal.
    assert.throws(() => renderTemplate(`ALTER ROLE "{{name}}" PASSWORD '{{password}}'`, { name }), {
      code: 'DB_TEMPLATE_INVALID',
    });
    // Values not of their form never reach SQL: a bug of the caller.
    assert.throws(() => renderTemplate('{{name}}', { name: 'x"; DROP TABLE t; --' }), TypeError);
    assert.throws(() => renderTemplate('{{name}}', { name: 'V-APP-1' }), TypeError);
    // A static role's user is an existing one: upper case may be, a quote of either kind never.
    assert.equal(renderTemplate('"{{name}}"', { name: 'App_Owner.2' }, 'static'), '"App_Owner.2"');
    for (const crafted of ['bob"; DROP ROLE x; --', "o'hara", 'a\\b', ''])
      assert.throws(() => renderTemplate('{{name}}', { name: crafted }, 'static'), TypeError);
    assert.throws(() => renderTemplate('{{password}}', { name, password: "pw'" + 'a'.repeat(20) }), TypeError);
    assert.throws(() => renderTemplate('{{expiration}}', { name, expiration: "2030-01-01' OR 1=1" }), TypeError);
    assert.throws(() => renderTemplate('{{expiration}}', { name, expiration: '2030-01-01T00:00:00' }), TypeError);
  });

  it('checkTemplates refuses what could not run: no {{password}}, transaction control, unterminated quotes', () => {
    checkTemplates(TEMPLATES);
    checkTemplates({
      creationSql: `${CREATION} DO $$ BEGIN RAISE NOTICE 'a; b'; END $$; -- done; really`,
      revocationSql: 'DROP ROLE IF EXISTS "{{name}}"',
      renewSql: `ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}'; /* nested /* ; */ ; */`,
    });
    const invalid = (templates: Partial<DbRoleTemplates>, pattern: RegExp) =>
      assert.throws(
        () => checkTemplates({ ...TEMPLATES, ...templates }),
        (error: unknown) =>
          error instanceof DatabaseEngineError && error.code === 'DB_TEMPLATE_INVALID' && pattern.test(error.message),
      );
    invalid({ creationSql: 'CREATE ROLE "{{name}}" LOGIN' }, /must use \{\{password\}\}/);
    invalid(
      { creationSql: `${CREATION} COMMIT; GRANT x TO "{{name}}"` },
      /statement 3 .* transaction control \(COMMIT\)/,
    );
    invalid({ revocationSql: 'begin; DROP ROLE "{{name}}"' }, /transaction control \(BEGIN\)/);
    invalid({ renewSql: `ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}` }, /unterminated string/);
    invalid({ revocationSql: 'DROP ROLE "{{name}}"; /* never closed' }, /unterminated \/\* comment/);
    invalid({ revocationSql: ' ; -- nothing' }, /has no statement/);
  });

  it('redactedUrl hides the password, in the userinfo or as a parameter, and nothing else', () => {
    assert.equal(
      redactedUrl('postgres://admin:s3cret@db.example:5432/app?sslmode=verify-full'),
      'postgres://admin:***@db.example:5432/app?sslmode=verify-full',
    );
    assert.equal(
      redactedUrl(`postgres://admin:${encodeURIComponent(ADMIN_PASSWORD)}@127.0.0.1:5432/app`),
      'postgres://admin:***@127.0.0.1:5432/app',
    );
    assert.equal(redactedUrl('postgres://admin@db/app'), 'postgres://admin@db/app');
    assert.equal(
      redactedUrl('postgresql://db/app?user=admin&password=s3cret&sslpassword=k3y'),
      'postgresql://db/app?user=admin&password=***&sslpassword=***',
    );
    assert.equal(redactedUrl('admin:s3cret at db'), '(not a postgres:// URL)');
    assert.equal(redactedUrl('not a url at all: s3cret'), '(not a postgres:// URL)');
  });
});

describe('the PostgreSQL engine against a real server', TIMEOUT, () => {
  let dir: string;
  let postgres: TestPostgres;
  let config: DbConnectionConfig;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'coffer-pge-'));
    postgres = await TestPostgres.start(dir, { password: ADMIN_PASSWORD });
    config = { url: postgres.adminUrl };
    // Made by the bootstrap superuser: the admin grants on a table it does not own.
    await postgres.query('CREATE TABLE public.items (id int PRIMARY KEY, label text)');
    await postgres.query("INSERT INTO public.items VALUES (1, 'one'), (2, 'two')");
  });
  after(async () => {
    await postgres?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  /** A fresh user for `templates`, created. */
  async function created(templates: DbRoleTemplates = TEMPLATES, ttlMs = HOUR) {
    const user = { name: newUsername('app', Date.now()), password: newPassword(), expiresAtMs: Date.now() + ttlMs };
    await createUser(config, templates, user);
    return user;
  }

  async function validUntil(name: string): Promise<number | null> {
    const { rows } = await postgres.query<{ ms: string | null }>(
      'SELECT (extract(epoch FROM rolvaliduntil) * 1000)::bigint::text AS ms FROM pg_roles WHERE rolname = $1',
      [name],
    );
    assert.equal(rows.length, 1, `${name} is not in pg_roles`);
    return rows[0]!.ms === null ? null : Number(rows[0]!.ms);
  }

  it('checkConnection accepts the admin URL', TIMEOUT, async () => {
    await checkConnection(config);
  });

  it(
    'creates a user that logs in, reads what it was granted and nothing more, until VALID UNTIL',
    TIMEOUT,
    async () => {
      const user = await created();
      assert.deepEqual(await postgres.roles(), [user.name]);
      assert.equal(await postgres.canLogin(user.name, user.password), true);
      assert.equal(await postgres.canLogin(user.name, newPassword()), false);
      assert.equal(await validUntil(user.name), user.expiresAtMs);
      const client = await postgres.connect(user.name, user.password);
      try {
        const { rows } = await client.query('SELECT id, label FROM public.items ORDER BY id');
        assert.deepEqual(rows, [
          { id: 1, label: 'one' },
          { id: 2, label: 'two' },
        ]);
        await assert.rejects(client.query("INSERT INTO public.items VALUES (3, 'three')"), { code: '42501' });
      } finally {
        await client.end();
      }
      await revokeUser(config, TEMPLATES, user.name);
      assert.deepEqual(await postgres.roles(), []);

      // The server enforces the date: a user made already expired does not log in.
      const expired = await created(TEMPLATES, -60_000);
      assert.equal(await postgres.canLogin(expired.name, expired.password), false);
      await revokeUser(config, TEMPLATES, expired.name);
    },
  );

  it(
    'renew moves VALID UNTIL (default and custom SQL), never backwards, concurrent renewals end at the latest; renewing a revoked user is refused',
    TIMEOUT,
    async () => {
      const user = await created(TEMPLATES, 60_000);
      const later = user.expiresAtMs + 2 * HOUR;
      await renewUser(config, TEMPLATES, { name: user.name, expiresAtMs: later });
      assert.equal(await validUntil(user.name), later);
      assert.equal(await postgres.canLogin(user.name, user.password), true);

      const custom = { ...TEMPLATES, renewSql: `ALTER ROLE "{{name}}" VALID UNTIL '{{expiration}}'; SELECT 1;` };
      await renewUser(config, custom, { name: user.name, expiresAtMs: later + HOUR });
      assert.equal(await validUntil(user.name), later + HOUR);

      // A renewal decided earlier and arriving late (its manager was paused), or one to the past:
      // the end a later renewal set stands, and the user still logs in.
      await renewUser(config, TEMPLATES, { name: user.name, expiresAtMs: later });
      await renewUser(config, TEMPLATES, { name: user.name, expiresAtMs: Date.now() - 60_000 });
      assert.equal(await validUntil(user.name), later + HOUR);
      assert.equal(await postgres.canLogin(user.name, user.password), true);
      // A role's own renew SQL runs whatever VALID UNTIL says (it may keep the end elsewhere).
      await renewUser(config, custom, { name: user.name, expiresAtMs: later });
      assert.equal(await validUntil(user.name), later);

      // Renewals at once, in no order: the latest end is the one kept (each waits for the one before).
      const ends = [5, 2, 9, 1, 7, 3, 8, 4, 6].map((n) => later + HOUR + n * 60_000);
      await Promise.all(ends.map((expiresAtMs) => renewUser(config, TEMPLATES, { name: user.name, expiresAtMs })));
      const latest = Math.max(...ends);
      assert.equal(await validUntil(user.name), latest);

      // A renewal that waits for another (which holds the user's renewal lock and commits a later
      // end meanwhile) reads that end after the wait, even when the admin's sessions are
      // REPEATABLE READ by default (a DBA's choice: its snapshot would be from before the wait).
      await postgres.query(`ALTER ROLE ${ADMIN_USER} SET default_transaction_isolation = 'repeatable read'`);
      const holder = await postgres.connect(ADMIN_USER, ADMIN_PASSWORD);
      try {
        await holder.query('BEGIN');
        await holder.query('SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))', [
          'coffer-lease-renewal',
          user.name,
        ]);
        const waiting = renewUser(config, TEMPLATES, { name: user.name, expiresAtMs: latest + HOUR });
        // Until it waits on the lock (its session's BEGIN and first statement sent).
        const deadline = Date.now() + 10_000;
        for (;;) {
          const { rows } = await postgres.query(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND wait_event = 'advisory'",
          );
          if ((rows[0] as { n: number }).n > 0) break;
          assert.ok(Date.now() < deadline, 'the renewal never waited on the lock');
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        await holder.query(`ALTER ROLE "${user.name}" VALID UNTIL '${new Date(latest + 2 * HOUR).toISOString()}'`);
        await holder.query('COMMIT');
        await waiting;
        assert.equal(await validUntil(user.name), latest + 2 * HOUR, 'the waiting renewal moved the end back');
      } finally {
        await holder.end().catch(() => undefined);
        await postgres.query(`ALTER ROLE ${ADMIN_USER} RESET default_transaction_isolation`);
      }

      await revokeUser(config, TEMPLATES, user.name);
      const error = await refusal(renewUser(config, TEMPLATES, { name: user.name, expiresAtMs: later }), 'DB_REFUSED');
      assert.equal(error.sqlState, '42704');
      assert.match(error.message, /statement 1 of 1 of the renewal template: 42704 role .* does not exist/);
    },
  );

  it('revoke ends open sessions, drops the user, and is idempotent', TIMEOUT, async () => {
    const user = await created();
    const open = await postgres.connect(user.name, user.password);
    const other = await postgres.connect(user.name, user.password, 'postgres');
    try {
      assert.deepEqual((await open.query('SELECT count(*)::int AS n FROM public.items')).rows, [{ n: 2 }]);
      await revokeUser(config, TEMPLATES, user.name);
      // Its connections, in this database and another, were ended: the credential works nowhere.
      await assert.rejects(open.query('SELECT 1'));
      await assert.rejects(other.query('SELECT 1'));
    } finally {
      await open.end().catch(() => {});
      await other.end().catch(() => {});
    }
    assert.equal(await postgres.canLogin(user.name, user.password), false);
    assert.deepEqual(await postgres.roles(), []);
    const { rows } = await postgres.query(
      'SELECT pid FROM pg_stat_activity WHERE usesysid IS NOT NULL AND usename IS NULL',
    );
    assert.deepEqual(rows, [], 'a session of the dropped role is still there');

    // Again, and for a name that never existed: nothing to do, no error.
    await revokeUser(config, TEMPLATES, user.name);
    await revokeUser(config, TEMPLATES, newUsername('app', Date.now()));
  });

  it('the default revocation hands what the user made to the admin, then drops the user', TIMEOUT, async () => {
    const templates = { ...TEMPLATES, creationSql: `${CREATION} GRANT CREATE ON SCHEMA public TO "{{name}}";` };
    const user = await created(templates);
    const client = await postgres.connect(user.name, user.password);
    try {
      await client.query('CREATE TABLE public.made_by_lease (x int)');
    } finally {
      await client.end();
    }
    await revokeUser(config, templates, user.name);
    assert.deepEqual(await postgres.roles(), []);
    const { rows } = await postgres.query<{ owner: string }>(
      "SELECT tableowner AS owner FROM pg_tables WHERE tablename = 'made_by_lease'",
    );
    assert.deepEqual(rows, [{ owner: ADMIN_USER }]);
    await postgres.query('DROP TABLE public.made_by_lease');
  });

  it('a custom revocation that is not idempotent by itself still is through revokeUser', TIMEOUT, async () => {
    const templates = {
      ...TEMPLATES,
      revocationSql: 'REVOKE ALL PRIVILEGES ON ALL TABLES IN SCHEMA public FROM "{{name}}"; DROP ROLE "{{name}}";',
    };
    const user = await created(templates);
    await revokeUser(config, templates, user.name);
    assert.deepEqual(await postgres.roles(), []);
    await revokeUser(config, templates, user.name);

    // A revocation the database refuses leaves the user unable to log in, and says why.
    const kept = await created();
    const stuck = { ...TEMPLATES, revocationSql: 'DROP ROLE "{{name}}"' };
    const error = await refusal(revokeUser(config, stuck, kept.name), 'DB_REFUSED');
    assert.equal(error.sqlState, '2BP01');
    assert.match(
      error.message,
      /revocation template: 2BP01 role .* cannot be dropped because some objects depend on it/,
    );
    assert.deepEqual(await postgres.roles(), [kept.name]);
    assert.equal(await postgres.canLogin(kept.name, kept.password), false);
    await revokeUser(config, TEMPLATES, kept.name);
    assert.deepEqual(await postgres.roles(), []);
  });

  it(
    'a creation template that fails halfway leaves nothing, and its error holds no password or SQL',
    TIMEOUT,
    async () => {
      const before = await postgres.roles();
      const password = newPassword();
      // CREATE ROLE runs and succeeds; the GRANT after it is a syntax error.
      const broken = {
        ...TEMPLATES,
        creationSql: `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
        GRNT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";`,
      };
      const name = newUsername('app', Date.now());
      const error = await refusal(
        createUser(config, broken, { name, password, expiresAtMs: Date.now() + HOUR }),
        'DB_REFUSED',
      );
      assert.equal(error.sqlState, '42601');
      assert.match(error.message, /statement 2 of 2 of the creation template: 42601 syntax error at or near "GRNT"/);
      assert.ok(!/CREATE ROLE|GRANT/.test(error.message), error.message);
      assertClean(error.message, [password, ADMIN_PASSWORD]);
      assert.deepEqual(await postgres.roles(), before);
      assert.equal(await postgres.canLogin(name, password), false);

      // The password put in unquoted: PostgreSQL's syntax error quotes the token, which is (a piece
      // of) the password; one starting with a digit is lexed as a number and a word.
      const unquoted = { ...TEMPLATES, creationSql: 'CREATE ROLE "{{name}}" WITH LOGIN PASSWORD {{password}}' };
      for (const first of ['a', 'Z', '0', '7']) {
        const secret = `${first}${newPassword().slice(1)}`;
        const failed = await refusal(
          createUser(config, unquoted, { name: newUsername('app', Date.now()), password: secret, expiresAtMs: 0 }),
          'DB_REFUSED',
        );
        assert.match(failed.message, /42601 (syntax error|trailing junk)/);
        if (/[a-z]/i.test(first)) assert.match(failed.message, /at or near "\*\*\*"/);
        assertClean(failed.message, [secret]);
      }
      // A statement run by a DO block: PostgreSQL's context for its error quotes it, password and
      // all; that context is not passed on.
      const inBlock = {
        ...TEMPLATES,
        creationSql: `DO $$ BEGIN
          EXECUTE 'CREATE ROLE "{{name}}" LOGIN PASSWORD ''{{password}}'' VALID UNTIL ''not a date''';
        END $$;`,
      };
      const secret = newPassword();
      const failed = await refusal(
        createUser(config, inBlock, { name: newUsername('app', Date.now()), password: secret, expiresAtMs: 0 }),
        'DB_REFUSED',
      );
      assert.match(failed.message, /22007 invalid input syntax for type timestamp with time zone/);
      assertClean(failed.message, [secret]);
      assert.deepEqual(await postgres.roles(), before);
    },
  );

  it('an invalid template is refused before anything reaches the database', TIMEOUT, async () => {
    const before = await postgres.roles();
    const user = { name: newUsername('app', Date.now()), password: newPassword(), expiresAtMs: Date.now() + HOUR };
    const error = await refusal(
      createUser(config, { ...TEMPLATES, creationSql: `${CREATION} GRANT "{{group}}" TO "{{name}}";` }, user),
      'DB_TEMPLATE_INVALID',
    );
    assert.match(error.message, /unknown placeholder \{\{group\}\}/);
    await refusal(
      createUser(config, { ...TEMPLATES, creationSql: `${CREATION} COMMIT; SELECT 1/0;` }, user),
      'DB_TEMPLATE_INVALID',
    );
    await refusal(
      renewUser(config, { ...TEMPLATES, renewSql: `ALTER ROLE "{{name}}" PASSWORD '{{password}}'` }, user),
      'DB_TEMPLATE_INVALID',
    );
    assert.deepEqual(await postgres.roles(), before);
  });

  it('connections carry the statement and idle-in-transaction timeouts', TIMEOUT, async () => {
    // Checked from inside the creation transaction, where a template runs.
    const check = `${CREATION}
      DO $$ BEGIN
        IF current_setting('statement_timeout') <> '10s' OR current_setting('idle_in_transaction_session_timeout') <> '30s'
        THEN RAISE EXCEPTION 'timeouts are % and %', current_setting('statement_timeout'),
          current_setting('idle_in_transaction_session_timeout');
        END IF;
      END $$;`;
    const user = await created({ ...TEMPLATES, creationSql: check });
    await revokeUser(config, TEMPLATES, user.name);
  });

  it('a wrong admin password is DB_UNREACHABLE, naming the URL without any password', TIMEOUT, async () => {
    const wrong = 'wr0ng pass/word';
    const url = `postgres://${ADMIN_USER}:${encodeURIComponent(wrong)}@127.0.0.1:${postgres.port}/app`;
    const error = await refusal(checkConnection({ url }), 'DB_UNREACHABLE');
    assert.equal(error.sqlState, '28P01');
    assert.ok(error.message.includes(`postgres://${ADMIN_USER}:***@127.0.0.1:${postgres.port}/app`), error.message);
    assert.match(error.message, /28P01 password authentication failed/);
    assertClean(error.message, [wrong, ADMIN_PASSWORD]);
    const user = { name: newUsername('app', Date.now()), password: newPassword(), expiresAtMs: Date.now() + HOUR };
    const failed = await refusal(createUser({ url }, TEMPLATES, user), 'DB_UNREACHABLE');
    assertClean(failed.message, [wrong, user.password]);
    await refusal(checkConnection({ url: `mysql://root:${wrong}@127.0.0.1/app` }), 'DB_UNREACHABLE');
  });

  it('a stopped server is DB_UNREACHABLE at once; the next call after restart works', TIMEOUT, async () => {
    await postgres.stopServer();
    try {
      const user = { name: newUsername('app', Date.now()), password: newPassword(), expiresAtMs: Date.now() + HOUR };
      const started = Date.now();
      const error = await refusal(createUser(config, TEMPLATES, user), 'DB_UNREACHABLE');
      assert.ok(Date.now() - started < 5_000);
      assert.match(error.message, /ECONNREFUSED/);
      assert.ok(error.message.includes(redactedUrl(config.url)));
      assertClean(error.message, [ADMIN_PASSWORD, user.password]);
      await refusal(revokeUser(config, TEMPLATES, user.name), 'DB_UNREACHABLE');
    } finally {
      await postgres.restart();
    }
    await checkConnection(config);
  });

  it('a hung server is DB_UNREACHABLE within the connect timeout', TIMEOUT, async () => {
    await postgres.pause();
    try {
      const started = Date.now();
      const error = await refusal(checkConnection(config), 'DB_UNREACHABLE');
      const took = Date.now() - started;
      assert.ok(took >= 4_000 && took < 8_000, `took ${took} ms`);
      assert.match(error.message, /timeout/i);
      assertClean(error.message, [ADMIN_PASSWORD]);
    } finally {
      await postgres.resume();
    }
    await checkConnection(config);
  });

  it(
    'a server that hangs in the middle of a creation: DB_UNREACHABLE in bounded time, nothing made',
    TIMEOUT,
    async () => {
      const before = await postgres.roles();
      const slow = { ...TEMPLATES, creationSql: `${CREATION} SELECT pg_sleep(2);` };
      const user = { name: newUsername('app', Date.now()), password: newPassword(), expiresAtMs: Date.now() + HOUR };
      const started = Date.now();
      const creating = createUser(config, slow, user);
      // Paused while the connection is being made or the transaction is open: either way the
      // client gives up (connect timeout, or the read timeout past statement_timeout) and drops the
      // connection, and the server rolls back what it had not committed.
      await new Promise((resolve) => setTimeout(resolve, 800));
      await postgres.pause();
      let error: DatabaseEngineError;
      try {
        error = await refusal(creating, 'DB_UNREACHABLE');
      } finally {
        await postgres.resume();
      }
      const took = Date.now() - started;
      assert.ok(took < 16_000, `took ${took} ms`);
      assertClean(error.message, [ADMIN_PASSWORD, user.password]);
      assert.deepEqual(await postgres.roles(), before);
      assert.equal(await postgres.canLogin(user.name, user.password), false);
    },
  );
});
