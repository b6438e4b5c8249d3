import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CofferClient } from '../../src/client/client.ts';
import { Processes, coffer, eventually, freePort, type StatusReply } from '../cluster/processes.ts';

export interface Manager {
  readonly name: string;
  readonly data: string;
  readonly address: string;
}

/**
 * A cluster of manager processes on 127.0.0.1, made with coffer init and join, that the chaos
 * harness kills, pauses and restarts. Every process is tracked by PID and killed at the end.
 */
export class ProcessCluster {
  readonly procs: Processes;
  readonly managers: Manager[] = [];
  adminDir = '';
  clusterId = '';
  #status = new Map<string, CofferClient>();

  constructor(readonly root: string) {
    this.procs = new Processes(root);
  }

  static async start(root: string, size: number, snapshotEvery = 500): Promise<ProcessCluster> {
    const cluster = new ProcessCluster(root);
    for (let k = 0; k < size; k++) cluster.managers.push({ name: `m${k + 1}`, data: join(root, `m${k + 1}`), address: `127.0.0.1:${await freePort()}` });
    const flags = ['--snapshot-every', String(snapshotEvery), '--snapshot-tail', '50'];
    const first = cluster.managers[0]!;
    const init = await coffer(['init', '--data', first.data, '--listen', first.address, '--output', 'json']);
    if (init.code !== 0) throw new Error(`coffer init failed: ${init.stderr}`);
    const made = JSON.parse(init.stdout) as { clusterId: string; joinToken: string; adminDir: string };
    cluster.adminDir = made.adminDir;
    cluster.clusterId = made.clusterId;
    cluster.#flags = flags;
    cluster.procs.start(first.name, ['server', '--data', first.data, ...flags]);
    await eventually('the first manager to lead', 60_000, async () => ((await cluster.status(first)).role === 'leader' ? true : undefined));
    for (const m of cluster.managers.slice(1)) {
      cluster.procs.start(m.name, ['join', '--data', m.data, '--listen', m.address, '--join', first.address, '--token', made.joinToken, ...flags]);
      const voters = cluster.managers.indexOf(m) + 1;
      await eventually(`${m.name} to become a voter`, 60_000, async () => ((await cluster.status(first)).voters.length === voters ? true : undefined));
    }
    return cluster;
  }

  #flags: string[] = [];

  /** A client of one manager only (failover is the workload's business). */
  client(manager: Manager, deadlineMs = 2000): CofferClient {
    const read = (name: string) => readFileSync(join(this.adminDir, name), 'utf8');
    return new CofferClient({ addresses: [manager.address], caPem: read('ca.crt'), certPem: read('admin.crt'), keyPem: read('admin.key'), deadlineMs });
  }

  async status(manager: Manager): Promise<StatusReply & { stateDigest: string }> {
    let client = this.#status.get(manager.name);
    if (client === undefined) {
      client = this.client(manager, 1500);
      this.#status.set(manager.name, client);
    }
    return (await client.clusterStatus()) as unknown as StatusReply & { stateDigest: string };
  }

  /** The manager that says it leads (and is answering), or null. */
  async leader(): Promise<Manager | null> {
    const replies = await Promise.all(this.managers.map((m) => (this.procs.running(m.name) ? this.status(m).catch(() => null) : Promise.resolve(null))));
    let best: { manager: Manager; term: number } | null = null;
    replies.forEach((s, k) => {
      if (s !== null && s.role === 'leader' && (best === null || s.term > best.term)) best = { manager: this.managers[k]!, term: s.term };
    });
    return (best as { manager: Manager } | null)?.manager ?? null;
  }

  async kill(manager: Manager): Promise<void> {
    await this.procs.kill(manager.name);
  }

  restart(manager: Manager): void {
    if (!this.procs.running(manager.name)) this.procs.start(manager.name, ['server', '--data', manager.data, ...this.#flags]);
  }

  pause(manager: Manager): void {
    this.procs.signal(manager.name, 'SIGSTOP');
  }

  resume(manager: Manager): void {
    this.procs.signal(manager.name, 'SIGCONT');
  }

  async stop(): Promise<void> {
    for (const client of this.#status.values()) client.close();
    this.#status.clear();
    await this.procs.killAll();
  }
}
