import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomInt } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeBackup } from '../../src/backup/backup-file.ts';
import { generateRecoveryKey } from '../../src/crypto/recovery-key.ts';
import { DataDir, defaultKeyFile, isManagerDataDir } from '../../src/manager/data-dir.ts';
import { Manager } from '../../src/manager/manager.ts';
import { initCluster } from '../../src/server/bootstrap.ts';
import { CA_KEY_SECRET } from '../../src/server/node-config.ts';
import { restoreBackup } from '../../src/server/restore.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import { LevelStorage } from '../../src/storage/level-storage.ts';
import { createLogger } from '../../src/util/logger.ts';
import { SeededRandom } from '../../src/util/prng.ts';

const mode = (path: string): number => statSync(path).mode & 0o777;
const names = (path: string): string[] => readdirSync(path).sort();

async function until(what: string, probe: () => boolean): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test('the paths of a data directory, and the defaults beside it', () => {
  const dir = new DataDir('/srv/m1/');
  assert.equal(dir.keyStore, '/srv/m1/keys');
  assert.equal(dir.raft, '/srv/m1/raft');
  assert.equal(dir.caCert, '/srv/m1/tls/ca.crt');
  assert.equal(dir.nodeCert, '/srv/m1/tls/node.crt');
  assert.equal(dir.audit, '/srv/m1/audit');
  assert.equal(dir.unlockSocket, '/srv/m1/unlock.sock');
  assert.equal(dir.nodeConfig, '/srv/m1/node.json');
  assert.equal(dir.defaultKeyFile, '/srv/m1.key', 'beside the directory, not inside it (trailing slashes ignored)');
  assert.equal(defaultKeyFile('/srv/m1'), '/srv/m1.key');
  assert.equal(dir.defaultAdminDir, '/srv/m1-admin');
});

test('isManagerDataDir: not for a missing, empty, foreign or half-made directory; yes once init finished', async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-datadir-is-'));
  try {
    assert.equal(isManagerDataDir(join(root, 'missing')), false);
    mkdirSync(join(root, 'empty'));
    assert.equal(isManagerDataDir(join(root, 'empty')), false);
    mkdirSync(join(root, 'foreign'));
    writeFileSync(join(root, 'foreign', 'notes.txt'), 'not a manager\n');
    mkdirSync(join(root, 'foreign', 'raft'));
    assert.equal(isManagerDataDir(join(root, 'foreign')), false);
    // Manager.init alone (a join or restore that stopped before node.json): not yet a manager's.
    await Manager.init(join(root, 'half'), { keyFile: join(root, 'half.key') });
    assert.equal(isManagerDataDir(join(root, 'half')), false);
    await initCluster({ dataDir: join(root, 'm1'), listen: '127.0.0.1:7400' });
    assert.equal(isManagerDataDir(join(root, 'm1')), true);
    assert.equal(isManagerDataDir(`${join(root, 'm1')}/`), true);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('init writes the layout with its modes; a restore writes it too, with Raft storage that holds only the backup at its index', {
  timeout: 60_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-datadir-'));
  try {
    const m1 = new DataDir(join(root, 'm1'));
    await initCluster({ dataDir: m1.root, listen: '127.0.0.1:7400' });
    assert.deepEqual(names(m1.root), ['keys', 'node.json', 'tls']);
    assert.deepEqual(names(m1.tls), ['ca.crt', 'node.crt']);
    assert.equal(mode(m1.root), 0o700);
    assert.equal(mode(m1.keyStore), 0o600);
    assert.equal(mode(m1.tls), 0o700);
    assert.equal(mode(m1.caCert), 0o644);
    assert.equal(mode(m1.nodeCert), 0o644);
    assert.equal(mode(m1.nodeConfig), 0o644);
    assert.equal(mode(m1.defaultKeyFile), 0o600, 'the key file, beside the directory');
    assert.deepEqual(names(m1.defaultAdminDir), ['admin.crt', 'admin.key', 'ca.crt']);

    // Start it (in-process, no network) until it has a keyring, then take a backup of it.
    const manager = await Manager.open({
      dataDir: m1.root,
      id: 1,
      keyFile: m1.defaultKeyFile,
      peers: { send: () => undefined },
      inner: new AppliedState(),
      random: new SeededRandom(randomInt(2 ** 31)),
      bootstrapVoters: [1],
      logger: createLogger({ level: 'silent' }),
      tickIntervalMs: 10,
    });
    let file: Buffer;
    let material: Awaited<ReturnType<Manager<unknown>['backupMaterial']>>;
    const recovery = generateRecoveryKey();
    try {
      await until(
        'manager 1 to lead with a keyring',
        () => manager.status().raft?.role === 'leader' && (manager.status().keys?.activeTerm ?? 0) > 0,
      );
      // The key store is rewritten whole when the first leader reserves nonce uses (keys.tmp,
      // then renamed over keys): a listing may catch the temporary file.
      assert.deepEqual(
        names(m1.root).filter((name) => !name.endsWith('.tmp')),
        ['keys', 'node.json', 'raft', 'tls'],
        'the first start makes raft/',
      );
      assert.equal(mode(m1.raft), 0o700);
      material = await manager.backupMaterial();
      file = encodeBackup(
        {
          clusterId: manager.clusterId,
          createdAtMs: Date.now(),
          index: material.index,
          term: material.term,
          rootGen: material.rootGen,
          image: material.image,
          caCertPem: readFileSync(m1.caCert, 'utf8'),
        },
        {
          rootKey: material.rootKey,
          caKeyPem: manager.localSecret(CA_KEY_SECRET)!.toString(),
          recoveryPublicKey: recovery.publicKey,
          unlockKek: null,
        },
      );
    } finally {
      await manager.stop();
    }
    assert.ok(material.index > 0 && material.term > 0);

    // A backup of format 1 (one image), as managers before the state store made: still restored.
    const backupFile = join(root, 'image.backup');
    writeFileSync(backupFile, file, { mode: 0o600 });
    const r1 = new DataDir(join(root, 'r1'));
    const outcome = await restoreBackup({
      file: backupFile,
      key: { recoveryKey: recovery.recoveryKey },
      dataDir: r1.root,
      listen: '127.0.0.1:7401',
    });
    assert.equal(outcome.keyFile, r1.defaultKeyFile);
    assert.deepEqual(names(r1.root), ['keys', 'node.json', 'raft', 'tls']);
    assert.deepEqual(names(r1.tls), ['ca.crt', 'node.crt']);
    assert.equal(mode(r1.root), 0o700);
    assert.equal(mode(r1.keyStore), 0o600);
    assert.equal(mode(r1.raft), 0o700);
    assert.equal(mode(r1.tls), 0o700);
    assert.equal(mode(r1.caCert), 0o644);
    assert.equal(mode(r1.nodeCert), 0o644);
    assert.equal(mode(r1.nodeConfig), 0o644);
    assert.equal(mode(r1.defaultKeyFile), 0o600);
    assert.equal(isManagerDataDir(r1.root), true);
    assert.equal(readFileSync(r1.caCert, 'utf8'), readFileSync(m1.caCert, 'utf8'), 'the cluster keeps its CA');

    // What LevelStorage loads: the backup as the snapshot, nothing else; the hard state at it.
    const storage = await LevelStorage.open(r1.raft);
    try {
      const loaded = await storage.load();
      assert.deepEqual(loaded.hardState, { term: material.term, vote: 0, commit: material.index });
      assert.deepEqual(loaded.entries, []);
      assert.equal(loaded.snapshot?.metadata.index, material.index);
      assert.equal(loaded.snapshot?.metadata.term, material.term);
      assert.deepEqual(loaded.snapshot?.metadata.confState, { voters: [outcome.nodeId], learners: [] });
      assert.ok(Buffer.from(loaded.snapshot!.data).equals(material.image), 'the snapshot is the backup image');
    } finally {
      await storage.close();
    }

    await assert.rejects(
      restoreBackup({
        file: backupFile,
        key: { recoveryKey: recovery.recoveryKey },
        dataDir: r1.root,
        listen: '127.0.0.1:7401',
      }),
      /already holds a manager/,
    );
    await assert.rejects(
      r1.writeRestoredRaft({
        metadata: { index: 1, term: 1, confState: { voters: [2], learners: [] } },
        data: Buffer.alloc(1),
      }),
      /already holds Raft state/,
      'a restore never writes over a log',
    );
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
