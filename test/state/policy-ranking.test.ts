/**
 * Property tests of `decide` against a reference written here from the rules in policy.ts's header
 * (glob -> RegExp for matching, an explicit sort for the ranking), on random policies drawn by the
 * project's seeded generator. Set POLICY_SEED to replay a run; a failure prints its seed and case.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  decide,
  globMatches,
  normalizeGlob,
  normalizePolicyRules,
  type Capability,
  type Policy,
  type PolicyRule,
} from '../../src/state/policy.ts';
import { SeededRandom } from '../../src/util/prng.ts';

const SEED = Number(process.env['POLICY_SEED'] ?? 20_240_601);
const CASES = 4000;

// --- The reference -------------------------------------------------------------------------------

/** `**` as a whole segment: any number of `/segment`; `*`: any characters but `/`. */
function referenceRegExp(glob: string): RegExp {
  const body = glob
    .split('/')
    .map((s) => (s === '**' ? '(?:/[^/]*)*' : '/' + s.split('*').map(escapeRegExp).join('[^/]*')))
    .join('');
  return new RegExp(`^${body}$`);
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&');
}

function referenceMatches(glob: string, path: string): boolean {
  return referenceRegExp(glob).test('/' + path);
}

/**
 * The normal form by rewriting to a fixpoint, a different route from policy.ts's single pass:
 * `**` next to `**` is one `**`, and a `**` moves after a neighbouring `*` (`**` then `*` and
 * `*` then `**` both mean "at least one segment").
 */
function referenceNormalize(glob: string): string {
  let segments = glob.split('/');
  for (let changed = true; changed; ) {
    changed = false;
    for (let k = 0; k + 1 < segments.length; k++) {
      if (segments[k] === '**' && segments[k + 1] === '**') {
        segments = [...segments.slice(0, k), ...segments.slice(k + 1)];
        changed = true;
        break;
      }
      if (segments[k] === '**' && segments[k + 1] === '*') {
        segments = [...segments.slice(0, k), '*', '**', ...segments.slice(k + 2)];
        changed = true;
        break;
      }
    }
  }
  return segments.join('/');
}

/** [literal characters, -(`**` segments), -(`*` wildcards)]: larger is more specific. */
function referenceRank(glob: string): [number, number, number] {
  const segments = referenceNormalize(glob).split('/');
  const single = segments.filter((s) => s !== '**');
  const literals = single.join('').replaceAll('*', '').length;
  const stars = [...single.join('')].filter((c) => c === '*').length;
  return [literals, -(segments.length - single.length), -stars];
}

function compareRanks(a: readonly number[], b: readonly number[]): number {
  for (let k = 0; k < a.length; k++) if (a[k] !== b[k]) return a[k]! - b[k]!;
  return 0;
}

/** The matching rules naming `capability`, most specific first, a deny before an allow of equal rank. */
function referenceRanking(policies: readonly Policy[], capability: Capability, path: string): PolicyRule[] {
  const matching = policies
    .flatMap((p) => p.rules)
    .filter((r) => r.capabilities.includes(capability) && referenceMatches(r.path, path));
  return matching.sort(
    (a, b) => compareRanks(referenceRank(b.path), referenceRank(a.path)) || Number(b.deny) - Number(a.deny),
  );
}

function referenceAllowed(policies: readonly Policy[], capability: Capability, path: string): boolean {
  const top = referenceRanking(policies, capability, path)[0];
  return top !== undefined && !top.deny;
}

// --- Generators ----------------------------------------------------------------------------------

const GLOB_SEGMENTS = ['a', 'b', 'ab', '*', 'a*', '*b', '**', '**/**', '**/**/**', '**/*/**'];
const PATH_SEGMENTS = ['a', 'b', 'ab', 'ba', 'abb', 'c'];
const TEST_CAPABILITIES: readonly Capability[] = ['read', 'write'];

function pick<T>(random: SeededRandom, items: readonly T[]): T {
  return items[random.int(items.length)]!;
}

function randomGlob(random: SeededRandom): string {
  return Array.from({ length: 1 + random.int(4) }, () => pick(random, GLOB_SEGMENTS)).join('/');
}

function randomPath(random: SeededRandom): string {
  return Array.from({ length: 1 + random.int(4) }, () => pick(random, PATH_SEGMENTS)).join('/');
}

function randomRule(random: SeededRandom): PolicyRule {
  const capabilities = TEST_CAPABILITIES.filter(() => random.int(3) > 0);
  return {
    path: randomGlob(random),
    capabilities: capabilities.length > 0 ? capabilities : ['read'],
    deny: random.int(3) === 0,
  };
}

function randomPolicies(random: SeededRandom): Policy[] {
  return Array.from({ length: 1 + random.int(2) }, (_, k) => ({
    name: `p${k}`,
    rules: Array.from({ length: 1 + random.int(4) }, () => randomRule(random)),
  }));
}

/** Runs `check` on CASES random cases, each from its own fork, naming the seed and case on failure. */
function forEachCase(check: (random: SeededRandom) => string | null): void {
  const random = new SeededRandom(SEED);
  for (let k = 0; k < CASES; k++) {
    const failure = check(random.fork());
    if (failure !== null) assert.fail(`POLICY_SEED=${SEED}, case ${k}: ${failure}`);
  }
}

/** `**` inserted beside a `**` the glob already has (redundant), or the glob itself if it has none. */
function withRedundantAnySegments(random: SeededRandom, glob: string): string {
  const segments = glob.split('/');
  const at = segments.map((s, k) => (s === '**' ? k : -1)).filter((k) => k >= 0);
  if (at.length === 0) return glob;
  const k = pick(random, at);
  return [...segments.slice(0, k), ...Array.from({ length: 1 + random.int(3) }, () => '**'), ...segments.slice(k)].join(
    '/',
  );
}

// --- Tests ---------------------------------------------------------------------------------------

test('reviewer case: an allow of only redundant ** segments does not beat the deny prod/**', () => {
  const policies: Policy[] = [
    {
      name: 'p',
      rules: [
        { path: 'prod/**', capabilities: ['read'], deny: true },
        { path: '**/**/**/**/**/**/**/**', capabilities: ['read'], deny: false },
      ],
    },
  ];
  assert.equal(decide(policies, 'read', 'prod/db/password').allowed, false);
  assert.deepEqual(decide(policies, 'read', 'prod/db/password').rule, { policy: 'p', path: 'prod/**', deny: true });
  assert.equal(decide(policies, 'read', 'dev/db/password').allowed, true);
});

test('property: decide agrees with the reference (RegExp matching, explicit ranking)', () => {
  forEachCase((random) => {
    const policies = randomPolicies(random);
    const capability = pick(random, TEST_CAPABILITIES);
    const path = randomPath(random);
    const expected = referenceAllowed(policies, capability, path);
    const decision = decide(policies, capability, path);
    if (decision.allowed === expected) return null;
    return `decide(${JSON.stringify(policies)}, ${capability}, ${JSON.stringify(path)}) allowed=${decision.allowed} by ${JSON.stringify(decision.rule)}; the reference says ${expected}`;
  });
});

test('property: adding redundant ** segments to a rule never changes a decision', () => {
  forEachCase((random) => {
    const policies = randomPolicies(random);
    const padded = policies.map((p) => ({
      ...p,
      rules: p.rules.map((r) => ({ ...r, path: withRedundantAnySegments(random, r.path) })),
    }));
    const capability = pick(random, TEST_CAPABILITIES);
    const path = randomPath(random);
    const before = decide(policies, capability, path).allowed;
    const after = decide(padded, capability, path).allowed;
    if (before === after) return null;
    return `${JSON.stringify(policies)} -> ${JSON.stringify(padded)} on ${capability} ${JSON.stringify(path)}: allowed ${before} then ${after}`;
  });
});

test('property: a matching deny ranked at or above the best matching allow always wins', () => {
  forEachCase((random) => {
    const policies = randomPolicies(random);
    const capability = pick(random, TEST_CAPABILITIES);
    const path = randomPath(random);
    const matching = policies
      .flatMap((p) => p.rules)
      .filter((r) => r.capabilities.includes(capability) && referenceMatches(r.path, path));
    const bestAllow = matching
      .filter((r) => !r.deny)
      .sort((a, b) => compareRanks(referenceRank(b.path), referenceRank(a.path)))[0];
    const strongDeny = matching.find(
      (r) =>
        r.deny && (bestAllow === undefined || compareRanks(referenceRank(r.path), referenceRank(bestAllow.path)) >= 0),
    );
    if (strongDeny === undefined || !decide(policies, capability, path).allowed) return null;
    return `${JSON.stringify(policies)} on ${capability} ${JSON.stringify(path)}: deny ${strongDeny.path} ranks at or above allow ${bestAllow?.path} yet the request is allowed`;
  });
});

test('normalizeGlob: one ** for a run of them, and a run with ** is its * segments then one **', () => {
  assert.equal(normalizeGlob('**/**/**/**/**/**/**/**'), '**');
  assert.equal(normalizeGlob('prod/**/**/db/**/**'), 'prod/**/db/**');
  assert.equal(normalizeGlob('**/*/**'), '*/**');
  assert.equal(normalizeGlob('a/**/*/*/b'), 'a/*/*/**/b');
  assert.equal(normalizeGlob('a/*/*/b'), 'a/*/*/b', 'a run without ** is not touched');
  assert.equal(normalizeGlob('**/db-*/**'), '**/db-*/**', 'db-* is not a wildcard segment');
});

test('normalizePolicyRules: a stored policy shows ** and not **/**; nothing else changes', () => {
  const rules: PolicyRule[] = [
    { path: 'app/**/**', capabilities: ['read', 'list'], deny: false },
    { path: 'app/prod/*', capabilities: ['read'], deny: true },
  ];
  assert.deepEqual(normalizePolicyRules(rules), [
    { path: 'app/**', capabilities: ['read', 'list'], deny: false },
    { path: 'app/prod/*', capabilities: ['read'], deny: true },
  ]);
  assert.equal(rules[0]!.path, 'app/**/**', 'the rules given are not changed');
});

test('property: the normal form matches the same paths, is a fixpoint, and agrees with the reference rewriting', () => {
  forEachCase((random) => {
    const glob = randomGlob(random);
    const normal = normalizeGlob(glob);
    if (normal !== referenceNormalize(glob))
      return `normalizeGlob(${glob}) = ${normal}, the reference rewriting gives ${referenceNormalize(glob)}`;
    if (normalizeGlob(normal) !== normal) return `normalizeGlob(${normal}) = ${normalizeGlob(normal)}: not a fixpoint`;
    for (let k = 0; k < 8; k++) {
      const path = randomPath(random);
      const expected = referenceMatches(glob, path);
      if (globMatches(glob, path) !== expected || globMatches(normal, path) !== expected) {
        return `${glob} (normal ${normal}) on ${JSON.stringify(path)}: globMatches ${globMatches(glob, path)}, normal ${globMatches(normal, path)}, the reference ${expected}`;
      }
    }
    return null;
  });
});
