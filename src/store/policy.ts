/**
 * Policies: rules of path globs with capabilities, and explicit deny. Default deny; when several
 * rules match a path, the most specific one decides (the most literal characters; then the
 * fewest wildcards; then deny over allow).
 *
 * Globs match secret names segment by segment: `*` matches any characters within one segment
 * (`db-*`), `**` as a whole segment matches any number of segments, including none.
 * Administration is the `admin` capability on `sys/...` paths: `sys/policies/NAME`,
 * `sys/identities/NAME`, `sys/audit`, `sys/cluster`.
 */
export const CAPABILITIES = ['read', 'write', 'list', 'delete', 'admin', 'sudo'] as const;
export type Capability = (typeof CAPABILITIES)[number];

export interface PolicyRule {
  readonly path: string;
  readonly capabilities: readonly Capability[];
  readonly deny: boolean;
}

export interface Policy {
  readonly name: string;
  readonly rules: readonly PolicyRule[];
}

export const POLICY_NAME_PATTERN = /^[a-z][a-z0-9_-]{0,63}$/;
export const POLICY_RULES_MAX = 256;
const GLOB_SEGMENT = /^(\*\*|[A-Za-z0-9._*-]+)$/;
/** The built-in policy of the admin identity: everything. */
export const ROOT_POLICY: Policy = { name: 'root', rules: [{ path: '**', capabilities: CAPABILITIES, deny: false }] };

/** What is wrong with a policy, or null. */
export function policyProblem(policy: { name: unknown; rules: unknown }): string | null {
  if (typeof policy.name !== 'string' || !POLICY_NAME_PATTERN.test(policy.name)) return 'a policy name is a lower-case letter then up to 63 of [a-z0-9_-]';
  if (policy.name === ROOT_POLICY.name) return 'the root policy is built in and cannot be changed';
  if (!Array.isArray(policy.rules) || policy.rules.length === 0) return 'a policy needs at least one rule';
  if (policy.rules.length > POLICY_RULES_MAX) return `a policy has at most ${POLICY_RULES_MAX} rules`;
  for (const [k, rule] of (policy.rules as unknown[]).entries()) {
    const r = rule as Partial<PolicyRule>;
    if (typeof r.path !== 'string' || r.path.length === 0 || r.path.length > 256 || !r.path.split('/').every((s) => GLOB_SEGMENT.test(s) && (s === '**' || !s.includes('**')))) {
      return `rule ${k + 1}: the path is segments of [A-Za-z0-9._-] and "*" joined by "/", "**" standing alone`;
    }
    if (!Array.isArray(r.capabilities) || r.capabilities.length === 0 || !r.capabilities.every((c) => (CAPABILITIES as readonly string[]).includes(c))) {
      return `rule ${k + 1}: capabilities are some of ${CAPABILITIES.join(', ')}`;
    }
    if (typeof r.deny !== 'boolean') return `rule ${k + 1}: deny is true or false`;
  }
  return null;
}

/** Whether a glob matches a path (segment by segment; see above). */
export function globMatches(glob: string, path: string): boolean {
  // Consecutive `**` mean the same as one; the table below keeps matching O(glob x path).
  const pattern = glob.split('/').filter((s, k, all) => !(s === '**' && all[k - 1] === '**'));
  const segments = path.split('/');
  const memo = new Map<number, boolean>();
  const match = (g: number, p: number): boolean => {
    const key = g * (segments.length + 1) + p;
    const known = memo.get(key);
    if (known !== undefined) return known;
    let result: boolean;
    if (g === pattern.length) result = p === segments.length;
    else if (pattern[g] === '**') result = match(g + 1, p) || (p < segments.length && match(g, p + 1));
    else result = p < segments.length && segmentMatches(pattern[g]!, segments[p]!) && match(g + 1, p + 1);
    memo.set(key, result);
    return result;
  };
  return match(0, 0);
}

function segmentMatches(glob: string, segment: string): boolean {
  if (!glob.includes('*')) return glob === segment;
  const parts = glob.split('*');
  const first = parts[0]!;
  const last = parts[parts.length - 1]!;
  if (!segment.startsWith(first) || !segment.endsWith(last) || segment.length < first.length + last.length) return false;
  let at = first.length;
  for (const middle of parts.slice(1, -1)) {
    const found = segment.indexOf(middle, at);
    if (found < 0 || found + middle.length > segment.length - last.length) return false;
    at = found + middle.length;
  }
  return true;
}

function specificity(glob: string): [number, number] {
  const wildcards = (glob.match(/\*/g) ?? []).length;
  return [glob.length - wildcards, -wildcards];
}

export interface Decision {
  readonly allowed: boolean;
  /** The rule that decided, for the audit log and the error message (null: default deny). */
  readonly rule: { readonly policy: string; readonly path: string; readonly deny: boolean } | null;
}

/**
 * Decides whether `capability` on `path` is allowed by these policies. Only rules that name the
 * capability take part; among the matching ones the most specific decides.
 */
export function decide(policies: readonly Policy[], capability: Capability, path: string): Decision {
  let best: { policy: string; rule: PolicyRule; score: [number, number] } | null = null;
  for (const policy of policies) {
    for (const rule of policy.rules) {
      if (!rule.capabilities.includes(capability) || !globMatches(rule.path, path)) continue;
      const score = specificity(rule.path);
      const better =
        best === null ||
        score[0] > best.score[0] ||
        (score[0] === best.score[0] && score[1] > best.score[1]) ||
        (score[0] === best.score[0] && score[1] === best.score[1] && rule.deny && !best.rule.deny);
      if (better) best = { policy: policy.name, rule, score };
    }
  }
  if (best === null) return { allowed: false, rule: null };
  return { allowed: !best.rule.deny, rule: { policy: best.policy, path: best.rule.path, deny: best.rule.deny } };
}
