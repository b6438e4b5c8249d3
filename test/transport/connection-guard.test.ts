import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect as tcpConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { initCluster } from '../../src/server/bootstrap.ts';
import { CofferNode } from '../../src/server/node.ts';
import { sourceOf, type ConnectionGuardStats, type ConnectionLimits } from '../../src/transport/connection-guard.ts';
import { services } from '../../src/transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, policyChannelCredentials } from '../../src/transport/tls.ts';
import { createLogger } from '../../src/util/logger.ts';
import { AdminClient, eventually, freePort } from '../processes/processes.ts';
import { handshake } from './tls-handshake.ts';

/** One manager (init, then started in this process), its admin identity, and a way to clean up. */
class SingleManager {
  readonly root = mkdtempSync(join(tmpdir(), 'coffer-guard-'));
  readonly #admins: AdminClient[] = [];
  node: CofferNode | null = null;
  address = '';
  port = 0;
  #adminDir = '';
  #clusterId = '';

  private constructor(readonly limits: Partial<ConnectionLimits>) {}

  static async start(limits: Partial<ConnectionLimits>): Promise<SingleManager> {
    const manager = new SingleManager(limits);
    try {
      manager.port = await freePort();
      manager.address = `127.0.0.1:${manager.port}`;
      const init = await initCluster({ dataDir: join(manager.root, 'm1'), listen: manager.address });
      manager.#adminDir = init.adminDir;
      manager.#clusterId = init.clusterId;
      await manager.startNode();
    } catch (error) {
      await manager.stop();
      throw error;
    }
    return manager;
  }

  get stats(): ConnectionGuardStats {
    return this.node!.connectionStats!;
  }

  async startNode(): Promise<void> {
    this.node = await CofferNode.start({
      dataDir: join(this.root, 'm1'),
      logger: createLogger({ level: 'silent' }),
      tickIntervalMs: 50,
      connectionLimits: this.limits,
    });
  }

  async stopNode(): Promise<void> {
    const node = this.node;
    this.node = null;
    await node?.stop();
  }

  /** A new admin client; each has its own credentials, so its own connection. */
  admin(): AdminClient {
    const made = new AdminClient(this.#adminDir, this.#clusterId);
    this.#admins.push(made);
    return made;
  }

  async leaderAnswers(admin: AdminClient): Promise<void> {
    await eventually('the admin to be answered by a leader', 20_000, async () =>
      (await admin.status(this.address)).role === 'leader' ? true : undefined,
    );
  }

  async stop(): Promise<void> {
    for (const admin of this.#admins) admin.close();
    await this.stopNode();
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** A client connection and when it opened and closed (performance.now()). */
interface Opened {
  readonly socket: Socket;
  readonly openedAtMs: number;
  closedAtMs: number | null;
  readonly closed: Promise<void>;
}

function track(socket: Socket, openedAtMs: number): Opened {
  socket.on('error', () => {});
  // Read (and drop) whatever the server sends (HTTP/2 settings): a paused socket never sees the close.
  socket.resume();
  const opened: Opened = {
    socket,
    openedAtMs,
    closedAtMs: null,
    closed: new Promise((resolve) =>
      socket.once('close', () => {
        opened.closedAtMs = performance.now();
        resolve();
      }),
    ),
  };
  return opened;
}

/** A raw TCP connection that never sends anything; resolves once connected. */
function tcp(port: number): Promise<Opened> {
  const openedAtMs = performance.now();
  const socket = tcpConnect({ host: '127.0.0.1', port });
  const opened = track(socket, openedAtMs);
  return new Promise((resolve, reject) => {
    socket.once('connect', () => resolve(opened));
    socket.once('error', reject);
  });
}

/** A TLS connection without a client certificate that sends nothing after the handshake. */
function tlsWithoutCertificate(port: number): Promise<Opened> {
  const openedAtMs = performance.now();
  const socket = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['h2'] });
  const opened = track(socket, openedAtMs);
  return new Promise((resolve, reject) => {
    socket.once('secureConnect', () => resolve(opened));
    socket.once('error', reject);
  });
}

/** Whether `opened` closes within `ms`. */
async function closesWithin(opened: Opened, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const result = await Promise.race([
    opened.closed.then(() => true),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms))),
  ]);
  clearTimeout(timer);
  return result;
}

const range = (n: number): number[] => Array.from({ length: n }, (_, k) => k);

test('silent connections are closed after the first-request timeout, those beyond the per-source cap at once, and an authenticated client is answered throughout', {
  timeout: 60_000,
}, async () => {
  const FIRST_REQUEST_MS = 1500;
  const PER_SOURCE = 16;
  const manager = await SingleManager.start({
    firstRequestTimeoutMs: FIRST_REQUEST_MS,
    connectionsPerSourceMax: PER_SOURCE,
    connectionsMax: 1000,
  });
  const clients: Opened[] = [];
  try {
    const admin = manager.admin();
    await manager.leaderAnswers(admin);
    // The TLS policy holds on the manager's own port (finding 13), not only in tls-policy.test.ts.
    assert.equal(
      (await handshake(manager.port, { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2', ciphers: 'AES128-SHA' })).ok,
      false,
    );

    // All from 127.0.0.1, like the admin: raw TCP, and TLS without a certificate, up to the cap.
    const held = [
      ...(await Promise.all(range(PER_SOURCE - 4).map(() => tcp(manager.port)))),
      ...(await Promise.all(range(4).map(() => tlsWithoutCertificate(manager.port)))),
    ];
    clients.push(...held);
    const over = await Promise.all(range(4).map(() => tcp(manager.port)));
    clients.push(...over);
    for (const opened of over)
      assert.ok(await closesWithin(opened, 1000), 'a connection beyond the per-source cap is closed at once');
    for (const opened of held) assert.equal(opened.closedAtMs, null, 'the connections within the cap are still open');
    assert.equal(
      (await admin.status(manager.address)).role,
      'leader',
      'the admin is answered while the cap is reached',
    );

    for (const [k, opened] of held.entries())
      assert.ok(
        await closesWithin(opened, FIRST_REQUEST_MS + 5000),
        `silent connection ${k} is closed after the first-request timeout ${JSON.stringify(manager.stats)}`,
      );
    for (const opened of held)
      assert.ok(
        opened.closedAtMs! - opened.openedAtMs >= FIRST_REQUEST_MS - 50,
        `not before the timeout (${Math.round(opened.closedAtMs! - opened.openedAtMs)} ms)`,
      );
    assert.equal((await admin.status(manager.address)).role, 'leader', 'the admin is still answered');
    // The admin's connection made requests, so it was not closed with the silent ones.
    const stats = manager.stats;
    assert.equal(stats.timedOut, PER_SOURCE);
    assert.equal(stats.refusedPerSource, 4);
    assert.equal(stats.authenticated, 1);
    assert.equal(stats.open, 1);
    // The source is not locked out: a new silent connection is accepted again.
    const again = await tcp(manager.port);
    clients.push(again);
    assert.equal(await closesWithin(again, 300), false);
  } finally {
    for (const opened of clients) opened.socket.destroy();
    await manager.stop();
  }
});

/** Calls Join.GetCaCertificate without a client certificate (what a joiner does first); the client stays open. */
async function anonymousRequest(address: string): Promise<grpc.Client> {
  const client = new (services().Join.Client)(
    address,
    policyChannelCredentials(
      { caPem: null, certPem: null, keyPem: null },
      { rejectUnauthorized: false, checkServerIdentity: () => undefined },
    ),
    MANAGER_CHANNEL_OPTIONS,
  );
  await new Promise<void>((resolve, reject) =>
    (
      client as unknown as {
        getCaCertificate(r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null) => void): void;
      }
    ).getCaCertificate({}, { deadline: Date.now() + 5000 }, (error) => (error === null ? resolve() : reject(error))),
  );
  return client;
}

test('at the total cap the oldest connection without a request makes room, then one whose requests had no certificate; when all are authenticated a new one is refused', {
  timeout: 60_000,
}, async () => {
  const manager = await SingleManager.start({
    connectionsMax: 4,
    connectionsPerSourceMax: 100,
    firstRequestTimeoutMs: 60_000,
  });
  const clients: Opened[] = [];
  let joiner: grpc.Client | null = null;
  try {
    const admins = [manager.admin(), manager.admin(), manager.admin()];
    await manager.leaderAnswers(admins[0]!);
    for (const admin of admins) assert.equal((await admin.status(manager.address)).role, 'leader');
    joiner = await anonymousRequest(manager.address);
    const joinerChannel = joiner.getChannel();
    assert.equal(joinerChannel.getConnectivityState(false), grpc.connectivityState.READY);
    // Four held: three authenticated, one that made a request without a certificate.

    const r1 = await tcp(manager.port);
    clients.push(r1);
    await eventually('the connection without a certificate to be closed for the new one', 3000, async () =>
      joinerChannel.getConnectivityState(false) !== grpc.connectivityState.READY ? true : undefined,
    );
    assert.equal(await closesWithin(r1, 200), false, 'the new connection is held');

    const r2 = await tcp(manager.port);
    clients.push(r2);
    assert.ok(await closesWithin(r1, 2000), 'the oldest connection without a request is closed for the next one');
    assert.equal(r2.closedAtMs, null);

    const fourth = manager.admin();
    admins.push(fourth);
    assert.equal(
      (await fourth.status(manager.address)).role,
      'leader',
      'a new authenticated client gets in at the cap',
    );
    assert.ok(await closesWithin(r2, 2000), 'by closing the connection that made no request');

    const r3 = await tcp(manager.port);
    clients.push(r3);
    assert.ok(await closesWithin(r3, 1000), 'with only authenticated connections held, a new one is refused at once');
    for (const admin of admins)
      assert.equal(
        (await admin.status(manager.address)).role,
        'leader',
        'and every authenticated client is still answered',
      );
    const stats = manager.stats;
    assert.deepEqual(
      {
        open: stats.open,
        authenticated: stats.authenticated,
        evicted: stats.evicted,
        refusedTotal: stats.refusedTotal,
      },
      { open: 4, authenticated: 4, evicted: 3, refusedTotal: 1 },
    );
  } finally {
    joiner?.close();
    for (const opened of clients) opened.socket.destroy();
    await manager.stop();
  }
});

test('a connection that made requests is closed once it has had no call for the idle time, and its client dials again on its next call', {
  timeout: 60_000,
}, async () => {
  const manager = await SingleManager.start({ connectionIdleMs: 1000, firstRequestTimeoutMs: 60_000 });
  let joiner: grpc.Client | null = null;
  try {
    const admin = manager.admin();
    await manager.leaderAnswers(admin);
    joiner = await anonymousRequest(manager.address);
    const joinerChannel = joiner.getChannel();
    assert.equal(joinerChannel.getConnectivityState(false), grpc.connectivityState.READY);
    await eventually('the idle connections to be closed', 10_000, async () =>
      joinerChannel.getConnectivityState(false) !== grpc.connectivityState.READY && manager.stats.open === 0
        ? true
        : undefined,
    );
    assert.equal((await admin.status(manager.address)).role, 'leader', 'the admin is answered on a new connection');
    assert.equal(manager.stats.authenticated, 1);
  } finally {
    joiner?.close();
    await manager.stop();
  }
});

test('stop() closes the listener and every connection, and a manager started again on the same port serves', {
  timeout: 60_000,
}, async () => {
  const manager = await SingleManager.start({});
  const clients: Opened[] = [];
  try {
    const admin = manager.admin();
    await manager.leaderAnswers(admin);
    const silent = await tcp(manager.port);
    const tlsSilent = await tlsWithoutCertificate(manager.port);
    clients.push(silent, tlsSilent);
    await manager.stopNode();
    assert.ok(await closesWithin(silent, 1000), 'a silent connection is closed by stop()');
    assert.ok(await closesWithin(tlsSilent, 1000), 'a TLS connection is closed by stop()');
    await assert.rejects(tcp(manager.port), /ECONNREFUSED/, 'the port is released');
    await manager.startNode();
    await manager.leaderAnswers(admin); // the same client reconnects to the manager started again
  } finally {
    for (const opened of clients) opened.socket.destroy();
    await manager.stop();
  }
});

test('connections count against their IPv4 address, IPv4-mapped or not, and against the /64 of an IPv6 address', () => {
  assert.equal(sourceOf('192.0.2.7'), '192.0.2.7');
  assert.equal(sourceOf('::ffff:192.0.2.7'), '192.0.2.7');
  assert.equal(sourceOf('2001:db8:1:2:3:4:5:6'), '2001:db8:1:2::/64');
  assert.equal(sourceOf('2001:db8:1:2::9'), '2001:db8:1:2::/64');
  assert.equal(sourceOf('2001:0DB8:0001:0002:ffff::1'), '2001:db8:1:2::/64');
  assert.equal(sourceOf('2001:db8::1'), '2001:db8:0:0::/64');
  assert.equal(sourceOf('::1'), '0:0:0:0::/64');
  assert.equal(sourceOf('fe80::1%eth0'), 'fe80:0:0:0::/64');
  assert.equal(sourceOf('64:ff9b::192.0.2.7'), '64:ff9b:0:0::/64');
});
