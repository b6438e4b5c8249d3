import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Command } from 'commander';
import { POLICY_PUT_HELP, policyRulesFrom } from '../../src/cli/admin-commands.ts';
import { program } from '../../src/cli/commands.ts';
import { coffer } from '../processes/processes.ts';
import { decide, policyProblem, type Capability } from '../../src/state/policy.ts';

/** Every command under `root`, with its full name (`coffer policy get`). */
function walk(root: Command, prefix = ''): Array<{ name: string; command: Command }> {
  const name = `${prefix}${root.name()}`;
  return [{ name, command: root }, ...root.commands.flatMap((c) => walk(c, `${name} `))];
}

test('every command and subcommand of coffer --help has a description', () => {
  const all = walk(program);
  assert.ok(all.length > 40, `the tree was walked (${all.length} commands)`);
  const bare = all.filter(({ command }) => command.description().trim() === '').map(({ name }) => name);
  assert.deepEqual(bare, [], 'commands without help text');
});

test('--output takes only text or json, on every command that has it', () => {
  const withOutput = walk(program).flatMap(({ name, command }) =>
    command.options.filter((o) => o.long === '--output').map((o) => ({ name, choices: o.argChoices })),
  );
  assert.ok(withOutput.length > 30, `found --output on ${withOutput.length} commands`);
  for (const { name, choices } of withOutput) assert.deepEqual(choices, ['text', 'json'], name);
});

test('coffer policy put --help shows a rules file: a ** glob, a * glob and a deny rule', () => {
  const put = program.commands.find((c) => c.name() === 'policy')!.commands.find((c) => c.name() === 'put')!;
  let help = '';
  put.configureOutput({ writeOut: (text) => (help += text) });
  put.outputHelp();
  assert.match(help, /"app\/\*\*"/, 'a ** rule');
  assert.match(help, /"app\/\*\/[^"*]+"/, 'a * rule');
  assert.match(help, /"deny": true/, 'a deny rule');
  assert.match(help, /\*\* .*across segments|across segments/, 'says what ** does');
  assert.match(help, /coffer policy put \S+ --file/, 'a command line to run');
});

test('the example of coffer policy put --help is a valid policy, and decides as its notes say', () => {
  const json = /\[\s*\{[\s\S]*?\}\s*\]/.exec(POLICY_PUT_HELP)![0];
  const rules = policyRulesFrom(json, 'the help example').map((r) => ({
    path: r.path,
    capabilities: r.capabilities as Capability[],
    deny: r.deny ?? false,
  }));
  assert.equal(policyProblem({ name: 'app-team', rules }), null);
  const policies = [{ name: 'app-team', rules }];
  const allowed = (capability: Capability, path: string) => decide(policies, capability, path).allowed;
  assert.ok(allowed('read', 'app/db') && allowed('read', 'app/web/eu/db') && allowed('list', 'app/web/db'));
  assert.ok(allowed('write', 'app/web/db'), 'app/*/db allows write one segment down');
  assert.ok(!allowed('write', 'app/web/eu/db'), '* stays within one segment');
  assert.ok(!allowed('read', 'app/prod/db') && !allowed('write', 'app/prod/db'), 'the deny outranks app/*/db');
  assert.ok(allowed('list', 'app/prod/db'), 'the deny names read and write only');
});

test('coffer policy ls --output yaml is refused before anything is sent, naming the choices', async () => {
  const r = await coffer(['policy', 'ls', '--output', 'yaml', '--addr', '127.0.0.1:1']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /argument 'yaml' is invalid\. Allowed choices are text, json/);
  assert.equal(r.stdout, '');
});
