/**
 * The two systems the cluster benchmark drives, behind one interface: a three-manager Coffer
 * cluster (coffer init/join processes, mutual TLS, fsync on) and a three-member etcd cluster
 * (Debian's etcd-server, client and peer TLS with client certificates, its default fsync). Both
 * on 127.0.0.1, both driven by Node gRPC clients (CofferClient; the etcd3 package), one client
 * per member so requests go where the benchmark says.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as https from 'node:https';
import { join } from 'node:path';
import { noop } from 'cockatiel';
import { Etcd3 } from 'etcd3';
import { CofferClient } from '../../src/client/client.ts';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import { PUT_BATCH_ITEMS_MAX } from '../../src/state/limits.ts';
import { ProcessCluster } from '../../test/chaos/process-cluster.ts';
import { eventually, freePort } from '../../test/processes/processes.ts';

/** The project's root (where package.json is). */
const ROOT = join(import.meta.dirname, '../..');

export interface Target {
  readonly name: 'coffer' | 'etcd';
  readonly size: number;
  /** A write at member `at` (writes are forwarded to the leader by either system). */
  put(at: number, key: string, value: Buffer): Promise<void>;
  get(at: number, key: string, stale: boolean): Promise<void>;
  /** A write through a client that knows every member (for failover: it finds the new leader). */
  putAnywhere(key: string, value: Buffer, deadlineMs: number): Promise<void>;
  leader(): Promise<number>;
  pid(at: number): number | undefined;
  kill(at: number): Promise<void>;
  restart(at: number): void;
  /** Until member `at` answers a linearizable read (polled every 20 ms, a new connection each try). */
  ready(at: number, timeoutMs: number): Promise<void>;
  applied(at: number): Promise<number>;
  /** Until member `at` has applied `index` (polled as `ready` is). */
  caughtUp(at: number, index: number, timeoutMs: number): Promise<void>;
  /** Snapshots member `at` has sent to other members since it started. */
  snapshotsSent(at: number): Promise<number>;
  /** Member `at`'s data directory. */
  dataDir(at: number): string;
  /**
   * A new member joins: returns its index and when its process was started (performance.now());
   * catching up is the caller's to time.
   */
  addMember(): Promise<{ at: number; startedAt: number }>;
  /**
   * Member `at` leaves the cluster (removed through the leader, then stopped and its data wiped);
   * the next `addMember` joins a new member in its place, so each catch-up starts from the same
   * number of members.
   */
  removeMember(at: number): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Polls a member through a connection of its own, opened again after each failure, every 20 ms:
 * a client that stays open while the member is down backs off (grpc-js reconnects after 1 s, then
 * longer), which would be added to the restart and catch-up times measured.
 */
async function pollMember<C>(
  what: string,
  timeoutMs: number,
  open: () => C,
  close: (client: C) => void,
  done: (client: C) => Promise<boolean>,
): Promise<void> {
  let client: C | null = null;
  try {
    await eventually(
      what,
      timeoutMs,
      async () => {
        client ??= open();
        try {
          return (await done(client)) ? true : undefined;
        } catch (error) {
          close(client);
          client = null;
          throw error;
        }
      },
      20,
    );
  } finally {
    if (client !== null) close(client);
  }
}

/** `npm run build` in a checkout of Coffer (this one, or a worktree of another commit). */
export function buildTree(dir: string): void {
  const built = spawnSync('npm', ['run', '--silent', 'build'], { cwd: dir, stdio: 'inherit' });
  if (built.status !== 0) throw new Error(`npm run build failed in ${dir}: the managers would run stale code`);
}

export class CofferTarget implements Target {
  readonly name = 'coffer' as const;
  readonly #clients: CofferClient[];
  readonly #anywhere: CofferClient;
  /** The slot of a member removed, which the next added member takes. */
  #removed: number | null = null;

  private constructor(readonly cluster: ProcessCluster) {
    this.#clients = cluster.managers.map((m) => cluster.client(m, 10_000));
    this.#anywhere = new CofferClient({
      ...cluster.adminPem(),
      addresses: cluster.managers.map((m) => m.address),
      deadlineMs: 1000,
    });
  }

  /**
   * Three (or `size`) managers of this tree's build, which this builds first; or, with `cli`, of
   * the compiled CLI given (another build, made by the caller: the pair benchmark's base).
   */
  static async start(root: string, size: number, options: { readonly cli?: string } = {}): Promise<CofferTarget> {
    mkdirSync(root, { recursive: true });
    // As etcd runs at --log-level error: no line per request (the managers' logs would otherwise
    // flow through this process, which is also the load generator).
    process.env['COFFER_LOG_LEVEL'] ??= 'warn';
    // Managers run compiled JavaScript, as the coffer bin and the image do (tsx is for development).
    if (options.cli === undefined) buildTree(ROOT);
    return new CofferTarget(
      await ProcessCluster.start(root, size, {
        snapshotEvery: 10_000,
        compiled: true,
        ...(options.cli === undefined ? {} : { cli: options.cli }),
      }),
    );
  }

  get size(): number {
    return this.cluster.managers.length;
  }

  async put(at: number, key: string, value: Buffer): Promise<void> {
    await this.#clients[at]!.put(key, value);
  }

  /** Writes `count` secrets `bench/k0`, `bench/k1`, ... (all `value`) through `at`, in full PutBatch requests. */
  async putNumbered(at: number, count: number, value: Buffer): Promise<void> {
    for (let k = 0; k < count; k += PUT_BATCH_ITEMS_MAX)
      await this.putBatch(
        at,
        Array.from({ length: Math.min(PUT_BATCH_ITEMS_MAX, count - k) }, (_, j) => ({
          name: `bench/k${k + j}`,
          value,
        })),
      );
  }

  /** A batch of puts as one write (Secrets.PutBatch), as `coffer secret import` sends them. */
  async putBatch(at: number, items: ReadonlyArray<{ name: string; value: Buffer }>): Promise<void> {
    await this.#clients[at]!.putBatch(items);
  }

  async get(at: number, key: string, stale: boolean): Promise<void> {
    await this.#clients[at]!.get(key, { stale });
  }

  async putAnywhere(key: string, value: Buffer, deadlineMs: number): Promise<void> {
    const client = new CofferClient({
      ...this.cluster.adminPem(),
      addresses: this.cluster.managers.map((m) => m.address),
      deadlineMs,
    });
    try {
      await client.put(key, value);
    } finally {
      client.close();
    }
  }

  async leader(): Promise<number> {
    const leader = await eventually('a Coffer leader', 30_000, async () => (await this.cluster.leader()) ?? undefined);
    return this.cluster.managers.indexOf(leader);
  }

  pid(at: number): number | undefined {
    return this.cluster.procs.pid(this.cluster.managers[at]!.name);
  }

  kill(at: number): Promise<void> {
    return this.cluster.kill(this.cluster.managers[at]!);
  }

  restart(at: number): void {
    this.cluster.restart(this.cluster.managers[at]!);
  }

  #poll(at: number, what: string, timeoutMs: number, done: (client: CofferClient) => Promise<boolean>): Promise<void> {
    const manager = this.cluster.managers[at]!;
    return pollMember(
      what,
      timeoutMs,
      () => this.cluster.client(manager, 1000),
      (client) => client.close(),
      done,
    );
  }

  ready(at: number, timeoutMs: number): Promise<void> {
    return this.#poll(at, `Coffer manager ${at + 1} to answer`, timeoutMs, (client) =>
      client
        .get('bench/ready')
        .then(() => true)
        .catch((e: Error) => (/does not exist/.test(e.message) ? true : Promise.reject(e))),
    );
  }

  async applied(at: number): Promise<number> {
    return (await this.cluster.status(this.cluster.managers[at]!)).appliedIndex;
  }

  caughtUp(at: number, index: number, timeoutMs: number): Promise<void> {
    return this.#poll(
      at,
      `Coffer manager ${at + 1} to apply index ${index}`,
      timeoutMs,
      async (client) => Number((await client.clusterStatus())['appliedIndex']) >= index,
    );
  }

  async snapshotsSent(at: number): Promise<number> {
    return Number((await this.cluster.status(this.cluster.managers[at]!)).snapshotsSent);
  }

  dataDir(at: number): string {
    return this.cluster.managers[at]!.data;
  }

  async addMember(): Promise<{ at: number; startedAt: number }> {
    const leader = this.cluster.managers[await this.leader()]!;
    const removed = this.#removed;
    if (removed !== null) {
      // A new manager (new id, empty data directory) joins at the removed one's address.
      this.#removed = null;
      const manager = this.cluster.managers[removed]!;
      const startedAt = performance.now();
      this.cluster.rejoin(manager, leader);
      this.#clients[removed] = this.cluster.client(manager, 10_000);
      return { at: removed, startedAt };
    }
    const startedAt = performance.now();
    const added = await this.cluster.add(leader);
    this.#clients.push(this.cluster.client(added, 10_000));
    return { at: this.cluster.managers.length - 1, startedAt };
  }

  async removeMember(at: number): Promise<void> {
    const manager = this.cluster.managers[at]!;
    const { nodeId } = await this.cluster.status(manager);
    const admin = this.cluster.client(this.cluster.managers[await this.leader()]!, 10_000);
    try {
      await admin.removeMember(nodeId);
    } finally {
      admin.close();
    }
    // Stopped and wiped here, as etcd's member is, not in the next catch-up's time.
    await this.cluster.retire(manager);
    this.#clients[at]!.close();
    this.#removed = at;
  }

  async stop(): Promise<void> {
    for (const c of this.#clients) c.close();
    this.#anywhere.close();
    await this.cluster.stop();
  }
}

/** Whether etcd is here; if not, installs Debian's etcd-server when root, or says how. */
export function ensureEtcd(): string {
  const found = spawnSync('etcd', ['--version'], { encoding: 'utf8' });
  if (found.status === 0) return found.stdout.split('\n')[0]!.trim();
  if (process.getuid?.() !== 0)
    throw new Error(
      'etcd is not installed: run `sudo apt-get install -y etcd-server` (Debian), then the benchmark again',
    );
  console.log("etcd is not installed: installing Debian's etcd-server with apt-get ...");
  spawnSync('apt-get', ['update'], { stdio: 'ignore' });
  const installed = spawnSync('apt-get', ['install', '-y', 'etcd-server'], {
    stdio: 'ignore',
    env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
  });
  if (installed.status !== 0)
    throw new Error('apt-get install etcd-server failed: install it by hand, then run the benchmark again');
  return spawnSync('etcd', ['--version'], { encoding: 'utf8' }).stdout.split('\n')[0]!.trim();
}

interface EtcdMember {
  readonly name: string;
  readonly clientUrl: string;
  readonly peerUrl: string;
  readonly dataDir: string;
  process: ChildProcess | null;
}

export class EtcdTarget implements Target {
  readonly name = 'etcd' as const;
  readonly #members: EtcdMember[];
  #args: (m: EtcdMember) => string[];
  readonly #credentials: { rootCertificate: Buffer; privateKey: Buffer; certChain: Buffer };
  readonly #clients: Etcd3[];
  readonly #logDir: string;
  /** The slot of a member removed, which the next added member takes. */
  #removed: number | null = null;
  #replacements = 0;

  private constructor(
    members: EtcdMember[],
    args: (m: EtcdMember) => string[],
    credentials: EtcdTarget['credentials'],
    logDir: string,
  ) {
    this.#members = members;
    this.#args = args;
    this.#credentials = credentials;
    this.#logDir = logDir;
    this.#clients = members.map((m) => this.#client([m.clientUrl], 10_000));
  }

  get credentials(): { rootCertificate: Buffer; privateKey: Buffer; certChain: Buffer } {
    return this.#credentials;
  }

  #client(hosts: string[], deadlineMs: number): Etcd3 {
    // No retries or circuit breakers in the client: the benchmark sees what the servers do.
    // Channelz off, as in CofferClient (MANAGER_CHANNEL_OPTIONS): the clients cost the same.
    return new Etcd3({
      hosts,
      credentials: this.#credentials,
      faultHandling: { host: () => noop, global: noop },
      grpcOptions: { 'grpc.enable_channelz': 0 },
      defaultCallOptions: () => ({ deadline: Date.now() + deadlineMs }),
    });
  }

  static async start(root: string, size: number): Promise<EtcdTarget> {
    const tls = join(root, 'tls');
    mkdirSync(tls, { recursive: true });
    const now = Date.now();
    const ca = createCa('etcd-bench', now);
    const server = issueCertificate(ca, {
      id: 'etcd',
      role: 'manager',
      clusterId: 'etcd-bench',
      nowMs: now,
      hosts: ['127.0.0.1'],
    });
    const client = issueCertificate(ca, { id: 'bench', role: 'client', clusterId: 'etcd-bench', nowMs: now });
    const file = (name: string, text: string): string => {
      writeFileSync(join(tls, name), text, { mode: 0o600 });
      return join(tls, name);
    };
    const caFile = file('ca.crt', ca.certPem);
    const certFile = file('server.crt', server.certPem);
    const keyFile = file('server.key', server.keyPem);
    const members: EtcdMember[] = [];
    for (let k = 0; k < size; k++) {
      members.push({
        name: `e${k + 1}`,
        clientUrl: `https://127.0.0.1:${await freePort()}`,
        peerUrl: `https://127.0.0.1:${await freePort()}`,
        dataDir: join(root, `e${k + 1}`),
        process: null,
      });
    }
    const initial = members.map((m) => `${m.name}=${m.peerUrl}`).join(',');
    const args = (m: EtcdMember): string[] => [
      '--name',
      m.name,
      '--data-dir',
      m.dataDir,
      '--listen-client-urls',
      m.clientUrl,
      '--advertise-client-urls',
      m.clientUrl,
      '--listen-peer-urls',
      m.peerUrl,
      '--initial-advertise-peer-urls',
      m.peerUrl,
      '--initial-cluster',
      initial,
      '--initial-cluster-state',
      'new',
      '--initial-cluster-token',
      'bench',
      '--cert-file',
      certFile,
      '--key-file',
      keyFile,
      '--client-cert-auth',
      '--trusted-ca-file',
      caFile,
      '--peer-cert-file',
      certFile,
      '--peer-key-file',
      keyFile,
      '--peer-client-cert-auth',
      '--peer-trusted-ca-file',
      caFile,
      '--logger',
      'zap',
      '--log-level',
      'error',
    ];
    const target = new EtcdTarget(
      members,
      args,
      {
        rootCertificate: Buffer.from(ca.certPem),
        privateKey: Buffer.from(client.keyPem),
        certChain: Buffer.from(client.certPem),
      },
      root,
    );
    for (let k = 0; k < size; k++) target.restart(k);
    await target.leader();
    return target;
  }

  get size(): number {
    return this.#members.length;
  }

  async put(at: number, key: string, value: Buffer): Promise<void> {
    await this.#clients[at]!.put(key).value(value).exec();
  }

  async get(at: number, key: string, stale: boolean): Promise<void> {
    await this.#clients[at]!.get(key).serializable(stale).buffer();
  }

  async putAnywhere(key: string, value: Buffer, deadlineMs: number): Promise<void> {
    const client = this.#client(
      this.#members.map((m) => m.clientUrl),
      deadlineMs,
    );
    try {
      await client.put(key).value(value).exec();
    } finally {
      client.close();
    }
  }

  async #status(at: number): Promise<{ memberId: string; leader: string; appliedIndex: number }> {
    const s = await this.#clients[at]!.maintenance.status();
    return {
      memberId: String(s.header.member_id),
      leader: String(s.leader),
      appliedIndex: Number(s.raftAppliedIndex),
    };
  }

  /** Puts in one transaction (no comparisons): one Raft entry, one fsync, for all of them. */
  async putMany(at: number, puts: ReadonlyArray<readonly [string, Buffer]>): Promise<void> {
    await this.#clients[at]!.kv.txn({
      success: puts.map(([key, value]) => ({ request_put: { key: Buffer.from(key), value } })),
    });
  }

  async leader(): Promise<number> {
    return eventually('an etcd leader', 30_000, async () => {
      for (let k = 0; k < this.#members.length; k++) {
        if (this.#members[k]!.process === null) continue;
        const s = await this.#status(k).catch(() => null);
        if (s !== null && s.leader !== '0' && s.leader === s.memberId) return k;
      }
      return undefined;
    });
  }

  pid(at: number): number | undefined {
    return this.#members[at]!.process?.pid;
  }

  async kill(at: number): Promise<void> {
    const child = this.#members[at]!.process;
    this.#members[at]!.process = null;
    if (child === null || child.exitCode !== null) return;
    const gone = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await gone;
  }

  restart(at: number): void {
    const m = this.#members[at]!;
    if (m.process !== null) return;
    const child = spawn('etcd', this.#args(m), { stdio: ['ignore', 'pipe', 'pipe'] });
    const log = createWriteStream(join(this.#logDir, `${m.name}.log`), { flags: 'a' });
    child.stdout.pipe(log);
    child.stderr.pipe(log);
    m.process = child;
  }

  #poll(at: number, what: string, timeoutMs: number, done: (client: Etcd3) => Promise<boolean>): Promise<void> {
    return pollMember(
      what,
      timeoutMs,
      () => this.#client([this.#members[at]!.clientUrl], 1000),
      (client) => client.close(),
      done,
    );
  }

  ready(at: number, timeoutMs: number): Promise<void> {
    // A get is linearizable unless asked to be serializable.
    return this.#poll(at, `etcd member ${at + 1} to answer`, timeoutMs, async (client) => {
      await client.get('bench/ready').buffer();
      return true;
    });
  }

  async applied(at: number): Promise<number> {
    return (await this.#status(at)).appliedIndex;
  }

  caughtUp(at: number, index: number, timeoutMs: number): Promise<void> {
    return this.#poll(
      at,
      `etcd member ${at + 1} to apply index ${index}`,
      timeoutMs,
      async (client) => Number((await client.maintenance.status()).raftAppliedIndex) >= index,
    );
  }

  /** From the member's Prometheus metrics (the counter appears once a snapshot was sent). */
  async snapshotsSent(at: number): Promise<number> {
    const text = await new Promise<string>((resolve, reject) => {
      const request = https.get(
        `${this.#members[at]!.clientUrl}/metrics`,
        { ca: this.#credentials.rootCertificate, cert: this.#credentials.certChain, key: this.#credentials.privateKey },
        (response) => {
          let body = '';
          response.setEncoding('utf8');
          response.on('data', (chunk: string) => (body += chunk));
          response.on('end', () => resolve(body));
        },
      );
      request.on('error', reject);
    });
    return text
      .split('\n')
      .filter((line) => line.startsWith('etcd_network_snapshot_send_success{'))
      .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(' ') + 1)), 0);
  }

  dataDir(at: number): string {
    return this.#members[at]!.dataDir;
  }

  async addMember(): Promise<{ at: number; startedAt: number }> {
    // A removed member's slot is taken again (a new name, ports and data directory).
    const k = this.#removed ?? this.#members.length;
    const replacing = this.#removed !== null;
    this.#removed = null;
    const name = replacing ? `e${k + 1}r${++this.#replacements}` : `e${k + 1}`;
    const m: EtcdMember = {
      name,
      clientUrl: `https://127.0.0.1:${await freePort()}`,
      peerUrl: `https://127.0.0.1:${await freePort()}`,
      dataDir: join(this.#logDir, name),
      process: null,
    };
    // etcd refuses a new member ("unhealthy cluster") until every member has been connected for
    // a few seconds (strict reconfiguration check): a member restarted just before must settle.
    await eventually('etcd to accept a new member', 60_000, async () => {
      try {
        await this.#clients[await this.leader()]!.cluster.memberAdd({ peerURLs: [m.peerUrl] });
        return true;
      } catch (error) {
        if (/unhealthy cluster/.test(String(error))) return undefined;
        throw error;
      }
    });
    if (replacing) this.#members[k] = m;
    else this.#members.push(m);
    const base = this.#args;
    const initial = this.#members.map((x) => `${x.name}=${x.peerUrl}`).join(',');
    // The new member starts with the whole membership and joins an existing cluster.
    this.#args = (x) => {
      const args = base(x);
      if (x !== m) return args;
      args[args.indexOf('--initial-cluster') + 1] = initial;
      args[args.indexOf('--initial-cluster-state') + 1] = 'existing';
      return args;
    };
    if (replacing) this.#clients[k] = this.#client([m.clientUrl], 10_000);
    else this.#clients.push(this.#client([m.clientUrl], 10_000));
    const startedAt = performance.now();
    this.restart(k);
    return { at: k, startedAt };
  }

  async removeMember(at: number): Promise<void> {
    const m = this.#members[at]!;
    const client = this.#clients[await this.leader()]!;
    const listed = await client.cluster.memberList({});
    const id = listed.members.find((x) => x.peerURLs.includes(m.peerUrl))?.ID;
    if (id === undefined) throw new Error(`etcd member ${m.name} is not in the member list`);
    // The same strict reconfiguration check as for an add: retried while etcd calls it unhealthy.
    await eventually(`etcd to remove member ${m.name}`, 60_000, async () => {
      try {
        await client.cluster.memberRemove({ ID: id });
        return true;
      } catch (error) {
        if (/unhealthy cluster/.test(String(error))) return undefined;
        throw error;
      }
    });
    await this.kill(at);
    this.#clients[at]!.close();
    rmSync(m.dataDir, { recursive: true, force: true });
    this.#removed = at;
  }

  async stop(): Promise<void> {
    for (const c of this.#clients) c.close();
    for (let k = 0; k < this.#members.length; k++) await this.kill(k);
  }

  log(at: number): string {
    try {
      return readFileSync(join(this.#logDir, `${this.#members[at]!.name}.log`), 'utf8');
    } catch {
      return '';
    }
  }
}
