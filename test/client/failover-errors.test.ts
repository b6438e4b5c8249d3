import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { type AddressInfo, type Socket, createServer } from 'node:net';
import { join } from 'node:path';
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { ClientError, CofferClient, safeToRetry } from '../../src/client/client.ts';
import { ERROR_REASON_TRAILER } from '../../src/transport/error-details.ts';
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

test('a write goes to another manager only after a refusal that says it was never proposed: by the reason, or by the message where no reason tells', () => {
  const failure = (code: status, details: string, reason?: string): ServiceError => {
    const metadata = new Metadata();
    if (reason !== undefined) metadata.set(ERROR_REASON_TRAILER, reason);
    return Object.assign(new Error(details), { code, details, metadata });
  };
  // Refused before proposing, whatever the message says.
  for (const reason of ['NO_LEADER', 'LEADER_ADDRESS_UNKNOWN', 'MANAGER_LOCKED', 'MANAGER_REMOVED'])
    assert.equal(safeToRetry(failure(status.UNAVAILABLE, 'worded otherwise', reason), false), true, reason);
  // Leadership moved while it ran, or the audit failed after it ran: it may have been applied.
  assert.equal(safeToRetry(failure(status.UNAVAILABLE, 'leadership moved', 'NOT_LEADER'), false), false);
  assert.equal(
    safeToRetry(
      failure(status.UNAVAILABLE, 'the audit log cannot be written; the request was refused', 'AUDIT_UNAVAILABLE'),
      false,
    ),
    false,
  );
  // The audit log refusing before the request ran says so in its message (one reason for both).
  assert.equal(
    safeToRetry(
      failure(
        status.UNAVAILABLE,
        'the audit log cannot be written; requests are refused until it can',
        'AUDIT_UNAVAILABLE',
      ),
      false,
    ),
    true,
  );
  // No manager reached at all; a manager older than reasons.
  assert.equal(safeToRetry(failure(status.UNAVAILABLE, 'No connection established'), false), true);
  assert.equal(safeToRetry(failure(status.UNAVAILABLE, 'no leader is known; retry'), false), true);
  assert.equal(safeToRetry(failure(status.UNAVAILABLE, 'something else'), false), false);
  // Not UNAVAILABLE: never sent on, reads or writes; reads (idempotent) on any UNAVAILABLE.
  assert.equal(safeToRetry(failure(status.FAILED_PRECONDITION, 'cas', 'CAS_MISMATCH'), true), false);
  assert.equal(safeToRetry(failure(status.UNAVAILABLE, 'leadership moved', 'NOT_LEADER'), true), true);
});

test('a manager that let a write time out is not asked first by the next call: the write is not retried (it may have been applied), the next one goes elsewhere', {
  timeout: 90_000,
}, async () => {
  // A black hole: it takes connections and never answers (a paused manager looks the same).
  const held: Socket[] = [];
  const hole = createServer((socket) => held.push(socket));
  await new Promise<void>((resolve) => hole.listen(0, '127.0.0.1', resolve));
  const cluster = await InProcessCluster.start(3);
  try {
    await cluster.servesReads(0);
    const read = (name: string) => readFileSync(join(cluster.adminDir, name), 'utf8');
    const pem = { caPem: read('ca.crt'), certPem: read('admin.crt'), keyPem: read('admin.key') };
    const holeAddress = `127.0.0.1:${(hole.address() as AddressInfo).port}`;
    const client = new CofferClient({ ...pem, addresses: [holeAddress, ...cluster.addresses], deadlineMs: 1_000 });
    try {
      await assert.rejects(
        client.put('app/key', Buffer.from('v1')),
        (error: unknown) => error instanceof ClientError && error.code === status.DEADLINE_EXCEEDED,
        'the write that timed out is not sent again elsewhere',
      );
      const reply = await client.put('app/key', Buffer.from('v2'));
      assert.equal(reply.version, 1, 'the next write went to a manager that answers (and the first never applied)');
    } finally {
      client.close();
    }
  } finally {
    await cluster.stop();
    for (const socket of held) socket.destroy();
    hole.close();
  }
});
