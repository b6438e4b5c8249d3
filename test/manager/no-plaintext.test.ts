import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Level } from 'level';
import { KeyStore } from '../../src/crypto/key-store.ts';
import { DataDir } from '../../src/manager/data-dir.ts';
import { readKeyFile } from '../../src/crypto/root-key.ts';
import { parseUnlockKey, unlockKeyKek } from '../../src/crypto/unlock-key.ts';
import { LocalCluster } from './cluster.ts';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

function randomValue(): string {
  return [...randomBytes(28)].map((b) => ALPHABET[b % ALPHABET.length]).join('');
}

/** The forms a secret could leak in: raw, hex and base64 (standard and URL-safe). */
function forms(secret: Buffer): Buffer[] {
  return [
    secret,
    Buffer.from(secret.toString('hex')),
    Buffer.from(secret.toString('hex').toUpperCase()),
    Buffer.from(secret.toString('base64')),
    Buffer.from(secret.toString('base64url')),
  ];
}

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...filesUnder(path));
    else out.push(path);
  }
  return out;
}

/** Which secrets (by label) appear in any of the files or log lines. */
function leaks(
  haystacks: ReadonlyArray<{ where: string; bytes: Buffer }>,
  secrets: ReadonlyMap<string, Buffer>,
): string[] {
  const found: string[] = [];
  for (const [label, secret] of secrets) {
    for (const form of forms(secret)) {
      const hit = haystacks.find((h) => h.bytes.includes(form));
      if (hit !== undefined) found.push(`${label} in ${hit.where}`);
    }
  }
  return found;
}

test('no value, root key or unlock key is in any file of the data directories or in any log line, in plain, hex or base64', {
  timeout: 120_000,
}, async () => {
  const cluster = new LocalCluster(3);
  try {
    await cluster.init();
    // Snapshots every 50 entries, so state images are on disk too, not only log entries.
    await cluster.startAll({ snapshotEveryEntries: 50, snapshotTailEntries: 10 });
    const secrets = new Map<string, Buffer>();
    for (let k = 0; k < 300; k++) {
      const value = randomValue();
      secrets.set(`value ${k}`, Buffer.from(value));
      await cluster.put(`db/password-${k}`, value);
      if (k === 150) await cluster.operator(await cluster.leader()).key({ op: 'rotate' });
    }
    const unlockKey = await cluster.operator(await cluster.leader()).rotateUnlock();
    await cluster.converged();
    await cluster.stopAll();
    // Restart (locked), unlock, read: restarts write too.
    await cluster.startAll({ snapshotEveryEntries: 50, snapshotTailEntries: 10 });
    for (const manager of cluster.managers.values()) await manager.unlock(unlockKey);
    await cluster.converged();
    for (const id of cluster.ids) assert.equal(cluster.machines.get(id)!.map.size, 300);
    const rootKey = (await KeyStore.read(new DataDir(cluster.dataDir(1)).keyStore)).openRoot(
      unlockKeyKek(parseUnlockKey(unlockKey), cluster.clusterId),
    );
    secrets.set('the root key', rootKey);
    secrets.set('the unlock key', Buffer.from(unlockKey));
    secrets.set('the first key file', readKeyFile(cluster.keyFile(1)));
    await cluster.stopAll();

    const haystacks = [
      ...cluster.ids.flatMap((id) =>
        filesUnder(cluster.dataDir(id)).map((path) => ({ where: path, bytes: readFileSync(path) })),
      ),
      ...cluster.logLines.map((line, n) => ({ where: `log line ${n}`, bytes: Buffer.from(line) })),
    ];
    assert.ok(haystacks.length > 20 && cluster.logLines.length > 10, 'there are files and log lines to search');
    assert.deepEqual(leaks(haystacks, secrets), []);

    // The search can fail: a value written to a LevelDB in plaintext is found in the same way.
    const control = join(cluster.root, 'control');
    const db = new Level<string, string>(control);
    const planted = randomValue();
    await db.put('k', planted);
    await db.close();
    const controlFiles = filesUnder(control).map((path) => ({ where: path, bytes: readFileSync(path) }));
    assert.ok(
      leaks(controlFiles, new Map([['planted', Buffer.from(planted)]])).length >= 1,
      'a plaintext value in LevelDB files is found',
    );
    assert.ok(
      leaks(
        [{ where: 'line', bytes: Buffer.from(`{"v":"${Buffer.from(planted).toString('hex')}"}`) }],
        new Map([['planted', Buffer.from(planted)]]),
      ).length >= 1,
      'a hex value in a log line is found',
    );
  } finally {
    await cluster.destroy();
  }
});
