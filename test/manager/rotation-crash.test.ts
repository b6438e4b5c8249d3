import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Manager } from '../../src/manager/manager.ts';
import { ProposalRefused } from '../../src/manager/errors.ts';
import { createLogger } from '../../src/util/logger.ts';
import { SeededRandom } from '../../src/util/prng.ts';
import { KvMachine, putCommand } from './kv-machine.ts';
import { operator } from './operator.ts';

const fixture = fileURLToPath(new URL('./fixtures/rotation-crash.ts', import.meta.url));

/** Every step of every rotation, named by the crash point a kill -9 hits (see `reached()` calls). */
const CASES: ReadonlyArray<readonly [operation: string, crashPoint: string]> = [
  ['rotate', 'rotate:applied'],
  ['rotate', 'key-store:reserve:temporary-written'],
  ['rotate', 'key-store:reserve:renamed'],
  ['rewrap', 'rewrap:applied'],
  ['rewrap', 'replica:snapshot-saved'],
  ['destroy', 'destroy:applied'],
  ['destroy', 'replica:snapshot-saved'],
  ['destroy', 'snapshot:durable'],
  ['rotate-root', 'rotate-root:applied'],
  ['rotate-root', 'replica:snapshot-saved'],
  ['rotate-root', 'key-store:rewrap:temporary-written'],
  ['rotate-root', 'key-store:rewrap:renamed'],
  ['rotate-unlock', 'rotate-unlock:applied'],
  ['rotate-unlock', 'key-store:rewrap:temporary-written'],
  ['rotate-unlock', 'key-store:rewrap:renamed'],
];

async function reopen(
  dataDir: string,
  keyFile: string,
  unlockKeys: string[],
): Promise<{ manager: Manager<number>; machine: KvMachine }> {
  const machine = new KvMachine();
  const manager = await Manager.open<number>({
    dataDir,
    id: 1,
    keyFile,
    peers: { send: () => undefined },
    inner: machine,
    random: new SeededRandom(2),
    bootstrapVoters: [1],
    logger: createLogger({ level: 'silent' }),
    tickIntervalMs: 10,
  });
  if (manager.locked) {
    const opened = [];
    for (const key of unlockKeys) {
      if (!manager.locked) break;
      await manager.unlock(key).then(
        () => opened.push(key),
        () => undefined,
      );
    }
    assert.equal(manager.locked, false, 'neither the old nor the new unlock key opens the manager');
  }
  const deadline = Date.now() + 10_000;
  // A leader, with its own term's first entry committed (commit reaches its last index) and applied.
  const ready = (): boolean => {
    const raft = manager.status().raft;
    return raft !== null && raft.role === 'leader' && raft.commit === raft.lastIndex && raft.applied === raft.commit;
  };
  while (!ready()) {
    assert.ok(Date.now() < deadline, 'the restarted manager did not become leader and catch up');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  await manager.linearizableRead();
  return { manager, machine };
}

for (const [operation, crashPoint] of CASES) {
  test(`a kill -9 at "${crashPoint}" during ${operation} leaves a manager that starts and reads everything`, {
    timeout: 60_000,
  }, async () => {
    const root = mkdtempSync(join(tmpdir(), 'coffer-rotation-crash-'));
    try {
      const dataDir = join(root, 'data');
      const keyFile = join(root, 'key');
      await Manager.init(dataDir, { keyFile });
      const child = spawnSync(process.execPath, ['--import', 'tsx', fixture, dataDir, keyFile, operation, crashPoint], {
        encoding: 'utf8',
        timeout: 45_000,
      });
      assert.equal(
        child.signal,
        'SIGKILL',
        `the fixture should die at ${crashPoint}; it exited with ${child.status}: ${child.stderr}`,
      );

      const nextUnlockKey = join(root, 'next-unlock-key');
      const unlockKeys = existsSync(nextUnlockKey) ? [readFileSync(nextUnlockKey, 'utf8')] : [];
      let { manager, machine } = await reopen(dataDir, keyFile, unlockKeys);
      for (let k = 0; k < 20; k++) assert.equal(machine.map.get(`k${k}`), `value-${k}`, `k${k} after the crash`);

      // Finish the operation; it may have committed before the crash already.
      const finish = async (): Promise<void> => {
        const tolerate = (error: unknown) => {
          if (!(error instanceof ProposalRefused && error.source === 'key-op')) throw error;
        };
        if (operation === 'rotate-root') await operator(manager).key({ op: 'rotate-root' });
        else if (operation === 'rotate-unlock') unlockKeys.unshift(await operator(manager).rotateUnlock());
        else {
          if (manager.status().keys!.activeTerm < 2) await operator(manager).key({ op: 'rotate' });
          if (operation !== 'rotate') await operator(manager).key({ op: 'rewrap' });
          if (operation === 'destroy') await operator(manager).key({ op: 'destroy', term: 1 }).catch(tolerate);
        }
      };
      await finish();
      await operator(manager).propose('kv.put', putCommand('after-recovery', 'ok'));
      await manager.stop();

      ({ manager, machine } = await reopen(dataDir, keyFile, unlockKeys));
      for (let k = 0; k < 20; k++)
        assert.equal(machine.map.get(`k${k}`), `value-${k}`, `k${k} after finishing ${operation}`);
      assert.equal(machine.map.get('after-recovery'), 'ok');
      const keys = manager.status().keys!;
      if (operation === 'destroy')
        assert.deepEqual(
          keys.terms.map((t) => t.destroyed),
          [true, false],
        );
      if (operation === 'rotate-root') assert.ok(keys.rootGen >= 2);
      if (operation === 'rotate-unlock') assert.equal(manager.status().keyStore.protection, 'unlock-key');
      await manager.stop();
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
}
