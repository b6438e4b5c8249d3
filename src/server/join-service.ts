import type * as grpc from '@grpc/grpc-js';
import { X509Certificate } from 'node:crypto';
import { connect } from 'node:tls';
import { ClusterState } from '../state/cluster-state.ts';
import { CryptoError } from '../crypto/errors.ts';
import { identityOf, joinTokenHash, signCertificate, spkiDigest } from '../crypto/pki.ts';
import type { NodeId } from '../raft/types.ts';
import { refuse } from './errors.ts';
import type { Manager } from '../manager/manager.ts';
import { ProposalRefused } from '../manager/errors.ts';
import type { AppliedResult } from '../state/applied-state.ts';
import type { ServiceContext } from './context.ts';
import { managerCertificateHosts, normalizeExtraHosts } from './manager-hosts.ts';
import { splitHostPort } from './node-config.ts';
import { encodeMembers } from './peer-trust.ts';
import { FailedAttempts, sourceHost } from './failed-attempts.ts';
import { LeaderRedirect, noteTarget, unary, type Call } from './rpc.ts';

/** How long the leader waits for a joiner's address to answer with the joiner's key. */
export const JOIN_ADDRESS_PROOF_TIMEOUT_MS = 3000;
/** Sizes a join request may have: a token secret is 24 bytes, a public key (P-256, or RSA up to 4096 bits) under 1 KiB. */
const TOKEN_SECRET_BYTES_MAX = 64;
const PUBLIC_KEY_PEM_CHARS_MAX = 4096;
const ADDRESS_CHARS_MAX = 300;

/**
 * Dials the address a joiner gave and checks that it answers TLS with the joiner's own key (the
 * joiner serves a self-signed certificate for its new key there while it joins). So a token
 * holder cannot make the cluster record, and keep dialling, an address that is not theirs.
 */
export function proveAddress(address: string, spki: string, timeoutMs = JOIN_ADDRESS_PROOF_TIMEOUT_MS): Promise<void> {
  const { host, port } = splitHostPort(address);
  return new Promise((resolve, reject) => {
    const fail = (why: string): void => {
      socket.destroy();
      reject(
        refuse(
          'ADDRESS_NOT_PROVEN',
          `the joiner's address ${address} did not answer with the joiner's key (${why}); give an --advertise address the cluster can reach`,
        ),
      );
    };
    const socket = connect(
      { host, port, rejectUnauthorized: false, ...(hostIsName(host) ? { servername: host } : {}) },
      () => {
        try {
          const raw = socket.getPeerCertificate().raw;
          if (raw === undefined) return fail('no certificate');
          if (spkiDigest(new X509Certificate(raw).publicKey) !== spki) return fail('another key');
          socket.end();
          resolve();
        } catch (error) {
          fail((error as Error).message);
        }
      },
    );
    socket.setTimeout(timeoutMs, () => fail(`no answer within ${timeoutMs} ms`));
    socket.on('error', (error) => fail((error as NodeJS.ErrnoException).code ?? error.message));
  });
}

function hostIsName(host: string): boolean {
  return !/^[0-9.]+$/.test(host) && !host.includes(':');
}

/**
 * The Join service: the active CA's certificate for anyone (a joiner checks it against its
 * token), and JoinCluster for a token holder. A join is refused unless the token is valid, not
 * expired and not used up (checked again, and counted, where the join applies), the source has
 * not failed too often, and the joiner's address answers with the joiner's key. The reply holds
 * the root key (every manager decrypts the log) but not the CA key: that reaches the joiner with
 * the replicated state. Every join is audited with the new manager's id and address.
 */
export function joinService(
  ctx: ServiceContext,
  deps: {
    readonly manager: Pick<Manager<AppliedResult>, 'rootKeyForJoiner'>;
    readonly managerCertValidityDays: number;
  },
): grpc.UntypedServiceImplementation {
  const attempts = new FailedAttempts();
  return {
    getCaCertificate: unary(ctx, 'Join.GetCaCertificate', async () => ({ pem: ctx.pki.activeCertPem() }), {
      anonymous: true,
    }),
    joinCluster: unary(
      ctx,
      'Join.JoinCluster',
      async (call: Call<{ tokenSecret: Buffer; address: string; publicKeyPem: string; extraHosts: string[] }>) => {
        const source = sourceHost(call.getPeer());
        const wait = attempts.refusal(source);
        if (wait !== null) throw refuse('RATE_LIMITED', wait);
        const { tokenSecret, address, publicKeyPem } = call.request;
        if (
          tokenSecret.byteLength > TOKEN_SECRET_BYTES_MAX ||
          address.length > ADDRESS_CHARS_MAX ||
          publicKeyPem.length > PUBLIC_KEY_PEM_CHARS_MAX
        ) {
          attempts.failed(source);
          throw refuse(
            'INVALID_ARGUMENT',
            'a join request holds a token secret, a host:port and a PEM public key; this one is too large',
          );
        }
        const cluster = ctx.state.cluster;
        // None yet: a new cluster's leader installs the token from init a moment after its election.
        if (cluster.joinTokenHash === null)
          throw refuse('JOIN_TOKEN_NOT_READY', 'this manager has no join token installed yet; retry in a moment');
        const tokenHash = joinTokenHash(tokenSecret);
        const nowMs = ctx.clock.now();
        const refusal = cluster.joinTokenRefusal(tokenHash, nowMs);
        if (refusal !== null) {
          attempts.failed(source);
          ctx.log.warn({ event: 'join-refused', source, reason: refusal }, 'refused a join');
          throw refuse('JOIN_TOKEN_REFUSED', refusal);
        }
        // The joiner chooses the names its certificate carries, and nothing here checks that it
        // owns them: a token holder could have a certificate for `vault.example.com`, or for
        // another manager's host, and so pass the host-name check of a client that dials there.
        // That is acceptable only because the token already grants more: a joined manager holds
        // the root key and, through the replicated state, the CA key, so it could sign itself
        // any certificate. Hand out join tokens as manager rights. What is checked is the form
        // (each a DNS name or an IP address, no wildcard) and the count, so a name cannot be
        // abused to make the certificate, or anything that prints it, large or odd.
        let extraHosts: string[];
        try {
          extraHosts = normalizeExtraHosts(call.request.extraHosts);
        } catch (error) {
          throw refuse('INVALID_ARGUMENT', (error as Error).message, { field: 'extra_hosts' });
        }
        const status = ctx.replica.raftStatus();
        if (status === null) throw refuse('MANAGER_LOCKED', 'this manager is locked');
        if (status.role !== 'leader') {
          const leaderAddress = status.lead === 0 ? undefined : ctx.addressOf(status.lead);
          if (leaderAddress === undefined) throw refuse('NO_LEADER', 'no leader is known; retry in a moment');
          throw new LeaderRedirect(leaderAddress);
        }
        try {
          splitHostPort(address);
        } catch (error) {
          throw refuse('INVALID_ARGUMENT', (error as Error).message);
        }
        let spki: string;
        try {
          spki = spkiDigest(publicKeyPem);
        } catch {
          throw refuse('INVALID_ARGUMENT', 'public_key_pem is not a public key in PEM form');
        }
        await proveAddress(address, spki);
        const nodeId = freshNodeId(ctx, status.confState.voters, status.confState.learners);
        const ca = ctx.pki.signing();
        let certificatePem: string;
        try {
          certificatePem = signCertificate(ca, publicKeyPem, {
            id: String(nodeId),
            role: 'manager',
            clusterId: ctx.clusterId,
            nowMs,
            hosts: managerCertificateHosts(address, extraHosts),
            validityDays: deps.managerCertValidityDays,
          });
        } catch (error) {
          if (error instanceof CryptoError) throw refuse('INVALID_ARGUMENT', `public_key_pem: ${error.message}`);
          throw error;
        }
        try {
          await ctx.propose(
            ClusterState.encode({
              kind: 'cluster.join',
              tokenHash,
              nowMs,
              id: nodeId,
              address,
              key: { key: identityOf(certificatePem).spki, caGen: ca.gen },
            }),
          );
        } catch (error) {
          if (!(error instanceof ProposalRefused) || error.source !== 'state') throw error;
          // Where the join applies, the token was found expired, used up or replaced.
          attempts.failed(source);
          throw refuse('JOIN_TOKEN_REFUSED', error.message);
        }
        await ctx.proposeConfChange({ type: 'add-learner', nodeId });
        const root = deps.manager.rootKeyForJoiner();
        noteTarget(call, `manager ${nodeId} at ${address}`);
        ctx.log.info({ event: 'joined', nodeId, address, source }, `manager ${nodeId} joined as a learner`);
        return {
          nodeId,
          clusterId: ctx.clusterId,
          certificatePem,
          rootKey: root.key,
          rootGeneration: root.gen,
          members: encodeMembers(ctx.trust.members()),
          managerCertValidityDays: deps.managerCertValidityDays,
        };
      },
      { anonymous: true },
    ),
  };
}

/** An id never used in this cluster (ids are never reused, so a removed manager cannot come back). */
function freshNodeId(ctx: ServiceContext, voters: readonly NodeId[], learners: readonly NodeId[]): NodeId {
  const cluster = ctx.state.cluster;
  const taken = new Set([...voters, ...learners, ...cluster.addresses.keys(), ...cluster.removed]);
  let nodeId = 0;
  while (nodeId === 0 || taken.has(nodeId)) nodeId = 2 + Math.floor(Math.random() * (2 ** 31 - 2));
  return nodeId;
}
