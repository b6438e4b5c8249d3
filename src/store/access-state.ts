import { Packr } from 'msgpackr';
import { ROOT_POLICY, decide, policyProblem, type Capability, type Decision, type Policy, type PolicyRule } from './policy.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });

export type AccessCommand =
  | { readonly op: 'policy-put'; readonly name: string; readonly rules: readonly PolicyRule[] }
  | { readonly op: 'policy-remove'; readonly name: string }
  /** A certificate issued to an identity: its serial becomes valid, with these policies. */
  | { readonly op: 'identity-issue'; readonly name: string; readonly policies: readonly string[]; readonly serial: string; readonly nowMs: number }
  /** Every certificate of the identity is refused from the index this applies at. */
  | { readonly op: 'identity-revoke'; readonly name: string };

export type AccessResult = { readonly ok: true } | { readonly ok: false; readonly code: 'NOT_FOUND' | 'INVALID'; readonly reason: string };

export interface IdentityRecord {
  readonly name: string;
  policies: string[];
  /** Serials of the certificates that may act as this identity. */
  readonly serials: Set<string>;
  revoked: boolean;
  readonly createdAtMs: number;
}

export const IDENTITY_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$/;
const SERIAL_PATTERN = /^[0-9a-f]{1,64}$/;

export function encodeAccessCommand(command: AccessCommand): { kind: string; data: Buffer } {
  return { kind: `access.${command.op}`, data: packr.pack(command) };
}

/**
 * Who may do what, replicated: policies, and identities with the serials of their certificates.
 * A certificate is accepted only if its serial is listed for its identity (an allow list), so a
 * revocation applies on every manager at the same index.
 */
export class AccessState {
  readonly policies = new Map<string, Policy>();
  readonly identities = new Map<string, IdentityRecord>();

  apply(kind: string, data: Buffer): AccessResult {
    let c: Record<string, unknown>;
    try {
      c = packr.unpack(data) as Record<string, unknown>;
    } catch {
      return { ok: false, code: 'INVALID', reason: `the ${kind} command does not decode` };
    }
    if (typeof c !== 'object' || c === null || kind !== `access.${String(c['op'])}`) return { ok: false, code: 'INVALID', reason: `the ${kind} command is malformed` };
    const name = c['name'];
    if (typeof name !== 'string') return { ok: false, code: 'INVALID', reason: 'a name is required' };
    switch (c['op']) {
      case 'policy-put': {
        const problem = policyProblem({ name, rules: c['rules'] });
        if (problem !== null) return { ok: false, code: 'INVALID', reason: problem };
        this.policies.set(name, { name, rules: c['rules'] as PolicyRule[] });
        return { ok: true };
      }
      case 'policy-remove':
        if (!this.policies.delete(name)) return { ok: false, code: 'NOT_FOUND', reason: `policy "${name}" does not exist` };
        return { ok: true };
      case 'identity-issue': {
        const { policies, serial, nowMs } = c as { policies: unknown; serial: unknown; nowMs: unknown };
        if (!IDENTITY_NAME_PATTERN.test(name)) return { ok: false, code: 'INVALID', reason: 'an identity name is a letter or digit then up to 127 of [A-Za-z0-9._@-]' };
        if (typeof serial !== 'string' || !SERIAL_PATTERN.test(serial) || typeof nowMs !== 'number') return { ok: false, code: 'INVALID', reason: 'an issued certificate needs a serial and a time' };
        if (!Array.isArray(policies) || !policies.every((p) => typeof p === 'string')) return { ok: false, code: 'INVALID', reason: 'policies are names' };
        const record = this.identities.get(name);
        if (record === undefined || record.revoked) {
          this.identities.set(name, { name, policies: [...policies], serials: new Set([serial]), revoked: false, createdAtMs: nowMs });
        } else {
          record.policies = [...policies];
          record.serials.add(serial);
        }
        return { ok: true };
      }
      case 'identity-revoke': {
        const record = this.identities.get(name);
        if (record === undefined) return { ok: false, code: 'NOT_FOUND', reason: `identity "${name}" does not exist` };
        record.serials.clear();
        record.revoked = true;
        return { ok: true };
      }
      default:
        return { ok: false, code: 'INVALID', reason: `unknown access operation ${String(c['op'])}` };
    }
  }

  /** Whether the certificate `serial` may act as `name` (listed, not revoked). */
  certificateValid(name: string, serial: string): boolean {
    const record = this.identities.get(name);
    return record !== undefined && !record.revoked && record.serials.has(serial);
  }

  /** The decision for an identity; policies that do not exist (any more) grant nothing. */
  decide(name: string, capability: Capability, path: string): Decision {
    const record = this.identities.get(name);
    if (record === undefined) return { allowed: false, rule: null };
    const policies = record.policies.map((p) => (p === ROOT_POLICY.name ? ROOT_POLICY : this.policies.get(p))).filter((p): p is Policy => p !== undefined);
    return decide(policies, capability, path);
  }

  snapshot(): unknown {
    return [[...this.policies.values()].map((p) => [p.name, p.rules]), [...this.identities.values()].map((i) => [i.name, i.policies, [...i.serials], i.revoked, i.createdAtMs])];
  }

  restore(image: unknown): void {
    const [policies, identities] = image as [Array<[string, PolicyRule[]]>, Array<[string, string[], string[], boolean, number]>];
    this.policies.clear();
    for (const [name, rules] of policies) this.policies.set(name, { name, rules });
    this.identities.clear();
    for (const [name, ps, serials, revoked, createdAtMs] of identities) this.identities.set(name, { name, policies: ps, serials: new Set(serials), revoked, createdAtMs });
  }
}
