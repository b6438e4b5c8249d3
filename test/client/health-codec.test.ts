import { test } from 'node:test';
import assert from 'node:assert/strict';
import { service as healthService } from 'grpc-health-check';
import {
  decodeHealthCheckResponse,
  encodeHealthCheckRequest,
  type ServingStatus,
} from '../../src/client/health-client.ts';

// The health client encodes grpc.health.v1 by hand (loading the .proto cost every healthcheck
// about 100 ms of CPU); grpc-health-check's codec, made from the .proto, is the reference.
const check = (healthService as unknown as Record<string, Record<string, (v: unknown) => Buffer>>)['Check']!;
const referenceRequest = (service: string): Buffer => check['requestSerialize']!({ service });
const referenceResponse = (status: ServingStatus): Buffer => check['responseSerialize']!({ status });
const referenceDecodeRequest = (bytes: Buffer): unknown =>
  (check['requestDeserialize'] as unknown as (b: Buffer) => unknown)(bytes);

test('a HealthCheckRequest is encoded as the .proto encodes it: the overall service (empty, left out as proto3 allows), and a named one', () => {
  for (const service of ['', 'coffer', 'grpc.health.v1.Health', 'é'.repeat(63)])
    assert.deepEqual(
      referenceDecodeRequest(encodeHealthCheckRequest({ service })),
      { service },
      JSON.stringify(service),
    );
  for (const service of ['coffer', 'grpc.health.v1.Health', 'é'.repeat(63)])
    assert.deepEqual(encodeHealthCheckRequest({ service }), referenceRequest(service), service);
  assert.deepEqual(encodeHealthCheckRequest({ service: '' }), Buffer.alloc(0));
  assert.throws(() => encodeHealthCheckRequest({ service: 'x'.repeat(128) }), TypeError);
});

test('every ServingStatus the .proto encodes decodes to its name; an absent status is UNKNOWN, as proto3 says', () => {
  for (const status of ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'] as const)
    assert.deepEqual(decodeHealthCheckResponse(referenceResponse(status)), { status }, status);
  assert.deepEqual(decodeHealthCheckResponse(Buffer.alloc(0)), { status: 'UNKNOWN' });
});

test('a response decodes as protobuf says: unknown fields of every wire type skipped, the last status wins, a number outside the enum is UNKNOWN', () => {
  const unknownFields = Buffer.from([
    0x10,
    0x96,
    0x01, // field 2, varint 150
    0x19,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8, // field 3, 64-bit
    0x22,
    0x03,
    0x61,
    0x62,
    0x63, // field 4, 3 bytes
    0x2d,
    1,
    2,
    3,
    4, // field 5, 32-bit
  ]);
  assert.deepEqual(decodeHealthCheckResponse(Buffer.concat([unknownFields, Buffer.from([0x08, 0x01])])), {
    status: 'SERVING',
  });
  assert.deepEqual(decodeHealthCheckResponse(Buffer.from([0x08, 0x01, 0x08, 0x02])), { status: 'NOT_SERVING' });
  assert.deepEqual(decodeHealthCheckResponse(Buffer.from([0x08, 0x07])), { status: 'UNKNOWN' });
  assert.deepEqual(decodeHealthCheckResponse(Buffer.from([0x08, 0x81, 0x80, 0x80, 0x80, 0x00])), {
    status: 'SERVING',
  });
});

test('bytes that are not a HealthCheckResponse are refused, never read past their end: a cut varint, a cut field, a bad wire type, field 0, an oversized reply', () => {
  for (const [what, bytes] of [
    ['a cut varint', [0x08, 0x81]],
    ['a cut length-delimited field', [0x22, 0x05, 0x61]],
    ['a cut 64-bit field', [0x19, 1, 2]],
    ['a group (wire type 3)', [0x0b]],
    ['field number 0', [0x00, 0x01]],
    ['a varint of 11 bytes', [0x08, ...Array(10).fill(0xff), 0x01]],
  ] as const)
    assert.throws(() => decodeHealthCheckResponse(Buffer.from(bytes)), Error, what);
  assert.throws(() => decodeHealthCheckResponse(Buffer.alloc(2048)), /at most 1024 bytes/);
});
