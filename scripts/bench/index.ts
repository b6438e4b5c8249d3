/**
 * npm run bench -- [suite ...]. Suites: storage. (The cluster-against-etcd suite comes with the
 * benchmark issue.) With no suite named, runs them all.
 */
import { benchStorage } from './storage.ts';

const SUITES: Record<string, () => Promise<void>> = { storage: benchStorage };

const asked = process.argv.slice(2);
for (const name of asked) {
  if (!(name in SUITES)) {
    console.error(`unknown benchmark suite "${name}"; known: ${Object.keys(SUITES).join(', ')}`);
    process.exit(2);
  }
}
for (const name of asked.length === 0 ? Object.keys(SUITES) : asked) await SUITES[name]!();
