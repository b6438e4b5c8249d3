import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { ADMIN_USER, DATABASE, TestPostgres } from './support/postgres.ts';

// The harness is what the tests of dynamic database credentials stand on: if its server let in a
// role it should refuse (a wrong password, a dropped role, one past VALID UNTIL), those tests
// would prove nothing. So this checks it the way the feature will use it: the admin creates a role
// from SQL, a client logs in as that role, the admin drops it, the login is refused; and the
// server can be made to hang or go down and come back, for leases that end while it is away.

const TIMEOUT = { timeout: 90_000 };

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A VALID UNTIL timestamp `ms` from now (negative: in the past). */
function validUntil(ms: number): string {
  return new Date(Date.now() + ms).toISOString();
}

/** Resolves 'pending' if `promise` has not settled within `ms`. */
function settledWithin<T>(promise: Promise<T>, ms: number): Promise<T | 'pending'> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<'pending'>((resolve) => {
      timer = setTimeout(() => resolve('pending'), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

describe('TestPostgres', TIMEOUT, () => {
  let dir: string;
  let postgres: TestPostgres;
  /** The admin's own connection, as the manager would hold one, from adminUrl alone. */
  let admin: pg.Client;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'coffer-pg-'));
    postgres = await TestPostgres.start(dir, { password: 'admin pw/with:odd@chars' });
    admin = new pg.Client({ connectionString: postgres.adminUrl, connectionTimeoutMillis: 5_000 });
    admin.on('error', () => {});
    await admin.connect();
  });
  after(async () => {
    await admin?.end().catch(() => {});
    await postgres?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
    assert.equal(dir === undefined || !existsSync(dir), true, `${dir} is left`);
  });

  it('runs postgres on loopback, with coffer_admin a superuser that logs in from adminUrl', TIMEOUT, async () => {
    assert.equal(postgres.host, '127.0.0.1');
    assert.ok(postgres.port > 0);
    assert.equal(
      postgres.adminUrl,
      `postgres://coffer_admin:${encodeURIComponent('admin pw/with:odd@chars')}@127.0.0.1:${postgres.port}/app`,
    );
    assert.match(postgres.version, /^\d+$/);
    assert.ok(isRunning(postgres.pid));
    assert.ok(existsSync(postgres.logPath));
    const { rows } = await admin.query<{ user: string; db: string; superuser: string }>(
      "SELECT current_user AS user, current_database() AS db, current_setting('is_superuser') AS superuser",
    );
    assert.deepEqual(rows, [{ user: ADMIN_USER, db: DATABASE, superuser: 'on' }]);
    // Nothing in the way of a test's own roles, and the admin is not counted among them.
    assert.deepEqual(await postgres.roles(), []);
    // The admin's password is checked too: trust is nowhere.
    assert.equal(await postgres.canLogin(ADMIN_USER, 'wrong'), false);
  });

  it('a role the admin creates logs in until it is dropped; a wrong password is refused', TIMEOUT, async () => {
    // As the feature's creation template would: LOGIN, PASSWORD, VALID UNTIL.
    await admin.query(`CREATE ROLE "v-app-1" WITH LOGIN PASSWORD 'pw-1' VALID UNTIL '${validUntil(3_600_000)}'`);
    await admin.query('GRANT SELECT ON ALL TABLES IN SCHEMA public TO "v-app-1"');
    assert.deepEqual(await postgres.roles(), ['v-app-1']);

    const client = await postgres.connect('v-app-1', 'pw-1');
    try {
      const { rows } = await client.query<{ user: string }>('SELECT current_user AS user');
      assert.deepEqual(rows, [{ user: 'v-app-1' }]);
    } finally {
      await client.end();
    }
    assert.equal(await postgres.canLogin('v-app-1', 'pw-1'), true);

    await assert.rejects(postgres.connect('v-app-1', 'pw-2'), (error: unknown) => {
      assert.ok(error instanceof pg.DatabaseError);
      assert.equal(error.code, '28P01');
      return true;
    });
    assert.equal(await postgres.canLogin('v-app-1', 'pw-2'), false);

    // What the revocation template would do.
    await admin.query('DROP ROLE "v-app-1"');
    assert.equal(await postgres.canLogin('v-app-1', 'pw-1'), false);
    await assert.rejects(postgres.connect('v-app-1', 'pw-1'), { code: '28P01' });
    assert.deepEqual(await postgres.roles(), []);
  });

  it('enforces VALID UNTIL, and query() runs SQL as a superuser with parameters', TIMEOUT, async () => {
    await postgres.query(`CREATE ROLE expired WITH LOGIN PASSWORD 'pw' VALID UNTIL '${validUntil(-60_000)}'`);
    assert.equal(await postgres.canLogin('expired', 'pw'), false);
    const { rows } = await postgres.query<{ rolname: string; expired: boolean }>(
      'SELECT rolname, rolvaliduntil < now() AS expired FROM pg_roles WHERE rolname = $1',
      ['expired'],
    );
    assert.deepEqual(rows, [{ rolname: 'expired', expired: true }]);
    await postgres.query('DROP ROLE expired');
    assert.deepEqual(await postgres.roles(), []);
  });

  it('pause() makes the server hang, open connections included, and resume() brings it back', TIMEOUT, async () => {
    await postgres.query(`CREATE ROLE lease WITH LOGIN PASSWORD 'pw'`);
    const open = await postgres.connect('lease', 'pw');
    try {
      await postgres.pause();
      // A new connection times out (connectionTimeoutMillis), not refused: a host that stopped answering.
      await assert.rejects(postgres.canLogin('lease', 'pw'), /timeout/i);
      // A query on an open connection waits rather than fails.
      const pending = open.query<{ one: number }>('SELECT 1 AS one');
      assert.equal(await settledWithin(pending, 1_000), 'pending');
      await postgres.resume();
      assert.deepEqual((await pending).rows, [{ one: 1 }]);
      assert.equal(await postgres.canLogin('lease', 'pw'), true);
    } finally {
      await postgres.resume();
      await open.end().catch(() => {});
    }
  });

  it(
    'stopServer() refuses connections and restart() brings the same roles back on the same port',
    TIMEOUT,
    async () => {
      const firstPid = postgres.pid;
      const port = postgres.port;
      await postgres.stopServer();
      assert.equal(postgres.running, false);
      assert.equal(isRunning(firstPid), false);
      await assert.rejects(postgres.canLogin('lease', 'pw'), { code: 'ECONNREFUSED' });
      // The admin's held connection is gone with the server.
      await assert.rejects(admin.query('SELECT 1'));

      await postgres.restart();
      assert.equal(postgres.running, true);
      assert.notEqual(postgres.pid, firstPid);
      assert.equal(postgres.port, port);
      assert.equal(await postgres.canLogin('lease', 'pw'), true);
      assert.deepEqual(await postgres.roles(), ['lease']);
      await admin.end().catch(() => {});
      admin = new pg.Client({ connectionString: postgres.adminUrl, connectionTimeoutMillis: 5_000 });
      admin.on('error', () => {});
      await admin.connect();
      await admin.query('DROP ROLE lease');
      assert.deepEqual(await postgres.roles(), []);
    },
  );

  it('stop() ends the postmaster and its children by PID, and is idempotent', TIMEOUT, async () => {
    await admin.end();
    const pid = postgres.pid;
    await postgres.stop();
    await postgres.stop();
    assert.equal(isRunning(pid), false);
    assert.equal(postgres.running, false);
    await assert.rejects(postgres.restart(), /after stop/);
  });
});
