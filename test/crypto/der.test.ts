import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { X509Certificate, createPrivateKey, createPublicKey } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as der from '../../src/crypto/der.ts';
import { newKeyPair } from '../../src/crypto/key-pairs.ts';
import { certificationRequest, publicKeyOfRequest, selfSignedCertificate, spkiDigest } from '../../src/crypto/pki.ts';

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

test('DER: lengths in short and long form, as X.690 writes them', () => {
  assert.equal(hex(der.element(0x04, Buffer.alloc(0))), '0400');
  assert.equal(hex(der.element(0x04, Buffer.alloc(127, 1)).subarray(0, 2)), '047f');
  assert.equal(hex(der.element(0x04, Buffer.alloc(128, 1)).subarray(0, 3)), '048180');
  assert.equal(hex(der.element(0x04, Buffer.alloc(300, 1)).subarray(0, 4)), '0482012c');
  assert.equal(hex(der.element(0x04, Buffer.alloc(70_000, 1)).subarray(0, 5)), '0483011170');
  assert.throws(() => der.element(0x1f, Buffer.alloc(0)), /low tag number/);
});

test('DER: an element read back where it was written; one that does not fit is null', () => {
  for (const size of [0, 5, 127, 128, 300, 70_000]) {
    const written = der.sequence(der.element(0x04, Buffer.alloc(size, 7)));
    const outer = der.elementAt(written, 0);
    assert.deepEqual(outer && { end: outer.end }, { end: written.length }, `size ${size}`);
    const inner = der.elementAt(written, outer!.contentsAt);
    assert.equal(inner!.end - inner!.contentsAt, size, `size ${size}`);
  }
  const cut = der.element(0x04, Buffer.alloc(300, 7)).subarray(0, 200);
  assert.equal(der.elementAt(cut, 0), null);
  assert.equal(der.elementAt(Buffer.of(0x30), 0), null);
  assert.equal(der.elementAt(Buffer.of(0x30, 0x84, 1, 0, 0, 0), 0), null, 'a four-byte length');
  assert.equal(der.elementAt(Buffer.of(0x30, 0x80), 0), null, 'an indefinite length');
});

test('DER: object identifiers, integers and times', () => {
  assert.equal(hex(der.oid('1.2.840.10045.4.3.2')), '06082a8648ce3d040302');
  assert.equal(hex(der.oid('2.5.4.3')), '0603550403');
  assert.equal(hex(der.oid('2.999.3')), '0603883703');
  for (const bad of ['1', '3.1', '1.40', '1.2.x', ''])
    assert.throws(() => der.oid(bad), /not an object identifier/, bad);
  // A high first bit would read as negative: a zero goes before it; leading zeros go.
  assert.equal(hex(der.unsignedInteger(Buffer.from('80', 'hex'))), '02020080');
  assert.equal(hex(der.unsignedInteger(Buffer.from('00007f', 'hex'))), '02017f');
  assert.equal(hex(der.unsignedInteger(Buffer.alloc(3))), '020100');
  assert.equal(hex(der.smallInteger(2)), '020102');
  assert.equal(der.time(new Date('2049-12-31T23:59:59.900Z')).toString('latin1', 2), '491231235959Z');
  assert.equal(der.time(new Date('2049-12-31T23:59:59Z'))[0], 0x17, 'UTCTime through 2049');
  assert.equal(der.time(new Date('2050-01-01T00:00:00Z')).toString('latin1', 2), '20500101000000Z');
  assert.equal(der.time(new Date('2050-01-01T00:00:00Z'))[0], 0x18, 'GeneralizedTime from 2050');
});

test('a self-signed certificate written as DER: OpenSSL reads it, its signature verifies with its own key, its fields are as made', () => {
  const key = newKeyPair();
  const now = Date.parse('2026-12-06T05:00:00Z');
  const pem = selfSignedCertificate(key, now);
  const cert = new X509Certificate(pem);
  assert.equal(cert.subject, 'CN=coffer joining manager');
  assert.equal(cert.issuer, cert.subject);
  assert.equal(cert.verify(createPublicKey(key.publicPem)), true);
  assert.equal(cert.checkPrivateKey(createPrivateKey(key.privatePem)), true);
  assert.equal(spkiDigest(cert.publicKey), spkiDigest(key.publicPem));
  assert.equal(Date.parse(cert.validFrom), now - 3_600_000);
  assert.equal(Date.parse(cert.validTo), now + 24 * 3_600_000);
  // Another key's signature does not verify, and a flipped byte in the signed part breaks it.
  assert.equal(cert.verify(createPublicKey(newKeyPair().publicPem)), false);
  const raw = Buffer.from(cert.raw);
  const at = raw.indexOf(Buffer.from('coffer joining'));
  assert.ok(at > 0);
  raw[at] = raw[at]! ^ 0x01;
  assert.equal(new X509Certificate(raw).verify(createPublicKey(key.publicPem)), false);
  // OpenSSL's own command checks it as a self-signed root (signature, validity, version 3).
  const dir = mkdtempSync(join(tmpdir(), 'coffer-der-'));
  try {
    const file = join(dir, 'cert.pem');
    writeFileSync(file, selfSignedCertificate(key, Date.now()));
    const checked = spawnSync('openssl', ['verify', '-CAfile', file, file], { encoding: 'utf8', timeout: 10_000 });
    assert.equal(checked.status, 0, checked.stderr);
    assert.match(checked.stdout, /: OK/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a certification request written as DER: OpenSSL verifies it, and Coffer's parser finds its key", () => {
  const key = newKeyPair();
  const pem = certificationRequest(key, 'coffer login');
  assert.equal(spkiDigest(publicKeyOfRequest(pem)), spkiDigest(key.publicPem));
  const dir = mkdtempSync(join(tmpdir(), 'coffer-der-'));
  try {
    const file = join(dir, 'request.pem');
    writeFileSync(file, pem);
    const checked = spawnSync('openssl', ['req', '-in', file, '-noout', '-verify', '-subject'], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    assert.equal(checked.status, 0, checked.stderr);
    assert.match(`${checked.stdout}${checked.stderr}`, /verify OK/i);
    assert.match(checked.stdout, /CN\s*=\s*coffer login/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a joining manager and a logging-in client make their certificate and request without loading node-forge', () => {
  // In a process of its own: this test file's other imports may have loaded forge already.
  const script = `
    import { createRequire } from 'node:module';
    import { newKeyPair } from './src/crypto/key-pairs.ts';
    import { certificationRequest, selfSignedCertificate } from './src/crypto/pki.ts';
    const key = newKeyPair();
    selfSignedCertificate(key, Date.now());
    certificationRequest(key, 'me');
    const loaded = Object.keys(createRequire(import.meta.url).cache).filter((path) => path.includes('node-forge'));
    process.stdout.write(JSON.stringify(loaded.length));
  `;
  const run = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: join(import.meta.dirname, '..', '..'),
    encoding: 'utf8',
    timeout: 30_000,
  });
  assert.equal(run.status, 0, run.stderr);
  assert.equal(run.stdout, '0', 'node-forge was loaded');
});
