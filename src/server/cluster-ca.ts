import type { CaRecord, ClusterState } from '../state/cluster-state.ts';
import { createCa, crossSignCa, issuedBy, type KeyAndCertificate } from '../crypto/pki.ts';

/** A CA this manager can sign with: the replicated one, or before it is installed, its own. */
export interface SigningCa extends KeyAndCertificate {
  readonly gen: number;
}

/**
 * The cluster's CAs as one manager sees them. The replicated state holds them (sealed in the log
 * and in snapshots like every other secret of the state), so a rotation reaches every manager at
 * one index. Until the first leader installs the CA made at init, a manager falls back to what
 * it has: the CA certificate in its data directory and, on the first manager, the CA key in its
 * key store. A joiner no longer receives the CA key in the join reply; it gets it with the state.
 */
export class ClusterCa {
  readonly #cluster: ClusterState;
  readonly #fallback: { readonly certPem: string; readonly keyPem: string | null };

  constructor(cluster: ClusterState, fallback: { certPem: string; keyPem: string | null }) {
    this.#cluster = cluster;
    this.#fallback = fallback;
  }

  /** The CA to sign with now (the newest), or null if this manager has none yet. */
  signing(): SigningCa | null {
    const active = this.#cluster.activeCa;
    if (active !== null) return { gen: active.gen, certPem: active.certPem, keyPem: active.keyPem };
    return this.#fallback.keyPem === null
      ? null
      : { gen: 1, certPem: this.#fallback.certPem, keyPem: this.#fallback.keyPem };
  }

  /** The active CA's certificate: what a join token pins and a joiner trusts. */
  activeCertPem(): string {
    return this.#cluster.activeCa?.certPem ?? this.#fallback.certPem;
  }

  /** The CA made at init, for the first leader to install (null once installed, or on a joiner). */
  toInstall(): KeyAndCertificate | null {
    if (this.#cluster.cas.length > 0 || this.#fallback.keyPem === null) return null;
    return { certPem: this.#fallback.certPem, keyPem: this.#fallback.keyPem };
  }

  /** Every CA trusted now, one PEM after the other (the active one first). */
  trustPem(): string {
    const cas = this.#cluster.cas;
    return cas.length === 0
      ? this.#fallback.certPem
      : [...cas]
          .reverse()
          .map((c) => c.certPem.trim())
          .join('\n') + '\n';
  }

  /**
   * The chain a manager presents: its certificate, then, while an older CA is still trusted and
   * the certificate is the newest CA's, that CA cross-signed by the older one (so holders of the
   * old CA file verify it).
   */
  chainPem(leafPem: string): string {
    const cas = this.#cluster.cas;
    const active = cas[cas.length - 1];
    if (cas.length < 2 || active === undefined || active.crossPem === null || !issuedBy(leafPem, active.certPem))
      return leafPem;
    return `${leafPem.trim()}\n${active.crossPem.trim()}\n`;
  }

  /** The generation of the trusted CA that issued `certPem`, or null if none did. */
  generationOf(certPem: string): number | null {
    for (const ca of this.#cluster.cas) if (issuedBy(certPem, ca.certPem)) return ca.gen;
    if (this.#cluster.cas.length === 0 && issuedBy(certPem, this.#fallback.certPem)) return 1;
    return null;
  }
}

/** The next CA generation: a new key and certificate, cross-signed by the active CA. */
export async function nextCa(clusterId: string, active: SigningCa, nowMs: number): Promise<CaRecord> {
  const gen = active.gen + 1;
  const made = createCa(clusterId, nowMs, gen);
  return { gen, certPem: made.certPem, keyPem: made.keyPem, crossPem: crossSignCa(made.certPem, active) };
}
