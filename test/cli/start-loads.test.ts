import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const RECORDER = fileURLToPath(new URL('./fixtures/record-loads.mjs', import.meta.url));

/**
 * Packages only some managers use are loaded when first used, not at every start: together they
 * cost each start (and every restart) about 70 ms of loading (docs/benchmarks.md, "Start").
 * Loads what `coffer server` loads (the CLI's commands and the manager's server), without
 * starting one, and lists the modules the process loaded.
 */
test('a manager starts without the PostgreSQL, LDAP, JWT, pretty-printing, proto-loader, reflection and health packages', () => {
  // The same list the build loads to make the bundle's code cache (src/cli/run.ts).
  const script = "const { loadManagerModules } = await import('./src/cli/run.ts'); await loadManagerModules();";
  const run = spawnSync(
    process.execPath,
    ['--import', RECORDER, '--import', 'tsx', '--input-type=module', '-e', script],
    {
      cwd: ROOT,
      encoding: 'utf8',
      timeout: 60_000,
      env: { ...process.env, COFFER_LOG_FORMAT: 'json' },
    },
  );
  assert.equal(run.status, 0, run.stderr);
  const line = run.stderr.split('\n').find((l) => l.startsWith('LOADED '));
  assert.ok(line !== undefined, `no list of loaded modules: ${run.stderr}`);
  const loaded = JSON.parse(line.slice('LOADED '.length)) as string[];
  // The recorder sees what was loaded: the manager's own modules and the packages it needs.
  for (const needed of ['/src/server/node.ts', '/node_modules/@grpc/grpc-js/', '/node_modules/pino/'])
    assert.ok(
      loaded.some((m) => m.includes(needed)),
      `${needed} is not among the ${loaded.length} modules loaded`,
    );
  for (const lazy of [
    '/node_modules/pg/',
    '/node_modules/ldapts/',
    '/node_modules/jose/',
    '/node_modules/pino-pretty/',
    // Made from the compiled schemas; the packages load at the first reflection or health call.
    '/node_modules/@grpc/proto-loader/',
    '/node_modules/@grpc/reflection/',
    '/node_modules/grpc-health-check/',
  ])
    assert.deepEqual(
      loaded.filter((m) => m.includes(lazy)),
      [],
      `${lazy} is loaded when a manager starts`,
    );
});
