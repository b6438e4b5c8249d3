import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { createRequire } from 'node:module';
import type Forge from 'node-forge';
import {
  certificationRequest,
  createCa,
  identityOf,
  newLeafKey,
  publicKeyOfRequest,
  signCertificate,
  spkiDigest,
} from '../../src/crypto/pki.ts';
import { CryptoError } from '../../src/crypto/errors.ts';

// What a login certifies: the key of a certification request its sender signed, under a name
// that comes back from the certificate exactly as it went in.

const pair = (
  type: 'rsa' | 'ec',
  options: { modulusLength?: number; namedCurve?: string; publicExponent?: number },
) => {
  const { privateKey, publicKey } = generateKeyPairSync(type as 'rsa', {
    ...(options as { modulusLength: number }),
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  return { privatePem: privateKey, publicPem: publicKey };
};

test('a certification request gives its key only when signed by that key: ECDSA on P-256 or P-384, or RSA of 2048 to 4096 bits', () => {
  const key = newLeafKey();
  assert.equal(spkiDigest(publicKeyOfRequest(certificationRequest(key, 'me'))), spkiDigest(key.publicPem));
  // Keys other clients make (Coffer's own are P-256) are taken too, each with its signature.
  for (const other of [pair('rsa', { modulusLength: 2048 }), pair('ec', { namedCurve: 'secp384r1' })])
    assert.equal(spkiDigest(publicKeyOfRequest(certificationRequest(other, 'me'))), spkiDigest(other.publicPem));
  assert.throws(
    () => publicKeyOfRequest(certificationRequest(pair('ec', { namedCurve: 'secp521r1' }), 'me')),
    /curve secp521r1; P-256 \(prime256v1\) and P-384/,
  );
  assert.throws(
    () => publicKeyOfRequest(certificationRequest(pair('ec', { namedCurve: 'secp256k1' }), 'me')),
    /curve secp256k1/,
  );
  const other = newLeafKey();
  const forged = certificationRequest({ privatePem: key.privatePem, publicPem: other.publicPem }, 'me');
  assert.throws(
    () => publicKeyOfRequest(forged),
    (e: unknown) => e instanceof CryptoError && /not signed by the key/.test(e.message),
  );
  const small = generateKeyPairSync('rsa', {
    modulusLength: 1024,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  assert.throws(
    () => publicKeyOfRequest(certificationRequest({ privatePem: small.privateKey, publicPem: small.publicKey }, 'me')),
    /1024 bits and exponent 65537; 2048 to 4096/,
  );
  assert.throws(
    () => publicKeyOfRequest('-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----'),
    CryptoError,
  );
  assert.throws(() => publicKeyOfRequest('x'.repeat(20_000)), /over 16384 characters/);
  // One byte of the signed body changed: the signature no longer covers it.
  const good = certificationRequest(key, 'me');
  const body = Buffer.from(good.replace(/-----[^-]+-----/g, '').replace(/\s/g, ''), 'base64');
  body[40] = body[40]! ^ 0x01;
  const tampered = `-----BEGIN CERTIFICATE REQUEST-----\n${body.toString('base64').replace(/.{64}/g, '$&\n')}\n-----END CERTIFICATE REQUEST-----\n`;
  assert.throws(() => publicKeyOfRequest(tampered), CryptoError);
});

test('login identity names come back from the certificate as they were certified, RFC 2253 specials included', () => {
  const ca = createCa('c1', Date.now());
  for (const id of [
    'people:alice+ops@example.com',
    'k8s:system:serviceaccount:ns:sa',
    `ci:${'r'.repeat(250)}`,
    'a=b:c,d',
  ]) {
    const cert = signCertificate(ca, newLeafKey().publicPem, {
      id,
      role: 'client',
      clusterId: 'c1',
      nowMs: Date.now(),
    });
    assert.equal(identityOf(cert).id, id);
  }
});

test('a certification request with a huge key is refused before any work is done with it', () => {
  // A 16,000-bit modulus and exponent: forge's JavaScript RSA would take seconds on it.
  const forge = createRequire(import.meta.url)('node-forge') as typeof Forge;
  const n = new forge.jsbn.BigInteger(`f${'ab'.repeat(1999)}1`, 16);
  const e = new forge.jsbn.BigInteger(`c${'d3'.repeat(1999)}5`, 16);
  const csr = forge.pki.createCertificationRequest();
  csr.publicKey = forge.pki.setRsaPublicKey(n, e);
  csr.setSubject([{ name: 'commonName', value: 'x' }]);
  (csr as unknown as { signature: string; signatureOid: string }).signatureOid = '1.2.840.113549.1.1.11';
  (csr as unknown as { signature: string }).signature = 'x'.repeat(256);
  const pem = forge.pki.certificationRequestToPem(csr);
  // Refused by the size check, which comes before the signature is computed.
  assert.throws(() => publicKeyOfRequest(pem), /has 16000 bits and exponent/);
  const exponent3 = generateKeyPairSync('rsa', {
    modulusLength: 2048,
    publicExponent: 3,
    publicKeyEncoding: { type: 'spki', format: 'pem' },
    privateKeyEncoding: { type: 'pkcs8', format: 'pem' },
  });
  assert.throws(
    () =>
      publicKeyOfRequest(
        certificationRequest({ privatePem: exponent3.privateKey, publicPem: exponent3.publicKey }, 'x'),
      ),
    /exponent 3;/,
  );
});

test('a certificate is signed only for a public key Coffer takes: a weak RSA key, an odd curve, a private key or garbage are refused', () => {
  const ca = createCa('c1', Date.now());
  const options = { id: 'x', role: 'client', clusterId: 'c1', nowMs: Date.now() } as const;
  const refused = (publicPem: string, pattern: RegExp) =>
    assert.throws(
      () => signCertificate(ca, publicPem, options),
      (e: unknown) => e instanceof CryptoError && e.code === 'CERTIFICATE_INVALID' && pattern.test(e.message),
    );
  refused(pair('rsa', { modulusLength: 1024 }).publicPem, /1024 bits/);
  refused(pair('ec', { namedCurve: 'secp521r1' }).publicPem, /curve secp521r1/);
  refused(newLeafKey().privatePem, /a public key is wanted/);
  refused('-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n', /not a public key in PEM form/);
  for (const good of [newLeafKey(), pair('rsa', { modulusLength: 2048 }), pair('ec', { namedCurve: 'secp384r1' })])
    assert.equal(identityOf(signCertificate(ca, good.publicPem, options)).spki, spkiDigest(good.publicPem));
});
