import { Packr } from 'msgpackr';
import type { NodeId } from '../raft/types.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });

/** Command kinds this state handles (all start with `cluster.`). */
export type ClusterCommand =
  | { readonly kind: 'cluster.member'; readonly id: NodeId; readonly address: string }
  | { readonly kind: 'cluster.removed'; readonly id: NodeId }
  | { readonly kind: 'cluster.join-token'; readonly hash: Uint8Array }
  | { readonly kind: 'cluster.hold-learner'; readonly id: NodeId; readonly held: boolean }
  | { readonly kind: 'cluster.recovery-key'; readonly publicKey: Uint8Array };

export type ClusterResult = { readonly ok: true } | { readonly ok: false; readonly reason: string };

/**
 * Replicated facts about the cluster itself: where each manager listens, which managers were
 * removed (their certificates are refused for good), and the hash of the current manager join
 * token (replacing it makes the old token stop working on every manager at once), and which
 * learners an operator demoted (the leader does not promote those on its own).
 */
export class ClusterState {
  readonly addresses = new Map<NodeId, string>();
  readonly removed = new Set<NodeId>();
  joinTokenHash: Buffer | null = null;
  readonly heldLearners = new Set<NodeId>();
  /** The public half of the recovery key: backups wrap the root key for it. */
  recoveryPublicKey: Buffer | null = null;

  static encode(command: ClusterCommand): { kind: string; data: Buffer } {
    switch (command.kind) {
      case 'cluster.member':
        return { kind: command.kind, data: packr.pack([command.id, command.address]) };
      case 'cluster.removed':
        return { kind: command.kind, data: packr.pack([command.id]) };
      case 'cluster.join-token':
        return { kind: command.kind, data: packr.pack([command.hash]) };
      case 'cluster.hold-learner':
        return { kind: command.kind, data: packr.pack([command.id, command.held]) };
      case 'cluster.recovery-key':
        return { kind: command.kind, data: packr.pack([command.publicKey]) };
    }
  }

  apply(kind: string, data: Buffer): ClusterResult {
    const fields: unknown = packr.unpack(data);
    if (!Array.isArray(fields)) return { ok: false, reason: `a ${kind} command is not a list` };
    const isId = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v > 0;
    switch (kind) {
      case 'cluster.member': {
        const [id, address] = fields as unknown[];
        if (!isId(id) || typeof address !== 'string' || address.length > 300) return { ok: false, reason: 'a member needs an id and a host:port' };
        if (this.removed.has(id)) return { ok: false, reason: `manager ${id} was removed; it cannot come back under that id` };
        this.addresses.set(id, address);
        return { ok: true };
      }
      case 'cluster.removed': {
        const [id] = fields as unknown[];
        if (!isId(id)) return { ok: false, reason: 'a removal needs a member id' };
        this.removed.add(id);
        this.addresses.delete(id);
        this.heldLearners.delete(id);
        return { ok: true };
      }
      case 'cluster.join-token': {
        const [hash] = fields as unknown[];
        if (!(hash instanceof Uint8Array) || hash.byteLength !== 32) return { ok: false, reason: 'a join token hash has 32 bytes' };
        this.joinTokenHash = Buffer.from(hash);
        return { ok: true };
      }
      case 'cluster.hold-learner': {
        const [id, held] = fields as unknown[];
        if (!isId(id) || typeof held !== 'boolean') return { ok: false, reason: 'a hold needs a member id and a flag' };
        if (held) this.heldLearners.add(id);
        else this.heldLearners.delete(id);
        return { ok: true };
      }
      case 'cluster.recovery-key': {
        const [key] = fields as unknown[];
        if (!(key instanceof Uint8Array) || key.byteLength !== 32) return { ok: false, reason: 'a recovery public key has 32 bytes' };
        this.recoveryPublicKey = Buffer.from(key);
        return { ok: true };
      }
      default:
        return { ok: false, reason: `unknown cluster command ${kind}` };
    }
  }

  snapshot(): unknown {
    return [[...this.addresses], [...this.removed], this.joinTokenHash, [...this.heldLearners], this.recoveryPublicKey];
  }

  restore(image: unknown): void {
    // Images written before held learners existed have three fields.
    const [addresses, removed, hash, held = [], recovery = null] = image as [Array<[number, string]>, number[], Uint8Array | null, number[]?, (Uint8Array | null)?];
    this.addresses.clear();
    for (const [id, address] of addresses) this.addresses.set(id, address);
    this.removed.clear();
    for (const id of removed) this.removed.add(id);
    this.joinTokenHash = hash === null ? null : Buffer.from(hash);
    this.heldLearners.clear();
    for (const id of held) this.heldLearners.add(id);
    this.recoveryPublicKey = recovery === null ? null : Buffer.from(recovery);
  }
}
