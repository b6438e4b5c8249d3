import { test } from 'node:test';
import assert from 'node:assert/strict';
import type * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import {
  packageDefinition,
  healthServiceOf,
  parseApiProtos,
  parseHealthProtos,
  parseReflectionProtos,
  reflectionServicesOf,
  schemaFromJson,
  servicesOf,
} from '../../src/transport/proto.ts';

/**
 * The services a manager and the client use are made from the schema by src/transport/proto.ts
 * (the build compiles the schema in as JSON), not by proto-loader, which describes every type for
 * reflection at a start's cost. They must encode and decode exactly as proto-loader's would.
 */

/** A message of `type` with every field set (each oneof's first member), nested messages to `depth`. */
function sample(type: protobuf.Type, depth: number): Record<string, unknown> {
  const value: Record<string, unknown> = {};
  const skipped = new Set<string>();
  for (const oneof of type.oneofsArray) for (const name of oneof.oneof.slice(1)) skipped.add(name);
  for (const field of type.fieldsArray) {
    if (skipped.has(field.name)) continue;
    const one = scalar(field, depth);
    if (one === undefined) continue;
    if (field instanceof protobuf.MapField) value[field.name] = { k1: one, k2: one };
    else value[field.name] = field.repeated ? [one, one] : one;
  }
  return value;
}

function scalar(field: protobuf.Field, depth: number): unknown {
  const resolved = field.resolve().resolvedType;
  if (resolved instanceof protobuf.Type) return depth > 0 ? sample(resolved, depth - 1) : undefined;
  if (resolved instanceof protobuf.Enum) return Object.keys(resolved.values).at(-1);
  switch (field.type) {
    case 'string':
      return `${field.name} ü`;
    case 'bytes':
      return Buffer.from([1, 0, 255, field.id]);
    case 'bool':
      return true;
    case 'double':
    case 'float':
      return 1.5;
    default:
      return field.type.includes('64') ? 2 ** 40 + field.id : 300 + field.id;
  }
}

function methodsOf(
  services: Record<string, { service: grpc.ServiceDefinition }>,
): Map<string, grpc.MethodDefinition<object, object>> {
  const methods = new Map<string, grpc.MethodDefinition<object, object>>();
  for (const { service } of Object.values(services))
    for (const method of Object.values(service))
      methods.set(method.path, method as grpc.MethodDefinition<object, object>);
  return methods;
}

test("every coffer.v1 method, from the parsed schema and from its compiled JSON, encodes and decodes as proto-loader's", async () => {
  const parsed = parseApiProtos();
  // As the build compiles it in and a start reads it back (types resolved at their first use).
  const compiled = schemaFromJson(JSON.parse(JSON.stringify(parsed.toJSON())) as protobuf.INamespace);
  const reference = await packageDefinition();
  const referenceMethods = new Map<
    string,
    grpc.MethodDefinition<object, object> & {
      requestType: { type: { name: string } };
      responseType: { type: { name: string } };
    }
  >();
  for (const [name, definition] of Object.entries(reference)) {
    if (!name.startsWith('coffer.v1.') || 'format' in definition) continue;
    for (const method of Object.values(definition as Record<string, never>))
      referenceMethods.set((method as { path: string }).path, method);
  }
  assert.ok(referenceMethods.size >= 60, `proto-loader sees ${referenceMethods.size} methods`);
  for (const root of [parsed, compiled]) {
    const methods = methodsOf(servicesOf(root));
    assert.deepEqual([...methods.keys()].sort(), [...referenceMethods.keys()].sort(), 'the same methods, by path');
    for (const [path, method] of methods) {
      const expected = referenceMethods.get(path)!;
      assert.equal(method.requestStream, expected.requestStream, path);
      assert.equal(method.responseStream, expected.responseStream, path);
      assert.equal(method.originalName, expected.originalName, path);
      const pairs = [
        [
          method.requestSerialize,
          method.requestDeserialize,
          expected.requestSerialize,
          expected.requestDeserialize,
          expected.requestType.type.name,
        ],
        [
          method.responseSerialize,
          method.responseDeserialize,
          expected.responseSerialize,
          expected.responseDeserialize,
          expected.responseType.type.name,
        ],
      ] as const;
      for (const [serialize, deserialize, referenceSerialize, referenceDeserialize, typeName] of pairs) {
        const type = parsed.lookupType(`coffer.v1.${typeName}`);
        const value = sample(type, 3);
        const bytes = serialize(value);
        assert.ok(Buffer.isBuffer(bytes), `${path}: grpc-js is given a Buffer`);
        assert.deepEqual(bytes, referenceSerialize(value), `${path} ${typeName}: the same bytes`);
        assert.deepEqual(deserialize(bytes), referenceDeserialize(bytes), `${path} ${typeName}: the same object back`);
        assert.deepEqual(deserialize(Buffer.alloc(0)), referenceDeserialize(Buffer.alloc(0)), `${path}: the defaults`);
      }
    }
  }
});

test("gRPC reflection's services, from its parsed schema and from the compiled JSON, are defined, encode and decode as the package's own", () => {
  const own = new Map<string, grpc.MethodDefinition<object, object>>();
  new ReflectionService({}, { services: [] }).addToServer({
    addService: (service: grpc.ServiceDefinition) => {
      for (const method of Object.values(service))
        own.set(method.path, method as grpc.MethodDefinition<object, object>);
    },
  } as unknown as grpc.Server);
  assert.equal(own.size, 2, 'v1 and v1alpha, one method each');
  const parsed = parseReflectionProtos();
  const compiled = schemaFromJson(JSON.parse(JSON.stringify(parsed.toJSON())) as protobuf.INamespace);
  for (const root of [parsed, compiled]) {
    const ours = new Map<string, grpc.MethodDefinition<object, object>>();
    for (const service of reflectionServicesOf(root))
      for (const method of Object.values(service))
        ours.set(method.path, method as grpc.MethodDefinition<object, object>);
    assert.deepEqual([...ours.keys()].sort(), [...own.keys()].sort());
    for (const [path, method] of ours) {
      const expected = own.get(path)!;
      assert.equal(method.requestStream, expected.requestStream, path);
      assert.equal(method.responseStream, expected.responseStream, path);
      const version = path.includes('v1alpha') ? 'v1alpha' : 'v1';
      for (const [side, typeName] of [
        ['request', 'ServerReflectionRequest'],
        ['response', 'ServerReflectionResponse'],
      ] as const) {
        const value = sample(parsed.lookupType(`grpc.reflection.${version}.${typeName}`), 3);
        const serialize = side === 'request' ? method.requestSerialize : method.responseSerialize;
        const deserialize = side === 'request' ? method.requestDeserialize : method.responseDeserialize;
        const expectedSerialize = side === 'request' ? expected.requestSerialize : expected.responseSerialize;
        const expectedDeserialize = side === 'request' ? expected.requestDeserialize : expected.responseDeserialize;
        const bytes = serialize(value);
        assert.ok(bytes.length > 10, `${path} ${side}: the sample has fields`);
        assert.deepEqual(bytes, expectedSerialize(value), `${path} ${side}: the same bytes`);
        assert.deepEqual(deserialize(bytes), expectedDeserialize(bytes), `${path} ${side}: the same object back`);
      }
    }
  }
});

test("the health protocol's service, from its parsed schema and from the compiled JSON, is defined, encodes and decodes as grpc-health-check's own", () => {
  let own: grpc.ServiceDefinition | null = null;
  new HealthImplementation({}).addToServer({
    addService: (service: grpc.ServiceDefinition) => {
      own = service;
    },
  } as unknown as grpc.Server);
  const expected = own as unknown as Record<string, grpc.MethodDefinition<object, object>>;
  assert.deepEqual(Object.keys(expected).sort(), ['Check', 'List', 'Watch']);
  const parsed = parseHealthProtos();
  const compiled = schemaFromJson(JSON.parse(JSON.stringify(parsed.toJSON())) as protobuf.INamespace);
  const samples: Record<string, [object, object]> = {
    Check: [{ service: 'coffer' }, { status: 'NOT_SERVING' }],
    Watch: [{ service: '' }, { status: 'SERVING' }],
    List: [{}, { statuses: { '': { status: 'SERVING' }, a: { status: 'SERVICE_UNKNOWN' } } }],
  };
  for (const root of [parsed, compiled]) {
    const ours = healthServiceOf(root) as unknown as Record<string, grpc.MethodDefinition<object, object>>;
    assert.deepEqual(Object.keys(ours).sort(), Object.keys(expected).sort());
    for (const [name, method] of Object.entries(ours)) {
      const theirs = expected[name]!;
      assert.equal(method.path, theirs.path);
      assert.equal(method.requestStream, theirs.requestStream, name);
      assert.equal(method.responseStream, theirs.responseStream, name);
      const [request, response] = samples[name]!;
      for (const [value, ourSerialize, ourDeserialize, theirSerialize, theirDeserialize] of [
        [
          request,
          method.requestSerialize,
          method.requestDeserialize,
          theirs.requestSerialize,
          theirs.requestDeserialize,
        ],
        [
          response,
          method.responseSerialize,
          method.responseDeserialize,
          theirs.responseSerialize,
          theirs.responseDeserialize,
        ],
      ] as const) {
        const bytes = ourSerialize(value);
        assert.deepEqual(bytes, theirSerialize(value), `${name}: the same bytes`);
        assert.deepEqual(ourDeserialize(bytes), theirDeserialize(bytes), `${name}: the same object back`);
        assert.deepEqual(ourDeserialize(bytes), theirDeserialize(theirSerialize(value)));
      }
    }
  }
});
