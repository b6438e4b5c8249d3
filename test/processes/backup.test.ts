import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ClientError, CofferClient } from '../../src/client/client.ts';
import { newLeafKey } from '../../src/crypto/pki.ts';
import { generateRecoveryKey } from '../../src/crypto/recovery-key.ts';
import { ProcessCluster } from '../chaos/process-cluster.ts';
import { Processes, coffer, eventually, freePort } from './processes.ts';

type Snapshot = Map<
  string,
  { current: number; deleted: boolean; versions: Array<{ version: number; value: string | null; labels: string[] }> }
>;

/** Every secret with every version (value, or null when destroyed) and label, as a client sees them. */
async function everything(client: CofferClient): Promise<Snapshot> {
  const out: Snapshot = new Map();
  const listed = await client.list('', { includeDeleted: true, pageSize: 1000 });
  for (const meta of listed.secrets) {
    const v = await client.versions(meta.name);
    const versions = [];
    for (const version of v.versions) {
      const value =
        version.destroyed || meta.deleted
          ? null
          : (await client.get(meta.name, { version: version.version })).value.toString();
      versions.push({ version: version.version, value, labels: [...version.labels].sort() });
    }
    out.set(meta.name, { current: meta.currentVersion, deleted: meta.deleted, versions });
  }
  return out;
}

// Save a backup, lose every data directory, restore a new cluster from it, and compare every
// secret, version and label; with the recovery key printed at init, and with the unlock key of an
// autolocked cluster; wrong keys and altered files refused by name.
test('coffer snapshot save, every data directory destroyed, coffer snapshot restore: every secret and version back', {
  timeout: 300_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-backup-'));
  let cluster: ProcessCluster | null = null;
  const restored = new Processes(root);
  try {
    cluster = await ProcessCluster.start(root, 3);
    const c = cluster;
    assert.match(c.recoveryKey, /^CFRREC-1-/, 'init printed a recovery key');
    const env = {
      COFFER_ADDR: c.managers.map((m) => m.address).join(','),
      COFFER_CA: join(c.adminDir, 'ca.crt'),
      COFFER_CERT: join(c.adminDir, 'admin.crt'),
      COFFER_KEY: join(c.adminDir, 'admin.key'),
    };
    const client = c.client(c.managers[0]!, 10_000);
    for (let k = 0; k < 25; k++) await client.put(`app/s${k}`, Buffer.from(`value ${k} v1`));
    for (let k = 0; k < 5; k++) {
      await client.put(`app/s${k}`, Buffer.from(`value ${k} v2`));
      await client.put(`app/s${k}`, Buffer.from(`value ${k} v3`));
    }
    await client.label('app/s1', 'stable', 2);
    await client.destroy('app/s2', [1]);
    await client.delete('app/s3');
    await client.putPolicy('readers', [{ path: 'app/**', capabilities: ['read', 'list'] }]);
    const before = await everything(client);
    assert.equal(before.size, 25);

    // Backups need admin on sys/backup: a reader is refused at once, with the status (not a hang).
    const readerKey = newLeafKey();
    const issued = await client.issueIdentity('reader', ['readers'], readerKey.publicPem);
    const reader = new CofferClient({
      addresses: [c.managers[0]!.address],
      caPem: issued.caCertificatePem,
      certPem: issued.certificatePem,
      keyPem: readerKey.privatePem,
      deadlineMs: 5000,
    });
    const refusedAt = Date.now();
    await assert.rejects(
      reader.saveBackup(() => assert.fail('no byte of a backup reaches a reader')),
      (e: unknown) =>
        e instanceof ClientError && e.code === grpc.status.PERMISSION_DENIED && /sys\/backup/.test(e.message),
    );
    assert.ok(Date.now() - refusedAt < 5000, 'the refusal arrives as a status, not after a deadline');
    reader.close();
    // A caller that cannot take the bytes (a full disk): the save fails with its error, the call
    // is cancelled, and the process goes on (the error does not escape the stream's handler).
    await assert.rejects(
      client.saveBackup(() => {
        throw new Error('no space left on the backup disk');
      }),
      /no space left on the backup disk/,
    );

    // Backup A: the recovery key opens it (the cluster is not autolocked).
    const fileA = join(root, 'a.backup');
    const saveA = await coffer(['snapshot', 'save', fileA, '--output', 'json'], undefined, env);
    assert.equal(saveA.code, 0, saveA.stderr);
    assert.equal((JSON.parse(saveA.stdout) as { opensWith: string }).opensWith, 'the recovery key');
    // No value in the clear in the backup.
    const bytesA = readFileSync(fileA);
    assert.equal(bytesA.subarray(0, 8).toString('latin1'), 'CFRBAK2\n', 'a state on disk is backed up as a stream');
    assert.equal(existsSync(`${fileA}.partial`), false, 'the partial file was renamed into place');
    for (const [, secret] of before)
      for (const v of secret.versions)
        if (v.value !== null) assert.ok(!bytesA.includes(Buffer.from(v.value)), 'a value in the clear in the backup');

    // Backup B after autolock on: the unlock key opens it too.
    const locked = await coffer(['autolock', 'on', '--output', 'json'], undefined, env);
    assert.equal(locked.code, 0, locked.stderr);
    const unlockKey = (JSON.parse(locked.stdout) as { unlockKey: string }).unlockKey;
    await eventually('every manager autolocked', 15_000, async () => {
      const all = await Promise.all(c.managers.map((m) => c.client(m, 3000).keyStatus()));
      return all.every((s) => s.protection === 'unlock-key') ? true : undefined;
    });
    const fileB = join(root, 'b.backup');
    const saveB = await coffer(
      ['snapshot', 'save', fileB, '--output', 'json', '--addr', c.managers[1]!.address],
      undefined,
      env,
    );
    assert.equal(saveB.code, 0, saveB.stderr);
    assert.equal((JSON.parse(saveB.stdout) as { opensWith: string }).opensWith, 'the recovery key or the unlock key');
    client.close();

    // Every manager and every data directory gone.
    const oldIds = await Promise.all(c.managers.map(async (m) => (await c.status(m)).nodeId));
    await c.stop();
    for (const m of c.managers) {
      rmSync(m.data, { recursive: true, force: true });
      rmSync(`${m.data}.key`, { force: true });
    }

    // Wrong keys and altered files: refused by name, nothing written.
    const recoveryFile = join(root, 'recovery.key');
    writeFileSync(recoveryFile, `${c.recoveryKey}\n`, { mode: 0o600 });
    const otherRecovery = join(root, 'other.key');
    writeFileSync(otherRecovery, `${generateRecoveryKey().recoveryKey}\n`, { mode: 0o600 });
    const unlockFile = join(root, 'unlock.key');
    writeFileSync(unlockFile, `${unlockKey}\n`, { mode: 0o600 });
    const restoreArgs = (file: string, dir: string, address: string, keyFlag: string[]) => [
      'snapshot',
      'restore',
      file,
      '--data',
      dir,
      '--listen',
      address,
      ...keyFlag,
    ];
    const wrong = await coffer(
      restoreArgs(fileA, join(root, 'r0'), '127.0.0.1:1', ['--recovery-key-file', otherRecovery]),
    );
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, /recovery key does not open the backup/);
    const noUnlock = await coffer(
      restoreArgs(fileA, join(root, 'r0'), '127.0.0.1:1', ['--unlock-key-file', unlockFile]),
    );
    assert.match(noUnlock.stderr, /not autolocked, so no unlock key opens it/);
    const altered = Buffer.from(bytesA);
    altered[altered.byteLength - 10]! ^= 0x01;
    writeFileSync(join(root, 'altered.backup'), altered);
    const damaged = await coffer(
      restoreArgs(join(root, 'altered.backup'), join(root, 'r0'), '127.0.0.1:1', ['--recovery-key-file', recoveryFile]),
    );
    // The last bytes of a streamed backup are the MAC that binds its records to its header.
    assert.match(damaged.stderr, /altered: its records do not match its header/);
    assert.equal(existsSync(join(root, 'r0')) && readdirSync(join(root, 'r0')).length > 0, false, 'nothing written');
    const cut = bytesA.subarray(0, bytesA.byteLength >> 1);
    writeFileSync(join(root, 'cut.backup'), cut);
    const short = await coffer(
      restoreArgs(join(root, 'cut.backup'), join(root, 'r0'), '127.0.0.1:1', ['--recovery-key-file', recoveryFile]),
    );
    assert.match(short.stderr, /damaged one: it is cut short/);
    const typoKey = `${c.recoveryKey.slice(0, 12)}${c.recoveryKey[12] === 'A' ? 'B' : 'A'}${c.recoveryKey.slice(13)}`;
    const typo = await coffer(restoreArgs(fileA, join(root, 'r0'), '127.0.0.1:1', []), `${typoKey}\n`);
    assert.match(typo.stderr, /typo/);

    // Restore A with the recovery key (read from stdin) and compare everything.
    const addressA = `127.0.0.1:${await freePort()}`;
    const dirA = join(root, 'restored-a');
    // With --autolock: the restored manager gets a new unlock key, and keeps it across restarts.
    const outA = await coffer(
      [...restoreArgs(fileA, dirA, addressA, ['--autolock']), '--output', 'json'],
      `${c.recoveryKey}\n`,
    );
    assert.equal(outA.code, 0, outA.stderr);
    const restoredA = JSON.parse(outA.stdout) as { secrets: number; unlockKey: string };
    assert.equal(restoredA.secrets, 25);
    assert.match(restoredA.unlockKey, /^CFRKEY-1-/);
    restored.start('ra', ['server', '--data', dirA], [], `${restoredA.unlockKey}\n`);
    const read = (address: string) =>
      new CofferClient({
        addresses: [address],
        caPem: readFileSync(env.COFFER_CA, 'utf8'),
        certPem: readFileSync(env.COFFER_CERT, 'utf8'),
        keyPem: readFileSync(env.COFFER_KEY, 'utf8'),
        deadlineMs: 5000,
      });
    const clientA = read(addressA);
    await eventually('the restored manager to serve', 30_000, async () => clientA.get('app/s0'));
    assert.deepEqual(await everything(clientA), before, 'every secret, version, label and deletion is back');
    assert.deepEqual(
      (await clientA.getPolicy('readers')).rules.map((r) => r.path),
      ['app/**'],
    );
    const status = (await clientA.clusterStatus()) as { voters: number[]; role: string };
    assert.equal(status.role, 'leader');
    assert.equal(status.voters.length, 1);
    assert.ok(!oldIds.some((id) => status.voters.includes(id)), 'a new manager id');
    await clientA.put('app/after-restore', Buffer.from('new'));
    // A new manager joins the restored cluster with the backup's join token.
    const joinerAddress = `127.0.0.1:${await freePort()}`;
    restored.start('rj', [
      'join',
      '--data',
      join(root, 'restored-joiner'),
      '--listen',
      joinerAddress,
      '--join',
      addressA,
      '--token-file',
      c.joinTokenFile,
    ]);
    await eventually('the joiner to become a voter', 60_000, async () =>
      ((await clientA.clusterStatus()) as { voters: number[] }).voters.length === 2 ? true : undefined,
    );
    await restored.kill('ra');
    restored.start('ra', ['server', '--data', dirA], [], `${restoredA.unlockKey}\n`);
    assert.equal(
      (
        await eventually('the restored manager back with its own unlock key', 30_000, async () =>
          clientA.get('app/after-restore'),
        )
      ).value.toString(),
      'new',
    );
    clientA.close();

    // Restore B with the unlock key into another directory.
    const addressB = `127.0.0.1:${await freePort()}`;
    const dirB = join(root, 'restored-b');
    const outB = await coffer(restoreArgs(fileB, dirB, addressB, ['--unlock-key-file', unlockFile]));
    assert.equal(outB.code, 0, outB.stderr);
    restored.start('rb', ['server', '--data', dirB]);
    const clientB = read(addressB);
    await eventually('the second restored manager to serve', 30_000, async () => clientB.get('app/s0'));
    assert.deepEqual(await everything(clientB), before);
    // Restored without --autolock from an autolocked backup: the cluster follows (autolock off),
    // and a restart needs no unlock key.
    await eventually('the restored cluster on key files', 20_000, async () =>
      (await clientB.keyStatus()).protection === 'key-file' ? true : undefined,
    );
    await restored.kill('rb');
    restored.start('rb', ['server', '--data', dirB]);
    await eventually('the second restored manager back without a key', 30_000, async () => clientB.get('app/s0'));
    clientB.close();
  } finally {
    await cluster?.stop();
    await restored.killAll();
    rmSync(root, { recursive: true, force: true });
  }
});
