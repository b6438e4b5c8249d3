import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { type ClientError, CofferClient } from '../../src/client/client.ts';
import { newLeafKey } from '../../src/crypto/pki.ts';
import { createLogger } from '../../src/util/logger.ts';
import { coffer, eventually } from '../processes/processes.ts';
import { InProcessCluster } from '../server/in-process-cluster.ts';
import { TestPostgres } from './support/postgres.ts';

// Dynamic database credentials against a real PostgreSQL (started here on loopback): users made
// on demand, working until their lease ends and dropped by the leader after; renewals capped;
// revocation by id and by prefix; a database down at expiry; a leader lost while leases are due.

let pg: TestPostgres;
let cluster: InProcessCluster;
let admin: CofferClient;
let dir: string;
let pgDir = '';
let logs = '';
const CREATE = `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{{name}}";`;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'coffer-db-'));
  // A directory of its own: as root the harness hands it to the postgres user.
  pgDir = mkdtempSync(join(tmpdir(), 'coffer-pg-'));
  pg = await TestPostgres.start(pgDir);
  await pg.query('CREATE TABLE orders (id int PRIMARY KEY, item text)');
  await pg.query("INSERT INTO orders VALUES (1, 'tea')");
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logs += chunk.toString();
      done();
    },
  });
  cluster = await InProcessCluster.start(3, {
    logger: createLogger({ level: 'debug', format: 'json', destination: sink }),
  });
  await cluster.servesReads(0);
  admin = cluster.adminClient();
  await admin.configureDatabase('main', pg.adminUrl);
  await admin.putDatabaseRole({
    db: 'main',
    role: 'readonly',
    creationSql: CREATE,
    defaultTtlSeconds: 3600,
    maxTtlSeconds: 7200,
  });
  await admin.putDatabaseRole({
    db: 'main',
    role: 'brief',
    creationSql: CREATE,
    defaultTtlSeconds: 10,
    maxTtlSeconds: 20,
  });
});

after(async () => {
  admin?.close();
  await cluster?.stop();
  await pg?.stop();
  rmSync(dir, { recursive: true, force: true });
  if (pgDir !== '') rmSync(pgDir, { recursive: true, force: true });
});

async function selects(user: string, password: string): Promise<string> {
  const client = await pg.connect(user, password);
  try {
    const rows = await client.query<{ item: string }>('SELECT item FROM orders WHERE id = 1');
    return rows.rows[0]!.item;
  } finally {
    await client.end();
  }
}

test('credentials work in PostgreSQL until their lease ends, then the leader drops the user', {
  timeout: 90_000,
}, async () => {
  const creds = await admin.getCredentials('main', 'brief');
  assert.match(creds.username, /^v-brief-/);
  assert.equal(creds.ttlSeconds, 10);
  assert.equal(await selects(creds.username, creds.password), 'tea');
  const lease = (await admin.listLeases('main/brief/')).leases.find((l) => l.leaseId === creds.leaseId);
  assert.equal(lease?.state, 'active');
  assert.equal(lease?.owner, 'admin');
  // The leader revokes it when it ends: the user is gone, and so is the lease.
  await eventually('the leader to revoke the ended lease', 40_000, async () =>
    (await admin.listLeases('main/brief/')).leases.some((l) => l.leaseId === creds.leaseId) ? undefined : true,
  );
  assert.equal(await pg.canLogin(creds.username, creds.password), false);
  assert.ok(!(await pg.roles()).includes(creds.username), 'the user was dropped, not only expired');
  assert.doesNotMatch(logs, new RegExp(creds.password), 'no password in the managers’ logs');
  assert.doesNotMatch(logs, new RegExp(pg.adminPassword.replace(/[^A-Za-z0-9]/g, '.')), 'nor the admin’s');
});

test('a renewal moves the end, never past the maximum; revoking by id and by prefix drops the users', {
  timeout: 90_000,
}, async () => {
  const a = await admin.getCredentials('main', 'readonly', 600);
  const renewed = await admin.renewLease(a.leaseId, 999_999);
  assert.equal(renewed.expiresAtMs, renewed.maxExpiresAtMs, 'capped at the maximum');
  const validUntil = await pg.query<{ v: Date }>('SELECT rolvaliduntil AS v FROM pg_roles WHERE rolname = $1', [
    a.username,
  ]);
  assert.ok(
    Math.abs(validUntil.rows[0]!.v.getTime() - renewed.maxExpiresAtMs) < 2000,
    'the database moved VALID UNTIL too',
  );
  const byId = await admin.revokeLeases({ leaseId: a.leaseId });
  assert.deepEqual(byId, { leaseIds: [a.leaseId], revoked: true });
  assert.equal(await pg.canLogin(a.username, a.password), false);
  const b = await admin.getCredentials('main', 'readonly');
  const c = await admin.getCredentials('main', 'readonly');
  const byPrefix = await admin.revokeLeases({ prefix: 'main/readonly/' });
  assert.deepEqual(new Set(byPrefix.leaseIds), new Set([b.leaseId, c.leaseId]));
  assert.equal(byPrefix.revoked, true);
  for (const x of [b, c]) assert.equal(await pg.canLogin(x.username, x.password), false);
  const missing = await admin.renewLease(a.leaseId).then(
    () => assert.fail('a revoked lease was renewed'),
    (e: unknown) => e as ClientError,
  );
  assert.equal(missing.reason, 'LEASE_NOT_FOUND');
});

test('the database down at expiry: the lease stays due, the metrics count it overdue, and it is revoked once the database returns', {
  timeout: 120_000,
}, async () => {
  const creds = await admin.getCredentials('main', 'brief');
  await pg.stopServer();
  try {
    // Past its end, the leader cannot reach the database: the lease is still there, overdue.
    await new Promise((resolve) => setTimeout(resolve, 14_000));
    const lease = (await admin.listLeases('main/brief/')).leases.find((l) => l.leaseId === creds.leaseId);
    assert.ok(lease !== undefined, 'a lease whose user could not be dropped is not forgotten');
    assert.ok(lease.expiresAtMs < Date.now());
    // The metrics say so (overdue: 30 s past its end).
    await eventually('the lease to count as overdue', 40_000, async () => {
      const text = await cluster.nodes[0]!.metrics.text();
      return /coffer_leases_overdue\{[^}]*\} [1-9]/.test(text) ? true : undefined;
    });
  } finally {
    await pg.restart();
  }
  await eventually('the leader to revoke it once the database is back', 90_000, async () =>
    (await admin.listLeases('main/brief/')).leases.some((l) => l.leaseId === creds.leaseId) ? undefined : true,
  );
  assert.equal(await pg.canLogin(creds.username, creds.password), false);
  assert.match(await cluster.nodes[0]!.metrics.text(), /coffer_leases_overdue\{[^}]*\} 0/);
});

test('another identity may not renew or revoke a lease it does not own; bad input is refused with its reason', {
  timeout: 60_000,
}, async () => {
  const creds = await admin.getCredentials('main', 'readonly');
  await admin.putPolicy('readonly-creds', [{ path: 'sys/db/main/creds/readonly', capabilities: ['read'] }]);
  const key = newLeafKey();
  const issued = await admin.issueIdentity('other-app', ['readonly-creds'], key.publicPem);
  const other = new CofferClient({
    addresses: cluster.addresses,
    caPem: issued.caCertificatePem,
    certPem: issued.certificatePem,
    keyPem: key.privatePem,
  });
  try {
    // It may get credentials of its own, but not touch the admin's lease, nor learn whether one exists.
    const own = await eventually('the new identity to be known', 10_000, async () =>
      other.getCredentials('main', 'readonly').catch(() => undefined),
    );
    await other.revokeLeases({ leaseId: own.leaseId });
    for (const attempt of [
      () => other.renewLease(creds.leaseId),
      () => other.revokeLeases({ leaseId: creds.leaseId }),
      () => other.renewLease('main/readonly/00000000000000000000000000000000'),
      () => other.revokeLeases({ prefix: 'main/' }),
    ]) {
      const error = await attempt().then(
        () => assert.fail('another identity touched a lease it does not own'),
        (e: unknown) => e as ClientError,
      );
      assert.equal(error.code, grpc.status.PERMISSION_DENIED, error.message);
    }
    assert.ok((await admin.listLeases('main/readonly/')).leases.some((l) => l.leaseId === creds.leaseId));
    const refused = await admin.getCredentials('main', 'nope').then(
      () => assert.fail('a missing role gave credentials'),
      (e: unknown) => e as ClientError,
    );
    assert.equal(refused.reason, 'DB_ROLE_NOT_FOUND');
    const badSql = await admin
      .putDatabaseRole({ db: 'main', role: 'bad', creationSql: 'CREATE ROLE "{{name}}" {{nonsense}}' })
      .then(
        () => assert.fail('a template with an unknown placeholder was stored'),
        (e: unknown) => e as ClientError,
      );
    assert.equal(badSql.code, grpc.status.INVALID_ARGUMENT);
    const unreachable = await admin.configureDatabase('other', 'postgres://x:y@127.0.0.1:1/app').then(
      () => assert.fail('a database that cannot be reached was configured'),
      (e: unknown) => e as ClientError,
    );
    assert.equal(unreachable.reason, 'DB_UNREACHABLE');
    assert.doesNotMatch(unreachable.message, /x:y@/, 'the message does not show the password');
  } finally {
    other.close();
    await admin.revokeLeases({ leaseId: creds.leaseId });
  }
});

test('coffer db configure, db role put, creds get --output json, lease list and revoke (the scripts contract)', {
  timeout: 60_000,
}, async () => {
  const env = cluster.adminEnv();
  const urlFile = join(dir, 'url');
  writeFileSync(urlFile, pg.adminUrl, { mode: 0o600 });
  const sqlFile = join(dir, 'create.sql');
  writeFileSync(sqlFile, CREATE);
  const configured = await coffer(['db', 'configure', 'cli', '--url-file', urlFile], '', env);
  assert.equal(configured.code, 0, configured.stderr);
  assert.doesNotMatch(configured.stdout, new RegExp(pg.adminPassword.replace(/[^A-Za-z0-9]/g, '.')));
  const put = await coffer(
    ['db', 'role', 'put', 'cli/app', '--creation-sql-file', sqlFile, '--default-ttl', '1h', '--max-ttl', '24h'],
    '',
    env,
  );
  assert.equal(put.code, 0, put.stderr);
  const got = await coffer(['creds', 'get', 'cli/app', '--output', 'json'], '', env);
  assert.equal(got.code, 0, got.stderr);
  const creds = JSON.parse(got.stdout) as { username: string; password: string; lease_id: string; ttl_seconds: number };
  assert.deepEqual(Object.keys(creds).sort(), ['lease_id', 'password', 'ttl_seconds', 'username']);
  assert.equal(creds.ttl_seconds, 3600);
  assert.equal(await selects(creds.username, creds.password), 'tea');
  const listed = await coffer(['lease', 'list', '--prefix', 'cli/'], '', env);
  assert.match(listed.stdout, new RegExp(creds.lease_id));
  const revoked = await coffer(['lease', 'revoke', creds.lease_id], '', env);
  assert.equal(revoked.code, 0, revoked.stderr);
  assert.match(revoked.stdout, /1 lease\(s\) revoked/);
  assert.equal(await pg.canLogin(creds.username, creds.password), false);
});

test('the leader lost while leases are due (three made at once): the next leader revokes them', {
  timeout: 120_000,
}, async () => {
  const creds = await Promise.all([1, 2, 3].map(() => admin.getCredentials('main', 'brief')));
  const leaderAt = cluster.nodes.findIndex((n) => n.manager.raftStatus()?.role === 'leader');
  // Stopped a moment before the leases end: the others elect a leader, which finds them due.
  await new Promise((resolve) => setTimeout(resolve, 8_000));
  await cluster.nodes[leaderAt]!.stop();
  const others = cluster.addresses.filter((_, k) => k !== leaderAt);
  const survivor = cluster.adminClient(others);
  try {
    await eventually('the new leader to revoke every due lease', 60_000, async () => {
      const left = (await survivor.listLeases('main/brief/').catch(() => ({ leases: [{}] }))).leases;
      return left.length === 0 ? true : undefined;
    });
    for (const c of creds) assert.equal(await pg.canLogin(c.username, c.password), false);
    const roles = await pg.roles();
    for (const c of creds) assert.ok(!roles.includes(c.username));
  } finally {
    survivor.close();
  }
});
