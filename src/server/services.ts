import * as grpc from '@grpc/grpc-js';
import type { Manager } from '../manager/manager.ts';
import type { AppliedResult } from '../state/applied-state.ts';
import { callerIdentity } from '../transport/auth.ts';
import {
  isMalformedRequest,
  methodPath,
  packageDefinition,
  reflectionServices,
  services,
  tolerantService,
} from '../transport/proto.ts';
import { accessServices } from './access-service.ts';
import { authService } from './auth/auth-service.ts';
import { backupService } from './backup-service.ts';
import { databaseServices } from './db/db-service.ts';
import { clusterService, type ClusterServiceDeps } from './cluster-service.ts';
import type { RequestContext, ServiceContext } from './context.ts';
import { joinService } from './join-service.ts';
import { lazyHandlers, type HandlerFinder } from './lazy-handlers.ts';
import { keysService, type KeyOperations } from './keys-service.ts';
import { peerService, type PeerServiceDeps } from './peer-service.ts';
import { secretsService } from './secrets-service.ts';

export { ADMIN_IDENTITY, LEADER_ADDRESS_METADATA } from './rpc.ts';
import { UNAUTHENTICATED_DETAILS } from './rpc.ts';

/** The services clients call, as gRPC reflection lists them. */
export const CLIENT_SERVICES = [
  'coffer.v1.Secrets',
  'coffer.v1.Cluster',
  'coffer.v1.Policies',
  'coffer.v1.Identities',
  'coffer.v1.Audit',
  'coffer.v1.Keys',
  'coffer.v1.Backup',
  'coffer.v1.Auth',
  'coffer.v1.Database',
  'coffer.v1.Leases',
];

/** Everything the services of a manager's port are made from: the service context and a few narrow extras. */
export interface ServiceParts {
  readonly ctx: ServiceContext;
  readonly peer: PeerServiceDeps;
  readonly cluster: ClusterServiceDeps;
  readonly keys: KeyOperations;
  readonly manager: Pick<Manager<AppliedResult>, 'backupMaterial' | 'backupStream' | 'rootKeyForJoiner'>;
  readonly managerCertValidityDays: number;
}

/** Adds every service of a manager's port to `server` (health is added by HealthService). */
export function registerServices(server: grpc.Server, parts: ServiceParts): void {
  const { Peer, Join, Secrets, Policies, Identities, Audit, Keys, Backup, Cluster, Auth, Database, Leases } =
    services();
  const { ctx } = parts;
  server.addService(Peer.service, peerService(ctx, parts.peer));
  server.addService(
    Join.service,
    joinService(ctx, { manager: parts.manager, managerCertValidityDays: parts.managerCertValidityDays }),
  );
  server.addService(Secrets.service, secretsService(ctx));
  const access = accessServices(ctx);
  server.addService(Policies.service, access.policies);
  server.addService(Identities.service, access.identities);
  server.addService(Audit.service, access.audit);
  server.addService(Keys.service, keysService(ctx, parts.keys));
  server.addService(Backup.service, backupService(ctx, parts.manager));
  server.addService(Auth.service, authService(ctx));
  const db = databaseServices(ctx);
  server.addService(Database.service, db.database);
  server.addService(Leases.service, db.leases);
  // Reflection lets generic tools (grpcurl, Postman) list and call the client API; manager-only
  // services stay out of the list. It describes the schema only, which is public anyway.
  addReflection(guardedServer(server, ctx));
  server.addService(Cluster.service, clusterService(ctx, parts.cluster));
}

/**
 * Adds gRPC reflection, built at its first call: indexing the schema takes about 60 ms that every
 * start would otherwise spend before serving, and most managers never answer a reflection call.
 * Its two services are added as the package defines them (reflectionServices: from its schema,
 * compiled into the build), each method handing its calls to the same method of the reflection
 * over the whole schema, made when the first call comes.
 */
function addReflection(server: Pick<grpc.Server, 'addService'>): void {
  let whole: Promise<Map<string, grpc.UntypedHandleCall>> | null = null;
  const reflectionOverSchema = async (): Promise<Map<string, grpc.UntypedHandleCall>> => {
    const [{ ReflectionService }, definition] = await Promise.all([import('@grpc/reflection'), packageDefinition()]);
    const methods = new Map<string, grpc.UntypedHandleCall>();
    new ReflectionService(definition, { services: CLIENT_SERVICES }).addToServer({
      addService: (service: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation) => {
        for (const [name, handler] of Object.entries(implementation)) methods.set(service[name]!.path, handler);
      },
    } as Pick<grpc.Server, 'addService'> as grpc.Server);
    return methods;
  };
  // ServerReflectionInfo is a stream both ways: its calls are held until the reflection is made.
  const load = async (): Promise<HandlerFinder> => {
    whole ??= reflectionOverSchema();
    const methods = await whole;
    return (_name, method) => methods.get(method.path);
  };
  for (const service of reflectionServices())
    server.addService(service, lazyHandlers(service, 'gRPC reflection', load));
}

/**
 * The server as a library's service sees it when it adds itself (reflection): every method it
 * adds first checks for a certificate of this cluster, as every Coffer method does. Its requests
 * are decoded tolerantly, so one that does not decode is not answered INTERNAL by grpc-js (before
 * the certificate check): a single request is refused INVALID_ARGUMENT after the check; a message
 * on a request stream (reflection's) reaches the library as MALFORMED_REQUEST, which reflection
 * answers in its own protocol, with an error response for that message.
 */
function guardedServer(server: grpc.Server, ctx: RequestContext): Pick<grpc.Server, 'addService'> {
  const refusal = {
    code: grpc.status.UNAUTHENTICATED,
    details: UNAUTHENTICATED_DETAILS,
  };
  return {
    addService: (service, implementation) => {
      const guarded: grpc.UntypedServiceImplementation = {};
      for (const [method, handler] of Object.entries(implementation)) {
        guarded[method] = ((
          call: grpc.ServerDuplexStream<unknown, unknown> & { request?: unknown },
          callback?: grpc.sendUnaryData<unknown>,
        ) => {
          if (callerIdentity(call, ctx.clusterId) === null) {
            ctx.metrics.refused('unauthenticated');
            if (callback !== undefined) return callback(refusal);
            return void call.emit('error', refusal);
          }
          if (isMalformedRequest(call.request)) {
            ctx.metrics.refused('malformed');
            const malformed = {
              code: grpc.status.INVALID_ARGUMENT,
              details: `the request is not a valid ${methodPath(service, method)} message (protobuf)`,
            };
            if (callback !== undefined) return callback(malformed);
            return void call.emit('error', malformed);
          }
          return (handler as (call: unknown, callback?: unknown) => void)(call, callback);
        }) as grpc.UntypedHandleCall;
      }
      server.addService(tolerantService(service), guarded);
    },
  };
}
