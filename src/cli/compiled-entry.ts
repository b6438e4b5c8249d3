/**
 * The entry of the built command line, dist/run/coffer.mjs (`npm run build`; what the `coffer`
 * bin, the image and the tests run): loads the bundle beside it with its code cache
 * (code-cache.ts) and runs the command. `COFFER_BUILD_CODE_CACHE=1` is the build's own: it
 * loads a manager's modules, writes the cache and exits.
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadBundle, writeCodeCache } from './code-cache.ts';

const here = dirname(fileURLToPath(import.meta.url));
const BUNDLE = join(here, 'coffer-cli.cjs');
const CACHE = join(here, 'coffer-cli.code-cache');

const bundle = loadBundle(BUNDLE, CACHE);
const main = bundle.exports['main'];
const loadManagerModules = bundle.exports['loadManagerModules'];
if (typeof main !== 'function' || typeof loadManagerModules !== 'function')
  throw new Error(`${BUNDLE} is not the command line's bundle: run npm run build again`);
if (process.env['COFFER_BUILD_CODE_CACHE'] === '1') {
  await (loadManagerModules as () => Promise<void>)();
  const bytes = writeCodeCache(bundle, CACHE);
  process.stdout.write(`code cache: ${bytes} bytes in ${CACHE}\n`);
} else {
  await (main as (argv: readonly string[]) => Promise<void>)(process.argv);
}
