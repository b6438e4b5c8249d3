import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { issueCertificate, newLeafKey } from '../../src/crypto/pki.ts';
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
const denied = (pattern: RegExp) => (error: grpc.ServiceError) => {
  assert.equal(grpc.status[error.code], 'PERMISSION_DENIED', error.details);
  assert.match(error.details, pattern);
  return true;
};

/** Issues an identity with a key made here (only the public key travels) and returns a client for it. */
async function issue(name: string, policies: string[]): Promise<{ client: AdminClient; serial: string }> {
  const key = newLeafKey();
  const issued = await cluster.admin.call<Reply>(cluster.addresses[0]!, 'Identities', 'issue', {
    name,
    policies,
    publicKeyPem: key.publicPem,
  });
  const client = new AdminClient('', cluster.clusterId, {
    caPem: issued['caCertificatePem'] as string,
    certPem: issued['certificatePem'] as string,
    keyPem: key.privatePem,
  });
  return { client, serial: issued['serial'] as string };
}

test('policies allow and deny by path and capability, the most specific rule winning, on every manager', {
  timeout: 60_000,
}, async () => {
  const admin = cluster.admin;
  await admin.call(cluster.addresses[0]!, 'Secrets', 'put', { name: 'team/dev/db', value: Buffer.from('dev-pass') });
  await admin.call(cluster.addresses[0]!, 'Secrets', 'put', { name: 'team/prod/db', value: Buffer.from('prod-pass') });
  await admin.call(cluster.addresses[0]!, 'Secrets', 'put', { name: 'other/x', value: Buffer.from('x') });
  await admin.call(cluster.addresses[0]!, 'Policies', 'put', {
    name: 'team-reader',
    rules: [
      { path: 'team/**', capabilities: ['read', 'list'], deny: false },
      { path: 'team/prod/**', capabilities: ['read'], deny: true },
    ],
  });
  const { client } = await issue('ci-runner', ['team-reader']);
  try {
    for (const address of cluster.addresses) {
      const got = await eventually('the identity to be known here', 10_000, async () =>
        client.call<Reply>(address, 'Secrets', 'get', { name: 'team/dev/db' }),
      );
      assert.equal((got['value'] as Buffer).toString(), 'dev-pass');
      await assert.rejects(
        client.call(address, 'Secrets', 'get', { name: 'team/prod/db' }),
        denied(/may not read "team\/prod\/db": denied by policy "team-reader", rule "team\/prod\/\*\*"/),
      );
      await assert.rejects(client.call(address, 'Secrets', 'get', { name: 'other/x' }), denied(/no policy allows it/));
      await assert.rejects(
        client.call(address, 'Secrets', 'put', { name: 'team/dev/db', value: Buffer.from('hijack') }),
        denied(/may not write/),
      );
    }
    const listed = await client.call<Reply>(cluster.addresses[1]!, 'Secrets', 'list', { prefix: '' });
    assert.deepEqual(
      (listed['secrets'] as Reply[]).map((s) => s['name']).sort(),
      ['team/dev/db', 'team/prod/db'],
      'a listing shows only what the identity may list',
    );
    await assert.rejects(
      client.call(cluster.addresses[0]!, 'Policies', 'put', {
        name: 'mine',
        rules: [{ path: '**', capabilities: ['admin'], deny: false }],
      }),
      denied(/may not admin "sys\/policies\/mine"/),
    );
    await assert.rejects(
      client.call(cluster.addresses[0]!, 'Identities', 'issue', {
        name: 'evil',
        policies: ['root'],
        publicKeyPem: newLeafKey().publicPem,
      }),
      denied(/may not admin/),
    );
  } finally {
    client.close();
  }
});

test('a revoked identity is refused by every manager from then on; a certificate the cluster never issued is refused too', {
  timeout: 60_000,
}, async () => {
  await cluster.admin.call(cluster.addresses[0]!, 'Policies', 'put', {
    name: 'all-read',
    rules: [{ path: '**', capabilities: ['read'], deny: false }],
  });
  await cluster.admin.call(cluster.addresses[0]!, 'Secrets', 'put', { name: 'shared/k', value: Buffer.from('v') });
  const { client } = await issue('laptop', ['all-read']);
  try {
    for (const address of cluster.addresses)
      await eventually('a read', 10_000, async () => client.call(address, 'Secrets', 'get', { name: 'shared/k' }));
    await cluster.admin.call(cluster.addresses[2]!, 'Identities', 'revoke', { name: 'laptop' });
    for (const address of cluster.addresses) {
      await eventually('the revocation to apply here', 10_000, async () =>
        client.call(address, 'Secrets', 'get', { name: 'shared/k', stale: true }).then(
          () => undefined,
          (error: grpc.ServiceError) =>
            error.code === grpc.status.PERMISSION_DENIED && /was revoked/.test(error.details) ? true : undefined,
        ),
      );
    }
    const listed = await cluster.admin.call<Reply>(cluster.addresses[0]!, 'Identities', 'list', {});
    const laptop = (listed['identities'] as Reply[]).find((i) => i['name'] === 'laptop')!;
    assert.equal(laptop['revoked'], true);
  } finally {
    client.close();
  }
  // Signed by the cluster CA but never registered (made with a copy of the CA key): refused,
  // also under the name of an identity that exists.
  const forged = issueCertificate(cluster.nodes[0]!.ca, {
    id: 'admin',
    role: 'client',
    clusterId: cluster.clusterId,
    nowMs: Date.now(),
  });
  const stranger = new AdminClient('', cluster.clusterId, {
    caPem: readFileSync(join(cluster.adminDir, 'ca.crt'), 'utf8'),
    certPem: forged.certPem,
    keyPem: forged.keyPem,
  });
  try {
    await assert.rejects(
      stranger.call(cluster.addresses[0]!, 'Secrets', 'get', { name: 'shared/k' }),
      denied(/this certificate was not issued to identity "admin" by this cluster/),
    );
  } finally {
    stranger.close();
  }
});

test('policy administration: bad policies are refused with what to fix; get, list and remove', {
  timeout: 30_000,
}, async () => {
  const admin = cluster.admin;
  const at = cluster.addresses[1]!;
  await assert.rejects(
    admin.call(at, 'Policies', 'put', { name: 'p', rules: [{ path: 'a/**x', capabilities: ['read'], deny: false }] }),
    (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /rule 1: the path/.test(e.details),
  );
  await assert.rejects(
    admin.call(at, 'Policies', 'put', { name: 'root', rules: [{ path: '**', capabilities: ['read'], deny: false }] }),
    (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT && /built in/.test(e.details),
  );
  await admin.call(at, 'Policies', 'put', {
    name: 'tmp',
    rules: [{ path: 'x/*', capabilities: ['read', 'list'], deny: false }],
  });
  const got = await admin.call<Reply>(at, 'Policies', 'get', { name: 'tmp' });
  assert.deepEqual(got['rules'], [{ path: 'x/*', capabilities: ['read', 'list'], deny: false }]);
  assert.ok(
    ((await admin.call<Reply>(at, 'Policies', 'list', {}))['policies'] as Reply[]).some((p) => p['name'] === 'root'),
  );
  await admin.call(at, 'Policies', 'remove', { name: 'tmp' });
  await assert.rejects(
    admin.call(at, 'Policies', 'get', { name: 'tmp' }),
    (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND,
  );
  await assert.rejects(
    admin.call(at, 'Identities', 'issue', { name: 'x', policies: ['missing'], publicKeyPem: newLeafKey().publicPem }),
    (e: grpc.ServiceError) => e.code === grpc.status.FAILED_PRECONDITION && /put it first/.test(e.details),
  );
});

test('every request, allowed or denied, is in the audit log of the manager that served it, without values; a broken audit log fails requests closed', {
  timeout: 60_000,
}, async () => {
  const at = cluster.addresses[2]!;
  const value = `audited-${Date.now()}-value`;
  await cluster.admin.call(at, 'Secrets', 'put', { name: 'audit/me', value: Buffer.from(value) });
  await cluster.admin.call(at, 'Secrets', 'get', { name: 'audit/me' });
  const { client } = await issue('nosy', []);
  try {
    await eventually('the identity to be known', 10_000, async () =>
      client.call(at, 'Secrets', 'get', { name: 'audit/me' }).then(
        () => undefined,
        (e: grpc.ServiceError) => (/no policy allows it/.test(e.details) ? true : undefined),
      ),
    );
  } finally {
    client.close();
  }
  const tail = await cluster.admin.call<Reply>(at, 'Audit', 'tail', { count: 50 });
  const records = tail['records'] as Reply[];
  const find = (identity: string, method: string, outcome: string) =>
    records.find(
      (r) =>
        r['identity'] === identity && r['method'] === method && r['target'] === 'audit/me' && r['outcome'] === outcome,
    );
  assert.ok(find('admin', 'Secrets.Put', 'allowed'));
  assert.ok(find('admin', 'Secrets.Get', 'allowed'));
  assert.equal(find('nosy', 'Secrets.Get', 'denied')?.['code'], 'PERMISSION_DENIED');
  const node = cluster.nodes[2]!;
  const text = readFileSync(join(node.audit.dir, 'audit.log'), 'utf8');
  assert.ok(
    !text.includes(value) && !text.includes(Buffer.from(value).toString('base64')),
    'no value in the audit log',
  );
  assert.equal((await cluster.admin.call<Reply>(at, 'Audit', 'verify', {}))['ok'], true);

  // Fail closed: the audit directory becomes unwritable; a read of a secret fails and returns nothing.
  renameSync(node.audit.dir, `${node.audit.dir}.away`);
  writeFileSync(node.audit.dir, 'blocked');
  try {
    await assert.rejects(
      cluster.admin.call(at, 'Secrets', 'get', { name: 'audit/me' }),
      (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE && /audit log cannot be written/.test(e.details),
    );
    await assert.rejects(
      cluster.admin.call(at, 'Secrets', 'get', { name: 'audit/me' }),
      (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE,
    );
  } finally {
    rmSync(node.audit.dir);
    renameSync(`${node.audit.dir}.away`, node.audit.dir);
  }
  // Once it can write again, requests are served and the chain is still whole.
  await eventually('requests to be served again', 10_000, async () =>
    cluster.admin.call(at, 'Secrets', 'get', { name: 'audit/me' }),
  );
  assert.equal((await cluster.admin.call<Reply>(at, 'Audit', 'verify', {}))['ok'], true);
});

test('an identity that may administer some identities cannot hand out a policy it does not administer (no escalation to root)', {
  timeout: 30_000,
}, async () => {
  const at = cluster.addresses[0]!;
  await cluster.admin.call(at, 'Policies', 'put', {
    name: 'id-admin',
    rules: [{ path: 'sys/identities/ci-*', capabilities: ['admin'], deny: false }],
  });
  const { client } = await issue('helper', ['id-admin']);
  try {
    await eventually('helper to be known', 10_000, async () =>
      client.call(at, 'Identities', 'issue', { name: 'ci-y', policies: [], publicKeyPem: newLeafKey().publicPem }).then(
        () => true,
        (e: grpc.ServiceError) => (/not known/.test(e.details) ? undefined : Promise.reject(e)),
      ),
    );
    await assert.rejects(
      client.call(at, 'Identities', 'issue', {
        name: 'ci-x',
        policies: ['root'],
        publicKeyPem: newLeafKey().publicPem,
      }),
      denied(/may not admin "sys\/policies\/root"/),
    );
    await assert.rejects(
      client.call(at, 'Identities', 'issue', { name: 'other', policies: [], publicKeyPem: newLeafKey().publicPem }),
      denied(/may not admin "sys\/identities\/other"/),
    );
    const listed = await client.call<Reply>(at, 'Identities', 'list', {}).catch((e: grpc.ServiceError) => e);
    assert.ok(listed instanceof Error, 'listing all identities needs admin on sys/identities');
  } finally {
    client.close();
  }
});

test('a delegated administrator of team-* policies and identities cannot climb to root over gRPC: no wider policy, no takeover of admin, no join token, keys or membership', {
  timeout: 60_000,
}, async () => {
  const at = cluster.addresses[0]!;
  await cluster.admin.call(at, 'Policies', 'put', {
    name: 'team-admin',
    rules: [
      { path: 'sys/policies/team-*', capabilities: ['admin'], deny: false },
      { path: 'sys/identities/team-*', capabilities: ['admin'], deny: false },
      { path: 'sys/**', capabilities: ['admin'], deny: false },
      { path: 'team/**', capabilities: ['read', 'write', 'list'], deny: false },
    ],
  });
  const { client } = await issue('team-lead', ['team-admin']);
  try {
    await eventually('the team lead to be known', 10_000, async () =>
      client
        .call(at, 'Policies', 'put', {
          name: 'team-ok',
          rules: [{ path: 'team/app/**', capabilities: ['read'], deny: false }],
        })
        .then(
          () => true,
          () => undefined,
        ),
    );
    await assert.rejects(
      client.call(at, 'Policies', 'put', {
        name: 'team-x',
        rules: [{ path: '**', capabilities: ['read', 'write', 'list', 'delete', 'admin', 'sudo'], deny: false }],
      }),
      denied(/rule "\*\*" grants read, which you do not hold/),
    );
    await assert.rejects(
      client.call(at, 'Policies', 'put', {
        name: 'team-x',
        rules: [{ path: 'prod/**', capabilities: ['read'], deny: false }],
      }),
      denied(/grants read/),
    );
    await assert.rejects(
      client.call(at, 'Identities', 'issue', {
        name: 'admin',
        policies: [],
        publicKeyPem: newLeafKey().publicPem,
        reissue: true,
      }),
      denied(/policy "root" grants more than identity "team-lead" holds/),
    );
    await assert.rejects(
      client.call(at, 'Identities', 'issue', {
        name: 'team-bot',
        policies: ['root'],
        publicKeyPem: newLeafKey().publicPem,
      }),
      denied(/hand out policy "root"|grants more/),
    );
    // Admin on sys/** is not sudo: the join token (which hands out the root key), keys and membership stay root's.
    await assert.rejects(client.call(at, 'Cluster', 'rotateJoinToken', {}), denied(/may not sudo "sys\/cluster"/));
    await assert.rejects(client.call(at, 'Keys', 'rotate', {}), denied(/may not sudo "sys\/keys"/));
    await assert.rejects(
      client.call(at, 'Cluster', 'removeMember', { nodeId: 2 }),
      denied(/may not sudo "sys\/cluster"/),
    );
    const existing = await cluster.admin
      .call<Reply>(at, 'Identities', 'issue', {
        name: 'team-lead',
        policies: ['team-admin'],
        publicKeyPem: newLeafKey().publicPem,
      })
      .catch((e: grpc.ServiceError) => e);
    assert.ok(
      existing instanceof Error && (existing as grpc.ServiceError).code === grpc.status.ALREADY_EXISTS,
      'issuing an existing name needs --reissue',
    );
  } finally {
    client.close();
  }
});
