import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { newLeafKey, parseJoinToken } from '../../src/crypto/pki.ts';
import { initCluster, joinCluster } from '../../src/server/bootstrap.ts';
import {
  MANAGER_EXTRA_HOSTS_MAX,
  hostNameProblem,
  managerCertificateHosts,
  normalizeExtraHosts,
} from '../../src/server/manager-hosts.ts';
import { CofferNode } from '../../src/server/node.ts';
import { services } from '../../src/transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, policyChannelCredentials } from '../../src/transport/tls.ts';
import { createLogger } from '../../src/util/logger.ts';
import { AdminClient, eventually, freePort } from '../processes/processes.ts';

// Clients in other languages check a server's host name the standard way (gRPC core, OpenSSL,
// Go's crypto/tls): the name they dial must be in the certificate's subjectAltName. These tests
// dial as such a client does, with Node's own default check (tls.checkServerIdentity).

test('a certificate name is an IP address or a DNS name without a wildcard; at most 16 are asked for, kept lower-cased and once each', () => {
  for (const good of ['m1', 'coffer.example.com', 'my_service', 'a-b.c-d', '10.0.0.7', '::1', '2001:db8::5'])
    assert.equal(hostNameProblem(good), null, good);
  const bad: Array<[string, RegExp]> = [
    ['', /empty/],
    ['bad name', /not a DNS name/],
    ['*.coffer.example', /wildcard/],
    ['a..b', /not a DNS name/],
    ['coffer.example.', /not a DNS name/],
    ['-m1', /not a DNS name/],
    ['m1-', /not a DNS name/],
    ['1.2.3', /neither an IP address nor a DNS name/],
    ['fe80::1%eth0', /zone/],
    [`${'a'.repeat(64)}.example`, /not a DNS name/],
    [`${'a.'.repeat(127)}ab`, /longer than a DNS name may be \(253\)/],
    ['m1\n', /not a DNS name/],
  ];
  for (const [name, why] of bad) assert.match(hostNameProblem(name) ?? 'accepted', why, JSON.stringify(name));
  assert.deepEqual(normalizeExtraHosts(['Coffer.Example', 'coffer.example', '10.0.0.7']), [
    'coffer.example',
    '10.0.0.7',
  ]);
  const tooMany = Array.from({ length: MANAGER_EXTRA_HOSTS_MAX + 1 }, (_, k) => `m${k}.example`);
  assert.throws(
    () => normalizeExtraHosts(tooMany),
    /17 extra certificate names \(--san\): a manager may have at most 16/,
  );
  assert.throws(() => normalizeExtraHosts(['ok.example', '*.example']), /certificate name \(--san\): .*wildcard/);
});

test("a manager's certificate names its advertise host, then localhost and 127.0.0.1 whatever it advertises, then the extra names", () => {
  assert.deepEqual(managerCertificateHosts('127.0.0.1:7401', []), ['127.0.0.1', 'localhost']);
  assert.deepEqual(managerCertificateHosts('127.0.0.12:7400', []), ['127.0.0.12', 'localhost', '127.0.0.1']);
  assert.deepEqual(managerCertificateHosts('[::1]:7400', []), ['::1', 'localhost', '127.0.0.1']);
  assert.deepEqual(managerCertificateHosts('10.0.0.5:7400', []), ['10.0.0.5', 'localhost', '127.0.0.1']);
  assert.deepEqual(managerCertificateHosts('m1:7400', ['localhost', '127.0.0.1']), ['m1', 'localhost', '127.0.0.1']);
  assert.deepEqual(managerCertificateHosts('m1:7400', ['coffer.example']), [
    'm1',
    'localhost',
    '127.0.0.1',
    'coffer.example',
  ]);
});

/** The names (DNS and IP) in the certificate a manager serves right now, and its serial. */
function servedCertificate(port: number, caPem: string): Promise<{ names: string[]; serial: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect(
      { host: '127.0.0.1', port, ca: caPem, checkServerIdentity: () => undefined, ALPNProtocols: ['h2'] },
      () => {
        const cert = new X509Certificate(socket.getPeerCertificate().raw);
        socket.destroy();
        const names = (cert.subjectAltName ?? '').split(', ').map((entry) => entry.replace(/^(DNS|IP Address):/, ''));
        resolve({ names, serial: cert.serialNumber.toLowerCase() });
      },
    );
    socket.on('error', reject);
  });
}

/** A TLS handshake as a standard client makes it: trusting the CA, checking `name` against the certificate. */
function handshakeAs(port: number, caPem: string, name: string): Promise<'ok' | string> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, ca: caPem, servername: name, ALPNProtocols: ['h2'] }, () => {
      socket.destroy();
      resolve('ok');
    });
    socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

/** Join.JoinCluster called directly, as a joiner that skips the CLI's own checks would call it. */
function rawJoin(address: string, caPem: string, request: object): Promise<grpc.ServiceError | null> {
  const { Join } = services();
  const client = new Join.Client(
    address,
    policyChannelCredentials({ caPem, certPem: null, keyPem: null }, { checkServerIdentity: () => undefined }),
    MANAGER_CHANNEL_OPTIONS,
  );
  return new Promise((resolve) => {
    (
      client as unknown as {
        joinCluster(r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null) => void): void;
      }
    ).joinCluster(request, { deadline: Date.now() + 10_000 }, (error) => {
      client.close();
      resolve(error);
    });
  });
}

test('manager certificates carry the names asked for at init and join, keep them when renewed, and a standard client passes only for a listed name; the leader refuses bad names', {
  timeout: 120_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-names-'));
  const nodes: CofferNode[] = [];
  let admin: AdminClient | null = null;
  try {
    const [p1, p2] = [await freePort(), await freePort()];
    // 0.0002 days is about 17 s: renewed when a third of it is left, about 11 s after issue.
    const init = await initCluster({
      dataDir: join(root, 'm1'),
      listen: `127.0.0.1:${p1}`,
      extraHosts: ['Coffer.Example', '10.9.8.7'],
      managerCertValidityDays: 0.0002,
    });
    const logger = createLogger({ level: 'silent' });
    nodes.push(await CofferNode.start({ dataDir: join(root, 'm1'), logger, tickIntervalMs: 50 }));
    admin = new AdminClient(init.adminDir, init.clusterId);
    const client = admin;
    await eventually('a leader with a join token', 20_000, async () =>
      nodes[0]!.state.cluster.joinTokenHash !== null && (await client.status(`127.0.0.1:${p1}`)).role === 'leader'
        ? true
        : undefined,
    );
    const caPem = readFileSync(join(init.adminDir, 'ca.crt'), 'utf8');

    // The leader is the gateway: a joiner that skips the client's checks is refused there, with
    // the name and the reason, before anything is proposed or dialled.
    const token = parseJoinToken(init.joinToken);
    const asked = (extraHosts: string[]) =>
      rawJoin(`127.0.0.1:${p1}`, caPem, {
        tokenSecret: token.secret,
        address: `127.0.0.1:${p2}`,
        publicKeyPem: newLeafKey().publicPem,
        extraHosts,
      });
    const wildcard = await asked(['m2.coffer.example', '*.coffer.example']);
    assert.equal(wildcard?.code, grpc.status.INVALID_ARGUMENT);
    assert.match(wildcard.details, /"\*\.coffer\.example" is a wildcard: name each host instead/);
    const tooMany = await asked(Array.from({ length: 17 }, (_, k) => `m${k}.coffer.example`));
    assert.equal(tooMany?.code, grpc.status.INVALID_ARGUMENT);
    assert.match(tooMany.details, /a manager may have at most 16/);
    const control = await asked(['m2\u001b[31m.example']);
    assert.equal(control?.code, grpc.status.INVALID_ARGUMENT);
    assert.match(control.details, /"m2\\u001b\[31m\.example" is not a DNS name/, 'shown escaped');
    // The library refuses before it dials (and before it makes a key).
    await assert.rejects(
      joinCluster({
        dataDir: join(root, 'never'),
        listen: `127.0.0.1:${p2}`,
        join: `127.0.0.1:${p1}`,
        token: init.joinToken,
        extraHosts: ['bad name'],
      }),
      /certificate name \(--san\): "bad name" is not a DNS name/,
    );

    await joinCluster({
      dataDir: join(root, 'm2'),
      listen: `127.0.0.1:${p2}`,
      join: `127.0.0.1:${p1}`,
      token: init.joinToken,
      extraHosts: ['m2.coffer.example'],
    });
    nodes.push(await CofferNode.start({ dataDir: join(root, 'm2'), logger, tickIntervalMs: 50 }));
    await eventually('two voters', 30_000, async () =>
      (await client.status(`127.0.0.1:${p1}`)).voters.length === 2 ? true : undefined,
    );

    const first = [await servedCertificate(p1, caPem), await servedCertificate(p2, caPem)];
    assert.deepEqual(first[0]!.names, ['127.0.0.1', 'localhost', 'coffer.example', '10.9.8.7']);
    assert.deepEqual(first[1]!.names, ['127.0.0.1', 'localhost', 'm2.coffer.example'], 'signed by the leader as asked');

    // A standard client passes for every listed name, and fails for any other: for a name no
    // manager lists, and for a name another manager lists (each certificate vouches for its own).
    assert.equal(await handshakeAs(p1, caPem, 'coffer.example'), 'ok');
    assert.equal(await handshakeAs(p1, caPem, 'localhost'), 'ok');
    assert.equal(await handshakeAs(p2, caPem, 'm2.coffer.example'), 'ok');
    assert.equal(await handshakeAs(p2, caPem, 'localhost'), 'ok');
    assert.equal(await handshakeAs(p1, caPem, 'evil.example'), 'ERR_TLS_CERT_ALTNAME_INVALID');
    assert.equal(await handshakeAs(p2, caPem, 'coffer.example'), 'ERR_TLS_CERT_ALTNAME_INVALID');
    assert.equal(await handshakeAs(p1, caPem, 'm2.coffer.example'), 'ERR_TLS_CERT_ALTNAME_INVALID');

    const renewed = await eventually('both managers to serve renewed certificates', 60_000, async () => {
      const now = [await servedCertificate(p1, caPem), await servedCertificate(p2, caPem)];
      return now[0]!.serial !== first[0]!.serial && now[1]!.serial !== first[1]!.serial ? now : undefined;
    });
    assert.deepEqual(
      renewed.map((c) => c.names),
      first.map((c) => c.names),
      'a renewed certificate names the same hosts',
    );
    assert.equal(await handshakeAs(p2, caPem, 'm2.coffer.example'), 'ok');
    assert.equal(await handshakeAs(p2, caPem, 'evil.example'), 'ERR_TLS_CERT_ALTNAME_INVALID');
  } finally {
    admin?.close();
    for (const node of nodes) await node.stop();
    rmSync(root, { recursive: true, force: true });
  }
});
