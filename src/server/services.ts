import * as grpc from '@grpc/grpc-js';
import { createHash } from 'node:crypto';
import { packr } from '../codec/msgpack.ts';
import { ClusterState } from '../state/cluster-state.ts';
import { JOIN_TOKEN_TTL_MS_DEFAULT, JOIN_TOKEN_TTL_MS_MAX, formatJoinToken, identityOf, joinTokenHash, newJoinToken } from '../crypto/pki.ts';
import type { ConfChangeType } from '../raft/types.ts';
import { ReflectionService } from '@grpc/reflection';
import { isMalformedRequest, methodPath, packageDefinition, services, tolerantService } from '../transport/proto.ts';
import { ServiceError } from './errors.ts';
import { callerIdentity } from '../transport/auth.ts';
import type { CofferNode } from './node.ts';
import { hostOf, splitHostPort } from './node-config.ts';
import { registerAccessServices } from './access-service.ts';
import { registerJoinService } from './join-service.ts';
import { caHandlers } from './ca-service.ts';
import { registerSecretsService } from './secrets-service.ts';
import { registerKeysService } from './keys-service.ts';
import { registerBackupService } from './backup-service.ts';
import { decodeMemberOp, encodeMemberOpResult, isHealthy, runMemberOp, type MemberOp } from './membership.ts';
import { encodeMembers } from './peer-trust.ts';
import { LeaderRedirect, authorize, requireCaller, requireMember, unary, type Call } from './rpc.ts';


export { ADMIN_IDENTITY, LEADER_ADDRESS_METADATA } from './rpc.ts';

/** The services clients call, as gRPC reflection lists them. */
export const CLIENT_SERVICES = ['coffer.v1.Secrets', 'coffer.v1.Cluster', 'coffer.v1.Policies', 'coffer.v1.Identities', 'coffer.v1.Audit', 'coffer.v1.Keys', 'coffer.v1.Backup'];

const CONF_TYPES: readonly ConfChangeType[] = ['add-voter', 'add-learner', 'remove'];

export function registerServices(node: CofferNode): void {
  const { Peer, Cluster } = services();
  const manager = node.manager;

  node.server.addService(Peer.service, {
    raft: node.transport.handleRaftStream,
    propose: unary(node, 'Peer.Propose', async (call: Call<{ body?: string; payload?: Buffer; confChange?: Buffer; memberOp?: Buffer }>) => {
      requireMember(node, call);
      if (call.request.body === 'memberOp' && call.request.memberOp !== undefined) {
        return { result: encodeMemberOpResult(await runMemberOp(node, decodeMemberOp(call.request.memberOp))) };
      }
      if (call.request.body === 'payload' && call.request.payload !== undefined) {
        return { result: packr.pack(await manager.proposePayload(call.request.payload)) };
      }
      if (call.request.body === 'confChange' && call.request.confChange !== undefined) {
        let change: unknown;
        try {
          change = packr.unpack(call.request.confChange);
        } catch {
          change = null;
        }
        if (!Array.isArray(change)) throw new ServiceError(grpc.status.INVALID_ARGUMENT, 'malformed membership change');
        const [type, nodeId] = change as [ConfChangeType, number];
        if (!CONF_TYPES.includes(type) || !Number.isSafeInteger(nodeId) || nodeId <= 0) throw new ServiceError(grpc.status.INVALID_ARGUMENT, 'malformed membership change');
        await manager.proposeConfChange({ type, nodeId });
        return { result: packr.pack({ type: 'none' }) };
      }
      throw new ServiceError(grpc.status.INVALID_ARGUMENT, 'a proposal needs a payload or a membership change');
    }),
    members: unary(node, 'Peer.Members', async (call: Call<object>) => {
      requireMember(node, call);
      return { members: encodeMembers(node.trust.members()) };
    }),
  });

  registerJoinService(node);
  registerSecretsService(node);
  registerAccessServices(node);
  registerKeysService(node);
  registerBackupService(node);
  // Reflection lets generic tools (grpcurl, Postman) list and call the client API; manager-only
  // services stay out of the list. It describes the schema only, which is public anyway.
  new ReflectionService(packageDefinition(), { services: CLIENT_SERVICES }).addToServer(guardedServer(node));

  node.server.addService(Cluster.service, {
    status: unary(node, 'Cluster.Status', async (call: Call<{ withStateDigest?: boolean }>) => {
      const identity = requireCaller(node, call);
      if (identity.role === 'client') authorize(node, call, 'admin', 'sys/cluster');
      else requireMember(node, call);
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
        // A full image of the state: only when asked (at 100,000 secrets it stalled the manager long
        // enough for status calls to time out).
        stateDigest: call.request.withStateDigest === true ? createHash('sha256').update(node.state.snapshot()).digest('hex') : '',
        members: [...status.confState.voters, ...status.confState.learners].map((id) => {
          const match = id === status.id ? status.lastIndex : (status.progress?.get(id)?.match ?? 0);
          return {
            nodeId: id,
            address: node.addressOf(id) ?? '',
            role: id === status.lead ? 'leader' : status.confState.voters.includes(id) ? 'voter' : 'learner',
            healthy: status.progress !== null && isHealthy(status, id),
            matchIndex: match,
            lag: status.progress === null ? 0 : Math.max(0, status.commit - match),
            held: node.state.cluster.heldLearners.has(id),
          };
        }),
        progressKnown: status.progress !== null,
      };
    }),
    rotateJoinToken: unary(node, 'Cluster.RotateJoinToken', async (call: Call<{ ttlSeconds: number; uses: number }>) => {
      authorize(node, call, 'sudo', 'sys/cluster');
      const ttlMs = call.request.ttlSeconds === 0 ? JOIN_TOKEN_TTL_MS_DEFAULT : call.request.ttlSeconds * 1000;
      if (ttlMs > JOIN_TOKEN_TTL_MS_MAX) throw new ServiceError(grpc.status.INVALID_ARGUMENT, 'ttl_seconds is at most 365 days');
      const token = newJoinToken(node.cas.activeCertPem());
      const expiresAtMs = Date.now() + ttlMs;
      const result = await node.proposeCommand(ClusterState.encode({ kind: 'cluster.join-token', hash: joinTokenHash(token.secret), expiresAtMs, uses: call.request.uses === 0 ? null : call.request.uses }));
      if (!result.ok) throw new ServiceError(grpc.status.FAILED_PRECONDITION, result.reason);
      return { token: formatJoinToken(token), expiresAtMs };
    }),
    removeMember: memberRpc(node, 'Cluster.RemoveMember', 'remove'),
    promote: memberRpc(node, 'Cluster.Promote', 'promote'),
    demote: memberRpc(node, 'Cluster.Demote', 'demote'),
    ...caHandlers(node),
    transferLeader: unary(node, 'Cluster.TransferLeader', async (call: Call<{ nodeId: number }>) => {
      authorize(node, call, 'sudo', 'sys/cluster');
      const result = await runMemberOp(node, { op: 'transfer', nodeId: call.request.nodeId, force: false });
      return { leaderId: result.leaderId };
    }),
  });
}

function memberRpc(node: CofferNode, method: string, op: MemberOp['op']) {
  return unary(node, method, async (call: Call<{ nodeId: number; force?: boolean }>) => {
    authorize(node, call, 'sudo', 'sys/cluster');
    if (!(call.request.nodeId > 0)) throw new ServiceError(grpc.status.INVALID_ARGUMENT, 'node_id names the manager (see coffer cluster status)');
    const result = await runMemberOp(node, { op, nodeId: call.request.nodeId, force: call.request.force === true });
    return { voters: result.voters, learners: result.learners };
  });
}

/**
 * The server as a library's service sees it when it adds itself (reflection): every method it
 * adds first checks for a certificate of this cluster, as every Coffer method does. Its requests
 * are decoded tolerantly, so one that does not decode is not answered INTERNAL by grpc-js (before
 * the certificate check): a single request is refused INVALID_ARGUMENT after the check; a message
 * on a request stream (reflection's) reaches the library as MALFORMED_REQUEST, which reflection
 * answers in its own protocol, with an error response for that message.
 */
function guardedServer(node: CofferNode): Pick<grpc.Server, 'addService'> {
  const refusal = { code: grpc.status.UNAUTHENTICATED, details: 'a certificate issued by this cluster\'s CA is required' };
  return {
    addService: (service, implementation) => {
      const guarded: grpc.UntypedServiceImplementation = {};
      for (const [method, handler] of Object.entries(implementation)) {
        guarded[method] = ((call: grpc.ServerDuplexStream<unknown, unknown> & { request?: unknown }, callback?: grpc.sendUnaryData<unknown>) => {
          if (callerIdentity(call, node.config.clusterId) === null) {
            node.metrics.refused('unauthenticated');
            if (callback !== undefined) return callback(refusal);
            return void call.emit('error', refusal);
          }
          if (isMalformedRequest(call.request)) {
            node.metrics.refused('malformed');
            const malformed = { code: grpc.status.INVALID_ARGUMENT, details: `the request is not a valid ${methodPath(service, method)} message (protobuf)` };
            if (callback !== undefined) return callback(malformed);
            return void call.emit('error', malformed);
          }
          return (handler as (call: unknown, callback?: unknown) => void)(call, callback);
        }) as grpc.UntypedHandleCall;
      }
      node.server.addService(tolerantService(service), guarded);
    },
  };
}
