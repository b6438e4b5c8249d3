import { test } from 'node:test';
import { isDiskFull } from '../../src/util/disk-full.ts';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import assert from 'node:assert/strict';
import { readFileSync, rmSync, mkdtempSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkHealth } from '../../src/client/health-client.ts';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import { Manager } from '../../src/manager/manager.ts';
import { initCluster } from '../../src/server/bootstrap.ts';
import { CommitSamples, HEALTH_APPLY_GRACE_MS, healthOf } from '../../src/server/health.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../../src/transport/tls.ts';
import { SeededRandom } from '../../src/util/prng.ts';
import { createLogger } from '../../src/util/logger.ts';
import { coffer, eventually } from '../processes/processes.ts';
import { InProcessCluster } from './in-process-cluster.ts';

const HealthClient = grpc.makeClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');

/** A Check that verifies the server as the CLI does but presents whatever certificate it is given (or none). */
function rawCheck(
  address: string,
  pem: { caPem: string; certPem: string | null; keyPem: string | null },
  clusterId: string,
): Promise<string> {
  const client = new HealthClient(
    address,
    managerChannelCredentials(pem as { caPem: string; certPem: null; keyPem: null }, { clusterId }),
    MANAGER_CHANNEL_OPTIONS,
  );
  return new Promise((resolve) => {
    (
      client as unknown as {
        check(r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void): void;
      }
    ).check({ service: '' }, { deadline: Date.now() + 3000 }, (error, response) => {
      client.close();
      resolve(error === null ? response!.status : `${grpc.status[error.code]}: ${error.details}`);
    });
  });
}

const RAFT = {
  id: 1,
  role: 'follower' as const,
  lead: 2,
  term: 3,
  commit: 10,
  applied: 10,
  firstIndex: 1,
  lastIndex: 10,
};

test('health is SERVING only for an unlocked manager that knows a leader and has applied what it knows committed', () => {
  const facts = { removed: false, auditBroken: false };
  assert.equal(healthOf({ ...facts, raft: RAFT }).status, 'SERVING');
  assert.equal(healthOf({ ...facts, raft: { ...RAFT, role: 'leader', lead: 1 } }).status, 'SERVING');
  assert.deepEqual(healthOf({ ...facts, raft: null }), { status: 'NOT_SERVING', reason: 'locked' });
  assert.deepEqual(healthOf({ ...facts, raft: { ...RAFT, lead: 0 } }), {
    status: 'NOT_SERVING',
    reason: 'no leader known',
  });
  // Behind what is committed now, with no older commit index known (just started): catching up.
  assert.deepEqual(healthOf({ ...facts, raft: { ...RAFT, applied: 7 } }), {
    status: 'NOT_SERVING',
    reason: 'catching up: applied 7 of 10',
  });
  // The batch in hand is not catching up (a loaded leader always has one): what was committed
  // HEALTH_APPLY_GRACE_MS ago is applied. Behind that, it is.
  const lagging = { ...RAFT, role: 'leader' as const, lead: 1, commit: 5000, applied: 4990 };
  assert.equal(healthOf({ ...facts, raft: lagging, committedBefore: 4990 }).status, 'SERVING');
  assert.deepEqual(healthOf({ ...facts, raft: lagging, committedBefore: 4991 }), {
    status: 'NOT_SERVING',
    reason: 'catching up: applied 4990 of 5000',
  });
  assert.equal(healthOf({ ...facts, raft: RAFT, removed: true }).status, 'NOT_SERVING');
  assert.equal(healthOf({ ...facts, raft: RAFT, auditBroken: true }).status, 'NOT_SERVING');
  assert.deepEqual(healthOf({ ...facts, raft: RAFT, replicaFailed: true }), {
    status: 'NOT_SERVING',
    reason: 'the replica stopped on an error',
  });
  // A full disk says so, and where, whichever part hit it first (the audit log or the replica).
  for (const failed of [{ auditBroken: true }, { replicaFailed: true }])
    assert.deepEqual(healthOf({ ...facts, raft: RAFT, ...failed, diskFull: '/var/lib/coffer' }), {
      status: 'NOT_SERVING',
      reason: 'disk full: free space in /var/lib/coffer (the manager resumes by itself once there is)',
    });
});

test('a full disk is told from other errors: ENOSPC and EDQUOT by code, in a message, or down a cause chain', () => {
  assert.equal(isDiskFull(Object.assign(new Error('write failed'), { code: 'ENOSPC' })), true);
  assert.equal(isDiskFull(new Error('IO error: /d/state/000003.log: No space left on device')), true);
  assert.equal(isDiskFull(new Error('the audit log in /d/audit cannot be written (EDQUOT)')), true);
  assert.equal(isDiskFull(new Error('outer', { cause: new Error('inner', { cause: { code: 'ENOSPC' } }) })), true);
  assert.equal(isDiskFull(Object.assign(new Error('permission denied'), { code: 'EACCES' })), false);
  assert.equal(isDiskFull(new Error('IO error: corruption')), false);
  assert.equal(isDiskFull(null), false);
});

test('the commit index of HEALTH_APPLY_GRACE_MS ago: unknown until the samples reach that far, then the newest sample at or before it; a flood of checks keeps few samples', () => {
  const samples = new CommitSamples();
  assert.equal(samples.observe(1000, 10), undefined, 'just started');
  for (let t = 1001; t < 1000 + HEALTH_APPLY_GRACE_MS; t++) assert.equal(samples.observe(t, t), undefined);
  assert.equal(samples.observe(1000 + HEALTH_APPLY_GRACE_MS, 2000), 10, 'the first sample, now old enough');
  // Checks every millisecond: samples are kept 50 ms apart, so the answer is at most that stale.
  for (let t = 1501; t <= 3000; t++) samples.observe(t, t);
  const before = samples.observe(3001, 3001)!;
  assert.ok(before <= 3001 - HEALTH_APPLY_GRACE_MS && before > 3001 - HEALTH_APPLY_GRACE_MS - 50, `got ${before}`);
});

test('an autolocked manager that was not given its unlock key is NOT_SERVING', async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-health-locked-'));
  try {
    await initCluster({ dataDir: join(root, 'm1'), listen: '127.0.0.1:1', autolock: true });
    const manager = await Manager.open({
      dataDir: join(root, 'm1'),
      id: 1,
      peers: { send: () => undefined },
      inner: new AppliedState(),
      random: new SeededRandom(randomInt(2 ** 31)),
      logger: createLogger({ level: 'silent' }),
    });
    assert.equal(manager.locked, true);
    assert.equal(healthOf({ raft: manager.status().raft, removed: false, auditBroken: false }).status, 'NOT_SERVING');
    await manager.stop();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('grpc.health.v1.Health on three managers: SERVING for a cluster certificate, refused without one, NOT_SERVING once a lone manager has no leader; coffer health exits 0 or 1', {
  timeout: 120_000,
}, async () => {
  const cluster = await InProcessCluster.start(3);
  try {
    const pem = {
      caPem: readFileSync(join(cluster.adminDir, 'ca.crt'), 'utf8'),
      certPem: readFileSync(join(cluster.adminDir, 'admin.crt'), 'utf8'),
      keyPem: readFileSync(join(cluster.adminDir, 'admin.key'), 'utf8'),
    };
    // Followers learn the commit index by a heartbeat: wait until every one has caught up.
    for (const address of cluster.addresses)
      await eventually(`${address} to serve`, 20_000, async () =>
        (await checkHealth(address, pem)).status === 'SERVING' ? true : undefined,
      );
    const env = {
      COFFER_ADDR: cluster.addresses.join(','),
      COFFER_CA: join(cluster.adminDir, 'ca.crt'),
      COFFER_CERT: join(cluster.adminDir, 'admin.crt'),
      COFFER_KEY: join(cluster.adminDir, 'admin.key'),
    };
    const healthy = await coffer(['health'], '', env);
    assert.equal(healthy.code, 0, healthy.stderr);
    assert.equal(healthy.stdout.trim().split('\n').length, 3);

    // Any certificate of the cluster's CA will do, with no policy; none, or another CA's, will not.
    const other = createCa('another-cluster', Date.now());
    const stranger = issueCertificate(other, {
      id: 'x',
      role: 'client',
      clusterId: 'another-cluster',
      nowMs: Date.now(),
    });
    const withoutCertificate = await rawCheck(
      cluster.addresses[0]!,
      { caPem: pem.caPem, certPem: null, keyPem: null },
      cluster.clusterId,
    );
    assert.match(withoutCertificate, /UNAUTHENTICATED|handshake|certificate/i);
    const withForeignCertificate = await rawCheck(
      cluster.addresses[0]!,
      { caPem: pem.caPem, certPem: stranger.certPem, keyPem: stranger.keyPem },
      cluster.clusterId,
    );
    assert.notEqual(withForeignCertificate, 'SERVING');
    assert.equal(await rawCheck(cluster.addresses[0]!, pem, cluster.clusterId), 'SERVING');

    // One of three left: it loses its leader (check-quorum or an election it cannot win).
    await cluster.nodes[1]!.stop();
    await cluster.nodes[2]!.stop();
    await eventually('the lone manager to stop serving', 20_000, async () =>
      (await checkHealth(cluster.addresses[0]!, pem)).status === 'NOT_SERVING' ? true : undefined,
    );
    const lone = await coffer(['health', '--addr', cluster.addresses[0]!], '', env);
    assert.equal(lone.code, 1);
    assert.match(lone.stderr, /is not healthy: NOT_SERVING/);
    const down = await coffer(['health', '--addr', cluster.addresses[1]!, '--timeout', '1000'], '', env);
    assert.equal(down.code, 1);
    assert.match(down.stderr, /cannot check it: (UNAVAILABLE|DEADLINE_EXCEEDED)/);
  } finally {
    cluster.nodes.splice(1, 2);
    await cluster.stop();
  }
});
