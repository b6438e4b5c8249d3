import { createRequire } from 'node:module';
import { dirname, isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import type * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

/** Where the .proto files live (the repository's proto/ folder). */
export const PROTO_ROOT = fileURLToPath(new URL('../../proto/', import.meta.url));

/** The files of the coffer.v1 package, relative to PROTO_ROOT. */
export const API_PROTO_FILES: readonly string[] = ['coffer/v1/peer.proto', 'coffer/v1/api.proto'];

/**
 * How messages look in JavaScript (proto-loader's options, which the client and server code and
 * reflection share): camelCase fields, 64-bit integers as numbers, enums by name, bytes as
 * Buffers, absent fields as their defaults, and a oneof's set field named.
 */
export const LOADER_OPTIONS = {
  keepCase: false,
  longs: Number,
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
} as const satisfies protoLoader.Options;

/** A loaded service: its definition (for a server) and its client constructor. */
export interface LoadedService {
  readonly service: grpc.ServiceDefinition;
  readonly Client: grpc.ServiceClientConstructor;
}

/**
 * The schemas as the build compiled them in (`npm run build` defines this: the JSON of the roots
 * that parseSchemas gives), so an installed manager or command parses no .proto file at its
 * start. Absent under tsx (development and tests), which parse the files.
 */
declare const COFFER_SCHEMAS_JSON: string | undefined;

/** Which schema: the API's (coffer.v1), gRPC reflection's, or the health protocol's. */
export type SchemaName = 'api' | 'reflection' | 'health';

/** How each schema is parsed from its files. */
const SCHEMA_PARSERS: Record<SchemaName, () => protobuf.Root> = {
  api: parseApiProtos,
  reflection: parseReflectionProtos,
  health: parseHealthProtos,
};

/** Every schema parsed from its files (what the build compiles in as JSON). */
export function parseSchemas(): Record<SchemaName, protobuf.Root> {
  return Object.fromEntries(Object.entries(SCHEMA_PARSERS).map(([name, parse]) => [name, parse()])) as Record<
    SchemaName,
    protobuf.Root
  >;
}

let compiledSchemas: Record<SchemaName, protobuf.INamespace> | null = null;

/** A schema from what the build compiled in, or parsed from its files under tsx. */
function schema(name: SchemaName): protobuf.Root {
  if (typeof COFFER_SCHEMAS_JSON !== 'string') return SCHEMA_PARSERS[name]();
  compiledSchemas ??= JSON.parse(COFFER_SCHEMAS_JSON) as Record<SchemaName, protobuf.INamespace>;
  return schemaFromJson(compiledSchemas[name]);
}

/**
 * `files` under `dir` parsed, every type resolved; field names in camelCase unless `keepCase`
 * (proto-loader's option, which the health package sets).
 */
function parseProtos(dir: string, files: readonly string[], keepCase = false): protobuf.Root {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => (isAbsolute(target) ? target : join(dir, target));
  root.loadSync([...files], { keepCase });
  root.resolveAll();
  return root;
}

/**
 * The coffer.v1 files parsed. The build compiles its JSON in (scripts/build.mjs); under tsx
 * each process parses the files.
 */
export function parseApiProtos(): protobuf.Root {
  return parseProtos(PROTO_ROOT, API_PROTO_FILES);
}

/** The files of gRPC reflection's services, in @grpc/reflection's proto/ folder. */
const REFLECTION_PROTO_FILES: readonly string[] = [
  'grpc/reflection/v1/reflection.proto',
  'grpc/reflection/v1alpha/reflection.proto',
];

/** gRPC reflection's two services parsed from the package's own files (the build compiles them in too). */
export function parseReflectionProtos(): protobuf.Root {
  const entry = createRequire(import.meta.url).resolve('@grpc/reflection');
  return parseProtos(join(dirname(entry), '..', 'proto'), REFLECTION_PROTO_FILES);
}

/** The health protocol's service parsed from grpc-health-check's own file, its field names kept as that package keeps them. */
export function parseHealthProtos(): protobuf.Root {
  const entry = createRequire(import.meta.url).resolve('grpc-health-check');
  return parseProtos(join(dirname(entry), '..', '..', 'proto'), ['health/v1/health.proto'], true);
}

/** How grpc-health-check's handlers expect its messages (the options it loads its file with). */
const HEALTH_MESSAGE_OPTIONS = {
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
} as const satisfies protobuf.IConversionOptions;

/**
 * How @grpc/reflection's handlers expect its messages (its PROTO_LOADER_OPTS; a test compares
 * these definitions with the ones the package makes for itself).
 */
const REFLECTION_MESSAGE_OPTIONS = {
  longs: String,
  enums: String,
  bytes: Array,
  defaults: true,
  oneofs: true,
} as const satisfies protobuf.IConversionOptions;

/**
 * The schema from its JSON (parseApiProtos().toJSON()), its types resolved as they are first
 * used: protobufjs's own fromJSON resolves every field of every type at once, generating each
 * type's constructor (about 20 ms of a start; a manager uses a few dozen of the types).
 */
export function schemaFromJson(json: protobuf.INamespace): protobuf.Root {
  const root = new protobuf.Root();
  if (json.nested === undefined) throw new Error('a compiled schema is empty');
  root.addJSON(json.nested);
  // What resolveAll does besides resolving: each field's features by its edition (proto3's packed
  // repeated scalars among them). protobufjs has it as an internal method; a version without
  // it gets resolveAll, slower and the same (test/transport/proto.test.ts compares the bytes).
  const features = root as unknown as { _resolveFeaturesRecursive?: (edition: string) => void; _edition: string };
  if (typeof features._resolveFeaturesRecursive === 'function') features._resolveFeaturesRecursive(features._edition);
  else root.resolveAll();
  return root;
}

let cache: Record<string, LoadedService> | null = null;
let definitionCache: protoLoader.PackageDefinition | null = null;

/**
 * The coffer.v1 package definition as proto-loader makes it, with each type's descriptor (gRPC
 * reflection describes the API from it). Made at reflection's first call only: describing every
 * type costs a start tens of milliseconds that serving does not need (see `services`), and
 * proto-loader itself is loaded then (another 15-20 ms of a start).
 */
export async function packageDefinition(): Promise<protoLoader.PackageDefinition> {
  const { loadSync } = await import('@grpc/proto-loader');
  definitionCache ??= loadSync([...API_PROTO_FILES], LOADER_OPTIONS);
  return definitionCache;
}

/**
 * A method's definition as proto-loader's would be for serving and calling: its path, whether
 * each side streams, and (de)serializers with the same conversions. Left out: the descriptors
 * of its types, which only reflection reads.
 */
function methodDefinition(
  service: protobuf.Service,
  method: protobuf.Method,
  conversion: protobuf.IConversionOptions,
): grpc.MethodDefinition<object, object> {
  // Resolved at the method's first use (a type's fields as it is first encoded or decoded).
  const typeOf = (side: 'request' | 'response'): (() => protobuf.Type) => {
    let type: protobuf.Type | null = null;
    return () => {
      if (type !== null) return type;
      method.resolve();
      type = side === 'request' ? method.resolvedRequestType : method.resolvedResponseType;
      if (type === null) throw new Error(`${service.fullName}.${method.name}: its ${side} type did not resolve`);
      return type;
    };
  };
  const serialize = (typeNow: () => protobuf.Type) => (value: object) => {
    const type = typeNow();
    if (Array.isArray(value))
      throw new Error(`Failed to serialize message: expected object with ${type.name} structure, got array instead`);
    return type.encode(type.fromObject(value)).finish() as Buffer;
  };
  const deserialize = (typeNow: () => protobuf.Type) => (bytes: Buffer) => {
    const type = typeNow();
    return type.toObject(type.decode(bytes), conversion);
  };
  const request = typeOf('request');
  const response = typeOf('response');
  return {
    path: `/${service.fullName.slice(1)}/${method.name}`,
    requestStream: method.requestStream === true,
    responseStream: method.responseStream === true,
    requestSerialize: serialize(request),
    requestDeserialize: deserialize(request),
    responseSerialize: serialize(response),
    responseDeserialize: deserialize(response),
    originalName: method.name.charAt(0).toLowerCase() + method.name.slice(1),
  };
}

/** Each method of `service` by its name, its messages converted with `conversion`. */
function serviceDefinition(service: protobuf.Service, conversion: protobuf.IConversionOptions): grpc.ServiceDefinition {
  const definition: Record<string, grpc.MethodDefinition<object, object>> = {};
  for (const method of service.methodsArray) definition[method.name] = methodDefinition(service, method, conversion);
  return definition as grpc.ServiceDefinition;
}

/** The services of the coffer.v1 package in `root` (a test compares them with proto-loader's). */
export function servicesOf(root: protobuf.Root): Record<string, LoadedService> {
  const namespace = root.lookup('coffer.v1');
  if (!(namespace instanceof protobuf.Namespace)) throw new Error('proto/coffer/v1 lacks the coffer.v1 package');
  const loaded: Record<string, LoadedService> = {};
  for (const service of namespace.nestedArray) {
    if (!(service instanceof protobuf.Service)) continue;
    const Client = grpc.makeGenericClientConstructor(serviceDefinition(service, LOADER_OPTIONS), service.name);
    loaded[service.name] = { service: tolerantService(Client.service), Client };
  }
  return loaded;
}

/**
 * gRPC reflection's services (v1 and v1alpha) as @grpc/reflection defines them when it adds
 * itself to a server, from `root` (parseReflectionProtos, or its compiled JSON): a start gets the
 * definitions without the package parsing its files (about 10 ms), and the package is asked to
 * add itself at the first reflection call only.
 */
export function reflectionServicesOf(root: protobuf.Root): grpc.ServiceDefinition[] {
  return ['grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'].map((name) => {
    const service = root.lookupService(name);
    return serviceDefinition(service, REFLECTION_MESSAGE_OPTIONS);
  });
}

/** reflectionServicesOf the compiled reflection schema (parsed from the package's files under tsx). */
export function reflectionServices(): grpc.ServiceDefinition[] {
  return reflectionServicesOf(schema('reflection'));
}

/** grpc.health.v1.Health as grpc-health-check defines it when it adds itself to a server, from `root`. */
export function healthServiceOf(root: protobuf.Root): grpc.ServiceDefinition {
  const service = root.lookupService('grpc.health.v1.Health');
  return serviceDefinition(service, HEALTH_MESSAGE_OPTIONS);
}

/**
 * The health service's definition from the compiled schema: grpc-health-check parses its file
 * when it is loaded (about 20 ms), which a manager then does at its first health call only.
 */
export function healthService(): grpc.ServiceDefinition {
  return healthServiceOf(schema('health'));
}

/** Loads the coffer.v1 services once. */
export function services(): {
  Peer: LoadedService;
  Join: LoadedService;
  Secrets: LoadedService;
  Cluster: LoadedService;
  Policies: LoadedService;
  Identities: LoadedService;
  Audit: LoadedService;
  Keys: LoadedService;
  Backup: LoadedService;
  Auth: LoadedService;
  Database: LoadedService;
  Leases: LoadedService;
} {
  cache ??= servicesOf(schema('api'));
  const { Peer, Join, Secrets, Cluster, Policies, Identities, Audit, Keys, Backup, Auth, Database, Leases } = cache;
  if (
    Peer === undefined ||
    Join === undefined ||
    Secrets === undefined ||
    Cluster === undefined ||
    Policies === undefined ||
    Identities === undefined ||
    Audit === undefined ||
    Keys === undefined ||
    Backup === undefined ||
    Auth === undefined ||
    Database === undefined ||
    Leases === undefined
  ) {
    throw new Error('proto/coffer/v1 lacks a service');
  }
  return { Peer, Join, Secrets, Cluster, Policies, Identities, Audit, Keys, Backup, Auth, Database, Leases };
}

/**
 * What a server handler receives for a request that is not a valid message of its type. grpc-js
 * answers INTERNAL for a request it cannot decode, before any handler runs, so such requests
 * were neither audited nor told apart from a server fault; with this marker the handler's
 * wrapper answers INVALID_ARGUMENT, audited, once it has authenticated the caller.
 */
export const MALFORMED_REQUEST: Readonly<{ malformed: true }> = Object.freeze({ malformed: true });

export function isMalformedRequest(request: unknown): boolean {
  return request === MALFORMED_REQUEST;
}

/** The path of a method (/package.Service/Method), by its key in a definition or in an implementation (originalName). */
export function methodPath(service: grpc.ServiceDefinition, key: string): string {
  const method =
    service[key] ?? Object.values(service).find((m) => (m as { originalName?: string }).originalName === key);
  return method?.path ?? key;
}

/**
 * A service definition whose request decoders give MALFORMED_REQUEST instead of throwing. The
 * coffer.v1 services get it here; the server applies it to the health and reflection services too.
 */
export function tolerantService(service: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const tolerant: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, method] of Object.entries(service)) {
    const decode = method.requestDeserialize;
    tolerant[name] = {
      ...method,
      requestDeserialize: (bytes: Buffer) => {
        try {
          return decode(bytes);
        } catch {
          return MALFORMED_REQUEST;
        }
      },
    };
  }
  return tolerant as grpc.ServiceDefinition;
}

/** Frames on the Raft stream, as proto-loader gives them (oneof `body` names the set field). */
export interface RaftFrame {
  readonly body?: 'messages' | 'snapshotChunk' | 'snapshotRecords';
  readonly messages?: Buffer;
  readonly snapshotChunk?: {
    readonly header: Buffer;
    readonly offset: number;
    readonly totalBytes: number;
    readonly data: Buffer;
  };
  readonly snapshotRecords?: {
    readonly data: Buffer;
    readonly last: boolean;
  };
}
