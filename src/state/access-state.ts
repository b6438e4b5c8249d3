import { packr } from '../codec/msgpack.ts';
import {
  ROOT_POLICY,
  decide,
  policyProblem,
  type Capability,
  type Decision,
  type Policy,
  type PolicyRule,
} from './policy.ts';
import {
  certificateRefusal,
  refusal,
  refusedAs,
  type Authority,
  type DecodedCommand,
  type EncodedCommand,
  type Refusal,
  type StatePart,
  type Actor,
} from './state-part.ts';

export type { Actor } from './state-part.ts';

export type AccessCommand =
  | { readonly op: 'policy-put'; readonly name: string; readonly rules: readonly PolicyRule[] }
  | { readonly op: 'policy-remove'; readonly name: string }
  /**
   * A certificate issued to an identity: its key becomes valid for that name. A new name (or
   * one that was revoked) starts a new identity with these policies; an existing identity is
   * changed only with `reissue`, which replaces its policies and adds the key.
   */
  | {
      readonly op: 'identity-issue';
      readonly name: string;
      readonly policies: readonly string[];
      readonly key: string;
      readonly serial: string;
      readonly caGen: number;
      readonly nowMs: number;
      readonly reissue?: boolean;
    }
  /** An identity renews its own certificate: a new key for the same identity and policies. */
  | {
      readonly op: 'identity-renew';
      readonly name: string;
      readonly key: string;
      readonly serial: string;
      readonly caGen: number;
      readonly nowMs: number;
    }
  /** Every certificate of the identity is refused from the index this applies at. */
  | { readonly op: 'identity-revoke'; readonly name: string };

/** What an access command returns when it applies (a refusal otherwise). */
export interface AccessApplied {
  readonly ok: true;
}
export type AccessResult = AccessApplied | Refusal;

/** A certificate key an identity may act with. */
export interface IdentityKey {
  /** SHA-256 of the public key (DER SPKI), hex. */
  readonly key: string;
  /** Of the certificate issued for it (for people reading listings; not what is checked). */
  readonly serial: string;
  readonly issuedAtMs: number;
  /** The generation of the cluster CA that certified it: retiring that CA retires the key. */
  readonly caGen: number;
}

export interface IdentityRecord {
  readonly name: string;
  policies: string[];
  /** The keys whose certificates may act as this identity, oldest first. */
  keys: IdentityKey[];
  revoked: boolean;
  readonly createdAtMs: number;
}

export const IDENTITY_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;
/** Policies bound to one identity. */
export const IDENTITY_POLICIES_MAX = 32;
/** Keys kept per identity: renewals and re-issues add one; beyond this the oldest stops working. */
export const IDENTITY_KEYS_MAX = 4;
const KEY_PATTERN = /^[0-9a-f]{64}$/;
const SERIAL_PATTERN = /^[0-9a-f]{1,64}$/;

export function encodeAccessCommand(command: AccessCommand, actor: Actor | null = null): EncodedCommand {
  return { kind: `access.${command.op}`, data: packr.pack(actor === null ? command : { ...command, actor }) };
}

/** The rule that decides who may run an access command, given the state it applies to. */
export type AccessGuard = (state: AccessState, command: AccessCommand, actor: Actor) => string | null;

/**
 * Who may do what, replicated: policies, and identities with the public keys of their
 * certificates. A certificate is accepted only if its key is listed for its identity (an allow
 * list), so a revocation applies on every manager at the same index, and a certificate made with
 * a stolen CA key (a known name and serial, another key) is refused.
 */
export class AccessState implements StatePart<AccessCommand, AccessApplied>, Authority {
  readonly prefix = 'access.';
  readonly policies = new Map<string, Policy>();
  readonly identities = new Map<string, IdentityRecord>();
  readonly #guard: AccessGuard | null;

  /** `guard` checks a client's access command against the state it applies to (see `authorize`). */
  constructor(guard: AccessGuard | null = null) {
    this.#guard = guard;
  }

  encode(command: AccessCommand, actor: Actor | null): EncodedCommand {
    return encodeAccessCommand(command, actor);
  }

  decode(kind: string, data: Uint8Array): DecodedCommand<AccessCommand> | Refusal {
    let c: Record<string, unknown>;
    try {
      c = packr.unpack(data) as Record<string, unknown>;
    } catch {
      return refusal('INVALID', `the ${kind.slice(0, 60)} command does not decode`);
    }
    if (typeof c !== 'object' || c === null || kind !== `access.${String(c['op'])}`)
      return refusal('INVALID', `the ${kind.slice(0, 60)} command is malformed`);
    const command = checkedAccessCommand(c);
    if (typeof command === 'string') return refusal('INVALID', command);
    const actor = actorOf(c['actor']);
    if (typeof actor === 'string') return refusal('INVALID', actor);
    return { ok: true, command, actor };
  }

  /** Who may change who may do what: a valid certificate, then this state's own guard (access-guard.ts), read from this state. */
  authorize(command: AccessCommand, actor: Actor): Refusal | null {
    const revoked = certificateRefusal(this, actor, 'change');
    if (revoked !== null) return revoked;
    const refused = this.#guard?.(this, command, actor) ?? null;
    return refused === null ? null : refusedAs('GRANT_NOT_HELD', refused);
  }

  apply(command: AccessCommand): AccessResult {
    switch (command.op) {
      case 'policy-put':
        this.policies.set(command.name, { name: command.name, rules: command.rules });
        return APPLIED;
      case 'policy-remove':
        if (!this.policies.delete(command.name))
          return refusedAs('POLICY_NOT_FOUND', `policy "${command.name}" does not exist`);
        return APPLIED;
      case 'identity-issue': {
        const record = this.identities.get(command.name);
        const key = { key: command.key, serial: command.serial, issuedAtMs: command.nowMs, caGen: command.caGen };
        if (record === undefined || record.revoked) {
          this.identities.set(command.name, {
            name: command.name,
            policies: [...command.policies],
            keys: [key],
            revoked: false,
            createdAtMs: command.nowMs,
          });
          return APPLIED;
        }
        if (command.reissue !== true)
          return refusedAs(
            'IDENTITY_EXISTS',
            `identity "${command.name}" exists; re-issuing it (a new certificate, its policies replaced) is a separate act: coffer identity issue --reissue`,
          );
        record.policies = [...command.policies];
        addIdentityKey(record, key);
        return APPLIED;
      }
      case 'identity-renew': {
        const record = this.identities.get(command.name);
        if (record === undefined || record.revoked)
          return refusedAs('IDENTITY_NOT_FOUND', `identity "${command.name}" does not exist or was revoked`);
        addIdentityKey(record, {
          key: command.key,
          serial: command.serial,
          issuedAtMs: command.nowMs,
          caGen: command.caGen,
        });
        return APPLIED;
      }
      case 'identity-revoke': {
        const record = this.identities.get(command.name);
        if (record === undefined) return refusedAs('IDENTITY_NOT_FOUND', `identity "${command.name}" does not exist`);
        record.keys = [];
        record.revoked = true;
        return APPLIED;
      }
    }
  }

  /** A CA generation was retired: keys it certified stop working (their certificates no longer verify anyway). */
  retireCaGeneration(gen: number): void {
    for (const record of this.identities.values()) record.keys = record.keys.filter((k) => k.caGen > gen);
  }

  /** Whether a certificate with public key `key` (SPKI digest) may act as `name` (listed, not revoked). */
  certificateValid(name: string, key: string): boolean {
    const record = this.identities.get(name);
    return record !== undefined && !record.revoked && record.keys.some((k) => k.key === key);
  }

  /** The policies an identity has, as they are now (names that no longer exist grant nothing). */
  policiesOf(name: string): Policy[] {
    const record = this.identities.get(name);
    if (record === undefined) return [];
    return record.policies
      .map((p) => (p === ROOT_POLICY.name ? ROOT_POLICY : this.policies.get(p)))
      .filter((p): p is Policy => p !== undefined);
  }

  /** The decision for an identity; policies that do not exist (any more) grant nothing. */
  decide(name: string, capability: Capability, path: string): Decision {
    if (!this.identities.has(name)) return { allowed: false, rule: null };
    return decide(this.policiesOf(name), capability, path);
  }

  snapshot(): unknown {
    return [
      [...this.policies.values()].map((p) => [p.name, p.rules]),
      [...this.identities.values()].map((i) => [
        i.name,
        i.policies,
        i.keys.map((k) => [k.key, k.serial, k.issuedAtMs, k.caGen]),
        i.revoked,
        i.createdAtMs,
      ]),
    ];
  }

  restore(image: unknown): void {
    const [policies, identities] = image as [
      Array<[string, PolicyRule[]]>,
      Array<[string, string[], unknown[], boolean, number]>,
    ];
    this.policies.clear();
    for (const [name, rules] of policies) this.policies.set(name, { name, rules });
    this.identities.clear();
    for (const [name, ps, keys, revoked, createdAtMs] of identities) {
      // Images from before keys were recorded list serials (strings): those certificates are not
      // bound to a key, so they are not accepted; such identities must be issued again.
      const bound = keys
        .filter((k): k is [string, string, number, number] => Array.isArray(k))
        .map(([key, serial, issuedAtMs, caGen]) => ({ key, serial, issuedAtMs, caGen }));
      this.identities.set(name, { name, policies: ps, keys: bound, revoked, createdAtMs });
    }
  }
}

function addIdentityKey(record: IdentityRecord, key: IdentityKey): void {
  record.keys = [...record.keys.filter((k) => k.key !== key.key), key].slice(-IDENTITY_KEYS_MAX);
}

const APPLIED: AccessApplied = Object.freeze({ ok: true });

/** Checks a decoded command field by field (it came through the log: trust nothing), or says why it is not one. */
function checkedAccessCommand(c: Record<string, unknown>): AccessCommand | string {
  const name = c['name'];
  if (typeof name !== 'string') return 'a name is required';
  switch (c['op']) {
    case 'policy-put': {
      const problem = policyProblem({ name, rules: c['rules'] });
      if (problem !== null) return problem;
      return { op: 'policy-put', name, rules: c['rules'] as PolicyRule[] };
    }
    case 'policy-remove':
      return { op: 'policy-remove', name };
    case 'identity-issue':
    case 'identity-renew': {
      const { policies, key, serial, nowMs, reissue, caGen } = c;
      if (!IDENTITY_NAME_PATTERN.test(name))
        return 'an identity name is a letter or digit then up to 127 of [A-Za-z0-9._@-]';
      if (typeof key !== 'string' || !KEY_PATTERN.test(key))
        return 'an issued certificate names its public key (a SHA-256 digest)';
      if (typeof serial !== 'string' || !SERIAL_PATTERN.test(serial) || typeof nowMs !== 'number')
        return 'an issued certificate needs a serial and a time';
      if (typeof caGen !== 'number' || !Number.isSafeInteger(caGen) || caGen < 1)
        return 'an issued certificate names the CA generation that signed it';
      if (c['op'] === 'identity-renew') return { op: 'identity-renew', name, key, serial, caGen, nowMs };
      if (
        !Array.isArray(policies) ||
        policies.length > IDENTITY_POLICIES_MAX ||
        !policies.every((p) => typeof p === 'string')
      )
        return `policies are at most ${IDENTITY_POLICIES_MAX} names`;
      return {
        op: 'identity-issue',
        name,
        policies: policies as string[],
        key,
        serial,
        caGen,
        nowMs,
        ...(reissue === true ? { reissue: true } : {}),
      };
    }
    case 'identity-revoke':
      return { op: 'identity-revoke', name };
    default:
      return `unknown access operation ${String(c['op']).slice(0, 40)}`;
  }
}

export function actorOf(raw: unknown): Actor | null | string {
  if (raw === undefined) return null;
  const a = raw as Partial<Actor> | null;
  if (typeof a !== 'object' || a === null || typeof a.name !== 'string' || typeof a.key !== 'string')
    return 'the command names a malformed actor';
  return { name: a.name, key: a.key };
}
