/**
 * npm run bench -- [suite ...] [--full] [--secrets N]. Suites: cluster (Coffer beside etcd),
 * scale (Coffer beside etcd with many secrets; --secrets), storage, profile (where a request's CPU
 * goes, by part), floor (what bare Node parts do here). With no suite named, runs them all.
 */
import { benchCluster } from './cluster.ts';
import { benchProfile } from './profile.ts';
import { benchFloor } from './replication-floor.ts';
import { benchScale } from './scale.ts';
import { benchStorage } from './storage.ts';

/** Flags that take a value (the next argument): it is not a suite name. */
const WITH_VALUE = new Set(['--secrets']);
const args = process.argv.slice(2);
const asked = args.filter((a, k) => !a.startsWith('--') && !WITH_VALUE.has(args[k - 1] ?? ''));
const SUITES: Record<string, () => Promise<void>> = {
  cluster: () => benchCluster(args),
  scale: () => benchScale(args),
  storage: benchStorage,
  profile: benchProfile,
  floor: benchFloor,
};

for (const name of asked) {
  if (!(name in SUITES)) {
    console.error(`unknown benchmark suite "${name}"; known: ${Object.keys(SUITES).join(', ')}`);
    process.exit(2);
  }
}
for (const name of asked.length === 0 ? Object.keys(SUITES) : asked) await SUITES[name]!();
