/**
 * The simulator's commands of the small parts (cluster and access: what the stored image holds).
 * A proposal whose text starts with POLICY_TEXT_PREFIX (such as `a7.16`) is an
 * `access.policy-put`, a manager's own (no actor, so applying it authorizes nothing), of one of a
 * few policy names chosen by the text, with one rule whose path and capabilities the text chooses
 * too: so later writes replace earlier ones with other rules, and a write lost (a restart from an
 * image that missed it) leaves rules the committed log does not give. The checker derives the same
 * writes from the committed log; the nodes apply them through AppliedState and read the policies
 * back.
 */
import { encodeAccessCommand } from '../../src/state/access-state.ts';
import type { AppliedState } from '../../src/state/applied-state.ts';
import type { Capability, PolicyRule } from '../../src/state/policy.ts';

/** The first character of a proposal's text that writes a policy (secret puts start with `v`, liveness values with `l`). */
export const POLICY_TEXT_PREFIX = 'a';
const POLICY_NAMES = 3;
/** What a rule covers: a secret's name, or globs over them. */
const RULE_PATHS = ['app/k0', 'app/k1', 'app/*', 'app/**', '**'];
const RULE_CAPABILITIES: readonly (readonly Capability[])[] = [['read'], ['read', 'list'], ['write'], ['delete']];

const decoder = new TextDecoder();

/** A policy write: the name and its rules as a canonical text (what the checker compares). */
export interface PolicyWrite {
  readonly name: string;
  readonly rules: readonly PolicyRule[];
  readonly rulesText: string;
}

/** The policy a normal entry's data writes, or null (a secret put, or an empty entry). */
export function policyOf(data: Uint8Array): PolicyWrite | null {
  if (data.byteLength === 0 || data[0] !== POLICY_TEXT_PREFIX.charCodeAt(0)) return null;
  const text = decoder.decode(data);
  const h = fnv1a(text);
  const rules: PolicyRule[] = [
    {
      path: RULE_PATHS[(h >>> 8) % RULE_PATHS.length]!,
      capabilities: RULE_CAPABILITIES[(h >>> 16) % RULE_CAPABILITIES.length]!,
      deny: (h & 0x80) !== 0,
    },
  ];
  return { name: `sim${h % POLICY_NAMES}`, rules, rulesText: rulesTextOf(rules) };
}

/** Every name a policy write may go to. */
export function policyNames(): string[] {
  return Array.from({ length: POLICY_NAMES }, (_, k) => `sim${k}`);
}

/** The command an entry carries, as the barrier hands it to AppliedState (a manager's own: no actor). */
export function encodePolicyPut(write: PolicyWrite): { kind: string; data: Uint8Array } {
  return encodeAccessCommand({ op: 'policy-put', name: write.name, rules: write.rules }, null);
}

/** A policy's rules as the state holds them now (a canonical text), or null: no such policy. */
export function readPolicy(state: AppliedState, name: string): string | null {
  const policy = state.access.policies.get(name);
  return policy === undefined ? null : rulesTextOf(policy.rules);
}

function rulesTextOf(rules: readonly PolicyRule[]): string {
  return JSON.stringify(rules.map((r) => [r.path, [...r.capabilities], r.deny]));
}

function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (let k = 0; k < text.length; k++) h = Math.imul(h ^ text.charCodeAt(k), 0x01000193);
  return h >>> 0;
}
