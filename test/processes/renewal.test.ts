import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { connect } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initCluster, joinCluster } from '../../src/server/bootstrap.ts';
import { CofferNode } from '../../src/server/node.ts';
import { createLogger } from '../../src/util/logger.ts';
import { AdminClient, eventually, freePort } from './processes.ts';

/** The serial of the certificate a manager presents to a new TLS connection right now. */
function servedSerial(port: number, caPem: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(
      {
        host: '127.0.0.1',
        port,
        ca: caPem,
        servername: 'coffer-manager',
        checkServerIdentity: () => undefined,
        ALPNProtocols: ['h2'],
      },
      () => {
        const serial = socket.getPeerCertificate().serialNumber.toLowerCase();
        socket.destroy();
        resolve(serial);
      },
    );
    socket.on('error', reject);
  });
}

test('managers renew their certificates before they expire, without a restart, and keep talking', {
  timeout: 90_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-renewal-'));
  const nodes: CofferNode[] = [];
  let admin: AdminClient | null = null;
  try {
    const [p1, p2] = [await freePort(), await freePort()];
    // 0.0002 days is about 17 s: renewed when a third of it is left, about 11 s after issue.
    const init = await initCluster({
      dataDir: join(root, 'm1'),
      listen: `127.0.0.1:${p1}`,
      managerCertValidityDays: 0.0002,
    });
    const logger = createLogger({ level: 'silent' });
    nodes.push(await CofferNode.start({ dataDir: join(root, 'm1'), logger, tickIntervalMs: 50 }));
    admin = new AdminClient(init.adminDir, init.clusterId);
    const client = admin;
    await eventually('a leader with a join token', 20_000, async () =>
      nodes[0]!.state.cluster.joinTokenHash !== null && (await client.status(`127.0.0.1:${p1}`)).role === 'leader'
        ? true
        : undefined,
    );
    await joinCluster({
      dataDir: join(root, 'm2'),
      listen: `127.0.0.1:${p2}`,
      join: `127.0.0.1:${p1}`,
      token: init.joinToken,
    });
    nodes.push(await CofferNode.start({ dataDir: join(root, 'm2'), logger, tickIntervalMs: 50 }));
    await eventually('two voters', 30_000, async () =>
      (await client.status(`127.0.0.1:${p1}`)).voters.length === 2 ? true : undefined,
    );

    const caPem = readFileSync(join(init.adminDir, 'ca.crt'), 'utf8');
    const first = [await servedSerial(p1, caPem), await servedSerial(p2, caPem)];
    const renewed = await eventually('both managers to serve renewed certificates', 40_000, async () => {
      const now = [await servedSerial(p1, caPem), await servedSerial(p2, caPem)];
      return now[0] !== first[0] && now[1] !== first[1] ? now : undefined;
    });
    assert.notDeepEqual(renewed, first);
    const status = await client.status(`127.0.0.1:${p2}`);
    assert.equal(status.certificateSerial, renewed[1]);
    assert.ok(status.certificateNotAfterMs > Date.now(), 'the served certificate is valid now');
    // Peers still replicate, and a follower still forwards writes, over the renewed certificates.
    const follower = status.role === 'leader' ? p1 : p2;
    await client.call(`127.0.0.1:${follower}`, 'Secrets', 'put', { name: 'after/renewal', value: Buffer.from('ok') });
    for (const port of [p1, p2]) {
      const got = await client.call<{ value: Buffer }>(`127.0.0.1:${port}`, 'Secrets', 'get', {
        name: 'after/renewal',
      });
      assert.equal(got.value.toString(), 'ok');
    }
  } finally {
    admin?.close();
    for (const node of nodes) await node.stop();
    rmSync(root, { recursive: true, force: true });
  }
});
