import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { CofferClient } from '../../src/client/client.ts';
import { KeyStore } from '../../src/crypto/key-store.ts';
import { DataDir } from '../../src/manager/data-dir.ts';
import { readKeyFile } from '../../src/crypto/root-key.ts';
import { services } from '../../src/transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../../src/transport/tls.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdminClient, Processes, coffer, eventually, freePort, type StatusReply } from './processes.ts';

const SNAPSHOT_FLAGS = ['--snapshot-every', '100', '--snapshot-tail', '10'];

test('three manager processes made by coffer init and coffer join elect, replicate, survive a kill -9 of the leader, and catch up (also by snapshot)', {
  timeout: 240_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-three-'));
  const procs = new Processes(root);
  let admin: AdminClient | null = null;
  try {
    const ports = [await freePort(), await freePort(), await freePort()];
    const address = (k: number) => `127.0.0.1:${ports[k]}`;
    const data = (k: number) => join(root, `m${k + 1}`);
    const tokenFile = join(root, 'join-token');
    const init = await coffer([
      'init',
      '--data',
      data(0),
      '--listen',
      address(0),
      '--token-file',
      tokenFile,
      '--output',
      'json',
    ]);
    assert.equal(init.code, 0, init.stderr);
    const { clusterId, joinToken, adminDir } = JSON.parse(init.stdout) as {
      clusterId: string;
      joinToken: string;
      adminDir: string;
    };
    assert.match(joinToken, /^CFRTKN-1-[0-9a-f]{64}-/);
    assert.equal(readFileSync(tokenFile, 'utf8').trim(), joinToken);
    assert.equal(statSync(tokenFile).mode & 0o777, 0o600, 'the token file is for its owner only');
    /** A token in a file of its own, as managers are given it (never on a command line). */
    const inFile = (token: string, name: string): string => {
      const path = join(root, name);
      writeFileSync(path, `${token}\n`, { mode: 0o600 });
      return path;
    };
    admin = new AdminClient(adminDir, clusterId);
    const client = admin;

    procs.start('m1', ['server', '--data', data(0), ...SNAPSHOT_FLAGS]);
    await eventually('manager 1 to lead with a keyring', 30_000, async () => {
      const s = await client.status(address(0));
      return s.role === 'leader' && s.keyringTerm > 0 ? s : undefined;
    });
    // The second joins through the leader, the third through a follower, which sends it on to the leader.
    procs.start('m2', [
      'join',
      '--data',
      data(1),
      '--listen',
      address(1),
      '--join',
      address(0),
      '--token-file',
      tokenFile,
      ...SNAPSHOT_FLAGS,
    ]);
    await eventually('manager 2 to become a voter', 60_000, async () =>
      (await client.status(address(0))).voters.length === 2 ? true : undefined,
    );
    procs.start('m3', [
      'join',
      '--data',
      data(2),
      '--listen',
      address(2),
      '--join',
      address(1),
      '--token-file',
      tokenFile,
      ...SNAPSHOT_FLAGS,
    ]);
    await eventually('three voters', 60_000, async () => {
      const s = await client.status(address(0));
      return s.voters.length === 3 && s.learners.length === 0 ? true : undefined;
    });

    // Writes through a follower are forwarded to the leader; every manager answers linearizable reads.
    for (let k = 0; k < 10; k++)
      await client.call(address(1), 'Secrets', 'put', { name: `app/key-${k}`, value: Buffer.from(`value-${k}`) });
    for (let k = 0; k < 3; k++) {
      const got = await client.call<{ value: Buffer; version: number }>(address(k), 'Secrets', 'get', {
        name: 'app/key-9',
      });
      assert.equal(got.value.toString(), 'value-9', `manager at ${address(k)}`);
    }

    // kill -9 the leader: another one takes over and accepts writes; the old one catches up on restart.
    const statuses = await Promise.all([0, 1, 2].map((k) => client.status(address(k))));
    const leaderAt = statuses.findIndex((s) => s.role === 'leader');
    assert.ok(leaderAt >= 0);
    await procs.kill(`m${leaderAt + 1}`);
    const others = [0, 1, 2].filter((k) => k !== leaderAt);
    const next = await eventually('a new leader', 30_000, async () => {
      for (const k of others) {
        const s = await client.status(address(k)).catch(() => null);
        if (s !== null && s.role === 'leader' && s.term > statuses[leaderAt]!.term) return k;
      }
      return undefined;
    });
    await eventually('a write after failover', 20_000, async () =>
      client.call(address(next), 'Secrets', 'put', { name: 'after/kill', value: Buffer.from('still here') }),
    );
    procs.start(`m${leaderAt + 1}`, ['server', '--data', data(leaderAt), ...SNAPSHOT_FLAGS]);
    const caughtUp = await eventually('the old leader to catch up', 60_000, async () =>
      client.call<{ value: Buffer }>(address(leaderAt), 'Secrets', 'get', { name: 'after/kill' }),
    );
    assert.equal(caughtUp.value.toString(), 'still here');

    // Far behind: a follower down while the others write past a snapshot and drop their logs.
    const leaderNow = await eventually('a leader', 30_000, async () => {
      for (const k of [0, 1, 2]) if ((await client.status(address(k)).catch(() => null))?.role === 'leader') return k;
      return undefined;
    });
    const follower = [0, 1, 2].find((k) => k !== leaderNow)!;
    await procs.kill(`m${follower + 1}`);
    const writers = Array.from({ length: 8 }, async (_, w) => {
      for (let k = w; k < 240; k += 8)
        await client.call(address(leaderNow), 'Secrets', 'put', { name: `bulk/${k}`, value: Buffer.from(`b${k}`) });
    });
    await Promise.all(writers);
    const before = await client.status(address(leaderNow));
    assert.ok(before.snapshotIndex > 0, 'the leader compacted its log');
    procs.start(`m${follower + 1}`, ['server', '--data', data(follower), ...SNAPSHOT_FLAGS]);
    const bulk = await eventually('the far-behind follower to catch up', 60_000, async () =>
      client.call<{ value: Buffer }>(address(follower), 'Secrets', 'get', { name: 'bulk/239' }),
    );
    assert.equal(bulk.value.toString(), 'b239');
    const sent = (
      await Promise.all(
        [0, 1, 2].map((k) => client.status(address(k)).catch(() => ({ snapshotsSent: 0 }) as StatusReply)),
      )
    ).reduce((n, s) => n + s.snapshotsSent, 0);
    assert.ok(sent >= 1, 'it caught up through a snapshot sent in chunks');

    // Token rotation: the old token stops working at once; the new one is what joins now.
    const rotated = await client.call<{ token: string }>(address(leaderNow), 'Cluster', 'rotateJoinToken', {});
    assert.notEqual(rotated.token, joinToken);
    const stale = await coffer([
      'join',
      '--data',
      join(root, 'm4'),
      '--listen',
      `127.0.0.1:${await freePort()}`,
      '--join',
      address(leaderNow),
      '--token-file',
      inFile(joinToken, 'stale-token'),
    ]);
    assert.notEqual(stale.code, 0);
    assert.match(stale.stderr, /join token is not valid/);
    // A token pinning another CA is refused before anything is sent (a man in the middle gets nothing).
    const foreign = rotated.token.replace(/^CFRTKN-1-[0-9a-f]{64}/, `CFRTKN-1-${'ab'.repeat(32)}`);
    const mitm = await coffer([
      'join',
      '--data',
      join(root, 'm5'),
      '--listen',
      `127.0.0.1:${await freePort()}`,
      '--join',
      address(leaderNow),
      '--token-file',
      inFile(foreign, 'foreign-token'),
    ]);
    assert.notEqual(mitm.code, 0);
    assert.match(mitm.stderr, /does not match the join token/);

    // A removed manager is refused by the others, also when it comes back with its old certificate.
    const removed = [0, 1, 2].find((k) => k !== leaderNow)!;
    const removedId = (await client.status(address(removed))).nodeId;
    await client.call(address(leaderNow), 'Cluster', 'removeMember', { nodeId: removedId });
    await procs.kill(`m${removed + 1}`);
    await client.call(address(leaderNow), 'Secrets', 'put', { name: 'after/removal', value: Buffer.from('x') });
    procs.start(`m${removed + 1}`, ['server', '--data', data(removed), '--wait-when-removed']);
    // Back up, it learns from the members that refuse its streams that it was removed, and then
    // serves nothing, not even stale reads of what it held: every request is refused, saying why.
    // (Asked to wait when removed; else it exits: test/processes/membership.test.ts.)
    const removedMessage = /manager \d+ was removed from the cluster; ask another manager/;
    await eventually('the removed manager to be up and refuse requests as removed', 30_000, async () => {
      try {
        await client.status(address(removed));
        return undefined;
      } catch (error) {
        const e = error as grpc.ServiceError;
        return e.code === grpc.status.UNAVAILABLE && removedMessage.test(e.details) ? true : undefined;
      }
    });
    await assert.rejects(
      client.call(address(removed), 'Secrets', 'get', { name: 'after/removal', stale: true }),
      (error: grpc.ServiceError) => error.code === grpc.status.UNAVAILABLE && removedMessage.test(error.details),
      'the removed manager serves no read, stale or not',
    );
    assert.deepEqual((await client.status(address(leaderNow))).voters.includes(removedId), false);
    // A client that lists the removed manager first still writes, once, through a member (it
    // knows the members, or takes the removed one's MANAGER_REMOVED as never proposed).
    const failover = new CofferClient({
      caPem: readFileSync(join(adminDir, 'ca.crt'), 'utf8'),
      certPem: readFileSync(join(adminDir, 'admin.crt'), 'utf8'),
      keyPem: readFileSync(join(adminDir, 'admin.key'), 'utf8'),
      addresses: [address(removed), address(leaderNow)],
      deadlineMs: 5_000,
    });
    try {
      assert.equal((await failover.put('after/removal/failover', Buffer.from('once'))).version, 1);
      assert.equal((await failover.get('after/removal/failover')).value.toString(), 'once');
    } finally {
      failover.close();
    }
    const health = await coffer(['health', '--addr', address(removed)], '', {
      COFFER_CA: join(adminDir, 'ca.crt'),
      COFFER_CERT: join(adminDir, 'admin.crt'),
      COFFER_KEY: join(adminDir, 'admin.key'),
    });
    assert.equal(health.code, 1, `${health.stdout}${health.stderr}`);
    assert.match(health.stderr, /is not healthy: NOT_SERVING/, 'a removed manager that waits is not healthy');
    // Its own certificate and key, opened from its data directory, no longer get a Raft stream.
    const store = await KeyStore.read(new DataDir(data(removed)).keyStore);
    const credentials = managerChannelCredentials(
      {
        caPem: readFileSync(join(data(removed), 'tls', 'ca.crt'), 'utf8'),
        certPem: readFileSync(join(data(removed), 'tls', 'node.crt'), 'utf8'),
        keyPem: store
          .openSecrets(readKeyFile(`${data(removed)}.key`))
          .get('tls-key')!
          .toString(),
      },
      { clusterId },
    );
    const { Peer } = services();
    const peer = new Peer.Client(address(leaderNow), credentials, MANAGER_CHANNEL_OPTIONS);
    const code = await new Promise<grpc.status>((resolve) => {
      const call = (
        peer as unknown as { raft(cb: (e: grpc.ServiceError | null) => void): grpc.ClientWritableStream<object> }
      ).raft((e) => resolve(e === null ? grpc.status.OK : e.code));
      call.end();
    });
    peer.close();
    assert.equal(code, grpc.status.PERMISSION_DENIED);
    await eventually("the refusal in the leader's log", 10_000, async () =>
      /"event":"peer-stream-refused".*was removed from the cluster/.test(procs.log(`m${leaderNow + 1}`))
        ? true
        : undefined,
    );
  } finally {
    admin?.close();
    await procs.killAll();
    rmSync(root, { recursive: true, force: true });
  }
});
