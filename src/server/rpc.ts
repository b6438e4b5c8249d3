import * as grpc from '@grpc/grpc-js';
import type { Identity } from '../crypto/pki.ts';
import type { Capability } from '../store/policy.ts';
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

/**
 * Authenticates a client and checks its policies for `capability` on `path`: the certificate
 * must be listed for its identity (not revoked), and the most specific matching rule must allow.
 */
export function authorize(node: CofferNode, call: Call<unknown>, capability: Capability, path: string): Identity {
  const identity = authenticateClient(node, call);
  const decision = node.state.access.decide(identity.id, capability, path);
  if (!decision.allowed) {
    const why = decision.rule === null ? 'no policy allows it' : `denied by policy "${decision.rule.policy}", rule "${decision.rule.path}"`;
    throw new ServiceError(grpc.status.PERMISSION_DENIED, `identity "${identity.id}" may not ${capability} "${path}": ${why}`);
  }
  return identity;
}

/** A client whose certificate is listed for its identity and not revoked. */
export function authenticateClient(node: CofferNode, call: Call<unknown>): Identity {
  const identity = requireCaller(node, call);
  if (identity.role !== 'client') throw new ServiceError(grpc.status.PERMISSION_DENIED, 'this method is for clients; a manager certificate may not call it');
  const access = node.state.access;
  if (!access.certificateValid(identity.id, identity.serial)) {
    const known = access.identities.get(identity.id);
    throw new ServiceError(
      grpc.status.PERMISSION_DENIED,
      known === undefined
        ? `identity "${identity.id}" is not known to this cluster (yet)`
        : known.revoked
          ? `the certificate of identity "${identity.id}" was revoked`
          : `this certificate was not issued to identity "${identity.id}" by this cluster, or it was revoked`,
    );
  }
  return identity;
}

