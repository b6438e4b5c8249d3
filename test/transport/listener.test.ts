import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import { DEFAULT_CONNECTION_LIMITS } from '../../src/transport/connection-guard.ts';
import { listenGuarded, splitListenAddress, type GuardedListener } from '../../src/transport/listener.ts';
import { services } from '../../src/transport/proto.ts';
import {
  MANAGER_CHANNEL_OPTIONS,
  RenewableServerCredentials,
  managerChannelCredentials,
} from '../../src/transport/tls.ts';
import { createLogger } from '../../src/util/logger.ts';

const CLUSTER_ID = 'listener-cluster';
const ca = createCa(CLUSTER_ID, Date.now());
const managerLeaf = issueCertificate(ca, { id: '1', role: 'manager', clusterId: CLUSTER_ID, nowMs: Date.now() });
const clientLeaf = issueCertificate(ca, { id: 'admin', role: 'client', clusterId: CLUSTER_ID, nowMs: Date.now() });

/** A gRPC server with one method that answers, served through listenGuarded on `address`. */
async function serve(address: string): Promise<{ server: grpc.Server; listener: GuardedListener }> {
  const server = new grpc.Server();
  server.addService(services().Peer.service, {
    propose: (_call: unknown, callback: grpc.sendUnaryData<object>) => callback(null, { result: Buffer.from('ok') }),
    raft: () => {},
  });
  const credentials = new RenewableServerCredentials({
    caPem: ca.certPem,
    certPem: managerLeaf.certPem,
    keyPem: managerLeaf.keyPem,
  });
  try {
    const listener = await listenGuarded({
      server,
      credentials: credentials.credentials,
      address,
      limits: DEFAULT_CONNECTION_LIMITS,
      log: createLogger({ level: 'silent' }),
    });
    return { server, listener };
  } catch (error) {
    server.forceShutdown();
    throw error;
  }
}

/** One call with a client certificate; the channel is closed after. */
async function propose(target: string): Promise<string> {
  const client = new (services().Peer.Client)(
    target,
    managerChannelCredentials(
      { caPem: ca.certPem, certPem: clientLeaf.certPem, keyPem: clientLeaf.keyPem },
      { clusterId: CLUSTER_ID },
    ),
    MANAGER_CHANNEL_OPTIONS,
  );
  try {
    return await new Promise<string>((resolve, reject) =>
      (
        client as unknown as {
          propose(
            r: object,
            o: grpc.CallOptions,
            cb: (e: grpc.ServiceError | null, r?: { result: Buffer }) => void,
          ): void;
        }
      ).propose({}, { deadline: Date.now() + 5000 }, (error, response) =>
        error === null ? resolve(response!.result.toString()) : reject(error),
      ),
    );
  } finally {
    client.close();
  }
}

test('the guarded listener serves IPv4, IPv6, a dual-stack IPv6 socket reached over IPv4, and a host name, on the port the system chose, and sees who is authenticated on each', {
  timeout: 60_000,
}, async () => {
  for (const [address, target] of [
    ['127.0.0.1:0', '127.0.0.1'],
    ['[::1]:0', '[::1]'],
    ['[::]:0', '127.0.0.1'],
    ['localhost:0', 'localhost'],
  ] as const) {
    const { server, listener } = await serve(address);
    try {
      assert.ok(listener.port > 0, `${address}: a port was chosen`);
      assert.equal(await propose(`${target}:${listener.port}`), 'ok', `${address}: a call through ${target}`);
      // The call's connection was found from the call (the addresses match on every family).
      assert.equal(listener.stats.authenticated, 1, `${address}: the connection was marked authenticated`);
    } finally {
      await listener.close();
      server.forceShutdown();
    }
  }
});

test('a listen address in use fails the start with the reason', { timeout: 30_000 }, async () => {
  const taken = createServer();
  await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
  const port = (taken.address() as { port: number }).port;
  try {
    await assert.rejects(serve(`127.0.0.1:${port}`), /cannot listen on 127\.0\.0\.1:\d+: 127\.0\.0\.1: .*EADDRINUSE/);
  } finally {
    await new Promise((resolve) => taken.close(resolve));
  }
});

test('listen addresses are host:port, IPv6 in brackets, port 0 allowed', () => {
  assert.deepEqual(splitListenAddress('0.0.0.0:7400'), { host: '0.0.0.0', port: 7400 });
  assert.deepEqual(splitListenAddress('[::]:0'), { host: '::', port: 0 });
  assert.deepEqual(splitListenAddress('m1:7400'), { host: 'm1', port: 7400 });
  for (const bad of ['7400', '::1:7400', 'host:', 'host:70000', '[::1]'])
    assert.throws(() => splitListenAddress(bad), /is not host:port/, bad);
});
