import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KeyStore } from '../../src/crypto/key-store.ts';
import { DataDir, isManagerDataDir } from '../../src/manager/data-dir.ts';
import { createKeyFile, readKeyFile } from '../../src/crypto/root-key.ts';
import { Manager } from '../../src/manager/manager.ts';
import { initCluster } from '../../src/server/bootstrap.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import { createLogger } from '../../src/util/logger.ts';
import { SeededRandom } from '../../src/util/prng.ts';

test('init uses a key file that already exists (a Docker secret) instead of making one, and the manager opens with it', async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-adopt-'));
  try {
    const keyFile = join(root, 'm1.key');
    const kek = createKeyFile(keyFile);
    const outcome = await initCluster({
      dataDir: join(root, 'm1'),
      listen: '127.0.0.1:7400',
      keyFile,
      tokenFile: join(root, 'shared', 'join-token'),
      healthDir: join(root, 'shared', 'health'),
    });
    assert.deepEqual(readFileSync(keyFile), kek, 'the key file is left as it was');
    assert.ok(isManagerDataDir(join(root, 'm1')));
    assert.equal(readFileSync(join(root, 'shared', 'join-token'), 'utf8').trim(), outcome.joinToken);
    for (const name of ['ca.crt', 'health.crt', 'health.key'])
      assert.ok(existsSync(join(root, 'shared', 'health', name)), name);
    const store = await KeyStore.read(new DataDir(join(root, 'm1')).keyStore);
    assert.ok(store.openSecrets(readKeyFile(keyFile)).size > 0, 'the key store is wrapped by that key file');
    const manager = await Manager.open({
      dataDir: join(root, 'm1'),
      id: 1,
      keyFile,
      peers: { send: () => undefined },
      inner: new AppliedState(),
      random: new SeededRandom(randomInt(2 ** 31)),
      bootstrapVoters: [1],
      logger: createLogger({ level: 'silent' }),
    });
    assert.equal(manager.locked, false);
    await manager.stop();
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('init refuses a malformed key file with an error that names it, and leaves no manager behind', async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-adopt-bad-'));
  try {
    const keyFile = join(root, 'bad.key');
    writeFileSync(keyFile, 'not a key\n', { mode: 0o600 });
    await assert.rejects(
      initCluster({ dataDir: join(root, 'm1'), listen: '127.0.0.1:7400', keyFile }),
      /the key file .*bad\.key holds 10 bytes, not 32: it is not a Coffer key file/,
    );
    writeFileSync(join(root, 'open.key'), Buffer.alloc(32), { mode: 0o644 });
    await assert.rejects(
      initCluster({ dataDir: join(root, 'm2'), listen: '127.0.0.1:7400', keyFile: join(root, 'open.key') }),
      /can be read by others/,
    );
    assert.equal(isManagerDataDir(join(root, 'm1')), false);
    assert.equal(await KeyStore.exists(new DataDir(join(root, 'm1')).keyStore), false);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
