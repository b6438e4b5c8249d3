/**
 * npm run bench -- [suite ...] [--full]. Suites: cluster (Coffer beside etcd), storage. With no
 * suite named, runs them all.
 */
import { benchCluster } from './cluster.ts';
import { benchStorage } from './storage.ts';

const flags = process.argv.slice(2).filter((a) => a.startsWith('--'));
const SUITES: Record<string, () => Promise<void>> = { cluster: () => benchCluster(flags), storage: benchStorage };

const asked = process.argv.slice(2).filter((a) => !a.startsWith('--'));
for (const name of asked) {
  if (!(name in SUITES)) {
    console.error(`unknown benchmark suite "${name}"; known: ${Object.keys(SUITES).join(', ')}`);
    process.exit(2);
  }
}
for (const name of asked.length === 0 ? Object.keys(SUITES) : asked) await SUITES[name]!();
