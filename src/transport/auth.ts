import { TLSSocket, type PeerCertificate } from 'node:tls';
import { identityOf, type Identity } from '../crypto/pki.ts';

/**
 * Who is calling: the identity in the client certificate, if the TLS layer verified it against the
 * cluster CA (chain and validity), and it names this cluster. Null otherwise: no certificate, one
 * from another CA, an expired one (the server requests certificates but lets such connections
 * through, so the join service can be reached before a joiner has one).
 */
export function callerIdentity(
  call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate } | null },
  clusterId: string,
): Identity | null {
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

/**
 * grpc-js asks the TLS socket for the peer certificate on every call (getAuthContext), and Node
 * builds a fresh object from the certificate each time: 15% of a leader's CPU under writes. The
 * certificate of a TLS connection does not change once the handshake is done, so the first
 * complete answer is kept per socket (a WeakMap: it goes with the socket). To keep that true, a
 * socket whose certificate was read no longer accepts renegotiation (only TLS 1.2 has it; HTTP/2
 * forbids it anyway). Only the summary form (`getPeerCertificate()`, not `(true)`) is kept.
 * Installed once per process, by the server.
 */
export function rememberPeerCertificates(): void {
  if (installed) return;
  installed = true;
  const original = TLSSocket.prototype.getPeerCertificate;
  const remembered = new WeakMap<TLSSocket, PeerCertificate>();
  TLSSocket.prototype.getPeerCertificate = function getPeerCertificate(this: TLSSocket, detailed?: boolean) {
    if (detailed === true) return original.call(this, true);
    const known = remembered.get(this);
    if (known !== undefined) return known;
    // Null once the socket has lost its handle, as the original returns it.
    const cert = original.call(this, false) as PeerCertificate | null;
    if (cert !== null && this.authorized && cert.raw !== undefined) {
      this.disableRenegotiation();
      remembered.set(this, cert);
    }
    return cert as PeerCertificate;
  } as typeof TLSSocket.prototype.getPeerCertificate;
}
let installed = false;
