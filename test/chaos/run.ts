import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SeededRandom } from '../../src/util/prng.ts';
import { eventually } from '../processes/processes.ts';
import { checkHistory, describe, type HistoryVerdict, type Operation } from './linearizability.ts';
import { NetworkNamespaces } from './netns.ts';
import { LINK_NEMESES, NETWORK_NEMESES, injectFault, type FaultRecord, type NemesisName } from './nemesis.ts';
import { LinkProxies } from './link-proxy.ts';
import { ManagerClocks, fakeTimeLibrary } from './clocks.ts';
import { ManagerDisks, smallDisksUnavailableBecause } from './disks.ts';
import { availability, formatAvailability, type KindAvailability } from './availability.ts';
import { writeHistoryFile } from './history-file.ts';
import { checkExpiry } from './expiry.ts';
import { PORT_IN_NAMESPACE, ProcessCluster } from './process-cluster.ts';
import { Workload } from './workload.ts';

export { NEMESES, type NemesisName } from './nemesis.ts';

export interface ChaosOptions {
  readonly managers: number;
  readonly durationS: number;
  readonly nemeses: readonly NemesisName[];
  readonly seed: number;
  readonly clients?: number;
  readonly keys?: number;
  /** Search steps per key before the checker gives up (undecided). */
  readonly checkStepsMax?: number;
  /** Where the history goes (kept on failure). */
  readonly outDir?: string;
  /** Write the history here as JSON lines (history-file.ts), pass or fail. */
  readonly historyFile?: string;
  /** Write each manager's final state (digest, applied index, every key's version and value) here, before cleanup. */
  readonly stateDumpDir?: string;
  readonly log?: (line: string) => void;
  /** auto (default): a network namespace per manager where this process may make them, else loopback. */
  readonly network?: 'auto' | 'loopback' | 'netns';
  /** Managers run the JavaScript `npm run build` made (dist/), as installed ones do; else the sources through tsx. */
  readonly compiled?: boolean;
}

export interface ChaosSummary {
  readonly seed: number;
  readonly network: string;
  readonly operations: { readonly ok: number; readonly fail: number; readonly info: number };
  readonly faults: readonly FaultRecord[];
  readonly failoversMs: readonly number[];
  readonly converged: boolean;
  readonly lostWrites: readonly string[];
  /** Expiry probes (expiry.ts): how many, and what broke the TTL promise. */
  readonly expiry: { readonly probes: number; readonly problems: readonly string[] };
  readonly verdict: HistoryVerdict;
  readonly ok: boolean;
  readonly historyFile: string | null;
  /** Availability per nemesis kind (availability.ts). */
  readonly availability: readonly KindAvailability[];
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The network of a run: a namespace per manager when asked for or available, else loopback (an
 * error if namespaces were asked for and are not there); without namespaces, the nemeses that
 * need them are left out, and `log` says so. `where` says which, for the summary.
 */
export function chaosNetwork(
  mode: 'auto' | 'loopback' | 'netns' | undefined,
  managers: number,
  nemeses: readonly NemesisName[],
  log: (line: string) => void,
): { network: NetworkNamespaces | null; where: string; nemeses: readonly NemesisName[] } {
  const why = mode === 'loopback' ? 'asked for' : NetworkNamespaces.unavailableBecause();
  if (why !== null && mode === 'netns') throw new Error(`network namespaces are not available: ${why}`);
  const network = why === null ? NetworkNamespaces.create(managers) : null;
  const where =
    network === null
      ? `loopback (no network namespaces: ${why})`
      : `network namespaces, one per manager, bridged on ${network.host(0).replace(/\.\d+$/, '.0/24')}`;
  if (network !== null || !nemeses.some((n) => NETWORK_NEMESES.includes(n))) return { network, where, nemeses };
  log(
    `chaos: ${nemeses.filter((n) => NETWORK_NEMESES.includes(n)).join(', ')} need network namespaces; left out of this run`,
  );
  return { network, where, nemeses: nemeses.filter((n) => !NETWORK_NEMESES.includes(n)) };
}

/**
 * One chaos run: a cluster of manager processes, a recorded workload, faults from the chosen
 * nemeses, then healing and the checks: linearizability (and the stale-read promise), no
 * acknowledged write lost, every manager converged to the same state, failover times.
 */
export async function runChaos(options: ChaosOptions): Promise<ChaosSummary> {
  const log = options.log ?? (() => undefined);
  const random = new SeededRandom(options.seed);
  const root = mkdtempSync(join(tmpdir(), 'coffer-chaos-'));
  // The managers log at debug unless told otherwise: their streams' and links' events are what a
  // failed run's kept logs and printed tails have to tell (a stream one way dead, a link waiting).
  const logLevelBefore = process.env['COFFER_LOG_LEVEL'];
  process.env['COFFER_LOG_LEVEL'] ??= 'debug';
  let cluster: ProcessCluster | null = null;
  let network: NetworkNamespaces | null = null;
  let links: LinkProxies | null = null;
  let clocks: ManagerClocks | null = null;
  let disks: ManagerDisks | null = null;
  const cleanUp = async (): Promise<void> => {
    if (logLevelBefore === undefined) delete process.env['COFFER_LOG_LEVEL'];
    await cluster?.stop();
    await links?.close();
    disks?.unmountAll();
    network?.destroy();
    rmSync(root, { recursive: true, force: true });
  };
  const interrupted = (): void => {
    void cleanUp().then(() => process.exit(130));
  };
  try {
    const chosen = chaosNetwork(options.network, options.managers, options.nemeses, log);
    network = chosen.network;
    const { where } = chosen;
    let nemeses = chosen.nemeses;
    const noProxies = NetworkNamespaces.linkProxiesUnavailableBecause();
    if (network !== null && noProxies !== null && nemeses.some((n) => LINK_NEMESES.includes(n))) {
      log(`chaos: ${noProxies}; ${LINK_NEMESES.join(', ')} left out of this run`);
      nemeses = nemeses.filter((n) => !LINK_NEMESES.includes(n));
    }
    const fakeTime = fakeTimeLibrary();
    if (fakeTime === null && nemeses.includes('clock-skew')) {
      log('chaos: clock-skew needs libfaketime (Debian package faketime); left out of this run');
      nemeses = nemeses.filter((n) => n !== 'clock-skew');
    }
    if (fakeTime !== null && nemeses.includes('clock-skew')) clocks = new ManagerClocks(root, fakeTime);
    const noDisks = smallDisksUnavailableBecause();
    if (noDisks !== null && nemeses.includes('disk-full')) {
      log(`chaos: disk-full needs a tmpfs per manager: ${noDisks}; left out of this run`);
      nemeses = nemeses.filter((n) => n !== 'disk-full');
    }
    if (noDisks === null && nemeses.includes('disk-full')) disks = new ManagerDisks();
    // Link faults go through a proxy on every link between managers, in place before they start.
    if (network !== null && nemeses.some((n) => LINK_NEMESES.includes(n))) {
      const net = network;
      net.proxyLinks(PORT_IN_NAMESPACE);
      links = await LinkProxies.start({
        size: options.managers,
        port: PORT_IN_NAMESPACE,
        managerHost: (k) => net.host(k),
        linkAddress: (from, to) => net.linkAddress(from, to),
        random: random.fork(),
      });
    }
    log(
      `chaos: seed ${options.seed}, ${options.managers} managers (${options.compiled === true ? 'compiled' : 'sources through tsx'}) on ${where}${links === null ? '' : ', a fault-injecting proxy on every link'}${clocks === null ? '' : ', wall clocks skewable (libfaketime)'}${disks === null ? '' : ', data directories on 256 MiB tmpfs'}, ${options.durationS} s, nemeses ${nemeses.join(',')}`,
    );
    process.once('SIGINT', interrupted);
    process.once('SIGTERM', interrupted);
    cluster = await ProcessCluster.start(root, options.managers, {
      network,
      compiled: options.compiled === true,
      clocks,
      disks,
    });
    const c = cluster;
    c.links = links;
    const workload = new Workload(c, { clients: options.clients ?? 5, keys: options.keys ?? 3, random: random.fork() });
    workload.start();
    const faults: FaultRecord[] = [];
    const kills: number[] = [];
    const end = workload.now() + options.durationS * 1000;
    while (workload.now() < end - 5000 && nemeses.length > 0) {
      await sleep(2000 + random.int(3000));
      const nemesis = nemeses[random.int(nemeses.length)]!;
      const at = workload.now();
      const fault = await injectFault(c, nemesis, random, { killedLeader: () => kills.push(workload.now()) });
      if (fault === null) continue;
      faults.push({
        atMs: at,
        endMs: workload.now(),
        nemesis,
        targets: fault.targets,
        detail: fault.detail,
        ...(fault.problems === undefined || fault.problems.length === 0 ? {} : { problems: fault.problems }),
      });
      for (const problem of fault.problems ?? []) log(`    PROBLEM: ${problem}`);
      log(`  ${(at / 1000).toFixed(1)} s: ${fault.detail}`);
    }
    while (workload.now() < end) await sleep(200);
    const runEndMs = workload.now();
    // Heal: every link restored, every manager running and answering.
    await network?.heal();
    links?.clear();
    clocks?.reset();
    for (const m of c.managers) {
      c.resume(m);
      c.restart(m);
    }
    await workload.stop();
    log(`  healing; ${workload.history.length} operations recorded`);
    // Convergence: one leader, every manager at the same applied index with the same digest.
    let converged = false;
    try {
      await eventually('every manager to converge', 60_000, async () => {
        const statuses = await Promise.all(c.managers.map((m) => c.status(m, { withStateDigest: true })));
        const applied = new Set(statuses.map((s) => s.appliedIndex));
        const digests = new Set(statuses.map((s) => s.stateDigest));
        return statuses.some((s) => s.role === 'leader') && applied.size === 1 && digests.size === 1 ? true : undefined;
      });
      converged = true;
    } catch (error) {
      log(`  not converged: ${(error as Error).message}`);
      // What each manager says, and the end of its log, in the run's output (CI keeps nothing else).
      for (const m of c.managers) {
        const status = await c.status(m, { withStateDigest: true }).then(
          (s) =>
            `${s.role}, term ${s.term}, leader ${s.leaderId}, commit ${s.commitIndex}, applied ${s.appliedIndex}, log ${s.firstIndex}..${s.lastIndex}, digest ${s.stateDigest.slice(0, 12)}` +
            (s.role === 'leader'
              ? `; members (its view): ${s.members.map((p) => `${p.nodeId} ${p.role} match ${p.matchIndex}${p.healthy ? '' : ' unhealthy'}`).join(', ')}`
              : ''),
          (e: Error) => `no status (${e.message.slice(0, 80)})`,
        );
        log(`  ${m.name}: ${status}`);
        const tail = c.procs
          .log(m.name)
          .split('\n')
          .filter((line) => line !== '' && !line.includes('"event":"rpc"') && !line.includes('"event":"propose"'))
          .slice(-16);
        for (const line of tail) log(`    ${line.slice(0, 300)}`);
      }
      if (options.outDir !== undefined || options.historyFile === undefined) {
        const keep = join(
          options.outDir ?? join(process.cwd(), 'chaos-runs'),
          `logs-seed-${options.seed}-${Date.now()}`,
        );
        mkdirSync(keep, { recursive: true });
        for (const file of readdirSync(root))
          if (file.endsWith('.log')) copyFileSync(join(root, file), join(keep, file));
        log(`  manager logs kept in ${keep}`);
      }
    }
    // Final linearizable reads of every key, part of the history.
    const final: Operation[] = [];
    const reader = c.client(c.managers[0]!, 5000);
    let id = 1_000_000_000;
    for (const key of new Set(workload.history.map((op) => op.key))) {
      const invokeMs = workload.now();
      const reply = await eventually(`a final read of ${key}`, 30_000, async () =>
        reader
          .get(key)
          .catch((e: Error) =>
            /does not exist/.test(e.message) ? { version: 0, value: null as Buffer | null } : Promise.reject(e),
          ),
      );
      final.push({
        id: id++,
        process: -1,
        key,
        kind: 'get',
        invokeMs,
        completeMs: workload.now(),
        outcome: 'ok',
        version: reply.version,
        readValue: reply.value === null ? null : reply.value.toString(),
      });
    }
    reader.close();
    const history = [...workload.history, ...final];
    if (options.stateDumpDir !== undefined)
      await dumpStates(
        c,
        options.stateDumpDir,
        final.map((op) => op.key),
      );
    const verdict = checkHistory(history, options.checkStepsMax);
    // No acknowledged write lost: each key's final version covers every acknowledged version.
    const lostWrites: string[] = [];
    for (const read of final) {
      const acked = workload.history.filter((op) => op.key === read.key && op.kind !== 'get' && op.outcome === 'ok');
      const top = Math.max(0, ...acked.map((op) => op.version ?? 0));
      if ((read.version ?? 0) < top)
        lostWrites.push(`${read.key}: acknowledged up to v${top}, final read v${read.version}`);
    }
    const failoversMs = kills.map((k) => {
      const first = workload.history
        .filter((op) => op.kind !== 'get' && op.outcome === 'ok' && op.invokeMs >= k)
        .reduce((min, op) => Math.min(min, op.completeMs), Infinity);
      return first - k;
    });
    const count = (outcome: Operation['outcome']) => workload.history.filter((op) => op.outcome === outcome).length;
    const expiryProblems = checkExpiry(workload.expiryProbes);
    const faultProblems = faults.flatMap((f) => f.problems ?? []);
    const ok =
      verdict.linearizable &&
      converged &&
      lostWrites.length === 0 &&
      expiryProblems.length === 0 &&
      faultProblems.length === 0;
    let historyFile: string | null = null;
    if (options.historyFile !== undefined) {
      writeHistoryFile(options.historyFile, history, faults, workload.expiryProbes);
      historyFile = options.historyFile;
    } else if (!ok || options.outDir !== undefined) {
      const dir = options.outDir ?? join(process.cwd(), 'chaos-runs');
      mkdirSync(dir, { recursive: true });
      historyFile = join(dir, `history-seed-${options.seed}-${Date.now()}.jsonl`);
      writeHistoryFile(historyFile, history, faults, workload.expiryProbes);
    }
    return {
      seed: options.seed,
      network: where,
      operations: { ok: count('ok') + final.length, fail: count('fail'), info: count('info') },
      faults,
      failoversMs,
      converged,
      lostWrites,
      expiry: { probes: workload.expiryProbes.length, problems: expiryProblems },
      verdict,
      ok,
      historyFile,
      availability: availability(workload.history, faults, runEndMs).perKind,
    };
  } finally {
    process.off('SIGINT', interrupted);
    process.off('SIGTERM', interrupted);
    await cleanUp();
  }
}

/**
 * Each manager's final state, written before cleanup so convergence can be checked again from
 * outside: its status (applied index, state digest) and every key's version and value as that
 * manager holds them (a stale read there: its own state, no read index).
 */
async function dumpStates(c: ProcessCluster, dir: string, keys: readonly string[]): Promise<void> {
  mkdirSync(dir, { recursive: true });
  // One point for all: the cluster's own housekeeping (audit anchors) still takes log entries,
  // so the statuses are read until every manager answers at one applied index.
  const statuses = await eventually('every manager at one applied index, for the state dump', 30_000, async () => {
    const all = await Promise.all(c.managers.map((m) => c.status(m, { withStateDigest: true })));
    return new Set(all.map((s) => s.appliedIndex)).size === 1 ? all : undefined;
  });
  for (const [k, m] of c.managers.entries()) {
    const status = statuses[k]!;
    const client = c.client(m, 5000);
    const values: Record<string, { version: number; value: string | null }> = {};
    try {
      for (const key of keys) {
        const reply = await client
          .get(key, { stale: true })
          .catch((e: Error) => (/does not exist/.test(e.message) ? null : Promise.reject(e)));
        values[key] =
          reply === null ? { version: 0, value: null } : { version: reply.version, value: reply.value.toString() };
      }
    } finally {
      client.close();
    }
    writeFileSync(
      join(dir, `${m.name}.json`),
      `${JSON.stringify({ manager: m.name, nodeId: status.nodeId, role: status.role, appliedIndex: status.appliedIndex, stateDigest: status.stateDigest, keys: values }, null, 1)}\n`,
    );
  }
}

export function formatSummary(s: ChaosSummary): string {
  const lines = [
    `seed ${s.seed} (${s.network}): ${s.operations.ok} ok, ${s.operations.fail} fail, ${s.operations.info} info`,
    `faults: ${s.faults.length} (${[...new Set(s.faults.map((f) => f.nemesis))].join(', ') || 'none'})`,
    `failovers (kill -9 of the leader to the first acknowledged write): ${s.failoversMs.length === 0 ? 'none' : s.failoversMs.map((ms) => (Number.isFinite(ms) ? `${Math.round(ms)} ms` : 'no write after')).join(', ')}`,
    `converged: ${s.converged ? 'yes, same state digest on every manager' : 'NO'}`,
    `lost acknowledged writes: ${s.lostWrites.length === 0 ? 'none' : s.lostWrites.join('; ')}`,
    ...s.faults.flatMap((f) => (f.problems ?? []).map((p) => `PROBLEM during ${f.nemesis}: ${p}`)),
    `expiry (${s.expiry.probes} probes of keys with a 2 s TTL): ${s.expiry.problems.length === 0 ? 'never served late, never gone early' : `${s.expiry.problems.length} BROKEN: ${s.expiry.problems.slice(0, 5).join('; ')}${s.expiry.problems.length > 5 ? '; ...' : ''}`}`,
    ...formatAvailability(s.availability),
    ...(s.historyFile === null ? [] : [`history: ${s.historyFile} (npm run chaos -- --check FILE checks it again)`]),
  ];
  for (const key of s.verdict.keys) {
    if (key.undecided === true)
      lines.push(`key ${key.key}: UNDECIDED: the search gave up (a limit of the checker, not a proven anomaly)`);
    else if (!key.linearizable) lines.push(`key ${key.key}: NOT linearizable: ${key.explanation ?? ''}`);
  }
  for (const anomaly of s.verdict.staleAnomalies) lines.push(`stale read anomaly: ${anomaly}`);
  lines.push(
    s.ok
      ? `verdict: linearizable (${s.verdict.keys.reduce((n, k) => n + k.operations, 0)} operations on ${s.verdict.keys.length} keys checked)`
      : `verdict: ANOMALY${s.historyFile === null ? '' : `; history kept in ${s.historyFile}`}`,
  );
  return lines.join('\n');
}

export { describe };
