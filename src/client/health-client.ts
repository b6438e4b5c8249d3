import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { identityOf } from '../crypto/pki.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../transport/tls.ts';

/** A health check's deadline unless given: a manager that takes longer is not healthy. */
export const HEALTH_CHECK_TIMEOUT_MS = 3000;

export type HealthAnswer =
  | { readonly status: 'SERVING' | 'NOT_SERVING' | 'UNKNOWN' | 'SERVICE_UNKNOWN' }
  | { readonly status: 'UNREACHABLE'; readonly detail: string };

const HealthClient = grpc.makeClientConstructor(healthService as unknown as grpc.ServiceDefinition, 'Health');

/**
 * Asks one manager `grpc.health.v1.Health/Check` for its overall health, over mutual TLS with a
 * certificate of the cluster CA (any identity: health needs no policy). Never throws: a manager
 * that cannot be reached, or refuses, is UNREACHABLE with the reason.
 */
export function checkHealth(
  address: string,
  pem: { caPem: string; certPem: string; keyPem: string },
  timeoutMs = HEALTH_CHECK_TIMEOUT_MS,
): Promise<HealthAnswer> {
  const clusterId = identityOf(pem.certPem).clusterId;
  const client = new HealthClient(address, managerChannelCredentials(pem, { clusterId }), MANAGER_CHANNEL_OPTIONS);
  return new Promise((resolve) => {
    (
      client as unknown as {
        check(r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void): void;
      }
    ).check({ service: '' }, { deadline: Date.now() + timeoutMs }, (error, response) => {
      client.close();
      if (error !== null)
        resolve({ status: 'UNREACHABLE', detail: `${grpc.status[error.code] ?? error.code}: ${error.details}` });
      else resolve({ status: response!.status as 'SERVING' | 'NOT_SERVING' | 'UNKNOWN' | 'SERVICE_UNKNOWN' });
    });
  });
}
