import { status as grpcStatus } from '@grpc/grpc-js';
import { ClientError, CofferClient } from '../../src/client/client.ts';
import { SeededRandom, type Random } from '../../src/util/prng.ts';
import { probeExpiry, type ExpiryProbe } from './expiry.ts';
import type { Operation } from './linearizability.ts';
import type { ProcessCluster } from './process-cluster.ts';

/** The deadline of a roaming client's calls, ms (a pinned client's is 2,000). */
const ROAMING_DEADLINE_MS = 1000;

/** Errors after which a write certainly did not take effect (it never reached a leader). */
const NOT_APPLIED =
  /No connection established|no leader is known|is locked|refused until it can|not known to this cluster/;

/** Of the operations, the share on the growing key set (the rest go to the few hot keys). */
const GROWING_SHARE = 0.2;
/** Of those, the share that make a new key; the others pick one of the newest GROWING_RECENT. */
const GROWING_NEW_SHARE = 0.25;
const GROWING_RECENT = 8;

/**
 * Clients that write and read keys on random managers and record a history: invoke, then ok, fail
 * (certainly not applied) or info (unknown). A client that got info continues as a new process,
 * as in Jepsen: its earlier operation may still take effect at any time. Every client works on
 * every one of a few hot keys (so each has as many concurrent clients as there are clients), and
 * a fifth of the operations go to a growing set of keys. A CAS expects the last version its
 * client saw of the key; a refused CAS (CAS_MISMATCH) tells the version the key is at, which the
 * client expects next time, so CAS succeed and fail in a mix.
 *
 * Most clients pick a manager at random for each request (one client per manager, a single
 * address each), so requests meet every fault. `roaming` clients more are configured as an
 * application would be, with every manager's address: a manager that does not answer in time is
 * not asked first next time. They make no stale reads (those promise only a session on one
 * manager). Availability per fault is what they see as much as what the others do.
 */
export class Workload {
  readonly history: Operation[] = [];
  /** Expiry probes (expiry.ts): their own keys, checked apart from the history. */
  readonly expiryProbes: ExpiryProbe[] = [];
  readonly #names: string[];
  readonly #random: Random;
  readonly #clients: CofferClient[];
  readonly #keys: string[];
  /** The growing key set, oldest first. */
  readonly #grown: string[] = [];
  readonly #t0 = performance.now();
  #running = false;
  #loops: Array<Promise<void>> = [];
  #nextId = 0;
  #nextProcess = 0;

  constructor(cluster: ProcessCluster, options: { clients: number; roaming?: number; keys: number; random: Random }) {
    this.#random = options.random;
    this.#clients = cluster.managers.map((m) => cluster.client(m, 2000));
    this.#names = cluster.managers.map((m) => m.name);
    const addresses = cluster.managers.map((m) => m.address);
    this.#roaming = Array.from(
      { length: options.roaming ?? 2 },
      (_, k) =>
        new CofferClient({
          ...cluster.adminPem(),
          // Each starts at another manager.
          addresses: addresses.map((_, j) => addresses[(j + k) % addresses.length]!),
          deadlineMs: ROAMING_DEADLINE_MS,
        }),
    );
    this.#keys = Array.from({ length: options.keys }, (_, k) => `chaos/k${k}`);
    this.#clientsCount = options.clients;
  }

  readonly #clientsCount: number;
  readonly #roaming: CofferClient[];

  now(): number {
    return performance.now() - this.#t0;
  }

  start(): void {
    this.#running = true;
    for (let c = 0; c < this.#clientsCount; c++) this.#loops.push(this.#loop(null));
    for (const client of this.#roaming) this.#loops.push(this.#loop(client));
    this.#loops.push(
      probeExpiry({
        clients: this.#clients.map((client, k) => ({ name: this.#names[k]!, client })),
        random: new SeededRandom(this.#random.int(2 ** 31)),
        now: () => this.now(),
        running: () => this.#running,
        probes: this.expiryProbes,
      }),
    );
  }

  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#loops);
    for (const client of [...this.#clients, ...this.#roaming]) client.close();
  }

  /** A hot key, or one of the growing set (sometimes a new one). */
  #pickKey(): string {
    if (this.#random.float() >= GROWING_SHARE) return this.#keys[this.#random.int(this.#keys.length)]!;
    if (this.#grown.length === 0 || this.#random.float() < GROWING_NEW_SHARE)
      this.#grown.push(`chaos/g${this.#grown.length}`);
    const recent = Math.min(GROWING_RECENT, this.#grown.length);
    return this.#grown[this.#grown.length - 1 - this.#random.int(recent)]!;
  }

  /** One client's requests; `roaming`: its client over every manager (else a random manager's each time). */
  async #loop(roaming: CofferClient | null): Promise<void> {
    let process = this.#nextProcess++;
    const lastVersion = new Map<string, number>();
    let n = 0;
    while (this.#running) {
      const key = this.#pickKey();
      // Roaming clients make no stale reads (rolls above 0.85).
      const roll = this.#random.float() * (roaming === null ? 1 : 0.85);
      // Stale reads go to the process's own manager (a session): their promise is per session.
      const at = roll > 0.85 ? process % this.#clients.length : this.#random.int(this.#clients.length);
      const client = roaming ?? this.#clients[at]!;
      const invokeMs = this.now();
      const id = ++this.#nextId;
      const value = `p${process}-${n++}`;
      try {
        if (roll < 0.35) {
          const reply = await client.put(key, Buffer.from(value));
          this.history.push({
            id,
            process,
            key,
            kind: 'put',
            value,
            invokeMs,
            completeMs: this.now(),
            outcome: 'ok',
            version: reply.version,
          });
          lastVersion.set(key, reply.version);
        } else if (roll < 0.5) {
          const expectedVersion = lastVersion.get(key) ?? 0;
          const reply = await client.put(key, Buffer.from(value), { cas: expectedVersion });
          this.history.push({
            id,
            process,
            key,
            kind: 'cas',
            value,
            expectedVersion,
            invokeMs,
            completeMs: this.now(),
            outcome: 'ok',
            version: reply.version,
          });
          lastVersion.set(key, reply.version);
        } else {
          const stale = roll > 0.85;
          const reply = await client.get(key, { stale });
          const readValue = reply.value.toString();
          this.history.push({
            id,
            process,
            key,
            kind: 'get',
            invokeMs,
            completeMs: this.now(),
            outcome: 'ok',
            version: reply.version,
            readValue,
            stale,
          });
          lastVersion.set(key, reply.version);
        }
      } catch (error) {
        const code = error instanceof ClientError ? error.code : grpcStatus.UNKNOWN;
        const message = error instanceof Error ? error.message : String(error);
        if (roll >= 0.5) {
          if (code === grpcStatus.NOT_FOUND) {
            this.history.push({
              id,
              process,
              key,
              kind: 'get',
              invokeMs,
              completeMs: this.now(),
              outcome: 'ok',
              version: 0,
              readValue: null,
              stale: roll > 0.85,
            });
            lastVersion.set(key, 0);
          }
          // A read without an answer tells nothing.
        } else if (roll >= 0.35 && error instanceof ClientError && error.reason === 'CAS_MISMATCH') {
          const currentVersion = Number(error.metadata['currentVersion']);
          this.history.push({
            id,
            process,
            key,
            kind: 'cas',
            value,
            expectedVersion: lastVersion.get(key) ?? 0,
            invokeMs,
            completeMs: this.now(),
            outcome: 'fail',
            ...(Number.isSafeInteger(currentVersion) ? { currentVersion } : {}),
          });
          if (Number.isSafeInteger(currentVersion)) lastVersion.set(key, currentVersion);
          else lastVersion.delete(key);
        } else if (NOT_APPLIED.test(message)) {
          // Certainly not applied: recorded as nothing.
        } else {
          // Unknown: it may take effect at any later time. This client continues as a new process.
          const kind = roll < 0.35 ? 'put' : 'cas';
          this.history.push({
            id,
            process,
            key,
            kind,
            value,
            ...(kind === 'cas' ? { expectedVersion: lastVersion.get(key) ?? 0 } : {}),
            invokeMs,
            completeMs: Infinity,
            outcome: 'info',
            gaveUpMs: this.now(),
          });
          process = this.#nextProcess++;
          lastVersion.clear();
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        if (code === grpcStatus.UNAVAILABLE) await new Promise((resolve) => setTimeout(resolve, 20));
      }
    }
  }
}
