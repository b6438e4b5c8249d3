/**
 * Policies: rules of path globs with capabilities, and explicit deny. Default deny; among the rules
 * that name the capability and match the path, the most specific one decides.
 *
 * Globs match secret names segment by segment: `*` matches any characters within one segment
 * (`db-*`), `**` as a whole segment matches any number of segments, including none.
 *
 * Specificity is computed on the glob's normal form (`normalizeGlob`; stored policies hold it), so
 * writing the same glob another way changes nothing: `**` next to `**` is one `**`, and a run of
 * `*` and `**` segments that has a `**` becomes its `*` segments then one `**` (`**` + `*` + `**`
 * becomes `*` + `**`: both mean "one segment or more"). A rule outranks another when, in order:
 *   1. it has more literal characters: every character of the glob except the `/` separators and
 *      `*`;
 *   2. then, fewer `**` segments;
 *   3. then, fewer `*` wildcards within segments;
 *   4. then, at equal rank on 1-3, an explicit deny wins over an allow.
 * Which policy holds a rule, and the order of rules, do not matter.
 *
 * Administration is the `admin` capability on `sys/...` paths: `sys/policies/NAME`,
 * `sys/identities/NAME`, `sys/audit`, `sys/cluster`. `sudo` is the capability of the operations
 * reserved to root: cluster membership, join tokens, the keyring, backups. Like every capability,
 * only rules that name it grant it (`admin` on `**` does not); the root policy names them all.
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

// --- Normal form ---------------------------------------------------------------------------------

const ANY_SEGMENTS = '**';
const ANY_SEGMENT = '*';

/**
 * Rewrites each maximal run of `*` and `**` segments with `rewrite`. Such a run with k `*` and at
 * least one `**` matches exactly the sequences of k or more segments, whatever its order, since
 * `*` matches any one segment: every rewrite below keeps k and a `**`, so keeps the meaning.
 */
function rewriteWildcardRuns(segments: readonly string[], rewrite: (stars: number, hasAnySegments: boolean) => string[]): string[] {
  const out: string[] = [];
  let run: string[] = [];
  const endRun = (): void => {
    if (run.length > 0) out.push(...rewrite(run.filter((s) => s === ANY_SEGMENT).length, run.includes(ANY_SEGMENTS)));
    run = [];
  };
  for (const segment of segments) {
    if (segment === ANY_SEGMENT || segment === ANY_SEGMENTS) {
      run.push(segment);
    } else {
      endRun();
      out.push(segment);
    }
  }
  endRun();
  return out;
}

function repeat(segment: string, times: number): string[] {
  return Array.from({ length: times }, () => segment);
}

/** The normal form: a run with a `**` is its `*` segments then one `**`; other runs are left alone. */
function normalSegments(glob: string): string[] {
  return rewriteWildcardRuns(glob.split('/'), (stars, hasAnySegments) => (hasAnySegments ? [...repeat(ANY_SEGMENT, stars), ANY_SEGMENTS] : repeat(ANY_SEGMENT, stars)));
}

/**
 * The glob in normal form (see the header): `a/**\/**\/b` -> `a/**\/b`, `**\/*\/**` -> `*\/**`. It
 * matches exactly the same paths, and equivalent spellings rank the same, so redundant `**` cannot
 * buy specificity.
 */
export function normalizeGlob(glob: string): string {
  return normalSegments(glob).join('/');
}

/** The rules with their globs in normal form, as a policy is to be stored (call after policyProblem). */
export function normalizePolicyRules(rules: readonly PolicyRule[]): PolicyRule[] {
  return rules.map((rule) => ({ path: normalizeGlob(rule.path), capabilities: [...rule.capabilities], deny: rule.deny }));
}

// --- Compiled globs ------------------------------------------------------------------------------

/** One segment of a compiled glob: `**`, or a segment glob with its text split at `*`. */
type SegmentPattern = typeof ANY_SEGMENTS | { readonly text: string; readonly parts: readonly string[] };

/** The ranking keys of the header, on the normal form. */
interface Specificity {
  readonly literals: number;
  readonly anySegments: number;
  readonly wildcards: number;
}

interface CompiledGlob {
  /** The glob as written, to tell whether a cached compilation is still the rule's. */
  readonly source: string;
  readonly segments: readonly SegmentPattern[];
  readonly specificity: Specificity;
}

function compileGlob(glob: string): CompiledGlob {
  const normal = normalSegments(glob);
  const segments = normal.map((s): SegmentPattern => (s === ANY_SEGMENTS ? ANY_SEGMENTS : { text: s, parts: s.split('*') }));
  const texts = normal.filter((s) => s !== ANY_SEGMENTS);
  const wildcards = texts.reduce((n, s) => n + s.split('*').length - 1, 0);
  const literals = texts.reduce((n, s) => n + s.length, 0) - wildcards;
  return { source: glob, segments, specificity: { literals, anySegments: normal.length - texts.length, wildcards } };
}

/** Positive if `a` is more specific than `b`, 0 if they rank the same (the deny tie-break aside). */
function compareSpecificity(a: Specificity, b: Specificity): number {
  return a.literals - b.literals || b.anySegments - a.anySegments || b.wildcards - a.wildcards;
}

// `decide` runs on every request: each rule is compiled once and kept beside the rule object (a
// stored policy's rules live until it is replaced). Rules are immutable; the source check only
// guards against a caller who reuses an object with another path.
const compiledRules = new WeakMap<PolicyRule, CompiledGlob>();

function compiledRule(rule: PolicyRule): CompiledGlob {
  const cached = compiledRules.get(rule);
  if (cached !== undefined && cached.source === rule.path) return cached;
  const compiled = compileGlob(rule.path);
  compiledRules.set(rule, compiled);
  return compiled;
}

// --- Matching ------------------------------------------------------------------------------------

/** Whether a glob matches a path (segment by segment; see above). */
export function globMatches(glob: string, path: string): boolean {
  return segmentsMatch(compileGlob(glob).segments, path.split('/'));
}

/**
 * The classic wildcard scan, `**` as the star and a segment glob as the one-segment test. On a
 * mismatch only the last `**` seen takes one more segment: whatever an earlier `**` could take, the
 * last one can take instead. O(glob x path) at worst, no memory, no recursion.
 */
function segmentsMatch(glob: readonly SegmentPattern[], path: readonly string[]): boolean {
  let g = 0;
  let p = 0;
  let afterLastAny = -1; // the glob index after the last `**` seen (-1: none yet)
  let anyTakenTo = 0; // the path index that `**` has taken segments up to
  while (p < path.length) {
    const pattern = glob[g];
    if (pattern === ANY_SEGMENTS) {
      g++;
      afterLastAny = g;
      anyTakenTo = p;
    } else if (pattern !== undefined && segmentGlobMatches(pattern, path[p]!)) {
      g++;
      p++;
    } else if (afterLastAny >= 0) {
      anyTakenTo++;
      g = afterLastAny;
      p = anyTakenTo;
    } else {
      return false;
    }
  }
  while (glob[g] === ANY_SEGMENTS) g++;
  return g === glob.length;
}

/** Literal prefix and suffix; the parts between, leftmost first (a later fit is never needed). */
function segmentGlobMatches(pattern: { readonly parts: readonly string[] }, segment: string): boolean {
  const { parts } = pattern;
  const first = parts[0]!;
  if (parts.length === 1) return segment === first;
  const last = parts[parts.length - 1]!;
  if (segment.length < first.length + last.length || !segment.startsWith(first) || !segment.endsWith(last)) return false;
  let at = first.length;
  const end = segment.length - last.length;
  for (let k = 1; k < parts.length - 1; k++) {
    const found = segment.indexOf(parts[k]!, at);
    if (found < 0 || found + parts[k]!.length > end) return false;
    at = found + parts[k]!.length;
  }
  return true;
}

// --- Deciding ------------------------------------------------------------------------------------

export interface Decision {
  readonly allowed: boolean;
  /** The rule that decided, for the audit log and the error message (null: default deny). */
  readonly rule: { readonly policy: string; readonly path: string; readonly deny: boolean } | null;
}

/** Whether `rule` (compiled `glob`) would decide over `other` when both match. */
function outranks(rule: PolicyRule, glob: CompiledGlob, other: PolicyRule, otherGlob: CompiledGlob): boolean {
  const order = compareSpecificity(glob.specificity, otherGlob.specificity);
  return order > 0 || (order === 0 && rule.deny && !other.deny);
}

/**
 * Decides whether `capability` on `path` is allowed by these policies. Only rules that name the
 * capability take part; among the matching ones the most specific decides (see the header).
 */
export function decide(policies: readonly Policy[], capability: Capability, path: string): Decision {
  const segments = path.split('/');
  let best: { policy: string; rule: PolicyRule; glob: CompiledGlob } | null = null;
  for (const policy of policies) {
    for (const rule of policy.rules) {
      if (!rule.capabilities.includes(capability)) continue;
      const glob = compiledRule(rule);
      // Ranking is cheaper than matching: a rule that could not win is not matched at all.
      if (best !== null && !outranks(rule, glob, best.rule, best.glob)) continue;
      if (segmentsMatch(glob.segments, segments)) best = { policy: policy.name, rule, glob };
    }
  }
  if (best === null) return { allowed: false, rule: null };
  return { allowed: !best.rule.deny, rule: { policy: best.policy, path: best.rule.path, deny: best.rule.deny } };
}
