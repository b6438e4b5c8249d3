/**
 * Delegation helpers (nobody grants more than they hold) against brute force: random globs, and
 * every path of up to DEPTH segments over a small alphabet, matched by a RegExp reference written
 * here. Set POLICY_SEED to replay a run; a failure prints its seed and case.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  ROOT_POLICY,
  decide,
  globCovers,
  globsIntersect,
  policyWithinRights,
  ruleWithinRights,
  type Capability,
  type Policy,
  type PolicyRule,
} from '../../src/state/policy.ts';
import { SeededRandom } from '../../src/util/prng.ts';

const SEED = Number(process.env['POLICY_SEED'] ?? 20_240_602);

// --- Brute force ---------------------------------------------------------------------------------

// `c` is in no glob: it fills a `*` the way no literal can, so short counterexamples exist.
const PATH_SEGMENTS = ['a', 'b', 'ab', 'c', 'ac', 'cb'];
const DEPTH = 5;

function allPaths(depth: number): string[] {
  const out: string[] = [];
  let layer = [''];
  for (let d = 1; d <= depth; d++) {
    layer = layer.flatMap((prefix) => PATH_SEGMENTS.map((s) => (prefix === '' ? s : `${prefix}/${s}`)));
    out.push(...layer);
  }
  return out;
}

const PATHS = allPaths(DEPTH);
const SHALLOW_PATHS = allPaths(3);

function referenceRegExp(glob: string): RegExp {
  const body = glob
    .split('/')
    .map((s) =>
      s === '**'
        ? '(?:/[^/]*)*'
        : '/' +
          s
            .split('*')
            .map((part) => part.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&'))
            .join('[^/]*'),
    )
    .join('');
  return new RegExp(`^${body}$`);
}

/** For each glob, which of PATHS it matches (each glob is worked out once). */
const matchedByGlob = new Map<string, Uint8Array>();

function matched(glob: string): Uint8Array {
  let bits = matchedByGlob.get(glob);
  if (bits === undefined) {
    const re = referenceRegExp(glob);
    bits = Uint8Array.from(PATHS, (p) => (re.test('/' + p) ? 1 : 0));
    matchedByGlob.set(glob, bits);
  }
  return bits;
}

/** A path `inner` matches and `outer` does not, or undefined. */
function escapingPath(outer: string, inner: string): string | undefined {
  const o = matched(outer);
  const i = matched(inner);
  return PATHS.find((_, k) => i[k] === 1 && o[k] === 0);
}

function commonPath(a: string, b: string): string | undefined {
  const x = matched(a);
  const y = matched(b);
  return PATHS.find((_, k) => x[k] === 1 && y[k] === 1);
}

// --- Generators ----------------------------------------------------------------------------------

const GLOB_SEGMENTS = ['a', 'b', 'ab', '*', 'a*', '*b', '**', '**/**', '**/*/**'];
const TEST_CAPABILITIES: readonly Capability[] = ['read', 'write'];

function pick<T>(random: SeededRandom, items: readonly T[]): T {
  return items[random.int(items.length)]!;
}

function randomGlob(random: SeededRandom): string {
  return Array.from({ length: 1 + random.int(3) }, () => pick(random, GLOB_SEGMENTS)).join('/');
}

function randomCapabilities(random: SeededRandom): Capability[] {
  const some = TEST_CAPABILITIES.filter(() => random.int(2) === 0);
  return some.length > 0 ? some : [pick(random, TEST_CAPABILITIES)];
}

function randomRule(random: SeededRandom, denyOneIn: number): PolicyRule {
  return { path: randomGlob(random), capabilities: randomCapabilities(random), deny: random.int(denyOneIn) === 0 };
}

/** A holder: some allows (often broad, so that grants are possible at all) and some denies. */
function randomHolder(random: SeededRandom): Policy[] {
  const broad: PolicyRule[] =
    random.int(2) === 0
      ? [{ path: pick(random, ['**', 'a/**', '*/**', '**/b']), capabilities: randomCapabilities(random), deny: false }]
      : [];
  const rules = [...broad, ...Array.from({ length: 1 + random.int(3) }, () => randomRule(random, 3))];
  return [{ name: 'holder', rules }];
}

function forEachCase(cases: number, check: (random: SeededRandom) => string | null): void {
  const random = new SeededRandom(SEED);
  for (let k = 0; k < cases; k++) {
    const failure = check(random.fork());
    if (failure !== null) assert.fail(`POLICY_SEED=${SEED}, case ${k}: ${failure}`);
  }
}

// --- globCovers and globsIntersect ---------------------------------------------------------------

test('property: globCovers is sound (and, on these paths, exact) against brute force', () => {
  let covered = 0;
  forEachCase(3000, (random) => {
    const outer = randomGlob(random);
    const inner = randomGlob(random);
    const escaping = escapingPath(outer, inner);
    const covers = globCovers(outer, inner);
    if (covers) covered++;
    if (covers && escaping !== undefined)
      return `globCovers(${outer}, ${inner}) but ${JSON.stringify(escaping)} escapes`;
    // Not part of the safety claim: no containment is missed that these paths can show.
    if (!covers && escaping === undefined)
      return `globCovers(${outer}, ${inner}) is false, yet no path of up to ${DEPTH} segments escapes`;
    return null;
  });
  assert.ok(covered > 300, `only ${covered} cases were containments: the generator no longer tests much`);
});

test('property: globsIntersect is sound (never false when a path matches both) against brute force', () => {
  let disjoint = 0;
  forEachCase(3000, (random) => {
    const a = randomGlob(random);
    const b = randomGlob(random);
    const common = commonPath(a, b);
    const intersect = globsIntersect(a, b);
    if (!intersect) disjoint++;
    if (!intersect && common !== undefined)
      return `globsIntersect(${a}, ${b}) is false but ${JSON.stringify(common)} matches both`;
    if (intersect !== globsIntersect(b, a)) return `globsIntersect(${a}, ${b}) is not symmetric`;
    return null;
  });
  assert.ok(disjoint > 300, `only ${disjoint} cases were disjoint: the generator no longer tests much`);
});

test('globCovers: exact on the cases that need care (run order, ** alone, segment globs)', () => {
  assert.equal(globCovers('*/**', '**/x/**'), true, '"one segment or more" holds every path with an x');
  assert.equal(globCovers('**/*/*', 'a/*/**'), true, 'both are "two segments or more"');
  assert.equal(globCovers('*/**', '**'), true, 'a name has at least one segment');
  assert.equal(globCovers('*/*/**', '**'), false);
  assert.equal(globCovers('x/**', 'x'), true);
  assert.equal(globCovers('*', '**'), false);
  assert.equal(globCovers('**', 'a/**/b'), true);
  assert.equal(globCovers('a*', 'ab*'), true);
  assert.equal(globCovers('*b*', 'a*b'), true);
  assert.equal(globCovers('a*', '*a'), false);
  assert.equal(globCovers('team/**', 'team/x/*'), true);
  assert.equal(globCovers('team/**', 'team*/x'), false);
  assert.equal(globCovers('prod/**', '**'), false);
  assert.equal(globsIntersect('prod/**', 'dev/**'), false);
  assert.equal(globsIntersect('prod/**', '**/db'), true);
  assert.equal(globsIntersect('*-prod', 'db-*'), true);
  assert.equal(globsIntersect('a*b', 'b*'), false);
});

// --- ruleWithinRights ----------------------------------------------------------------------------

test("property: a rule within the holder's rights grants nothing the holder is not allowed", () => {
  let granted = 0;
  forEachCase(2000, (random) => {
    const holder = randomHolder(random);
    const rule = randomRule(random, 4);
    if (ruleWithinRights(holder, rule) !== null) return null;
    granted++;
    const re = referenceRegExp(rule.path);
    for (const path of SHALLOW_PATHS) {
      if (!re.test('/' + path)) continue;
      for (const capability of rule.capabilities) {
        if (!decide(holder, capability, path).allowed)
          return `${JSON.stringify(rule)} passes for ${JSON.stringify(holder)}, which may not ${capability} ${JSON.stringify(path)}`;
      }
    }
    return null;
  });
  assert.ok(granted > 200, `only ${granted} rules passed: the generator no longer tests much`);
});

const read = (path: string, deny = false): PolicyRule => ({ path, capabilities: ['read'], deny });

test('ruleWithinRights: not uselessly strict, on the cases a delegated administrator meets', () => {
  const everything: PolicyRule = {
    path: '**/**',
    capabilities: ['read', 'write', 'list', 'delete', 'admin', 'sudo'],
    deny: false,
  };
  assert.equal(ruleWithinRights([ROOT_POLICY], everything), null, 'root can grant anything');
  assert.equal(ruleWithinRights([ROOT_POLICY], { ...everything, deny: true }), null, 'and deny anything');

  const team: Policy[] = [{ name: 'team', rules: [read('team/**')] }];
  assert.equal(ruleWithinRights(team, read('team/x/*')), null);
  assert.equal(
    ruleWithinRights(team, { path: 'team/**', capabilities: ['write'], deny: false }),
    'rule "team/**" grants write, which you do not hold on all of "team/**"',
  );
  assert.equal(ruleWithinRights(team, read('**')), 'rule "**" grants read, which you do not hold on all of "**"');

  const notProd: Policy[] = [{ name: 'not-prod', rules: [read('**'), read('prod/**', true)] }];
  assert.equal(ruleWithinRights(notProd, read('**')), 'rule "**" grants read, which you do not hold on all of "**"');
  assert.equal(ruleWithinRights(notProd, read('dev/**')), null);
  assert.equal(
    ruleWithinRights(notProd, read('prod/**')),
    'rule "prod/**" grants read, which you do not hold on all of "prod/**"',
  );

  const publicProd: Policy[] = [
    { name: 'a', rules: [read('**'), read('prod/**', true)] },
    { name: 'b', rules: [read('prod/public/**')] },
  ];
  assert.equal(
    ruleWithinRights(publicProd, read('prod/public/**')),
    null,
    'the more specific allow outranks the deny on all of it',
  );
});

test('ruleWithinRights: a deny rule is checked like an allow, and the message says it denies', () => {
  const team: Policy[] = [{ name: 'team', rules: [read('team/**')] }];
  assert.equal(ruleWithinRights(team, read('team/secret/**', true)), null);
  assert.equal(
    ruleWithinRights(team, read('other/**', true)),
    'rule "other/**" denies read, which you do not hold on all of "other/**"',
  );
});

test("ruleWithinRights: the ranking is decide's: a deny of equal rank is not outranked, redundant ** buy nothing", () => {
  // Equal rank: the deny wins in decide, so the allow does not make read held there.
  const tie: Policy[] = [{ name: 'tie', rules: [read('a/**'), read('a/**', true)] }];
  assert.equal(decide(tie, 'read', 'a/x').allowed, false);
  assert.notEqual(ruleWithinRights(tie, read('a/x')), null);
  const padded: Policy[] = [{ name: 'padded', rules: [read('**/**/**/**/**/**/**/**'), read('prod/**', true)] }];
  assert.notEqual(ruleWithinRights(padded, read('prod/db')), null);
  assert.notEqual(ruleWithinRights(padded, read('**')), null);
});

test('policyWithinRights: the first rule not held, or null', () => {
  const team: Policy[] = [{ name: 'team', rules: [{ path: 'team/**', capabilities: ['read', 'list'], deny: false }] }];
  assert.equal(
    policyWithinRights(team, [read('team/a'), { path: 'team/b/**', capabilities: ['list'], deny: false }]),
    null,
  );
  assert.equal(
    policyWithinRights(team, [
      read('team/a'),
      { path: 'team/b', capabilities: ['list', 'write', 'delete'], deny: false },
      read('x'),
    ]),
    'rule "team/b" grants write, which you do not hold on all of "team/b"',
  );
});
