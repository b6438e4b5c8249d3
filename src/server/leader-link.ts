import * as grpc from '@grpc/grpc-js';
import type { BarrierResult } from '../barrier/barrier.ts';
import { packr } from '../codec/msgpack.ts';
import type { LeaderLink } from '../manager/proposer.ts';
import type { ConfChange, NodeId } from '../raft/types.ts';
import type { AppliedResult } from '../state/applied-state.ts';
import { errorDetailsOf } from '../transport/error-details.ts';
import { services } from '../transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials, type TlsMaterial } from '../transport/tls.ts';
import { ServiceError, refuse } from './errors.ts';
import {
  TRANSFER_WAIT_MS,
  decodeMemberOpResult,
  encodeMemberOp,
  type MemberOp,
  type MemberOpResult,
} from './membership.ts';

/** How long a forwarded proposal may take at the leader. */
export const FORWARD_DEADLINE_MS = 10_000;

export interface GrpcLeaderLinkOptions {
  readonly clusterId: string;
  readonly tls: () => TlsMaterial;
  readonly addressOf: (id: NodeId) => string | undefined;
}

type ProposeBody = { payload?: Buffer; confChange?: Buffer; memberOp?: Buffer };
type ProposeClient = {
  propose(
    request: ProposeBody,
    options: grpc.CallOptions,
    cb: (error: grpc.ServiceError | null, response?: { result: Buffer }) => void,
  ): void;
};

/**
 * The way to the leader over mutual TLS (Peer.Propose): a sealed payload, a membership change, or
 * an operator's membership operation. The leader's certificate must name the leader's id. One
 * client per leader, dropped when this manager's certificate changes.
 */
export class GrpcLeaderLink implements LeaderLink<AppliedResult> {
  readonly #options: GrpcLeaderLinkOptions;
  readonly #clients = new Map<NodeId, grpc.Client>();

  constructor(options: GrpcLeaderLinkOptions) {
    this.#options = options;
  }

  async proposeSealed(leader: NodeId, payload: Buffer): Promise<BarrierResult<AppliedResult>> {
    return packr.unpack(await this.#call(leader, { payload })) as BarrierResult<AppliedResult>;
  }

  async proposeConfChange(leader: NodeId, change: ConfChange): Promise<void> {
    await this.#call(leader, { confChange: packr.pack([change.type, change.nodeId]) });
  }

  /** Sends an operator's membership operation to the leader, which runs it. */
  async memberOp(leader: NodeId, op: MemberOp): Promise<MemberOpResult> {
    return decodeMemberOpResult(await this.#call(leader, { memberOp: encodeMemberOp(op) }));
  }

  /** Closes every client (this manager's certificate changed, or it stops). */
  reset(): void {
    for (const client of this.#clients.values()) client.close();
    this.#clients.clear();
  }

  #call(leader: NodeId, body: ProposeBody): Promise<Buffer> {
    if (leader === 0) return Promise.reject(refuse('NO_LEADER', 'no leader is known; retry once one is elected'));
    let client = this.#clients.get(leader);
    if (client === undefined) {
      const address = this.#options.addressOf(leader);
      if (address === undefined)
        return Promise.reject(
          refuse('LEADER_ADDRESS_UNKNOWN', `the leader ${leader} has no known address yet; retry`, {
            leaderId: String(leader),
          }),
        );
      const { Peer } = services();
      client = new Peer.Client(
        address,
        managerChannelCredentials(this.#options.tls(), { clusterId: this.#options.clusterId, nodeId: String(leader) }),
        MANAGER_CHANNEL_OPTIONS,
      );
      this.#clients.set(leader, client);
    }
    const deadline = Date.now() + (body.memberOp === undefined ? FORWARD_DEADLINE_MS : 3 * TRANSFER_WAIT_MS);
    return new Promise((resolve, reject) => {
      (client as unknown as ProposeClient).propose(body, { deadline }, (error, response) => {
        // The leader refusing this manager is not the client's fault: INTERNAL, not PERMISSION_DENIED.
        // Otherwise the leader's reason and metadata go on to the client (a connection failure has none).
        if (error !== null) {
          const details = errorDetailsOf(error.metadata);
          reject(
            error.code === grpc.status.PERMISSION_DENIED
              ? refuse('INTERNAL', `forwarding to the leader ${leader}: ${error.details}`)
              : new ServiceError(
                  error.code,
                  `forwarding to the leader ${leader}: ${error.details}`,
                  details?.reason,
                  details?.metadata,
                ),
          );
        } else resolve(response!.result);
      });
    });
  }
}
