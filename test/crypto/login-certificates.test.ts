import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ECDH, X509Certificate, createPublicKey, generateKeyPairSync } from 'node:crypto';
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

const forgeLib = (): typeof Forge => createRequire(import.meta.url)('node-forge') as typeof Forge;

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

/** A P-256 public key with its curve spelled out in parameters (openssl ecparam -param_enc explicit): a public key only. */
const EXPLICIT_CURVE_KEY = `-----BEGIN PUBLIC KEY-----
MIIBSzCCAQMGByqGSM49AgEwgfcCAQEwLAYHKoZIzj0BAQIhAP////8AAAABAAAA
AAAAAAAAAAAA////////////////MFsEIP////8AAAABAAAAAAAAAAAAAAAA////
///////////8BCBaxjXYqjqT57PrvVV2mIa8ZR0GsMxTsPY7zjw+J9JgSwMVAMSd
NgiG5wSTamZ44ROdJreBn36QBEEEaxfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5
RdiYwpZP40Li/hp/m47n60p8D54WK84zV2sxXs7LtkBoN79R9QIhAP////8AAAAA
//////////+85vqtpxeehPO5ysL8YyVRAgEBA0IABPpWYjBdF4pbnx9B7tPogqPF
5SVaTiUrsV9KDMApzZB3G/QvsL/NVu01hxPfCNBUSV04qs6O3Spkgo3LZgB/Hlk=
-----END PUBLIC KEY-----
`;

test('an ECDSA key is certified only as RFC 5480 has it: its curve named, its point uncompressed', () => {
  const ca = createCa('c1', Date.now());
  const options = { id: 'x', role: 'client', clusterId: 'c1', nowMs: Date.now() } as const;
  assert.throws(() => signCertificate(ca, EXPLICIT_CURVE_KEY, options), /spells its curve out/);
  const raw = createPublicKey(newLeafKey().publicPem).export({ format: 'der', type: 'spki' }).subarray(-65);
  const point = ECDH.convertKey(raw, 'prime256v1', undefined, undefined, 'compressed') as Buffer;
  const compressed = createPublicKey({
    key: Buffer.concat([Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'), point]),
    format: 'der',
    type: 'spki',
  });
  assert.throws(
    () => signCertificate(ca, compressed.export({ type: 'spki', format: 'pem' }).toString(), options),
    /compressed/,
  );
});

/** The keyUsage bits of a certificate (digitalSignature 0x80, keyEncipherment 0x20). */
function keyUsageBits(certPem: string): number {
  const der = new X509Certificate(certPem).raw;
  const cert = forgeLib().asn1.fromDer(der.toString('binary'));
  const tbs = (cert.value as Forge.asn1.Asn1[])[0]!.value as Forge.asn1.Asn1[];
  const extensions = ((tbs[7]!.value as Forge.asn1.Asn1[])[0]!.value as Forge.asn1.Asn1[]).map(
    (e) => e.value as Forge.asn1.Asn1[],
  );
  const keyUsage = extensions.find((e) => forgeLib().asn1.derToOid(e[0]!.value as string) === '2.5.29.15')!;
  const bits = forgeLib().asn1.fromDer(
    keyUsage[keyUsage.length - 1]!.value as string,
    { decodeBitStrings: false } as never,
  );
  return (bits.value as string).charCodeAt(1);
}

test('a leaf for an ECDSA key may sign only; one for an RSA key may also encipher keys (RFC 5480)', () => {
  const ca = createCa('c1', Date.now());
  const options = { id: 'x', role: 'client', clusterId: 'c1', nowMs: Date.now() } as const;
  assert.equal(keyUsageBits(signCertificate(ca, newLeafKey().publicPem, options)), 0x80);
  assert.equal(keyUsageBits(signCertificate(ca, pair('rsa', { modulusLength: 2048 }).publicPem, options)), 0xa0);
});

test('a certification request whose algorithm is not a plain OID is refused as malformed, not thrown', () => {
  const forge = forgeLib();
  const good = certificationRequest(newLeafKey(), 'me');
  const der = Buffer.from(good.replace(/-----[^-]+-----/g, '').replace(/\s/g, ''), 'base64');
  const request = forge.asn1.fromDer(der.toString('binary'));
  const parts = request.value as Forge.asn1.Asn1[];
  const algorithm = parts[1]!.value as Forge.asn1.Asn1[];
  const pemOf = (asn1: Forge.asn1.Asn1): string =>
    `-----BEGIN CERTIFICATE REQUEST-----\n${Buffer.from(forge.asn1.toDer(asn1).getBytes(), 'binary').toString('base64')}\n-----END CERTIFICATE REQUEST-----\n`;
  // A constructed OID (its value parsed as elements), then an OID too long for a number.
  algorithm[0] = forge.asn1.create(forge.asn1.Class.UNIVERSAL, forge.asn1.Type.OID, true, [
    forge.asn1.create(forge.asn1.Class.UNIVERSAL, forge.asn1.Type.OID, false, '\u002a'),
  ]);
  const refused = (pem: string) =>
    assert.throws(
      () => publicKeyOfRequest(pem),
      (e: unknown) => e instanceof CryptoError && e.code === 'CERTIFICATE_INVALID',
    );
  refused(pemOf(request));
  algorithm[0] = forge.asn1.create(
    forge.asn1.Class.UNIVERSAL,
    forge.asn1.Type.OID,
    false,
    `\u002a${'\u00ff'.repeat(12)}\u0001`,
  );
  refused(pemOf(request));
});
