import { lookup } from 'node:dns/promises';
import { createServer, type Server, type Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../util/logger.ts';
import { ConnectionGuard, type ConnectionGuardStats, type ConnectionLimits } from './connection-guard.ts';

/** At most one warning per this interval about connections refused or closed at a limit. */
const LIMIT_WARNING_INTERVAL_MS = 60_000;

export interface GuardedListener {
  /** The port bound (the one chosen by the system when the address asked for port 0). */
  readonly port: number;
  readonly stats: ConnectionGuardStats;
  /** Stops accepting, closes every connection, and resolves once the ports are released. */
  close(): Promise<void>;
}

/**
 * Serves `server` on `address` (host:port, IPv6 in brackets) through Coffer's own TCP listeners
 * instead of grpc-js's bindAsync: each accepted connection passes the ConnectionGuard first, then
 * goes to grpc-js through a connection injector (the same TLS and HTTP/2 server grpc-js runs for
 * a bound port). As bindAsync did, a host name binds every address it resolves to (localhost: IPv4
 * and IPv6), all on one port, and the listen succeeds if at least one address binds.
 */
export async function listenGuarded(options: {
  server: grpc.Server;
  credentials: grpc.ServerCredentials;
  address: string;
  limits: ConnectionLimits;
  log: Logger;
}): Promise<GuardedListener> {
  const { host, port } = splitListenAddress(options.address);
  const resolved = await lookup(host, { all: true });
  const hosts = [...new Set(resolved.map((entry) => entry.address))];
  const guard: ConnectionGuard = new ConnectionGuard(
    options.limits,
    limitWarner(() => guard.stats, options.log),
  );
  const injector = options.server.createConnectionInjector(
    grpc.experimental.createServerCredentialsWithInterceptors(options.credentials, [guard.interceptor]),
  );
  const servers: Server[] = [];
  const errors: string[] = [];
  const onConnection = (socket: Socket): void => {
    if (guard.admit(socket)) injector.injectConnection(socket);
  };
  let bound = port;
  for (const at of hosts) {
    const server = createServer(onConnection);
    try {
      bound = await listenOn(server, at, bound);
      // Accept errors (EMFILE, ENFILE) come here after listen: logged, not thrown (no crash).
      server.on('error', (error) =>
        options.log.warn({ event: 'accept-failed', err: error }, `accepting a connection on ${options.address} failed`),
      );
      servers.push(server);
    } catch (error) {
      errors.push(`${at}: ${(error as Error).message}`);
    }
  }
  const close = async (): Promise<void> => {
    guard.close();
    injector.destroy();
    await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))));
  };
  if (servers.length === 0) {
    await close();
    throw new Error(`cannot listen on ${options.address}: ${errors.join('; ') || 'it resolves to no address'}`);
  }
  if (errors.length > 0)
    options.log.warn(
      { event: 'listen-partial', errors },
      `listening on ${servers.length} of the ${hosts.length} addresses of ${options.address}`,
    );
  return {
    port: bound,
    get stats() {
      return guard.stats;
    },
    close,
  };
}

function listenOn(server: Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      resolve((server.address() as { port: number }).port);
    });
  });
}

/** host:port with the IPv6 host in brackets; port 0 lets the system choose. */
export function splitListenAddress(address: string): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:[\]]+):(\d{1,5})$/.exec(address);
  const port = Number(match?.[2]);
  if (match === null || port > 65535) throw new Error(`"${address}" is not host:port`);
  return { host: match[1]!.replace(/^\[|\]$/g, ''), port };
}

/** Logs refusals and evictions at most once per interval (an attack would flood the log), with the totals so far. */
function limitWarner(stats: () => ConnectionGuardStats, log: Logger): () => void {
  let lastMs = -Infinity;
  return () => {
    const now = performance.now();
    if (now - lastMs < LIMIT_WARNING_INTERVAL_MS) return;
    lastMs = now;
    const { open, authenticated, refusedPerSource, refusedTotal, evicted, timedOut } = stats();
    log.warn(
      { event: 'connection-limit', open, authenticated, refusedPerSource, refusedTotal, evicted, timedOut },
      'connections refused or closed at a limit (per source or in total); totals since start',
    );
  };
}
