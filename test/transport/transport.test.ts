import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import { services } from '../../src/transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../../src/transport/tls.ts';
import { encodeMessages } from '../../src/transport/wire.ts';
import { PeerTransport } from '../../src/transport/peer-transport.ts';
import type { TlsMaterial } from '../../src/transport/tls.ts';
import type { NodeId } from '../../src/raft/types.ts';
import { createLogger } from '../../src/util/logger.ts';
import { eventually } from '../processes/processes.ts';
import { GrpcCluster } from './grpc-cluster.ts';

test('three managers over mutual-TLS gRPC elect a leader, replicate, fail over, and a far-behind manager catches up by snapshot', {
  timeout: 90_000,
}, async () => {
  const cluster = new GrpcCluster([1, 2, 3]);
  try {
    await cluster.init();
    for (const id of cluster.ids) await cluster.start(id);
    for (let k = 0; k < 20; k++) await cluster.put(`k${k}`, `v${k}`);
    await cluster.converged();
    for (const member of cluster.members.values()) assert.equal(member.machine.map.get('k19'), 'v19');
    for (const member of cluster.members.values())
      assert.ok(
        member.transport.stats.windowsWidened >= 1,
        "each manager widens the HTTP/2 receive windows of its peers' streams (grpc-js still shows a call's session)",
      );

    const old = await cluster.leader();
    await cluster.stop(old.id);
    const next = await cluster.leader();
    assert.notEqual(next.id, old.id);
    // Far behind: enough writes for the others to snapshot and drop the entries it lacks.
    for (let k = 0; k < 300; k++) await cluster.put(`later${k}`, `w${k}`);
    const restarted = await cluster.start(old.id, old.tls);
    await cluster.converged(30_000);
    assert.equal(restarted.machine.map.get('later299'), 'w299');
    assert.equal(restarted.machine.map.get('k0'), 'v0');
    assert.ok(
      next.transport.stats.framesSent > 0 && next.transport.stats.messagesSent > next.transport.stats.framesSent,
      'messages travel in batches',
    );
    const snapshotsSent = [...cluster.members.values()].reduce((n, m) => n + m.transport.stats.snapshotsSent, 0);
    assert.ok(snapshotsSent >= 1, 'the restarted manager was sent a snapshot in chunks');
  } finally {
    await cluster.destroy();
  }
});

/** Opens a Raft stream to manager `port` with these credentials and writes one heartbeat; resolves with the status it ends with. */
function raftStreamStatus(port: number, credentials: grpc.ChannelCredentials): Promise<grpc.status> {
  const { Peer } = services();
  const client = new Peer.Client(`127.0.0.1:${port}`, credentials, MANAGER_CHANNEL_OPTIONS);
  return new Promise((resolve) => {
    const call = (
      client as unknown as { raft(cb: (error: grpc.ServiceError | null) => void): grpc.ClientWritableStream<object> }
    ).raft((error) => {
      client.close();
      resolve(error === null ? grpc.status.OK : error.code);
    });
    call.write({ messages: encodeMessages([{ type: 'heartbeat', from: 9, to: 1, term: 1, commit: 0, readSeq: 0 }]) });
    call.end();
  });
}

test("a Raft stream is refused without a certificate, with another CA's, an expired one, a client's, or a removed manager's", {
  timeout: 60_000,
}, async () => {
  const cluster = new GrpcCluster([1]);
  try {
    await cluster.init();
    const member = await cluster.start(1);
    const port = member.port;
    const now = Date.now();
    const expect = { clusterId: cluster.clusterId };
    const asManager = (id: string, options: { notAfterMs?: number } = {}) => {
      const leaf = issueCertificate(cluster.ca, {
        id,
        role: 'manager',
        clusterId: cluster.clusterId,
        nowMs: now,
        ...options,
      });
      return managerChannelCredentials(
        { caPem: cluster.ca.certPem, certPem: leaf.certPem, keyPem: leaf.keyPem },
        expect,
      );
    };
    assert.equal(
      await raftStreamStatus(
        port,
        managerChannelCredentials({ caPem: cluster.ca.certPem, certPem: null, keyPem: null }, expect),
      ),
      grpc.status.UNAUTHENTICATED,
      'no client certificate',
    );
    const otherCa = createCa('other', now);
    const stranger = issueCertificate(otherCa, { id: '9', role: 'manager', clusterId: cluster.clusterId, nowMs: now });
    assert.equal(
      await raftStreamStatus(
        port,
        managerChannelCredentials(
          { caPem: cluster.ca.certPem, certPem: stranger.certPem, keyPem: stranger.keyPem },
          expect,
        ),
      ),
      grpc.status.UNAUTHENTICATED,
      'another CA',
    );
    assert.equal(
      await raftStreamStatus(port, asManager('9', { notAfterMs: now - 60_000 })),
      grpc.status.UNAUTHENTICATED,
      'expired',
    );
    const client = issueCertificate(cluster.ca, {
      id: 'admin',
      role: 'client',
      clusterId: cluster.clusterId,
      nowMs: now,
    });
    assert.equal(
      await raftStreamStatus(
        port,
        managerChannelCredentials(
          { caPem: cluster.ca.certPem, certPem: client.certPem, keyPem: client.keyPem },
          expect,
        ),
      ),
      grpc.status.PERMISSION_DENIED,
      'a client certificate on a peer-only RPC',
    );
    cluster.removed.add(9);
    assert.equal(await raftStreamStatus(port, asManager('9')), grpc.status.PERMISSION_DENIED, 'a removed manager');
    cluster.removed.delete(9);
    // The control: the same request with a valid manager certificate is accepted, and the
    // heartbeat from 9 (claiming to be 9 on 9's stream) reached the manager.
    assert.equal(await raftStreamStatus(port, asManager('9')), grpc.status.OK);
    assert.equal(member.transport.stats.refusedStreams, 5);
    assert.equal(
      member.transport.stats.windowsWidened,
      1,
      'only the accepted stream widened its windows, none that was refused',
    );
    assert.equal(member.transport.stats.messagesReceived, 1);
  } finally {
    await cluster.destroy();
  }
});

test('a message that claims another sender than the certificate, or does not decode, is dropped and counted', {
  timeout: 60_000,
}, async () => {
  const cluster = new GrpcCluster([1]);
  try {
    await cluster.init();
    const member = await cluster.start(1);
    const leaf = issueCertificate(cluster.ca, {
      id: '7',
      role: 'manager',
      clusterId: cluster.clusterId,
      nowMs: Date.now(),
    });
    const { Peer } = services();
    const client = new Peer.Client(
      `127.0.0.1:${member.port}`,
      managerChannelCredentials(
        { caPem: cluster.ca.certPem, certPem: leaf.certPem, keyPem: leaf.keyPem },
        { clusterId: cluster.clusterId },
      ),
      MANAGER_CHANNEL_OPTIONS,
    );
    await new Promise<void>((resolve) => {
      const call = (client as unknown as { raft(cb: () => void): grpc.ClientWritableStream<object> }).raft(() =>
        resolve(),
      );
      call.write({ messages: encodeMessages([{ type: 'heartbeat', from: 8, to: 1, term: 1, commit: 0, readSeq: 0 }]) }); // from 8 on 7's stream
      call.write({ messages: Buffer.from([0xc1, 0x00]) }); // not msgpack
      call.write({
        messages: encodeMessages([
          {
            type: 'append',
            from: 7,
            to: 1,
            term: 1,
            prevIndex: 0,
            prevTerm: 0,
            commit: 0,
            entries: [{ kind: 'normal', term: 1, index: 5, data: Buffer.alloc(1) }],
          },
        ]),
      }); // not after prevIndex
      call.end();
    });
    client.close();
    assert.equal(member.transport.stats.malformedDropped, 3);
    assert.equal(member.transport.stats.messagesReceived, 0);
    assert.equal(
      member.manager.status().raft!.term,
      member.manager.status().raft!.term,
      'the manager is still running',
    );
  } finally {
    await cluster.destroy();
  }
});

test('a manager still starting (no TLS material yet) that sends to a peer drops the messages and retries, not crashes; once its material is loaded they reach the peer', {
  timeout: 60_000,
}, async () => {
  const cluster = new GrpcCluster([1]);
  let sender: PeerTransport | null = null;
  try {
    await cluster.init();
    const member = await cluster.start(1);
    let tls: TlsMaterial | null = null;
    const unreachable: NodeId[] = [];
    sender = new PeerTransport({
      selfId: 2,
      clusterId: cluster.clusterId,
      tls: () => tls,
      addressOf: (peer) => (peer === 1 ? `127.0.0.1:${member.port}` : undefined),
      onMessage: () => {},
      onUnreachable: (peer) => unreachable.push(peer),
      onSnapshotSent: () => {},
      admits: () => null,
      logger: createLogger({ level: 'silent' }),
    });
    const heartbeat = { type: 'heartbeat', from: 2, to: 1, term: 1, commit: 0, readSeq: 0 } as const;
    sender.send([heartbeat]);
    assert.equal(sender.stats.messagesDropped, 1, 'dropped (Raft sends again), not thrown');
    assert.deepEqual(unreachable, [1], 'the core hears the peer is unreachable for now');
    assert.equal(member.transport.stats.messagesReceived, 0);
    tls = cluster.material(2);
    await eventually('the heartbeat sent once the material is loaded', 20_000, async () => {
      sender!.send([heartbeat]);
      await new Promise((resolve) => setTimeout(resolve, 100));
      return member.transport.stats.messagesReceived > 0 ? true : undefined;
    });
  } finally {
    sender?.close();
    await cluster.destroy();
  }
});
