import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { newLeafKey } from '../../src/crypto/pki.ts';
import { PUT_BATCH_BYTES_MAX, PUT_BATCH_ITEMS_MAX } from '../../src/state/limits.ts';
import { errorDetailsOf } from '../../src/transport/error-details.ts';
import { AdminClient, eventually } from '../processes/processes.ts';
import { InProcessCluster } from './in-process-cluster.ts';

let cluster: InProcessCluster;
before(async () => {
  cluster = await InProcessCluster.start(3);
});
after(async () => {
  await cluster?.stop();
});

type Reply = Record<string, unknown>;
const item = (name: string, value: string | Buffer, extra: Reply = {}) => ({
  name,
  value: Buffer.isBuffer(value) ? value : Buffer.from(value),
  ...extra,
});

/** The refusal's status, message, reason and metadata, checked. */
const refusedWith =
  (code: keyof typeof grpc.status, reason: string, message: RegExp, metadata: Record<string, string> = {}) =>
  (error: grpc.ServiceError) => {
    assert.equal(grpc.status[error.code], code, error.details);
    assert.match(error.details, message);
    const details = errorDetailsOf(error.metadata);
    assert.equal(details?.reason, reason);
    for (const [key, value] of Object.entries(metadata)) assert.equal(details?.metadata[key], value, key);
    return true;
  };

/** Issues an identity with a key made here and returns a client for it. */
async function issue(name: string, policies: string[]): Promise<AdminClient> {
  const key = newLeafKey();
  const issued = await cluster.admin.call<Reply>(cluster.addresses[0]!, 'Identities', 'issue', {
    name,
    policies,
    publicKeyPem: key.publicPem,
  });
  return new AdminClient('', cluster.clusterId, {
    caPem: issued['caCertificatePem'] as string,
    certPem: issued['certificatePem'] as string,
    keyPem: key.privatePem,
  });
}

const getValue = async (address: string, name: string): Promise<string | null> =>
  cluster.admin.call<Reply>(address, 'Secrets', 'get', { name }).then(
    (r) => (r['value'] as Buffer).toString(),
    (e: grpc.ServiceError) => {
      if (e.code === grpc.status.NOT_FOUND) return null;
      throw e;
    },
  );

test('a batch is one write: a version per item in order, through a follower, on every manager; a name twice makes two versions', {
  timeout: 60_000,
}, async () => {
  const reply = await cluster.admin.call<Reply>(cluster.addresses[1]!, 'Secrets', 'putBatch', {
    items: [item('batch/a', 'a1'), item('batch/b', 'b1', { versionsKept: 3 }), item('batch/a', 'a2')],
  });
  assert.deepEqual(reply['versions'], [1, 1, 2]);
  for (const address of cluster.addresses) {
    assert.equal(
      await eventually('the batch applied here', 10_000, async () =>
        (await getValue(address, 'batch/b')) === 'b1' ? true : undefined,
      ),
      true,
    );
    assert.equal(await getValue(address, 'batch/a'), 'a2');
  }
  const versions = await cluster.admin.call<Reply>(cluster.addresses[0]!, 'Secrets', 'versions', { name: 'batch/b' });
  assert.equal((versions['secret'] as Reply)['versionsKept'], 3);
});

test("the attacker's batch: one name outside the caller's policy refuses the whole batch, named, and nothing is written", {
  timeout: 60_000,
}, async () => {
  await cluster.admin.call(cluster.addresses[0]!, 'Secrets', 'put', { name: 'team/ok/kept', value: Buffer.from('k1') });
  await cluster.admin.call(cluster.addresses[0]!, 'Policies', 'put', {
    name: 'team-ok',
    rules: [{ path: 'team/ok/**', capabilities: ['read', 'write'], deny: false }],
  });
  const narrow = await issue('batcher', ['team-ok']);
  try {
    const at = cluster.addresses[2]!;
    await eventually('the identity to be known here', 10_000, async () =>
      narrow.call(at, 'Secrets', 'putBatch', { items: [item('team/ok/first', 'f')] }).then(
        () => true,
        () => undefined,
      ),
    );
    await assert.rejects(
      narrow.call(at, 'Secrets', 'putBatch', {
        items: [
          item('team/ok/a', 'x'),
          item('team/ok/b', 'x'),
          item('admin/root-token', 'mine'),
          item('team/ok/c', 'x'),
        ],
      }),
      refusedWith(
        'PERMISSION_DENIED',
        'POLICY_DENIED',
        /^item 3 of 4 \("admin\/root-token"\): identity "batcher" may not write "admin\/root-token": no policy allows it; no item of the batch was applied$/,
        { item: '3', capability: 'write', path: 'admin/root-token' },
      ),
    );
    // Lowering the versions kept wipes history: delete is needed, which the policy does not give.
    await cluster.admin.call(cluster.addresses[0]!, 'Secrets', 'put', {
      name: 'team/ok/kept',
      value: Buffer.from('k2'),
    });
    await assert.rejects(
      narrow.call(at, 'Secrets', 'putBatch', {
        items: [item('team/ok/d', 'x'), item('team/ok/kept', 'k3', { versionsKept: 1 })],
      }),
      refusedWith('PERMISSION_DENIED', 'POLICY_DENIED', /^item 2 of 2 \("team\/ok\/kept"\): .*may not delete/, {
        item: '2',
      }),
    );
    for (const name of ['team/ok/a', 'team/ok/b', 'team/ok/c', 'team/ok/d', 'admin/root-token'])
      assert.equal(await getValue(cluster.addresses[0]!, name), null, `${name} was written`);
    assert.equal(await getValue(cluster.addresses[0]!, 'team/ok/kept'), 'k2');
  } finally {
    narrow.close();
  }
});

test('limits: too many items and too many bytes are refused naming the limit; an invalid name in item 7 is named as item 7; a bad value names its item', {
  timeout: 60_000,
}, async () => {
  const at = cluster.addresses[0]!;
  const call = (items: unknown[]) => cluster.admin.call(at, 'Secrets', 'putBatch', { items });
  await assert.rejects(
    call(Array.from({ length: PUT_BATCH_ITEMS_MAX + 1 }, (_, k) => item(`many/${k}`, 'v'))),
    refusedWith('RESOURCE_EXHAUSTED', 'BATCH_TOO_LARGE', /a batch has 257 items; at most 256 \(PUT_BATCH_ITEMS_MAX\)/, {
      limit: '256',
      items: '257',
    }),
  );
  const half = Buffer.alloc(500 * 1024, 1);
  await assert.rejects(
    call([item('big/a', half), item('big/b', half)]),
    refusedWith('RESOURCE_EXHAUSTED', 'BATCH_TOO_LARGE', /at most 960 KiB \(PUT_BATCH_BYTES_MAX, one Raft entry\)/, {
      limit: String(PUT_BATCH_BYTES_MAX),
    }),
  );
  const seven = Array.from({ length: 9 }, (_, k) => item(k === 6 ? 'bad/../name' : `seven/${k}`, 'v'));
  await assert.rejects(
    call(seven),
    refusedWith('INVALID_ARGUMENT', 'INVALID_NAME', /^item 7 of 9: secret name "bad\/..\/name": /, { item: '7' }),
  );
  await assert.rejects(
    call([item('sized/a', 'v'), item('sized/b', Buffer.alloc(512 * 1024 + 1))]),
    refusedWith('RESOURCE_EXHAUSTED', 'VALUE_TOO_LARGE', /^item 2 of 2 \("sized\/b"\): the value has 524289 bytes/, {
      item: '2',
    }),
  );
  await assert.rejects(
    call([item('kept/a', 'v', { versionsKept: 101 })]),
    refusedWith('INVALID_ARGUMENT', 'INVALID_ARGUMENT', /^item 1 of 1 \("kept\/a"\): versions_kept is at most 100/),
  );
  await assert.rejects(call([]), refusedWith('INVALID_ARGUMENT', 'INVALID_ARGUMENT', /at least one item/));
  for (const name of ['seven/0', 'sized/a', 'big/a', 'many/0'])
    assert.equal(await getValue(at, name), null, `${name} was written`);
});

test('a compare-and-set refused where the batch applies names its item, and the items before it are not applied', {
  timeout: 60_000,
}, async () => {
  const at = cluster.addresses[1]!;
  await cluster.admin.call(at, 'Secrets', 'put', { name: 'cas/exists', value: Buffer.from('e1') });
  await assert.rejects(
    cluster.admin.call(at, 'Secrets', 'putBatch', {
      items: [item('cas/new', 'n', { cas: { version: 0 } }), item('cas/exists', 'e2', { cas: { version: 0 } })],
    }),
    refusedWith(
      'FAILED_PRECONDITION',
      'CAS_MISMATCH',
      /^item 2 of 2 \("cas\/exists"\): secret "cas\/exists" already exists \(version 1\); no item of the batch was applied$/,
      { item: '2', currentVersion: '1' },
    ),
  );
  assert.equal(await getValue(at, 'cas/new'), null);
  assert.equal(await getValue(at, 'cas/exists'), 'e1');
});

test('the audit log holds one record per item, its name as target, with the batch outcome; no value', {
  timeout: 60_000,
}, async () => {
  const at = cluster.addresses[2]!;
  const secret = `audited-batch-${Date.now()}`;
  await cluster.admin.call(at, 'Secrets', 'putBatch', {
    items: [item('aud/one', secret), item('aud/two', secret), item('aud/one', secret)],
  });
  await assert.rejects(
    cluster.admin.call(at, 'Secrets', 'putBatch', {
      items: [item('aud/three', 'v'), item('aud/four', 'v', { cas: { version: 9 } })],
    }),
  );
  const tail = await cluster.admin.call<Reply>(at, 'Audit', 'tail', { count: 100 });
  const records = (tail['records'] as Reply[]).filter((r) => r['method'] === 'Secrets.PutBatch');
  const of = (target: string) => records.filter((r) => r['target'] === target);
  assert.deepEqual(
    of('aud/one').map((r) => [r['identity'], r['outcome'], r['code']]),
    [
      ['admin', 'allowed', 'OK'],
      ['admin', 'allowed', 'OK'],
    ],
    'a name twice in a batch: two records',
  );
  assert.equal(of('aud/two').length, 1);
  for (const name of ['aud/three', 'aud/four'])
    assert.deepEqual(
      of(name).map((r) => [r['outcome'], r['code']]),
      [['failed', 'FAILED_PRECONDITION']],
      `${name}: the refused batch's outcome`,
    );
  const text = readFileSync(join(cluster.nodes[2]!.audit.dir, 'audit.log'), 'utf8');
  assert.ok(!text.includes(secret), 'no value in the audit log');
});
