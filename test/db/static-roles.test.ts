import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import type { ClientError, CofferClient } from '../../src/client/client.ts';
import type { RotationStep } from '../../src/server/db/static-rotation.ts';
import { CofferNode } from '../../src/server/node.ts';
import { STATIC_ROTATION_SPACING_MS, staticSecretName } from '../../src/state/static-roles.ts';
import { createLogger } from '../../src/util/logger.ts';
import { coffer, eventually } from '../processes/processes.ts';
import { InProcessCluster } from '../server/in-process-cluster.ts';
import { TestPostgres } from './support/postgres.ts';

// Static database roles against a real PostgreSQL (started here on loopback): an existing user
// whose password the leader rotates (at once, on demand, on schedule), kept as a secret with
// current and previous labels; a manager crash at each step of a rotation, after which the next
// leader finishes it and no reader is ever handed a password the database does not accept.

let pg: TestPostgres;
let cluster: InProcessCluster;
let admin: CofferClient;
let pgDir = '';
let logs = '';
const INITIAL_PASSWORD = 'initial-Password-1';
const STEPS: readonly RotationStep[] = ['begun', 'database-set', 'secret-written'];

/** The step at which the next rotation stops (standing for its manager's crash), and who waits for it. */
let armed: { step: RotationStep; hit: () => void } | null = null;
const never = new Promise<void>(() => {});
const failpoint = async (step: RotationStep): Promise<void> => {
  if (armed?.step !== step) return;
  const { hit } = armed;
  armed = null;
  hit();
  await never;
};
let logger: ReturnType<typeof createLogger>;
const crashUser = (step: RotationStep): string => `crash_${step.replace('-', '_')}`;
let firstScheduled: { current: string; previous: string | null };
let crashRolesMadeAtMs = 0;

before(async () => {
  pgDir = mkdtempSync(join(tmpdir(), 'coffer-pg-'));
  pg = await TestPostgres.start(pgDir);
  for (const user of ['app_owner', 'scheduled', 'downtime', 'successor', ...STEPS.map(crashUser)])
    await pg.query(`CREATE ROLE ${user} LOGIN PASSWORD '${INITIAL_PASSWORD}'`);
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logs += chunk.toString();
      done();
    },
  });
  logger = createLogger({ level: 'debug', format: 'json', destination: sink });
  cluster = await InProcessCluster.start(3, { logger, rotationFailpoint: failpoint });
  await cluster.servesReads(0);
  admin = cluster.adminClient();
  await admin.configureDatabase('main', pg.adminUrl);
  // Made first, so their next rotations (the crashes', the schedule's) may come while the other tests run.
  for (const step of STEPS)
    await admin.putStaticRole({
      db: 'main',
      role: `crash-${step}`,
      username: crashUser(step),
      rotationPeriodSeconds: 3600,
    });
  await admin.putStaticRole({ db: 'main', role: 'scheduled', username: 'scheduled', rotationPeriodSeconds: 60 });
  await admin.putStaticRole({ db: 'main', role: 'downtime', username: 'downtime', rotationPeriodSeconds: 3600 });
  firstScheduled = await labelled('scheduled');
  crashRolesMadeAtMs = Date.now();
});

after(async () => {
  admin?.close();
  await cluster?.stop();
  await pg?.stop();
  if (pgDir !== '') rmSync(pgDir, { recursive: true, force: true });
});

const code = (error: unknown): string => `${(error as ClientError).code}/${(error as ClientError).reason}`;
const leaderAt = (): number => cluster.nodes.findIndex((n) => n.manager.raftStatus()?.role === 'leader');

/** What the secret's labels point at, read as the admin: current and previous values. */
async function labelled(role: string): Promise<{ current: string; previous: string | null }> {
  const name = staticSecretName('main', role);
  const current = (await admin.get(name)).value.toString();
  const previous = await admin.get(name, { label: 'previous' }).then(
    (r) => r.value.toString(),
    () => null,
  );
  return { current, previous };
}

test('a static role takes over an existing user: rotated at once, the password in a secret and in creds get', {
  timeout: 60_000,
}, async () => {
  const reply = await admin.putStaticRole({
    db: 'main',
    role: 'owner',
    username: 'app_owner',
    rotationPeriodSeconds: 3600,
  });
  assert.equal(reply.rotated, true);
  assert.equal(reply.rotationInProgress, false);
  assert.ok(reply.nextRotationAtMs > Date.now() + 3500_000);
  assert.equal(await pg.canLogin('app_owner', INITIAL_PASSWORD), false);
  const creds = await admin.getCredentials('main', 'owner');
  assert.equal(creds.username, 'app_owner');
  assert.equal(creds.leaseId, '');
  assert.ok(creds.ttlSeconds > 3500 && creds.ttlSeconds <= 3600);
  assert.equal(await pg.canLogin('app_owner', creds.password), true);
  assert.deepEqual(await labelled('owner'), { current: creds.password, previous: null });
  // From a follower too: reads of it are linearizable whatever the caller asks.
  const follower = cluster.adminClient([cluster.follower()]);
  try {
    assert.equal((await follower.getCredentials('main', 'owner')).password, creds.password);
  } finally {
    follower.close();
  }
  // The password is in no manager's log.
  assert.ok(!logs.includes(creds.password));
});

test('refused: a user that does not exist, the admin Coffer logs in as, a superuser or role administrator, a client writing the secret', {
  timeout: 60_000,
}, async () => {
  const missing = await admin
    .putStaticRole({ db: 'main', role: 'ghost', username: 'nobody_here', rotationPeriodSeconds: 3600 })
    .then(
      () => 'made',
      (e: unknown) => `${code(e)} ${(e as Error).message}`,
    );
  assert.match(missing, /^3\/INVALID_ARGUMENT .*no user "nobody_here"/);
  const self = await admin
    .putStaticRole({ db: 'main', role: 'self', username: 'coffer_admin', rotationPeriodSeconds: 3600 })
    .then(
      () => 'made',
      (e: unknown) => `${code(e)} ${(e as Error).message}`,
    );
  assert.match(self, /^3\/INVALID_ARGUMENT .*lock Coffer out/);
  await pg.query(`CREATE ROLE boss LOGIN SUPERUSER PASSWORD '${INITIAL_PASSWORD}'`);
  await pg.query(`CREATE ROLE hr LOGIN CREATEROLE PASSWORD '${INITIAL_PASSWORD}'`);
  for (const username of ['boss', 'hr']) {
    const privileged = await admin
      .putStaticRole({ db: 'main', role: username, username, rotationPeriodSeconds: 3600 })
      .then(
        () => 'made',
        (e: unknown) => `${code(e)} ${(e as Error).message}`,
      );
    assert.match(privileged, /^3\/INVALID_ARGUMENT .*superuser or may create roles/);
    assert.equal(await pg.canLogin(username, INITIAL_PASSWORD), true);
  }
  // Rights held through a role it is a member of count as its own.
  await pg.query(`CREATE ROLE deputy LOGIN PASSWORD '${INITIAL_PASSWORD}' IN ROLE boss`);
  await pg.query(`CREATE ROLE shell LOGIN PASSWORD '${INITIAL_PASSWORD}' IN ROLE pg_execute_server_program`);
  for (const username of ['deputy', 'shell']) {
    const privileged = await admin
      .putStaticRole({ db: 'main', role: username, username, rotationPeriodSeconds: 3600 })
      .then(
        () => 'made',
        (e: unknown) => code(e),
      );
    assert.equal(privileged, '3/INVALID_ARGUMENT', username);
  }
  const short = await admin
    .putStaticRole({ db: 'main', role: 'short', username: 'scheduled', rotationPeriodSeconds: 5 })
    .then(
      () => 'made',
      (e: unknown) => code(e),
    );
  assert.equal(short, '3/INVALID_ARGUMENT');
  const written = await admin.put(staticSecretName('main', 'owner'), Buffer.from('my-own-choice')).then(
    () => 'written',
    (e: unknown) => code(e),
  );
  assert.equal(written, `${grpc.status.PERMISSION_DENIED}/NAME_RESERVED`);
  assert.equal(await pg.canLogin('app_owner', 'my-own-choice'), false);
});

test('a manager crash at each step of a rotation: the next leader finishes it; readers never get a password the database refuses', {
  timeout: 240_000,
}, async () => {
  // Their first rotations were in before(); the next may begin the spacing after.
  await new Promise((resolve) =>
    setTimeout(resolve, Math.max(0, crashRolesMadeAtMs + STATIC_ROTATION_SPACING_MS - Date.now())),
  );
  for (const step of STEPS) {
    const role = `crash-${step}`;
    const username = crashUser(step);
    // The secret has an old password, which the database stops accepting between the crash's steps.
    const before = await labelled(role);
    assert.equal(await pg.canLogin(username, before.current), true);
    const stopped = new Promise<void>((resolve) => {
      armed = { step, hit: resolve };
    });
    admin.rotateStaticRole('main', role).catch(() => undefined);
    await stopped;
    // Stopped there, its leader alive: a reader anywhere waits, then is told it is under way
    // (handed the secret's version, it would get a password the database may no longer take).
    const reader = cluster.adminClient([cluster.follower()]);
    try {
      // Both at once: each waits (5 s) before it is refused, and the rotation's window is 10 s.
      const [read, secret] = await Promise.all([
        reader.getCredentials('main', role).then(
          (r) => `handed out ${r.password === before.current ? 'the old' : 'a new'} password`,
          (e: unknown) => code(e),
        ),
        reader.get(staticSecretName('main', role)).then(
          () => 'read',
          (e: unknown) => code(e),
        ),
      ]);
      assert.equal(read, `${grpc.status.UNAVAILABLE}/ROTATION_IN_PROGRESS`, `at ${step}`);
      assert.equal(secret, `${grpc.status.UNAVAILABLE}/ROTATION_IN_PROGRESS`, `at ${step}`);
    } finally {
      reader.close();
    }
    const crashed = leaderAt();
    assert.ok(crashed >= 0);
    await cluster.nodes[crashed]!.stop();
    // Readers on the others, until the rotation is done: each password handed out logs in.
    const others = cluster.addresses.filter((_, k) => k !== crashed);
    const survivor = cluster.adminClient(others);
    const refusals: string[] = [];
    try {
      await eventually(`the next leader to finish the rotation crashed at ${step}`, 90_000, async () => {
        try {
          const creds = await survivor.getCredentials('main', role);
          assert.equal(await pg.canLogin(username, creds.password), true, `handed out at ${step} and refused`);
          return creds.password !== before.current ? true : undefined;
        } catch (error) {
          if (error instanceof assert.AssertionError) throw error;
          refusals.push(code(error));
          return undefined;
        }
      });
      const after = await labelled(role).catch(async () => {
        const r = await survivor.getCredentials('main', role);
        return { current: r.password, previous: null };
      });
      assert.equal(await pg.canLogin(username, after.current), true);
      assert.equal(await pg.canLogin(username, before.current), false);
      // Refusals while it was under way say so (or that there was no leader yet), nothing else.
      for (const refusal of refusals) assert.match(refusal, /^14\//, refusal);
    } finally {
      survivor.close();
    }
    // The crashed manager comes back before the next step's crash.
    cluster.nodes[crashed] = await CofferNode.start({
      dataDir: join(cluster.root, `m${crashed + 1}`),
      logger,
      tickIntervalMs: 50,
      rotationFailpoint: failpoint,
    });
    await eventually('the restarted manager to catch up', 30_000, async () =>
      cluster.nodes.every(
        (n) => (n.manager.raftStatus()?.applied ?? 0) >= (cluster.nodes[leaderAt()]?.manager.raftStatus()?.commit ?? 1),
      )
        ? true
        : undefined,
    );
  }
});

test('the database down during a rotation: the password is not served; once it is back, a new begin finishes it', {
  timeout: 120_000,
}, async () => {
  const before = await labelled('downtime');
  const stoppedAtMs = Date.now();
  await pg.stopServer();
  const requested = admin.rotateStaticRole('main', 'downtime').catch((e: unknown) => code(e));
  try {
    // Its begin is in the log, the database never took the password: nobody gets one meanwhile.
    await eventually('the rotation to be pending', 30_000, async () =>
      (await admin.getStaticRole('main', 'downtime')).rotationInProgress ? true : undefined,
    );
    const read = await admin.getCredentials('main', 'downtime').then(
      () => 'handed out',
      (e: unknown) => code(e),
    );
    assert.equal(read, `${grpc.status.UNAVAILABLE}/ROTATION_IN_PROGRESS`);
    // Past its 10 s to reach the database: that password may never be sent any more.
    await new Promise((resolve) => setTimeout(resolve, 11_000));
  } finally {
    await pg.restart();
  }
  await requested;
  await eventually('the rotation begun again and finished', 60_000, async () => {
    const role = await admin.getStaticRole('main', 'downtime');
    return !role.rotationInProgress && role.lastRotatedAtMs >= stoppedAtMs ? true : undefined;
  });
  const after = await labelled('downtime');
  assert.notEqual(after.current, before.current);
  assert.equal(after.previous, before.current);
  assert.equal(await pg.canLogin('downtime', after.current), true);
  assert.equal(await pg.canLogin('downtime', before.current), false);
  assert.match(logs, /static-rotation-restarted/);
});

test('on demand and on schedule: coffer db rotate, then the period; previous is the password before', {
  timeout: 150_000,
}, async () => {
  const env = cluster.adminEnv();
  // Written again from the CLI, as it is: its rotation state stays.
  const put = await coffer(
    ['db', 'static', 'put', 'main/scheduled', '--username', 'scheduled', '--rotation-period', '1m'],
    '',
    env,
  );
  assert.equal(put.code, 0, put.stderr);
  assert.match(put.stdout, /user scheduled, every 60s; rotated /);
  const first = firstScheduled;
  // The owner role has been rotated more than the spacing ago: rotate it now, from the CLI.
  const owner = await labelled('owner');
  const rotated = await coffer(['db', 'rotate', 'main/owner'], '', env);
  assert.equal(rotated.code, 0, rotated.stderr);
  const afterOwner = await labelled('owner');
  assert.notEqual(afterOwner.current, owner.current);
  assert.equal(afterOwner.previous, owner.current);
  assert.equal(await pg.canLogin('app_owner', afterOwner.current), true);
  assert.equal(await pg.canLogin('app_owner', owner.current), false);
  const json = await coffer(['creds', 'get', 'main/owner', '--output', 'json'], '', env);
  assert.equal(json.code, 0, json.stderr);
  const creds = JSON.parse(json.stdout) as { username: string; password: string; lease_id: string };
  assert.deepEqual([creds.username, creds.password, creds.lease_id], ['app_owner', afterOwner.current, '']);
  // The scheduled role's period passes: the leader rotates it by itself.
  await eventually('the scheduled rotation', 100_000, async () => {
    const now = await labelled('scheduled');
    return now.current !== first.current ? now : undefined;
  });
  const later = await labelled('scheduled');
  assert.equal(later.previous, first.current);
  assert.equal(await pg.canLogin('scheduled', later.current), true);
  assert.equal(await pg.canLogin('scheduled', first.current), false);
  const shown = await coffer(['db', 'static', 'get', 'main/scheduled'], '', env);
  assert.match(shown.stdout, /next 20/);
  for (const password of [first.current, later.current, afterOwner.current]) assert.ok(!logs.includes(password));
});

test("a static role given another user: nothing is served until that user's first rotation, and the old user's passwords are not kept", {
  timeout: 90_000,
}, async () => {
  const role = 'crash-begun';
  const old = await labelled(role);
  const put = admin.putStaticRole({ db: 'main', role, username: 'successor', rotationPeriodSeconds: 3600 });
  // Until the new user's first rotation, neither the old user's password nor anything is handed out.
  await eventually('the role to name its new user', 10_000, async () =>
    (await admin.getStaticRole('main', role)).username === 'successor' ? true : undefined,
  );
  const meanwhile = await admin.getCredentials('main', role).then(
    async (c) =>
      c.username === 'successor' && (await pg.canLogin('successor', c.password)) ? 'good' : 'wrong password',
    (e: unknown) => code(e),
  );
  assert.ok(
    meanwhile === 'good' || meanwhile === `${grpc.status.UNAVAILABLE}/ROTATION_IN_PROGRESS`,
    `handed out: ${meanwhile}`,
  );
  const reply = await put;
  if (!reply.rotated)
    await eventually("the new user's first rotation", 60_000, async () =>
      (await admin.getStaticRole('main', role)).lastRotatedAtMs > 0 ? true : undefined,
    );
  const creds = await admin.getCredentials('main', role);
  assert.equal(creds.username, 'successor');
  assert.equal(await pg.canLogin('successor', creds.password), true);
  const now = await labelled(role);
  assert.equal(now.current, creds.password);
  assert.equal(now.previous, null, "the old user's password is not kept as previous");
  assert.notEqual(now.current, old.current);
});
