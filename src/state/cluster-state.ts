import { timingSafeEqual } from 'node:crypto';
import { packr } from '../codec/msgpack.ts';
import type { NodeId } from '../raft/types.ts';
import type { Actor } from './access-state.ts';
import {
  refusal,
  refusedAs,
  type DecodedCommand,
  type EncodedCommand,
  type Refusal,
  type StatePart,
} from './state-part.ts';

/** A cluster CA: the certificate and key managers sign with, replicated so a rotation applies everywhere at one index. */
export interface CaRecord {
  readonly gen: number;
  readonly certPem: string;
  readonly keyPem: string;
  /** This CA's certificate signed by the CA before it (null for the first): holders that trust only the old CA accept leaves of this one. */
  readonly crossPem: string | null;
}

/** A key a manager's certificate may hold (SPKI digest), and the CA generation that certified it. */
export interface MemberKey {
  readonly key: string;
  readonly caGen: number;
}

/** Keys kept per manager: the current one and the one before it (a renewal in flight). */
export const MEMBER_KEYS_MAX = 2;
/** CAs trusted at once: the active one and, during a rotation, the one it replaces. */
export const CAS_MAX = 2;
/** The shortest period of the data key's scheduled rotation (each one rewraps: every manager snapshots). */
export const KEY_SCHEDULE_PERIOD_MIN_MS = 60 * 60_000;
/** The longest period of the data key's scheduled rotation. */
export const KEY_SCHEDULE_PERIOD_MAX_MS = 365 * 24 * 60 * 60_000;

/** Whether `periodMs` is a period the data key's rotation may be scheduled at (whole ms, within the limits). */
export function isKeySchedulePeriod(periodMs: unknown): periodMs is number {
  return (
    typeof periodMs === 'number' &&
    Number.isSafeInteger(periodMs) &&
    periodMs >= KEY_SCHEDULE_PERIOD_MIN_MS &&
    periodMs <= KEY_SCHEDULE_PERIOD_MAX_MS
  );
}

/** The commands of the cluster part (every kind starts with `cluster.`). */
export type ClusterCommand =
  | { readonly kind: 'cluster.member'; readonly id: NodeId; readonly address: string; readonly key?: MemberKey }
  | { readonly kind: 'cluster.member-key'; readonly id: NodeId; readonly key: MemberKey }
  | { readonly kind: 'cluster.ca-install'; readonly certPem: string; readonly keyPem: string }
  | { readonly kind: 'cluster.ca-add'; readonly ca: CaRecord }
  | { readonly kind: 'cluster.ca-retire'; readonly gen: number }
  /**
   * The last durable record of a manager's audit log, replicated now and then, so someone who can
   * rewrite that manager's audit directory cannot cut or replace what it held without verify
   * noticing. It only moves forward, unless `reset` (the manager started a new log on purpose).
   */
  | {
      readonly kind: 'cluster.audit-anchor';
      readonly id: NodeId;
      readonly seq: number;
      readonly hash: string;
      readonly reset: boolean;
    }
  | { readonly kind: 'cluster.removed'; readonly id: NodeId }
  /** A new join token (its hash): until `expiresAtMs` (proposer's clock), for `uses` joins (null: any number). */
  | {
      readonly kind: 'cluster.join-token';
      readonly hash: Uint8Array;
      readonly expiresAtMs: number | null;
      readonly uses: number | null;
    }
  /**
   * A manager joins with the token whose hash is given: checked and counted where it applies (so
   * a single-use token admits one manager however many leaders saw it), at the joiner's request
   * time; then the member is recorded with its address and key.
   */
  | {
      readonly kind: 'cluster.join';
      readonly tokenHash: Uint8Array;
      readonly nowMs: number;
      readonly id: NodeId;
      readonly address: string;
      readonly key: MemberKey;
    }
  | { readonly kind: 'cluster.hold-learner'; readonly id: NodeId; readonly held: boolean }
  | { readonly kind: 'cluster.recovery-key'; readonly publicKey: Uint8Array }
  /**
   * The data key's scheduled rotation: the leader rotates, then rewraps, once the active term is
   * `periodMs` old (key-schedule.ts); null turns it off.
   */
  | { readonly kind: 'cluster.key-schedule'; readonly periodMs: number | null };

/** What a cluster command returns when it applies (a refusal otherwise). */
export interface ClusterApplied {
  readonly ok: true;
}
export type ClusterResult = ClusterApplied | Refusal;

/**
 * Replicated facts about the cluster itself: where each manager listens, which managers were
 * removed (their certificates are refused for good), and the hash of the current manager join
 * token (replacing it makes the old token stop working on every manager at once), which
 * learners an operator demoted (the leader does not promote those on its own), and the data key's
 * rotation schedule.
 */
export class ClusterState implements StatePart<ClusterCommand, ClusterApplied> {
  readonly prefix = 'cluster.';
  readonly addresses = new Map<NodeId, string>();
  /** The keys each manager's certificate may hold: a Raft stream or a proposal from any other key is refused. */
  readonly memberKeys = new Map<NodeId, MemberKey[]>();
  /** Each manager's audit anchor: its log's last durable record as last replicated, and how often it was reset. */
  readonly auditAnchors = new Map<NodeId, { readonly seq: number; readonly hash: string; readonly resets: number }>();
  /** The cluster CAs, oldest first; the last is the active one (empty until the first leader installs it). */
  cas: CaRecord[] = [];
  readonly removed = new Set<NodeId>();
  joinTokenHash: Buffer | null = null;
  /** When the join token stops working (the proposer's clock), or null for never (tokens from before expiry existed). */
  joinTokenExpiresAtMs: number | null = null;
  /** Joins the token still admits, or null for any number. */
  joinTokenUsesLeft: number | null = null;
  readonly heldLearners = new Set<NodeId>();
  /** The public half of the recovery key: backups wrap the root key for it. */
  recoveryPublicKey: Buffer | null = null;
  /** How old the active data key may get before the leader rotates and rewraps it, or null: no schedule. */
  keySchedulePeriodMs: number | null = null;
  readonly #onCaRetired: (gen: number) => void;

  /** `onCaRetired` runs when a CA generation is retired, at the same index (AppliedState retires the identity keys it certified). */
  constructor(options: { onCaRetired?: (gen: number) => void } = {}) {
    this.#onCaRetired = options.onCaRetired ?? (() => undefined);
  }

  static encode(command: ClusterCommand): EncodedCommand {
    switch (command.kind) {
      case 'cluster.member':
        return {
          kind: command.kind,
          data: packr.pack(
            command.key === undefined
              ? [command.id, command.address]
              : [command.id, command.address, command.key.key, command.key.caGen],
          ),
        };
      case 'cluster.member-key':
        return { kind: command.kind, data: packr.pack([command.id, command.key.key, command.key.caGen]) };
      case 'cluster.ca-install':
        return { kind: command.kind, data: packr.pack([command.certPem, command.keyPem]) };
      case 'cluster.ca-add':
        return {
          kind: command.kind,
          data: packr.pack([command.ca.gen, command.ca.certPem, command.ca.keyPem, command.ca.crossPem]),
        };
      case 'cluster.ca-retire':
        return { kind: command.kind, data: packr.pack([command.gen]) };
      case 'cluster.audit-anchor':
        return { kind: command.kind, data: packr.pack([command.id, command.seq, command.hash, command.reset]) };
      case 'cluster.removed':
        return { kind: command.kind, data: packr.pack([command.id]) };
      case 'cluster.join-token':
        return { kind: command.kind, data: packr.pack([command.hash, command.expiresAtMs, command.uses]) };
      case 'cluster.join':
        return {
          kind: command.kind,
          data: packr.pack([
            command.tokenHash,
            command.nowMs,
            command.id,
            command.address,
            command.key.key,
            command.key.caGen,
          ]),
        };
      case 'cluster.hold-learner':
        return { kind: command.kind, data: packr.pack([command.id, command.held]) };
      case 'cluster.recovery-key':
        return { kind: command.kind, data: packr.pack([command.publicKey]) };
      case 'cluster.key-schedule':
        return { kind: command.kind, data: packr.pack([command.periodMs]) };
    }
  }

  /** Cluster commands are the managers' own: they name no client. */
  encode(command: ClusterCommand, actor: Actor | null = null): EncodedCommand {
    if (actor !== null) throw new TypeError(`a cluster command names no client (got "${actor.name}")`);
    return ClusterState.encode(command);
  }

  decode(kind: string, data: Uint8Array): DecodedCommand<ClusterCommand> | Refusal {
    const command = decodeClusterCommand(kind, data);
    return typeof command === 'string' ? refusal('INVALID', command) : { ok: true, command, actor: null };
  }

  /** Never reached (cluster commands decode with no actor); were one to name a client, it is refused. */
  authorize(command: ClusterCommand, actor: Actor): Refusal | null {
    return refusal('DENIED', `a ${command.kind} command is a manager's own, not identity "${actor.name}"'s`);
  }

  apply(command: ClusterCommand): ClusterResult {
    switch (command.kind) {
      case 'cluster.member': {
        if (this.removed.has(command.id))
          return refusal('PRECONDITION', `manager ${command.id} was removed; it cannot come back under that id`);
        this.addresses.set(command.id, command.address);
        if (command.key !== undefined) this.#addMemberKey(command.id, command.key);
        return APPLIED;
      }
      case 'cluster.member-key': {
        if (this.removed.has(command.id)) return refusal('PRECONDITION', `manager ${command.id} was removed`);
        this.#addMemberKey(command.id, command.key);
        return APPLIED;
      }
      case 'cluster.ca-install': {
        if (this.cas.length > 0) return refusal('PRECONDITION', 'the cluster CA is installed already');
        this.cas = [{ gen: 1, certPem: command.certPem, keyPem: command.keyPem, crossPem: null }];
        return APPLIED;
      }
      case 'cluster.ca-add': {
        const { gen } = command.ca;
        const active = this.cas[this.cas.length - 1];
        if (active === undefined) return refusal('PRECONDITION', 'no CA is installed yet');
        if (this.cas.length >= CAS_MAX)
          return refusal(
            'PRECONDITION',
            `CA generation ${this.cas[0]!.gen} is still trusted: retire it first (coffer ca retire)`,
          );
        if (gen !== active.gen + 1)
          return refusal('PRECONDITION', `the next CA generation is ${active.gen + 1}, not ${gen}`);
        this.cas = [...this.cas, command.ca];
        return APPLIED;
      }
      case 'cluster.audit-anchor': {
        const { id, seq, hash, reset } = command;
        const known = this.auditAnchors.get(id);
        if (known !== undefined && seq < known.seq && !reset)
          return refusal(
            'PRECONDITION',
            `manager ${id}'s audit log went back from record ${known.seq} to ${seq} without a reset: it was cut or replaced`,
          );
        this.auditAnchors.set(id, { seq, hash, resets: (known?.resets ?? 0) + (reset ? 1 : 0) });
        return APPLIED;
      }
      case 'cluster.ca-retire': {
        const { gen } = command;
        if (this.cas.length < 2 || this.cas[0]!.gen !== gen)
          return refusal('PRECONDITION', `CA generation ${gen} is not the one being replaced`);
        this.cas = this.cas.slice(1);
        // Managers' keys certified only by the retired CA go with it.
        for (const [id, keys] of this.memberKeys)
          this.memberKeys.set(
            id,
            keys.filter((k) => k.caGen > gen),
          );
        this.#onCaRetired(gen);
        return APPLIED;
      }
      case 'cluster.removed': {
        const { id } = command;
        this.removed.add(id);
        this.addresses.delete(id);
        this.memberKeys.delete(id);
        this.heldLearners.delete(id);
        return APPLIED;
      }
      case 'cluster.join-token': {
        this.joinTokenHash = Buffer.from(command.hash);
        this.joinTokenExpiresAtMs = command.expiresAtMs;
        this.joinTokenUsesLeft = command.uses;
        return APPLIED;
      }
      case 'cluster.join': {
        const { id } = command;
        const tokenRefusal = this.joinTokenRefusal(command.tokenHash, command.nowMs);
        if (tokenRefusal !== null) return refusedAs('JOIN_TOKEN_REFUSED', tokenRefusal);
        if (this.removed.has(id) || this.addresses.has(id)) return refusal('PRECONDITION', `manager id ${id} is taken`);
        if (this.joinTokenUsesLeft !== null) this.joinTokenUsesLeft--;
        this.addresses.set(id, command.address);
        this.#addMemberKey(id, command.key);
        return APPLIED;
      }
      case 'cluster.hold-learner': {
        if (command.held) this.heldLearners.add(command.id);
        else this.heldLearners.delete(command.id);
        return APPLIED;
      }
      case 'cluster.recovery-key': {
        this.recoveryPublicKey = Buffer.from(command.publicKey);
        return APPLIED;
      }
      case 'cluster.key-schedule': {
        this.keySchedulePeriodMs = command.periodMs;
        return APPLIED;
      }
    }
  }

  /** Null if a join with the token whose hash is `tokenHash` may proceed at `nowMs`; else why not. */
  joinTokenRefusal(tokenHash: Uint8Array, nowMs: number): string | null {
    if (
      this.joinTokenHash === null ||
      tokenHash.byteLength !== this.joinTokenHash.byteLength ||
      !timingSafeEqual(this.joinTokenHash, tokenHash)
    )
      return "the join token is not valid: it was rotated, or it is not this cluster's";
    if (this.joinTokenExpiresAtMs !== null && nowMs >= this.joinTokenExpiresAtMs)
      return `the join token expired at ${new Date(this.joinTokenExpiresAtMs).toISOString()}; make a new one with coffer cluster rotate-join-token`;
    if (this.joinTokenUsesLeft !== null && this.joinTokenUsesLeft <= 0)
      return 'the join token was used up (it was made for a limited number of joins); make a new one with coffer cluster rotate-join-token';
    return null;
  }

  /** The active CA (the newest), or null before the first leader installed it. */
  get activeCa(): CaRecord | null {
    return this.cas[this.cas.length - 1] ?? null;
  }

  #addMemberKey(id: NodeId, key: MemberKey): void {
    const keys = (this.memberKeys.get(id) ?? []).filter((k) => k.key !== key.key);
    this.memberKeys.set(id, [...keys, key].slice(-MEMBER_KEYS_MAX));
  }

  snapshot(): unknown {
    return [
      [...this.addresses],
      [...this.removed],
      this.joinTokenHash,
      [...this.heldLearners],
      this.recoveryPublicKey,
      this.cas.map((c) => [c.gen, c.certPem, c.keyPem, c.crossPem]),
      [...this.memberKeys].map(([id, keys]) => [id, keys.map((k) => [k.key, k.caGen])]),
      [this.joinTokenExpiresAtMs, this.joinTokenUsesLeft],
      [...this.auditAnchors].map(([id, a]) => [id, a.seq, a.hash, a.resets]),
      this.keySchedulePeriodMs,
    ];
  }

  restore(image: unknown): void {
    // Images written before held learners existed have three fields.
    const [
      addresses,
      removed,
      hash,
      held = [],
      recovery = null,
      cas = [],
      memberKeys = [],
      [tokenExpiresAtMs, tokenUsesLeft] = [null, null],
      anchors = [],
      keySchedulePeriodMs = null,
    ] = image as [
      Array<[number, string]>,
      number[],
      Uint8Array | null,
      number[]?,
      (Uint8Array | null)?,
      Array<[number, string, string, string | null]>?,
      Array<[number, Array<[string, number]>]>?,
      [number | null, number | null]?,
      Array<[number, number, string, number]>?,
      (number | null)?,
    ];
    this.addresses.clear();
    for (const [id, address] of addresses) this.addresses.set(id, address);
    this.removed.clear();
    for (const id of removed) this.removed.add(id);
    this.joinTokenHash = hash === null ? null : Buffer.from(hash);
    this.joinTokenExpiresAtMs = tokenExpiresAtMs;
    this.joinTokenUsesLeft = tokenUsesLeft;
    this.auditAnchors.clear();
    for (const [id, seq, anchorHash, resets] of anchors) this.auditAnchors.set(id, { seq, hash: anchorHash, resets });
    this.heldLearners.clear();
    for (const id of held) this.heldLearners.add(id);
    this.recoveryPublicKey = recovery === null ? null : Buffer.from(recovery);
    this.keySchedulePeriodMs = keySchedulePeriodMs;
    this.cas = cas.map(([gen, certPem, keyPem, crossPem]) => ({ gen, certPem, keyPem, crossPem }));
    this.memberKeys.clear();
    for (const [id, keys] of memberKeys)
      this.memberKeys.set(
        id,
        keys.map(([key, caGen]) => ({ key, caGen })),
      );
  }
}

const APPLIED: ClusterApplied = Object.freeze({ ok: true });

/** A logged cluster command checked field by field, or why it is not one. */
function decodeClusterCommand(kind: string, data: Uint8Array): ClusterCommand | string {
  let fields: unknown;
  try {
    fields = packr.unpack(data);
  } catch {
    return `the ${kind.slice(0, 60)} command does not decode`;
  }
  if (!Array.isArray(fields)) return `a ${kind.slice(0, 60)} command is not a list`;
  const isId = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v > 0;
  switch (kind) {
    case 'cluster.member': {
      const [id, address, key, caGen] = fields as unknown[];
      if (!isId(id) || typeof address !== 'string' || address.length > 300)
        return 'a member needs an id and a host:port';
      if (key === undefined) return { kind, id, address };
      const memberKey = memberKeyOf(key, caGen);
      if (memberKey === null) return 'a member key is a SHA-256 digest and a CA generation';
      return { kind, id, address, key: memberKey };
    }
    case 'cluster.member-key': {
      const [id, key, caGen] = fields as unknown[];
      const memberKey = memberKeyOf(key, caGen);
      if (!isId(id) || memberKey === null)
        return 'a member key needs a member id, a SHA-256 digest and a CA generation';
      return { kind, id, key: memberKey };
    }
    case 'cluster.ca-install': {
      const [certPem, keyPem] = fields as unknown[];
      if (typeof certPem !== 'string' || typeof keyPem !== 'string') return 'a CA needs a certificate and a key';
      return { kind, certPem, keyPem };
    }
    case 'cluster.ca-add': {
      const [gen, certPem, keyPem, crossPem] = fields as unknown[];
      if (
        typeof gen !== 'number' ||
        typeof certPem !== 'string' ||
        typeof keyPem !== 'string' ||
        typeof crossPem !== 'string'
      )
        return 'a new CA needs a generation, a certificate, a key and a cross-signed certificate';
      return { kind, ca: { gen, certPem, keyPem, crossPem } };
    }
    case 'cluster.ca-retire': {
      const [gen] = fields as unknown[];
      if (typeof gen !== 'number' || !Number.isSafeInteger(gen) || gen < 1)
        return 'a CA retirement names a CA generation';
      return { kind, gen };
    }
    case 'cluster.audit-anchor': {
      const [id, seq, hash, reset] = fields as unknown[];
      if (
        !isId(id) ||
        typeof seq !== 'number' ||
        !Number.isSafeInteger(seq) ||
        seq < 0 ||
        typeof hash !== 'string' ||
        !/^[0-9a-f]{64}$/.test(hash) ||
        typeof reset !== 'boolean'
      )
        return 'an audit anchor is a manager id, a record number, its hash and a reset flag';
      return { kind, id, seq, hash, reset };
    }
    case 'cluster.removed': {
      const [id] = fields as unknown[];
      if (!isId(id)) return 'a removal needs a member id';
      return { kind, id };
    }
    case 'cluster.join-token': {
      // Tokens from before expiry and uses existed carry the hash alone.
      const [hash, expiresAtMs = null, uses = null] = fields as unknown[];
      if (!(hash instanceof Uint8Array) || hash.byteLength !== 32) return 'a join token hash has 32 bytes';
      if (expiresAtMs !== null && typeof expiresAtMs !== 'number') return 'a join token expiry is a time';
      if (uses !== null && !(typeof uses === 'number' && Number.isSafeInteger(uses) && uses >= 1))
        return 'a join token admits at least one join';
      return { kind, hash, expiresAtMs, uses };
    }
    case 'cluster.join': {
      const [tokenHash, nowMs, id, address, key, caGen] = fields as unknown[];
      const memberKey = memberKeyOf(key, caGen);
      if (
        !(tokenHash instanceof Uint8Array) ||
        typeof nowMs !== 'number' ||
        !isId(id) ||
        typeof address !== 'string' ||
        address.length > 300 ||
        memberKey === null
      )
        return 'a join needs a token, a time, an id, an address and a key';
      return { kind, tokenHash, nowMs, id, address, key: memberKey };
    }
    case 'cluster.hold-learner': {
      const [id, held] = fields as unknown[];
      if (!isId(id) || typeof held !== 'boolean') return 'a hold needs a member id and a flag';
      return { kind, id, held };
    }
    case 'cluster.recovery-key': {
      const [publicKey] = fields as unknown[];
      if (!(publicKey instanceof Uint8Array) || publicKey.byteLength !== 32)
        return 'a recovery public key has 32 bytes';
      return { kind, publicKey };
    }
    case 'cluster.key-schedule': {
      const [periodMs] = fields as unknown[];
      if (periodMs !== null && !isKeySchedulePeriod(periodMs))
        return 'a key schedule is a period of 1 h to 365 d in ms, or null (off)';
      return { kind, periodMs };
    }
    default:
      return `unknown cluster command ${kind.slice(0, 60)}`;
  }
}

/** A member key (a SHA-256 digest, hex, and the CA generation that certified it), or null if these are not one. */
function memberKeyOf(key: unknown, caGen: unknown): MemberKey | null {
  return typeof key === 'string' &&
    /^[0-9a-f]{64}$/.test(key) &&
    typeof caGen === 'number' &&
    Number.isSafeInteger(caGen) &&
    caGen >= 1
    ? { key, caGen }
    : null;
}
