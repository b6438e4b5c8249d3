import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';

/**
 * `npm run build` compiles src/ to JavaScript (what the container image runs, without tsx). The
 * build goes to a directory beside src/ (at the same depth, as dist/ is, so the compiled code
 * finds proto/ as the sources do), and the compiled CLI must run.
 */

const REPO = join(import.meta.dirname, '..', '..');
const OUT = join(REPO, '.build-check');

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

test('the build compiles every source to JavaScript that imports no .ts file, and the compiled CLI runs', {
  timeout: 120_000,
}, () => {
  rmSync(OUT, { recursive: true, force: true });
  try {
    const tsc = spawnSync(
      process.execPath,
      [
        join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'),
        '-p',
        join(REPO, 'tsconfig.build.json'),
        '--outDir',
        OUT,
      ],
      { encoding: 'utf8', cwd: REPO },
    );
    assert.equal(tsc.status, 0, `tsc: ${tsc.stdout}${tsc.stderr}`);
    const files = filesUnder(OUT);
    assert.ok(files.some((f) => f.endsWith(join('cli', 'main.js'))));
    for (const file of files) {
      assert.ok(file.endsWith('.js'), `${file}: only JavaScript`);
      assert.doesNotMatch(readFileSync(file, 'utf8'), /from '\.{1,2}\/[^']*\.ts'/, `${file} imports a .ts file`);
    }
    const version = spawnSync(process.execPath, [join(OUT, 'cli', 'main.js'), '--version'], { encoding: 'utf8' });
    assert.equal(version.status, 0, version.stderr);
    assert.equal(version.stdout.trim(), JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')).version);
    const help = spawnSync(process.execPath, [join(OUT, 'cli', 'main.js'), 'secret', 'import', '--help'], {
      encoding: 'utf8',
    });
    assert.equal(help.status, 0, help.stderr);
    assert.match(help.stdout, /import/);
  } finally {
    rmSync(OUT, { recursive: true, force: true });
  }
});
