import { X509Certificate } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { certificationRequest, newLeafKey } from '../crypto/pki.ts';
import { services } from '../transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../transport/tls.ts';
import { ClientError, failoverError, safeToRetry } from './client.ts';

/** The proof of a login: a token (jwt and oidc roles) or an LDAP username and password, and a TOTP code where the role asks. */
export interface LoginProof {
  readonly role: string;
  readonly jwt?: string;
  readonly username?: string;
  readonly password?: string;
  readonly totpCode?: string;
  /** Ask for a shorter certificate than the role's (seconds). */
  readonly ttlSeconds?: number;
}

/** What a login gives: the key (made here, never sent) and its certificate, for a CofferClient. */
export interface LoginResult {
  readonly identity: string;
  readonly policies: readonly string[];
  readonly keyPem: string;
  readonly certificatePem: string;
  readonly caCertificatePem: string;
  readonly serial: string;
  readonly notAfterMs: number;
  /** The certificate's life as granted (seconds), to renew by this machine's clock. */
  readonly ttlSeconds: number;
}

/** The cluster id a CA certificate names (its O), which every manager's certificate must carry too. */
export function clusterIdOfCa(caPem: string): string {
  const subject = new X509Certificate(caPem).subject;
  const o = subject.split('\n').find((line) => line.startsWith('O='));
  if (o === undefined) throw new TypeError('the CA certificate names no cluster (O)');
  return o.slice(2);
}

/**
 * Logs in (Auth.Login, no certificate needed): makes a key here, sends a certification request
 * signed with it and the proof, and returns the key with the certificate the cluster issued. The
 * managers are checked against `caPem` (the cluster CA) as every client checks them. Managers that
 * cannot be reached are skipped; any manager's answer is the outcome.
 */
export async function login(
  options: { readonly addresses: readonly string[]; readonly caPem: string; readonly deadlineMs?: number },
  proof: LoginProof,
): Promise<LoginResult> {
  if (options.addresses.length === 0)
    throw new TypeError('at least one manager address is needed (COFFER_ADDR or --addr)');
  const key = newLeafKey();
  const csrPem = certificationRequest(key, 'coffer login');
  const credentials = managerChannelCredentials(
    { caPem: options.caPem, certPem: null, keyPem: null },
    { clusterId: clusterIdOfCa(options.caPem) },
  );
  const request = {
    role: proof.role,
    csrPem,
    jwt: proof.jwt ?? '',
    username: proof.username ?? '',
    password: proof.password ?? '',
    totpCode: proof.totpCode ?? '',
    ttlSeconds: proof.ttlSeconds ?? 0,
  };
  const tried: Array<{ address: string; error: grpc.ServiceError }> = [];
  for (const address of options.addresses) {
    const client = new (services().Auth.Client)(address, credentials, MANAGER_CHANNEL_OPTIONS);
    try {
      const reply = await new Promise<Record<string, unknown>>((resolve, reject) =>
        (
          client as unknown as Record<
            string,
            (
              r: object,
              o: grpc.CallOptions,
              cb: (e: grpc.ServiceError | null, r?: Record<string, unknown>) => void,
            ) => void
          >
        )['login']!.call(
          client,
          request,
          { deadline: Date.now() + (options.deadlineMs ?? 15_000) },
          (error, response) => (error === null ? resolve(response!) : reject(error)),
        ),
      );
      return {
        identity: reply['identity'] as string,
        policies: reply['policies'] as string[],
        keyPem: key.privatePem,
        certificatePem: reply['certificatePem'] as string,
        caCertificatePem: reply['caCertificatePem'] as string,
        serial: reply['serial'] as string,
        notAfterMs: Number(reply['notAfterMs']),
        ttlSeconds: Number(reply['ttlSeconds']),
      };
    } catch (error) {
      const failed = error as grpc.ServiceError;
      tried.push({ address, error: failed });
      // Twice is harmless (a second certificate for a key made here, the first never seen), so
      // any manager that failed to answer is passed over for the next.
      if (!safeToRetry(failed, true)) throw ClientError.from(failed);
    } finally {
      client.close();
    }
  }
  throw failoverError(tried);
}
