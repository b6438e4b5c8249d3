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
 *
 * Delegation: nobody may write a rule, allow or deny alike, beyond the rights they hold
 * (`ruleWithinRights`), or an administrator of some policies could grant itself everything.
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
  if (typeof policy.name !== 'string' || !POLICY_NAME_PATTERN.test(policy.name))
    return 'a policy name is a lower-case letter then up to 63 of [a-z0-9_-]';
  if (policy.name === ROOT_POLICY.name) return 'the root policy is built in and cannot be changed';
  if (!Array.isArray(policy.rules) || policy.rules.length === 0) return 'a policy needs at least one rule';
  if (policy.rules.length > POLICY_RULES_MAX) return `a policy has at most ${POLICY_RULES_MAX} rules`;
  for (const [k, rule] of (policy.rules as unknown[]).entries()) {
    const r = rule as Partial<PolicyRule>;
    if (
      typeof r.path !== 'string' ||
      r.path.length === 0 ||
      r.path.length > 256 ||
      !r.path.split('/').every((s) => GLOB_SEGMENT.test(s) && (s === '**' || !s.includes('**')))
    ) {
      return `rule ${k + 1}: the path is segments of [A-Za-z0-9._-] and "*" joined by "/", "**" standing alone`;
    }
    if (
      !Array.isArray(r.capabilities) ||
      r.capabilities.length === 0 ||
      !r.capabilities.every((c) => (CAPABILITIES as readonly string[]).includes(c))
    ) {
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
function rewriteWildcardRuns(
  segments: readonly string[],
  rewrite: (stars: number, hasAnySegments: boolean) => string[],
): string[] {
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
  return rewriteWildcardRuns(glob.split('/'), (stars, hasAnySegments) =>
    hasAnySegments ? [...repeat(ANY_SEGMENT, stars), ANY_SEGMENTS] : repeat(ANY_SEGMENT, stars),
  );
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
  return rules.map((rule) => ({
    path: normalizeGlob(rule.path),
    capabilities: [...rule.capabilities],
    deny: rule.deny,
  }));
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
  const segments = normal.map(
    (s): SegmentPattern => (s === ANY_SEGMENTS ? ANY_SEGMENTS : { text: s, parts: s.split('*') }),
  );
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
  if (segment.length < first.length + last.length || !segment.startsWith(first) || !segment.endsWith(last))
    return false;
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

// --- Containment and intersection of globs -------------------------------------------------------

/**
 * Solves a predicate on pairs (i, j), 0 <= i <= rows, 0 <= j <= cols, whose `step` reads other
 * pairs with larger i or j only: each pair is worked out once, so O(rows x cols) steps.
 */
function solvePairs(
  rows: number,
  cols: number,
  step: (i: number, j: number, at: (i: number, j: number) => boolean) => boolean,
): boolean {
  const known = new Uint8Array((rows + 1) * (cols + 1)); // 0: not yet, 1: true, 2: false
  const at = (i: number, j: number): boolean => {
    const key = i * (cols + 1) + j;
    if (known[key] === 0) known[key] = step(i, j, at) ? 1 : 2;
    return known[key] === 1;
  };
  return at(0, 0);
}

/**
 * Globs seen as words of items (characters of a segment glob, or segments of a path glob) in which
 * some items are stars (`*` within a segment, `**` among segments) and any other item matches
 * exactly one element. Whether `outer` matches `inner` read as a word, inner's stars absorbed only
 * by outer's stars: then every element sequence inner matches, outer matches (fill in inner's
 * stars; outer's stars take the same). `itemCovers` decides for two non-star items.
 */
function wordCovers<T>(
  outer: readonly T[],
  inner: readonly T[],
  isStar: (item: T) => boolean,
  itemCovers: (outer: T, inner: T) => boolean,
): boolean {
  return solvePairs(outer.length, inner.length, (i, j, at) => {
    if (i === outer.length) return j === inner.length;
    if (isStar(outer[i]!)) return at(i + 1, j) || (j < inner.length && at(i, j + 1));
    return j < inner.length && !isStar(inner[j]!) && itemCovers(outer[i]!, inner[j]!) && at(i + 1, j + 1);
  });
}

/**
 * Whether some element sequence matches both words. Exact: take a common match with fewest
 * elements; no element is taken by a star of each (dropping it leaves a smaller common match), so
 * each next element is taken by a star on one side (i or j moves on, or the other side's star is
 * done) or by two non-star items that share an element.
 */
function wordsIntersect<T>(
  a: readonly T[],
  b: readonly T[],
  isStar: (item: T) => boolean,
  itemsIntersect: (a: T, b: T) => boolean,
): boolean {
  return solvePairs(a.length, b.length, (i, j, at) => {
    if (i < a.length && isStar(a[i]!)) return at(i + 1, j) || (j < b.length && at(i, j + 1));
    if (j < b.length && isStar(b[j]!)) return at(i, j + 1) || (i < a.length && at(i + 1, j));
    if (i === a.length || j === b.length) return i === a.length && j === b.length;
    return itemsIntersect(a[i]!, b[j]!) && at(i + 1, j + 1);
  });
}

const isStarCharacter = (c: string): boolean => c === '*';
const isAnySegments = (s: string): boolean => s === ANY_SEGMENTS;
const sameCharacter = (a: string, b: string): boolean => a === b;

/**
 * Segment globs. Exact: if outer does not match inner's word, put in each `*` of inner a character
 * outer does not have (there is one unless outer uses every allowed character): only outer's `*`
 * can take it, so outer does not match that name either.
 */
function segmentGlobCovers(outer: string, inner: string): boolean {
  return wordCovers([...outer], [...inner], isStarCharacter, sameCharacter);
}

function segmentGlobsIntersect(a: string, b: string): boolean {
  return wordsIntersect([...a], [...b], isStarCharacter, sameCharacter);
}

/**
 * Path globs as words of segments, for `globCovers`. The outer glob takes the most flexible
 * spelling of its normal form, a `**` on each side of every `*` of a run that has one
 * (`*\/**` -> `**\/*\/**`), so the alignment may put those `*` anywhere in the run. The inner
 * glob takes the normal form, except `**` alone: a name has at least one segment, so it is
 * `*\/**`.
 */
function outerSegments(glob: string): string[] {
  return rewriteWildcardRuns(glob.split('/'), (stars, hasAnySegments) =>
    hasAnySegments
      ? [ANY_SEGMENTS, ...repeat(ANY_SEGMENT, stars).flatMap((s) => [s, ANY_SEGMENTS])]
      : repeat(ANY_SEGMENT, stars),
  );
}

function innerSegments(glob: string): string[] {
  const normal = normalSegments(glob);
  return normal.length === 1 && normal[0] === ANY_SEGMENTS ? [ANY_SEGMENT, ANY_SEGMENTS] : normal;
}

/**
 * Whether every path `inner` matches is matched by `outer`. Sound: true only for a real
 * containment (inner's `**` is absorbed only by outer's `**`; inner's segment glob only by outer's
 * `**` or by an outer segment glob that covers it character by character). Meant to be exact too:
 * compared with every path of up to 5 segments on random globs (policy-rights.test.ts), it misses
 * no containment. The character-level argument needs a character the outer segment glob does not
 * use, so one using all the allowed characters may be judged too narrowly (the safe way).
 */
export function globCovers(outer: string, inner: string): boolean {
  return wordCovers(outerSegments(outer), innerSegments(inner), isAnySegments, segmentGlobCovers);
}

/**
 * Whether some path matches both globs. Exact (see `wordsIntersect`), if empty segments count as
 * names: `*` meets `*` on the empty segment.
 */
export function globsIntersect(a: string, b: string): boolean {
  return wordsIntersect(normalSegments(a), normalSegments(b), isAnySegments, segmentGlobsIntersect);
}

// --- Delegation: nobody grants more than they hold -----------------------------------------------

/**
 * Whether rules (the holder's, all policies together) allow `capability` on every path `glob`
 * matches. Sufficient condition: some allow rule R for the capability covers the glob, and every
 * deny rule D for it that intersects the glob ranks strictly below R. Then on any path p of the
 * glob, R matches p; the rule that decides p ranks at least as high as R (R is a candidate); a deny
 * matching p intersects the glob, so ranks strictly below R and cannot decide: an allow decides.
 * "Strictly", because a deny wins a tie. The ranking is decide's (`compareSpecificity`).
 */
function holdsEverywhere(rules: readonly PolicyRule[], capability: Capability, glob: string): boolean {
  const naming = rules.filter((r) => r.capabilities.includes(capability));
  const denies = naming.filter((r) => r.deny && globsIntersect(r.path, glob));
  return naming.some((allow) => {
    if (allow.deny || !globCovers(allow.path, glob)) return false;
    const rank = compiledRule(allow).specificity;
    return denies.every((deny) => compareSpecificity(rank, compiledRule(deny).specificity) > 0);
  });
}

/**
 * Null if an identity with the `holder` policies holds every capability of `rule` on every path of
 * its glob, else what is not held, the first capability in the rule's order: `rule "prod/**"
 * grants read, which you do not hold on all of "prod/**"` ("denies" for a deny rule: writing a
 * deny is checked the same way, or an administrator could deny others what it does not hold).
 * Sound, not complete: it can refuse a rule that several allow rules together would cover.
 */
export function ruleWithinRights(holder: readonly Policy[], rule: PolicyRule): string | null {
  const rules = holder.flatMap((p) => p.rules);
  const missing = rule.capabilities.find((c) => !holdsEverywhere(rules, c, rule.path));
  if (missing === undefined) return null;
  return `rule "${rule.path}" ${rule.deny ? 'denies' : 'grants'} ${missing}, which you do not hold on all of "${rule.path}"`;
}

/** `ruleWithinRights` for each rule in order: the first message, or null. */
export function policyWithinRights(holder: readonly Policy[], rules: readonly PolicyRule[]): string | null {
  for (const rule of rules) {
    const problem = ruleWithinRights(holder, rule);
    if (problem !== null) return problem;
  }
  return null;
}
