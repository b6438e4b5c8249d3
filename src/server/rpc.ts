import * as grpc from '@grpc/grpc-js';
import type { Identity } from '../crypto/pki.ts';
import { callerIdentity } from '../transport/auth.ts';
import { ServiceError, toStatus } from './errors.ts';
import type { CofferNode } from './node.ts';

/** The identity made by `coffer init`; until policies exist it is the only client allowed. */
export const ADMIN_IDENTITY = 'admin';
/** Trailing metadata key a follower sets when a joiner must go to the leader. */
export const LEADER_ADDRESS_METADATA = 'coffer-leader-address';

export type Call<Request> = { request: Request; getAuthContext(): ReturnType<grpc.ServerUnaryCall<Request, unknown>['getAuthContext']> };

/** Runs a unary handler, mapping every refusal to its status in one place. */
export function unary<Request, Response>(node: CofferNode, method: string, handler: (call: Call<Request>) => Promise<Response>) {
  return (call: grpc.ServerUnaryCall<Request, Response>, callback: grpc.sendUnaryData<Response>): void => {
    handler(call).then(
      (response) => callback(null, response),
      (error: unknown) => {
        const status = toStatus(error);
        if (status.code === grpc.status.INTERNAL) node.log.error({ event: 'rpc-failed', method, err: error }, 'request failed');
        const metadata = error instanceof LeaderRedirect ? redirectMetadata(error.address) : undefined;
        callback({ code: status.code, details: status.details, ...(metadata === undefined ? {} : { metadata }) });
      },
    );
  };
}

export class LeaderRedirect extends ServiceError {
  readonly address: string;
  constructor(address: string) {
    super(grpc.status.FAILED_PRECONDITION, `this manager is not the leader; join through the leader at ${address}`);
    this.address = address;
  }
}

export function redirectMetadata(address: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set(LEADER_ADDRESS_METADATA, address);
  return metadata;
}

export function requireCaller(node: CofferNode, call: Call<unknown>): Identity {
  const identity = callerIdentity(call, node.config.clusterId);
  if (identity === null) throw new ServiceError(grpc.status.UNAUTHENTICATED, 'a certificate issued by this cluster\'s CA is required');
  return identity;
}

export function requireManager(node: CofferNode, call: Call<unknown>): number {
  const identity = requireCaller(node, call);
  if (identity.role !== 'manager') throw new ServiceError(grpc.status.PERMISSION_DENIED, 'this method is for managers only');
  const id = Number(identity.id);
  if (node.state.cluster.removed.has(id)) throw new ServiceError(grpc.status.PERMISSION_DENIED, `manager ${id} was removed from the cluster`);
  return id;
}

export function requireAdmin(node: CofferNode, call: Call<unknown>): Identity {
  const identity = requireCaller(node, call);
  if (identity.role !== 'client' || identity.id !== ADMIN_IDENTITY) {
    throw new ServiceError(grpc.status.PERMISSION_DENIED, `identity "${identity.id}" (${identity.role}) may not call this; until policies exist only the admin identity may`);
  }
  return identity;
}

