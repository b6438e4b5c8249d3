import { cpSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { Manager, type ManagerOptions } from '../../src/manager/manager.ts';
import { DataDir } from '../../src/manager/data-dir.ts';
import type { Message, NodeId } from '../../src/raft/types.ts';
import type { LeaderLink } from '../../src/manager/proposer.ts';
import { createLogger, type Logger } from '../../src/util/logger.ts';
import { SeededRandom } from '../../src/util/prng.ts';
import { KvMachine, putCommand } from './kv-machine.ts';
import { operator } from './operator.ts';

/**
 * Managers of one cluster in this process, on real data directories, with messages delivered
 * asynchronously between them (the mTLS transport takes this place in a later issue).
 */
export class LocalCluster {
  readonly root: string;
  readonly managers = new Map<NodeId, Manager<number>>();
  readonly machines = new Map<NodeId, KvMachine>();
  readonly #loggers = new Map<NodeId, Logger>();
  /** The way to the leader in this process: what gRPC's Peer.Propose is between processes. */
  readonly leaderLink: LeaderLink<number> = {
    proposeSealed: (leader, payload) => this.operator(this.#running(leader)).proposer.acceptForwarded(payload),
    proposeConfChange: (leader, change) => this.#running(leader).proposeConfChange(change),
  };
  readonly ids: NodeId[];
  /** Every log line written by any manager. */
  readonly logLines: string[] = [];
  /** Unlock key (autolock) or null (key files). */
  unlockKey: string | null = null;
  clusterId = '';

  constructor(size: number) {
    this.root = mkdtempSync(join(tmpdir(), 'coffer-cluster-'));
    this.ids = Array.from({ length: size }, (_, k) => k + 1);
  }

  dataDir(id: NodeId): string {
    return join(this.root, `m${id}`, 'data');
  }

  keyFile(id: NodeId): string {
    return join(this.root, `m${id}`, 'key');
  }

  /** Initializes the first manager's keys; the others share its root key (as joining will give them). */
  async init(options: { autolock?: boolean } = {}): Promise<void> {
    const first = await Manager.init(this.dataDir(1), {
      keyFile: this.keyFile(1),
      ...(options.autolock === true ? { autolock: true } : {}),
    });
    this.clusterId = first.clusterId;
    this.unlockKey = first.unlockKey;
    // Until join tokens exist (the transport issue), the other managers get a copy of the first one's key store.
    for (const id of this.ids.slice(1)) {
      mkdirSync(this.dataDir(id), { recursive: true, mode: 0o700 });
      cpSync(new DataDir(this.dataDir(1)).keyStore, new DataDir(this.dataDir(id)).keyStore);
      if (first.unlockKey === null) cpSync(this.keyFile(1), this.keyFile(id));
    }
  }

  async start(id: NodeId, extra: Partial<ManagerOptions<number>> = {}): Promise<Manager<number>> {
    const machine = new KvMachine();
    const sink = new Writable({
      write: (chunk: Buffer, _encoding, done) => {
        for (const line of chunk.toString('utf8').split('\n')) if (line !== '') this.logLines.push(line);
        done();
      },
    });
    const logger = createLogger({ component: `manager-${id}`, destination: sink, level: 'debug' });
    this.#loggers.set(id, logger);
    const manager = await Manager.open<number>({
      dataDir: this.dataDir(id),
      id,
      keyFile: this.keyFile(id),
      peers: { send: (messages) => this.#deliver(messages) },
      inner: machine,
      random: new SeededRandom(id * 7919),
      bootstrapVoters: this.ids,
      logger,
      tickIntervalMs: 20,
      ...extra,
    });
    this.managers.set(id, manager);
    this.machines.set(id, machine);
    return manager;
  }

  /** The write path of `manager` as the server has it: sealed there, forwarded to the leader in this process. */
  operator(manager: Manager<number>) {
    return operator(manager, this.leaderLink, this.#loggers.get(manager.id));
  }

  #running(id: NodeId): Manager<number> {
    const manager = this.managers.get(id);
    if (manager === undefined) throw new Error(`manager ${id} is not running`);
    return manager;
  }

  async startAll(extra: Partial<ManagerOptions<number>> = {}): Promise<void> {
    for (const id of this.ids) await this.start(id, extra);
  }

  async stop(id: NodeId): Promise<void> {
    await this.managers.get(id)?.stop();
    this.managers.delete(id);
  }

  async stopAll(): Promise<void> {
    for (const id of [...this.managers.keys()]) await this.stop(id);
  }

  async destroy(): Promise<void> {
    await this.stopAll();
    rmSync(this.root, { recursive: true, force: true });
  }

  #deliver(messages: readonly Message[]): void {
    for (const message of messages) {
      setImmediate(() => {
        const target = this.managers.get(message.to);
        if (target !== undefined) {
          try {
            target.step(message);
          } catch {
            // a stopped manager: the message is lost, as on a network
          }
        }
      });
    }
  }

  /** Waits for a leader among the running, unlocked managers whose keyring has a term. */
  async leader(timeoutMs = 10_000): Promise<Manager<number>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const manager of this.managers.values()) {
        const status = manager.status();
        if (status.raft?.role === 'leader' && (status.keys?.activeTerm ?? 0) > 0) return manager;
      }
      if (Date.now() > deadline) throw new Error(`no leader with a keyring within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }

  async put(key: string, value: string): Promise<number> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const leader = await this.leader();
      try {
        return await this.operator(leader).propose('kv.put', putCommand(key, value));
      } catch (error) {
        if (Date.now() > deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  }

  /** Waits until every running unlocked manager has applied what the leader has. */
  async converged(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const applied = [...this.managers.values()].map((m) => m.status().raft?.applied ?? -1);
      const commits = [...this.managers.values()].map((m) => m.status().raft?.commit ?? -1);
      const top = Math.max(...commits);
      if (applied.every((a) => a === top)) return;
      if (Date.now() > deadline)
        throw new Error(`managers did not converge: applied ${applied.join(', ')}, commit ${top}`);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  }
}
