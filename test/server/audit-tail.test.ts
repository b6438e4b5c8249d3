import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { AUDIT_FILE, AUDIT_LINE_BYTES_MAX } from '../../src/audit/audit-log.ts';
import { coffer } from '../processes/processes.ts';
import { InProcessCluster } from './in-process-cluster.ts';

let cluster: InProcessCluster;
before(async () => {
  cluster = await InProcessCluster.start(1);
  await cluster.servesReads();
});
after(async () => {
  await cluster?.stop();
});

type AuditRecord = { seq: number; time: string; timeMs: number; method: string; hash: string };

test('Audit.Tail gives each record its time in milliseconds (time_ms) beside the string the chain covers', async () => {
  const before = Date.now();
  await cluster.admin.call(cluster.addresses[0]!, 'Secrets', 'put', { name: 'audit/tail', value: Buffer.from('v') });
  const reply = await cluster.admin.call<{ records: AuditRecord[] }>(cluster.addresses[0]!, 'Audit', 'tail', {
    count: 50,
  });
  assert.ok(reply.records.length >= 2);
  for (const r of reply.records) {
    assert.equal(typeof r.timeMs, 'number');
    assert.equal(r.timeMs, Date.parse(r.time), `record ${r.seq}`);
    assert.match(r.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, 'the string is kept as the line holds it');
  }
  const put = reply.records.findLast((r) => r.method === 'Secrets.Put')!;
  assert.ok(put.timeMs >= before - 1000 && put.timeMs <= Date.now() + 1000, 'a time of this run');
});

test('coffer audit tail --output json prints timeMs for every record; the text output keeps its six columns', {
  timeout: 60_000,
}, async () => {
  const env = {
    COFFER_ADDR: cluster.addresses[0]!,
    COFFER_CA: join(cluster.adminDir, 'ca.crt'),
    COFFER_CERT: join(cluster.adminDir, 'admin.crt'),
    COFFER_KEY: join(cluster.adminDir, 'admin.key'),
  };
  const json = await coffer(['audit', 'tail', '-n', '5', '--output', 'json'], '', env);
  assert.equal(json.code, 0, json.stderr);
  const records = JSON.parse(json.stdout) as AuditRecord[];
  assert.ok(records.length > 0);
  for (const r of records) assert.equal(r.timeMs, Date.parse(r.time));
  const text = await coffer(['audit', 'tail', '-n', '5'], '', env);
  assert.equal(text.code, 0, text.stderr);
  for (const line of text.stdout.trim().split('\n')) assert.equal(line.split('\t').length, 6, line);
});

// Last: it leaves this manager's log altered.
test('Audit.Tail over bytes no record makes (a run without a line end) is DATA_LOSS, AUDIT_LOG_ALTERED, saying what to run', async () => {
  const node = cluster.nodes[0]!;
  await node.audit.settled();
  appendFileSync(join(node.audit.dir, AUDIT_FILE), 'x'.repeat(AUDIT_LINE_BYTES_MAX * 2));
  await assert.rejects(
    cluster.admin.call(cluster.addresses[0]!, 'Audit', 'tail', { count: 50 }),
    (error: grpc.ServiceError) => {
      assert.equal(grpc.status[error.code], 'DATA_LOSS', error.details);
      assert.match(error.details, /without a line end.*coffer audit verify/);
      assert.equal(error.metadata.get('coffer-error-reason')[0], 'AUDIT_LOG_ALTERED');
      return true;
    },
  );
});
