import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { createServer, type Socket } from 'node:net';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import type { Message } from '../../src/raft/types.ts';
import { PeerTransport, type PeerTransportOptions } from '../../src/transport/peer-transport.ts';
import { services } from '../../src/transport/proto.ts';
import { RenewableServerCredentials, type TlsMaterial } from '../../src/transport/tls.ts';
import { createLogger } from '../../src/util/logger.ts';
import { freePort } from '../processes/processes.ts';

const clusterId = 'recovery';
const ca = createCa(clusterId, Date.now());
const material = (id: number): TlsMaterial => {
  const leaf = issueCertificate(ca, { id: String(id), role: 'manager', clusterId, nowMs: Date.now() });
  return { caPem: ca.certPem, certPem: leaf.certPem, keyPem: leaf.keyPem };
};
const logger = createLogger({ level: 'silent' });

/** Manager `selfId`'s transport: admits every manager of the CA, ignores what a test does not ask about. */
const transport = (selfId: number, options: Partial<PeerTransportOptions>): PeerTransport =>
  new PeerTransport({
    selfId,
    clusterId,
    tls: () => material(selfId),
    addressOf: () => undefined,
    onMessage: () => undefined,
    onUnreachable: () => undefined,
    onSnapshotSent: () => undefined,
    admits: () => null,
    logger,
    ...options,
  });

/** A Peer server of manager 2 at `port` whose Raft streams go to `raft`. */
async function peerServer(port: number, raft: PeerTransport['handleRaftStream']): Promise<grpc.Server> {
  const server = new grpc.Server();
  server.addService(services().Peer.service, {
    raft,
    propose: (_c: unknown, cb: grpc.sendUnaryData<object>) => cb({ code: grpc.status.UNIMPLEMENTED }),
  });
  await new Promise<number>((resolve, reject) =>
    server.bindAsync(`127.0.0.1:${port}`, new RenewableServerCredentials(material(2)).credentials, (e, p) =>
      e === null ? resolve(p) : reject(e),
    ),
  );
  return server;
}

test('a link whose peer accepted TCP and then went silent recovers once a real peer answers at that address', {
  timeout: 60_000,
}, async () => {
  const port = await freePort();
  // 1. A peer that accepts connections and never says a word (a hung process, a black hole).
  const sockets: Socket[] = [];
  const silent = createServer((socket) => sockets.push(socket));
  await new Promise<void>((resolve) => silent.listen(port, '127.0.0.1', resolve));
  const sender = transport(1, {
    addressOf: () => `127.0.0.1:${port}`,
    onMessage: () => assert.fail('the sender receives nothing'),
  });
  const big = (n: number): Message => ({
    type: 'append',
    from: 1,
    to: 2,
    term: 1,
    prevIndex: n,
    prevTerm: 1,
    commit: 0,
    entries: [{ kind: 'normal', term: 1, index: n + 1, data: Buffer.alloc(256 * 1024) }],
  });
  for (let n = 0; n < 400; n++) sender.send([big(n)]);
  await new Promise((resolve) => setTimeout(resolve, 3000));
  for (const socket of sockets) socket.destroy();
  await new Promise((resolve) => silent.close(resolve));

  // 2. The real peer comes up at the same address.
  const received: Message[] = [];
  const receiver = transport(2, { onMessage: (message) => received.push(message) });
  const server = await peerServer(port, receiver.handleRaftStream);
  try {
    const deadline = Date.now() + 20_000;
    while (!received.some((m) => m.type === 'heartbeat')) {
      assert.ok(
        Date.now() < deadline,
        `no message got through after the peer came back (${JSON.stringify(sender.stats)})`,
      );
      sender.send([{ type: 'heartbeat', from: 1, to: 2, term: 1, commit: 0, readSeq: 0 }]);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  } finally {
    sender.close();
    receiver.close();
    server.forceShutdown();
  }
});

test('a stream the peer never accepts is given up and dialled again on a new connection, where the messages get through', {
  timeout: 60_000,
}, async () => {
  const port = await freePort();
  const received: Message[] = [];
  const receiver = transport(2, { onMessage: (message) => received.push(message) });
  // The first stream reaches a handler that neither accepts nor reads it: the connection is up and
  // answers pings, the call never fails (how a follower's stream to its leader was lost in a chaos
  // run). Later streams reach the real handler.
  const held: grpc.sendUnaryData<object>[] = [];
  let streams = 0;
  const server = await peerServer(port, (call, callback) => {
    streams++;
    if (streams === 1) held.push(callback);
    else receiver.handleRaftStream(call, callback);
  });
  const unreachable: number[] = [];
  const sender = transport(1, {
    addressOf: () => `127.0.0.1:${port}`,
    onMessage: () => assert.fail('the sender receives nothing'),
    onUnreachable: (peer) => unreachable.push(peer),
    streamAcceptTimeoutMs: 1000,
  });
  try {
    const deadline = Date.now() + 15_000;
    let sent = 0;
    while (!received.some((m) => m.type === 'heartbeat')) {
      assert.ok(
        Date.now() < deadline,
        `no message got through in 15 s: ${streams} stream(s) reached the peer (${JSON.stringify(sender.stats)})`,
      );
      sender.send([{ type: 'heartbeat', from: 1, to: 2, term: 1, commit: sent++, readSeq: 0 }]);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.ok(streams >= 2, 'the unaccepted stream was replaced by a new one');
    assert.deepEqual(unreachable.slice(0, 1), [2], 'the core was told the peer was unreachable meanwhile');
    assert.ok(sender.stats.reconnects >= 1);
  } finally {
    sender.close();
    receiver.close();
    for (const callback of held) callback(null, {});
    server.forceShutdown();
  }
});
