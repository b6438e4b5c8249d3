import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ROOT_POLICY, decide, globMatches, policyProblem, type Policy } from '../../src/state/policy.ts';

test('globs match segment by segment: * within a segment, ** across any number of them', () => {
  assert.equal(globMatches('app/*/password', 'app/db/password'), true);
  assert.equal(globMatches('app/*/password', 'app/db/x/password'), false);
  assert.equal(globMatches('app/**', 'app'), true);
  assert.equal(globMatches('app/**', 'app/a/b/c'), true);
  assert.equal(globMatches('app/**/key', 'app/key'), true);
  assert.equal(globMatches('app/**/key', 'app/x/y/key'), true);
  assert.equal(globMatches('app/db-*', 'app/db-main'), true);
  assert.equal(globMatches('app/db-*', 'app/cache-main'), false);
  assert.equal(globMatches('app/*-prod-*', 'app/db-prod-1'), true);
  assert.equal(globMatches('app/*-prod-*', 'app/db-prod'), false);
  assert.equal(globMatches('app', 'application'), false);
});

test('default deny; the most specific rule decides; explicit deny wins a tie', () => {
  const team: Policy = {
    name: 'team',
    rules: [
      { path: 'app/**', capabilities: ['read', 'list'], deny: false },
      { path: 'app/prod/**', capabilities: ['read'], deny: true },
      { path: 'app/prod/public-key', capabilities: ['read'], deny: false },
    ],
  };
  assert.equal(decide([team], 'read', 'app/dev/db').allowed, true);
  assert.equal(decide([team], 'write', 'app/dev/db').allowed, false, 'no rule names write: default deny');
  assert.equal(decide([team], 'read', 'app/prod/db').allowed, false, 'the more specific deny');
  assert.deepEqual(decide([team], 'read', 'app/prod/db').rule, { policy: 'team', path: 'app/prod/**', deny: true });
  assert.equal(decide([team], 'read', 'app/prod/public-key').allowed, true, 'the most specific allow');
  assert.equal(decide([team], 'read', 'other/x').rule, null);
  const tie: Policy = { name: 'tie', rules: [{ path: 'app/dev/db', capabilities: ['read'], deny: true }] };
  const tie2: Policy = { name: 'tie2', rules: [{ path: 'app/dev/db', capabilities: ['read'], deny: false }] };
  assert.equal(decide([tie2, tie], 'read', 'app/dev/db').allowed, false);
  assert.equal(decide([ROOT_POLICY], 'admin', 'sys/policies/x').allowed, true);
});

test('a malformed policy is refused with what to fix', () => {
  assert.match(policyProblem({ name: 'Bad', rules: [] }) ?? '', /lower-case letter/);
  assert.match(policyProblem({ name: 'root', rules: [] }) ?? '', /built in/);
  assert.match(policyProblem({ name: 'p', rules: [] }) ?? '', /at least one rule/);
  assert.match(
    policyProblem({ name: 'p', rules: [{ path: 'a/**x', capabilities: ['read'], deny: false }] }) ?? '',
    /rule 1: the path/,
  );
  assert.match(
    policyProblem({ name: 'p', rules: [{ path: 'a/*', capabilities: ['fly'], deny: false }] }) ?? '',
    /rule 1: capabilities/,
  );
  assert.equal(policyProblem({ name: 'p', rules: [{ path: 'a/*', capabilities: ['read'], deny: false }] }), null);
  assert.match(
    policyProblem({ name: 'p', rules: [{ path: 'a/*', capabilities: ['fly'], deny: false }] }) ?? '',
    /read, write, list, delete, admin, sudo$/,
  );
});

test('sudo: root holds it; only a rule that names it grants it, admin on ** does not', () => {
  assert.equal(decide([ROOT_POLICY], 'sudo', 'sys/cluster/members').allowed, true);
  const operator: Policy = {
    name: 'operator',
    rules: [{ path: '**', capabilities: ['read', 'write', 'list', 'delete', 'admin'], deny: false }],
  };
  assert.equal(decide([operator], 'sudo', 'sys/cluster/members').allowed, false);
  const keyring: Policy = { name: 'keyring', rules: [{ path: 'sys/keyring', capabilities: ['sudo'], deny: false }] };
  assert.equal(policyProblem(keyring), null);
  assert.equal(decide([operator, keyring], 'sudo', 'sys/keyring').allowed, true);
  assert.equal(decide([operator, keyring], 'sudo', 'sys/backups').allowed, false);
});

// The exponential matcher took hours on this input; the test's time bound is what catches it.
test('matching many ** segments against a long path that does not match finishes (no exponential backtracking)', {
  timeout: 10_000,
}, () => {
  const glob = Array.from({ length: 12 }, () => '**').join('/a/') + '/z';
  const path = Array.from({ length: 60 }, () => 'a').join('/');
  assert.equal(globMatches(glob, path), false);
  assert.equal(globMatches('**/**/**/x', 'a/b/c/x'), true);
});
