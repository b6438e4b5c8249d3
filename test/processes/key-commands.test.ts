import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProcessCluster, type Manager } from '../chaos/process-cluster.ts';
import { generateUnlockKey } from '../../src/crypto/unlock-key.ts';
import { coffer, eventually } from './processes.ts';

// The keyring from the command line, on three manager processes: status, rotate, rewrap, destroy
// (refused until a rewrap), root-key rotation, and autolock on, after which a restarted manager
// needs the new unlock key.
test('coffer key status|rotate|rewrap|destroy|rotate-root and coffer autolock on|off, end to end', {
  timeout: 240_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-keys-cli-'));
  let cluster: ProcessCluster | null = null;
  try {
    cluster = await ProcessCluster.start(root, 3);
    const c = cluster;
    const env = {
      COFFER_CA: join(c.adminDir, 'ca.crt'),
      COFFER_CERT: join(c.adminDir, 'admin.crt'),
      COFFER_KEY: join(c.adminDir, 'admin.key'),
    };
    const cli = async (args: string[], at: Manager) => {
      const r = await coffer([...args, '--addr', at.address], undefined, env);
      return r;
    };
    const json = async <T>(args: string[], at: Manager): Promise<T> => {
      const r = await cli([...args, '--output', 'json'], at);
      assert.equal(r.code, 0, `${args.join(' ')}: ${r.stderr}`);
      return JSON.parse(r.stdout) as T;
    };
    type KeyStatus = {
      activeTerm: number;
      terms: number[];
      destroyedTerms: number[];
      recordsByTerm: Array<{ term: number; records: number }>;
      rootGeneration: number;
      unlockGeneration: number;
      protection: string;
    };
    const leader = (await c.leader())!;
    const follower = c.managers.find((m) => m !== leader)!;
    const before = await json<KeyStatus>(['key', 'status'], follower);
    assert.ok(before.activeTerm >= 1);
    assert.equal(before.protection, 'key-file');
    const text = await cli(['key', 'status'], follower);
    assert.match(text.stdout, /active data key: term \d+/);

    // Rotation asked of a follower: forwarded, applied everywhere at one index.
    const writer = c.client(leader, 5000);
    await writer.put('keys/a', Buffer.from('sealed under the first term'));
    const rotated = await json<{ activeTerm: number }>(['key', 'rotate'], follower);
    assert.equal(rotated.activeTerm, before.activeTerm + 1);
    await eventually('every manager on the new term', 10_000, async () => {
      const all = await Promise.all(c.managers.map((m) => json<KeyStatus>(['key', 'status'], m)));
      return all.every((s) => s.activeTerm === rotated.activeTerm) ? true : undefined;
    });
    // Destroying the old term before a rewrap is refused: data still needs it.
    const early = await cli(['key', 'destroy', String(before.activeTerm)], leader);
    assert.notEqual(early.code, 0);
    assert.match(early.stderr, /FAILED_PRECONDITION/);
    assert.equal((await writer.get('keys/a')).value.toString(), 'sealed under the first term');
    // Rewrap, then destroy: refused while the leader re-seals the stored records in the
    // background (each refusal says how many are left), then done; the value survives.
    await json(['key', 'rewrap'], follower);
    await eventually('the old term destroyed once no record is sealed under it', 20_000, async () => {
      const attempt = await cli(['key', 'destroy', String(before.activeTerm)], follower);
      if (attempt.code === 0) return true;
      assert.match(attempt.stderr, /records of the applied state are still sealed under keyring term/);
      return undefined;
    });
    const after = await json<KeyStatus>(['key', 'status'], leader);
    assert.ok(after.destroyedTerms.includes(before.activeTerm), JSON.stringify(after));
    assert.ok(
      !after.recordsByTerm.some((r) => r.term === before.activeTerm) &&
        after.recordsByTerm.some((r) => r.term === rotated.activeTerm && r.records >= 2),
      `the records moved to the new term: ${JSON.stringify(after.recordsByTerm)}`,
    );
    assert.ok(!after.terms.includes(before.activeTerm));
    assert.equal((await writer.get('keys/a')).value.toString(), 'sealed under the first term');
    const malformed = await cli(['key', 'destroy', 'old'], leader);
    assert.notEqual(malformed.code, 0);
    assert.match(malformed.stderr, /term/);

    // Root key rotation.
    await json(['key', 'rotate-root'], leader);
    assert.equal((await json<KeyStatus>(['key', 'status'], leader)).rootGeneration, before.rootGeneration + 1);

    // Autolock on: a new unlock key, printed once; every manager's root key now wrapped by it.
    const locked = await json<{ unlockKey: string }>(['autolock', 'on'], follower);
    assert.match(locked.unlockKey, /^CFRKEY-1-/);
    await eventually('every manager autolocked', 10_000, async () => {
      const all = await Promise.all(c.managers.map((m) => json<KeyStatus>(['key', 'status'], m)));
      return all.every((s) => s.protection === 'unlock-key') ? true : undefined;
    });
    // A restarted manager without the key waits, locked, for coffer unlock; with the key, it serves.
    await c.kill(follower);
    c.restart(follower);
    await eventually(`${follower.name} to wait for its unlock key`, 30_000, async () =>
      c.procs.log(follower.name).includes('waiting for the unlock key') ? true : undefined,
    );
    const wrongKey = await coffer(
      ['unlock', '--data', follower.data],
      'CFRKEY-1-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-AAAA\n',
    );
    assert.notEqual(wrongKey.code, 0);
    assert.match(wrongKey.stderr, /UNLOCK_KEY_MALFORMED|typo/);
    const otherKey = await coffer(['unlock', '--data', follower.data], `${generateUnlockKey()}\n`);
    assert.notEqual(otherKey.code, 0);
    assert.match(otherKey.stderr, /UNLOCK_KEY_WRONG/);
    assert.ok(c.procs.running(follower.name), 'a wrong key leaves it waiting');
    const unlocked = await coffer(['unlock', '--data', follower.data], `${locked.unlockKey}\n`);
    assert.equal(unlocked.code, 0, unlocked.stderr);
    const reader = c.client(follower, 5000);
    const got = await eventually(`${follower.name} back with the unlock key`, 30_000, async () =>
      reader.get('keys/a'),
    ).catch((error: Error) => {
      throw new Error(`${error.message}\n${c.procs.log(follower.name).split('\n').slice(-8).join('\n')}`);
    });
    assert.equal(got.value.toString(), 'sealed under the first term');

    // Autolock off: every manager back on its key file; a restart needs no key again.
    const off = await cli(['autolock', 'off'], leader);
    assert.equal(off.code, 0, off.stderr);
    await eventually('every manager on its key file', 15_000, async () => {
      const all = await Promise.all(c.managers.map((m) => json<KeyStatus>(['key', 'status'], m)));
      return all.every((s) => s.protection === 'key-file') ? true : undefined;
    });
    const again = await cli(['autolock', 'off'], leader);
    assert.match(again.stderr, /FAILED_PRECONDITION: autolock is already off/);
    await c.kill(follower);
    c.restart(follower);
    assert.equal(
      (
        await eventually(`${follower.name} back without a key`, 30_000, async () => reader.get('keys/a'))
      ).value.toString(),
      'sealed under the first term',
    );
    reader.close();
    writer.close();
  } finally {
    await cluster?.stop();
    rmSync(root, { recursive: true, force: true });
  }
});
