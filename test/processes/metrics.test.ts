import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { readFileSync } from 'node:fs';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../../src/transport/tls.ts';
import { AdminClient, Processes, coffer, eventually, freePort } from './processes.ts';

/** Asks a manager's gRPC reflection service one question over its bidirectional stream. */
async function reflect(
  address: string,
  adminDir: string,
  clusterId: string,
  request: object,
): Promise<Record<string, unknown>> {
  const proto = createRequire(import.meta.url).resolve(
    '@grpc/reflection/build/proto/grpc/reflection/v1/reflection.proto',
  );
  const loaded = grpc.loadPackageDefinition(
    protoLoader.loadSync(proto, { keepCase: false, defaults: true, oneofs: true }),
  ) as unknown as {
    grpc: { reflection: { v1: { ServerReflection: grpc.ServiceClientConstructor } } };
  };
  const read = (name: string) => readFileSync(join(adminDir, name), 'utf8');
  const credentials = managerChannelCredentials(
    { caPem: read('ca.crt'), certPem: read('admin.crt'), keyPem: read('admin.key') },
    { clusterId },
  );
  const client = new loaded.grpc.reflection.v1.ServerReflection(address, credentials, MANAGER_CHANNEL_OPTIONS);
  try {
    const stream = (
      client as unknown as { serverReflectionInfo(): grpc.ClientDuplexStream<object, Record<string, unknown>> }
    ).serverReflectionInfo();
    const reply = new Promise<Record<string, unknown>>((resolve, reject) => {
      stream.once('data', resolve);
      stream.once('error', reject);
    });
    stream.write(request);
    stream.end();
    return await reply;
  } finally {
    client.close();
  }
}

/** The value of one sample in Prometheus text, by name and a label filter (substring). */
function sample(text: string, name: string, labels = ''): number | null {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (labels !== '' && !line.includes(labels)) continue;
    return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return null;
}

test('a manager serves Prometheus metrics (Raft progress, latency histograms, RPCs by method and code, keyring; no secret in them) and gRPC reflection of the client API', {
  timeout: 120_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-metrics-'));
  const procs = new Processes(root);
  let admin: AdminClient | null = null;
  try {
    const address = `127.0.0.1:${await freePort()}`;
    const metricsPort = await freePort();
    const data = join(root, 'm1');
    const init = await coffer(['init', '--data', data, '--listen', address, '--output', 'json']);
    assert.equal(init.code, 0, init.stderr);
    const { clusterId, adminDir } = JSON.parse(init.stdout) as { clusterId: string; adminDir: string };
    procs.start('m1', ['server', '--data', data, '--metrics-listen', `127.0.0.1:${metricsPort}`]);
    admin = new AdminClient(adminDir, clusterId);
    const client = admin;
    await eventually('the manager to lead with a keyring', 30_000, async () => {
      const s = await client.status(address);
      return s.role === 'leader' && s.keyringTerm > 0 ? true : undefined;
    });
    const url = `http://127.0.0.1:${metricsPort}/metrics`;
    const before = await (await fetch(url)).text();
    const putsBefore = sample(before, 'coffer_rpc_requests_total', 'method="Secrets.Put",code="OK"') ?? 0;
    const applyBefore = sample(before, 'coffer_raft_apply_seconds_count') ?? 0;
    const secret = 'metrics-must-not-show-this-value';
    for (let k = 0; k < 7; k++)
      await client.call(address, 'Secrets', 'put', { name: `app/m${k}`, value: Buffer.from(`${secret}-${k}`) });
    await client.call(address, 'Secrets', 'get', { name: 'app/m1' });
    await assert.rejects(client.call(address, 'Secrets', 'get', { name: 'app/none' }));

    const response = await fetch(url);
    assert.equal(response.status, 200);
    assert.match(response.headers.get('content-type') ?? '', /text\/plain/);
    const text = await response.text();
    assert.ok((sample(text, 'coffer_raft_term') ?? 0) >= 1, 'term');
    assert.equal(sample(text, 'coffer_raft_is_leader'), 1);
    assert.ok((sample(text, 'coffer_raft_applied_index') ?? 0) >= 7);
    assert.ok((sample(text, 'coffer_keyring_term') ?? 0) >= 1, 'keyring term');
    assert.equal(sample(text, 'coffer_locked'), 0);
    assert.equal(sample(text, 'coffer_audit_broken'), 0);
    assert.equal(sample(text, 'coffer_rpc_requests_total', 'method="Secrets.Put",code="OK"'), putsBefore + 7);
    assert.equal(sample(text, 'coffer_rpc_requests_total', 'method="Secrets.Get",code="NOT_FOUND"'), 1);
    assert.ok(
      (sample(text, 'coffer_raft_apply_seconds_count') ?? 0) >= applyBefore + 7,
      'apply latency observed per write',
    );
    assert.ok((sample(text, 'coffer_raft_commit_seconds_count') ?? 0) >= 7);
    assert.ok((sample(text, 'coffer_raft_proposal_seconds_count') ?? 0) >= 7, 'proposal latency observed per write');
    assert.ok((sample(text, 'coffer_storage_fsync_seconds_count') ?? 0) >= 7, 'fsyncs observed');
    assert.ok((sample(text, 'coffer_raft_read_index_seconds_count') ?? 0) >= 1, 'linearizable reads observed');
    assert.ok((sample(text, 'coffer_raft_leader_changes_total') ?? 0) >= 1);
    assert.ok((sample(text, 'coffer_process_resident_memory_bytes') ?? 0) > 0, 'process metrics');
    assert.match(text, /node_id="1"/);
    assert.ok(!text.includes(secret), 'no secret value in the metrics');
    assert.equal((await fetch(`http://127.0.0.1:${metricsPort}/other`)).status, 404);

    // Reflection: the client API is listed (not the manager-only services) and described.
    const listed = (await reflect(address, adminDir, clusterId, { listServices: '*' })) as {
      listServicesResponse: { service: Array<{ name: string }> };
    };
    assert.deepEqual(listed.listServicesResponse.service.map((s) => s.name).sort(), [
      'coffer.v1.Audit',
      'coffer.v1.Auth',
      'coffer.v1.Backup',
      'coffer.v1.Cluster',
      'coffer.v1.Database',
      'coffer.v1.Identities',
      'coffer.v1.Keys',
      'coffer.v1.Leases',
      'coffer.v1.Policies',
      'coffer.v1.Secrets',
    ]);
    const described = (await reflect(address, adminDir, clusterId, { fileContainingSymbol: 'coffer.v1.Secrets' })) as {
      fileDescriptorResponse: { fileDescriptorProto: Buffer[] };
    };
    assert.ok(
      described.fileDescriptorResponse.fileDescriptorProto.some((file) =>
        file.toString('latin1').includes('PutSecretRequest'),
      ),
      'the descriptor of Secrets',
    );
  } finally {
    admin?.close();
    await procs.killAll();
    rmSync(root, { recursive: true, force: true });
  }
});
