// npm run build [OUT]: what an installed coffer and the container image run, without tsx, in
// dist/ (or OUT, a directory beside src/: the build test's).
// 1. tsc compiles src/ to dist/ (type-checked, one module per source): what the CPU profile bench
//    runs, since it tells a request's parts apart by the file each function comes from.
// 2. esbuild bundles the CLI, everything it imports from src/ and most packages into one module,
//    dist/run/coffer.mjs (and the chunks it loads when needed): what the `coffer` bin, the image
//    and the tests run. Node's loader pays per module (resolving, reading, compiling apart, and
//    for a CommonJS package imported from ESM, a scan of its exports): bundling our 140 modules
//    saved a restart about 0.1 s, and the packages (some 200 modules more) another 0.1 s
//    (docs/design.md, "Where a restart and a catch-up spend their time"). It sits at the same
//    depth as the sources, so it finds proto/ as they do.
import { spawnSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
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
/**
 * Packages left to node_modules, each for a reason: a native addon found beside the package's own
 * files (classic-level's LevelDB; msgpackr's native decoder, msgpackr-extract, which a bundled
 * msgpackr would silently go without), worker threads started from files by path (pino's
 * transports: pino, thread-stream, pino-pretty), optional packages that may not be installed (pg
 * and pg-native), and node-forge, loaded by `require` when a certificate is first made.
 */
const LEFT_TO_NODE_MODULES = [
  'classic-level',
  'msgpackr',
  'pino',
  'pino-pretty',
  'thread-stream',
  'pg',
  'pg-native',
  'node-forge',
];

/**
 * Packages that read their own .proto files by `__dirname` (the health service's, reflection's,
 * grpc-js's channelz and ORCA): in a bundle that would name dist/run, so their `__dirname` becomes
 * the directory Node resolves the file to at run time, wherever node_modules is (none of the three
 * limits its subpaths with "exports"). A package added to the bundle that reads files beside
 * itself belongs here, or in LEFT_TO_NODE_MODULES: `npm test` runs managers from the bundle,
 * and its metrics test asks the reflection service.
 */
const READ_FILES_BESIDE_THEM =
  /[\\/]node_modules[\\/](grpc-health-check|@grpc[\\/]reflection|@grpc[\\/]grpc-js)[\\/].*\.js$/;
const packageDirname = {
  name: 'package-dirname',
  setup(bundler) {
    bundler.onLoad({ filter: READ_FILES_BESIDE_THEM }, async (args) => {
      const text = await readFile(args.path, 'utf8');
      if (!text.includes('__dirname')) return undefined;
      const specifier = relative(join(process.cwd(), 'node_modules'), args.path).split('\\').join('/');
      const resolved = `require('node:path').dirname(require.resolve(${JSON.stringify(specifier)}))`;
      return { contents: text.replaceAll('__dirname', resolved), loader: 'js', resolveDir: dirname(args.path) };
    });
  },
};

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
  external: LEFT_TO_NODE_MODULES,
  plugins: [packageDirname],
  // The packages bundled are mostly CommonJS: they get a `require` (for Node's own modules and the
  // packages left out), and `__filename` and `__dirname` of the chunk.
  banner: {
    js: [
      "import { createRequire as __coffer_createRequire } from 'node:module';",
      "import { fileURLToPath as __coffer_fileURLToPath } from 'node:url';",
      "import { dirname as __coffer_dirname } from 'node:path';",
      'const require = __coffer_createRequire(import.meta.url);',
      'const __filename = __coffer_fileURLToPath(import.meta.url);',
      'const __dirname = __coffer_dirname(__filename);',
    ].join(' '),
  },
  // Stack traces name the sources when node runs with --enable-source-maps.
  sourcemap: 'linked',
  logLevel: 'warning',
});
