import * as grpc from '@grpc/grpc-js';
import { createSecureContext, type PeerCertificate, type SecureContextOptions, type SecureVersion } from 'node:tls';
import { identityOf, type Identity, type Role } from '../crypto/pki.ts';

/** A manager's current TLS material (replaced on certificate renewal). */
export interface TlsMaterial {
  readonly caPem: string;
  readonly certPem: string;
  readonly keyPem: string;
}

/**
 * The oldest TLS version Coffer speaks, on its server and on every channel it opens. Node's
 * default is the same, but a process flag (--tls-min-v1.0) or tls.DEFAULT_MIN_VERSION can lower
 * it; a secret store does not follow them.
 */
export const TLS_MIN_VERSION: SecureVersion = 'TLSv1.2';

/**
 * The suites Coffer offers and accepts. TLS 1.3: all three of its suites (AEAD, forward secrecy
 * by construction). TLS 1.2: only ECDHE key exchange (forward secrecy) with AES-GCM or
 * ChaCha20-Poly1305 (AEAD: no CBC, no SHA-1 MAC, no static RSA key exchange, no finite-field DHE).
 * Coffer's keys are ECDSA (P-256); the RSA suites serve a cluster whose CA is from before, or a
 * client's own RSA key.
 * The TLS 1.3 names must stay in the list: Node turns TLS 1.3 off when `ciphers` names none.
 * grpc-js reads suites only from GRPC_SSL_CIPHER_SUITES (at import), so they are passed explicitly.
 */
export const TLS_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
].join(':');

const TLS_POLICY = { minVersion: TLS_MIN_VERSION, ciphers: TLS_CIPHERS } as const satisfies SecureContextOptions;

function serverContext(material: TlsMaterial): SecureContextOptions {
  return { ca: material.caPem, cert: material.certPem, key: material.keyPem, ...TLS_POLICY };
}

/**
 * grpc-js server credentials with Coffer's TLS policy in both places grpc-js passes options to
 * Node: the server's constructor options, and the secure-context options it hands to
 * setSecureContext when they are replaced. The second matters: setSecureContext resets every
 * option it is not given (ciphers, minVersion) to Node's defaults, so grpc-js's own certificate
 * provider credentials (which pass only ca, cert and key) would lose the policy at the first
 * certificate. The client certificate is requested (verified against the CA) but not required.
 */
class PolicyServerCredentials extends grpc.ServerCredentials {
  constructor(material: TlsMaterial) {
    super({ requestCert: true, rejectUnauthorized: false, ...TLS_POLICY }, serverContext(material));
  }

  replace(material: TlsMaterial): void {
    this.updateSecureContextOptions(serverContext(material));
  }

  override _equals(other: grpc.ServerCredentials): boolean {
    return other === this;
  }
}

/**
 * Server credentials that request a client certificate (verified against the cluster CA) without
 * requiring one, so joiners can reach the Join service; every other handler checks the caller's
 * identity itself. The identity can be replaced at run time (certificate renewal, no restart):
 * grpc-js gives the listening servers the new secure context; connections already open keep theirs.
 */
export class RenewableServerCredentials {
  readonly #credentials: PolicyServerCredentials;

  constructor(material: TlsMaterial) {
    this.#credentials = new PolicyServerCredentials(material);
  }

  get credentials(): grpc.ServerCredentials {
    return this.#credentials;
  }

  update(material: TlsMaterial): void {
    this.#credentials.replace(material);
  }
}

/**
 * Channel credentials with Coffer's TLS policy (every channel Coffer opens goes through here):
 * trusting `caPem` (Node's default roots when null, for a channel that does not verify), with a
 * client certificate when one is given.
 */
export function policyChannelCredentials(
  material: { caPem: string | null; certPem: string | null; keyPem: string | null },
  verify: grpc.VerifyOptions,
): grpc.ChannelCredentials {
  if ((material.certPem === null) !== (material.keyPem === null))
    throw new TypeError('a client certificate needs its key, and a key its certificate');
  const context = createSecureContext({
    ...(material.caPem === null ? {} : { ca: material.caPem }),
    ...(material.certPem === null || material.keyPem === null ? {} : { cert: material.certPem, key: material.keyPem }),
    ...TLS_POLICY,
  });
  return grpc.credentials.createFromSecureContext(context, verify);
}

/**
 * Client credentials for dialing a manager: the server must present a certificate from the
 * cluster CA naming this cluster (O) and the manager role (OU), and, when known, the expected
 * node id (CN). Host names are not what identifies a manager here; the certificate fields are.
 */
export interface ManagerExpectation {
  readonly clusterId: string;
  /** The manager's node id, when a particular one is dialled. */
  readonly nodeId?: string;
  /**
   * The keys (SPKI digests) that manager's certificate may hold, as the caller knows them when
   * the handshake happens; empty or absent when unknown. A certificate of the right CA and id but
   * another key (minted with a stolen CA key) is refused.
   */
  readonly keys?: () => readonly string[];
  /** A further check of the manager's identity (null: accepted), e.g. a client's list of removed managers. */
  readonly check?: (identity: Identity) => string | null;
}

export function managerChannelCredentials(
  material: TlsMaterial | { caPem: string; certPem: null; keyPem: null },
  expect: ManagerExpectation,
): grpc.ChannelCredentials {
  return policyChannelCredentials(material, {
    checkServerIdentity: (_host: string, cert: PeerCertificate) => checkManager(cert, expect),
  });
}

/**
 * Channel options to pass with managerChannelCredentials: a fixed TLS server name (SNI), since a
 * manager is identified by its certificate's fields, and Node warns about IP addresses as names.
 * Channelz (grpc-js's live introspection, which Coffer does not serve) is off: it tracks every
 * call. (Servers keep it on: see CofferNode.)
 */
export const MANAGER_CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.ssl_target_name_override': 'coffer-manager',
  'grpc.enable_channelz': 0,
};

function checkManager(cert: PeerCertificate, expect: ManagerExpectation): Error | undefined {
  try {
    const identity = identityOf(cert.raw);
    const role: Role = identity.role;
    if (identity.clusterId !== expect.clusterId)
      return new Error(`the server belongs to cluster ${identity.clusterId}, not ${expect.clusterId}`);
    if (role !== 'manager') return new Error(`the server's certificate is a ${role}'s, not a manager's`);
    if (expect.nodeId !== undefined && identity.id !== expect.nodeId)
      return new Error(`the server is manager ${identity.id}, not ${expect.nodeId}`);
    const keys = expect.keys?.() ?? [];
    if (keys.length > 0 && !keys.includes(identity.spki))
      return new Error(`the server's certificate holds a key the cluster does not know for manager ${identity.id}`);
    const refusal = expect.check?.(identity) ?? null;
    return refusal === null ? undefined : new Error(refusal);
  } catch (error) {
    return error instanceof Error ? error : new Error(String(error));
  }
}
