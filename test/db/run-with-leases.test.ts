import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ClientError, type LeaseReply } from '../../src/client/client.ts';
import { type IssuedCredentials, type KeeperClock, type LeaseApi, LeaseKeeper } from '../../src/cli/lease-keeper.ts';
import { CLI_ARGV, coffer } from '../processes/processes.ts';
import { DbCluster } from './support/db-cluster.ts';

// `coffer run --creds PREFIX=DB/ROLE`: the child gets a database user under a lease, renewed while
// it runs and revoked when it exits. The keeper's timing with a fake clock first; then the real
// CLI against a real PostgreSQL and three in-process managers.

// ---- the keeper's timing, with a fake clock ------------------------------------------------------

const flush = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A monotonic clock whose timers fire only when advance() passes them. */
class FakeClock implements KeeperClock {
  #nowMs = 5_000;
  #tasks: Array<{ atMs: number; run: () => void; live: boolean }> = [];
  nowMs(): number {
    return this.#nowMs;
  }
  schedule(run: () => void, delayMs: number): { cancel(): void } {
    const task = { atMs: this.#nowMs + delayMs, run, live: true };
    this.#tasks.push(task);
    return { cancel: () => (task.live = false) };
  }
  /** The delays of the timers still to fire, from now. */
  get pendingMs(): number[] {
    return this.#tasks.filter((t) => t.live).map((t) => t.atMs - this.#nowMs);
  }
  async advance(byMs: number): Promise<void> {
    const targetMs = this.#nowMs + byMs;
    for (;;) {
      await flush();
      const next = this.#tasks.filter((t) => t.live && t.atMs <= targetMs).sort((a, b) => a.atMs - b.atMs)[0];
      if (next === undefined) break;
      next.live = false;
      this.#nowMs = next.atMs;
      next.run();
    }
    this.#nowMs = targetMs;
    await flush();
  }
}

/** The cluster's clock: far from the local monotonic one, which the keeper must not compare it with. */
const SERVER_START_MS = Date.UTC(2001, 0, 1);

class FakeApi implements LeaseApi {
  readonly renewedAtMs: number[] = [];
  readonly revoked: string[] = [];
  #issued = 0;
  constructor(
    readonly clock: FakeClock,
    readonly ttlSeconds: number,
    public renew: (leaseId: string) => LeaseReply | Error,
    public revoke: (leaseId: string) => { leaseIds: string[]; revoked: boolean } | Error = (leaseId) => ({
      leaseIds: [leaseId],
      revoked: true,
    }),
  ) {}
  async getCredentials(db: string, role: string): Promise<IssuedCredentials> {
    const leaseId = `${db}/${role}/${++this.#issued}`;
    const expiresAtMs = SERVER_START_MS + this.ttlSeconds * 1000;
    return { username: `v-${role}`, password: 'pw', leaseId, ttlSeconds: this.ttlSeconds, expiresAtMs };
  }
  async renewLease(leaseId: string): Promise<LeaseReply> {
    this.renewedAtMs.push(this.clock.nowMs());
    const outcome = this.renew(leaseId);
    if (outcome instanceof Error) throw outcome;
    return outcome;
  }
  async revokeLeases(target: { leaseId: string }): Promise<{ leaseIds: string[]; revoked: boolean }> {
    this.revoked.push(target.leaseId);
    const outcome = this.revoke(target.leaseId);
    if (outcome instanceof Error) throw outcome;
    return outcome;
  }
}

/** A renewal's answer: the cluster moved the lease's end to `expiresAtMs` (its clock), at most `maxExpiresAtMs`. */
function reply(leaseId: string, expiresAtMs: number, maxExpiresAtMs: number): LeaseReply {
  return {
    leaseId,
    db: 'main',
    role: 'app',
    username: 'v-app',
    owner: 'admin',
    issuedAtMs: SERVER_START_MS,
    expiresAtMs: Math.min(expiresAtMs, maxExpiresAtMs),
    maxExpiresAtMs,
    state: 'active',
  };
}

const unavailable = (): ClientError => new ClientError(grpc.status.UNAVAILABLE, 'no manager answered');

function keeperWith(api: FakeApi): { keeper: LeaseKeeper; reports: string[] } {
  const reports: string[] = [];
  const keeper = new LeaseKeeper({ api: () => api, report: (line) => reports.push(line), clock: api.clock });
  return { keeper, reports };
}

describe('the lease keeper (a fake clock)', () => {
  test('renews at two thirds of the time left by the monotonic clock, until a renewal reaches the maximum: then one warning', async () => {
    const clock = new FakeClock();
    const maxMs = SERVER_START_MS + 60_000;
    // The cluster's clock moves as the local one does; each renewal gives 30 s from the cluster's now.
    const api = new FakeApi(clock, 30, (id) => reply(id, SERVER_START_MS + (clock.nowMs() - 5_000) + 30_000, maxMs));
    const { keeper, reports } = keeperWith(api);
    const issued = await keeper.acquire('PG', 'main', 'app');
    keeper.start();
    assert.deepEqual(clock.pendingMs, [20_000], 'two thirds of 30 s');
    await clock.advance(19_999);
    assert.equal(api.renewedAtMs.length, 0);
    await clock.advance(1);
    assert.deepEqual(api.renewedAtMs, [25_000]);
    // Renewed at +20 s to +50 s: 30 s left, renewed again 20 s later.
    assert.deepEqual(clock.pendingMs, [20_000]);
    await clock.advance(20_000);
    // That renewal reached the maximum (+60 s): no more renewals, one warning naming the end.
    assert.deepEqual(api.renewedAtMs, [25_000, 45_000]);
    assert.deepEqual(clock.pendingMs, []);
    assert.equal(reports.length, 1, reports.join('\n'));
    assert.match(
      reports[0]!,
      new RegExp(
        `lease ${issued.leaseId} \\(PG_\\*\\) cannot be renewed past its maximum: the credentials end at 2001-01-01T00:01:00.000Z, in 20.0 s`,
      ),
    );
    await clock.advance(120_000);
    assert.equal(api.renewedAtMs.length, 2);
    assert.equal(reports.length, 1);
  });

  test('a renewal the cluster did not move stops the renewals too; time is not read from its timestamps', async () => {
    const clock = new FakeClock();
    // A cluster whose answers say nothing about the local clock: its end stays where it was.
    const api = new FakeApi(clock, 15, (id) => reply(id, SERVER_START_MS + 15_000, SERVER_START_MS + 99_000_000));
    const { keeper, reports } = keeperWith(api);
    await keeper.acquire('PG', 'main', 'app');
    keeper.start();
    await clock.advance(10_000);
    assert.equal(api.renewedAtMs.length, 1);
    assert.deepEqual(clock.pendingMs, []);
    assert.match(
      reports.join('\n'),
      /cannot be renewed past its maximum: the credentials end at 2001-01-01T00:00:15.000Z, in 5.0 s/,
    );
  });

  test('a failed renewal is tried again with growing pauses while time remains, then given up once', async () => {
    const clock = new FakeClock();
    let failuresLeft = 2;
    const api = new FakeApi(clock, 30, (id) =>
      failuresLeft-- > 0
        ? unavailable()
        : reply(id, SERVER_START_MS + (clock.nowMs() - 5_000) + 30_000, SERVER_START_MS + 3_600_000),
    );
    const { keeper, reports } = keeperWith(api);
    await keeper.acquire('PG', 'main', 'app');
    keeper.start();
    await clock.advance(23_000);
    assert.deepEqual(api.renewedAtMs, [25_000, 26_000, 28_000], '1 s, then 2 s after');
    assert.equal(reports.length, 2);
    assert.match(reports[0]!, /failed \(no manager answered\); it has 10.0 s left, trying again in 1.0 s/);
    assert.match(reports[1]!, /it has 9.0 s left, trying again in 2.0 s/);
    // Renewed at +23 s: 30 s from there.
    assert.deepEqual(clock.pendingMs, [20_000]);

    // Failing for good now: closer and closer tries until the end, then one line saying so.
    api.renew = () => unavailable();
    reports.length = 0;
    await clock.advance(60_000);
    const endMs = 5_000 + 23_000 + 30_000;
    const tries = api.renewedAtMs.slice(3);
    assert.ok(tries.length >= 5 && tries.length <= 12, `${tries.length} tries`);
    assert.ok(
      tries.every((atMs) => atMs <= endMs + 250),
      'no try long after the end',
    );
    assert.match(
      reports.at(-1)!,
      /ended before it could be renewed \(no manager answered\): its credentials no longer work/,
    );
    assert.equal(reports.filter((r) => r.includes('ended before')).length, 1);
    assert.deepEqual(clock.pendingMs, []);
  });

  test('a lease the cluster no longer has is reported once, not renewed again and not revoked', async () => {
    const clock = new FakeClock();
    const api = new FakeApi(
      clock,
      30,
      (id) =>
        new ClientError(grpc.status.NOT_FOUND, `lease ${id} does not exist, or is being revoked`, {
          reason: 'LEASE_NOT_FOUND',
          metadata: {},
        }),
    );
    const { keeper, reports } = keeperWith(api);
    const issued = await keeper.acquire('PG', 'main', 'app');
    keeper.start();
    await clock.advance(120_000);
    assert.equal(api.renewedAtMs.length, 1);
    assert.equal(reports.length, 1);
    assert.match(
      reports[0]!,
      /was refused \(LEASE_NOT_FOUND: .*\): it was revoked; not trying again, the command keeps running/,
    );
    const outcome = await keeper.revokeAll();
    assert.deepEqual(outcome, { revoked: [issued.leaseId], due: [], failed: [] });
    assert.deepEqual(api.revoked, []);
  });

  test('revokeAll stops the renewals, revokes every lease, and names those it could not revoke', async () => {
    const clock = new FakeClock();
    const api = new FakeApi(
      clock,
      30,
      (id) => reply(id, SERVER_START_MS + 60_000, SERVER_START_MS + 3_600_000),
      (id) => (id.endsWith('/2') ? unavailable() : { leaseIds: [id], revoked: !id.endsWith('/3') }),
    );
    const { keeper, reports } = keeperWith(api);
    const a = await keeper.acquire('A', 'main', 'app');
    const b = await keeper.acquire('B', 'main', 'app');
    const c = await keeper.acquire('C', 'main', 'app');
    keeper.start();
    const revoking = keeper.revokeAll();
    await clock.advance(10_000);
    const outcome = await revoking;
    assert.deepEqual(outcome, { revoked: [a.leaseId], due: [c.leaseId], failed: [b.leaseId] });
    assert.equal(api.revoked.filter((id) => id === b.leaseId).length, 3, 'tried three times');
    assert.match(
      reports.join('\n'),
      new RegExp(
        `could not revoke lease ${b.leaseId} \\(B_\\*\\): no manager answered; the cluster revokes it when it ends, at 2001-01-01T00:00:30.000Z`,
      ),
    );
    assert.match(
      reports.join('\n'),
      new RegExp(`lease ${c.leaseId} \\(C_\\*\\) is revoked, but its database has not confirmed yet`),
    );
    await clock.advance(120_000);
    assert.deepEqual(api.renewedAtMs, [], 'no renewal after revokeAll');
    assert.deepEqual(keeper.leaseIds, []);
  });
});

// ---- coffer run --creds, the real CLI against PostgreSQL -------------------------------------------

/** The child scripts load pg by its path: they run with no node_modules of their own. */
const PG_MODULE = createRequire(import.meta.url).resolve('pg');

describe('coffer run --creds (PostgreSQL, three managers)', () => {
  let db: DbCluster;
  let dir = '';

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'coffer-run-leases-'));
    db = await DbCluster.start();
    await db.putRole('app', 3600, 7200);
    await db.putRole('renewed', 10, 60);
    await db.putRole('capped', 10, 12);
  });

  after(async () => {
    await db?.stop();
    if (dir !== '') rmSync(dir, { recursive: true, force: true });
  });

  /**
   * A node child that waits `waitMs`, logs in with PG_USERNAME and PG_PASSWORD, reads the table,
   * prints what it read and writes the credentials to `file` (for the test to try them after).
   */
  function pgChild(waitMs: number, file: string): string[] {
    const script = `
const pg = require(${JSON.stringify(PG_MODULE)});
setTimeout(async () => {
  const client = new pg.Client({ host: '127.0.0.1', port: ${db.pg.port}, database: 'app',
    user: process.env.PG_USERNAME, password: process.env.PG_PASSWORD });
  await client.connect();
  const rows = await client.query('SELECT item FROM orders WHERE id = 1');
  await client.end();
  const { PG_USERNAME: username, PG_PASSWORD: password, PG_LEASE_ID: leaseId } = process.env;
  require('node:fs').writeFileSync(${JSON.stringify(file)}, JSON.stringify({ username, password, leaseId }), { mode: 0o600 });
  process.stdout.write(rows.rows[0].item);
}, ${waitMs});`;
    return [process.execPath, '-e', script];
  }

  const readCreds = (file: string): { username: string; password: string; leaseId: string } =>
    JSON.parse(readFileSync(file, 'utf8')) as { username: string; password: string; leaseId: string };

  /** No lease left anywhere, and the user gone from PostgreSQL: refused at login, not in pg_roles. */
  async function allRevoked(creds: { username: string; password: string }): Promise<void> {
    assert.deepEqual((await db.admin.listLeases('')).leases, [], 'no lease left');
    assert.ok(!(await db.pg.roles()).includes(creds.username), 'the user was dropped');
    assert.equal(await db.pg.canLogin(creds.username, creds.password), false);
  }

  test('the child logs in with the credentials it was given; once coffer run returns, the user and the lease are gone', {
    timeout: 30_000,
  }, async () => {
    const file = join(dir, 'first.json');
    const run = await coffer(['run', '--creds', 'PG=main/app', '--', ...pgChild(0, file)], '', db.adminEnv());
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, 'tea');
    assert.equal(run.stderr, '', 'nothing to report');
    const creds = readCreds(file);
    assert.match(creds.username, /^v-app-/);
    assert.match(creds.leaseId, /^main\/app\/[0-9a-f]{32}$/);
    assert.ok(!run.stdout.includes(creds.password) && !run.stderr.includes(creds.password));
    await allRevoked(creds);
  });

  test('a child that outlives the first ttl (10 s of at most 60 s) still logs in at its end: the lease was renewed', {
    timeout: 40_000,
  }, async () => {
    const file = join(dir, 'renewed.json');
    const run = await coffer(['run', '--creds', 'PG=main/renewed', '--', ...pgChild(15_000, file)], '', db.adminEnv());
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stdout, 'tea');
    assert.equal(run.stderr, '', 'renewed quietly');
    await allRevoked(readCreds(file));
  });

  test("the child's exit code is passed through; a lease at its maximum is warned about once, and the child keeps running", {
    timeout: 30_000,
  }, async () => {
    // 10 s, at most 12: the renewal at about 6.7 s reaches the maximum. With a secret from --env too.
    await db.admin.put('run/leases/secret', Buffer.from('shh'));
    const capped = await coffer(
      [
        'run',
        '--creds',
        'PG=main/capped',
        '--env',
        'X=run/leases/secret',
        '--',
        'sh',
        '-c',
        '[ "$X" = shh ] && [ -n "$PG_PASSWORD" ] || exit 3; sleep 8.5; exit 7',
      ],
      '',
      db.adminEnv(),
    );
    assert.equal(capped.code, 7, capped.stderr);
    const warnings = capped.stderr.split('\n').filter((line) => line.includes('cannot be renewed past its maximum'));
    assert.equal(warnings.length, 1, capped.stderr);
    assert.match(
      warnings[0]!,
      /^coffer run: lease main\/capped\/[0-9a-f]{32} \(PG_\*\) cannot be renewed past its maximum: the credentials end at \d{4}-\d\d-\d\dT[\d:.]+Z, in \d+\.\d s; the command keeps running$/,
    );
    assert.deepEqual((await db.admin.listLeases('')).leases, []);
  });

  test('a bad --creds value, or a second credential that cannot be had, is a clear error and leaves no lease', {
    timeout: 30_000,
  }, async () => {
    const ran = join(dir, 'ran');
    const rolesBefore = await db.pg.roles();
    const run = (args: string[]) => coffer(['run', ...args, '--', 'touch', ran], '', db.adminEnv());
    const [malformed, nothing, twice, missing, second] = await Promise.all([
      run(['--creds', 'PG=main']),
      run([]),
      run(['--creds', 'PG=main/app', '--env', 'PG_PASSWORD=x']),
      // The secrets are read first: one missing, and no lease is taken.
      run(['--env', 'X=run/leases/absent', '--creds', 'PG=main/app']),
      // The first is had, the second refused: the first is revoked before coffer run ends.
      run(['--creds', 'PG=main/app', '--creds', 'OTHER=main/missing']),
    ]);
    for (const r of [malformed, nothing, twice, missing, second]) assert.equal(r.code, 1, r.stderr);
    assert.match(malformed.stderr, /--creds takes PREFIX=DB\/ROLE, e\.g\. PG=main\/readonly .*"PG=main" is not that/);
    assert.match(nothing.stderr, /give CMD something: --env VAR=NAME .* or --creds PREFIX=DB\/ROLE/);
    assert.match(twice.stderr, /PG_PASSWORD would be set twice/);
    assert.match(missing.stderr, /NOT_FOUND: .*run\/leases\/absent/);
    assert.match(second.stderr, /NOT_FOUND: database role main\/missing does not exist/);
    assert.ok(!existsSync(ran), 'the command never ran');
    assert.deepEqual((await db.admin.listLeases('')).leases, [], 'no lease left');
    assert.deepEqual(await db.pg.roles(), rolesBefore, 'no user left');
  });

  test('SIGTERM to coffer run reaches the child; the lease is revoked and the exit status is the signal’s', {
    timeout: 30_000,
  }, async () => {
    const child = spawn(
      process.execPath,
      [...CLI_ARGV, 'run', '--creds', 'PG=main/app', '--', 'sh', '-c', 'echo ready; exec sleep 30'],
      { env: { ...process.env, ...db.adminEnv() }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        if (stdout.includes('ready')) resolve();
      });
      child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
      void exited.then(() => reject(new Error(`coffer run ended before its child was ready: ${stderr}`)));
    });
    assert.equal((await db.admin.listLeases('')).leases.length, 1);
    child.kill('SIGTERM');
    assert.equal(await exited, 128 + 15, stderr);
    assert.deepEqual((await db.admin.listLeases('')).leases, []);
  });
});
