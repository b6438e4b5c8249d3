/**
 * npm run bench -- [suite ...] [--full] [--secrets N]. Suites: cluster (Coffer beside etcd),
 * scale (Coffer beside etcd with many secrets; --secrets), storage, profile (where a request's CPU
 * goes, by part), floor (what bare Node parts do here). With no suite named, runs them all but
 * pair (this tree's build beside another commit's, both at once: `pair --base REF`).
 */
import { benchCluster } from './cluster.ts';
import { benchPair } from './pair.ts';
import { benchProfile } from './profile.ts';
import { benchFloor } from './replication-floor.ts';
import { benchScale } from './scale.ts';
import { benchStorage } from './storage.ts';

/** Flags that take a value (the next argument): it is not a suite name. */
const WITH_VALUE = new Set(['--secrets', '--base']);
const args = process.argv.slice(2);
const asked = args.filter((a, k) => !a.startsWith('--') && !WITH_VALUE.has(args[k - 1] ?? ''));
const SUITES: Record<string, () => Promise<void>> = {
  cluster: () => benchCluster(args),
  scale: () => benchScale(args),
  storage: benchStorage,
  profile: benchProfile,
  floor: benchFloor,
  pair: () => benchPair(args),
};
/** Suites run only when named (a comparison of two builds, not a figure of this one). */
const ONLY_WHEN_NAMED = new Set(['pair']);

for (const name of asked) {
  if (!(name in SUITES)) {
    console.error(`unknown benchmark suite "${name}"; known: ${Object.keys(SUITES).join(', ')}`);
    process.exit(2);
  }
}
const suites = asked.length === 0 ? Object.keys(SUITES).filter((name) => !ONLY_WHEN_NAMED.has(name)) : asked;
for (const name of suites) await SUITES[name]!();
