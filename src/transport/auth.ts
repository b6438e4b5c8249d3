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
  try {
    const identity = identityOf(cert.raw);
    return identity.clusterId === clusterId ? identity : null;
  } catch {
    return null;
  }
}
