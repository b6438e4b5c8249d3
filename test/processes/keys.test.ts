import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CryptoError } from '../../src/crypto/errors.ts';
import { KeyStore } from '../../src/crypto/key-store.ts';
import { DataDir } from '../../src/manager/data-dir.ts';
import { KEY_USES_MAX } from '../../src/crypto/keyring.ts';
import { initCluster, joinCluster } from '../../src/server/bootstrap.ts';
import { ServiceError } from '../../src/server/errors.ts';
import { CofferNode } from '../../src/server/node.ts';
import { createLogger } from '../../src/util/logger.ts';
import { AdminClient, eventually, freePort } from './processes.ts';

test('an autolocked manager starts only with its unlock key, and a manager that joins later is autolocked with the same key', {
  timeout: 90_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-autolock-'));
  const nodes: CofferNode[] = [];
  let admin: AdminClient | null = null;
  try {
    const [p1, p2] = [await freePort(), await freePort()];
    const init = await initCluster({ dataDir: join(root, 'm1'), listen: `127.0.0.1:${p1}`, autolock: true });
    assert.match(init.unlockKey ?? '', /^CFRKEY-1-/);
    const logger = createLogger({ level: 'silent' });
    const dataDir = join(root, 'm1');
    await assert.rejects(
      CofferNode.start({ dataDir, logger }),
      (e: unknown) => e instanceof ServiceError && /autolocked/.test(e.message),
    );
    const other = await initCluster({ dataDir: join(root, 'other'), listen: '127.0.0.1:1', autolock: true });
    await assert.rejects(
      CofferNode.start({ dataDir, logger, unlockKey: other.unlockKey! }),
      (e: unknown) => e instanceof CryptoError && e.code === 'UNLOCK_KEY_WRONG',
    );
    nodes.push(await CofferNode.start({ dataDir, logger, unlockKey: init.unlockKey!, tickIntervalMs: 50 }));
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
    assert.equal(
      (await KeyStore.read(new DataDir(join(root, 'm2')).keyStore)).protection,
      'key-file',
      'a joiner starts with a key file',
    );
    nodes.push(await CofferNode.start({ dataDir: join(root, 'm2'), logger, tickIntervalMs: 50 }));
    await eventually("the joiner to adopt the cluster's unlock key", 30_000, async () =>
      (await KeyStore.read(new DataDir(join(root, 'm2')).keyStore)).protection === 'unlock-key' ? true : undefined,
    );
    await nodes[1]!.stop();
    nodes.pop();
    await assert.rejects(
      CofferNode.start({ dataDir: join(root, 'm2'), logger }),
      (e: unknown) => e instanceof ServiceError && /autolocked/.test(e.message),
    );
    nodes.push(
      await CofferNode.start({ dataDir: join(root, 'm2'), logger, unlockKey: init.unlockKey!, tickIntervalMs: 50 }),
    );
    await eventually('a write through the unlocked joiner', 20_000, async () =>
      client.call(`127.0.0.1:${p2}`, 'Secrets', 'put', { name: 'locked/ok', value: Buffer.from('v') }),
    );
  } finally {
    admin?.close();
    for (const node of nodes) await node.stop();
    rmSync(root, { recursive: true, force: true });
  }
});

test('a follower that nearly used up the active key asks the leader to rotate, and the cluster moves to a new term', {
  timeout: 90_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-uses-'));
  const nodes: CofferNode[] = [];
  let admin: AdminClient | null = null;
  try {
    const [p1, p2] = [await freePort(), await freePort()];
    const init = await initCluster({ dataDir: join(root, 'm1'), listen: `127.0.0.1:${p1}` });
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
    // The follower's key store says it has reserved (so may have made) 95% of term 1's uses.
    const store = await KeyStore.read(new DataDir(join(root, 'm2')).keyStore);
    await store.reserveUses(1, Math.ceil(KEY_USES_MAX * 0.95), [1]);
    nodes.push(await CofferNode.start({ dataDir: join(root, 'm2'), logger, tickIntervalMs: 50 }));
    const term = await eventually('a rotation asked for by the follower', 30_000, async () => {
      const [a, b] = [await client.status(`127.0.0.1:${p1}`), await client.status(`127.0.0.1:${p2}`)];
      return a.keyringTerm >= 2 && b.keyringTerm >= 2 ? b.keyringTerm : undefined;
    });
    assert.ok(term >= 2);
    assert.equal(
      (await client.status(`127.0.0.1:${p1}`)).role,
      'leader',
      'the leader did not need the rotation for itself',
    );
  } finally {
    admin?.close();
    for (const node of nodes) await node.stop();
    rmSync(root, { recursive: true, force: true });
  }
});
