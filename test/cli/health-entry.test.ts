import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import { importsOf } from '../architecture/imports.ts';

// A container healthcheck starts `coffer health` every few seconds on every manager; the full
// command line cost each check about 0.6 s of CPU, the health command alone about 0.25 s. These
// tests keep it alone: a module added to its path must be added here, on purpose.

const REPO = join(import.meta.dirname, '..', '..');
const SRC = join(REPO, 'src');

test('coffer health imports only its own modules: not the other commands, not the full client', () => {
  const seen = new Set<string>();
  const visit = (file: string): void => {
    const name = relative(SRC, file);
    if (seen.has(name)) return;
    seen.add(name);
    for (const target of importsOf(file)) visit(target);
  };
  visit(join(SRC, 'cli/health-main.ts'));
  assert.deepEqual([...seen].sort(), [
    'cli/client-flags.ts',
    'cli/health-command.ts',
    'cli/health-main.ts',
    'cli/printable.ts',
    'client/health-client.ts',
    'crypto/der.ts',
    'crypto/errors.ts',
    'crypto/key-pairs.ts',
    'crypto/pki.ts',
    'transport/tls.ts',
  ]);
  const main = importsOf(join(SRC, 'cli/run.ts')).map((f) => relative(SRC, f));
  assert.ok(main.includes('cli/health-main.ts') && main.includes('cli/commands.ts'), main.join(', '));
});

test('coffer health, run as a healthcheck runs it, loads no package but commander and grpc-js (no proto-loader, protobufjs, pino, level, node-forge), and reports a manager it cannot reach', {
  timeout: 60_000,
}, () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-health-entry-'));
  try {
    const ca = createCa('health-entry', Date.now());
    const client = issueCertificate(ca, { id: 'health', role: 'client', clusterId: 'health-entry', nowMs: Date.now() });
    writeFileSync(join(root, 'ca.crt'), ca.certPem);
    writeFileSync(join(root, 'health.crt'), client.certPem);
    writeFileSync(join(root, 'health.key'), client.keyPem, { mode: 0o600 });
    // The CommonJS modules loaded (every package here is CommonJS), written when the process exits.
    const hook = join(root, 'loaded.mjs');
    writeFileSync(
      hook,
      `import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
const require = createRequire(import.meta.url);
process.on('exit', () => writeFileSync(${JSON.stringify(join(root, 'loaded.txt'))}, Object.keys(require.cache).join('\\n')));
`,
    );
    const run = spawnSync(
      process.execPath,
      [
        '--import',
        'tsx',
        '--import',
        hook,
        join(SRC, 'cli/main.ts'),
        'health',
        '--addr',
        '127.0.0.1:1',
        '--timeout',
        '2000',
        '--ca',
        join(root, 'ca.crt'),
        '--cert',
        join(root, 'health.crt'),
        '--key',
        join(root, 'health.key'),
      ],
      { encoding: 'utf8', cwd: REPO },
    );
    assert.equal(run.status, 1, run.stderr);
    assert.match(run.stderr, /coffer: 127\.0\.0\.1:1 is not healthy: cannot check it: UNAVAILABLE/);
    const packages = new Set(
      readFileSync(join(root, 'loaded.txt'), 'utf8')
        .split('\n')
        .map((path) => /node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(path)?.[1])
        .filter((name) => name !== undefined),
    );
    // tsx and esbuild run the sources in this test; the image runs the compiled JavaScript.
    assert.deepEqual([...packages].filter((name) => name !== 'tsx' && name !== 'esbuild').sort(), [
      '@grpc/grpc-js',
      '@js-sdsl/ordered-map',
      'commander',
    ]);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
