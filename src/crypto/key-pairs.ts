import { generateKeyPairSync, type KeyObject } from 'node:crypto';

/** A key pair as PEM: the private key (PKCS#8) and its public half (SPKI). */
export interface KeyPairPem {
  readonly privatePem: string;
  readonly publicPem: string;
}

/**
 * Keys Coffer makes (the CA's, managers', identities', logins') are ECDSA on P-256: 128-bit
 * security, as RSA 3072 (NIST SP 800-57), made in about 0.1 ms where an RSA 2048 key took
 * 0.1-0.7 s idle and up to 2 s beside a loaded cluster (a joining manager waited for it), and the
 * CA's RSA 3072 up to seconds. Each TLS handshake signs with a leaf key in a fraction of RSA's time.
 */
export const KEY_CURVE = 'prime256v1';

function pem(privateKey: KeyObject, publicKey: KeyObject): KeyPairPem {
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

/** A new key pair (ECDSA P-256), for the CA or a leaf certificate. */
export function newKeyPair(): KeyPairPem {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: KEY_CURVE });
  return pem(privateKey, publicKey);
}
