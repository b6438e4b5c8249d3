import * as grpc from '@grpc/grpc-js';
import { packr } from '../codec/msgpack.ts';
import type { ClusterState, MemberKey } from '../state/cluster-state.ts';
import type { ConfState, NodeId } from '../raft/types.ts';
import { removedDetails } from '../transport/peer-transport.ts';
import { services } from '../transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials, type TlsMaterial } from '../transport/tls.ts';
import type { Logger } from '../util/logger.ts';

/** How long a member's word that a manager belongs (a vouch) is trusted without its own state agreeing. */
export const VOUCH_TTL_MS = 30_000;
/** Members are asked about an unknown manager at most this often. */
export const VOUCH_ASK_INTERVAL_MS = 1000;
const VOUCH_ASK_DEADLINE_MS = 2000;
/** Managers remembered as vouched for (a bound: each is a member some member named). */
const VOUCHES_MAX = 64;

/** A member as a Peer.Members answer lists it: id, address, the keys its certificate may hold. */
export type MemberEntry = readonly [NodeId, string, ReadonlyArray<readonly [string, number]>];

export interface PeerTrustOptions {
  readonly selfId: NodeId;
  readonly clusterId: string;
  readonly cluster: ClusterState;
  /** This manager's configuration as applied (null while locked). */
  readonly confState: () => ConfState | null;
  /** Members as the leader told a joiner, until its own state knows them: [id, address, keys]. */
  readonly bootstrap: readonly MemberEntry[];
  /** This manager's certificate and key; null while it is still starting. */
  readonly tls: () => TlsMaterial | null;
  readonly logger: Logger;
}

/**
 * Which managers may talk Raft to this one, and with which key: a member now (a voter or learner
 * in this manager's configuration) whose certificate holds a key the replicated state records
 * for it, and that was never removed. A certificate of the cluster CA alone is not enough: the
 * CA key has been on every manager, and removed managers and restored copies of the cluster keep
 * it. A manager this one does not know yet (it joined while this one was behind) is vouched for
 * by a member it does know: this manager asks its members (Peer.Members) and admits what one of
 * them lists, until its own state catches up.
 */
export class PeerTrust {
  readonly #options: PeerTrustOptions;
  readonly #bootstrapKeys = new Map<NodeId, string[]>();
  readonly #vouched = new Map<NodeId, { keys: string[]; address: string; untilMs: number; by: NodeId }>();
  readonly #askedAtMs = new Map<NodeId, number>();
  #removedBy: NodeId | null = null;
  #outOfConfAskedAtMs = -Infinity;

  /**
   * The member that refused this manager's stream as removed from the cluster (null: none has).
   * A member says so from its applied state, and a removed id never comes back, so one is enough.
   */
  get removedBy(): NodeId | null {
    return this.#removedBy;
  }

  /** `peer` refused this manager as removed (see PeerTransportOptions.onRemoved). */
  noteRemovedBy(peer: NodeId): void {
    if (this.#removedBy !== null) return;
    this.#removedBy = peer;
    this.#options.logger.warn(
      { event: 'removed-from-cluster', by: peer },
      `manager ${peer} says this manager was removed from the cluster: it serves no request from now on; delete its data directory, or join the cluster again with a new one`,
    );
  }

  /**
   * A manager that applied a membership change leaving itself out, but not the removal record
   * that follows it (the leader stops replicating to it in between), would sit silent: not a
   * member, it never campaigns, so no member refuses it. It asks the voters it knows instead (at
   * most once per VOUCH_ASK_INTERVAL_MS); a member refuses a removed manager by saying so. A joiner
   * that restored a snapshot from before its own addition asks too, and is answered, harmlessly.
   */
  checkOutOfConfiguration(): void {
    if (this.selfRemoved()) return;
    const conf = this.#options.confState();
    const self = this.#options.selfId;
    if (conf === null || conf.voters.length + conf.learners.length === 0) return;
    if (conf.voters.includes(self) || conf.learners.includes(self)) return;
    const now = Date.now();
    if (this.#outOfConfAskedAtMs + VOUCH_ASK_INTERVAL_MS > now) return;
    this.#outOfConfAskedAtMs = now;
    for (const member of conf.voters) {
      void this.#ask(member).then(
        () => undefined,
        (error: grpc.ServiceError) => {
          if (error.code === grpc.status.PERMISSION_DENIED && error.details === removedDetails(self))
            this.noteRemovedBy(member);
        },
      );
    }
  }

  /** Whether this manager is out of the cluster: its own applied state says so, or a member did. */
  selfRemoved(): boolean {
    return this.#removedBy !== null || this.#options.cluster.removed.has(this.#options.selfId);
  }
  readonly #clients = new Map<NodeId, grpc.Client>();

  constructor(options: PeerTrustOptions) {
    this.#options = options;
    for (const [id, , keys] of options.bootstrap)
      this.#bootstrapKeys.set(
        id,
        keys.map(([key]) => key),
      );
  }

  /** Null if `peer` holding a certificate with key `spki` may talk Raft to this manager; else why not. */
  admits(peer: NodeId, spki: string): string | null {
    const cluster = this.#options.cluster;
    if (cluster.removed.has(peer)) return removedDetails(peer);
    const conf = this.#options.confState();
    if (conf === null) return 'this manager is locked';
    const known = conf.voters.length + conf.learners.length > 0;
    const member = conf.voters.includes(peer) || conf.learners.includes(peer);
    if ((member || !known) && this.#stateKeys(peer).includes(spki)) return null;
    const vouch = this.#vouched.get(peer);
    if (vouch !== undefined && vouch.untilMs > Date.now() && vouch.keys.includes(spki)) return null;
    if (member || this.#stateKeys(peer).length > 0)
      return `manager ${peer}'s certificate holds a key the cluster does not know for it`;
    return `manager ${peer} is not a member of this cluster (as far as this manager knows)`;
  }

  /** Keys `peer`'s certificate may hold, as far as this manager knows (for dialling it). */
  knownKeys(peer: NodeId): readonly string[] {
    const vouch = this.#vouched.get(peer);
    return [...this.#stateKeys(peer), ...(vouch !== undefined && vouch.untilMs > Date.now() ? vouch.keys : [])];
  }

  /** Where a manager that a member vouched for listens (this manager's state does not know it yet). */
  vouchedAddress(peer: NodeId): string | undefined {
    const vouch = this.#vouched.get(peer);
    return vouch !== undefined && vouch.untilMs > Date.now() && vouch.address !== '' ? vouch.address : undefined;
  }

  #stateKeys(peer: NodeId): string[] {
    const recorded = this.#options.cluster.memberKeys.get(peer);
    if (recorded !== undefined && recorded.length > 0) return recorded.map((k) => k.key);
    return this.#bootstrapKeys.get(peer) ?? [];
  }

  /** The members this manager knows, for Peer.Members: what it would vouch for. */
  members(): MemberEntry[] {
    const conf = this.#options.confState();
    if (conf === null) return [];
    const cluster = this.#options.cluster;
    return [...conf.voters, ...conf.learners]
      .filter((id) => !cluster.removed.has(id))
      .map(
        (id): MemberEntry => [
          id,
          cluster.addresses.get(id) ?? '',
          (cluster.memberKeys.get(id) ?? []).map((k: MemberKey) => [k.key, k.caGen] as const),
        ],
      );
  }

  /**
   * A manager this one refused as unknown: ask the members it knows whether it belongs (at most
   * once a second per manager). Its link retries, and is admitted once a member vouched.
   */
  askAbout(peer: NodeId): void {
    const now = Date.now();
    if ((this.#askedAtMs.get(peer) ?? -Infinity) + VOUCH_ASK_INTERVAL_MS > now) return;
    if (this.#askedAtMs.size >= VOUCHES_MAX) this.#askedAtMs.delete(this.#askedAtMs.keys().next().value!);
    this.#askedAtMs.set(peer, now);
    const conf = this.#options.confState();
    const members = conf === null || conf.voters.length === 0 ? this.#options.bootstrap.map(([id]) => id) : conf.voters;
    for (const member of members) {
      if (member === peer || member === this.#options.selfId) continue;
      void this.#ask(member).then(
        (entries) => {
          const entry = entries.find(([id]) => id === peer);
          if (entry === undefined) return;
          if (this.#vouched.size >= VOUCHES_MAX && !this.#vouched.has(peer))
            this.#vouched.delete(this.#vouched.keys().next().value!);
          this.#vouched.set(peer, {
            keys: entry[2].map(([key]) => key),
            address: entry[1],
            untilMs: Date.now() + VOUCH_TTL_MS,
            by: member,
          });
          this.#options.logger.info(
            { event: 'member-vouched', peer, by: member },
            `manager ${member} vouched that manager ${peer} is a member`,
          );
        },
        (error: unknown) =>
          this.#options.logger.debug(
            { event: 'vouch-ask-failed', peer, member, err: error },
            'could not ask a member about a manager',
          ),
      );
    }
  }

  #ask(member: NodeId): Promise<MemberEntry[]> {
    let client: grpc.Client;
    try {
      client = this.peerClient(member);
    } catch (error) {
      return Promise.reject(error);
    }
    const stub = client as unknown as {
      members(
        request: object,
        options: grpc.CallOptions,
        callback: (error: grpc.ServiceError | null, response?: { members: Buffer }) => void,
      ): void;
    };
    return new Promise((resolve, reject) => {
      stub.members({}, { deadline: Date.now() + VOUCH_ASK_DEADLINE_MS }, (error, response) => {
        if (error !== null) return reject(error);
        try {
          resolve(decodeMembers(response!.members));
        } catch (decodeError) {
          reject(decodeError);
        }
      });
    });
  }

  /**
   * A Peer client of `member` that proves the member is the one this manager knows (its recorded
   * key), not any CA-signed manager; one per member, closed by reset(). Throws if no address is known.
   */
  peerClient(member: NodeId): grpc.Client {
    const address =
      this.#options.cluster.addresses.get(member) ?? this.#options.bootstrap.find(([id]) => id === member)?.[1];
    if (address === undefined || address === '') throw new Error(`no address is known for manager ${member}`);
    let client = this.#clients.get(member);
    if (client === undefined) {
      const tls = this.#options.tls();
      if (tls === null) throw new Error('this manager is still starting: its TLS material is not loaded yet');
      const { Peer } = services();
      client = new Peer.Client(
        address,
        managerChannelCredentials(tls, {
          clusterId: this.#options.clusterId,
          nodeId: String(member),
          keys: () => this.#stateKeys(member),
        }),
        MANAGER_CHANNEL_OPTIONS,
      );
      this.#clients.set(member, client);
    }
    return client;
  }

  /** After a certificate renewal: channels made with the old one are closed. */
  reset(): void {
    for (const client of this.#clients.values()) client.close();
    this.#clients.clear();
  }

  close(): void {
    this.reset();
  }
}

export function encodeMembers(members: readonly MemberEntry[]): Buffer {
  return packr.pack(members);
}

/** A Peer.Members answer or a join's member list, checked field by field. */
export function decodeMembers(data: Uint8Array): MemberEntry[] {
  const value: unknown = packr.unpack(data);
  if (!Array.isArray(value) || value.length > 64) throw new Error('a member list is a list of at most 64 members');
  return value.map((entry: unknown): MemberEntry => {
    if (!Array.isArray(entry)) throw new Error('a member is [id, address, keys]');
    const [id, address, keys = []] = entry as [unknown, unknown, unknown];
    if (
      typeof id !== 'number' ||
      !Number.isSafeInteger(id) ||
      id <= 0 ||
      typeof address !== 'string' ||
      address.length > 300 ||
      !Array.isArray(keys) ||
      keys.length > 4
    )
      throw new Error('a member is [id, address, keys]');
    return [
      id,
      address,
      keys.map((k: unknown) => {
        if (!Array.isArray(k) || typeof k[0] !== 'string' || !/^[0-9a-f]{64}$/.test(k[0]) || typeof k[1] !== 'number')
          throw new Error('a member key is [SHA-256 digest, CA generation]');
        return [k[0], k[1]] as const;
      }),
    ];
  });
}
