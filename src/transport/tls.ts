import * as grpc from '@grpc/grpc-js';
import { experimental } from '@grpc/grpc-js';
import type { PeerCertificate } from 'node:tls';
import { identityOf, type Role } from '../crypto/pki.ts';

/** A manager's current TLS material (replaced on certificate renewal). */
export interface TlsMaterial {
  readonly caPem: string;
  readonly certPem: string;
  readonly keyPem: string;
}

/**
 * Server credentials that request a client certificate (verified against the cluster CA) without
 * requiring one, so joiners can reach the Join service; every other handler checks the caller's
 * identity itself. The identity can be replaced at run time (certificate renewal, no restart).
 */
export class RenewableServerCredentials {
  readonly credentials: grpc.ServerCredentials;
  readonly #caListeners = new Set<experimental.CaCertificateUpdateListener>();
  readonly #identityListeners = new Set<experimental.IdentityCertificateUpdateListener>();
  #material: TlsMaterial;

  constructor(material: TlsMaterial) {
    this.#material = material;
    const provider: experimental.CertificateProvider = {
      // grpc-js registers its own watcher only after adding these listeners: answer on the next tick.
      addCaCertificateListener: (listener) => {
        this.#caListeners.add(listener);
        queueMicrotask(() => listener({ caCertificate: Buffer.from(this.#material.caPem) }));
      },
      removeCaCertificateListener: (listener) => void this.#caListeners.delete(listener),
      addIdentityCertificateListener: (listener) => {
        this.#identityListeners.add(listener);
        queueMicrotask(() => listener({ certificate: Buffer.from(this.#material.certPem), privateKey: Buffer.from(this.#material.keyPem) }));
      },
      removeIdentityCertificateListener: (listener) => void this.#identityListeners.delete(listener),
    };
    this.credentials = experimental.createCertificateProviderServerCredentials(provider, provider, false);
  }

  update(material: TlsMaterial): void {
    this.#material = material;
    for (const listener of this.#caListeners) listener({ caCertificate: Buffer.from(material.caPem) });
    for (const listener of this.#identityListeners) listener({ certificate: Buffer.from(material.certPem), privateKey: Buffer.from(material.keyPem) });
  }
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
}

export function managerChannelCredentials(material: TlsMaterial | { caPem: string; certPem: null; keyPem: null }, expect: ManagerExpectation): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(
    Buffer.from(material.caPem),
    material.keyPem === null ? null : Buffer.from(material.keyPem),
    material.certPem === null ? null : Buffer.from(material.certPem),
    { checkServerIdentity: (_host: string, cert: PeerCertificate) => checkManager(cert, expect) },
  );
}

/**
 * Channel options to pass with managerChannelCredentials: a fixed TLS server name (SNI), since a
 * manager is identified by its certificate's fields, and Node warns about IP addresses as names.
 * Channelz (grpc-js's live introspection, which Coffer does not serve) is off: it tracks every
 * call. (Servers keep it on: see CofferNode.)
 */
export const MANAGER_CHANNEL_OPTIONS: grpc.ChannelOptions = { 'grpc.ssl_target_name_override': 'coffer-manager', 'grpc.enable_channelz': 0 };

function checkManager(cert: PeerCertificate, expect: ManagerExpectation): Error | undefined {
  try {
    const identity = identityOf(cert.raw);
    const role: Role = identity.role;
    if (identity.clusterId !== expect.clusterId) return new Error(`the server belongs to cluster ${identity.clusterId}, not ${expect.clusterId}`);
    if (role !== 'manager') return new Error(`the server's certificate is a ${role}'s, not a manager's`);
    if (expect.nodeId !== undefined && identity.id !== expect.nodeId) return new Error(`the server is manager ${identity.id}, not ${expect.nodeId}`);
    const keys = expect.keys?.() ?? [];
    if (keys.length > 0 && !keys.includes(identity.spki)) return new Error(`the server's certificate holds a key the cluster does not know for manager ${identity.id}`);
    return undefined;
  } catch (error) {
    return error instanceof Error ? error : new Error(String(error));
  }
}
