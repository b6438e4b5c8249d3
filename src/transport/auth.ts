import type { PeerCertificate } from 'node:tls';
import { identityOf, type Identity } from '../crypto/pki.ts';

/**
 * Who is calling: the identity in the client certificate, if the TLS layer verified it against the
 * cluster CA (chain and validity), and it names this cluster. Null otherwise: no certificate, one
 * from another CA, an expired one (the server requests certificates but lets such connections
 * through, so the join service can be reached before a joiner has one).
 */
export function callerIdentity(call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate } | null }, clusterId: string): Identity | null {
  const cert = call.getAuthContext()?.sslPeerCertificate;
  if (cert?.raw === undefined) return null;
  // Parsing a certificate costs about as much as the rest of a request: the identity is read once
  // per certificate (by its SHA-256 fingerprint, which TLS already computed) and remembered.
  const key = cert.fingerprint256;
  const known = key === undefined ? undefined : identities.get(key);
  let identity: Identity | null;
  if (known !== undefined) identity = known;
  else {
    try {
      identity = identityOf(cert.raw);
    } catch {
      identity = null;
    }
    if (key !== undefined) {
      if (identities.size >= IDENTITIES_CACHED_MAX) identities.delete(identities.keys().next().value!);
      identities.set(key, identity);
    }
  }
  return identity !== null && identity.clusterId === clusterId ? identity : null;
}

/** Identities of certificates seen, by fingerprint (oldest dropped first beyond the bound). */
const identities = new Map<string, Identity | null>();
const IDENTITIES_CACHED_MAX = 4096;
