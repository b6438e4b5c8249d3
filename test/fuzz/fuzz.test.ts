import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../../src/transport/tls.ts';
import { SeededRandom } from '../../src/util/prng.ts';
import { InProcessCluster } from '../server/in-process-cluster.ts';
import { CALLERS } from './oracle.ts';
import { NOT_AS_ADMIN, discoverMethods, formatSummary, runFuzz } from './fuzz.ts';
import { makePayload, type Hints } from './payloads.ts';

const hints: Hints = {
  secretNames: ['fuzz/a'],
  policyNames: ['p'],
  identityNames: ['i'],
  publicKeyPem: 'pem',
  nodeIds: [1],
  addresses: ['127.0.0.1:1'],
  tokenSecret: Buffer.alloc(24),
};

test('the fuzzer finds every method from the service definitions, streaming ones included', () => {
  const methods = discoverMethods();
  const names = methods.map((m) => m.name);
  for (const name of [
    'Secrets.Put',
    'Cluster.Members',
    'Policies.Remove',
    'Identities.Renew',
    'Audit.Verify',
    'Keys.RotateRecovery',
    'Join.JoinCluster',
    'Peer.Propose',
    'grpc.health.v1.Health.Check',
    'grpc.reflection.v1.ServerReflection.ServerReflectionInfo',
  ]) {
    assert.ok(names.includes(name), `${name} is fuzzed`);
  }
  const raft = methods.find((m) => m.name === 'Peer.Raft')!;
  assert.ok(raft.requestStream && !raft.responseStream, 'Peer.Raft is client-streaming');
  const save = methods.find((m) => m.name === 'Backup.Save')!;
  assert.ok(!save.requestStream && save.responseStream, 'Backup.Save is server-streaming');
  for (const name of NOT_AS_ADMIN) assert.ok(names.includes(name), `${name} (kept from the admin) exists`);
  assert.ok(
    methods.filter((m) => m.service.startsWith('coffer.v1.')).every((m) => m.requestType !== null),
    'every coffer.v1 request type is known',
  );
});

test('a seed gives the same payloads again', () => {
  const methods = discoverMethods();
  const run = (seed: number): string[] => {
    const rng = new SeededRandom(seed);
    return Array.from({ length: 300 }, () => {
      const payload = makePayload(rng, methods[rng.int(methods.length)]!, hints);
      return `${payload.kind} ${payload.how} ${payload.bytes.subarray(0, 256).toString('hex')}`;
    });
  };
  assert.deepEqual(run(42), run(42));
  assert.notDeepEqual(run(42), run(43));
});

// Found by the fuzzer: grpc-js decodes a single request before any handler runs, and answered one
// that did not decode INTERNAL, before the certificate check, on the health and reflection services.
test('health and reflection requests that do not decode, or name a service at length: UNAUTHENTICATED without a certificate, else INVALID_ARGUMENT (not INTERNAL, not a hang)', {
  timeout: 60_000,
}, async () => {
  const cluster = await InProcessCluster.start(1);
  const identity = (b: Buffer): Buffer => b;
  const garbage = Buffer.from([0x0f, 0xff]); // field 1 with wire type 7, which does not exist
  const caPem = readFileSync(join(cluster.adminDir, 'ca.crt'), 'utf8');
  const admin = {
    caPem,
    certPem: readFileSync(join(cluster.adminDir, 'admin.crt'), 'utf8'),
    keyPem: readFileSync(join(cluster.adminDir, 'admin.key'), 'utf8'),
  };
  try {
    for (const [who, material, expected] of [
      ['anonymous', { caPem, certPem: null, keyPem: null }, 'UNAUTHENTICATED'],
      ['admin', admin, 'INVALID_ARGUMENT'],
    ] as const) {
      const client = new grpc.Client(
        cluster.addresses[0]!,
        managerChannelCredentials(material as never, { clusterId: cluster.clusterId }),
        MANAGER_CHANNEL_OPTIONS,
      );
      try {
        for (const method of ['Check', 'List']) {
          const error = await new Promise<grpc.ServiceError | null>((resolve) =>
            client.makeUnaryRequest(
              `/grpc.health.v1.Health/${method}`,
              identity,
              identity,
              garbage,
              { deadline: Date.now() + 5000 },
              (e) => resolve(e),
            ),
          );
          assert.equal(
            error === null ? 'OK' : grpc.status[error.code],
            expected,
            `${who}: Health.${method}: ${error?.details}`,
          );
        }
        const watched = await new Promise<grpc.StatusObject>((resolve) => {
          const call = client.makeServerStreamRequest('/grpc.health.v1.Health/Watch', identity, identity, garbage, {
            deadline: Date.now() + 5000,
          });
          call.on('error', () => undefined);
          call.on('status', resolve);
        });
        assert.equal(grpc.status[watched.code], expected, `${who}: Health.Watch: ${watched.details}`);
        const reflected = await new Promise<{ status: grpc.StatusObject; messages: number }>((resolve) => {
          let messages = 0;
          const call = client.makeBidiStreamRequest(
            '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo',
            identity,
            identity,
            { deadline: Date.now() + 5000 },
          );
          call.on('data', () => messages++);
          call.on('error', () => undefined);
          call.on('status', (status: grpc.StatusObject) => resolve({ status, messages }));
          call.write(garbage);
          call.end();
        });
        // Reflection answers a bad message on its stream in its own protocol: an error response.
        if (who === 'anonymous')
          assert.equal(grpc.status[reflected.status.code], 'UNAUTHENTICATED', reflected.status.details);
        else
          assert.deepEqual(
            [grpc.status[reflected.status.code], reflected.messages],
            ['OK', 1],
            reflected.status.details,
          );
        // Also found by the fuzzer: the health library quotes the service name in its NOT_FOUND
        // status, and a status over HTTP/2's header limit was never sent (the call hung).
        const check = discoverMethods().find((m) => m.name === 'grpc.health.v1.Health.Check')!;
        const long = await new Promise<grpc.ServiceError | null>((resolve) =>
          client.makeUnaryRequest(
            check.path,
            identity,
            identity,
            check.requestSerialize({ service: 'y'.repeat(100_000) }),
            { deadline: Date.now() + 5000 },
            (e) => resolve(e),
          ),
        );
        assert.equal(
          long === null ? 'OK' : grpc.status[long.code],
          who === 'anonymous' ? 'UNAUTHENTICATED' : 'INVALID_ARGUMENT',
          `${who}: Health.Check of a 100,000-character name: ${long?.details}`,
        );
      } finally {
        client.close();
      }
    }
  } finally {
    await cluster.stop();
  }
});

test('a short fuzz run (seed 20240601, one manager, 15 s): no failure, and the requests reach handlers', {
  timeout: 180_000,
}, async () => {
  const summary = await runFuzz({ seed: 20240601, durationS: 15, managers: 1 });
  const report = formatSummary(summary);
  assert.ok(summary.ok, report);
  assert.ok(summary.iterations >= 300, `only ${summary.iterations} iterations:\n${report}`);
  assert.ok(summary.checks >= 3, report);
  for (const code of ['OK', 'INVALID_ARGUMENT', 'PERMISSION_DENIED', 'UNAUTHENTICATED', 'NOT_FOUND'])
    assert.ok((summary.codes[code] ?? 0) > 0, `no ${code} seen:\n${report}`);
  for (const caller of CALLERS) assert.ok(summary.byCaller[caller] !== undefined, `${caller} never called:\n${report}`);
  const undrawn = summary.methods.filter((m) => summary.byMethod[m] === undefined);
  assert.deepEqual(undrawn, [], `methods never fuzzed:\n${report}`);
  // Handlers ran: the admin was served, and malformed or invalid requests were refused by them.
  assert.ok((summary.byCaller['admin']?.['OK'] ?? 0) >= 50, report);
  assert.ok((summary.byCaller['admin']?.['INVALID_ARGUMENT'] ?? 0) >= 50, report);
  assert.ok((summary.byCaller['narrow']?.['PERMISSION_DENIED'] ?? 0) >= 20, report);
});
