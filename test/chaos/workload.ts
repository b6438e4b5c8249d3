import { status as grpcStatus } from '@grpc/grpc-js';
import { ClientError, type CofferClient } from '../../src/client/client.ts';
import type { Random } from '../../src/util/prng.ts';
import type { Operation } from './linearizability.ts';
import type { ProcessCluster } from './process-cluster.ts';

/** Errors after which a write certainly did not take effect (it never reached a leader). */
const NOT_APPLIED =
  /No connection established|no leader is known|is locked|refused until it can|not known to this cluster/;

/**
 * Clients that write and read a few keys on random managers and record a history: invoke, then
 * ok, fail (certainly not applied) or info (unknown). A client that got info continues as a new
 * process, as in Jepsen: its earlier operation may still take effect at any time.
 */
export class Workload {
  readonly history: Operation[] = [];
  readonly #random: Random;
  readonly #clients: CofferClient[];
  readonly #keys: string[];
  readonly #t0 = performance.now();
  #running = false;
  #loops: Array<Promise<void>> = [];
  #nextId = 0;
  #nextProcess = 0;

  constructor(cluster: ProcessCluster, options: { clients: number; keys: number; random: Random }) {
    this.#random = options.random;
    this.#clients = cluster.managers.map((m) => cluster.client(m, 2000));
    this.#keys = Array.from({ length: options.keys }, (_, k) => `chaos/k${k}`);
    this.#clientsCount = options.clients;
  }

  readonly #clientsCount: number;

  now(): number {
    return performance.now() - this.#t0;
  }

  start(): void {
    this.#running = true;
    for (let c = 0; c < this.#clientsCount; c++) this.#loops.push(this.#loop());
  }

  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#loops);
    for (const client of this.#clients) client.close();
  }

  async #loop(): Promise<void> {
    let process = this.#nextProcess++;
    const lastVersion = new Map<string, number>();
    let n = 0;
    while (this.#running) {
      const key = this.#keys[this.#random.int(this.#keys.length)]!;
      const roll = this.#random.float();
      // Stale reads go to the process's own manager (a session): their promise is per session.
      const at = roll > 0.85 ? process % this.#clients.length : this.#random.int(this.#clients.length);
      const client = this.#clients[at]!;
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
        } else if (roll >= 0.35 && code === grpcStatus.FAILED_PRECONDITION) {
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
          });
          lastVersion.delete(key);
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
