// npm run chaos -- --help
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { checkHistory } from './linearizability.ts';
import { readHistoryFile } from './history-file.ts';
import { checkExpiry } from './expiry.ts';
import { isLeaseHistory } from './leases.ts';
import { checkFile as checkLeaseFile, leasesMain } from './leases-run.ts';
import { NEMESES, formatSummary, runChaos, type NemesisName } from './run.ts';
import { soak } from './soak.ts';

const HELP = `Usage: npm run chaos -- [options]
       npm run chaos -- leases [options]   (dynamic database credentials under faults: leases --help)

Starts a cluster of manager processes, runs a recorded workload (puts, compare-and-sets, linearizable
and stale reads from several clients on a few hot keys and a growing key set) while nemeses inject
faults, heals, then checks: linearizability of every key, stale reads' weaker promise, no
acknowledged write lost, every manager converged to one state digest. Prints failover times and
availability per fault. Exits 0 when every check passes, 1 on an anomaly, 2 on bad options.

Options:
  --managers N         managers in the cluster (default 3; 5 for a five-manager run)
  --duration S         seconds of workload and faults (default 60)
  --nemesis LIST       comma-separated, from: ${NEMESES.join(', ')}
                       (default: all of them)
                       kill-leader, kill-minority (kill -9, restarted later), pause (SIGSTOP, SIGCONT),
                       restart-all, transfer-leader, membership (demote/promote, replace a member),
                       rotate-kill (a key operation, a kill -9 inside it), snapshot-kill (a kill -9
                       inside a snapshot's transfer or install), clock-skew (one manager's wall
                       clock minutes off, with libfaketime), disk-full (as root: one manager's
                       data directory, a tmpfs, filled, then freed);
                       network namespaces only: partition (blackhole routes), and through a
                       fault-injecting proxy on every link: delay (with jitter), bandwidth (a limit
                       per direction), stall (one direction's bytes held, then released), reset
                       (connections cut mid-stream)
  --seed N             the seed of the workload and the faults (default: random, printed)
  --clients N          concurrent clients (default 5)
  --network MODE       auto (default): a network namespace per manager where this process may make
                       them (root), else loopback; loopback; netns (refuse to run without them).
                       Partitions need namespaces.
  --sources            run the managers from the sources through tsx (default: \`npm run build\`
                       first, then the compiled JavaScript, as installed managers run: start times,
                       and so availability after restarts, are a production manager's)
  --history FILE       write the run's history to FILE as JSON lines, pass or fail (the format is
                       described in test/chaos/history-file.ts); a failed run keeps its history in
                       chaos-runs/ in any case
  --state-dump DIR     write each manager's final state (applied index, state digest, every key's
                       version and value as it holds them) to DIR/<manager>.json before cleanup
  --check FILE         check a history file again (no cluster): linearizability and stale reads
                       (a lease run's history: its lease rules)
  --soak MINUTES       run seeds back to back (from --seed, or a random one, counting up), each of
                       --duration seconds, until MINUTES of runs are done; every run's history goes
                       to chaos-results/soak-<time>/, and a ledger line per run (seed, minutes,
                       operations, anomalies, lost writes, expiry and fault problems, availability) to chaos-results/ledger.jsonl
  --help               print this and exit
`;

function fail(message: string): never {
  console.error(`chaos: ${message}\n(npm run chaos -- --help lists the options)`);
  process.exit(2);
}

// The leases run has options of its own (leases-run.ts).
if (process.argv[2] === 'leases') process.exit(await leasesMain(process.argv.slice(3)));

let parsed: ReturnType<typeof parse>;
function parse() {
  return parseArgs({
    strict: true,
    options: {
      managers: { type: 'string', default: '3' },
      duration: { type: 'string', default: '60' },
      nemesis: { type: 'string', default: NEMESES.join(',') },
      seed: { type: 'string' },
      clients: { type: 'string', default: '5' },
      network: { type: 'string', default: 'auto' },
      history: { type: 'string' },
      'state-dump': { type: 'string' },
      check: { type: 'string' },
      soak: { type: 'string' },
      sources: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
}
try {
  parsed = parse();
} catch (error) {
  fail((error as Error).message);
}
const { values } = parsed;
if (values.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
if (values.check !== undefined && isLeaseHistory(readFileSync(values.check, 'utf8')))
  process.exit(checkLeaseFile(values.check));
if (values.check !== undefined) {
  const { ops, faults, probes } = readHistoryFile(values.check);
  const verdict = checkHistory(ops);
  const expiryProblems = [
    ...checkExpiry(probes),
    ...faults.flatMap((f) => (f.problems ?? []).map((p) => `during ${f.nemesis}: ${p}`)),
  ];
  for (const problem of expiryProblems) console.log(`problem: ${problem}`);
  for (const key of verdict.keys)
    if (!key.linearizable)
      console.log(
        `key ${key.key}: ${key.undecided === true ? 'UNDECIDED' : 'NOT linearizable'}: ${key.explanation ?? ''}`,
      );
  for (const anomaly of verdict.staleAnomalies) console.log(`stale read anomaly: ${anomaly}`);
  console.log(
    `${values.check}: ${ops.length} operations on ${verdict.keys.length} keys, ${faults.length} faults, ${probes.length} expiry probes: ${verdict.linearizable && expiryProblems.length === 0 ? 'linearizable, expiry kept, no problem found during faults' : 'ANOMALY'}`,
  );
  process.exit(verdict.linearizable && expiryProblems.length === 0 ? 0 : 1);
}
const count = (name: string, text: string, least: number): number => {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < least) fail(`--${name} takes a whole number of at least ${least}, not "${text}"`);
  return n;
};
const nemeses = values.nemesis.split(',').filter((n) => n !== '');
const unknown = nemeses.filter((n) => !(NEMESES as readonly string[]).includes(n));
if (unknown.length > 0) fail(`unknown nemesis ${unknown.join(', ')}; known: ${NEMESES.join(', ')}`);
if (!['auto', 'loopback', 'netns'].includes(values.network)) fail('--network takes auto, loopback or netns');
const compiled = !values.sources;
if (compiled && values.check === undefined) {
  const built = spawnSync('npm', ['run', '--silent', 'build'], { stdio: 'inherit' });
  if (built.status !== 0)
    fail('npm run build failed: the managers would run stale code (--sources runs them through tsx)');
}
const seed = values.seed === undefined ? Math.floor(Math.random() * 1e9) : count('seed', values.seed, 0);
if (values.soak !== undefined) {
  const ok = await soak({
    minutes: count('soak', values.soak, 1),
    firstSeed: seed,
    managers: count('managers', values.managers, 1),
    durationS: count('duration', values.duration, 1),
    nemeses: nemeses as NemesisName[],
    clients: count('clients', values.clients, 1),
    network: values.network as 'auto' | 'loopback' | 'netns',
    compiled,
  });
  process.exit(ok ? 0 : 1);
}
const summary = await runChaos({
  managers: count('managers', values.managers, 1),
  durationS: count('duration', values.duration, 1),
  nemeses: nemeses as NemesisName[],
  seed,
  clients: count('clients', values.clients, 1),
  network: values.network as 'auto' | 'loopback' | 'netns',
  compiled,
  ...(values.history === undefined ? {} : { historyFile: values.history }),
  ...(values['state-dump'] === undefined ? {} : { stateDumpDir: values['state-dump'] }),
  log: (line) => console.log(line),
});
console.log(formatSummary(summary));
process.exit(summary.ok ? 0 : 1);
