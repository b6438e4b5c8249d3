import * as grpc from '@grpc/grpc-js';
import { createHash } from 'node:crypto';
import { Packr } from 'msgpackr';
import { ClusterState } from '../cluster/cluster-state.ts';
import { formatJoinToken, identityOf, joinTokenHash, joinTokenMatches, newJoinToken, signCertificate } from '../crypto/pki.ts';
import type { ConfChangeType } from '../raft/types.ts';
import { services } from '../transport/proto.ts';
import { ServiceError } from './errors.ts';
import type { CofferNode } from './node.ts';
import { hostOf, splitHostPort } from './node-config.ts';
import { registerAccessServices } from './access-service.ts';
import { registerSecretsService } from './secrets-service.ts';
import { LeaderRedirect, authorize, requireCaller, requireManager, unary, type Call } from './rpc.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });

export { ADMIN_IDENTITY, LEADER_ADDRESS_METADATA } from './rpc.ts';

const CONF_TYPES: readonly ConfChangeType[] = ['add-voter', 'add-learner', 'remove'];

export function registerServices(node: CofferNode): void {
  const { Peer, Join, Cluster } = services();
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
      // None yet: a new cluster's leader installs the token from init a moment after its election.
      if (stored === null) throw new ServiceError(grpc.status.UNAVAILABLE, 'this manager has no join token installed yet; retry in a moment');
      if (!joinTokenMatches(tokenSecret, stored)) {
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

  registerSecretsService(node);
  registerAccessServices(node);

  node.server.addService(Cluster.service, {
    status: unary(node, 'Cluster.Status', async (call: Call<object>) => {
      const identity = requireCaller(node, call);
      if (identity.role === 'client') authorize(node, call, 'admin', 'sys/cluster');
      else requireManager(node, call);
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
        stateDigest: createHash('sha256').update(node.state.snapshot()).digest('hex'),
      };
    }),
    rotateJoinToken: unary(node, 'Cluster.RotateJoinToken', async (call: Call<object>) => {
      authorize(node, call, 'admin', 'sys/cluster');
      const token = newJoinToken(node.tls.caPem);
      const result = await node.proposeCommand(ClusterState.encode({ kind: 'cluster.join-token', hash: joinTokenHash(token.secret) }));
      if (!result.ok) throw new ServiceError(grpc.status.FAILED_PRECONDITION, result.reason);
      return { token: formatJoinToken(token) };
    }),
    removeMember: unary(node, 'Cluster.RemoveMember', async (call: Call<{ nodeId: number }>) => {
      authorize(node, call, 'admin', 'sys/cluster');
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
