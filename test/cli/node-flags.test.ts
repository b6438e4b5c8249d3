import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { MANAGER_NODE_FLAGS, withManagerFlags } from '../../src/cli/node-flags.ts';

test("a manager's node flags are added where missing, and a flag already given (another size) wins", () => {
  assert.deepEqual(withManagerFlags([]), [...MANAGER_NODE_FLAGS]);
  assert.deepEqual(withManagerFlags(['--import', 'tsx']), [...MANAGER_NODE_FLAGS, '--import', 'tsx']);
  assert.deepEqual(withManagerFlags(['--max-semi-space-size=8']), ['--max-semi-space-size=8']);
});

test("the coffer bin's first line starts node with a manager's flags (they cannot drift apart)", () => {
  const bin = fileURLToPath(new URL('../../bin/coffer.mjs', import.meta.url));
  const first = readFileSync(bin, 'utf8').split('\n')[0]!;
  assert.match(first, /^#!\/usr\/bin\/env -S node /);
  assert.deepEqual(first.replace(/^#!\/usr\/bin\/env -S node /, '').split(' '), [...MANAGER_NODE_FLAGS]);
});
