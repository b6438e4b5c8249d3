import { createConnection, createServer, type Server, type Socket } from 'node:net';
import type { Random } from '../../src/util/prng.ts';

/**
 * What the network does to the bytes one manager sends another, whichever of the two opened the
 * connection. Everything off means the bytes pass as they come.
 */
export interface LinkFault {
  /** Each chunk is held this long, plus up to `jitterMs` more (order is kept, as TCP keeps it). */
  readonly delayMs: number;
  readonly jitterMs: number;
  /** Bytes per second through this direction; 0 means no limit. */
  readonly bytesPerS: number;
  /** Bytes are held (not dropped) until the stall ends, then released in order. */
  readonly stalled: boolean;
}

const CLEAR: LinkFault = { delayMs: 0, jitterMs: 0, bytesPerS: 0, stalled: false };

/** Bytes a direction may hold before it stops reading its source (TCP's back-pressure does the rest). */
const HELD_BYTES_MAX = 4 * 1024 * 1024;

/**
 * One direction of one proxied connection: reads `source`, writes `sink` when the link's fault
 * lets each chunk go.
 */
class Direction {
  readonly #queue: { readonly chunk: Buffer; dueMs: number }[] = [];
  #heldBytes = 0;
  #lastDueMs = 0;
  #timer: NodeJS.Timeout | null = null;
  #ended = false;

  constructor(
    readonly source: Socket,
    readonly sink: Socket,
    readonly fault: () => LinkFault,
    readonly random: Random,
  ) {
    source.on('data', (chunk: Buffer) => this.#take(chunk));
    source.on('end', () => {
      this.#ended = true;
      this.pump();
    });
  }

  #take(chunk: Buffer): void {
    const f = this.fault();
    const now = Date.now();
    let due = now + f.delayMs + (f.jitterMs > 0 ? this.random.int(f.jitterMs + 1) : 0);
    due = Math.max(due, this.#lastDueMs);
    if (f.bytesPerS > 0) due = Math.max(due, this.#lastDueMs, now) + (chunk.length * 1000) / f.bytesPerS;
    this.#lastDueMs = due;
    this.#queue.push({ chunk, dueMs: due });
    this.#heldBytes += chunk.length;
    if (this.#heldBytes > HELD_BYTES_MAX) this.source.pause();
    this.pump();
  }

  /**
   * The link's fault changed: what it holds is due no later than the new fault would make it (a
   * backlog built under a bandwidth limit or a long delay does not outlast the fault), in order.
   */
  reschedule(): void {
    const f = this.fault();
    const now = Date.now();
    let last = 0;
    for (const item of this.#queue) {
      item.dueMs = Math.max(last, Math.min(item.dueMs, now + f.delayMs));
      last = item.dueMs;
    }
    this.#lastDueMs = Math.min(this.#lastDueMs, Math.max(now, last));
    this.pump();
  }

  /** Releases what is due; arms a timer for the next chunk. Called again when a stall ends. */
  pump(): void {
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    if (this.fault().stalled) return;
    const now = Date.now();
    while (this.#queue.length > 0 && this.#queue[0]!.dueMs <= now) {
      const { chunk } = this.#queue.shift()!;
      this.#heldBytes -= chunk.length;
      if (!this.sink.destroyed) this.sink.write(chunk);
    }
    if (this.#heldBytes <= HELD_BYTES_MAX && this.source.isPaused()) this.source.resume();
    if (this.#queue.length > 0) {
      this.#timer = setTimeout(() => this.pump(), Math.max(1, Math.ceil(this.#queue[0]!.dueMs - now)));
      return;
    }
    if (this.#ended && !this.sink.destroyed) this.sink.end();
  }

  stop(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#queue.length = 0;
  }
}

interface Connection {
  readonly a: Socket;
  readonly b: Socket;
  readonly directions: readonly Direction[];
}

/**
 * A TCP proxy on every link between managers, so the harness can do to their traffic what a bad
 * network does: delay with jitter, limit bandwidth, hold one direction's bytes (how loss and
 * retransmission look above TCP) and cut connections mid-stream. Link (from, to) listens on an
 * address of its own (`listenAddress`), where the network sends what manager `from` addresses to
 * manager `to`; it connects to `to` from the address that stands for `from` (`sourceAddress`),
 * so a partition that drops one address drops the proxied traffic too.
 */
export class LinkProxies {
  readonly #servers: Server[] = [];
  readonly #faults = new Map<string, LinkFault>();
  readonly #connections = new Map<string, Set<Connection>>();
  readonly #random: Random;

  private constructor(random: Random) {
    this.#random = random;
  }

  static async start(options: {
    readonly size: number;
    readonly port: number;
    /** Where manager k listens. */
    readonly managerHost: (k: number) => string;
    /** The address that stands for manager `to` to manager `from` (the proxy of link from -> to listens there). */
    readonly linkAddress: (from: number, to: number) => string;
    readonly random: Random;
  }): Promise<LinkProxies> {
    const proxies = new LinkProxies(options.random);
    try {
      for (let from = 0; from < options.size; from++)
        for (let to = 0; to < options.size; to++) {
          if (from === to) continue;
          const server = createServer({ pauseOnConnect: false }, (a) =>
            proxies.#accept(a, from, to, options.managerHost(to), options.port, options.linkAddress(to, from)),
          );
          proxies.#servers.push(server);
          await new Promise<void>((resolve, reject) => {
            server.once('error', reject);
            server.listen(options.port, options.linkAddress(from, to), () => resolve());
          });
        }
    } catch (error) {
      await proxies.close();
      throw error;
    }
    return proxies;
  }

  #accept(a: Socket, from: number, to: number, host: string, port: number, localAddress: string): void {
    a.setNoDelay(true);
    const b = createConnection({ host, port, localAddress });
    b.setNoDelay(true);
    const conn: Connection = {
      a,
      b,
      directions: [
        new Direction(a, b, () => this.fault(from, to), this.#random),
        new Direction(b, a, () => this.fault(to, from), this.#random),
      ],
    };
    const key = linkKey(Math.min(from, to), Math.max(from, to));
    const set = this.#connections.get(key) ?? new Set<Connection>();
    this.#connections.set(key, set);
    set.add(conn);
    const close = (): void => {
      if (!set.delete(conn)) return;
      for (const d of conn.directions) d.stop();
      a.destroy();
      b.destroy();
    };
    a.on('error', close).on('close', close);
    b.on('error', close).on('close', close);
  }

  /** What the link does now to bytes manager `from` sends manager `to`. */
  fault(from: number, to: number): LinkFault {
    return this.#faults.get(linkKey(from, to)) ?? CLEAR;
  }

  /** Sets (merges) the fault on bytes `from` sends `to`; ending a stall releases what it held. */
  set(from: number, to: number, change: Partial<LinkFault>): void {
    const before = this.fault(from, to);
    this.#faults.set(linkKey(from, to), { ...before, ...change });
    this.#rescheduleAll();
  }

  /** Every link back to passing bytes as they come; held bytes are released. */
  clear(): void {
    this.#faults.clear();
    this.#rescheduleAll();
  }

  /** Resets every open connection between the two managers (both ends see ECONNRESET). */
  reset(x: number, y: number): number {
    const set = this.#connections.get(linkKey(Math.min(x, y), Math.max(x, y)));
    if (set === undefined) return 0;
    const open = [...set];
    set.clear();
    for (const conn of open) {
      for (const d of conn.directions) d.stop();
      conn.a.resetAndDestroy();
      conn.b.resetAndDestroy();
    }
    return open.length;
  }

  #rescheduleAll(): void {
    for (const set of this.#connections.values())
      for (const conn of set) for (const d of conn.directions) d.reschedule();
  }

  async close(): Promise<void> {
    for (const set of this.#connections.values())
      for (const conn of set) {
        for (const d of conn.directions) d.stop();
        conn.a.destroy();
        conn.b.destroy();
      }
    this.#connections.clear();
    await Promise.all(this.#servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    this.#servers.length = 0;
  }
}

function linkKey(from: number, to: number): string {
  return `${from}>${to}`;
}
