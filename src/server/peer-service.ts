import type * as grpc from '@grpc/grpc-js';
import type { BarrierResult } from '../barrier/barrier.ts';
import { packr } from '../codec/msgpack.ts';
import type { ConfChange, ConfChangeType } from '../raft/types.ts';
import type { AppliedResult } from '../state/applied-state.ts';
import type { RequestContext } from './context.ts';
import { refuse } from './errors.ts';
import { decodeMemberOp, encodeMemberOpResult, type MemberOp, type MemberOpResult } from './membership.ts';
import { encodeMembers, type MemberEntry } from './peer-trust.ts';
import { requireMember, unary, type Call } from './rpc.ts';

const CONF_TYPES: readonly ConfChangeType[] = ['add-voter', 'add-learner', 'remove'];

/** What the Peer service hands on: the Raft stream, and proposals other managers forwarded here (the leader). */
export interface PeerServiceDeps {
  readonly raftStream: grpc.handleClientStreamingCall<never, object>;
  acceptForwarded(payload: Uint8Array): Promise<BarrierResult<AppliedResult>>;
  acceptConfChange(change: ConfChange): Promise<void>;
  runMemberOp(op: MemberOp): Promise<MemberOpResult>;
  members(): MemberEntry[];
}

/**
 * The Peer service (coffer.v1.Peer), for members only (requireMember: a current voter or learner
 * whose certificate holds a key the cluster records for it): the Raft stream, proposals forwarded
 * to the leader, and the member list a manager asks when it meets one it does not know yet.
 */
export function peerService(ctx: RequestContext, deps: PeerServiceDeps): grpc.UntypedServiceImplementation {
  return {
    raft: deps.raftStream,
    propose: unary(
      ctx,
      'Peer.Propose',
      async (call: Call<{ body?: string; payload?: Buffer; confChange?: Buffer; memberOp?: Buffer }>) => {
        requireMember(ctx, call);
        if (call.request.body === 'memberOp' && call.request.memberOp !== undefined) {
          return { result: encodeMemberOpResult(await deps.runMemberOp(decodeMemberOp(call.request.memberOp))) };
        }
        if (call.request.body === 'payload' && call.request.payload !== undefined) {
          return { result: packr.pack(await deps.acceptForwarded(call.request.payload)) };
        }
        if (call.request.body === 'confChange' && call.request.confChange !== undefined) {
          await deps.acceptConfChange(decodeConfChange(call.request.confChange));
          return { result: packr.pack({ type: 'none' }) };
        }
        throw refuse('INVALID_ARGUMENT', 'a proposal needs a payload or a membership change');
      },
    ),
    members: unary(ctx, 'Peer.Members', async (call: Call<object>) => {
      requireMember(ctx, call);
      return { members: encodeMembers(deps.members()) };
    }),
    // The host's clock, uncorrected: a corrected one would feed the median back into itself.
    clock: unary(ctx, 'Peer.Clock', async (call: Call<object>) => {
      requireMember(ctx, call);
      return { wallMs: Date.now() };
    }),
  };
}

function decodeConfChange(data: Buffer): ConfChange {
  let change: unknown;
  try {
    change = packr.unpack(data);
  } catch {
    change = null;
  }
  if (!Array.isArray(change)) throw refuse('INVALID_ARGUMENT', 'malformed membership change');
  const [type, nodeId] = change as [ConfChangeType, number];
  if (!CONF_TYPES.includes(type) || !Number.isSafeInteger(nodeId) || nodeId <= 0)
    throw refuse('INVALID_ARGUMENT', 'malformed membership change');
  return { type, nodeId };
}
