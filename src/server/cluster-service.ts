import type * as grpc from '@grpc/grpc-js';
import { createHash } from 'node:crypto';
import {
  JOIN_TOKEN_TTL_MS_DEFAULT,
  JOIN_TOKEN_TTL_MS_MAX,
  formatJoinToken,
  identityOf,
  joinTokenHash,
  newJoinToken,
} from '../crypto/pki.ts';
import { ClusterState } from '../state/cluster-state.ts';
import { caHandlers } from './ca-service.ts';
import type { ServiceContext } from './context.ts';
import { refuse } from './errors.ts';
import { isHealthy, type MemberOp, type MemberOpResult } from './membership.ts';
import { authorize, requireCaller, requireMember, unary, type Call } from './rpc.ts';

/** What the Cluster service reads beyond the service context. */
export interface ClusterServiceDeps {
  runMemberOp(op: MemberOp): Promise<MemberOpResult>;
  /** This manager's certificate now (it renews itself). */
  certificatePem(): string;
  snapshotsSent(): number;
}

/**
 * The Cluster service (coffer.v1.Cluster): status for operators (`admin` on sys/cluster) and
 * members; the join token, membership, leadership and the CAs for `sudo` on sys/cluster only.
 */
export function clusterService(ctx: ServiceContext, deps: ClusterServiceDeps): grpc.UntypedServiceImplementation {
  const memberRpc = (method: string, op: MemberOp['op']) =>
    unary(ctx, method, async (call: Call<{ nodeId: number; force?: boolean }>) => {
      authorize(ctx, call, 'sudo', 'sys/cluster');
      if (!(call.request.nodeId > 0))
        throw refuse('INVALID_ARGUMENT', 'node_id names the manager (see coffer cluster status)');
      const result = await deps.runMemberOp({ op, nodeId: call.request.nodeId, force: call.request.force === true });
      return { voters: result.voters, learners: result.learners };
    });

  return {
    status: unary(ctx, 'Cluster.Status', async (call: Call<{ withStateDigest?: boolean }>) => {
      const identity = requireCaller(ctx, call);
      if (identity.role === 'client') authorize(ctx, call, 'admin', 'sys/cluster');
      else requireMember(ctx, call);
      const status = ctx.replica.raftStatus();
      if (status === null) throw refuse('MANAGER_LOCKED', 'this manager is locked');
      const certificate = identityOf(deps.certificatePem());
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
        keyringTerm: ctx.replica.status().keys?.activeTerm ?? 0,
        certificateNotAfterMs: certificate.notAfterMs,
        certificateSerial: certificate.serial,
        clockOffsetMs: ctx.clock.offsetMs(),
        snapshotIndex: status.firstIndex - 1,
        snapshotsSent: deps.snapshotsSent(),
        // A full image of the state: only when asked (at 100,000 secrets it stalled the manager long
        // enough for status calls to time out).
        stateDigest:
          call.request.withStateDigest === true
            ? createHash('sha256')
                .update(await ctx.state.snapshot())
                .digest('hex')
            : '',
        members: [...status.confState.voters, ...status.confState.learners].map((id) => {
          const match = id === status.id ? status.lastIndex : (status.progress?.get(id)?.match ?? 0);
          return {
            nodeId: id,
            address: ctx.addressOf(id) ?? '',
            role: id === status.lead ? 'leader' : status.confState.voters.includes(id) ? 'voter' : 'learner',
            healthy: status.progress !== null && isHealthy(status, id),
            matchIndex: match,
            lag: status.progress === null ? 0 : Math.max(0, status.commit - match),
            held: ctx.state.cluster.heldLearners.has(id),
          };
        }),
        progressKnown: status.progress !== null,
      };
    }),
    rotateJoinToken: unary(ctx, 'Cluster.RotateJoinToken', async (call: Call<{ ttlSeconds: number; uses: number }>) => {
      authorize(ctx, call, 'sudo', 'sys/cluster');
      const ttlMs = call.request.ttlSeconds === 0 ? JOIN_TOKEN_TTL_MS_DEFAULT : call.request.ttlSeconds * 1000;
      if (ttlMs > JOIN_TOKEN_TTL_MS_MAX) throw refuse('INVALID_ARGUMENT', 'ttl_seconds is at most 365 days');
      const token = newJoinToken(ctx.pki.activeCertPem());
      const expiresAtMs = ctx.clock.now() + ttlMs;
      await ctx.propose(
        ClusterState.encode({
          kind: 'cluster.join-token',
          hash: joinTokenHash(token.secret),
          expiresAtMs,
          uses: call.request.uses === 0 ? null : call.request.uses,
        }),
      );
      return { token: formatJoinToken(token), expiresAtMs };
    }),
    removeMember: memberRpc('Cluster.RemoveMember', 'remove'),
    promote: memberRpc('Cluster.Promote', 'promote'),
    demote: memberRpc('Cluster.Demote', 'demote'),
    ...caHandlers(ctx),
    transferLeader: unary(ctx, 'Cluster.TransferLeader', async (call: Call<{ nodeId: number }>) => {
      authorize(ctx, call, 'sudo', 'sys/cluster');
      const result = await deps.runMemberOp({ op: 'transfer', nodeId: call.request.nodeId, force: false });
      return { leaderId: result.leaderId };
    }),
  };
}
