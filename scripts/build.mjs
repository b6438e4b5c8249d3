// npm run build [OUT]: what an installed coffer and the container image run, without tsx, in
// dist/ (or OUT, a directory beside src/: the build test's).
// 1. tsc compiles src/ to dist/ (type-checked, one module per source): what the CPU profile bench
//    runs, since it tells a request's parts apart by the file each function comes from.
// 2. esbuild bundles the CLI and everything it imports from src/ into one module,
//    dist/run/coffer.mjs (and the chunks it loads when needed), with the packages left to node_modules: what the `coffer` bin, the image
//    and the tests run. Loading some 140 modules one by one cost every manager start and restart
//    about 0.1 s more than loading one (docs/design.md, "Where a restart and a catch-up spend
//    their time"). It sits at the same depth as the sources, so it finds proto/ as they do.
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';

const out = process.argv[2] ?? 'dist';
rmSync(out, { recursive: true, force: true });
const tsc = spawnSync(
  process.execPath,
  ['node_modules/typescript/bin/tsc', '-p', 'tsconfig.build.json', '--outDir', out],
  { stdio: 'inherit' },
);
if (tsc.status !== 0) {
  console.error('tsc failed: nothing is bundled from sources that do not compile');
  process.exit(1);
}
await build({
  entryPoints: { coffer: 'src/cli/main.ts' },
  // Split at the CLI's dynamic imports: `coffer health` (a container's health check, every few
  // seconds) still loads only its own command's code and packages, and a joining manager starts
  // its RSA key before the commands' packages load (src/cli/main.ts).
  splitting: true,
  outdir: join(out, 'run'),
  chunkNames: 'chunk-[hash]',
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  packages: 'external',
  // Stack traces name the sources when node runs with --enable-source-maps.
  sourcemap: 'linked',
  logLevel: 'warning',
});
