/**
 * The leases chaos run (`npm run chaos -- leases`): a real PostgreSQL (test/db/support/postgres.ts),
 * a cluster of manager processes (process-cluster.ts) with the database and two roles of short
 * ttls configured through the client, and for the run's length clients that get credentials,
 * renew, revoke by id and by prefix (leases-workload.ts) while the nemeses kill -9 the leader
 * (every other fault) and other managers, pause and partition them. Then it heals, waits for the
 * last leases to end plus the bound, and checks the history (leases.ts).
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { type Server, type Socket, connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { CofferClient } from '../../src/client/client.ts';
import { SeededRandom } from '../../src/util/prng.ts';
import { CREATE_SQL } from '../db/support/db-cluster.ts';
import { TestPostgres } from '../db/support/postgres.ts';
import { eventually } from '../processes/processes.ts';
import {
  LEASE_BOUND_MS,
  PENDING_GRACE_MS,
  checkLeases,
  formatLeaseVerdict,
  readLeaseHistory,
  writeLeaseHistory,
  type FaultEvent,
  type FinalEvent,
  type LeaseHistory,
  type LeaseRole,
  type LeaseRunInfo,
  type LeaseVerdict,
} from './leases.ts';
import { LeaseWorkload } from './leases-workload.ts';
import { injectFault, type NemesisName } from './nemesis.ts';
import type { NetworkNamespaces } from './netns.ts';
import { chaosNetwork } from './run.ts';
import { ProcessCluster } from './process-cluster.ts';

/** The faults a lease run may draw: kills, pauses, partitions (namespaces only), restarts of every manager. */
export const LEASE_NEMESES: readonly NemesisName[] = [
  'kill-leader',
  'kill-minority',
  'pause',
  'partition',
  'restart-all',
];

/** The run's database and roles: short ttls, so leases end (and are revoked) many times in a run. */
const DB = 'chaos';
const ROLES: readonly LeaseRole[] = [
  { role: 'app', defaultTtlS: 15, maxTtlS: 45 },
  { role: 'batch', defaultTtlS: 10, maxTtlS: 30 },
];
/**
 * The second role's users take this long to make (a `pg_sleep` at the end of its creation SQL, in
 * the creation's transaction): a database under load, or waiting on a lock, is slow to make a user,
 * and a revocation may meet a creation still under way.
 */
export const CREATE_DELAY_MS = 1000;
/** At the end: nothing left for this long (users and leases) ends the wait early. */
const QUIET_MS = 5000;
/** At the end: Leases.List empty this long while users remain: nobody will ever revoke them. */
const ORPHANED_MS = 15_000;

export interface LeasesChaosOptions {
  readonly managers: number;
  readonly durationS: number;
  readonly seed: number;
  readonly nemeses?: readonly NemesisName[];
  readonly clients?: number;
  /** How long the second role's creation takes (default CREATE_DELAY_MS; 0: as fast as the database is). */
  readonly createDelayMs?: number;
  readonly network?: 'auto' | 'loopback' | 'netns';
  /** Managers run the JavaScript `npm run build` made (dist/); else the sources through tsx. */
  readonly compiled?: boolean;
  /** Write the history here (leases.ts describes the format), pass or fail. */
  readonly historyFile?: string;
  /** Where a failed run's history and logs go (default chaos-runs/). */
  readonly outDir?: string;
  readonly log?: (line: string) => void;
}

export interface LeasesChaosSummary {
  readonly seed: number;
  readonly network: string;
  readonly history: LeaseHistory;
  readonly verdict: LeaseVerdict;
  readonly ok: boolean;
  readonly historyFile: string | null;
  /** How long the end waited for the last leases (ms), and what ended the wait. */
  readonly finalWait: { readonly ms: number; readonly why: string };
  readonly logsKept: string | null;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A TCP forwarder from an address the managers' namespaces reach (the bridge's, in the harness's
 * namespace) to PostgreSQL on 127.0.0.1, which pg_hba.conf admits: one connection out per
 * connection in, each closed with the other.
 */
async function forwarder(host: string, port: number): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((inbound) => {
    const outbound = connect(port, '127.0.0.1');
    for (const [a, b] of [
      [inbound, outbound],
      [outbound, inbound],
    ] as const) {
      sockets.add(a);
      a.on('error', () => b.destroy());
      a.on('close', () => {
        sockets.delete(a);
        b.destroy();
      });
      a.pipe(b);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, host, resolve);
  });
  return {
    port: (server.address() as { port: number }).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

export async function runLeasesChaos(options: LeasesChaosOptions): Promise<LeasesChaosSummary> {
  const log = options.log ?? (() => undefined);
  const random = new SeededRandom(options.seed);
  const root = mkdtempSync(join(tmpdir(), 'coffer-leases-'));
  // A directory of its own: as root the harness hands it to the postgres user.
  const pgDir = mkdtempSync(join(tmpdir(), 'coffer-pg-'));
  let network: NetworkNamespaces | null = null;
  let pg: TestPostgres | null = null;
  let forward: { port: number; close(): Promise<void> } | null = null;
  let cluster: ProcessCluster | null = null;
  let workload: LeaseWorkload | null = null;
  const cleanUp = async (): Promise<void> => {
    workload?.close();
    await cluster?.stop();
    await forward?.close();
    await pg?.stop();
    network?.destroy();
    rmSync(root, { recursive: true, force: true });
    rmSync(pgDir, { recursive: true, force: true });
  };
  const interrupted = (): void => {
    void cleanUp().then(() => process.exit(130));
  };
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    const chosen = chaosNetwork(options.network, options.managers, options.nemeses ?? LEASE_NEMESES, log);
    network = chosen.network;
    const { where } = chosen;
    const nemeses = [...chosen.nemeses];
    pg = await TestPostgres.start(pgDir);
    await pg.query('CREATE TABLE orders (id int PRIMARY KEY, item text)');
    let url = pg.adminUrl;
    if (network !== null) {
      // PostgreSQL listens on the harness's loopback; the managers reach it through the bridge.
      const bridge = network.host(0).replace(/\.\d+$/, '.1');
      forward = await forwarder(bridge, pg.port);
      url = url.replace(`@127.0.0.1:${pg.port}/`, `@${bridge}:${forward.port}/`);
    }
    log(
      `chaos leases: seed ${options.seed}, ${options.managers} managers (${options.compiled === true ? 'compiled' : 'sources through tsx'}) on ${where}, PostgreSQL ${pg.version} (users of ${ROLES[ROLES.length - 1]!.role} made in ${options.createDelayMs ?? CREATE_DELAY_MS} ms or more), ${options.durationS} s, nemeses ${nemeses.join(',')}`,
    );
    cluster = await ProcessCluster.start(root, options.managers, { network, compiled: options.compiled === true });
    const c = cluster;
    const admin = new CofferClient({
      ...c.adminPem(),
      addresses: c.managers.map((m) => m.address),
      deadlineMs: 15_000,
    });
    try {
      await eventually('the database configured', 60_000, () =>
        admin.configureDatabase(DB, url).catch(() => undefined),
      );
      const delayS = (options.createDelayMs ?? CREATE_DELAY_MS) / 1000;
      for (const role of ROLES)
        await admin.putDatabaseRole({
          db: DB,
          role: role.role,
          creationSql:
            role === ROLES[ROLES.length - 1] && delayS > 0 ? `${CREATE_SQL}\nSELECT pg_sleep(${delayS});` : CREATE_SQL,
          defaultTtlSeconds: role.defaultTtlS,
          maxTtlSeconds: role.maxTtlS,
        });
    } finally {
      admin.close();
    }
    const info: LeaseRunInfo = {
      f: 'run',
      seed: options.seed,
      managers: options.managers,
      durationS: options.durationS,
      db: DB,
      roles: ROLES,
      boundMs: LEASE_BOUND_MS,
      pendingGraceMs: PENDING_GRACE_MS,
      createDelayMs: options.createDelayMs ?? CREATE_DELAY_MS,
      startedAtMs: Date.now(),
    };
    const w = new LeaseWorkload({
      cluster: c,
      pg,
      db: DB,
      roles: ROLES,
      clients: options.clients ?? 3,
      random: random.fork(),
    });
    workload = w;
    w.start();
    const t = (ms: number) => ((ms - info.startedAtMs) / 1000).toFixed(1);
    const end = info.startedAtMs + options.durationS * 1000;
    const faults: FaultEvent[] = [];
    const others = nemeses.filter((n) => n !== 'kill-leader');
    while (Date.now() < end - 5000 && nemeses.length > 0) {
      await sleep(2000 + random.int(3000));
      // The leader is killed at every other fault: revoking is its duty, so its loss matters most.
      const nemesis =
        (faults.length % 2 === 0 && nemeses.includes('kill-leader')) || others.length === 0
          ? 'kill-leader'
          : others[random.int(others.length)]!;
      const start = Date.now();
      const fault = await injectFault(c, nemesis, random, { killedLeader: () => undefined });
      if (fault === null) continue;
      faults.push({ f: 'fault', nemesis, targets: fault.targets, start, end: Date.now(), detail: fault.detail });
      log(`  ${t(start)} s: ${fault.detail}`);
    }
    while (Date.now() < end) await sleep(200);
    await w.stopClients();
    // Heal: every link restored, every manager running, a leader.
    await network?.heal();
    for (const m of c.managers) {
      c.resume(m);
      c.restart(m);
    }
    log(
      `  ${t(Date.now())} s: clients stopped, healed; waiting for the last leases to end (bound ${LEASE_BOUND_MS / 1000} s)`,
    );
    await eventually('a leader after healing', 60_000, async () => ((await c.leader()) === null ? undefined : true));
    const finalWait = await waitForTheEnd(w, [...w.events, ...faults], info);
    log(`  ${t(Date.now())} s: ${finalWait.why} after ${(finalWait.ms / 1000).toFixed(1)} s`);
    const finalEvent = await finalState(w);
    await w.stopPolling();
    const history: LeaseHistory = { info, events: [...w.events, ...faults, finalEvent] };
    const verdict = checkLeases(history);
    const ok = verdict.violations.length === 0;
    let historyFile: string | null = null;
    let logsKept: string | null = null;
    if (options.historyFile !== undefined) historyFile = options.historyFile;
    else if (!ok || options.outDir !== undefined) {
      const dir = options.outDir ?? join(process.cwd(), 'chaos-runs');
      mkdirSync(dir, { recursive: true });
      historyFile = join(dir, `leases-seed-${options.seed}-${Date.now()}.jsonl`);
    }
    if (historyFile !== null) writeLeaseHistory(historyFile, history);
    if (!ok) {
      // The managers' and PostgreSQL's logs: where a violation's lease id and user can be followed.
      logsKept = join(
        options.outDir ?? join(process.cwd(), 'chaos-runs'),
        `leases-logs-seed-${options.seed}-${Date.now()}`,
      );
      mkdirSync(logsKept, { recursive: true });
      for (const file of readdirSync(root))
        if (file.endsWith('.log')) copyFileSync(join(root, file), join(logsKept, file));
      if (existsSync(pg.logPath)) copyFileSync(pg.logPath, join(logsKept, 'postgres.log'));
    }
    return { seed: options.seed, network: where, history, verdict, ok, historyFile, finalWait, logsKept };
  } finally {
    process.off('SIGINT', interrupted);
    process.off('SIGTERM', interrupted);
    await cleanUp();
  }
}

/**
 * Waits until nothing is left (no `v-` user, Leases.List empty, for QUIET_MS), or the list has
 * been empty for ORPHANED_MS while users remain (nothing will revoke them), or the last deadline
 * passed: every acknowledged lease's last possible end, every failed request's pending grace (or
 * ttl), each plus the bound.
 */
async function waitForTheEnd(
  w: LeaseWorkload,
  events: LeaseHistory['events'],
  info: LeaseRunInfo,
): Promise<{ ms: number; why: string }> {
  const maxTtlMs = Math.max(...info.roles.map((r) => r.maxTtlS)) * 1000;
  const defaultTtlMs = Math.max(...info.roles.map((r) => r.defaultTtlS)) * 1000;
  let deadlineMs = Date.now() + info.boundMs;
  for (const e of events) {
    if (e.f === 'issue' && e.outcome === 'ok') deadlineMs = Math.max(deadlineMs, (e.expiresAtMs ?? 0) + info.boundMs);
    if (e.f === 'issue' && e.outcome !== 'ok')
      deadlineMs = Math.max(deadlineMs, e.start + 1000 + Math.max(defaultTtlMs, info.pendingGraceMs) + info.boundMs);
    if (e.f === 'renew' && e.outcome === 'ok') deadlineMs = Math.max(deadlineMs, (e.expiresAtMs ?? 0) + info.boundMs);
    if (e.f === 'renew' && e.outcome !== 'ok') deadlineMs = Math.max(deadlineMs, e.end + maxTtlMs + info.boundMs);
  }
  const started = Date.now();
  let quietSince: number | null = null;
  let listEmptySince: number | null = null;
  while (Date.now() < deadlineMs) {
    const users = await w.users().catch(() => null);
    const leases = await w.leases().catch(() => null);
    const now = Date.now();
    if (leases !== null && leases.length === 0) listEmptySince ??= now;
    else if (leases !== null) listEmptySince = null;
    if (users !== null && users.length === 0 && leases !== null && leases.length === 0) quietSince ??= now;
    else quietSince = null;
    if (quietSince !== null && now - quietSince >= QUIET_MS)
      return { ms: now - started, why: 'no user and no lease left' };
    if (listEmptySince !== null && now - listEmptySince >= ORPHANED_MS && users !== null && users.length > 0)
      return {
        ms: now - started,
        why: `Leases.List empty for ${ORPHANED_MS / 1000} s while ${users.length} users remain`,
      };
    await sleep(1000);
  }
  return { ms: Date.now() - started, why: 'the last deadline passed' };
}

async function finalState(w: LeaseWorkload): Promise<FinalEvent> {
  const errors: string[] = [];
  const at = Date.now();
  const users = await w.users().catch((e: Error) => {
    errors.push(`pg_roles: ${e.message}`);
    return null;
  });
  const leases = await eventually('Leases.List at the end', 20_000, () => w.leases().catch(() => undefined)).catch(
    (e: Error) => {
      errors.push(`Leases.List: ${e.message}`);
      return null;
    },
  );
  return { f: 'final', at, users, leases, ...(errors.length === 0 ? {} : { error: errors.join('; ') }) };
}

export function formatLeasesSummary(s: LeasesChaosSummary): string {
  const faults = s.history.events.filter((e): e is FaultEvent => e.f === 'fault');
  return [
    `seed ${s.seed} (${s.network})`,
    `faults: ${faults.length} (${[...new Set(faults.map((f) => f.nemesis))].join(', ') || 'none'})`,
    `end: ${s.finalWait.why} after ${(s.finalWait.ms / 1000).toFixed(1)} s`,
    ...formatLeaseVerdict(s.verdict, s.history.info),
    ...(s.historyFile === null ? [] : [`history: ${s.historyFile} (npm run chaos -- --check FILE checks it again)`]),
    ...(s.logsKept === null ? [] : [`manager and PostgreSQL logs kept in ${s.logsKept}`]),
    s.ok ? 'verdict: leases kept' : 'verdict: LEASE VIOLATIONS',
  ].join('\n');
}

const HELP = `Usage: npm run chaos -- leases [options]

Starts a real PostgreSQL and a cluster of manager processes, configures a database and two roles of
short ttls (app 15 s, max 45 s; batch 10 s, max 30 s, its users slow to make), then clients get credentials, renew some,
revoke some by id, and an operator revokes by prefix, while the nemeses kill -9 the leader (every
other fault) and other managers, pause and partition them. It heals, waits for the last leases to
end plus the bound (${LEASE_BOUND_MS / 1000} s), and checks: (a) no user outlives its lease's end or
acknowledged revocation by more than the bound; (b) no user without a lease (a failed request's
user goes within the pending grace, ${PENDING_GRACE_MS / 1000} s, plus the bound); (c) no user and no
lease left at the end; (d) no acknowledged credential stops working before its acknowledged end.
Exits 0 when they hold, 1 on a violation, 2 on bad options.

Options:
  --duration S     seconds of workload and faults (default 60)
  --seed N         the seed of the workload and the faults (default: random, printed)
  --managers N     managers in the cluster (default 3)
  --nemesis LIST   comma-separated, from: ${LEASE_NEMESES.join(', ')} (default: all)
  --clients N      concurrent clients (default 3)
  --create-delay-ms MS
                   how long making a user of the batch role takes (a pg_sleep in its creation
                   SQL, inside the transaction: a loaded database; default ${CREATE_DELAY_MS}, 0 for none)
  --network MODE   auto (default), loopback or netns, as for the other runs (partitions need netns)
  --sources        run the managers from the sources through tsx (default: npm run build first)
  --history FILE   write the run's history to FILE as JSON lines (test/chaos/leases.ts), pass or fail
  --check FILE     check a lease history file again (no cluster)
  --help           print this and exit
`;

/** `npm run chaos -- leases ...`: returns the exit code. */
export async function leasesMain(args: readonly string[]): Promise<number> {
  const fail = (message: string): number => {
    console.error(`chaos leases: ${message}\n(npm run chaos -- leases --help lists the options)`);
    return 2;
  };
  let values: Record<string, string | boolean | undefined>;
  try {
    values = parseArgs({
      args: [...args],
      strict: true,
      options: {
        duration: { type: 'string', default: '60' },
        seed: { type: 'string' },
        managers: { type: 'string', default: '3' },
        nemesis: { type: 'string', default: LEASE_NEMESES.join(',') },
        clients: { type: 'string', default: '3' },
        'create-delay-ms': { type: 'string', default: String(CREATE_DELAY_MS) },
        network: { type: 'string', default: 'auto' },
        sources: { type: 'boolean', default: false },
        history: { type: 'string' },
        check: { type: 'string' },
        help: { type: 'boolean', default: false },
      },
    }).values;
  } catch (error) {
    return fail((error as Error).message);
  }
  if (values['help'] === true) {
    process.stdout.write(HELP);
    return 0;
  }
  if (typeof values['check'] === 'string') return checkFile(values['check']);
  const count = (name: string, least: number): number | null => {
    const n = Number(values[name]);
    return Number.isSafeInteger(n) && n >= least ? n : null;
  };
  const numbers = {
    duration: count('duration', 10),
    managers: count('managers', 1),
    clients: count('clients', 1),
    'create-delay-ms': count('create-delay-ms', 0),
  };
  const least: Record<string, number> = { duration: 10, 'create-delay-ms': 0 };
  for (const [name, n] of Object.entries(numbers))
    if (n === null) return fail(`--${name} takes a whole number of at least ${least[name] ?? 1}`);
  const seed = values['seed'] === undefined ? Math.floor(Math.random() * 1e9) : count('seed', 0);
  if (seed === null) return fail('--seed takes a whole number');
  const nemeses = String(values['nemesis'])
    .split(',')
    .filter((n) => n !== '');
  const unknown = nemeses.filter((n) => !LEASE_NEMESES.includes(n as NemesisName));
  if (unknown.length > 0) return fail(`unknown nemesis ${unknown.join(', ')}; known: ${LEASE_NEMESES.join(', ')}`);
  const network = String(values['network']);
  if (!['auto', 'loopback', 'netns'].includes(network)) return fail('--network takes auto, loopback or netns');
  const compiled = values['sources'] !== true;
  if (compiled) {
    const built = spawnSync('npm', ['run', '--silent', 'build'], { stdio: 'inherit' });
    if (built.status !== 0)
      return fail('npm run build failed: the managers would run stale code (--sources runs them through tsx)');
  }
  const summary = await runLeasesChaos({
    managers: numbers.managers!,
    durationS: numbers.duration!,
    clients: numbers.clients!,
    createDelayMs: numbers['create-delay-ms']!,
    seed,
    nemeses: nemeses as NemesisName[],
    network: network as 'auto' | 'loopback' | 'netns',
    compiled,
    ...(typeof values['history'] === 'string' ? { historyFile: values['history'] } : {}),
    log: (line) => console.log(line),
  });
  console.log(formatLeasesSummary(summary));
  return summary.ok ? 0 : 1;
}

/** Checks a lease history file again; the exit code. */
export function checkFile(file: string): number {
  const history = readLeaseHistory(file);
  const verdict = checkLeases(history);
  for (const line of formatLeaseVerdict(verdict, history.info)) console.log(line);
  console.log(
    `${file}: seed ${history.info.seed}, ${history.events.length} events: ${verdict.violations.length === 0 ? 'leases kept' : 'LEASE VIOLATIONS'}`,
  );
  return verdict.violations.length === 0 ? 0 : 1;
}
