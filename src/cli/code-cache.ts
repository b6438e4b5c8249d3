/**
 * The bundled command line (`npm run build`: dist/run/coffer-cli.cjs) is loaded with a V8 code
 * cache beside it (coffer-cli.code-cache), made by the build: the bytecode of what a manager's
 * start compiles, so a start deserializes it instead of parsing and compiling some 2.5 MB of
 * JavaScript again. A follower's restart to its first linearizable read: median 1,097 ms without,
 * 814 ms with (docs/benchmarks.md, "Start: what a restart and a new member spend before
 * serving"). Node 20 has no compile cache of its own for modules (Node 22's
 * `module.enableCompileCache` is one).
 *
 * The cache is trusted as the code beside it is: it is made by the build and read from the
 * directory the bundle is in, never from a data or temporary directory (bytecode given to V8 is
 * code that runs). V8 checks the cache against its own version and flags (a cache made under
 * other flags is rejected, and the bundle is compiled as without one), but of the source only its
 * length: the cache file starts with the SHA-256 of the bundle it was made from, and one made from
 * other bytes is not used.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';
import vm from 'node:vm';

/** What became of the cache: used, rejected by V8 (another V8 or other flags), absent, or made from another bundle. */
export type CodeCacheState = 'used' | 'rejected' | 'absent' | 'stale';

export interface LoadedBundle {
  /** The bundle's exports (module.exports of the CommonJS bundle). */
  readonly exports: Readonly<Record<string, unknown>>;
  readonly cache: CodeCacheState;
  readonly script: vm.Script | null;
  /** The SHA-256 of the bundle's bytes (null when Node's own loader read it). */
  readonly digest: Buffer | null;
}

const DIGEST_BYTES = 32;

function digestOf(source: Buffer): Buffer {
  return createHash('sha256').update(source).digest();
}

/**
 * Runs the CommonJS bundle at `bundlePath` as Node's loader would (its exports, a `require` from
 * its directory, its file and directory names) and returns its exports. With `--enable-source-maps`
 * it is loaded by Node's own loader instead, without the cache, so stack traces name the sources.
 */
export function loadBundle(bundlePath: string, cachePath: string): LoadedBundle {
  const require = createRequire(bundlePath);
  if (process.execArgv.includes('--enable-source-maps'))
    return { exports: require(bundlePath) as Record<string, unknown>, cache: 'absent', script: null, digest: null };
  const source = readFileSync(bundlePath);
  const digest = digestOf(source);
  let cachedData: Buffer | undefined;
  let cache: CodeCacheState = 'absent';
  if (existsSync(cachePath)) {
    const file = readFileSync(cachePath);
    if (file.length > DIGEST_BYTES && file.subarray(0, DIGEST_BYTES).equals(digest))
      cachedData = file.subarray(DIGEST_BYTES);
    else cache = 'stale';
  }
  // Node's own wrapper for a CommonJS module, on the bundle's first line (its line numbers hold).
  const script = new vm.Script(
    `(function (exports, require, module, __filename, __dirname) {${source.toString('utf8')}\n})`,
    {
      filename: bundlePath,
      ...(cachedData === undefined ? {} : { cachedData }),
    },
  );
  if (cachedData !== undefined) cache = script.cachedDataRejected === true ? 'rejected' : 'used';
  const module = { exports: {} as Record<string, unknown> };
  const run = script.runInThisContext() as (
    exports: unknown,
    require: NodeJS.Require,
    module: unknown,
    filename: string,
    dirname: string,
  ) => void;
  run.call(module.exports, module.exports, require, module, bundlePath, dirname(bundlePath));
  return { exports: module.exports, cache, script, digest };
}

/** Writes the code cache of a loaded bundle (what it has compiled so far), behind the bundle's digest. */
export function writeCodeCache(bundle: LoadedBundle, cachePath: string): number {
  if (bundle.script === null || bundle.digest === null)
    throw new Error('the bundle was loaded by Node (--enable-source-maps): no cache to write');
  const data = bundle.script.createCachedData();
  const partial = `${cachePath}.partial`;
  writeFileSync(partial, Buffer.concat([bundle.digest, data]));
  renameSync(partial, cachePath);
  return data.length;
}
