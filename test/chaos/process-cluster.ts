import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { CofferClient } from '../../src/client/client.ts';
import { Processes, coffer, eventually, freePort, type StatusReply } from '../processes/processes.ts';
import type { ManagerClocks } from './clocks.ts';
import type { ManagerDisks } from './disks.ts';
import type { LinkProxies } from './link-proxy.ts';
import type { NetworkNamespaces } from './netns.ts';

export interface Manager {
  /** The process name (m1, m2, ...); a replacement keeps its predecessor's name and address. */
  readonly name: string;
  /** Position, which is also the network namespace's index. */
  readonly slot: number;
  data: string;
  readonly address: string;
}

export const PORT_IN_NAMESPACE = 7400;

/**
 * A cluster of manager processes made with coffer init and join, that the chaos harness kills,
 * pauses, partitions, reconfigures and restarts. On loopback (127.0.0.1, a port each), or with a
 * NetworkNamespaces, each manager in its own namespace. Every process is tracked by PID and killed
 * at the end.
 */
export class ProcessCluster {
  readonly procs: Processes;
  readonly managers: Manager[] = [];
  adminDir = '';
  clusterId = '';
  joinToken = '';
  /** The join token in a file (mode 600): managers read it with --token-file, never from argv. */
  joinTokenFile = '';
  /** Printed by init: opens backups. */
  recoveryKey = '';
  /** The proxies on the links between managers, when the run put them there (link-proxy.ts). */
  links: LinkProxies | null = null;
  /** Managers' wall clocks, when the run may skew them (clocks.ts); set before start. */
  readonly clocks: ManagerClocks | null;
  /** Managers' data directories on small filesystems of their own, when the run fills them (disks.ts). */
  readonly disks: ManagerDisks | null;
  readonly #network: NetworkNamespaces | null;
  #flags: string[] = [];
  #status = new Map<string, CofferClient>();
  #replacements = 0;

  constructor(
    readonly root: string,
    network: NetworkNamespaces | null = null,
    options: {
      readonly compiled?: boolean;
      readonly cli?: string;
      readonly clocks?: ManagerClocks | null;
      readonly disks?: ManagerDisks | null;
    } = {},
  ) {
    this.procs = new Processes(root, options);
    this.#network = network;
    this.clocks = options.clocks ?? null;
    this.disks = options.disks ?? null;
  }

  /** `compiled`: managers run the CLI `npm run build` made (see Processes). */
  static async start(
    root: string,
    size: number,
    options: {
      snapshotEvery?: number;
      network?: NetworkNamespaces | null;
      compiled?: boolean;
      /** A compiled CLI of another build for the managers (the pair benchmark's base). */
      cli?: string;
      clocks?: ManagerClocks | null;
      disks?: ManagerDisks | null;
    } = {},
  ): Promise<ProcessCluster> {
    const network = options.network ?? null;
    const cluster = new ProcessCluster(root, network, {
      compiled: options.compiled === true,
      ...(options.cli === undefined ? {} : { cli: options.cli }),
      clocks: options.clocks ?? null,
      disks: options.disks ?? null,
    });
    for (let k = 0; k < size; k++) {
      const address = network === null ? `127.0.0.1:${await freePort()}` : `${network.host(k)}:${PORT_IN_NAMESPACE}`;
      cluster.managers.push({ name: `m${k + 1}`, slot: k, data: join(root, `m${k + 1}`), address });
      if (cluster.disks !== null) cluster.disks.mount(join(root, `m${k + 1}`));
    }
    cluster.#flags = ['--snapshot-every', String(options.snapshotEvery ?? 500), '--snapshot-tail', '50'];
    const first = cluster.managers[0]!;
    cluster.joinTokenFile = join(root, 'join-token');
    const init = await coffer([
      'init',
      '--data',
      first.data,
      '--listen',
      first.address,
      '--token-file',
      cluster.joinTokenFile,
      '--output',
      'json',
    ]);
    if (init.code !== 0) throw new Error(`coffer init failed: ${init.stderr}`);
    const made = JSON.parse(init.stdout) as {
      clusterId: string;
      joinToken: string;
      adminDir: string;
      recoveryKey: string;
    };
    cluster.adminDir = made.adminDir;
    cluster.clusterId = made.clusterId;
    cluster.joinToken = made.joinToken;
    cluster.recoveryKey = made.recoveryKey;
    cluster.#start(first, ['server', '--data', first.data]);
    await eventually('the first manager to lead', 60_000, async () =>
      (await cluster.status(first)).role === 'leader' ? true : undefined,
    );
    for (const m of cluster.managers.slice(1)) {
      cluster.#join(m, first);
      const voters = cluster.managers.indexOf(m) + 1;
      await eventually(`${m.name} to become a voter`, 60_000, async () =>
        (await cluster.status(first)).voters.length === voters ? true : undefined,
      );
    }
    return cluster;
  }

  get network(): NetworkNamespaces | null {
    return this.#network;
  }

  #start(m: Manager, args: string[], input = ''): void {
    this.procs.start(
      m.name,
      [...args, ...this.#flags],
      this.#network?.prefix(m.slot) ?? [],
      input,
      this.clocks?.env(m.name) ?? {},
    );
  }

  #join(m: Manager, via: Manager): void {
    this.#start(m, [
      'join',
      '--data',
      m.data,
      '--listen',
      m.address,
      '--join',
      via.address,
      '--token-file',
      this.joinTokenFile,
    ]);
  }

  /** The admin identity made by coffer init. */
  adminPem(): { caPem: string; certPem: string; keyPem: string } {
    const read = (name: string) => readFileSync(join(this.adminDir, name), 'utf8');
    return { caPem: read('ca.crt'), certPem: read('admin.crt'), keyPem: read('admin.key') };
  }

  /** A client of one manager only (failover is the workload's business). */
  client(manager: Manager, deadlineMs = 2000): CofferClient {
    return new CofferClient({ addresses: [manager.address], ...this.adminPem(), deadlineMs });
  }

  /** A manager's status; the state digest (a hash of its whole state) only when asked for. */
  async status(
    manager: Manager,
    options: { withStateDigest?: boolean } = {},
  ): Promise<StatusReply & { stateDigest: string }> {
    let client = this.#status.get(manager.name);
    if (client === undefined) {
      client = this.client(manager, 1500);
      this.#status.set(manager.name, client);
    }
    return (await client.clusterStatus(options)) as unknown as StatusReply & { stateDigest: string };
  }

  /** The manager that says it leads (and is answering), or null. */
  async leader(): Promise<Manager | null> {
    const replies = await Promise.all(
      this.managers.map((m) => (this.procs.running(m.name) ? this.status(m).catch(() => null) : Promise.resolve(null))),
    );
    let best: { manager: Manager; term: number } | null = null;
    replies.forEach((s, k) => {
      if (s !== null && s.role === 'leader' && (best === null || s.term > best.term))
        best = { manager: this.managers[k]!, term: s.term };
    });
    return (best as { manager: Manager } | null)?.manager ?? null;
  }

  async kill(manager: Manager): Promise<void> {
    await this.procs.kill(manager.name);
  }

  /** Starts a stopped manager again; an autolocked one reads `unlockKey` on stdin. */
  restart(manager: Manager, unlockKey?: string): void {
    if (!this.procs.running(manager.name))
      this.#start(manager, ['server', '--data', manager.data], unlockKey === undefined ? '' : `${unlockKey}\n`);
  }

  pause(manager: Manager): void {
    this.procs.signal(manager.name, 'SIGSTOP');
  }

  resume(manager: Manager): void {
    this.procs.signal(manager.name, 'SIGCONT');
  }

  /**
   * Membership change: `manager` (already removed from the cluster by the caller) is killed and
   * its data wiped; a new manager with a new id joins in its place, at the same address.
   */
  async replace(manager: Manager, via: Manager): Promise<void> {
    await this.retire(manager);
    this.rejoin(manager, via);
  }

  /** The first half of `replace`: `manager` is killed and its data wiped. */
  async retire(manager: Manager): Promise<void> {
    await this.kill(manager);
    // A mount point (disks.ts) cannot be removed: its content can.
    if (this.disks?.has(manager.data) === true)
      for (const entry of readdirSync(manager.data))
        rmSync(join(manager.data, entry), { recursive: true, force: true });
    else rmSync(manager.data, { recursive: true, force: true });
    rmSync(`${manager.data}.key`, { force: true });
    this.#status.get(manager.name)?.close();
    this.#status.delete(manager.name);
  }

  /** The second half of `replace`: a new manager (new id, new data directory) joins at a retired one's address. */
  rejoin(manager: Manager, via: Manager): void {
    manager.data = join(this.root, `${manager.name}-r${++this.#replacements}`);
    this.#join(manager, via);
  }

  /** A new manager, joined through `via` (the cluster grows by one). */
  async add(via: Manager): Promise<Manager> {
    const slot = this.managers.length;
    const name = `m${slot + 1}`;
    const address =
      this.#network === null ? `127.0.0.1:${await freePort()}` : `${this.#network.host(slot)}:${PORT_IN_NAMESPACE}`;
    const manager: Manager = { name, slot, data: join(this.root, name), address };
    this.managers.push(manager);
    this.#join(manager, via);
    return manager;
  }

  async stop(): Promise<void> {
    for (const client of this.#status.values()) client.close();
    this.#status.clear();
    await this.procs.killAll();
  }
}
