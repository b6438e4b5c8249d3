import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

/** Where the .proto files live (the repository's proto/ folder). */
export const PROTO_ROOT = fileURLToPath(new URL('../../proto/', import.meta.url));

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  bytes: Buffer,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

/** A loaded service: its definition (for a server) and its client constructor. */
export interface LoadedService {
  readonly service: grpc.ServiceDefinition;
  readonly Client: grpc.ServiceClientConstructor;
}

let cache: Record<string, LoadedService> | null = null;
let definitionCache: protoLoader.PackageDefinition | null = null;

/** The loaded coffer.v1 package definition (gRPC reflection describes the API from it). */
export function packageDefinition(): protoLoader.PackageDefinition {
  definitionCache ??= protoLoader.loadSync(['coffer/v1/peer.proto', 'coffer/v1/api.proto'], LOADER_OPTIONS);
  return definitionCache;
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
  if (cache === null) {
    const definition = packageDefinition();
    const loaded = grpc.loadPackageDefinition(definition) as unknown as {
      coffer: { v1: Record<string, grpc.ServiceClientConstructor> };
    };
    cache = {};
    for (const [name, Client] of Object.entries(loaded.coffer.v1)) {
      if (typeof Client === 'function' && 'service' in Client)
        cache[name] = { service: tolerantService(Client.service), Client };
    }
  }
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
