import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import * as tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  createCa,
  formatJoinToken,
  issueCertificate,
  newJoinToken,
  type KeyAndCertificate,
} from '../../src/crypto/pki.ts';
import { joinCluster } from '../../src/server/bootstrap.ts';
import { services } from '../../src/transport/proto.ts';
import {
  MANAGER_CHANNEL_OPTIONS,
  RenewableServerCredentials,
  managerChannelCredentials,
  type TlsMaterial,
} from '../../src/transport/tls.ts';
import { HANDSHAKE_TIMEOUT_MS, handshake } from './tls-handshake.ts';

const CLUSTER_ID = 'tls-policy-cluster';

function managerMaterial(ca: KeyAndCertificate): TlsMaterial {
  const leaf = issueCertificate(ca, {
    id: '1',
    role: 'manager',
    clusterId: CLUSTER_ID,
    nowMs: Date.now(),
    hosts: ['127.0.0.1'],
  });
  return { caPem: ca.certPem, certPem: leaf.certPem, keyPem: leaf.keyPem };
}

/** Only TLS 1.2 (so the suite list is the one that counts) and one suite. */
const tls12 = (ciphers: string): tls.ConnectionOptions => ({ minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers });

/** What a server must refuse and accept; checked again after a certificate renewal. */
async function checkServerPolicy(port: number, when: string): Promise<void> {
  // The manager's key is ECDSA (P-256): the suites it could do with it if it let them.
  for (const weak of [
    'ECDHE-ECDSA-AES128-SHA',
    'ECDHE-ECDSA-AES256-SHA',
    'ECDHE-ECDSA-AES128-SHA256',
    'ECDHE-ECDSA-AES256-SHA384',
    'AES128-GCM-SHA256',
    'DHE-RSA-AES128-GCM-SHA256',
  ]) {
    const result = await handshake(port, tls12(weak));
    assert.equal(result.ok, false, `${when}: TLS 1.2 with ${weak} must be refused, got ${JSON.stringify(result)}`);
  }
  for (const strong of [
    'ECDHE-ECDSA-AES128-GCM-SHA256',
    'ECDHE-ECDSA-AES256-GCM-SHA384',
    'ECDHE-ECDSA-CHACHA20-POLY1305',
  ]) {
    const result = await handshake(port, tls12(strong));
    assert.deepEqual(result, { ok: true, protocol: 'TLSv1.2', cipher: strong }, `${when}: TLS 1.2 with ${strong}`);
  }
  const byDefault = await handshake(port, {});
  assert.equal(
    byDefault.ok && byDefault.protocol,
    'TLSv1.3',
    `${when}: a default client negotiates TLS 1.3, got ${JSON.stringify(byDefault)}`,
  );
  // SECLEVEL=0 so that this client can offer TLS 1.1 at all (OpenSSL 3 refuses it by default).
  const old = await handshake(port, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT@SECLEVEL=0' });
  assert.equal(old.ok, false, `${when}: TLS 1.1 must be refused, got ${JSON.stringify(old)}`);
}

test("a manager's TLS offers 1.3, and in 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305, before and after a certificate renewal", {
  timeout: 60_000,
}, async () => {
  const ca = createCa(CLUSTER_ID, Date.now());
  const credentials = new RenewableServerCredentials(managerMaterial(ca));
  const server = new grpc.Server();
  try {
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync('127.0.0.1:0', credentials.credentials, (error, bound) =>
        error === null ? resolve(bound) : reject(error),
      ),
    );
    await checkServerPolicy(port, 'at start');
    // Renewal replaces the server's secure context (Node's setSecureContext forgets any option it
    // is not given again): the policy must survive it.
    credentials.update(managerMaterial(ca));
    await new Promise((resolve) => setImmediate(resolve));
    await checkServerPolicy(port, 'after renewal');
  } finally {
    server.forceShutdown();
  }
});

/**
 * A node:tls server with this policy that counts finished handshakes and failed ones; Coffer's own
 * channel dials it (nothing speaks gRPC there: only the handshake matters).
 */
async function clientHandshakeAgainst(
  ca: KeyAndCertificate,
  serverOptions: tls.TlsOptions,
  dial: (address: string) => Promise<void>,
): Promise<{ secured: number; failed: string[] }> {
  const material = managerMaterial(ca);
  const seen = { secured: 0, failed: [] as string[] };
  const server = tls.createServer({
    key: material.keyPem,
    cert: material.certPem,
    ALPNProtocols: ['h2'],
    ...serverOptions,
  });
  const sockets = new Set<tls.TLSSocket>();
  server.on('secureConnection', (socket) => {
    seen.secured++;
    sockets.add(socket);
    socket.on('error', () => {});
    socket.destroy();
  });
  server.on('tlsClientError', (error) => seen.failed.push(error.message));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    await dial(`127.0.0.1:${(server.address() as AddressInfo).port}`);
  } finally {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
  return seen;
}

/** A manager channel (peers, clients, health) making one call. */
function dialAsClient(ca: KeyAndCertificate): (address: string) => Promise<void> {
  return async (address) => {
    const client = new (services().Peer.Client)(
      address,
      managerChannelCredentials({ caPem: ca.certPem, certPem: null, keyPem: null }, { clusterId: CLUSTER_ID }),
      MANAGER_CHANNEL_OPTIONS,
    );
    try {
      await new Promise<void>((resolve) => {
        (client as unknown as { propose(r: object, o: grpc.CallOptions, cb: () => void): void }).propose(
          {},
          { deadline: Date.now() + HANDSHAKE_TIMEOUT_MS },
          () => resolve(),
        );
      });
    } finally {
      client.close();
    }
  };
}

/** `coffer join`'s first step (fetching the CA certificate without trusting it yet); it fails either way here. */
function dialAsJoiner(ca: KeyAndCertificate, dataDir: string): (address: string) => Promise<void> {
  return async (address) => {
    await assert.rejects(
      joinCluster({
        dataDir,
        listen: '127.0.0.1:1',
        join: address,
        token: formatJoinToken(newJoinToken(ca.certPem)),
        deadlineMs: HANDSHAKE_TIMEOUT_MS,
      }),
    );
  };
}

test("Coffer's own channels (manager and join) refuse a server that offers only a CBC suite in TLS 1.2, and finish the handshake with ECDHE-ECDSA-AES128-GCM-SHA256", {
  timeout: 60_000,
}, async () => {
  const ca = createCa(CLUSTER_ID, Date.now());
  const root = mkdtempSync(join(tmpdir(), 'coffer-tls-'));
  try {
    for (const [what, dial] of [
      ['manager channel', dialAsClient(ca)],
      ['join', dialAsJoiner(ca, join(root, 'joiner'))],
    ] as const) {
      const weak = await clientHandshakeAgainst(ca, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA' }, dial);
      assert.equal(weak.secured, 0, `${what}: no handshake finished with a CBC-SHA1 suite`);
      assert.ok(
        weak.failed.length > 0 && weak.failed.every((message) => /no shared cipher|NO_SHARED_CIPHER/i.test(message)),
        `${what}: the server saw no shared cipher: ${weak.failed.join('; ')}`,
      );
      const strong = await clientHandshakeAgainst(
        ca,
        { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256' },
        dial,
      );
      assert.ok(strong.secured > 0, `${what}: the control handshake finished (failures: ${strong.failed.join('; ')})`);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
