import { identityOf, issuedBy, newLeafKey, signCertificate } from '../crypto/pki.ts';
import type { Manager } from '../manager/manager.ts';
import type { AppliedResult } from '../state/applied-state.ts';
import { ClusterState } from '../state/cluster-state.ts';
import { RenewableServerCredentials, type TlsMaterial } from '../transport/tls.ts';
import type { Logger } from '../util/logger.ts';
import type { ClusterCa } from './cluster-ca.ts';
import type { StateCommand } from './context.ts';
import { DataDir } from '../manager/data-dir.ts';
import { managerCertificateHosts } from './manager-hosts.ts';
import { TLS_CERT_SECRET, TLS_KEY_SECRET } from './node-config.ts';

/** Renew a manager certificate once less than this share of its lifetime is left. */
export const CERT_RENEW_REMAINING_SHARE = 1 / 3;

export interface ManagerCertificateOptions {
  readonly dataDir: string;
  readonly nodeId: number;
  readonly clusterId: string;
  readonly advertise: string;
  /** Names the certificate carries besides the advertise host (`--san`), kept at every renewal. */
  readonly extraHosts: readonly string[];
  readonly validityDays: number;
  readonly cas: ClusterCa;
  readonly cluster: ClusterState;
  readonly manager: Pick<Manager<AppliedResult>, 'raftStatus' | 'setLocalSecrets'>;
  /** The write path (the new key is recorded in the replicated state before it is used). */
  propose(command: StateCommand): Promise<unknown>;
  /** Called once a new certificate is in use: links made with the old one are redone. */
  onRenewed(): void;
  /** The cluster's wall-clock time (cluster-clock.ts). */
  readonly now: () => number;
  readonly log: Logger;
}

/**
 * This manager's own certificate and key, and the TLS material built from them: the CAs it
 * trusts and the chain it presents follow the replicated CAs; the certificate is renewed when a
 * third of its lifetime is left or when the cluster moved to a new CA; its key is recorded in the
 * replicated state, where peers look it up (peer-trust.ts).
 */
export class ManagerCertificate {
  readonly #options: ManagerCertificateOptions;
  #leafPem: string;
  #keyPem: string;
  #tls: TlsMaterial;
  readonly credentials: RenewableServerCredentials;

  constructor(options: ManagerCertificateOptions, own: { certPem: string; keyPem: string }) {
    this.#options = options;
    this.#leafPem = own.certPem;
    this.#keyPem = own.keyPem;
    this.#tls = this.#material();
    this.credentials = new RenewableServerCredentials(this.#tls);
  }

  /** The CAs this manager trusts now, its certificate with the chain to present, its key. */
  get tls(): TlsMaterial {
    return this.#tls;
  }

  /** This manager's certificate alone. */
  get leafPem(): string {
    return this.#leafPem;
  }

  #material(): TlsMaterial {
    const cas = this.#options.cas;
    return { caPem: cas.trustPem(), certPem: cas.chainPem(this.#leafPem), keyPem: this.#keyPem };
  }

  /** Follows the replicated CAs: a rotation or retirement changes what this manager trusts and presents. */
  async followCas(): Promise<void> {
    const material = this.#material();
    if (material.caPem === this.#tls.caPem && material.certPem === this.#tls.certPem) return;
    this.#tls = material;
    this.credentials.update(material);
    await new DataDir(this.#options.dataDir).writeTlsFiles(material.caPem, this.#leafPem);
    this.#options.log.info(
      { event: 'trust-changed', cas: this.#options.cluster.cas.map((c) => c.gen) },
      'the cluster CAs changed: this manager trusts and presents the new set',
    );
  }

  /** This manager's own key in the replicated state (the first manager's, a restored one's), so peers admit it. */
  async recordOwnKey(): Promise<void> {
    const status = this.#options.manager.raftStatus();
    if (status === null || status.lead === 0) return;
    const spki = identityOf(this.#leafPem).spki;
    if ((this.#options.cluster.memberKeys.get(this.#options.nodeId) ?? []).some((k) => k.key === spki)) return;
    const caGen = this.#options.cas.generationOf(this.#leafPem);
    if (caGen === null) return;
    await this.#options.propose(
      ClusterState.encode({ kind: 'cluster.member-key', id: this.#options.nodeId, key: { key: spki, caGen } }),
    );
  }

  /**
   * A new key and certificate when a third of the lifetime is left, or when the cluster moved to
   * a new CA. The new key is recorded in the replicated state first (peers admit both while the
   * switch happens), then stored with its certificate in one atomic key-store write, then used.
   */
  async maybeRenew(): Promise<void> {
    const o = this.#options;
    const signing = o.cas.signing();
    if (signing === null) return;
    const identity = identityOf(this.#leafPem);
    const now = o.now();
    const lifetime = identity.notAfterMs - identity.notBeforeMs;
    const expiring = identity.notAfterMs - now <= lifetime * CERT_RENEW_REMAINING_SHARE;
    const underOldCa = o.cluster.cas.length > 0 && !issuedBy(this.#leafPem, signing.certPem);
    if (!expiring && !underOldCa) return;
    if ((o.manager.raftStatus()?.lead ?? 0) === 0) return;
    const key = newLeafKey(); // ECDSA P-256: about 0.1 ms, on the loop
    const certPem = signCertificate(signing, key.publicPem, {
      id: String(o.nodeId),
      role: 'manager',
      clusterId: o.clusterId,
      nowMs: now,
      // The names the first certificate had (init's or the leader's at join): a client that
      // checks host names must not lose this manager when its certificate is renewed.
      hosts: managerCertificateHosts(o.advertise, o.extraHosts),
      validityDays: o.validityDays,
    });
    const renewed = identityOf(certPem);
    await o.propose(
      ClusterState.encode({ kind: 'cluster.member-key', id: o.nodeId, key: { key: renewed.spki, caGen: signing.gen } }),
    );
    // Key and certificate in one atomic write; node.crt is a readable copy, not what starts the server.
    await o.manager.setLocalSecrets(
      new Map([
        [TLS_KEY_SECRET, Buffer.from(key.privatePem)],
        [TLS_CERT_SECRET, Buffer.from(certPem)],
      ]),
    );
    await new DataDir(o.dataDir).writeTlsFiles(o.cas.trustPem(), certPem);
    this.#leafPem = certPem;
    this.#keyPem = key.privatePem;
    this.#tls = this.#material();
    this.credentials.update(this.#tls);
    o.onRenewed();
    o.log.info(
      {
        event: 'certificate-renewed',
        serial: renewed.serial,
        caGeneration: signing.gen,
        notAfter: new Date(renewed.notAfterMs).toISOString(),
      },
      "renewed this manager's certificate",
    );
  }
}
