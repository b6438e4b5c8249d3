import * as grpc from '@grpc/grpc-js';
import { Packr } from 'msgpackr';
import { ClusterState } from '../cluster/cluster-state.ts';
import { formatJoinToken, identityOf, joinTokenHash, joinTokenMatches, newJoinToken, signCertificate, type Identity } from '../crypto/pki.ts';
import type { ConfChangeType } from '../raft/types.ts';
import { SECRET_VALUE_BYTES_MAX, SecretStore, secretNameProblem } from '../store/secret-store.ts';
import { callerIdentity } from '../transport/auth.ts';
import { services } from '../transport/proto.ts';
import { ServiceError, toStatus } from './errors.ts';
import type { CofferNode } from './node.ts';
import { hostOf } from './node.ts';
import { splitHostPort } from './node-config.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });

/** The identity made by `coffer init`; until policies exist it is the only client allowed. */
export const ADMIN_IDENTITY = 'admin';
/** Trailing metadata key a follower sets when a joiner must go to the leader. */
export const LEADER_ADDRESS_METADATA = 'coffer-leader-address';

type Call<Request> = { request: Request; getAuthContext(): ReturnType<grpc.ServerUnaryCall<Request, unknown>['getAuthContext']> };

/** Runs a unary handler, mapping every refusal to its status in one place. */
function unary<Request, Response>(node: CofferNode, method: string, handler: (call: Call<Request>) => Promise<Response>) {
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

class LeaderRedirect extends ServiceError {
  readonly address: string;
  constructor(address: string) {
    super(grpc.status.FAILED_PRECONDITION, `this manager is not the leader; join through the leader at ${address}`);
    this.address = address;
  }
}

function redirectMetadata(address: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set(LEADER_ADDRESS_METADATA, address);
  return metadata;
}

function requireCaller(node: CofferNode, call: Call<unknown>): Identity {
  const identity = callerIdentity(call, node.config.clusterId);
  if (identity === null) throw new ServiceError(grpc.status.UNAUTHENTICATED, 'a certificate issued by this cluster\'s CA is required');
  return identity;
}

function requireManager(node: CofferNode, call: Call<unknown>): number {
  const identity = requireCaller(node, call);
  if (identity.role !== 'manager') throw new ServiceError(grpc.status.PERMISSION_DENIED, 'this method is for managers only');
  const id = Number(identity.id);
  if (node.state.cluster.removed.has(id)) throw new ServiceError(grpc.status.PERMISSION_DENIED, `manager ${id} was removed from the cluster`);
  return id;
}

function requireAdmin(node: CofferNode, call: Call<unknown>): Identity {
  const identity = requireCaller(node, call);
  if (identity.role !== 'client' || identity.id !== ADMIN_IDENTITY) {
    throw new ServiceError(grpc.status.PERMISSION_DENIED, `identity "${identity.id}" (${identity.role}) may not call this; until policies exist only the admin identity may`);
  }
  return identity;
}

const CONF_TYPES: readonly ConfChangeType[] = ['add-voter', 'add-learner', 'remove'];

export function registerServices(node: CofferNode): void {
  const { Peer, Join, Secrets, Cluster } = services();
  const manager = node.manager;

  node.server.addService(Peer.service, {
    raft: node.transport.handleRaftStream,
    propose: unary(node, 'Peer.Propose', async (call: Call<{ body?: string; payload?: Buffer; confChange?: Buffer }>) => {
      requireManager(node, call);
      if (call.request.body === 'payload' && call.request.payload !== undefined) {
        return { result: packr.pack(await manager.proposePayload(call.request.payload)) };
      }
      if (call.request.body === 'confChange' && call.request.confChange !== undefined) {
        const [type, nodeId] = packr.unpack(call.request.confChange) as [ConfChangeType, number];
        if (!CONF_TYPES.includes(type) || !Number.isSafeInteger(nodeId) || nodeId <= 0) throw new ServiceError(grpc.status.INVALID_ARGUMENT, 'malformed membership change');
        await manager.proposeConfChange({ type, nodeId });
        return { result: packr.pack({ type: 'none' }) };
      }
      throw new ServiceError(grpc.status.INVALID_ARGUMENT, 'a proposal needs a payload or a membership change');
    }),
  });

  node.server.addService(Join.service, {
    getCaCertificate: unary(node, 'Join.GetCaCertificate', async () => ({ pem: node.tls.caPem })),
    joinCluster: unary(node, 'Join.JoinCluster', async (call: Call<{ tokenSecret: Buffer; address: string; publicKeyPem: string }>) => {
      const { tokenSecret, address, publicKeyPem } = call.request;
      const stored = node.state.cluster.joinTokenHash;
      if (stored === null || !joinTokenMatches(tokenSecret, stored)) {
        node.log.warn({ event: 'join-refused', reason: 'token' }, 'refused a join with an invalid token');
        throw new ServiceError(grpc.status.PERMISSION_DENIED, 'the join token is not valid: it was rotated, or it is not this cluster\'s');
      }
      const status = manager.raftStatus();
      if (status === null) throw new ServiceError(grpc.status.UNAVAILABLE, 'this manager is locked');
      if (status.role !== 'leader') {
        const leaderAddress = status.lead === 0 ? undefined : node.addressOf(status.lead);
        if (leaderAddress === undefined) throw new ServiceError(grpc.status.UNAVAILABLE, 'no leader is known; retry in a moment');
        throw new LeaderRedirect(leaderAddress);
      }
      try {
        splitHostPort(address);
      } catch (error) {
        throw new ServiceError(grpc.status.INVALID_ARGUMENT, (error as Error).message);
      }
      const taken = new Set([...status.confState.voters, ...status.confState.learners, ...node.state.cluster.addresses.keys(), ...node.state.cluster.removed]);
      let nodeId = 0;
      while (nodeId === 0 || taken.has(nodeId)) nodeId = 2 + Math.floor(Math.random() * (2 ** 31 - 2));
      const certificatePem = signCertificate(node.ca, publicKeyPem, {
        id: String(nodeId),
        role: 'manager',
        clusterId: node.config.clusterId,
        nowMs: Date.now(),
        hosts: [hostOf(address)],
        validityDays: node.config.managerCertValidityDays,
      });
      await node.proposeCommand(ClusterState.encode({ kind: 'cluster.member', id: nodeId, address }));
      await node.proposeConfChange({ type: 'add-learner', nodeId });
      const root = manager.rootKeyForJoiner();
      node.log.info({ event: 'joined', nodeId, address }, `manager ${nodeId} joined as a learner`);
      return {
        nodeId,
        clusterId: node.config.clusterId,
        certificatePem,
        rootKey: root.key,
        rootGeneration: root.gen,
        caKeyPem: node.ca.keyPem,
        members: packr.pack([...node.state.cluster.addresses]),
        managerCertValidityDays: node.config.managerCertValidityDays,
      };
    }),
  });

  node.server.addService(Secrets.service, {
    put: unary(node, 'Secrets.Put', async (call: Call<{ name: string; value: Buffer }>) => {
      requireAdmin(node, call);
      const { name, value } = call.request;
      const problem = secretNameProblem(name);
      if (problem !== null) throw new ServiceError(grpc.status.INVALID_ARGUMENT, `secret name "${name.slice(0, 64)}": ${problem}`);
      if (value.byteLength > SECRET_VALUE_BYTES_MAX) throw new ServiceError(grpc.status.RESOURCE_EXHAUSTED, `the value has ${value.byteLength} bytes; the limit is ${SECRET_VALUE_BYTES_MAX}`);
      const result = await node.proposeCommand(SecretStore.encodePut(name, value));
      if (!result.ok) throw new ServiceError(grpc.status.FAILED_PRECONDITION, result.reason);
      return { version: 'version' in result ? result.version : 0 };
    }),
    get: unary(node, 'Secrets.Get', async (call: Call<{ name: string; stale: boolean }>) => {
      requireAdmin(node, call);
      if (!call.request.stale) await manager.linearizableRead();
      const secret = node.state.secrets.get(call.request.name);
      const applied = manager.status().raft?.applied ?? 0;
      if (secret === undefined) throw new ServiceError(grpc.status.NOT_FOUND, `secret "${call.request.name.slice(0, 256)}" does not exist`);
      return { value: secret.value, version: secret.version, appliedIndex: applied };
    }),
  });

  node.server.addService(Cluster.service, {
    status: unary(node, 'Cluster.Status', async (call: Call<object>) => {
      const identity = requireCaller(node, call);
      if (identity.role === 'client') requireAdmin(node, call);
      const status = manager.raftStatus();
      if (status === null) throw new ServiceError(grpc.status.UNAVAILABLE, 'this manager is locked');
      const identityOfNode = identityOf(node.tls.certPem);
      return {
        nodeId: status.id,
        role: status.role,
        leaderId: status.lead,
        term: status.term,
        commitIndex: status.commit,
        appliedIndex: status.applied,
        voters: status.confState.voters,
        learners: status.confState.learners,
        firstIndex: status.firstIndex,
        lastIndex: status.lastIndex,
        keyringTerm: manager.status().keys?.activeTerm ?? 0,
        certificateNotAfterMs: identityOfNode.notAfterMs,
        certificateSerial: identityOfNode.serial,
        snapshotIndex: status.firstIndex - 1,
        snapshotsSent: node.transport.stats.snapshotsSent,
      };
    }),
    rotateJoinToken: unary(node, 'Cluster.RotateJoinToken', async (call: Call<object>) => {
      requireAdmin(node, call);
      const token = newJoinToken(node.tls.caPem);
      const result = await node.proposeCommand(ClusterState.encode({ kind: 'cluster.join-token', hash: joinTokenHash(token.secret) }));
      if (!result.ok) throw new ServiceError(grpc.status.FAILED_PRECONDITION, result.reason);
      return { token: formatJoinToken(token) };
    }),
    removeMember: unary(node, 'Cluster.RemoveMember', async (call: Call<{ nodeId: number }>) => {
      requireAdmin(node, call);
      const id = call.request.nodeId;
      const status = manager.raftStatus();
      if (status === null) throw new ServiceError(grpc.status.UNAVAILABLE, 'this manager is locked');
      if (!status.confState.voters.includes(id) && !status.confState.learners.includes(id)) throw new ServiceError(grpc.status.NOT_FOUND, `manager ${id} is not a member`);
      await node.proposeCommand(ClusterState.encode({ kind: 'cluster.removed', id }));
      await node.proposeConfChange({ type: 'remove', nodeId: id });
      node.transport.forget(id);
      node.transport.disconnect(id);
      return {};
    }),
  });
}
