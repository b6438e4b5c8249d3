import type * as grpc from '@grpc/grpc-js';
import { ClusterState } from '../state/cluster-state.ts';
import { refuse } from './errors.ts';
import { nextCa } from './cluster-ca.ts';
import type { ServiceContext } from './context.ts';
import { authorize, requireCaller, unary, type Call } from './rpc.ts';

/** Identities named in a refusal, at most (the rest are counted). */
const NAMED_IN_REFUSAL_MAX = 10;

/**
 * CA rotation, and the member list clients check managers against (Cluster.RotateCa, RetireCa,
 * Members). Rotation: a new CA, cross-signed by the active one, joins the trusted set; every
 * manager moves its certificate to it by itself; clients renew theirs (Identities.Renew); then
 * RetireCa drops the old CA, and every certificate only it signed stops working at that index.
 */
export function caHandlers(ctx: ServiceContext): grpc.UntypedServiceImplementation {
  return {
    rotateCa: unary(ctx, 'Cluster.RotateCa', async (call: Call<object>) => {
      authorize(ctx, call, 'sudo', 'sys/cluster');
      await ctx.readPoint();
      const cas = ctx.state.cluster.cas;
      if (cas.length === 0)
        throw refuse(
          'CA_NOT_READY',
          'the cluster CA is not in the replicated state yet (the leader installs it a moment after it starts); retry',
        );
      if (cas.length > 1)
        throw refuse(
          'CA_ROTATION_IN_PROGRESS',
          `CA generation ${cas[0]!.gen} is still trusted beside ${cas[1]!.gen}: retire it first (coffer ca retire)`,
        );
      const next = await nextCa(ctx.clusterId, ctx.pki.signing(), ctx.clock.now());
      await ctx.propose(ClusterState.encode({ kind: 'cluster.ca-add', ca: next }));
      ctx.log.warn(
        { event: 'ca-rotated', generation: next.gen },
        `a new cluster CA (generation ${next.gen}) is trusted; managers move to it now, clients renew with coffer identity renew, then coffer ca retire`,
      );
      return { generation: next.gen, caCertificatesPem: ctx.pki.trustPem() };
    }),
    retireCa: unary(ctx, 'Cluster.RetireCa', async (call: Call<{ force?: boolean }>) => {
      authorize(ctx, call, 'sudo', 'sys/cluster');
      await ctx.readPoint();
      const cluster = ctx.state.cluster;
      if (cluster.cas.length < 2)
        throw refuse('NO_CA_ROTATION', 'no CA rotation is in progress: there is one CA (coffer ca rotate starts one)');
      const old = cluster.cas[0]!;
      const active = cluster.cas[1]!;
      const status = ctx.replica.raftStatus();
      if (status === null) throw refuse('MANAGER_LOCKED', 'this manager is locked');
      const members = [...status.confState.voters, ...status.confState.learners];
      const behind = members.filter((id) => !(cluster.memberKeys.get(id) ?? []).some((k) => k.caGen >= active.gen));
      if (behind.length > 0)
        throw refuse(
          'MANAGERS_NOT_MOVED',
          `managers ${behind.join(', ')} have no certificate of CA generation ${active.gen} yet (a running manager moves within a second or two; a stopped one when it starts): retry`,
          { managers: behind.join(',') },
        );
      const stranded = [...ctx.state.access.identities.values()]
        .filter((i) => !i.revoked && !i.keys.some((k) => k.caGen >= active.gen))
        .map((i) => i.name);
      if (stranded.length > 0 && call.request.force !== true) {
        const named =
          stranded.slice(0, NAMED_IN_REFUSAL_MAX).join(', ') +
          (stranded.length > NAMED_IN_REFUSAL_MAX ? ` and ${stranded.length - NAMED_IN_REFUSAL_MAX} more` : '');
        throw refuse(
          'IDENTITIES_NOT_MOVED',
          `identities ${named} have no certificate of CA generation ${active.gen}: each renews with coffer identity renew (or is issued again); retire anyway with --force, and they stop working`,
          { identities: String(stranded.length) },
        );
      }
      await ctx.propose(ClusterState.encode({ kind: 'cluster.ca-retire', gen: old.gen }));
      ctx.log.warn(
        { event: 'ca-retired', generation: old.gen, cutOff: stranded.length },
        `CA generation ${old.gen} is no longer trusted`,
      );
      return { retiredGeneration: old.gen, identitiesCutOff: stranded };
    }),
    members: unary(ctx, 'Cluster.Members', async (call: Call<object>) => {
      // Any certificate of the cluster will do: clients ask this to know which managers to trust.
      requireCaller(ctx, call);
      await ctx.readPoint();
      return {
        members: ctx.trust
          .members()
          .map(([nodeId, address, keys]) => ({ nodeId, address, keys: keys.map(([key]) => key) })),
        removed: [...ctx.state.cluster.removed],
      };
    }),
  };
}
