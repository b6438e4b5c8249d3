import { status as grpcStatus } from '@grpc/grpc-js';
import { ClientError, CofferClient } from '../../src/client/client.ts';
import { identityOf, newLeafKey } from '../../src/crypto/pki.ts';
import type { Random } from '../../src/util/prng.ts';
import { eventually } from '../processes/processes.ts';
import type { Manager, ProcessCluster } from './process-cluster.ts';

export const NEMESES = [
  'kill-leader',
  'kill-minority',
  'pause',
  'restart-all',
  'partition',
  'transfer-leader',
  'membership',
  'delay',
  'bandwidth',
  'stall',
  'reset',
  'clock-skew',
  'rotate-kill',
  'snapshot-kill',
  'disk-full',
] as const;
export type NemesisName = (typeof NEMESES)[number];

/** Nemeses that need a network namespace per manager (and, but for partition, the link proxies). */
export const NETWORK_NEMESES: readonly NemesisName[] = ['partition', 'delay', 'bandwidth', 'stall', 'reset'];
/** Nemeses that act through the link proxies (link-proxy.ts). */
export const LINK_NEMESES: readonly NemesisName[] = ['delay', 'bandwidth', 'stall', 'reset'];

export interface FaultRecord {
  /** When the fault began, and when it was healed (ms since the workload began). */
  readonly atMs: number;
  readonly endMs: number;
  readonly nemesis: NemesisName;
  /** The managers it struck (their names), as far as the nemesis knows. */
  readonly targets: readonly string[];
  readonly detail: string;
  /** What a check made during the fault found wrong (none: empty or absent). */
  readonly problems?: readonly string[];
}

/** What one injection did. */
export interface Fault {
  readonly detail: string;
  readonly targets: readonly string[];
  readonly problems?: readonly string[];
}

const DAY_MS = 86_400_000;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** How long a fault lasts before it is healed. */
function faultMs(random: Random): number {
  return 1500 + random.int(2500);
}

function shuffled<T>(items: readonly T[], random: Random): T[] {
  const out = [...items];
  for (let k = out.length - 1; k > 0; k--) {
    const j = random.int(k + 1);
    [out[k], out[j]] = [out[j]!, out[k]!];
  }
  return out;
}

/** One client over every manager: membership calls fail over to whoever answers. */
function admin(c: ProcessCluster): CofferClient {
  return new CofferClient({ ...c.adminPem(), addresses: c.managers.map((m) => m.address), deadlineMs: 15_000 });
}

/**
 * Injects one fault and heals it (except where healing is the point of a later step). Returns
 * what was done and to whom, or null when nothing could be (no leader known, say).
 */
export async function injectFault(
  c: ProcessCluster,
  nemesis: NemesisName,
  random: Random,
  hooks: { killedLeader(): void },
): Promise<Fault | null> {
  const problems: string[] = [];
  const detail = await inject(c, nemesis, random, hooks, problems);
  if (detail === null) return null;
  // The managers a fault names are its targets (a fault on the whole cluster names them all).
  const named = c.managers.filter((m) => new RegExp(`\\b${m.name}\\b`).test(detail)).map((m) => m.name);
  return { detail, targets: nemesis === 'restart-all' ? c.managers.map((m) => m.name) : named, problems };
}

async function inject(
  c: ProcessCluster,
  nemesis: NemesisName,
  random: Random,
  hooks: { killedLeader(): void },
  problems: string[],
): Promise<string | null> {
  const names = (ms: readonly Manager[]) => ms.map((m) => m.name).join(', ');
  switch (nemesis) {
    case 'kill-leader': {
      const leader = await c.leader();
      if (leader === null) return null;
      hooks.killedLeader();
      await c.kill(leader);
      await sleep(faultMs(random));
      c.restart(leader);
      return `kill -9 ${leader.name} (the leader), restarted`;
    }
    case 'kill-minority': {
      const victims = shuffled(c.managers, random).slice(0, Math.floor((c.managers.length - 1) / 2));
      for (const v of victims) await c.kill(v);
      await sleep(faultMs(random));
      for (const v of victims) c.restart(v);
      return `kill -9 ${names(victims)}, restarted`;
    }
    case 'pause': {
      const victim = c.managers[random.int(c.managers.length)]!;
      c.pause(victim);
      await sleep(faultMs(random));
      c.resume(victim);
      return `SIGSTOP ${victim.name}, then SIGCONT`;
    }
    case 'restart-all': {
      for (const m of c.managers) await c.kill(m);
      for (const m of c.managers) c.restart(m);
      return 'kill -9 every manager, restart all';
    }
    case 'partition':
      return partition(c, random);
    case 'transfer-leader': {
      const client = admin(c);
      try {
        const voters = (await c.leader()) === null ? [] : c.managers;
        const target =
          random.float() < 0.5 || voters.length === 0
            ? 0
            : ((await c.status(voters[random.int(voters.length)]!).catch(() => null))?.nodeId ?? 0);
        const reply = await client.transferLeader(target);
        return `transfer leadership to ${target === 0 ? 'the most caught-up voter' : `manager ${target}`}: manager ${reply.leaderId} leads`;
      } catch (error) {
        return `transfer leadership: refused (${(error as Error).message})`;
      } finally {
        client.close();
      }
    }
    case 'membership':
      return random.float() < 0.5 ? demotePromote(c, random) : replaceMember(c, random);
    case 'clock-skew': {
      // One manager's wall clock off by minutes, either way, long enough for TTLs to expire
      // under it; Raft's ticks run on the monotonic clock and should not notice.
      const clocks = c.clocks!;
      const leader = await c.leader();
      const victim = leader !== null && random.float() < 0.5 ? leader : c.managers[random.int(c.managers.length)]!;
      const offsetS = (random.float() < 0.5 ? -1 : 1) * [30, 120, 300, 900][random.int(4)]!;
      const durationMs = faultMs(random) + 4000;
      const startedMs = Date.now();
      clocks.set(victim.name, offsetS);
      // libfaketime reads the offset at most once a second: then a certificate is issued there.
      await sleep(1500);
      const issued = await issueUnderSkew(c, victim);
      problems.push(...issued.problems);
      await sleep(Math.max(0, durationMs - (Date.now() - startedMs)));
      clocks.set(victim.name, 0);
      return `clock of ${victim.name}${victim === leader ? ' (the leader)' : ''} ${Math.abs(offsetS)} s ${offsetS < 0 ? 'behind' : 'ahead'} for ${durationMs} ms, then true again; ${issued.detail}`;
    }
    case 'rotate-kill':
      return rotateKill(c, random);
    case 'disk-full':
      return diskFull(c, random, problems);
    case 'snapshot-kill':
      return snapshotKill(c, random);
    case 'delay':
    case 'bandwidth':
    case 'stall':
    case 'reset':
      return linkFault(c, nemesis, random);
  }
}

/**
 * A key operation (rotate the data key, rewrap every record under it, or rotate the root key)
 * with a kill -9 of a manager (the leader half the time) a moment after it was asked for:
 * inside the operation or the re-seal that follows it.
 */
async function rotateKill(c: ProcessCluster, random: Random): Promise<string> {
  const op = (['rotate', 'rewrap', 'rewrap', 'rotateRoot'] as const)[random.int(4)]!;
  const leader = await c.leader();
  const victim = leader !== null && random.float() < 0.5 ? leader : c.managers[random.int(c.managers.length)]!;
  const client = admin(c);
  const asked = client.keyOp(op).then(
    (reply) => `done (term ${reply.activeTerm})`,
    (error: Error) => `refused or cut off (${error.message.slice(0, 60)})`,
  );
  const afterMs = random.int(400);
  await sleep(afterMs);
  await c.kill(victim);
  const outcome = await asked;
  client.close();
  await sleep(faultMs(random));
  c.restart(victim);
  return `key ${op}, kill -9 ${victim.name}${victim === leader ? ' (the leader)' : ''} ${afterMs} ms after: ${outcome}; restarted`;
}

/**
 * A follower that has to be sent a snapshot, killed (or its leader killed) while it is sent:
 * the follower is stopped until the leader's log starts past what it has, restarted, and a
 * moment later one of the two is killed. With link proxies, the link is slowed to stretch the
 * transfer.
 */
async function snapshotKill(c: ProcessCluster, random: Random): Promise<string> {
  const leader = await c.leader();
  if (leader === null) return 'snapshot and kill: no leader, skipped';
  const followers = c.managers.filter((m) => m !== leader);
  const follower = followers[random.int(followers.length)]!;
  const had = await c.status(follower).catch(() => null);
  if (had === null) return `snapshot and kill: ${follower.name} does not answer, skipped`;
  await c.kill(follower);
  const compacted = await eventually(`${leader.name}'s log to start past ${follower.name}'s`, 30_000, async () => {
    const s = await c.status(leader);
    return s.role === 'leader' && s.snapshotIndex > had.appliedIndex ? s : undefined;
  }).catch(() => null);
  if (compacted === null) {
    c.restart(follower);
    return `snapshot and kill: ${leader.name}'s log did not move past ${follower.name}'s within 30 s; ${follower.name} restarted`;
  }
  const slow = c.links !== null;
  if (slow) c.links!.set(leader.slot, follower.slot, { bytesPerS: 32 * 1024 });
  c.restart(follower);
  const afterMs = 300 + random.int(2000);
  await sleep(afterMs);
  const sent = (await c.status(leader).catch(() => null))?.snapshotsSent;
  const victim = random.float() < 0.5 ? follower : leader;
  await c.kill(victim);
  c.links?.set(leader.slot, follower.slot, { bytesPerS: 0 });
  await sleep(faultMs(random));
  c.restart(victim);
  return `${follower.name} stopped until ${leader.name} (the leader) compacted past index ${had.appliedIndex}, restarted${slow ? ' behind a 32 KiB/s link' : ''}, then kill -9 ${victim.name} ${afterMs} ms later (snapshots sent by ${leader.name}: ${sent ?? 'unknown'}); restarted`;
}

/**
 * One manager's disk filled (the leader half the time) under load: it must refuse requests with
 * DISK_FULL while full; once space is freed it exits with code 75 and the harness, as its
 * supervisor, starts it again. What it does otherwise is a problem of the fault.
 */
async function diskFull(c: ProcessCluster, random: Random, problems: string[]): Promise<string> {
  const disks = c.disks!;
  const leader = await c.leader();
  const candidates = c.managers.filter((m) => disks.has(m.data) && c.procs.running(m.name));
  if (candidates.length === 0)
    return 'disk full: no running manager on a disk of its own (replaced ones are not), skipped';
  const victim =
    leader !== null && candidates.includes(leader) && random.float() < 0.5
      ? leader
      : candidates[random.int(candidates.length)]!;
  const filler = disks.fill(victim.data);
  const client = c.client(victim, 2000);
  let refusedMs: number | null = null;
  const startedMs = Date.now();
  const untilMs = startedMs + Math.max(faultMs(random), 2000);
  try {
    while (Date.now() < untilMs || (refusedMs === null && Date.now() < startedMs + 15_000)) {
      const error = await client.get('chaos/k0').then(
        () => null,
        (e: unknown) => e,
      );
      if (refusedMs === null && error instanceof ClientError && error.reason === 'DISK_FULL')
        refusedMs = Date.now() - startedMs;
      await sleep(200);
    }
  } finally {
    client.close();
  }
  if (refusedMs === null) problems.push(`${victim.name}'s disk was full for 15 s and it never refused with DISK_FULL`);
  disks.free(filler);
  const exited = await eventually(`${victim.name} to exit once its disk has room`, 15_000, async () =>
    c.procs.running(victim.name) ? undefined : true,
  ).catch(() => false);
  const code = c.procs.exitCode(victim.name);
  if (!exited) problems.push(`${victim.name} did not exit within 15 s of its disk having room again`);
  else if (code !== 75) problems.push(`${victim.name} exited with code ${code} after its disk had room (75 expected)`);
  c.restart(victim);
  return `disk of ${victim.name}${victim === leader ? ' (the leader)' : ''} filled: ${refusedMs === null ? 'never refused' : `DISK_FULL after ${refusedMs} ms`}; freed, ${exited ? `exit code ${code}` : 'still running'}, started again`;
}

let skewIdentities = 0;

/**
 * Issues a client certificate through the manager whose clock is off, then checks it: valid
 * from now and for its lifetime by true time (the cluster's time stamps it, not the host's), and
 * accepted by every manager (a call there is refused for lack of policy, not of authentication).
 */
async function issueUnderSkew(c: ProcessCluster, victim: Manager): Promise<{ detail: string; problems: string[] }> {
  const name = `chaos-skew-${process.pid}-${++skewIdentities}`;
  const key = newLeafKey();
  const issuer = c.client(victim, 10_000);
  let issued: { certificatePem: string; notAfterMs: number };
  const askedMs = Date.now();
  try {
    issued = await issuer.issueIdentity(name, [], key.publicPem, 1);
  } catch (error) {
    const detail = `issuing a certificate there failed (${(error as Error).message.slice(0, 80)})`;
    // Refused for want of a valid certificate: the admin's, judged by the skewed host's clock.
    const refused = error instanceof ClientError && error.code === grpcStatus.UNAUTHENTICATED;
    return { detail, problems: refused ? [`${victim.name} refused the admin's certificate: ${detail}`] : [] };
  } finally {
    issuer.close();
  }
  const problems: string[] = [];
  const { notBeforeMs, notAfterMs } = identityOf(issued.certificatePem);
  const expectedAfterMs = askedMs + DAY_MS;
  if (notBeforeMs > Date.now())
    problems.push(
      `a certificate issued at ${victim.name} starts ${Math.round((notBeforeMs - Date.now()) / 1000)} s in the future`,
    );
  if (Math.abs(notAfterMs - expectedAfterMs) > 60_000)
    problems.push(
      `a one-day certificate issued at ${victim.name} ends ${Math.round((notAfterMs - expectedAfterMs) / 1000)} s off a day from now`,
    );
  for (const m of c.managers) {
    const client = new CofferClient({
      addresses: [m.address],
      caPem: c.adminPem().caPem,
      certPem: issued.certificatePem,
      keyPem: key.privatePem,
      deadlineMs: 5000,
    });
    try {
      await client.get('chaos/k0');
      problems.push(`${m.name} served a certificate without policies`);
    } catch (error) {
      const code = error instanceof ClientError ? error.code : -1;
      if (code === grpcStatus.UNAUTHENTICATED)
        problems.push(
          `${m.name} refused a certificate issued at ${victim.name}: ${(error as Error).message.slice(0, 100)}`,
        );
    } finally {
      client.close();
    }
  }
  return {
    detail: `a certificate issued there ends ${Math.round((notAfterMs - expectedAfterMs) / 1000)} s off true time`,
    problems,
  };
}

/**
 * A bad network between managers, through the link proxies: on every link, or on the links of
 * one manager (the leader when there is one). Faults last a fault's time and are then cleared.
 */
async function linkFault(
  c: ProcessCluster,
  nemesis: 'delay' | 'bandwidth' | 'stall' | 'reset',
  random: Random,
): Promise<string> {
  const links = c.links!;
  const leader = await c.leader();
  const centre = leader ?? c.managers[random.int(c.managers.length)]!;
  const everyLink = random.float() < 0.4;
  const others = c.managers.filter((m) => m !== centre);
  const pairs: [Manager, Manager][] = everyLink
    ? c.managers.flatMap((a) => c.managers.filter((b) => b !== a).map((b): [Manager, Manager] => [a, b]))
    : others.flatMap((m): [Manager, Manager][] => [
        [centre, m],
        [m, centre],
      ]);
  const role = leader === null ? '' : ' (the leader)';
  const where = everyLink ? 'every link' : `the links of ${centre.name}${role}`;
  const durationMs = faultMs(random);
  try {
    switch (nemesis) {
      case 'delay': {
        // Mostly a slow network; sometimes slower than a heartbeat interval.
        const delayMs = [10, 30, 60, 120, 250, 500][random.int(6)]!;
        const jitterMs = Math.round(delayMs * random.float());
        for (const [a, b] of pairs) links.set(a.slot, b.slot, { delayMs, jitterMs });
        await sleep(durationMs);
        return `delay ${delayMs} ms + up to ${jitterMs} ms jitter on ${where}; cleared`;
      }
      case 'bandwidth': {
        const kibPerS = [16, 64, 256, 1024][random.int(4)]!;
        for (const [a, b] of pairs) links.set(a.slot, b.slot, { bytesPerS: kibPerS * 1024 });
        await sleep(durationMs);
        return `bandwidth ${kibPerS} KiB/s each way on ${where}; cleared`;
      }
      case 'stall': {
        // One direction only: the centre's bytes out, or the bytes in to it.
        const out = random.float() < 0.5;
        const oneWay = pairs.filter(([a, b]) => (everyLink ? random.float() < 0.5 : out ? a === centre : b === centre));
        for (const [a, b] of oneWay) links.set(a.slot, b.slot, { stalled: true });
        await sleep(durationMs);
        for (const [a, b] of oneWay) links.set(a.slot, b.slot, { stalled: false });
        const what = everyLink
          ? `${oneWay.map(([a, b]) => `${a.name}->${b.name}`).join(', ') || 'no link (none drawn)'}`
          : `${out ? 'out of' : 'into'} ${centre.name}${role}`;
        return `stall the bytes ${what} for ${durationMs} ms (held, then released in order)`;
      }
      case 'reset': {
        // Connections cut mid-stream, again and again while the fault lasts.
        const until = Date.now() + durationMs;
        let cut = 0;
        while (Date.now() < until) {
          for (const [a, b] of pairs) if (a.slot < b.slot) cut += links.reset(a.slot, b.slot);
          await sleep(100 + random.int(600));
        }
        return `reset connections on ${where} for ${durationMs} ms (${cut} cut mid-stream)`;
      }
    }
  } finally {
    links.clear();
  }
}

async function partition(c: ProcessCluster, random: Random): Promise<string> {
  const net = c.network!;
  const slots = c.managers.map((m) => m.slot);
  const leader = await c.leader();
  const shape = random.int(4);
  let detail: string;
  const label = (group: readonly number[]) => group.map((k) => c.managers[k]!.name).join(',');
  if (shape === 0 || leader === null) {
    const order = shuffled(slots, random);
    const cut = Math.floor(order.length / 2);
    const groups = [order.slice(0, cut), order.slice(cut)];
    await net.partition(groups);
    detail = `partition into halves ${label(groups[0]!)} | ${label(groups[1]!)}`;
  } else if (shape === 1) {
    const others = slots.filter((k) => k !== leader.slot);
    await net.partition([[leader.slot], others]);
    detail = `partition isolating the leader ${leader.name} | ${label(others)}`;
  } else if (shape === 2) {
    // A bridge: one manager sees both sides, which do not see each other.
    const order = shuffled(slots, random);
    const bridge = order[0]!;
    const rest = order.slice(1);
    const half = Math.floor(rest.length / 2);
    const groups = [rest.slice(0, half), rest.slice(half)];
    await net.partition(groups);
    detail = `partition with a bridge: ${label(groups[0]!)} | ${label(groups[1]!)}, ${c.managers[bridge]!.name} sees both`;
  } else {
    // One way: the leader's packets to the others are dropped; theirs reach it.
    for (const k of slots) if (k !== leader.slot) await net.cut(leader.slot, k);
    detail = `asymmetric partition: ${leader.name} (the leader) cannot send to the others`;
  }
  await sleep(faultMs(random) + 1000);
  await net.heal();
  return `${detail}; healed`;
}

async function demotePromote(c: ProcessCluster, random: Random): Promise<string> {
  const victim = c.managers[random.int(c.managers.length)]!;
  const client = admin(c);
  try {
    const id = (await c.status(victim)).nodeId;
    try {
      await client.demote(id);
    } catch (error) {
      return `demote ${victim.name} (manager ${id}): refused (${(error as Error).message})`;
    }
    await sleep(faultMs(random));
    await eventually(`${victim.name} promoted back`, 30_000, async () => {
      try {
        await client.promote(id);
        return true;
      } catch (error) {
        if (/already a voter/.test((error as Error).message)) return true;
        throw error;
      }
    });
    return `demote ${victim.name} (manager ${id}) to learner under load, then promote it back`;
  } catch (error) {
    return `demote/promote ${victim.name}: ${(error as Error).message}`;
  } finally {
    client.close();
  }
}

async function replaceMember(c: ProcessCluster, random: Random): Promise<string> {
  const leader = await eventually('a leader', 20_000, async () => (await c.leader()) ?? undefined).catch(() => null);
  if (leader === null) return 'replace a manager: no leader for 20 s, skipped';
  const followers = c.managers.filter((m) => m !== leader);
  const victim = followers[random.int(followers.length)]!;
  const client = admin(c);
  try {
    // A manager just restarted by another fault may not answer yet: then nothing is changed.
    const answer = await c.status(victim).catch((error: Error) => error);
    if (answer instanceof Error)
      return `replace ${victim.name}: skipped, it does not answer (${answer.message.slice(0, 60)})`;
    const id = answer.nodeId;
    try {
      await client.removeMember(id);
    } catch (error) {
      return `remove ${victim.name} (manager ${id}): refused (${(error as Error).message})`;
    }
    await c.replace(victim, leader);
    // If it never becomes a voter, the convergence check after healing reports it.
    const newId = await eventually(`a replacement for ${victim.name} to become a voter`, 60_000, async () => {
      const mine = await c.status(victim);
      const now = await c.leader();
      const view = now === null ? null : await c.status(now);
      return view?.voters.includes(mine.nodeId) && view.voters.length === c.managers.length ? mine.nodeId : undefined;
    }).catch((error: Error) => `none yet (${error.message.slice(0, 80)})`);
    return `remove ${victim.name} (manager ${id}) and join a new manager ${newId} in its place`;
  } finally {
    client.close();
  }
}
