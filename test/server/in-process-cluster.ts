import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status } from '@grpc/grpc-js';
import { CofferClient } from '../../src/client/client.ts';
import { initCluster, joinCluster } from '../../src/server/bootstrap.ts';
import { CofferNode, type NodeOptions } from '../../src/server/node.ts';
import { createLogger } from '../../src/util/logger.ts';
import { AdminClient, eventually, freePort } from '../processes/processes.ts';

/** Three managers in this process, made by init and join, over real mutual-TLS gRPC on 127.0.0.1. */
export class InProcessCluster {
  readonly root = mkdtempSync(join(tmpdir(), 'coffer-api-'));
  readonly nodes: CofferNode[] = [];
  readonly addresses: string[] = [];
  admin!: AdminClient;
  adminDir = '';
  clusterId = '';
  /** The join token made at init. */
  joinToken = '';

  /**
   * `options` are given to every manager (limits, say; a logger, else a silent one), or made for
   * each by its index (from 0), for what each needs its own of (a clock).
   */
  static async start(
    size = 3,
    options: Partial<NodeOptions> | ((index: number) => Partial<NodeOptions>) = {},
  ): Promise<InProcessCluster> {
    const cluster = new InProcessCluster();
    try {
      await cluster.#start(size, options);
    } catch (error) {
      await cluster.stop();
      throw error;
    }
    return cluster;
  }

  async #start(size: number, options: Partial<NodeOptions> | ((index: number) => Partial<NodeOptions>)): Promise<void> {
    const silent = createLogger({ level: 'silent' });
    const optionsOf = (index: number): Partial<NodeOptions> => {
      const own = typeof options === 'function' ? options(index) : options;
      return { ...own, logger: own.logger ?? silent };
    };
    const ports = await Promise.all(Array.from({ length: size }, () => freePort()));
    for (const port of ports) this.addresses.push(`127.0.0.1:${port}`);
    const init = await initCluster({ dataDir: join(this.root, 'm1'), listen: this.addresses[0]! });
    this.adminDir = init.adminDir;
    this.clusterId = init.clusterId;
    this.joinToken = init.joinToken;
    this.admin = new AdminClient(init.adminDir, init.clusterId);
    this.nodes.push(await CofferNode.start({ ...optionsOf(0), dataDir: join(this.root, 'm1'), tickIntervalMs: 50 }));
    await eventually('a leader with a join token', 20_000, async () =>
      this.nodes[0]!.state.cluster.joinTokenHash !== null && this.nodes[0]!.manager.raftStatus()?.role === 'leader'
        ? true
        : undefined,
    );
    for (let k = 1; k < size; k++) {
      await joinCluster({
        dataDir: join(this.root, `m${k + 1}`),
        listen: this.addresses[k]!,
        join: this.addresses[0]!,
        token: init.joinToken,
      });
      this.nodes.push(
        await CofferNode.start({ ...optionsOf(k), dataDir: join(this.root, `m${k + 1}`), tickIntervalMs: 50 }),
      );
      await eventually(`manager ${k + 1} to become a voter`, 30_000, async () =>
        this.nodes[0]!.manager.raftStatus()?.confState.voters.length === k + 1 ? true : undefined,
      );
    }
  }

  /**
   * Until manager `k` serves a linearizable read (a leader does once an entry of its term has
   * committed; until then it answers UNAVAILABLE). A read of a name that is not there answers NOT_FOUND.
   */
  async servesReads(k = 0, timeoutMs = 20_000): Promise<void> {
    await eventually(`manager ${k + 1} to serve a linearizable read`, timeoutMs, async () => {
      try {
        await this.admin.call(this.addresses[k]!, 'Secrets', 'get', { name: 'in-process-cluster/absent' }, 5_000);
        return true;
      } catch (error) {
        if ((error as { code?: number }).code === status.NOT_FOUND) return true;
        throw error;
      }
    });
  }

  /** A CofferClient as the admin identity `init` made, over every manager (or those given); the caller closes it. */
  adminClient(addresses: readonly string[] = this.addresses): CofferClient {
    const read = (name: string): string => readFileSync(join(this.adminDir, name), 'utf8');
    return new CofferClient({
      addresses,
      caPem: read('ca.crt'),
      certPem: read('admin.crt'),
      keyPem: read('admin.key'),
    });
  }

  /** The environment the coffer CLI reads to act as the admin identity `init` made, on every manager. */
  adminEnv(): Record<string, string> {
    return {
      COFFER_ADDR: this.addresses.join(','),
      COFFER_CA: join(this.adminDir, 'ca.crt'),
      COFFER_CERT: join(this.adminDir, 'admin.crt'),
      COFFER_KEY: join(this.adminDir, 'admin.key'),
    };
  }

  /** The address of a manager that is not the leader. */
  follower(): string {
    const at = this.nodes.findIndex((n) => n.manager.raftStatus()?.role !== 'leader');
    return this.addresses[at]!;
  }

  async stop(): Promise<void> {
    this.admin?.close();
    for (const node of this.nodes) await node.stop();
    rmSync(this.root, { recursive: true, force: true });
  }
}
