import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { eventually } from '../processes/processes.ts';
import { InProcessCluster } from './in-process-cluster.ts';

let cluster: InProcessCluster;
before(async () => {
  cluster = await InProcessCluster.start(3);
});
after(async () => {
  await cluster?.stop();
});

type Reply = Record<string, unknown>;
const call = (address: string, method: string, request: object) =>
  cluster.admin.call<Reply>(address, 'Secrets', method, request);
const failsWith = (code: grpc.status, pattern: RegExp) => (error: grpc.ServiceError) => {
  assert.equal(grpc.status[error.code], grpc.status[code], error.details);
  assert.match(error.details, pattern);
  return true;
};

test('writes through any manager; linearizable reads on every manager see them; stale reads say what they had applied', {
  timeout: 60_000,
}, async () => {
  const put = await call(cluster.follower(), 'put', { name: 'app/db/password', value: Buffer.from('s3cret-1') });
  assert.equal(put['version'], 1);
  for (const address of cluster.addresses) {
    const got = await call(address, 'get', { name: 'app/db/password' });
    assert.equal((got['value'] as Buffer).toString(), 's3cret-1');
    assert.ok((got['appliedIndex'] as number) > 0);
  }
  const stale = await eventually('a stale read on a follower', 10_000, async () =>
    call(cluster.follower(), 'get', { name: 'app/db/password', stale: true }),
  );
  assert.equal((stale['value'] as Buffer).toString(), 's3cret-1');
});

test('versions, labels, rollback, compare-and-set, soft delete, destroy and listing, with the right codes', {
  timeout: 60_000,
}, async () => {
  const at = cluster.addresses[1]!;
  await call(at, 'put', { name: 'svc/token', value: Buffer.from('v1'), cas: { version: 0 } });
  await call(at, 'put', { name: 'svc/token', value: Buffer.from('v2'), cas: { version: 1 } });
  await assert.rejects(
    call(at, 'put', { name: 'svc/token', value: Buffer.from('v3'), cas: { version: 1 } }),
    failsWith(grpc.status.FAILED_PRECONDITION, /is at version 2, not 1/),
  );
  assert.equal(((await call(at, 'get', { name: 'svc/token', label: 'previous' }))['value'] as Buffer).toString(), 'v1');
  await call(at, 'label', { name: 'svc/token', label: 'current', version: 1 });
  assert.equal(((await call(at, 'get', { name: 'svc/token' }))['value'] as Buffer).toString(), 'v1', 'rolled back');
  await call(at, 'label', { name: 'svc/token', label: 'current', version: 2 });
  const versions = await call(at, 'versions', { name: 'svc/token' });
  assert.deepEqual(
    (versions['versions'] as Reply[]).map((v) => [v['version'], v['labels']]),
    [
      [1, ['previous']],
      [2, ['current']],
    ],
  );

  await call(at, 'destroy', { name: 'svc/token', versions: [1] });
  await assert.rejects(
    call(at, 'get', { name: 'svc/token', version: 1 }),
    failsWith(grpc.status.FAILED_PRECONDITION, /version 1 was destroyed/),
  );
  await assert.rejects(
    call(at, 'get', { name: 'svc/token', version: 9 }),
    failsWith(grpc.status.NOT_FOUND, /has no version 9/),
  );
  await call(at, 'delete', { name: 'svc/token' });
  await assert.rejects(call(at, 'get', { name: 'svc/token' }), failsWith(grpc.status.NOT_FOUND, /is deleted/));
  await call(at, 'undelete', { name: 'svc/token' });
  assert.equal(((await call(at, 'get', { name: 'svc/token' }))['value'] as Buffer).toString(), 'v2');

  for (let k = 0; k < 5; k++) await call(at, 'put', { name: `list/k${k}`, value: Buffer.from('x') });
  // Pages follow the store's key order (the names' keyed tags): stable, not alphabetical.
  const first = await call(at, 'list', { prefix: 'list/', pageSize: 3 });
  const firstNames = (first['secrets'] as Reply[]).map((s) => s['name'] as string);
  assert.equal(firstNames.length, 3);
  const second = await call(at, 'list', { prefix: 'list/', pageSize: 3, pageToken: first['nextPageToken'] });
  const secondNames = (second['secrets'] as Reply[]).map((s) => s['name'] as string);
  assert.deepEqual(
    [...firstNames, ...secondNames].sort(),
    ['list/k0', 'list/k1', 'list/k2', 'list/k3', 'list/k4'],
    'every name once over the pages',
  );
  const again = await call(at, 'list', { prefix: 'list/', pageSize: 3 });
  assert.deepEqual(
    (again['secrets'] as Reply[]).map((s) => s['name']),
    firstNames,
    'the same order every time',
  );
  assert.equal(second['nextPageToken'], '');
  assert.equal(JSON.stringify(first).includes('"value"'), false, 'listings carry no values');
});

test('bad input gets INVALID_ARGUMENT or RESOURCE_EXHAUSTED with a message that says what to fix', {
  timeout: 30_000,
}, async () => {
  const at = cluster.addresses[0]!;
  await assert.rejects(
    call(at, 'put', { name: 'a b', value: Buffer.from('x') }),
    failsWith(grpc.status.INVALID_ARGUMENT, /segments of letters/),
  );
  await assert.rejects(
    call(at, 'put', { name: 'x'.repeat(300), value: Buffer.from('x') }),
    failsWith(grpc.status.INVALID_ARGUMENT, /at most 256 bytes/),
  );
  await assert.rejects(
    call(at, 'put', { name: 'big', value: Buffer.alloc(512 * 1024 + 1) }),
    failsWith(grpc.status.RESOURCE_EXHAUSTED, /at most 524288/),
  );
  await assert.rejects(
    call(at, 'put', { name: 'ttl', value: Buffer.from('x'), ttlSeconds: 5, expireAtMs: Date.now() + 9000 }),
    failsWith(grpc.status.INVALID_ARGUMENT, /not both/),
  );
  await assert.rejects(call(at, 'get', { name: 'nothing/here' }), failsWith(grpc.status.NOT_FOUND, /does not exist/));
  await assert.rejects(
    call(at, 'generate', { name: 'g', length: 0 }),
    failsWith(grpc.status.INVALID_ARGUMENT, /length is between 1 and 4096/),
  );
  await assert.rejects(
    call(at, 'generate', { name: 'g', length: 8, charset: 'emoji' }),
    failsWith(grpc.status.INVALID_ARGUMENT, /charset is one of/),
  );
  await assert.rejects(
    call(at, 'label', { name: 'g', label: 'Bad Label', version: 1 }),
    failsWith(grpc.status.INVALID_ARGUMENT, /lower-case letter/),
  );
});

test('generate makes the value on the server; expiry makes reads fail and wipes the value', {
  timeout: 30_000,
}, async () => {
  const at = cluster.follower();
  const made = await call(at, 'generate', { name: 'gen/api-key', length: 40, charset: 'hex' });
  assert.equal(made['version'], 1);
  const value = ((await call(at, 'get', { name: 'gen/api-key' }))['value'] as Buffer).toString();
  assert.match(value, /^[0-9a-f]{40}$/);
  await call(at, 'put', { name: 'ttl/short', value: Buffer.from('soon gone'), ttlSeconds: 1 });
  assert.equal(((await call(at, 'get', { name: 'ttl/short' }))['value'] as Buffer).toString(), 'soon gone');
  await eventually('the value to expire and be wiped on every manager', 15_000, async () => {
    const wiped = cluster.nodes.every((node) => node.state.secrets.versions('ttl/short', 0)[0]!.expired);
    return wiped ? true : undefined;
  });
  await assert.rejects(call(at, 'get', { name: 'ttl/short' }), failsWith(grpc.status.NOT_FOUND, /expired/));
});
