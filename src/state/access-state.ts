import { packr } from '../codec/msgpack.ts';
import { LEASE_OPS, LeaseBook, checkedLeaseCommand, type LeaseCommand } from './leases.ts';
import {
  AUTH_METHODS,
  AUTH_ROLES_MAX,
  LOGIN_IDENTITY_PATTERN,
  LOGIN_KEYS_MAX,
  LOGIN_SUBJECT_PATTERN,
  authMethodProblem,
  authRoleProblem,
  rolePolicies,
  type AuthMethod,
  type AuthMethodConfig,
  type AuthRole,
} from './auth-config.ts';
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
  | { readonly op: 'identity-revoke'; readonly name: string }
  /**
   * A login (src/server/auth/): a manager checked the subject's proof against the role and
   * certified the key until `notAfterMs`. Made by managers only, never named by a client.
   */
  | {
      readonly op: 'identity-login';
      readonly name: string;
      readonly role: string;
      readonly generation: number;
      readonly subject: string;
      readonly policies: readonly string[];
      readonly key: string;
      readonly serial: string;
      readonly caGen: number;
      readonly nowMs: number;
      readonly notAfterMs: number;
      /** The TOTP time step of the code the login gave (0: none): a step at or before the last one used is refused. */
      readonly totpStep: number;
    }
  /** A TOTP secret (base32) for a login identity, made by the manager that enrolled it. */
  | { readonly op: 'totp-enroll'; readonly name: string; readonly secret: string; readonly nowMs: number }
  | { readonly op: 'totp-remove'; readonly name: string }
  /** A revoked login identity is forgotten: its subject may log in again. */
  | { readonly op: 'identity-forget'; readonly name: string }
  /**
   * The leader drops login identities whose every certificate had ended by `nowMs` (named, as the
   * expiry sweep names versions, so every manager drops the same ones); revoked ones are kept.
   */
  | { readonly op: 'identity-prune'; readonly name: ''; readonly names: readonly string[]; readonly nowMs: number }
  | { readonly op: 'auth-method-put'; readonly name: AuthMethod; readonly config: AuthMethodConfig }
  | { readonly op: 'auth-method-remove'; readonly name: AuthMethod }
  | { readonly op: 'auth-role-put'; readonly name: string; readonly role: Omit<AuthRole, 'generation'> }
  | { readonly op: 'auth-role-remove'; readonly name: string }
  /** Databases, their roles and the leases of the users made in them (src/state/leases.ts). */
  | LeaseCommand;

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
  /** When its certificate ends (logins: what the request edge checks; 0 = not recorded). */
  readonly notAfterMs: number;
  /** Logins: the generation of the role it logged in with (0 for certificates issued by hand). */
  readonly roleGeneration: number;
}

export interface IdentityRecord {
  readonly name: string;
  policies: string[];
  /** The keys whose certificates may act as this identity, oldest first. */
  keys: IdentityKey[];
  revoked: boolean;
  readonly createdAtMs: number;
  /** Login identities: the role they log in with (null for identities issued by hand). */
  readonly role: string | null;
  /** Login identities: the subject as the method named it (a token's claim, an LDAP username). */
  readonly subject: string;
}

export interface TotpEnrolment {
  /** Base32, as authenticator apps take it. */
  readonly secret: string;
  readonly enrolledAtMs: number;
  /** The time step of the last code a login used (a code is good once). */
  lastTimeStep: number;
}

export const TOTP_SECRET_PATTERN = /^[A-Z2-7]{16,128}$/;

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
  /** Login methods (at most one of each kind) and roles (src/state/auth-config.ts). */
  readonly authMethods = new Map<AuthMethod, AuthMethodConfig>();
  readonly authRoles = new Map<string, AuthRole>();
  /**
   * TOTP enrolments by login identity. The secrets are sealed wherever they rest (the log, the
   * snapshots, backups) and held in memory while a manager runs, as the CA key is.
   */
  readonly totp = new Map<string, TotpEnrolment>();
  /** Dynamic database credentials: databases, roles, leases. */
  readonly leases = new LeaseBook();
  /** The generation the next new role gets (a role removed and put again is a new role). */
  #roleGenerationNext = 1;
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
        const key = issuedKey(command);
        if (record === undefined || record.revoked) {
          this.identities.set(command.name, {
            name: command.name,
            policies: [...command.policies],
            keys: [key],
            revoked: false,
            createdAtMs: command.nowMs,
            role: null,
            subject: '',
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
        addIdentityKey(record, issuedKey(command));
        return APPLIED;
      }
      case 'identity-revoke': {
        const record = this.identities.get(command.name);
        if (record === undefined) {
          // A login identity may be shut out before it ever logs in (or after it was pruned).
          const at = command.name.indexOf(':');
          if (at < 0 || !LOGIN_IDENTITY_PATTERN.test(command.name))
            return refusedAs('IDENTITY_NOT_FOUND', `identity "${command.name}" does not exist`);
          this.identities.set(command.name, {
            name: command.name,
            policies: [],
            keys: [],
            revoked: true,
            createdAtMs: 0,
            role: command.name.slice(0, at),
            subject: command.name.slice(at + 1),
          });
          return APPLIED;
        }
        record.keys = [];
        record.revoked = true;
        return APPLIED;
      }
      case 'identity-login':
        return this.#login(command);
      case 'identity-forget': {
        const record = this.identities.get(command.name);
        if (record === undefined || record.role === null)
          return refusedAs('IDENTITY_NOT_FOUND', `no login identity "${command.name}" is known`);
        if (!record.revoked)
          return refusal(
            'PRECONDITION',
            `identity "${command.name}" is not revoked: revoke it first (coffer identity revoke)`,
          );
        this.identities.delete(command.name);
        return APPLIED;
      }
      case 'identity-prune':
        for (const name of command.names) {
          const record = this.identities.get(name);
          if (record !== undefined && loginEnded(record, command.nowMs)) this.identities.delete(name);
        }
        return APPLIED;
      case 'totp-enroll':
        this.totp.set(command.name, { secret: command.secret, enrolledAtMs: command.nowMs, lastTimeStep: 0 });
        return APPLIED;
      case 'totp-remove':
        if (!this.totp.delete(command.name))
          return refusedAs('IDENTITY_NOT_FOUND', `identity "${command.name}" has no TOTP enrolment`);
        return APPLIED;
      case 'auth-method-put':
        this.authMethods.set(command.name, command.config);
        return APPLIED;
      case 'auth-method-remove':
        if (!this.authMethods.delete(command.name))
          return refusedAs('AUTH_METHOD_NOT_FOUND', `the ${command.name} login method is not configured`);
        return APPLIED;
      case 'auth-role-put': {
        const existing = this.authRoles.get(command.name);
        if (existing === undefined && this.authRoles.size >= AUTH_ROLES_MAX)
          return refusedAs('QUOTA_EXCEEDED', `at most ${AUTH_ROLES_MAX} login roles`, {
            limit: String(AUTH_ROLES_MAX),
          });
        // A changed role keeps its generation (its logins go on); a new one gets the next.
        const generation = existing?.generation ?? this.#roleGenerationNext++;
        this.authRoles.set(command.name, { ...command.role, name: command.name, generation });
        return APPLIED;
      }
      case 'auth-role-remove':
        if (!this.authRoles.delete(command.name))
          return refusedAs('ROLE_NOT_FOUND', `login role "${command.name}" does not exist`);
        return APPLIED;
      default: {
        // The rest are the lease book's (databases, roles, leases).
        const outcome = this.leases.apply(command);
        return 'ok' in outcome ? APPLIED : refusal(outcome.refused, outcome.reason);
      }
    }
  }

  /** A login applies: the role still exists (the same one), the identity is not revoked. */
  #login(command: Extract<AccessCommand, { op: 'identity-login' }>): AccessResult {
    const role = this.authRoles.get(command.role);
    if (role === undefined || role.generation !== command.generation)
      return refusedAs('ROLE_NOT_FOUND', `login role "${command.role}" was removed while this login was made`);
    const key: IdentityKey = {
      key: command.key,
      serial: command.serial,
      issuedAtMs: command.nowMs,
      caGen: command.caGen,
      notAfterMs: command.notAfterMs,
      roleGeneration: command.generation,
    };
    const record = this.identities.get(command.name);
    const enrolment = this.totp.get(command.name);
    if (command.totpStep > 0 && (enrolment === undefined || command.totpStep <= enrolment.lastTimeStep))
      return refusedAs(
        'TOTP_REUSED',
        enrolment === undefined
          ? `identity "${command.name}" has no TOTP enrolment any more`
          : 'this TOTP code was used by another login: wait for the next code',
      );
    if (record?.revoked === true)
      return refusedAs(
        'IDENTITY_REVOKED',
        `identity "${command.name}" was revoked; an administrator lifts that with coffer identity forget`,
      );
    if (enrolment !== undefined && command.totpStep > 0) enrolment.lastTimeStep = command.totpStep;
    if (record === undefined) {
      this.identities.set(command.name, {
        name: command.name,
        policies: [...command.policies],
        keys: [key],
        revoked: false,
        createdAtMs: command.nowMs,
        role: command.role,
        subject: command.subject,
      });
      return APPLIED;
    }
    // The policies of the latest login (a group left, a role changed); ended certificates go.
    record.policies = [...command.policies];
    record.keys = [...record.keys.filter((k) => k.key !== key.key && k.notAfterMs > command.nowMs), key].slice(
      -LOGIN_KEYS_MAX,
    );
    return APPLIED;
  }

  /** A CA generation was retired: keys it certified stop working (their certificates no longer verify anyway). */
  retireCaGeneration(gen: number): void {
    for (const record of this.identities.values()) record.keys = record.keys.filter((k) => k.caGen > gen);
  }

  /** Whether a certificate with public key `key` (SPKI digest) may act as `name` (listed, not revoked). */
  certificateValid(name: string, key: string): boolean {
    const record = this.identities.get(name);
    if (record === undefined || record.revoked) return false;
    const listed = record.keys.find((k) => k.key === key);
    if (listed === undefined) return false;
    // A login's certificate works while its role does (the same role: removed and put again is another).
    return record.role === null || this.authRoles.get(record.role)?.generation === listed.roleGeneration;
  }

  /** Up to `max` login identities whose every certificate had ended by `nowMs` (not revoked): what a prune may drop. */
  endedLogins(nowMs: number, max: number): string[] {
    const ended: string[] = [];
    for (const record of this.identities.values()) {
      if (ended.length >= max) break;
      if (loginEnded(record, nowMs)) ended.push(record.name);
    }
    return ended;
  }

  /** The key an identity's certificate is listed with (its end, its role's generation), if it is. */
  certificateKey(name: string, key: string): IdentityKey | undefined {
    return this.identities.get(name)?.keys.find((k) => k.key === key);
  }

  /** The policies an identity has, as they are now (names that no longer exist grant nothing). */
  policiesOf(name: string): Policy[] {
    const record = this.identities.get(name);
    if (record === undefined) return [];
    // A login holds what its role gives now: a role narrowed after the login narrows it at once.
    const role = record.role === null ? null : this.authRoles.get(record.role);
    const given = role === undefined ? new Set<string>() : role === null ? null : new Set(rolePolicies(role));
    return record.policies
      .filter((p) => given === null || given.has(p))
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
        i.keys.map((k) => [k.key, k.serial, k.issuedAtMs, k.caGen, k.notAfterMs, k.roleGeneration]),
        i.revoked,
        i.createdAtMs,
        i.role,
        i.subject,
      ]),
      [...this.authMethods.values()],
      [...this.authRoles.values()],
      this.#roleGenerationNext,
      [...this.totp].map(([name, t]) => [name, t.secret, t.enrolledAtMs, t.lastTimeStep]),
      this.leases.snapshot(),
    ];
  }

  restore(image: unknown): void {
    // Images from before logins have two elements, and shorter identity and key tuples.
    const [policies, identities, methods = [], roles = [], roleGenerationNext = 1, totp = [], leases] = image as [
      Array<[string, PolicyRule[]]>,
      Array<[string, string[], unknown[], boolean, number, (string | null)?, string?]>,
      AuthMethodConfig[]?,
      AuthRole[]?,
      number?,
      Array<[string, string, number, number]>?,
      unknown?,
    ];
    this.policies.clear();
    for (const [name, rules] of policies) this.policies.set(name, { name, rules });
    this.identities.clear();
    for (const [name, ps, keys, revoked, createdAtMs, role = null, subject = ''] of identities) {
      // Images from before keys were recorded list serials (strings): those certificates are not
      // bound to a key, so they are not accepted; such identities must be issued again.
      const bound = keys
        .filter((k): k is [string, string, number, number, number?, number?] => Array.isArray(k))
        .map(([key, serial, issuedAtMs, caGen, notAfterMs = 0, roleGeneration = 0]) => ({
          key,
          serial,
          issuedAtMs,
          caGen,
          notAfterMs,
          roleGeneration,
        }));
      this.identities.set(name, { name, policies: ps, keys: bound, revoked, createdAtMs, role, subject });
    }
    this.authMethods.clear();
    for (const config of methods) this.authMethods.set(config.method, config);
    this.authRoles.clear();
    for (const role of roles) this.authRoles.set(role.name, role);
    this.#roleGenerationNext = roleGenerationNext;
    this.totp.clear();
    for (const [name, secret, enrolledAtMs, lastTimeStep] of totp)
      this.totp.set(name, { secret, enrolledAtMs, lastTimeStep });
    this.leases.restore(leases);
  }
}

/** A login identity, not revoked, none of whose certificates works at `nowMs`. */
function loginEnded(record: IdentityRecord, nowMs: number): boolean {
  return record.role !== null && !record.revoked && record.keys.every((k) => k.notAfterMs <= nowMs);
}

/** Login identities one prune names at most. */
export const LOGIN_PRUNE_NAMES_MAX = 256;

function issuedKey(command: { key: string; serial: string; nowMs: number; caGen: number }): IdentityKey {
  return {
    key: command.key,
    serial: command.serial,
    issuedAtMs: command.nowMs,
    caGen: command.caGen,
    notAfterMs: 0,
    roleGeneration: 0,
  };
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
    case 'identity-forget':
      return { op: 'identity-forget', name };
    case 'totp-enroll': {
      const { secret, nowMs } = c;
      if (!LOGIN_IDENTITY_PATTERN.test(name)) return 'a TOTP enrolment is for a login identity (ROLE:SUBJECT)';
      if (typeof secret !== 'string' || !TOTP_SECRET_PATTERN.test(secret) || typeof nowMs !== 'number')
        return 'a TOTP enrolment holds a base32 secret and a time';
      return { op: 'totp-enroll', name, secret, nowMs };
    }
    case 'totp-remove':
      return { op: 'totp-remove', name };
    case 'identity-login':
      return checkedLogin(name, c);
    case 'identity-prune': {
      const { names, nowMs } = c;
      if (
        name !== '' ||
        !Array.isArray(names) ||
        names.length > LOGIN_PRUNE_NAMES_MAX ||
        !names.every((n) => typeof n === 'string' && LOGIN_IDENTITY_PATTERN.test(n)) ||
        typeof nowMs !== 'number'
      )
        return `a prune names at most ${LOGIN_PRUNE_NAMES_MAX} login identities, and a time`;
      return { op: 'identity-prune', name: '', names: names as string[], nowMs };
    }
    case 'auth-method-put': {
      const config = c['config'] as Record<string, unknown> | null;
      if (typeof config !== 'object' || config === null || config['method'] !== name)
        return 'a method configuration names its method';
      const problem = authMethodProblem(config);
      return (
        problem ?? { op: 'auth-method-put', name: name as AuthMethod, config: config as unknown as AuthMethodConfig }
      );
    }
    case 'auth-method-remove':
      if (!(AUTH_METHODS as readonly string[]).includes(name)) return `the method is one of ${AUTH_METHODS.join(', ')}`;
      return { op: 'auth-method-remove', name: name as AuthMethod };
    case 'auth-role-put': {
      const role = c['role'] as Record<string, unknown> | null;
      if (typeof role !== 'object' || role === null || role['name'] !== name) return 'a role names itself';
      const problem = authRoleProblem(role);
      return problem ?? { op: 'auth-role-put', name, role: role as unknown as Omit<AuthRole, 'generation'> };
    }
    case 'auth-role-remove':
      return { op: 'auth-role-remove', name };
    default:
      if (LEASE_OPS.has(String(c['op']))) return checkedLeaseCommand(c);
      return `unknown access operation ${String(c['op']).slice(0, 40)}`;
  }
}

function checkedLogin(name: string, c: Record<string, unknown>): AccessCommand | string {
  const { role, generation, subject, policies, key, serial, caGen, nowMs, notAfterMs, totpStep = 0 } = c;
  if (!LOGIN_IDENTITY_PATTERN.test(name)) return 'a login identity is ROLE:SUBJECT';
  if (typeof role !== 'string' || !name.startsWith(`${role}:`)) return 'a login names its role';
  if (typeof subject !== 'string' || !LOGIN_SUBJECT_PATTERN.test(subject)) return 'a login names its subject';
  if (typeof key !== 'string' || !KEY_PATTERN.test(key)) return 'a login names its public key (a SHA-256 digest)';
  if (typeof serial !== 'string' || !SERIAL_PATTERN.test(serial)) return 'a login names its serial';
  for (const n of [generation, caGen, nowMs, notAfterMs])
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1) return 'a login needs its generation, CA and times';
  if (
    !Array.isArray(policies) ||
    policies.length > IDENTITY_POLICIES_MAX ||
    !policies.every((p) => typeof p === 'string')
  )
    return `policies are at most ${IDENTITY_POLICIES_MAX} names`;
  if (typeof totpStep !== 'number' || !Number.isSafeInteger(totpStep) || totpStep < 0)
    return 'a login names its TOTP step';
  return {
    op: 'identity-login',
    totpStep,
    name,
    role,
    generation: generation as number,
    subject,
    policies: policies as string[],
    key,
    serial,
    caGen: caGen as number,
    nowMs: nowMs as number,
    notAfterMs: notAfterMs as number,
  };
}

export function actorOf(raw: unknown): Actor | null | string {
  if (raw === undefined) return null;
  const a = raw as Partial<Actor> | null;
  if (typeof a !== 'object' || a === null || typeof a.name !== 'string' || typeof a.key !== 'string')
    return 'the command names a malformed actor';
  return { name: a.name, key: a.key };
}
