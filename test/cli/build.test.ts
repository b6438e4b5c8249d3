import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * `npm run build` (scripts/build.mjs) compiles src/ to JavaScript, a module per source, and
 * bundles the CLI into one module, dist/run/coffer-cli.cjs, run by the entry dist/run/coffer.mjs
 * (what the coffer bin and the container image run, without tsx) with the code cache the build
 * made. The build goes to a directory beside src/ (at the same depth, as dist/ is, so the
 * compiled code finds proto/ as the sources do), and both forms of the CLI must run.
 */

const REPO = join(import.meta.dirname, '..', '..');
const OUT = join(REPO, '.build-check');

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

test('the build compiles every source to JavaScript that imports no .ts file, bundles the CLI, and both run', {
  timeout: 120_000,
}, () => {
  rmSync(OUT, { recursive: true, force: true });
  try {
    const built = spawnSync(process.execPath, [join(REPO, 'scripts', 'build.mjs'), OUT], {
      encoding: 'utf8',
      cwd: REPO,
    });
    assert.equal(built.status, 0, `build: ${built.stdout}${built.stderr}`);
    const files = filesUnder(OUT);
    assert.ok(files.some((f) => f.endsWith(join('cli', 'main.js'))));
    for (const file of files.filter((f) => !f.endsWith('.map') && !f.endsWith('.code-cache'))) {
      assert.ok(/\.(c|m)?js$/.test(file), `${file}: only JavaScript`);
      assert.doesNotMatch(readFileSync(file, 'utf8'), /from '\.{1,2}\/[^']*\.ts'/, `${file} imports a .ts file`);
    }
    // The bundle holds Coffer's own code and most packages. Packages with a native addon stay in
    // node_modules: bundled, classic-level would not find its LevelDB, and msgpackr would go
    // without its native decoder.
    const run = join(OUT, 'run');
    assert.deepEqual(readdirSync(run).sort(), [
      'coffer-cli.cjs',
      'coffer-cli.cjs.map',
      'coffer-cli.code-cache',
      'coffer.mjs',
    ]);
    const bundled = readFileSync(join(run, 'coffer-cli.cjs'), 'utf8');
    assert.doesNotMatch(bundled, /require\(['"]\.\.\//, 'the bundle requires a file outside it');
    for (const pkg of ['@grpc/grpc-js', 'grpc-health-check', 'protobufjs'])
      assert.ok(bundled.includes(`// node_modules/${pkg}/`), `${pkg} is not in the bundle`);
    for (const pkg of ['classic-level', 'msgpackr'])
      assert.ok(!bundled.includes(`// node_modules/${pkg}/`), `${pkg} was bundled: it must load from node_modules`);
    // The entry only loads the bundle: no package of its own.
    const entry = readFileSync(join(run, 'coffer.mjs'), 'utf8');
    assert.doesNotMatch(entry, /from ['"](?!node:)[^'"]+['"]/, 'the entry imports a package');
    const version = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')).version;
    for (const cli of [join(OUT, 'cli', 'main.js'), join(run, 'coffer.mjs')]) {
      const printed = spawnSync(process.execPath, [cli, '--version'], { encoding: 'utf8' });
      assert.equal(printed.status, 0, printed.stderr);
      assert.equal(printed.stdout.trim(), version);
      const help = spawnSync(process.execPath, [cli, 'secret', 'import', '--help'], { encoding: 'utf8' });
      assert.equal(help.status, 0, help.stderr);
      assert.match(help.stdout, /import/);
    }

    // The code cache: V8 takes it with no node flags (as the bin runs node), refuses it under any
    // V8 flag (the bundle is then compiled as without one), and a cache made from other bytes than the bundle's is
    // not given to V8 at all (V8 itself compares only the source's length).
    const cacheState = (flags: readonly string[], cache: string): string => {
      const script = `import { loadBundle } from ${JSON.stringify(join(REPO, 'src', 'cli', 'code-cache.ts'))};
process.stdout.write(loadBundle(${JSON.stringify(join(run, 'coffer-cli.cjs'))}, ${JSON.stringify(cache)}).cache);`;
      const checked = spawnSync(process.execPath, [...flags, '--import', 'tsx', '--input-type=module', '-e', script], {
        encoding: 'utf8',
        cwd: REPO,
      });
      assert.equal(checked.status, 0, checked.stderr);
      return checked.stdout;
    };
    const cache = join(run, 'coffer-cli.code-cache');
    assert.equal(cacheState([], cache), 'used');
    assert.equal(cacheState(['--max-semi-space-size=32'], cache), 'rejected');
    const forged = join(OUT, 'forged.code-cache');
    const bytes = readFileSync(cache);
    bytes[0]! ^= 1; // the digest of another bundle, with V8's bytes unchanged
    writeFileSync(forged, bytes);
    assert.equal(cacheState([], forged), 'stale');
    assert.equal(cacheState([], join(OUT, 'none')), 'absent');
    // A bundle changed after its cache was made runs its own code, not the cache's.
    const changed = bundled.replace(`version("${version}"`, `version("9.9.9"`);
    assert.notEqual(changed, bundled, 'the bundle names its version where this test looks for it');
    writeFileSync(join(run, 'coffer-cli.cjs'), changed);
    const printed = spawnSync(process.execPath, [join(run, 'coffer.mjs'), '--version'], {
      encoding: 'utf8',
    });
    assert.equal(printed.status, 0, printed.stderr);
    assert.equal(printed.stdout.trim(), '9.9.9');
  } finally {
    rmSync(OUT, { recursive: true, force: true });
  }
});

test('the coffer bin starts node with no flags: the build makes its code cache for that, and V8 refuses it under any flag', () => {
  const first = readFileSync(join(REPO, 'bin', 'coffer.mjs'), 'utf8').split('\n')[0];
  assert.equal(first, '#!/usr/bin/env node');
});
