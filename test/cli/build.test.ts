import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';

/**
 * `npm run build` (scripts/build.mjs) compiles src/ to JavaScript, a module per source, and
 * bundles the CLI into one module, dist/run/coffer.mjs (what the coffer bin and the container
 * image run, without tsx). The build goes to a directory beside src/ (at the same depth, as dist/
 * is, so the compiled code finds proto/ as the sources do), and both forms of the CLI must run.
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
    for (const file of files.filter((f) => !f.endsWith('.map'))) {
      assert.ok(file.endsWith('.js') || file.endsWith('.mjs'), `${file}: only JavaScript`);
      assert.doesNotMatch(readFileSync(file, 'utf8'), /from '\.{1,2}\/[^']*\.ts'/, `${file} imports a .ts file`);
    }
    // The bundle holds Coffer's own code and most packages, split where the CLI imports a
    // command's code when it runs. Packages with a native addon stay in node_modules: bundled,
    // classic-level would not find its LevelDB, and msgpackr would go without its native decoder.
    const chunks = filesUnder(join(OUT, 'run')).filter((f) => f.endsWith('.mjs'));
    const bundled = chunks.map((f) => readFileSync(f, 'utf8')).join('\n');
    for (const file of chunks)
      assert.doesNotMatch(readFileSync(file, 'utf8'), /from ['"]\.\.\//, `${file} imports a file outside the bundle`);
    for (const pkg of ['@grpc/grpc-js', 'grpc-health-check', 'protobufjs'])
      assert.ok(bundled.includes(`// node_modules/${pkg}/`), `${pkg} is not in the bundle`);
    for (const pkg of ['classic-level', 'msgpackr'])
      assert.ok(!bundled.includes(`// node_modules/${pkg}/`), `${pkg} was bundled: it must load from node_modules`);
    // What every start loads (the health check's included) holds none of a manager's packages.
    const entry = readFileSync(join(OUT, 'run', 'coffer.mjs'), 'utf8');
    for (const pkg of ['level', 'pino', 'prom-client', 'msgpackr'])
      assert.doesNotMatch(entry, new RegExp(`from ['"]${pkg}['"]`), `the entry module loads ${pkg} at every start`);
    for (const cli of [join(OUT, 'cli', 'main.js'), join(OUT, 'run', 'coffer.mjs')]) {
      const version = spawnSync(process.execPath, [cli, '--version'], { encoding: 'utf8' });
      assert.equal(version.status, 0, version.stderr);
      assert.equal(version.stdout.trim(), JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')).version);
      const help = spawnSync(process.execPath, [cli, 'secret', 'import', '--help'], { encoding: 'utf8' });
      assert.equal(help.status, 0, help.stderr);
      assert.match(help.stdout, /import/);
    }
  } finally {
    rmSync(OUT, { recursive: true, force: true });
  }
});
