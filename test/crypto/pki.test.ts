import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate, createPrivateKey, createPublicKey, generateKeyPairSync } from 'node:crypto';
import { connect, createServer, type TLSSocket } from 'node:tls';
import forge from 'node-forge';
import type { AddressInfo } from 'node:net';
import { CryptoError } from '../../src/crypto/errors.ts';
import {
  CERTIFICATE_CACHE_ENTRIES,
  caCertificateFor,
  caDigest,
  createCa,
  formatJoinToken,
  identityOf,
  issueCertificate,
  issuedBy,
  joinTokenHash,
  joinTokenMatches,
  newJoinToken,
  newLeafKey,
  parseJoinToken,
  selfSignedCertificate,
  type KeyAndCertificate,
} from '../../src/crypto/pki.ts';

const now = Date.now();
const ca = createCa('cluster-1', now);

/** Connects a client with `client` to a server with `server`, both trusting `trust`; resolves with what each side saw. */
async function handshake(
  server: KeyAndCertificate,
  client: KeyAndCertificate | null,
  trust: string,
): Promise<{ clientAuthorized: boolean; serverError: string | null; peerCn: string }> {
  const tlsServer = createServer(
    { key: server.keyPem, cert: server.certPem, ca: trust, requestCert: true, rejectUnauthorized: false },
    (socket: TLSSocket) => {
      socket.end(socket.authorized ? 'yes' : `no:${String(socket.authorizationError)}`);
    },
  );
  await new Promise<void>((resolve) => tlsServer.listen(0, '127.0.0.1', resolve));
  try {
    const port = (tlsServer.address() as AddressInfo).port;
    return await new Promise((resolve, reject) => {
      const socket = connect(
        {
          host: '127.0.0.1',
          port,
          ca: trust,
          ...(client === null ? {} : { key: client.keyPem, cert: client.certPem }),
          checkServerIdentity: () => undefined,
        },
        () => {
          let text = '';
          socket.on('data', (d) => (text += d.toString()));
          socket.on('end', () =>
            resolve({
              clientAuthorized: text === 'yes',
              serverError: text.startsWith('no:') ? text.slice(3) : null,
              peerCn: String(socket.getPeerCertificate().subject?.CN ?? ''),
            }),
          );
        },
      );
      socket.on('error', reject);
    });
  } finally {
    tlsServer.close();
  }
}

test('a manager certificate names the node, its role and the cluster, and works for mutual TLS under the cluster CA', async () => {
  const manager = issueCertificate(ca, {
    id: '1',
    role: 'manager',
    clusterId: 'cluster-1',
    nowMs: now,
    hosts: ['127.0.0.1', 'localhost'],
  });
  const client = issueCertificate(ca, { id: 'admin', role: 'client', clusterId: 'cluster-1', nowMs: now });
  const identity = identityOf(manager.certPem);
  assert.equal(identity.id, '1');
  assert.equal(identity.role, 'manager');
  assert.equal(identity.clusterId, 'cluster-1');
  assert.ok(Math.abs(identity.notAfterMs - (now + 90 * 24 * 3600 * 1000)) < 2000, 'managers get 90 days');
  assert.equal(identityOf(client.certPem).role, 'client');
  const seen = await handshake(manager, client, ca.certPem);
  assert.equal(seen.clientAuthorized, true);
  assert.equal(seen.peerCn, '1');
});

test('a certificate from another CA, or an expired one, is not authorized', async () => {
  const manager = issueCertificate(ca, {
    id: '1',
    role: 'manager',
    clusterId: 'cluster-1',
    nowMs: now,
    hosts: ['127.0.0.1'],
  });
  const otherCa = createCa('cluster-2', now);
  const stranger = issueCertificate(otherCa, { id: 'admin', role: 'client', clusterId: 'cluster-2', nowMs: now });
  assert.equal((await handshake(manager, stranger, ca.certPem)).clientAuthorized, false);
  const expired = issueCertificate(ca, {
    id: 'old',
    role: 'client',
    clusterId: 'cluster-1',
    nowMs: now,
    notAfterMs: now - 60_000,
  });
  const seen = await handshake(manager, expired, ca.certPem);
  assert.equal(seen.clientAuthorized, false);
  assert.equal(seen.serverError, 'CERT_HAS_EXPIRED');
});

test('a join token pins the CA certificate and carries a secret; the cluster keeps only a hash, compared in constant time', () => {
  const token = newJoinToken(ca.certPem);
  const text = formatJoinToken(token);
  assert.match(text, /^CFRTKN-1-[0-9a-f]{64}-[A-Za-z0-9_-]{32}$/);
  const parsed = parseJoinToken(` ${text}\n`);
  assert.equal(parsed.caDigest, caDigest(ca.certPem));
  assert.deepEqual(parsed.secret, token.secret);
  const stored = joinTokenHash(token.secret);
  assert.equal(joinTokenMatches(parsed.secret, stored), true);
  assert.equal(joinTokenMatches(newJoinToken(ca.certPem).secret, stored), false);
  assert.throws(
    () => parseJoinToken(text.slice(0, -1)),
    (e: unknown) => e instanceof CryptoError && e.code === 'JOIN_TOKEN_MALFORMED',
  );
  assert.notEqual(caDigest(createCa('cluster-1', now).certPem), parsed.caDigest, 'another CA has another digest');
});

test("an RSA CA (as clusters made before have) signs as forge's own RSA would (PKCS#1 v1.5 is deterministic); a P-256 CA and its leaves carry their own keys byte for byte, every field as asked; a changed byte breaks any of them", () => {
  const rsa = generateKeyPairSync('rsa', {
    modulusLength: 3072,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  const rsaCa = caCertificateFor({ privatePem: rsa.privateKey, publicPem: rsa.publicKey }, 'cluster-1', now, 1);
  const rsaLeaf = issueCertificate(rsaCa, { id: '8', role: 'client', clusterId: 'cluster-1', nowMs: now });
  for (const pem of [rsaCa.certPem, rsaLeaf.certPem]) {
    const der = Buffer.from(new X509Certificate(pem).raw);
    // forge reads the RSA CA; the leaf's tbs is taken from the DER (forge reads no ECDSA key).
    const fields = forge.asn1.fromDer(der.toString('binary')).value as forge.asn1.Asn1[];
    const md = forge.md.sha256.create();
    md.update(forge.asn1.toDer(fields[0]!).getBytes());
    const byForge = forge.pki.privateKeyFromPem(rsaCa.keyPem).sign(md);
    const signature = (fields[2]!.value as string).slice(1);
    assert.equal(Buffer.from(signature, 'binary').toString('hex'), Buffer.from(byForge, 'binary').toString('hex'));
    assert.equal(new X509Certificate(pem).verify(new X509Certificate(rsaCa.certPem).publicKey), true);
  }
  assert.equal(forge.pki.certificateFromPem(rsaCa.certPem).verify(forge.pki.certificateFromPem(rsaCa.certPem)), true);

  const leaf = issueCertificate(ca, {
    id: '7',
    role: 'manager',
    clusterId: 'cluster-1',
    hosts: ['127.0.0.1', 'm7.example'],
    nowMs: now,
  });
  const caCert = new X509Certificate(ca.certPem);
  assert.equal(createPrivateKey(ca.keyPem).asymmetricKeyDetails?.namedCurve, 'prime256v1');
  assert.equal(caCert.verify(caCert.publicKey), true);
  assert.equal(caCert.ca, true);
  assert.equal(caCert.subject, caCert.issuer);
  assert.equal(caCert.checkPrivateKey(createPrivateKey(ca.keyPem)), true);

  const cert = new X509Certificate(leaf.certPem);
  const key = createPrivateKey(leaf.keyPem);
  assert.equal(key.asymmetricKeyType, 'ec');
  assert.deepEqual(
    cert.publicKey.export({ type: 'spki', format: 'der' }),
    createPublicKey(key).export({ type: 'spki', format: 'der' }),
  );
  assert.equal(cert.checkPrivateKey(key), true);
  assert.equal(cert.subject, 'CN=7\nO=cluster-1\nOU=manager');
  assert.equal(cert.issuer, caCert.subject);
  assert.equal(cert.subjectAltName, 'IP Address:127.0.0.1, DNS:m7.example');
  assert.deepEqual(cert.keyUsage, ['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2'], 'server and client authentication');
  assert.equal(cert.ca, false);
  assert.ok(Date.parse(cert.validTo) - now > 89 * 24 * 3600 * 1000);
  assert.equal(cert.verify(caCert.publicKey), true);
  assert.equal(issuedBy(leaf.certPem, ca.certPem), true);
  assert.equal(issuedBy(leaf.certPem, rsaCa.certPem), false);
  // A self-signed proof certificate is signed with its own (ECDSA) key.
  const proofKey = newLeafKey();
  const proof = new X509Certificate(selfSignedCertificate(proofKey, now));
  assert.equal(proof.verify(createPublicKey(proofKey.publicPem)), true);

  for (const [pem, issuer] of [
    [leaf.certPem, ca.certPem],
    [ca.certPem, ca.certPem],
    [rsaLeaf.certPem, rsaCa.certPem],
  ] as const) {
    const der = Buffer.from(new X509Certificate(pem).raw);
    const serialAt = der.indexOf(Buffer.from(new X509Certificate(pem).serialNumber, 'hex'));
    assert.ok(serialAt > 0);
    der[serialAt]! ^= 0x01;
    assert.equal(new X509Certificate(der).verify(new X509Certificate(issuer).publicKey), false);
  }
});

test('parsed certificates are remembered by their bytes: the same answers as parsing, nothing shared between two certificates or two CAs, and a remembered identity cannot be changed', () => {
  const other = createCa('cluster-2', now);
  const a = issueCertificate(ca, { id: 'alice', role: 'client', clusterId: 'cluster-1', nowMs: now });
  const b = issueCertificate(other, { id: 'bob', role: 'client', clusterId: 'cluster-2', nowMs: now });
  for (let round = 0; round < 2; round++) {
    assert.equal(identityOf(a.certPem).id, 'alice');
    assert.equal(identityOf(b.certPem).id, 'bob');
    // The DER a TLS socket gives is the same certificate as its PEM.
    assert.deepEqual(identityOf(Buffer.from(new X509Certificate(a.certPem).raw)), identityOf(a.certPem));
    assert.equal(issuedBy(a.certPem, ca.certPem), true);
    assert.equal(issuedBy(a.certPem, other.certPem), false, 'a forged issuer is not taken for the real one');
    assert.equal(issuedBy(b.certPem, ca.certPem), false);
    assert.equal(issuedBy(b.certPem, other.certPem), true);
  }
  const remembered = identityOf(a.certPem);
  assert.throws(() => {
    (remembered as { id: string }).id = 'root';
  }, TypeError);
  assert.equal(identityOf(a.certPem).id, 'alice');
  // Asked many times over, in turns, the answers stay right.
  for (let k = 0; k < CERTIFICATE_CACHE_ENTRIES + 5; k++)
    assert.equal(
      issuedBy(k % 2 === 0 ? a.certPem : b.certPem, k % 3 === 0 ? ca.certPem : other.certPem),
      (k % 2 === 0) === (k % 3 === 0),
    );
});

test('a host whose clock is up to an hour behind accepts the CA and a certificate the moment they are issued (TLS checks by its own clock)', () => {
  const issuedAtMs = Date.now();
  const freshCa = createCa('cluster-skew', issuedAtMs);
  const leaf = issueCertificate(freshCa, { id: 'app', role: 'client', clusterId: 'cluster-skew', nowMs: issuedAtMs });
  const behindMs = issuedAtMs - 59 * 60_000;
  for (const [what, pem] of [
    ['the CA', freshCa.certPem],
    ['the leaf', leaf.certPem],
  ] as const) {
    const cert = new X509Certificate(pem);
    assert.ok(
      Date.parse(cert.validFrom) <= behindMs,
      `${what} is valid at a host 59 minutes behind: ${cert.validFrom}`,
    );
  }
  // The joiner's self-signed certificate too (the leader checks it by its own clock).
  const self = new X509Certificate(selfSignedCertificate(newLeafKey(), issuedAtMs));
  assert.ok(Date.parse(self.validFrom) <= behindMs);
});
