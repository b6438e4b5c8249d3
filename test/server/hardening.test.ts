import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { cpSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { services } from '../../src/transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../../src/transport/tls.ts';
import { AUDIT_FILE } from '../../src/audit/audit-log.ts';
import { ANONYMOUS_RECORDS_PER_SECOND_MAX } from '../../src/server/anonymous-audit.ts';
import { identityOf, issueCertificate, newLeafKey } from '../../src/crypto/pki.ts';
import { AdminClient, eventually } from '../processes/processes.ts';
import { CofferNode } from '../../src/server/node.ts';
import { createLogger } from '../../src/util/logger.ts';
import { InProcessCluster } from './in-process-cluster.ts';

// Attacks on one manager by callers outside the cluster or with a narrow certificate.
let cluster: InProcessCluster;
before(async () => {
  cluster = await InProcessCluster.start(1, {
    identityRequestsPerSecond: 200,
    identityWriteBytesPerMinute: 4 * 1024 * 1024,
    auditAnchorIntervalMs: 200,
  });
});
after(async () => {
  await cluster?.stop();
});

type Reply = Record<string, unknown>;

/** A caller that trusts the cluster CA but has no certificate of its own. */
function anonymousCall<Response>(
  service: 'Secrets' | 'Policies' | 'Identities' | 'Audit',
  method: string,
  request: object,
): Promise<Response> {
  const credentials = managerChannelCredentials(
    { caPem: readFileSync(join(cluster.adminDir, 'ca.crt'), 'utf8'), certPem: null, keyPem: null },
    { clusterId: cluster.clusterId },
  );
  const client = new (services()[service].Client)(cluster.addresses[0]!, credentials, {
    ...MANAGER_CHANNEL_OPTIONS,
    'grpc.max_send_message_length': 8 * 1024 * 1024,
  });
  const stub = client as unknown as Record<
    string,
    (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: Response) => void) => void
  >;
  return new Promise<Response>((resolve, reject) => {
    stub[method]!.call(client, request, { deadline: Date.now() + 10_000 }, (error, response) =>
      error === null ? resolve(response!) : reject(error),
    );
  }).finally(() => client.close());
}

const auditPath = (): string => join(cluster.nodes[0]!.audit.dir, AUDIT_FILE);
const auditBytes = (): number => {
  try {
    return statSync(auditPath()).size;
  } catch {
    return 0;
  }
};
const code = (name: keyof typeof grpc.status) => (error: grpc.ServiceError) => {
  assert.equal(grpc.status[error.code], name, error.details);
  return true;
};

test('a caller without a certificate is refused before its request is used: 4 MB names leave only small audit records, and none of the name', {
  timeout: 60_000,
}, async () => {
  await cluster.nodes[0]!.audit.settled();
  const before = auditBytes();
  const name = `x${'A'.repeat(4_000_000)}`;
  for (let k = 0; k < 20; k++) {
    const method = ['put', 'generate', 'label', 'unlabel'][k % 4]!;
    await assert.rejects(
      anonymousCall('Secrets', method, { name, value: Buffer.from('v'), label: 'l', length: 8, version: 1 }),
      code('UNAUTHENTICATED'),
    );
  }
  await assert.rejects(anonymousCall('Policies', 'remove', { name }), code('UNAUTHENTICATED'));
  await cluster.nodes[0]!.audit.settled();
  const grown = auditBytes() - before;
  assert.ok(grown < 21 * 1024, `21 refusals added ${grown} bytes to the audit log`);
  const text = readFileSync(auditPath(), 'utf8');
  assert.ok(!text.includes('AAAAAAAAAAAAAAAA'), 'no part of the name reaches the audit log');
  const refused = text.split('\n').filter((l) => l.includes('"UNAUTHENTICATED"'));
  assert.ok(
    refused.length >= 1 && refused.every((l) => /"target":"from [^"]{1,70}"/.test(l)),
    'each anonymous record names only where it came from',
  );
});

test('a flood of anonymous requests is audited one by one only up to a rate, then counted in a summary record', {
  timeout: 60_000,
}, async () => {
  await new Promise((resolve) => setTimeout(resolve, 1200)); // a summary of earlier refusals is written first
  await cluster.nodes[0]!.audit.settled();
  const before = auditBytes();
  const flood = 200;
  const started = Date.now();
  await Promise.all(
    Array.from({ length: flood }, () =>
      assert.rejects(anonymousCall('Secrets', 'get', { name: 'a' }), code('UNAUTHENTICATED')),
    ),
  );
  const seconds = Math.ceil((Date.now() - started) / 1000) + 1;
  await new Promise((resolve) => setTimeout(resolve, 1200)); // the summary follows within a second
  await cluster.nodes[0]!.audit.settled();
  const lines = readFileSync(auditPath(), 'utf8')
    .slice(before)
    .split('\n')
    .filter((l) => l !== '');
  const individual = lines.filter((l) => /"target":"from /.test(l)).length;
  const summaries = lines.filter((l) => /more requests without a certificate/.test(l));
  assert.ok(
    individual <= ANONYMOUS_RECORDS_PER_SECOND_MAX * seconds,
    `${individual} records one by one in about ${seconds} s`,
  );
  const counted = summaries.reduce((n, l) => n + Number(/(\d+) more requests/.exec(l)![1]), 0);
  assert.equal(
    individual + counted,
    flood,
    `every anonymous request is either recorded (${individual}) or counted (${counted})`,
  );
});

test("an authenticated caller's oversized or malformed name is refused as INVALID_ARGUMENT before it is authorized or audited", {
  timeout: 60_000,
}, async () => {
  const admin = cluster.admin;
  const address = cluster.addresses[0]!;
  await cluster.nodes[0]!.audit.settled();
  const before = auditBytes();
  const name = `a/${'B'.repeat(1_000_000)}`;
  await assert.rejects(
    admin.call(address, 'Secrets', 'put', { name, value: Buffer.from('v') }, 10_000),
    code('INVALID_ARGUMENT'),
  );
  await assert.rejects(
    admin.call(address, 'Secrets', 'generate', { name, length: 8 }, 10_000),
    code('INVALID_ARGUMENT'),
  );
  await assert.rejects(
    admin.call(address, 'Secrets', 'label', { name, label: 'x', version: 1 }, 10_000),
    code('INVALID_ARGUMENT'),
  );
  await assert.rejects(
    admin.call(address, 'Secrets', 'unlabel', { name, label: 'x' }, 10_000),
    code('INVALID_ARGUMENT'),
  );
  await assert.rejects(admin.call(address, 'Secrets', 'list', { prefix: name }, 10_000), code('INVALID_ARGUMENT'));
  await assert.rejects(
    admin.call(address, 'Policies', 'remove', { name: `p${'c'.repeat(1_000_000)}` }, 10_000),
    code('INVALID_ARGUMENT'),
  );
  await assert.rejects(
    admin.call(address, 'Secrets', 'put', { name: 'a/\u001b[2Jbad', value: Buffer.from('v') }),
    (error: grpc.ServiceError) => {
      assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
      assert.ok(!error.details.includes('\u001b'), 'the refusal quotes the name escaped');
      return true;
    },
  );
  await cluster.nodes[0]!.audit.settled();
  const grown = auditBytes() - before;
  assert.ok(grown < 7 * 1024, `7 refusals added ${grown} bytes to the audit log`);
  assert.ok(!readFileSync(auditPath(), 'utf8').includes('BBBBBBBBBBBBBBBB'));
});

test('generate refuses charsets that every object has as a property (constructor, toString, __proto__, hasOwnProperty)', {
  timeout: 30_000,
}, async () => {
  for (const charset of ['constructor', 'toString', '__proto__', 'hasOwnProperty', 'valueOf']) {
    await assert.rejects(
      cluster.admin.call(cluster.addresses[0]!, 'Secrets', 'generate', { name: 'gen/x', length: 16, charset }),
      (error: grpc.ServiceError) => {
        assert.equal(grpc.status[error.code], 'INVALID_ARGUMENT', `${charset}: ${error.details}`);
        assert.match(error.details, /charset is one of alphanumeric, hex/);
        return true;
      },
    );
  }
  await assert.rejects(
    cluster.admin.call(cluster.addresses[0]!, 'Secrets', 'get', { name: 'gen/x' }),
    code('NOT_FOUND'),
  );
  const made = await cluster.admin.call<Reply>(cluster.addresses[0]!, 'Secrets', 'generate', {
    name: 'gen/x',
    length: 16,
    charset: 'hex',
  });
  assert.equal(made['version'], 1);
  const got = await cluster.admin.call<Reply>(cluster.addresses[0]!, 'Secrets', 'get', { name: 'gen/x' });
  assert.match((got['value'] as Buffer).toString(), /^[0-9a-f]{16}$/);
});

test("a certificate minted with the CA key for the admin's name and serial, but another key, is refused: identities are bound to keys", {
  timeout: 30_000,
}, async () => {
  const node = cluster.nodes[0]!;
  const real = identityOf(readFileSync(join(cluster.adminDir, 'admin.crt'), 'utf8'));
  const forged = issueCertificate(node.ca, {
    id: 'admin',
    role: 'client',
    clusterId: cluster.clusterId,
    nowMs: Date.now(),
    serial: real.serial,
  });
  assert.equal(identityOf(forged.certPem).serial, real.serial, "the forgery carries the admin's serial");
  const forger = new AdminClient('', cluster.clusterId, {
    caPem: node.tls.caPem,
    certPem: forged.certPem,
    keyPem: forged.keyPem,
  });
  try {
    for (const [service, method, request] of [
      ['Secrets', 'get', { name: 'gen/x' }],
      ['Policies', 'list', {}],
      ['Identities', 'issue', { name: 'mine', policies: ['root'], publicKeyPem: newLeafKey().publicPem }],
    ] as const) {
      await assert.rejects(forger.call(cluster.addresses[0]!, service, method, request), (error: grpc.ServiceError) => {
        assert.equal(grpc.status[error.code], 'PERMISSION_DENIED', `${service}.${method}: ${error.details}`);
        assert.match(error.details, /this certificate was not issued to identity "admin"/);
        return true;
      });
    }
  } finally {
    forger.close();
  }
  // The real admin is still admin.
  await cluster.admin.call(cluster.addresses[0]!, 'Policies', 'list', {});
});

test('an identity over its request rate, or its bytes written per minute, is refused with RESOURCE_EXHAUSTED naming the limit, and served again later', {
  timeout: 60_000,
}, async () => {
  const address = cluster.addresses[0]!;
  await cluster.admin.call(address, 'Secrets', 'put', { name: 'rate/x', value: Buffer.from('v') });
  await new Promise((resolve) => setTimeout(resolve, 1100)); // a full bucket
  // The bucket holds 200 and refills 200 a second: how many pass depends on how fast this machine
  // serves the burst, so the bound is taken from the time the burst took, not from a fixed count.
  const burst = 1000;
  const startedMs = performance.now();
  const outcomes = await Promise.all(
    Array.from({ length: burst }, () =>
      cluster.admin.call(address, 'Secrets', 'get', { name: 'rate/x', stale: true }).then(
        () => 'ok',
        (error: grpc.ServiceError) => `${grpc.status[error.code]}: ${error.details}`,
      ),
    ),
  );
  const elapsedS = (performance.now() - startedMs) / 1000;
  const limited = outcomes.filter((o) => o.startsWith('RESOURCE_EXHAUSTED'));
  const served = outcomes.filter((o) => o === 'ok').length;
  assert.equal(
    served + limited.length,
    burst,
    `every request is served or refused: ${outcomes.find((o) => o !== 'ok' && !o.startsWith('RESOURCE_EXHAUSTED'))}`,
  );
  assert.ok(served >= 150, `the burst allowed is served: ${served} of ${burst}`);
  const servedMax = Math.ceil(200 + 200 * elapsedS) + 1;
  assert.ok(
    served <= servedMax,
    `${served} of ${burst} served in ${elapsedS.toFixed(2)} s: at most ${servedMax} may be`,
  );
  assert.ok(limited.length >= 1, `none of ${burst} requests in ${elapsedS.toFixed(2)} s refused`);
  assert.match(limited[0]!, /identity "admin" .*requests\/s on this manager \(--identity-requests-per-second\)/);
  await new Promise((resolve) => setTimeout(resolve, 1100));
  await cluster.admin.call(address, 'Secrets', 'get', { name: 'rate/x' });

  const value = Buffer.alloc(512 * 1024, 1);
  let refused: grpc.ServiceError | null = null;
  for (let k = 0; k < 12 && refused === null; k++) {
    await cluster.admin
      .call(address, 'Secrets', 'put', { name: `rate/big${k}`, value }, 10_000)
      .catch((error: grpc.ServiceError) => (refused = error));
  }
  assert.ok(refused !== null, 'writing 6 MiB within a minute is refused under a 4 MiB/min limit');
  const error = refused as grpc.ServiceError;
  assert.equal(grpc.status[error.code], 'RESOURCE_EXHAUSTED');
  assert.match(error.details, /--identity-write-bytes-per-minute/);
});

test('a request that is not a valid protobuf message is refused as INVALID_ARGUMENT and audited (not INTERNAL); without a certificate it is UNAUTHENTICATED', {
  timeout: 30_000,
}, async () => {
  const caPem = readFileSync(join(cluster.adminDir, 'ca.crt'), 'utf8');
  const raw = (material: { certPem: string | null; keyPem: string | null }, path: string, bytes: Buffer) => {
    const credentials = managerChannelCredentials(
      { caPem, certPem: material.certPem, keyPem: material.keyPem } as never,
      { clusterId: cluster.clusterId },
    );
    const client = new grpc.Client(cluster.addresses[0]!, credentials, MANAGER_CHANNEL_OPTIONS);
    return new Promise<grpc.ServiceError | null>((resolve) =>
      client.makeUnaryRequest(
        path,
        (b: Buffer) => b,
        (b: Buffer) => b,
        bytes,
        { deadline: Date.now() + 5000 },
        (error) => resolve(error),
      ),
    ).finally(() => client.close());
  };
  const admin = {
    certPem: readFileSync(join(cluster.adminDir, 'admin.crt'), 'utf8'),
    keyPem: readFileSync(join(cluster.adminDir, 'admin.key'), 'utf8'),
  };
  const garbage = Buffer.from([0x0f, 0xff]); // field 1 with wire type 7, which does not exist
  await cluster.nodes[0]!.audit.settled();
  for (const path of ['/coffer.v1.Secrets/Put', '/coffer.v1.Policies/Put', '/coffer.v1.Identities/Issue']) {
    const error = await raw(admin, path, garbage);
    assert.equal(error === null ? 'OK' : grpc.status[error.code], 'INVALID_ARGUMENT', `${path}: ${error?.details}`);
    assert.match(error!.details, /is not a valid .* message/);
  }
  const anonymous = await raw({ certPem: null, keyPem: null }, '/coffer.v1.Secrets/Put', garbage);
  assert.equal(anonymous === null ? 'OK' : grpc.status[anonymous.code], 'UNAUTHENTICATED');
  await cluster.nodes[0]!.audit.settled();
  const records = await cluster.nodes[0]!.audit.tail(10);
  assert.ok(
    records.some((r) => r.method === 'Secrets.Put' && r.identity === 'admin' && r.code === 'INVALID_ARGUMENT'),
    'the malformed request is audited',
  );
});

test('an older copy of the audit log and its head, put back while the manager was down, is caught by the anchor the cluster replicated', {
  timeout: 60_000,
}, async () => {
  const node = cluster.nodes[0]!;
  const dir = node.audit.dir;
  const options = {
    identityRequestsPerSecond: 200,
    identityWriteBytesPerMinute: 4 * 1024 * 1024,
    auditAnchorIntervalMs: 200,
  };
  await cluster.admin.call(cluster.addresses[0]!, 'Secrets', 'get', { name: 'gen/x' });
  await node.audit.settled();
  const copy = mkdtempSync(join(tmpdir(), 'coffer-audit-copy-'));
  try {
    cpSync(dir, copy, { recursive: true });
    const copiedSeq = node.audit.anchor.seq;
    for (let k = 0; k < 5; k++) await cluster.admin.call(cluster.addresses[0]!, 'Secrets', 'get', { name: 'gen/x' });
    await eventually('an anchor past the copy', 10_000, async () =>
      (node.state.cluster.auditAnchors.get(node.config.nodeId)?.seq ?? 0) > copiedSeq + 3 ? true : undefined,
    );
    const intact = await cluster.admin.call<Reply>(cluster.addresses[0]!, 'Audit', 'verify', {});
    assert.equal(intact['ok'], true, String(intact['problem']));
    assert.ok((intact['anchorSeq'] as number) > copiedSeq);

    await node.stop();
    rmSync(dir, { recursive: true });
    cpSync(copy, dir, { recursive: true });
    const restarted = await CofferNode.start({
      ...options,
      dataDir: join(cluster.root, 'm1'),
      logger: createLogger({ level: 'silent' }),
      tickIntervalMs: 50,
    });
    cluster.nodes[0] = restarted;
    const report = await eventually('an answer', 20_000, async () =>
      cluster.admin.call<Reply>(cluster.addresses[0]!, 'Audit', 'verify', {}).catch(() => undefined),
    );
    assert.equal(report['ok'], false, 'the older copy is not reported intact');
    assert.match(String(report['problem']), /anchor|record \d+/);
  } finally {
    rmSync(copy, { recursive: true, force: true });
  }
});
