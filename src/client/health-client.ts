import * as grpc from '@grpc/grpc-js';
import { identityOf } from '../crypto/pki.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../transport/tls.ts';

/** A health check's deadline unless given: a manager that takes longer is not healthy. */
export const HEALTH_CHECK_TIMEOUT_MS = 3000;

export type ServingStatus = 'UNKNOWN' | 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN';

export type HealthAnswer =
  | { readonly status: ServingStatus }
  | { readonly status: 'UNREACHABLE'; readonly detail: string };

/**
 * grpc.health.v1.Health/Check, encoded by hand. A container healthcheck starts this client every
 * few seconds on every manager; loading health.proto through @grpc/proto-loader (protobufjs)
 * cost each start about 100 ms of CPU, more than the check itself. The two messages are one
 * field each (health.proto in the grpc-health-check package), and a test holds this codec to
 * the library's.
 */
const CHECK_PATH = '/grpc.health.v1.Health/Check';
/** HealthCheckResponse.ServingStatus, by wire number. */
const SERVING_STATUSES: readonly ServingStatus[] = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'];
/** A service name we ask about: one byte of length prefix is enough (we ask about "" only). */
const SERVICE_NAME_BYTES_MAX = 127;
/** A response larger than this is not a HealthCheckResponse from a manager. */
const RESPONSE_BYTES_MAX = 1024;

/** HealthCheckRequest { string service = 1; }; proto3 leaves out an empty string. */
export function encodeHealthCheckRequest(request: { service: string }): Buffer {
  const name = Buffer.from(request.service, 'utf8');
  if (name.byteLength > SERVICE_NAME_BYTES_MAX)
    throw new TypeError(`a health service name is at most ${SERVICE_NAME_BYTES_MAX} bytes`);
  if (name.byteLength === 0) return Buffer.alloc(0);
  return Buffer.concat([Buffer.from([0x0a, name.byteLength]), name]);
}

/**
 * HealthCheckResponse { ServingStatus status = 1; }: the last `status` wins (protobuf's rule for a
 * repeated scalar field), unknown fields are skipped, an absent status is UNKNOWN (proto3's
 * default), and a status number outside the enum is UNKNOWN too. Throws on bytes that are not a
 * protobuf message: grpc-js then fails the call (INTERNAL), which the check reports.
 */
export function decodeHealthCheckResponse(bytes: Buffer): { status: ServingStatus } {
  if (bytes.byteLength > RESPONSE_BYTES_MAX)
    throw new Error(`a health response is at most ${RESPONSE_BYTES_MAX} bytes; this one is ${bytes.byteLength}`);
  let at = 0;
  const varint = (): number => {
    let value = 0;
    for (let shift = 0; shift < 64; shift += 7) {
      if (at >= bytes.byteLength) throw new Error('a health response ends inside a varint');
      const byte = bytes[at++]!;
      // Bits past 2^53 are dropped: only the enum's small numbers and lengths under 1 KiB matter.
      if (shift < 53) value += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return value;
    }
    throw new Error('a health response holds a varint longer than 10 bytes');
  };
  let status: ServingStatus = 'UNKNOWN';
  while (at < bytes.byteLength) {
    const tag = varint();
    const field = Math.floor(tag / 8);
    const wireType = tag % 8;
    if (field === 0) throw new Error('a health response holds field number 0');
    if (wireType === 0) {
      const value = varint();
      if (field === 1) status = SERVING_STATUSES[value] ?? 'UNKNOWN';
    } else if (wireType === 1 || wireType === 5) {
      at += wireType === 1 ? 8 : 4;
    } else if (wireType === 2) {
      const length = varint(); // not `at += varint()`: that reads `at` before varint() moves it
      at += length;
    } else {
      throw new Error(`a health response holds wire type ${wireType}, which it has no use for`);
    }
    if (at > bytes.byteLength) throw new Error('a health response ends inside a field');
  }
  return { status };
}

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
  const client = new grpc.Client(address, managerChannelCredentials(pem, { clusterId }), MANAGER_CHANNEL_OPTIONS);
  return new Promise((resolve) => {
    client.makeUnaryRequest(
      CHECK_PATH,
      encodeHealthCheckRequest,
      decodeHealthCheckResponse,
      { service: '' },
      { deadline: Date.now() + timeoutMs },
      (error, response) => {
        client.close();
        if (error !== null && error !== undefined)
          resolve({ status: 'UNREACHABLE', detail: `${grpc.status[error.code] ?? error.code}: ${error.details}` });
        else resolve({ status: response!.status });
      },
    );
  });
}
