import type { Socket } from 'node:net';
import type * as grpc from '@grpc/grpc-js';

/**
 * Connections from one source (an IPv4 address, or an IPv6 /64, which one host usually holds
 * whole) that have not yet made a request with a certificate of the cluster CA. Beyond it a new
 * connection from that source is closed at once. Authenticated connections do not count, so
 * clients behind one NAT or proxy address are not limited by it once they are known.
 */
export const CONNECTIONS_PER_SOURCE_MAX = 64;
/**
 * All connections a manager holds, well below its file descriptor limit (the Raft log, the key
 * store and the peers need theirs). At the limit the oldest connection that has made no request
 * yet is closed to make room, else the oldest whose requests came without a certificate; when
 * every connection is authenticated the new one is refused.
 */
export const CONNECTIONS_MAX = 4096;
/**
 * A connection that has made no gRPC request this long after it was accepted is closed: TLS and
 * the first request take milliseconds for a real client (grpc-js dials when a call starts), and a
 * client whose idle connection was closed dials again. Without it, connections that never send
 * anything were held forever (review finding 12).
 */
export const FIRST_REQUEST_TIMEOUT_MS = 10_000;
/**
 * Once it has made requests, a connection with no call open this long is closed by grpc-js
 * ('grpc.max_connection_idle_ms', a GOAWAY); clients reconnect on their next call. Peer streams
 * never idle.
 */
export const CONNECTION_IDLE_MS = 5 * 60_000;

export interface ConnectionLimits {
  readonly connectionsPerSourceMax: number;
  readonly connectionsMax: number;
  readonly firstRequestTimeoutMs: number;
  /** Enforced by grpc-js (a server option), not by the guard. */
  readonly connectionIdleMs: number;
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = {
  connectionsPerSourceMax: CONNECTIONS_PER_SOURCE_MAX,
  connectionsMax: CONNECTIONS_MAX,
  firstRequestTimeoutMs: FIRST_REQUEST_TIMEOUT_MS,
  connectionIdleMs: CONNECTION_IDLE_MS,
};

/** What the guard did since it started. */
export interface ConnectionGuardStats {
  /** Connections held now. */
  open: number;
  /** Of those, the ones that made a request with a certificate the cluster CA signed. */
  authenticated: number;
  refusedPerSource: number;
  refusedTotal: number;
  /** Closed at the total limit to make room for a new one. */
  evicted: number;
  /** Closed for making no request within the first-request timeout. */
  timedOut: number;
}

/** new: no request yet; anonymous: requests without a verified certificate; authenticated: with one. */
type Standing = 'new' | 'anonymous' | 'authenticated';

interface Connection {
  readonly socket: Socket;
  readonly key: string;
  readonly source: string;
  readonly acceptedAtMs: number;
  standing: Standing;
}

/**
 * Decides which TCP connections a manager serves, before grpc-js sees them (review finding 12):
 * caps connections per source and in total, closes those that make no request in time. grpc-js
 * tells it of requests through `interceptor`; the call's connection is found by its addresses
 * (local and remote, as the socket reported them when accepted: the TLS socket grpc-js makes
 * wraps the same handle, so they are the same).
 */
export class ConnectionGuard {
  readonly #limits: ConnectionLimits;
  readonly #all = new Map<string, Connection>();
  /** Connections that made no request yet, oldest first (Maps keep insertion order). */
  readonly #new = new Map<string, Connection>();
  /** Connections whose requests came without a verified certificate, in order of their first request. */
  readonly #anonymous = new Map<string, Connection>();
  /** New and anonymous connections per source. */
  readonly #unprovenBySource = new Map<string, number>();
  readonly #stats: ConnectionGuardStats = {
    open: 0,
    authenticated: 0,
    refusedPerSource: 0,
    refusedTotal: 0,
    evicted: 0,
    timedOut: 0,
  };
  readonly #onLimit: () => void;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;

  /** `onLimit` is told of each connection refused or closed at a limit (not of timeouts). */
  constructor(limits: ConnectionLimits, onLimit: () => void = ignore) {
    this.#limits = limits;
    this.#onLimit = onLimit;
  }

  get stats(): ConnectionGuardStats {
    return { ...this.#stats, open: this.#all.size };
  }

  /**
   * A connection just accepted: true if it may be served (it is watched from now on), false if
   * it was refused (it is destroyed).
   */
  admit(socket: Socket): boolean {
    // An error on a socket nobody listens to would end the process; the socket closes anyway.
    socket.on('error', ignore);
    const key = keyOf(socket.remoteAddress, socket.remotePort, socket.localAddress, socket.localPort);
    if (this.#closed || key === null) {
      socket.destroy();
      return false;
    }
    const source = sourceOf(socket.remoteAddress!);
    if ((this.#unprovenBySource.get(source) ?? 0) >= this.#limits.connectionsPerSourceMax) {
      this.#stats.refusedPerSource++;
      socket.destroy();
      this.#onLimit();
      return false;
    }
    if (this.#all.size >= this.#limits.connectionsMax) {
      const victim = first(this.#new) ?? first(this.#anonymous);
      if (victim === undefined) {
        this.#stats.refusedTotal++;
        socket.destroy();
        this.#onLimit();
        return false;
      }
      this.#stats.evicted++;
      this.#drop(victim);
      this.#onLimit();
    }
    const connection: Connection = { socket, key, source, acceptedAtMs: performance.now(), standing: 'new' };
    this.#all.set(key, connection);
    this.#new.set(key, connection);
    this.#unprovenBySource.set(source, (this.#unprovenBySource.get(source) ?? 0) + 1);
    socket.once('close', () => this.#forget(connection));
    this.#arm();
    return true;
  }

  /**
   * A grpc-js server interceptor: marks the connection of every call as having made a request,
   * authenticated if TLS verified a client certificate against the cluster CA. It adds no layer:
   * it hands grpc-js the call it was given.
   */
  readonly interceptor: grpc.ServerInterceptor = (_method, call) => {
    const info = call.getConnectionInfo();
    const connection = this.#all.get(
      keyOf(info.remoteAddress, info.remotePort, info.localAddress, info.localPort) ?? '',
    );
    // A connection's certificate does not change: only its first request is looked at.
    if (connection?.standing === 'new')
      this.#firstRequest(connection, call.getAuthContext().sslPeerCertificate !== undefined);
    return call as grpc.ServerInterceptingCall;
  };

  /** Closes every connection and accepts no more. */
  close(): void {
    this.#closed = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    for (const connection of [...this.#all.values()]) this.#drop(connection);
  }

  #firstRequest(connection: Connection, authenticated: boolean): void {
    this.#new.delete(connection.key);
    if (authenticated) {
      connection.standing = 'authenticated';
      this.#stats.authenticated++;
      this.#unproven(connection.source, -1);
    } else {
      connection.standing = 'anonymous';
      this.#anonymous.set(connection.key, connection);
    }
  }

  #unproven(source: string, change: number): void {
    const count = (this.#unprovenBySource.get(source) ?? 0) + change;
    if (count > 0) this.#unprovenBySource.set(source, count);
    else this.#unprovenBySource.delete(source);
  }

  /** Forgets a connection that closed (or is being closed); once only. */
  #forget(connection: Connection): void {
    if (this.#all.get(connection.key) !== connection) return;
    this.#all.delete(connection.key);
    this.#new.delete(connection.key);
    this.#anonymous.delete(connection.key);
    if (connection.standing === 'authenticated') this.#stats.authenticated--;
    else this.#unproven(connection.source, -1);
  }

  #drop(connection: Connection): void {
    this.#forget(connection);
    connection.socket.destroy();
  }

  /** One timer, for the oldest connection without a request (the others are younger). */
  #arm(): void {
    if (this.#timer !== null || this.#closed) return;
    const oldest = first(this.#new);
    if (oldest === undefined) return;
    const delay = Math.max(0, oldest.acceptedAtMs + this.#limits.firstRequestTimeoutMs - performance.now());
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#expire();
    }, delay);
    this.#timer.unref();
  }

  #expire(): void {
    const now = performance.now();
    for (const connection of this.#new.values()) {
      if (connection.acceptedAtMs + this.#limits.firstRequestTimeoutMs > now) break;
      this.#stats.timedOut++;
      this.#drop(connection);
    }
    this.#arm();
  }
}

function ignore(): void {}

function first<V>(map: Map<string, V>): V | undefined {
  for (const value of map.values()) return value;
  return undefined;
}

function keyOf(
  remoteAddress: string | undefined,
  remotePort: number | undefined,
  localAddress: string | undefined,
  localPort: number | undefined,
): string | null {
  if (remoteAddress === undefined || remotePort === undefined) return null;
  return `${remoteAddress}|${remotePort}|${localAddress ?? ''}|${localPort ?? ''}`;
}

/**
 * Who a connection counts against: an IPv4 address (also when it arrives IPv4-mapped on an IPv6
 * socket), or the /64 of an IPv6 address.
 */
export function sourceOf(address: string): string {
  const plain = address.replace(/%.*$/, '').toLowerCase();
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/.exec(plain);
  if (mapped !== null) return mapped[1]!;
  if (!plain.includes(':')) return plain;
  // An IPv4 tail (::1.2.3.4 forms) is two groups; it lies in the low 64 bits either way.
  const withoutTail = plain.replace(/:\d{1,3}(?:\.\d{1,3}){3}$/, ':0:0');
  const [head = '', tail] = withoutTail.split('::');
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups =
    tail === undefined
      ? headGroups
      : [
          ...headGroups,
          ...Array<string>(Math.max(0, 8 - headGroups.length - tailGroups.length)).fill('0'),
          ...tailGroups,
        ];
  return `${groups
    .slice(0, 4)
    .map((group) => Number.parseInt(group, 16).toString(16))
    .join(':')}::/64`;
}
