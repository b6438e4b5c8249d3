import { generateKeyPair, generateKeyPairSync, type KeyObject } from 'node:crypto';

/** A key pair as PEM: the private key (PKCS#8) and its public half (SPKI). */
export interface KeyPairPem {
  readonly privatePem: string;
  readonly publicPem: string;
}

/** The CA's RSA size: it signs for ten years (NIST SP 800-57: 3072 bits for 128-bit security). */
export const CA_KEY_BITS = 3072;

/**
 * Leaf keys (managers, identities, logins) are ECDSA on P-256: 128-bit security like the CA's,
 * made in about 0.1 ms where an RSA 2048 key took 0.1-0.7 s idle and up to 2 s beside a loaded
 * cluster (a joining manager waited for it), and each TLS handshake signs with it in a fraction
 * of RSA's time.
 */
export const LEAF_KEY_CURVE = 'prime256v1';

function pem(privateKey: KeyObject, publicKey: KeyObject): KeyPairPem {
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

/** A new RSA key, made on this thread (a command line's; a running manager uses newRsaKeyAsync). */
export function newRsaKey(bits: number): KeyPairPem {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: bits });
  return pem(privateKey, publicKey);
}

/**
 * A new RSA key, made in the thread pool: finding the primes takes up to seconds for 3072 bits on
 * a slow core, during which a manager's loop would send no heartbeat.
 */
export function newRsaKeyAsync(bits: number): Promise<KeyPairPem> {
  return new Promise((resolve, reject) =>
    generateKeyPair('rsa', { modulusLength: bits }, (error, publicKey, privateKey) =>
      error === null ? resolve(pem(privateKey, publicKey)) : reject(error),
    ),
  );
}

/** A new leaf key (ECDSA P-256). */
export function newLeafKeyPair(): KeyPairPem {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: LEAF_KEY_CURVE });
  return pem(privateKey, publicKey);
}
