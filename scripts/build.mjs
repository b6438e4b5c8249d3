// npm run build [OUT]: what an installed coffer and the container image run, without tsx, in
// dist/ (or OUT, a directory beside src/: the build test's).
// 1. tsc compiles src/ to dist/ (type-checked, one module per source): what the CPU profile bench
//    runs, since it tells a request's parts apart by the file each function comes from.
// 2. esbuild bundles the command line, everything it imports from src/ and most packages into
//    one CommonJS module, dist/run/coffer-cli.cjs. Node's loader pays per module (resolving,
//    reading, compiling apart, and for a CommonJS package imported from ESM, a scan of its
//    exports): bundling our 140 modules saved a restart about 0.1 s, and the packages (some 200
//    modules more) another 0.1 s (docs/benchmarks.md, "Start: what a restart and a new member
//    spend before serving"). It sits at the same depth as the sources, so it finds proto/ as they do.
// 3. esbuild builds dist/run/coffer.mjs, the entry (src/cli/compiled-entry.ts): what the `coffer`
//    bin, the image and the tests run. It loads the bundle with a V8 code cache beside it.
// 4. The entry, run once with no node flags (as every start runs), loads a manager's modules and
//    writes that cache, dist/run/coffer-cli.code-cache (src/cli/code-cache.ts): a restart 0.28 s
//    shorter.
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { pathToFileURL } from 'node:url';
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
      const resolved = `__coffer_packageDir(${JSON.stringify(specifier)})`;
      return { contents: text.replaceAll('__dirname', resolved), loader: 'js', resolveDir: dirname(args.path) };
    });
  },
};

// The schemas a start needs (coffer.v1's, gRPC reflection's and the health protocol's), as the
// compiled sources parse them, compiled into the bundle as JSON (src/transport/proto.ts reads them
// back): a start then parses no .proto text.
const { parseSchemas } = await import(pathToFileURL(join(out, 'transport', 'proto.js')).href);
const schemasJson = JSON.stringify(
  Object.fromEntries(Object.entries(parseSchemas()).map(([n, root]) => [n, root.toJSON()])),
);

const run = join(out, 'run');
await build({
  // One module: `coffer health` (a container's health check, every few seconds) still runs only
  // its own command's code and packages, since esbuild runs a module imported with import() only
  // when it is (src/cli/run.ts).
  entryPoints: { 'coffer-cli': 'src/cli/run.ts' },
  outdir: run,
  outExtension: { '.js': '.cjs' },
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: LEFT_TO_NODE_MODULES,
  plugins: [packageDirname],
  // import.meta.url of our modules (the protos are found from it) is the bundle's; a package that
  // reads files beside itself gets its directory (packageDirname). Text in the banner is not
  // bundled: require.resolve there is Node's, at run time.
  define: {
    'import.meta.url': '__coffer_importMetaUrl',
    COFFER_SCHEMAS_JSON: JSON.stringify(schemasJson),
  },
  banner: {
    js: [
      "const __coffer_importMetaUrl = require('node:url').pathToFileURL(__filename).href;",
      "const __coffer_packageDir = (file) => require('node:path').dirname(require.resolve(file));",
    ].join(' '),
  },
  // Stack traces name the sources when node runs with --enable-source-maps (the entry then loads
  // the bundle with Node's own loader, which reads the map).
  sourcemap: 'linked',
  logLevel: 'warning',
});
await build({
  entryPoints: { coffer: 'src/cli/compiled-entry.ts' },
  outdir: run,
  outExtension: { '.js': '.mjs' },
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  logLevel: 'warning',
});
// The cache is checked against V8's flags: it is made with none, as the bin, `npm start` and the
// tests run node (any V8 flag also makes V8 refuse Node's own code cache for its modules).
const cached = spawnSync(process.execPath, [join(run, 'coffer.mjs')], {
  env: { ...process.env, COFFER_BUILD_CODE_CACHE: '1' },
  encoding: 'utf8',
});
if (cached.status !== 0 || !existsSync(join(run, 'coffer-cli.code-cache'))) {
  console.error(`the code cache was not made: ${cached.stdout}${cached.stderr}`);
  process.exit(1);
}
