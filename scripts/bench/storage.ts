/**
 * Storage benchmark: what durability costs on this disk.
 *   - the raw fdatasync rate of the disk, measured in the same run (the ceiling for synced writes);
 *   - LevelStorage: synced Readys/s and entries/s with 1, 10 and 100 entries per Ready;
 *   - group commit: 64 concurrent proposers on a single-voter Replica over LevelStorage;
 *   - the same through a Manager: every command sealed by the barrier before it is proposed;
 *   - AES-256-GCM cost of sealing a 256 B and a 4 KiB command with the keyring.
 * Prints tables and ratios; nothing is asserted (tests assert behaviour, benchmarks measure).
 */
import { closeSync, fdatasyncSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Keyring } from '../../src/crypto/keyring.ts';
import { Manager } from '../../src/manager/manager.ts';
import { createLogger } from '../../src/util/logger.ts';
import { Replica, type StateMachine } from '../../src/replica/replica.ts';
import type { Entry } from '../../src/raft/types.ts';
import { LevelStorage } from '../../src/storage/level-storage.ts';
import { SeededRandom } from '../../src/util/prng.ts';
import { fmt, table } from './format.ts';
import { operator } from '../../test/manager/operator.ts';

const SECONDS = Number(process.env['BENCH_SECONDS'] ?? 3);

function rawFdatasyncPerSecond(dir: string): number {
  const fd = openSync(join(dir, 'fsync.bin'), 'w');
  const block = randomBytes(4096);
  const end = performance.now() + SECONDS * 1000;
  let n = 0;
  while (performance.now() < end) {
    writeSync(fd, block);
    fdatasyncSync(fd);
    n++;
  }
  closeSync(fd);
  return n / SECONDS;
}

async function levelBatches(dir: string, perBatch: number): Promise<{ batches: number; entries: number }> {
  const storage = await LevelStorage.open(join(dir, `level-${perBatch}`));
  await storage.load();
  const payload = randomBytes(256);
  let index = 0;
  let batches = 0;
  const end = performance.now() + SECONDS * 1000;
  while (performance.now() < end) {
    const entries: Entry[] = [];
    for (let k = 0; k < perBatch; k++) entries.push({ kind: 'normal', index: ++index, term: 1, data: payload });
    await storage.save({ hardState: { term: 1, vote: 1, commit: index }, entries, snapshot: null });
    batches++;
  }
  await storage.close();
  return { batches: batches / SECONDS, entries: index / SECONDS };
}

class CountingMachine implements StateMachine<number> {
  applied = 0;
  apply(): number {
    return ++this.applied;
  }
  snapshot(): Uint8Array {
    return Buffer.from(String(this.applied));
  }
  restore(data: Uint8Array): void {
    this.applied = Number(Buffer.from(data).toString());
  }
}

async function groupCommit(
  dir: string,
  proposers: number,
): Promise<{ writes: number; perSync: number; p50: number; p99: number }> {
  const storage = await LevelStorage.open(join(dir, `replica-${proposers}`));
  const replica = await Replica.start({
    id: 1,
    storage,
    stateMachine: new CountingMachine(),
    peers: { send: () => undefined },
    random: new SeededRandom(1),
    bootstrapVoters: [1],
  });
  await replica.settled();
  replica.campaign();
  await replica.settled();
  const payload = randomBytes(256);
  const syncsBefore = replica.stats.syncs;
  const entriesBefore = replica.stats.entriesPersisted;
  const measured = await measureConcurrent(proposers, () => replica.propose(payload));
  const syncs = replica.stats.syncs - syncsBefore;
  const entries = replica.stats.entriesPersisted - entriesBefore;
  await replica.stop();
  await storage.close();
  return { writes: measured.perSecond, perSync: entries / Math.max(1, syncs), p50: measured.p50, p99: measured.p99 };
}

/** Group commit through a one-manager cluster: seal (barrier) -> propose -> sync -> apply (decrypt). */
async function managerWrites(dir: string, proposers: number): Promise<{ writes: number; p50: number; p99: number }> {
  const dataDir = join(dir, `manager-${proposers}`);
  await Manager.init(dataDir, { keyFile: join(dir, `manager-${proposers}.key`) });
  let applied = 0;
  const manager = await Manager.open<number>({
    dataDir,
    id: 1,
    keyFile: join(dir, `manager-${proposers}.key`),
    peers: { send: () => undefined },
    inner: { apply: () => ++applied, snapshot: () => Buffer.alloc(8), restore: () => undefined },
    random: new SeededRandom(1),
    bootstrapVoters: [1],
    logger: createLogger({ level: 'silent' }),
    tickIntervalMs: 10,
  });
  while (manager.status().raft?.role !== 'leader' || (manager.status().keys?.activeTerm ?? 0) === 0)
    await new Promise((r) => setTimeout(r, 5));
  const payload = randomBytes(256);
  const measured = await measureConcurrent(proposers, () => operator(manager).propose('bench.put', payload));
  await manager.stop();
  return { writes: measured.perSecond, p50: measured.p50, p99: measured.p99 };
}

/** Runs `proposers` loops of `operation` for SECONDS; operations per second and latency percentiles (ms). */
async function measureConcurrent(
  proposers: number,
  operation: () => Promise<unknown>,
): Promise<{ perSecond: number; p50: number; p99: number }> {
  const latencies: number[] = [];
  const end = performance.now() + SECONDS * 1000;
  await Promise.all(
    Array.from({ length: proposers }, async () => {
      while (performance.now() < end) {
        const t0 = performance.now();
        await operation();
        latencies.push(performance.now() - t0);
      }
    }),
  );
  latencies.sort((a, b) => a - b);
  const at = (q: number): number => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]!;
  return { perSecond: latencies.length / SECONDS, p50: at(0.5), p99: at(0.99) };
}

function sealCost(bytes: number): { microseconds: number; perSecond: number } {
  const keyring = Keyring.create('bench', 0);
  const plaintext = randomBytes(bytes);
  for (let k = 0; k < 2000; k++) keyring.decrypt('command', keyring.encrypt('command', plaintext));
  const n = 50_000;
  const t0 = performance.now();
  for (let k = 0; k < n; k++) keyring.encrypt('command', plaintext);
  const ms = performance.now() - t0;
  return { microseconds: (ms * 1000) / n, perSecond: n / (ms / 1000) };
}

export async function benchStorage(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'coffer-bench-storage-'));
  try {
    console.log(`storage benchmark: ${SECONDS} s per measurement (BENCH_SECONDS to change), directory ${dir}`);
    const fsync = rawFdatasyncPerSecond(dir);
    const rows: string[][] = [['raw write+fdatasync (4 KiB)', fmt(fsync), fmt(fsync), '1.00']];
    for (const perBatch of [1, 10, 100]) {
      const r = await levelBatches(dir, perBatch);
      rows.push([
        `LevelStorage, ${perBatch} entr${perBatch === 1 ? 'y' : 'ies'}/Ready`,
        fmt(r.batches),
        fmt(r.entries),
        (r.batches / fsync).toFixed(2),
      ]);
    }
    table('Synced writes (256 B entries)', ['what', 'syncs/s', 'entries/s', 'syncs vs raw fdatasync'], rows);

    const group: string[][] = [];
    for (const proposers of [1, 64]) {
      const r = await groupCommit(dir, proposers);
      group.push([
        `${proposers} proposer${proposers === 1 ? '' : 's'}`,
        fmt(r.writes),
        fmt(r.perSync, 1),
        fmt(r.p50, 2),
        fmt(r.p99, 2),
        (r.writes / fsync).toFixed(2),
      ]);
    }
    table(
      'Group commit: single-voter Replica on LevelStorage, 256 B proposals',
      ['concurrency', 'writes/s', 'entries per sync', 'p50 ms', 'p99 ms', 'writes vs raw fdatasync'],
      group,
    );

    const sealed: string[][] = [];
    for (const proposers of [1, 64]) {
      const r = await managerWrites(dir, proposers);
      const plain = Number(group[proposers === 1 ? 0 : 1]![1]!.replaceAll(',', ''));
      sealed.push([
        `${proposers} proposer${proposers === 1 ? '' : 's'}`,
        fmt(r.writes),
        fmt(r.p50, 2),
        fmt(r.p99, 2),
        (r.writes / plain).toFixed(2),
      ]);
    }
    table(
      'Encrypted writes: one-manager cluster, each 256 B command sealed before proposing and opened when applied',
      ['concurrency', 'writes/s', 'p50 ms', 'p99 ms', 'vs unencrypted Replica'],
      sealed,
    );

    const seal = [256, 4096].map((bytes) => {
      const r = sealCost(bytes);
      return [`${bytes === 256 ? '256 B' : '4 KiB'} command`, fmt(r.microseconds, 2), fmt(r.perSecond)];
    });
    table(
      'Sealing a command (AES-256-GCM, random nonce, keyring term header)',
      ['size', 'µs each', 'per second'],
      seal,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
