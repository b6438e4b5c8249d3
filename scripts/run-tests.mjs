#!/usr/bin/env node
// Runs every test/**/*.test.ts with node's own test runner (through tsx), so CI reads node's
// summary. Node 20's `--test` does not expand globs itself, hence this small finder.
// Usage: node scripts/run-tests.mjs [path-substring ...]
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

function find(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...find(path));
    else if (name.endsWith('.test.ts')) out.push(path);
  }
  return out;
}

const filters = process.argv.slice(2);
const files = find('test').filter((f) => filters.length === 0 || filters.some((s) => f.includes(s)));
if (files.length === 0) {
  console.error(`no test files match ${JSON.stringify(filters)}`);
  process.exit(1);
}
// The CLI the tests start is the compiled one (dist/run/coffer.mjs, as `npm run build` makes it and an install
// runs): a start through tsx compiles the sources again each time, about 1.2 s of CPU more, and
// the suite starts a few hundred. dist/ is made afresh, so no file of a removed source lingers.
const build = spawnSync(process.execPath, ['scripts/build.mjs'], { stdio: 'inherit' });
if (build.status !== 0) {
  console.error('the build failed (npm run build): the tests run the compiled CLI');
  process.exit(1);
}
const result = spawnSync(
  process.execPath,
  ['--import', 'tsx', '--test', '--test-reporter=spec', '--test-timeout=600000', '--test-concurrency=2', ...files],
  { stdio: 'inherit', env: { ...process.env, COFFER_TEST_COMPILED: '1' } },
);
process.exit(result.status ?? 1);
