import {
  X509Certificate,
  createHash,
  createPrivateKey,
  createPublicKey,
  randomBytes,
  timingSafeEqual,
  verify,
  type KeyObject,
} from 'node:crypto';
import { isIP } from 'node:net';
import { createRequire } from 'node:module';
import type Forge from 'node-forge';
import * as der from './der.ts';
import { CryptoError } from './errors.ts';
import { newKeyPair, type KeyPairPem } from './key-pairs.ts';

/** What a certificate says about its holder. */
export type Role = 'manager' | 'client';

export interface Identity {
  /** CN: a manager's node id (decimal) or a client's name. */
  readonly id: string;
  /** OU. */
  readonly role: Role;
  /** O. */
  readonly clusterId: string;
  readonly serial: string;
  /**
   * SHA-256 of the certificate's public key (DER SubjectPublicKeyInfo), hex: what an identity or
   * a manager is bound to. A certificate minted with a stolen CA key for a registered name and
   * serial still carries the forger's own key, so it does not match.
   */
  readonly spki: string;
  readonly notBeforeMs: number;
  readonly notAfterMs: number;
}

export interface KeyAndCertificate {
  readonly keyPem: string;
  readonly certPem: string;
}

export const CA_VALIDITY_DAYS = 3650;
export const MANAGER_CERT_VALIDITY_DAYS = 90;
export const CLIENT_CERT_VALIDITY_DAYS = 365;
/** node-forge, loaded at its first use: only making a certificate needs it, and loading it cost every start about 20 ms. */
let forgeLoaded: typeof Forge | null = null;
function forge(): typeof Forge {
  forgeLoaded ??= createRequire(import.meta.url)('node-forge') as typeof Forge;
  return forgeLoaded;
}

const DAY_MS = 24 * 3600 * 1000;

const { OID_SHA256_WITH_RSA, OID_ECDSA_WITH_SHA256 } = der;
const OID_ECDSA_WITH_SHA384 = '1.2.840.10045.4.3.3';
/** The hash a certification request's signature is checked with, by its key's type and its algorithm. */
const REQUEST_SIGNATURE_HASHES: Readonly<Record<string, string>> = {
  [`rsa ${OID_SHA256_WITH_RSA}`]: 'sha256',
  [`ec ${OID_ECDSA_WITH_SHA256}`]: 'sha256',
  [`ec ${OID_ECDSA_WITH_SHA384}`]: 'sha384',
};

/** The public keys Coffer certifies: RSA of these sizes (exponent 65537), or ECDSA on these curves. */
export const RSA_KEY_BITS_MIN = 2048;
export const RSA_KEY_BITS_MAX = 4096;
export const EC_KEY_CURVES: readonly string[] = ['prime256v1', 'secp384r1'];

/**
 * What is wrong with a public key for a certificate, or null. Checked before anything is computed
 * with it: a modulus or an exponent of tens of thousands of bits would keep a manager's loop busy
 * for seconds (anyone may send one).
 */
export function publicKeyProblem(key: KeyObject): string | null {
  if (key.asymmetricKeyType === 'rsa') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    const exponent = key.asymmetricKeyDetails?.publicExponent ?? 0n;
    return bits < RSA_KEY_BITS_MIN || bits > RSA_KEY_BITS_MAX || exponent !== 65537n
      ? `the RSA key has ${bits} bits and exponent ${exponent}; ${RSA_KEY_BITS_MIN} to ${RSA_KEY_BITS_MAX} bits and exponent 65537 are taken`
      : null;
  }
  if (key.asymmetricKeyType === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve ?? '';
    if (!EC_KEY_CURVES.includes(curve))
      return `the ECDSA key is on curve ${curve || '(unnamed)'}; P-256 (prime256v1) and P-384 (secp384r1) are taken`;
    // As RFC 5480 has it (and strict verifiers, Go's among them, want): the curve named by its
    // OID, not spelled out in parameters, and the point uncompressed.
    const [algorithm, point] = publicKeyInfo(key).value as Asn1[];
    const parameters = (algorithm?.value as Asn1[] | undefined)?.[1];
    if (parameters?.type !== forge().asn1.Type.OID)
      return 'the ECDSA key spells its curve out in parameters; name it (a named-curve key)';
    if (typeof point?.value !== 'string' || point.value.charCodeAt(1) !== 0x04)
      return 'the ECDSA key is compressed; send its uncompressed point';
    return null;
  }
  return `the key is ${key.asymmetricKeyType ?? 'of no known type'}; RSA and ECDSA (P-256, P-384) keys are taken`;
}

/** A PEM public key (SPKI) that Coffer certifies, or CERTIFICATE_INVALID saying why not. */
function acceptedPublicKey(pem: string): KeyObject {
  // Node would take a private key here and derive its public half; whoever sent one gave it away.
  if (pem.includes('PRIVATE KEY'))
    throw new CryptoError('CERTIFICATE_INVALID', 'a public key is wanted here, not a private one');
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (error) {
    throw new CryptoError('CERTIFICATE_INVALID', 'the public key is not a public key in PEM form (SPKI)', {
      cause: error,
    });
  }
  const problem = publicKeyProblem(key);
  if (problem !== null) throw new CryptoError('CERTIFICATE_INVALID', problem);
  return key;
}

type Asn1 = Forge.asn1.Asn1;

/** The parts of forge its type definitions leave out. */
interface ForgeUntyped {
  readonly pki: {
    getTBSCertificate(cert: Forge.pki.Certificate): Asn1;
  };
  readonly asn1: {
    fromDer(bytes: string, options: { strict: boolean; decodeBitStrings: boolean; parseAllBytes: boolean }): Asn1;
  };
}
const untyped = (): ForgeUntyped => forge() as unknown as ForgeUntyped;

/** DER as forge's ASN.1 (strict: the whole of it, nothing re-encoded). */
function forgeAsn1(bytes: Buffer): Asn1 {
  return untyped().asn1.fromDer(bytes.toString('binary'), {
    strict: true,
    decodeBitStrings: false,
    parseAllBytes: true,
  });
}

/** The AlgorithmIdentifier of the signature `signer` makes with SHA-256, as forge's ASN.1. */
function signatureAlgorithm(signer: KeyObject): Asn1 {
  return forgeAsn1(der.signatureAlgorithmDer(signer));
}

/** A key's SubjectPublicKeyInfo as forge's ASN.1, byte for byte as OpenSSL encodes it. */
function publicKeyInfo(key: KeyObject): Asn1 {
  return forgeAsn1(key.export({ type: 'spki', format: 'der' }));
}

/**
 * The DER of `body` (a TBSCertificate) signed by `signer`. forge encodes names, dates and
 * extensions; OpenSSL signs (forge's own RSA took 0.1-0.3 s a signature, during which a leader
 * issuing a certificate served nothing, and forge knows no ECDSA).
 */
function signedDer(body: Asn1, signer: KeyObject): Buffer {
  return der.signed(Buffer.from(forge().asn1.toDer(body).getBytes(), 'binary'), signer);
}

/** A forge RSA key that stands in while forge encodes a body; the subject's real SPKI replaces it (forge reads only RSA keys). */
let standIn: Forge.pki.PublicKey | null = null;
function standInKey(): Forge.pki.PublicKey {
  const { pki, jsbn } = forge();
  standIn ??= pki.setRsaPublicKey(new jsbn.BigInteger('3', 10), new jsbn.BigInteger('3', 10));
  return standIn;
}

/** Names and key identifier put into a certificate as they are, where forge would re-encode them. */
interface Spliced {
  /** The issuer's Name, from its certificate (tbsFields): byte for byte what the chain matches. */
  readonly issuer?: Asn1;
  readonly subject?: Asn1;
}

/**
 * The PEM of a certificate forge has filled in (names, dates, extensions), for `subject`'s public
 * key, signed by `signerPem`'s private key.
 */
function finishCertificate(
  cert: Forge.pki.Certificate,
  subject: KeyObject,
  signerPem: string,
  spliced: Spliced = {},
): string {
  const signer = createPrivateKey(signerPem);
  cert.publicKey = standInKey();
  // forge writes an algorithm and the stand-in's SPKI; both are replaced by the real ones.
  cert.siginfo.algorithmOid = OID_SHA256_WITH_RSA;
  const tbs = untyped().pki.getTBSCertificate(cert);
  const fields = tbs.value as Asn1[];
  fields[2] = signatureAlgorithm(signer);
  if (spliced.issuer !== undefined) fields[3] = spliced.issuer;
  if (spliced.subject !== undefined) fields[5] = spliced.subject;
  fields[6] = publicKeyInfo(subject);
  return new X509Certificate(signedDer(tbs, signer)).toString();
}

/** A certificate's TBSCertificate fields as forge's ASN.1, whatever its key (forge's own parser reads only RSA). */
function tbsFields(certPem: string): Asn1[] {
  const cert = forgeAsn1(new X509Certificate(certPem).raw);
  const fields = ((cert.value as Asn1[])[0]?.value ?? []) as Asn1[];
  // Version 3 (explicit [0]) first, as every certificate Coffer makes: then the subject is the sixth.
  if (fields.length < 7 || fields[0]!.tagClass !== forge().asn1.Class.CONTEXT_SPECIFIC)
    throw new CryptoError('CERTIFICATE_INVALID', 'the CA certificate is not an X.509 version 3 certificate');
  return fields;
}

/** A CA certificate's subject Name (what the certificates it issues name as their issuer). */
function subjectName(caCertPem: string): Asn1 {
  return tbsFields(caCertPem)[5]!;
}

/** The subjectKeyIdentifier extension for a key: SHA-1 of its subjectPublicKey bits (RFC 5280, 4.2.1.2, method 1). */
function subjectKeyIdentifier(key: KeyObject): { id: string; name: string; value: Asn1 } {
  const { asn1 } = forge();
  const bits = (publicKeyInfo(key).value as Asn1[])[1]!.value as string;
  const digest = createHash('sha1')
    .update(Buffer.from(bits.slice(1), 'binary'))
    .digest();
  return {
    id: '2.5.29.14',
    name: 'subjectKeyIdentifier',
    value: asn1.create(asn1.Class.UNIVERSAL, asn1.Type.OCTETSTRING, false, digest.toString('binary')),
  };
}

function pemOf(label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}

function serialNumber(): string {
  // 16 random bytes, first bit cleared so the DER integer stays positive.
  const bytes = randomBytes(16);
  bytes[0] = bytes[0]! & 0x7f;
  return bytes.toString('hex');
}

/**
 * A new cluster CA (self-signed, ECDSA P-256, ten years). Generations after the first carry their
 * number in the name, so a leaf's issuer names one CA even while two are trusted. A CA made
 * before keeps its RSA key: it issues as before.
 */
export function createCa(clusterId: string, nowMs: number, gen = 1): KeyAndCertificate {
  return caCertificateFor(newKeyPair(), clusterId, nowMs, gen);
}

/**
 * How far back a certificate's validity starts: TLS checks validity by each host's own clock
 * (OpenSSL, not the cluster's time), so a host whose clock is up to this far behind still
 * accepts a certificate, and the CA above it, the moment it is issued. An hour, as public CAs do.
 */
export const CERT_BACKDATE_MS = 3_600_000;

/** A CA certificate for a key pair made elsewhere (tests: an RSA CA, as clusters made before P-256 CAs have). */
export function caCertificateFor(key: KeyPairPem, clusterId: string, nowMs: number, gen: number): KeyAndCertificate {
  const publicKey = createPublicKey(key.publicPem);
  const cert = forge().pki.createCertificate();
  cert.serialNumber = serialNumber();
  cert.validity.notBefore = new Date(nowMs - CERT_BACKDATE_MS);
  cert.validity.notAfter = new Date(nowMs + CA_VALIDITY_DAYS * DAY_MS);
  const subject = caSubject(clusterId, gen);
  cert.setSubject(subject);
  cert.setIssuer(subject);
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    subjectKeyIdentifier(publicKey),
  ]);
  return { keyPem: key.privatePem, certPem: finishCertificate(cert, publicKey, key.privatePem) };
}

export interface IssueOptions {
  readonly id: string;
  readonly role: Role;
  readonly clusterId: string;
  readonly nowMs: number;
  readonly validityDays?: number;
  /** Addresses a manager is reached at (IPs or DNS names), for the subjectAltName. */
  readonly hosts?: readonly string[];
  /** For tests of expiry: a certificate whose validity ended before `nowMs`. */
  readonly notAfterMs?: number;
  /** For tests of forgery: this serial (hex) instead of a random one. */
  readonly serial?: string;
}

function caSubject(clusterId: string, gen: number): Forge.pki.CertificateField[] {
  return [
    {
      name: 'commonName',
      value: gen === 1 ? `Coffer cluster CA ${clusterId}` : `Coffer cluster CA ${clusterId} generation ${gen}`,
    },
    { name: 'organizationName', value: clusterId },
    { shortName: 'OU', value: 'ca' },
  ];
}

/**
 * The new CA's certificate signed by the old CA (a cross-signed intermediate): a manager serves
 * it after its own certificate, so a client that still trusts only the old CA verifies leaves
 * of the new one through it. Valid no longer than either CA.
 */
export function crossSignCa(newCaCertPem: string, oldCa: KeyAndCertificate): string {
  const fresh = new X509Certificate(newCaCertPem);
  const old = new X509Certificate(oldCa.certPem);
  const cert = forge().pki.createCertificate();
  cert.serialNumber = serialNumber();
  cert.validity.notBefore = new Date(fresh.validFrom);
  cert.validity.notAfter = new Date(Math.min(Date.parse(fresh.validTo), Date.parse(old.validTo)));
  cert.setExtensions([
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true, critical: true },
    subjectKeyIdentifier(fresh.publicKey),
  ]);
  return finishCertificate(cert, fresh.publicKey, oldCa.keyPem, {
    issuer: subjectName(oldCa.certPem),
    subject: subjectName(newCaCertPem),
  });
}

/** Whether `caCertPem` issued (signed) `certPem`. */
export function issuedBy(certPem: string, caCertPem: string): boolean {
  const key = `${certPem}\u0000${caCertPem}`;
  const known = issuedByCache.get(key);
  if (known !== undefined) return known;
  const cert = new X509Certificate(certPem);
  const ca = new X509Certificate(caCertPem);
  const issued = cert.checkIssued(ca) && cert.verify(ca.publicKey);
  remember(issuedByCache, key, issued);
  return issued;
}

/**
 * Parsed certificates: a manager's housekeeping asked the same questions of its own certificate
 * and CA every tick, each a new X509Certificate (30-50 us; about 5 us a write on a busy leader,
 * `npm run bench -- profile`). A certificate's fields and signature do not change, so the answers
 * are kept, at most CERTIFICATE_CACHE_ENTRIES of each, the oldest dropped first. Time is not in
 * them: validity is checked by whoever reads notBeforeMs and notAfterMs.
 */
export const CERTIFICATE_CACHE_ENTRIES = 256;
const issuedByCache = new Map<string, boolean>();
const identityCache = new Map<string, Identity>();

function remember<T>(cache: Map<string, T>, key: string, value: T): void {
  if (cache.size >= CERTIFICATE_CACHE_ENTRIES) cache.delete(cache.keys().next().value!);
  cache.set(key, value);
}

/** A new key and a certificate for it, signed by the CA. */
export function issueCertificate(ca: KeyAndCertificate, options: IssueOptions): KeyAndCertificate {
  const key = newLeafKey();
  return { keyPem: key.privatePem, certPem: signCertificate(ca, key.publicPem, options) };
}

/** A new private key for a leaf certificate (ECDSA P-256, key-pairs.ts), and its public half (SPKI PEM) to have signed. */
export const newLeafKey: () => KeyPairPem = newKeyPair;

/** A certificate for a public key made elsewhere (a joining manager keeps its private key). */
export function signCertificate(ca: KeyAndCertificate, publicKeyPem: string, options: IssueOptions): string {
  const subject = acceptedPublicKey(publicKeyPem);
  const cert = forge().pki.createCertificate();
  cert.serialNumber = options.serial ?? serialNumber();
  const days =
    options.validityDays ?? (options.role === 'manager' ? MANAGER_CERT_VALIDITY_DAYS : CLIENT_CERT_VALIDITY_DAYS);
  const notAfterMs = options.notAfterMs ?? options.nowMs + days * DAY_MS;
  // Backdated for clocks that lag: an hour, or a tenth of a short lifetime.
  cert.validity.notBefore = new Date(
    Math.min(options.nowMs, notAfterMs) - Math.min(CERT_BACKDATE_MS, (days * DAY_MS) / 10),
  );
  cert.validity.notAfter = new Date(notAfterMs);
  cert.setSubject([
    { name: 'commonName', value: options.id },
    { name: 'organizationName', value: options.clusterId },
    { shortName: 'OU', value: options.role },
  ]);
  const altNames = (options.hosts ?? []).map((host) =>
    isIP(host) !== 0 ? { type: 7, ip: host } : { type: 2, value: host },
  );
  cert.setExtensions([
    { name: 'basicConstraints', cA: false, critical: true },
    // keyEncipherment is for RSA key transport; RFC 5480 forbids it for an ECDSA key.
    { name: 'keyUsage', digitalSignature: true, keyEncipherment: subject.asymmetricKeyType === 'rsa', critical: true },
    { name: 'extKeyUsage', serverAuth: options.role === 'manager', clientAuth: true },
    ...(altNames.length > 0 ? [{ name: 'subjectAltName', altNames }] : []),
  ]);
  return finishCertificate(cert, subject, ca.keyPem, { issuer: subjectName(ca.certPem) });
}

/**
 * A self-signed certificate for a key pair: what a joining manager serves at its address while it
 * joins, so the leader can check that the address answers with the joiner's key.
 */
export function selfSignedCertificate(key: { privatePem: string; publicPem: string }, nowMs: number): string {
  // Written as DER here, not with forge: a joining manager then never loads forge (der.ts says why).
  const signer = createPrivateKey(key.privatePem);
  const name = der.commonNameOnly('coffer joining manager');
  const tbs = der.sequence(
    der.context(0, der.smallInteger(2)), // version 3
    der.unsignedInteger(Buffer.from(serialNumber(), 'hex')),
    der.signatureAlgorithmDer(signer),
    name,
    der.sequence(der.time(new Date(nowMs - CERT_BACKDATE_MS)), der.time(new Date(nowMs + DAY_MS))),
    name,
    createPublicKey(key.publicPem).export({ type: 'spki', format: 'der' }),
  );
  return new X509Certificate(der.signed(tbs, signer)).toString();
}

/** Reads the identity fields of a certificate (PEM or DER). */
export function identityOf(cert: string | Buffer): Identity {
  const key = typeof cert === 'string' ? cert : cert.toString('base64');
  const known = identityCache.get(key);
  if (known !== undefined) return known;
  const identity = Object.freeze(parseIdentity(cert));
  remember(identityCache, key, identity);
  return identity;
}

function parseIdentity(cert: string | Buffer): Identity {
  const x509 = new X509Certificate(cert);
  const fields = new Map<string, string>();
  for (const line of x509.subject.split('\n')) {
    const at = line.indexOf('=');
    if (at > 0) fields.set(line.slice(0, at), line.slice(at + 1));
  }
  const role = fields.get('OU');
  if (role !== 'manager' && role !== 'client')
    throw new CryptoError(
      'CERTIFICATE_INVALID',
      `the certificate's role (OU) is "${role ?? ''}", not manager or client`,
    );
  return {
    // X509Certificate.subject escapes RFC 2253's specials with a backslash (a login subject may
    // hold "+", as in alice+ops@example.com): the id is the name as it was certified.
    // Only those specials: OpenSSL writes other characters as \\XX, which no certified name holds.
    id: (fields.get('CN') ?? '').replace(/\\([,+"\\<>;=# ])/g, '$1'),
    role,
    clusterId: fields.get('O') ?? '',
    serial: x509.serialNumber.toLowerCase(),
    spki: spkiDigest(x509.publicKey),
    notBeforeMs: Date.parse(x509.validFrom),
    notAfterMs: Date.parse(x509.validTo),
  };
}

/** SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo: a certificate's, or a PEM public key's. */
export function spkiDigest(key: KeyObject | string): string {
  const object = typeof key === 'string' ? createPublicKey(key) : key;
  return createHash('sha256')
    .update(object.export({ type: 'spki', format: 'der' }))
    .digest('hex');
}

/** An SPKI digest as spkiDigest writes it. */
export const SPKI_DIGEST_PATTERN = /^[0-9a-f]{64}$/;

/** SHA-256 of the CA certificate's DER, in hex: what a join token pins. */
export function caDigest(caCertPem: string): string {
  return createHash('sha256').update(new X509Certificate(caCertPem).raw).digest('hex');
}

// ---- join tokens --------------------------------------------------------------------------

const TOKEN_PREFIX = 'CFRTKN-1-';
/** A join token works this long unless told otherwise (Swarm's never expire; a leaked one should not work for ever). */
export const JOIN_TOKEN_TTL_MS_DEFAULT = 24 * 3600 * 1000;
export const JOIN_TOKEN_TTL_MS_MAX = 365 * 24 * 3600 * 1000;
const TOKEN_SECRET_BYTES = 24;

export interface JoinToken {
  readonly caDigest: string;
  readonly secret: Buffer;
}

/** `CFRTKN-1-<sha256 of the CA certificate, hex>-<random secret, base64url>`. */
export function formatJoinToken(token: JoinToken): string {
  return `${TOKEN_PREFIX}${token.caDigest}-${token.secret.toString('base64url')}`;
}

export function newJoinToken(caCertPem: string): JoinToken {
  return { caDigest: caDigest(caCertPem), secret: randomBytes(TOKEN_SECRET_BYTES) };
}

export function parseJoinToken(text: string): JoinToken {
  const match = /^CFRTKN-1-([0-9a-f]{64})-([A-Za-z0-9_-]{32})$/.exec(text.trim());
  if (match === null)
    throw new CryptoError(
      'JOIN_TOKEN_MALFORMED',
      `a join token looks like ${TOKEN_PREFIX}<64 hex digits>-<32 characters>; this one does not`,
    );
  return { caDigest: match[1]!, secret: Buffer.from(match[2]!, 'base64url') };
}

/** What the cluster stores of a token: a hash of its secret, never the secret. */
export function joinTokenHash(secret: Uint8Array): Buffer {
  return createHash('sha256').update('coffer join token v1').update(secret).digest();
}

/** Compares a presented secret with a stored hash in constant time. */
export function joinTokenMatches(secret: Uint8Array, storedHash: Uint8Array): boolean {
  const presented = joinTokenHash(secret);
  return storedHash.byteLength === presented.byteLength && timingSafeEqual(presented, storedHash);
}

/** A certification request (PKCS #10) is at most this many characters of PEM. */
export const CERTIFICATION_REQUEST_CHARS_MAX = 16 * 1024;

/**
 * A certification request (PKCS #10, PEM) for a key pair, signed with its private key: what a
 * client sends to log in, proving it holds the key the certificate will name.
 */
export function certificationRequest(key: { privatePem: string; publicPem: string }, commonName: string): string {
  // CertificationRequestInfo (RFC 2986): version 0, the subject, the key, no attributes; DER
  // written here, so a client logging in does not load forge.
  const info = der.sequence(
    der.smallInteger(0),
    der.commonNameOnly(commonName),
    createPublicKey(key.publicPem).export({ type: 'spki', format: 'der' }),
    der.context(0),
  );
  return pemOf('CERTIFICATE REQUEST', der.signed(info, createPrivateKey(key.privatePem)));
}

/**
 * The public key (SPKI PEM) of a certification request whose signature verifies with it: its
 * sender holds the private key. Only keys Coffer certifies are taken (publicKeyProblem), signed
 * with SHA-256 (PKCS #1 v1.5 for RSA; ECDSA with SHA-256, or SHA-384 for P-384). Throws
 * CERTIFICATE_INVALID saying what is wrong.
 */
export function publicKeyOfRequest(csrPem: string): string {
  if (csrPem.length > CERTIFICATION_REQUEST_CHARS_MAX)
    throw new CryptoError(
      'CERTIFICATE_INVALID',
      `the certification request is over ${CERTIFICATION_REQUEST_CHARS_MAX} characters`,
    );
  const notRequest = (cause?: unknown): CryptoError =>
    new CryptoError('CERTIFICATE_INVALID', 'the certification request is not a PKCS #10 request in PEM form', {
      cause,
    });
  const body =
    /^\s*-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----([A-Za-z0-9+/=\s]+)-----END (?:NEW )?CERTIFICATE REQUEST-----\s*$/.exec(
      csrPem,
    );
  if (body === null) throw notRequest();
  const requestDer = Buffer.from(body[1]!.replace(/\s+/g, ''), 'base64');
  const { asn1 } = forge();
  let request: Asn1;
  try {
    request = forgeAsn1(requestDer);
  } catch (error) {
    throw notRequest(error);
  }
  // CertificationRequest: the signed part (its bytes as sent), the algorithm, the signature.
  const outer = der.elementAt(requestDer, 0);
  const signedPart = outer === null ? null : der.elementAt(requestDer, outer.contentsAt);
  const parts = Array.isArray(request.value) ? request.value : [];
  const [info, algorithm, signatureBits] = parts;
  const infoParts = Array.isArray(info?.value) ? info.value : [];
  const algorithmOid = Array.isArray(algorithm?.value) ? algorithm.value[0] : undefined;
  if (
    outer === null ||
    signedPart === null ||
    parts.length !== 3 ||
    infoParts.length < 3 ||
    algorithmOid?.type !== asn1.Type.OID ||
    signatureBits?.type !== asn1.Type.BITSTRING ||
    typeof signatureBits.value !== 'string' ||
    !signatureBits.value.startsWith('\u0000')
  )
    throw notRequest();
  let key: KeyObject;
  try {
    const spki = Buffer.from(asn1.toDer(infoParts[2]!).getBytes(), 'binary');
    key = createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch (error) {
    throw new CryptoError('CERTIFICATE_INVALID', 'the certification request names no public key Coffer can read', {
      cause: error,
    });
  }
  const problem = publicKeyProblem(key);
  if (problem !== null) throw new CryptoError('CERTIFICATE_INVALID', `the certification request: ${problem}`);
  // Then the signature, by OpenSSL, over the signed part exactly as sent.
  let oid: string;
  try {
    oid = typeof algorithmOid.value === 'string' ? asn1.derToOid(algorithmOid.value) : '';
  } catch {
    oid = '';
  }
  const hash = REQUEST_SIGNATURE_HASHES[`${key.asymmetricKeyType} ${oid}`] ?? null;
  const signature = Buffer.from(signatureBits.value.slice(1), 'binary');
  if (hash === null || !verify(hash, requestDer.subarray(outer.contentsAt, signedPart.end), key, signature))
    throw new CryptoError('CERTIFICATE_INVALID', 'the certification request is not signed by the key it names');
  return key.export({ type: 'spki', format: 'pem' }).toString();
}
