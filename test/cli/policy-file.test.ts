import { test } from 'node:test';
import assert from 'node:assert/strict';
import { policyRulesFrom } from '../../src/cli/admin-commands.ts';

test('a policy file: a list of rules, or an object holding one; anything else is refused with what to write instead', () => {
  const rule = { path: 'app/**', capabilities: ['read', 'list'] };
  assert.deepEqual(policyRulesFrom(JSON.stringify([rule]), 'p.json'), [rule]);
  assert.deepEqual(policyRulesFrom(JSON.stringify({ name: 'x', rules: [rule] }), 'p.json'), [rule]);
  for (const [text, pattern] of [
    ['{"path": "app/**"', /p\.json is not JSON: a policy file holds a list of rules, such as \[/],
    [JSON.stringify(rule), /p\.json holds an object, not a list of rules: write them as \[/],
    ['"app/**"', /holds a string, not a list of rules/],
    ['null', /holds null, not a list/],
    [JSON.stringify({ rules: rule }), /holds an object, not a list of rules/],
    [JSON.stringify(['app/**']), /rule 1 of p\.json is a string, not an object/],
    [JSON.stringify([rule, { capabilities: ['read'] }]), /rule 2 of p\.json has no "path"/],
    [JSON.stringify([{ path: 'a', capabilities: 'read' }]), /rule 1 of p\.json has no "capabilities" list/],
    [JSON.stringify([{ path: 'a', capabilities: ['read'], deny: 'yes' }]), /"deny" is true or false/],
  ] as const)
    assert.throws(() => policyRulesFrom(text, 'p.json'), pattern, text);
});
