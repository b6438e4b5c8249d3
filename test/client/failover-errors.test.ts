import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { ClientError, CofferClient } from '../../src/client/client.ts';
import { InProcessCluster } from '../server/in-process-cluster.ts';
import { eventually } from '../processes/processes.ts';

test("with a majority down, a write's error is the live manager's answer, naming the managers it could not reach, not the last connection refused", {
  timeout: 90_000,
}, async () => {
  const cluster = await InProcessCluster.start(3);
  try {
    await cluster.servesReads(0);
    const read = (name: string) => readFileSync(join(cluster.adminDir, name), 'utf8');
    const pem = { caPem: read('ca.crt'), certPem: read('admin.crt'), keyPem: read('admin.key') };
    // Managers 2 and 3 go; manager 1 stays up, alone, and soon knows no leader.
    await cluster.nodes[1]!.stop();
    await cluster.nodes[2]!.stop();
    const [live, down2, down3] = cluster.addresses as [string, string, string];
    // The live manager first: the old client reported the last one tried, a refused connection.
    const client = new CofferClient({ ...pem, addresses: [live, down2, down3], deadlineMs: 5_000 });
    try {
      const error = await eventually('the live manager to say it knows no leader', 30_000, async () => {
        try {
          await client.put('app/key', Buffer.from('v'));
          return undefined;
        } catch (error) {
          return error instanceof ClientError && /no leader is known/.test(error.message) ? error : undefined;
        }
      });
      assert.equal(error.code, status.UNAVAILABLE);
      assert.match(error.message, /no leader is known/);
      assert.match(error.message, /2 other managers could not be reached/);
      assert.ok(error.message.includes(down2) && error.message.includes(down3), error.message);
      assert.doesNotMatch(error.message, /ECONNREFUSED/);
    } finally {
      client.close();
    }
    // No manager up at all: every address tried is named.
    await cluster.nodes[0]!.stop();
    const none = new CofferClient({ ...pem, addresses: [live, down2, down3], deadlineMs: 2_000 });
    try {
      await assert.rejects(none.put('app/key', Buffer.from('v')), (error: unknown) => {
        assert.ok(error instanceof ClientError);
        assert.equal(error.code, status.UNAVAILABLE);
        assert.match(error.message, /^no manager could be reached/);
        for (const address of [live, down2, down3]) assert.ok(error.message.includes(address), error.message);
        return true;
      });
    } finally {
      none.close();
    }
  } finally {
    await cluster.stop();
  }
});
