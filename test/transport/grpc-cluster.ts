import * as grpc from '@grpc/grpc-js';
import { mkdirSync, rmSync, mkdtempSync, cpSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createCa, issueCertificate, type KeyAndCertificate } from '../../src/crypto/pki.ts';
import { Manager } from '../../src/manager/manager.ts';
import { DataDir } from '../../src/manager/data-dir.ts';
import type { NodeId } from '../../src/raft/types.ts';
import { PeerTransport } from '../../src/transport/peer-transport.ts';
import { services } from '../../src/transport/proto.ts';
import { RenewableServerCredentials, type TlsMaterial } from '../../src/transport/tls.ts';
import { createLogger } from '../../src/util/logger.ts';
import { SeededRandom } from '../../src/util/prng.ts';
import { KvMachine, putCommand } from '../manager/kv-machine.ts';
import { operator } from '../manager/operator.ts';

export interface GrpcMember {
  readonly id: NodeId;
  manager: Manager<number>;
  machine: KvMachine;
  transport: PeerTransport;
  server: grpc.Server;
  port: number;
  tls: TlsMaterial;
}

/** Managers in this process that talk over real mutual-TLS gRPC on 127.0.0.1. */
export class GrpcCluster {
  readonly root = mkdtempSync(join(tmpdir(), 'coffer-grpc-'));
  readonly ca: KeyAndCertificate;
  readonly clusterId = 'grpc-test-cluster';
  readonly members = new Map<NodeId, GrpcMember>();
  readonly removed = new Set<NodeId>();
  readonly ports = new Map<NodeId, number>();

  constructor(readonly ids: NodeId[]) {
    this.ca = createCa(this.clusterId, Date.now());
  }

  material(id: NodeId): TlsMaterial {
    const leaf = issueCertificate(this.ca, {
      id: String(id),
      role: 'manager',
      clusterId: this.clusterId,
      nowMs: Date.now(),
      hosts: ['127.0.0.1'],
    });
    return { caPem: this.ca.certPem, certPem: leaf.certPem, keyPem: leaf.keyPem };
  }

  async init(): Promise<void> {
    const first = join(this.root, 'm1');
    await Manager.init(join(first, 'data'), { clusterId: this.clusterId, keyFile: join(first, 'key') });
    for (const id of this.ids.slice(1)) {
      mkdirSync(join(this.root, `m${id}`, 'data'), { recursive: true });
      cpSync(new DataDir(join(first, 'data')).keyStore, new DataDir(join(this.root, `m${id}`, 'data')).keyStore);
      cpSync(join(first, 'key'), join(this.root, `m${id}`, 'key'));
    }
  }

  async start(id: NodeId, tls = this.material(id)): Promise<GrpcMember> {
    const machine = new KvMachine();
    const logger = createLogger({ level: 'silent' });
    let manager: Manager<number> | null = null;
    const transport = new PeerTransport({
      selfId: id,
      clusterId: this.clusterId,
      tls: () => tls,
      addressOf: (peer) => (this.ports.has(peer) ? `127.0.0.1:${this.ports.get(peer)}` : undefined),
      onMessage: (message) => manager?.step(message),
      onUnreachable: (peer) => manager?.reportUnreachable(peer),
      onSnapshotSent: (peer, ok) => manager?.reportSnapshot(peer, ok),
      admits: (peer) => (this.removed.has(peer) ? `manager ${peer} was removed from the cluster` : null),
      logger,
    });
    const server = new grpc.Server();
    server.addService(services().Peer.service, {
      raft: transport.handleRaftStream,
      propose: (_call: unknown, callback: grpc.sendUnaryData<object>) => callback({ code: grpc.status.UNIMPLEMENTED }),
    });
    const credentials = new RenewableServerCredentials(tls);
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(`127.0.0.1:${this.ports.get(id) ?? 0}`, credentials.credentials, (error, bound) =>
        error === null ? resolve(bound) : reject(error),
      ),
    );
    this.ports.set(id, port);
    manager = await Manager.open<number>({
      dataDir: join(this.root, `m${id}`, 'data'),
      id,
      keyFile: join(this.root, `m${id}`, 'key'),
      peers: transport,
      inner: machine,
      random: new SeededRandom(id),
      bootstrapVoters: this.ids,
      logger,
      tickIntervalMs: 50,
      snapshotEveryEntries: 200,
      snapshotTailEntries: 20,
    });
    const member: GrpcMember = { id, manager, machine, transport, server, port, tls };
    this.members.set(id, member);
    return member;
  }

  async stop(id: NodeId): Promise<void> {
    const member = this.members.get(id);
    if (member === undefined) return;
    this.members.delete(id);
    member.transport.close();
    member.server.forceShutdown();
    await member.manager.stop();
  }

  async leader(timeoutMs = 15_000): Promise<GrpcMember> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      for (const member of this.members.values()) {
        const status = member.manager.status();
        if (status.raft?.role === 'leader' && (status.keys?.activeTerm ?? 0) > 0) return member;
      }
      if (Date.now() > deadline) throw new Error('no leader');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  async put(key: string, value: string): Promise<void> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      try {
        await operator((await this.leader()).manager).propose('kv.put', putCommand(key, value));
        return;
      } catch (error) {
        if (Date.now() > deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
  }

  async converged(timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const statuses = [...this.members.values()].map((m) => m.manager.status().raft);
      const commit = Math.max(...statuses.map((s) => s?.commit ?? 0));
      if (statuses.every((s) => s !== null && s.applied === commit)) return;
      if (Date.now() > deadline)
        throw new Error(`not converged: ${statuses.map((s) => `${s?.applied}/${s?.commit}`).join(' ')}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  async destroy(): Promise<void> {
    for (const id of [...this.members.keys()]) await this.stop(id);
    rmSync(this.root, { recursive: true, force: true });
  }
}
