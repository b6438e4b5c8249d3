/**
 * The floor under a replicated write in Node on this machine: three bare processes that do only
 * what any Raft-replicated store must do per write, with the same grpc-js, TLS and load as the
 * cluster benchmark. A leader takes each write over gRPC, gathers the writes that arrive together
 * into one batch, sends it to both followers over a grpc-js stream and appends it to its own file
 * with fdatasync; each follower appends with fdatasync and acknowledges; the leader answers the
 * batch once its own copy and one follower's are durable. No Raft core, terms, elections or log
 * compaction: a floor, not a store.
 *
 * Three levels, each adding to the one before:
 * - `bare`: the replication above;
 * - `state`: every member also writes each value into LevelDB (the applied state, as etcd writes
 *   its bbolt file and Coffer its state store), unsynced;
 * - `sealed`: what Coffer promises beyond etcd: the leader seals each value with AES-256-GCM
 *   (one cipher object per value) and every member opens it before storing it (Coffer's log and
 *   store are ciphertext), and the leader appends an audit line per write to a file open with
 *   O_DSYNC beside its log append (every request's audit record durable by its reply).
 *
 *   node --import tsx scripts/bench/replication-floor.ts member   (a member; the benchmark forks three)
 */
import * as grpc from '@grpc/grpc-js';
import { Level } from 'level';
import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants, fdatasync, mkdtempSync, openSync, rmSync, write } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { open, seal } from '../../src/crypto/aead.ts';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import { MANAGER_CHANNEL_OPTIONS } from '../../src/transport/tls.ts';
import { measureFloor, type Material } from './floor.ts';
import { fmt, table } from './format.ts';
import { runLoad, type LoadResult } from './load.ts';

export type FloorLevel = 'bare' | 'state' | 'sealed';
export const FLOOR_LEVELS: readonly FloorLevel[] = ['bare', 'state', 'sealed'];
/** How the tables name each level. */
export const FLOOR_LEVEL_NAMES: Readonly<Record<FloorLevel, string>> = {
  bare: 'replicated, fdatasynced',
  state: '+ state in LevelDB',
  sealed: '+ sealed, audited',
};

const identity = (b: Buffer): Buffer => b;
const SERVICE: grpc.ServiceDefinition = {
  write: {
    path: '/bench.Floor/Write',
    requestStream: false,
    responseStream: false,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
  append: {
    path: '/bench.Floor/Append',
    requestStream: true,
    responseStream: true,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  },
};

interface MemberSetup {
  readonly material: Material;
  readonly level: FloorLevel;
  readonly dir: string;
  /** Empty for a follower; the followers' ports for the leader. */
  readonly followerPorts: readonly number[];
}

/** The values' key: fixed, as the keyring's data key would be for a term. */
const DATA_KEY = Buffer.alloc(32, 9);
const AAD = Buffer.from('bench/k');
const KEYS = 1000;

/** `length (4) | crc32 (4) | bytes`, as a log record. */
function frameRecords(records: readonly Buffer[]): Buffer {
  let bytes = 0;
  for (const r of records) bytes += 8 + r.byteLength;
  const out = Buffer.allocUnsafe(bytes);
  let at = 0;
  for (const r of records) {
    out.writeUInt32BE(r.byteLength, at);
    out.writeUInt32BE(crc32(r), at + 4);
    out.set(r, at + 8);
    at += 8 + r.byteLength;
  }
  return out;
}

function recordsOf(framed: Buffer): Buffer[] {
  const records: Buffer[] = [];
  for (let at = 0; at < framed.byteLength; ) {
    const length = framed.readUInt32BE(at);
    records.push(framed.subarray(at + 8, at + 8 + length));
    at += 8 + length;
  }
  return records;
}

const appendDurably = (fd: number, bytes: Buffer): Promise<void> =>
  new Promise((resolve, reject) =>
    write(fd, bytes, 0, bytes.byteLength, null, (error) => {
      if (error !== null) return reject(error);
      fdatasync(fd, (syncError) => (syncError === null ? resolve() : reject(syncError)));
    }),
  );

/** One write of bytes to a file open with O_DSYNC (durable when it returns). */
const writeDurably = (fd: number, bytes: Buffer): Promise<void> =>
  new Promise((resolve, reject) =>
    write(fd, bytes, 0, bytes.byteLength, null, (error) => (error === null ? resolve() : reject(error))),
  );

/** A member's local work on a batch: what it stores, and (sealed) opens first. */
class LocalStore {
  readonly #logFd: number;
  readonly #state: Level<string, Buffer> | null;
  readonly #sealed: boolean;

  constructor(dir: string, level: FloorLevel) {
    this.#logFd = openSync(join(dir, 'log'), 'a');
    this.#state = level === 'bare' ? null : new Level(join(dir, 'state'), { valueEncoding: 'buffer' });
    this.#sealed = level === 'sealed';
  }

  async open(): Promise<void> {
    await this.#state?.open();
  }

  async store(framed: Buffer): Promise<void> {
    const appended = appendDurably(this.#logFd, framed);
    if (this.#state !== null) {
      const batch = this.#state.batch();
      for (const record of recordsOf(framed)) {
        const value = this.#sealed ? open(DATA_KEY, record, AAD, 'a floor value') : record;
        batch.put(`k${Math.floor(Math.random() * KEYS)}`, this.#sealed ? seal(DATA_KEY, value, AAD) : value);
      }
      await batch.write({ sync: false });
    }
    await appended;
  }
}

async function follower(setup: MemberSetup, server: grpc.Server): Promise<void> {
  const local = new LocalStore(setup.dir, setup.level);
  await local.open();
  server.addService(SERVICE, {
    write: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) =>
      callback({ code: grpc.status.FAILED_PRECONDITION, details: 'not the leader' }),
    append: (stream: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      // Frames that arrive while a store runs are stored together next, as a Raft follower's Ready.
      const queued: Buffer[] = [];
      let busy = false;
      const drain = async (): Promise<void> => {
        busy = true;
        while (queued.length > 0) {
          const frames = queued.splice(0);
          const last = frames[frames.length - 1]!.readUInt32BE(0);
          await local.store(Buffer.concat(frames.map((f) => f.subarray(4))));
          const ack = Buffer.allocUnsafe(4);
          ack.writeUInt32BE(last, 0);
          stream.write(ack);
        }
        busy = false;
      };
      stream.on('data', (frame: Buffer) => {
        queued.push(frame);
        if (!busy) void drain();
      });
      stream.on('end', () => stream.end());
    },
  });
}

async function leader(setup: MemberSetup, server: grpc.Server): Promise<void> {
  const local = new LocalStore(setup.dir, setup.level);
  await local.open();
  const auditFd =
    setup.level === 'sealed'
      ? openSync(
          join(setup.dir, 'audit'),
          constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_DSYNC,
        )
      : null;
  const credentials = grpc.credentials.createSsl(
    Buffer.from(setup.material.caPem),
    Buffer.from(setup.material.keyPem),
    Buffer.from(setup.material.certPem),
    { checkServerIdentity: () => undefined },
  );
  const Client = grpc.makeGenericClientConstructor(SERVICE, 'Floor');
  const acked = setup.followerPorts.map(() => 0);
  const streams = setup.followerPorts.map((port, k) => {
    const client = new Client(`127.0.0.1:${port}`, credentials, MANAGER_CHANNEL_OPTIONS) as unknown as {
      append(): grpc.ClientDuplexStream<Buffer, Buffer>;
    };
    const stream = client.append();
    stream.on('data', (ack: Buffer) => {
      acked[k] = ack.readUInt32BE(0);
      answer();
    });
    return stream;
  });

  interface Batch {
    readonly seq: number;
    readonly callbacks: Array<grpc.sendUnaryData<Buffer>>;
    stored: boolean;
  }
  const waiting: Batch[] = [];
  let pending: Array<{ value: Buffer; callback: grpc.sendUnaryData<Buffer> }> = [];
  let seq = 0;
  let busy = false;
  let scheduled = false;
  const empty = Buffer.alloc(0);
  function answer(): void {
    const followerDurable = Math.max(...acked);
    while (waiting.length > 0 && waiting[0]!.stored && waiting[0]!.seq <= followerDurable) {
      for (const callback of waiting.shift()!.callbacks) callback(null, empty);
    }
  }
  // One batch stored at a time; writes that come meanwhile make the next batch (group commit).
  async function flush(): Promise<void> {
    scheduled = false;
    if (busy || pending.length === 0) return;
    busy = true;
    const taken = pending;
    pending = [];
    const batch: Batch = { seq: ++seq, callbacks: taken.map((p) => p.callback), stored: false };
    waiting.push(batch);
    const records = taken.map((p) => (setup.level === 'sealed' ? seal(DATA_KEY, p.value, AAD) : p.value));
    const framed = frameRecords(records);
    const head = Buffer.allocUnsafe(4);
    head.writeUInt32BE(batch.seq, 0);
    const frame = Buffer.concat([head, framed]);
    for (const stream of streams) stream.write(frame);
    const audited =
      auditFd === null
        ? null
        : writeDurably(
            auditFd,
            Buffer.from(
              taken
                .map(() => `${JSON.stringify({ at: Date.now(), who: 'bench', op: 'put', path: 'bench/k' })}\n`)
                .join(''),
            ),
          );
    await local.store(framed);
    await audited;
    batch.stored = true;
    answer();
    busy = false;
    if (pending.length > 0) void flush();
  }
  server.addService(SERVICE, {
    write: (call: grpc.ServerUnaryCall<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
      pending.push({ value: call.request, callback });
      if (!scheduled && !busy) {
        scheduled = true;
        setImmediate(() => void flush());
      }
    },
    append: (stream: grpc.ServerDuplexStream<Buffer, Buffer>) => stream.end(),
  });
}

function member(setup: MemberSetup): void {
  const server = new grpc.Server({ 'grpc.enable_channelz': 0 });
  const start = setup.followerPorts.length === 0 ? follower(setup, server) : leader(setup, server);
  const credentials = grpc.ServerCredentials.createSsl(
    Buffer.from(setup.material.caPem),
    [{ private_key: Buffer.from(setup.material.keyPem), cert_chain: Buffer.from(setup.material.certPem) }],
    true,
  );
  void start.then(() =>
    server.bindAsync('127.0.0.1:0', credentials, (error, port) => {
      if (error !== null) throw error;
      process.send!(port);
    }),
  );
}

function spawnMember(setup: MemberSetup): { child: ChildProcess; port: Promise<number> } {
  const child = fork(fileURLToPath(import.meta.url), ['member'], {
    execArgv: ['--import', 'tsx'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const port = new Promise<number>((resolve, reject) => {
    child.once('message', (m) => resolve(m as number));
    child.once('exit', (code) => reject(new Error(`a floor member exited (${code})`)));
    child.send(setup);
  });
  return { child, port };
}

export interface ReplicationFloorResult {
  readonly level: FloorLevel;
  readonly inflight: number;
  readonly result: LoadResult;
}

/** Writes/s, latency and CPU per write (summed over the three members) at each level and concurrency. */
export async function measureReplicationFloor(options: {
  seconds: number;
  warmUpSeconds: number;
  inflights: readonly number[];
  bytes: number;
  levels?: readonly FloorLevel[];
}): Promise<ReplicationFloorResult[]> {
  const nowMs = Date.now();
  const ca = createCa('bench-floor', nowMs);
  const issued = issueCertificate(ca, {
    id: 'floor',
    role: 'manager',
    clusterId: 'bench-floor',
    nowMs,
    hosts: ['127.0.0.1'],
  });
  const material: Material = { caPem: ca.certPem, certPem: issued.certPem, keyPem: issued.keyPem };
  const client = issueCertificate(ca, { id: 'bench', role: 'client', clusterId: 'bench-floor', nowMs });
  const results: ReplicationFloorResult[] = [];
  for (const level of options.levels ?? FLOOR_LEVELS) {
    const root = mkdtempSync(join(tmpdir(), 'coffer-floor-'));
    const children: ChildProcess[] = [];
    try {
      const followers = [0, 1].map((k) => {
        const dir = mkdtempSync(join(root, `f${k}-`));
        return spawnMember({ material, level, dir, followerPorts: [] });
      });
      children.push(...followers.map((f) => f.child));
      const followerPorts = await Promise.all(followers.map((f) => f.port));
      const lead = spawnMember({ material, level, dir: mkdtempSync(join(root, 'l-')), followerPorts });
      children.push(lead.child);
      const port = await lead.port;
      const Client = grpc.makeGenericClientConstructor(SERVICE, 'Floor');
      const stub = new Client(
        `127.0.0.1:${port}`,
        grpc.credentials.createSsl(Buffer.from(ca.certPem), Buffer.from(client.keyPem), Buffer.from(client.certPem), {
          checkServerIdentity: () => undefined,
        }),
        MANAGER_CHANNEL_OPTIONS,
      ) as unknown as {
        write(request: Buffer, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null) => void): void;
        close(): void;
      };
      const payload = randomBytes(options.bytes);
      const op = (): Promise<void> =>
        new Promise((resolve, reject) =>
          stub.write(payload, { deadline: Date.now() + 10_000 }, (error) =>
            error === null ? resolve() : reject(error),
          ),
        );
      const pids = () => children.map((c) => c.pid);
      await runLoad({ inflight: 64, seconds: options.warmUpSeconds, op, pids });
      for (const inflight of options.inflights)
        results.push({ level, inflight, result: await runLoad({ inflight, seconds: options.seconds, op, pids }) });
      stub.close();
    } finally {
      for (const child of children) child.kill('SIGKILL');
      rmSync(root, { recursive: true, force: true });
    }
  }
  return results;
}

if (process.argv[2] === 'member') process.once('message', (setup) => member(setup as MemberSetup));

/** `npm run bench -- floor`: both floors, alone (a minute), to re-check them without the clusters. */
export async function benchFloor(): Promise<void> {
  const seconds = Number(process.env['BENCH_SECONDS'] ?? 5);
  const echo = await measureFloor({ seconds, inflights: [1, 64], bytes: 256 });
  const replicated = await measureReplicationFloor({ seconds, warmUpSeconds: 10, inflights: [1, 64, 256], bytes: 256 });
  const row = (name: string, r: LoadResult): string[] => [
    name,
    fmt(r.opsPerSecond),
    fmt(r.p50Ms, 2),
    fmt(r.p99Ms, 2),
    fmt((r.serverCpuSeconds / r.ops) * 1000, 3),
  ];
  table(
    `The floors on this machine (256 B, ${seconds} s each; server CPU summed over the server processes)`,
    ['floor, in flight', 'requests/s', 'p50 ms', 'p99 ms', 'server CPU s per 1,000'],
    [
      ...echo.map(({ inflight, result }) => row(`empty grpc-js echo, ${inflight}`, result)),
      ...replicated.map(({ level, inflight, result }) => row(`${FLOOR_LEVEL_NAMES[level]}, ${inflight}`, result)),
    ],
  );
}
