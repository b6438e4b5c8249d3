import { generateKeyPair, generateKeyPairSync, type KeyObject } from 'node:crypto';

/** An RSA key pair as PEM: the private key (PKCS#8) and its public half (SPKI). */
export interface RsaKeyPem {
  readonly privatePem: string;
  readonly publicPem: string;
}

/** RSA sizes: the CA signs for ten years; leaves live 90 days to a year (NIST SP 800-57: 2048 until 2030). */
export const CA_KEY_BITS = 3072;
export const LEAF_KEY_BITS = 2048;

function pem(privateKey: KeyObject, publicKey: KeyObject): RsaKeyPem {
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

/** A new RSA key, made on this thread (a command line's; a running manager uses newRsaKeyAsync). */
export function newRsaKey(bits: number): RsaKeyPem {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: bits });
  return pem(privateKey, publicKey);
}

/**
 * A new RSA key, made in the thread pool: finding the primes takes 0.1-0.4 s for 2048 bits and up
 * to seconds for 3072 on a slow core, during which a manager's loop would send no heartbeat.
 */
export function newRsaKeyAsync(bits: number): Promise<RsaKeyPem> {
  return new Promise((resolve, reject) =>
    generateKeyPair('rsa', { modulusLength: bits }, (error, publicKey, privateKey) =>
      error === null ? resolve(pem(privateKey, publicKey)) : reject(error),
    ),
  );
}

let early: Promise<RsaKeyPem> | null = null;

/**
 * Starts making a joining manager's leaf key now, in the thread pool: the command line calls it
 * before it loads the rest of its modules (about 0.3 s), so the key is made meanwhile instead of
 * after (src/cli/run.ts). Idempotent.
 */
export function startLeafKeyEarly(): void {
  if (early !== null) return;
  early = newRsaKeyAsync(LEAF_KEY_BITS);
  // A failure is the taker's to see; until then it is not an unhandled rejection.
  early.catch(() => undefined);
}

/** The leaf key startLeafKeyEarly began (each one is taken once), or a new one. */
export function takeLeafKey(): Promise<RsaKeyPem> {
  const key = early ?? newRsaKeyAsync(LEAF_KEY_BITS);
  early = null;
  return key;
}
