import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Barrier } from '../../src/barrier/barrier.ts';
import { decodePayload } from '../../src/barrier/payload.ts';
import { CryptoError, type CryptoErrorCode } from '../../src/crypto/errors.ts';
import { KeyStore } from '../../src/crypto/key-store.ts';
import { DataDir } from '../../src/manager/data-dir.ts';
import { Keyring } from '../../src/crypto/keyring.ts';
import { ManagerError, ProposalRefused, type ManagerErrorCode } from '../../src/manager/errors.ts';
import { LevelStorage } from '../../src/storage/level-storage.ts';
import { LocalCluster } from './cluster.ts';
import { putCommand } from './kv-machine.ts';
import { operator } from './operator.ts';

const refusedWith = (code: CryptoErrorCode | ManagerErrorCode) => (error: unknown) =>
  (error instanceof CryptoError || error instanceof ManagerError) && error.code === code;
/** A keyring operation the replicated state refused, or one that changed nothing. */
const keyOpRefused = (error: unknown) => error instanceof ProposalRefused && error.source === 'key-op';

/** The keyring terms of the commands in a manager's stored log, by index. */
async function sealedTerms(dataDir: string): Promise<Map<number, number>> {
  const storage = await LevelStorage.open(new DataDir(dataDir).raft);
  try {
    const state = await storage.load();
    const terms = new Map<number, number>();
    for (const entry of state.entries) {
      if (entry.kind !== 'normal' || entry.data.byteLength === 0) continue;
      const payload = decodePayload(entry.data);
      if (payload.type === 'command') terms.set(entry.index, Keyring.termOf(payload.sealed));
    }
    return terms;
  } finally {
    await storage.close();
  }
}

test('the first leader adds keyring term 1 through the log, and every command in the log is sealed under it', {
  timeout: 30_000,
}, async () => {
  const cluster = new LocalCluster(3);
  try {
    await cluster.init();
    await cluster.startAll();
    for (let k = 0; k < 20; k++) await cluster.put(`k${k}`, `value-${k}`);
    await cluster.converged();
    for (const id of cluster.ids) {
      assert.equal(cluster.managers.get(id)!.status().keys!.activeTerm, 1);
      assert.equal(cluster.machines.get(id)!.map.get('k19'), 'value-19');
    }
    await cluster.stopAll();
    for (const id of cluster.ids) {
      const terms = await sealedTerms(cluster.dataDir(id));
      assert.equal(terms.size, 20);
      assert.deepEqual(new Set(terms.values()), new Set([1]));
    }
  } finally {
    await cluster.destroy();
  }
});

test('a rotation switches every manager to the new term at the same index; old commands still open after a restart', {
  timeout: 30_000,
}, async () => {
  const cluster = new LocalCluster(3);
  try {
    await cluster.init();
    await cluster.startAll();
    await cluster.put('before', 'old-term-value');
    const leader = await cluster.leader();
    assert.match(await cluster.operator(leader).key({ op: 'rotate' }), /keyring term 2 is active from index (\d+)/);
    await cluster.put('after', 'new-term-value');
    await cluster.converged();
    await cluster.stopAll();
    const perManager = await Promise.all(cluster.ids.map((id) => sealedTerms(cluster.dataDir(id))));
    for (const terms of perManager)
      assert.deepEqual(
        [...terms.values()],
        [1, 2],
        'the command before the rotation is under term 1, the one after under term 2',
      );
    assert.deepEqual(
      [...perManager[1]!.keys()],
      [...perManager[0]!.keys()],
      'every manager holds the same sealed commands at the same indexes',
    );

    await cluster.startAll();
    await cluster.converged();
    for (const id of cluster.ids) {
      const machine = cluster.machines.get(id)!;
      assert.equal(machine.map.get('before'), 'old-term-value');
      assert.equal(machine.map.get('after'), 'new-term-value');
      assert.equal(cluster.managers.get(id)!.status().keys!.activeTerm, 2);
    }
  } finally {
    await cluster.destroy();
  }
});

test('an old term can be destroyed only after a rewrap; afterwards its ciphertext is refused with a clear error on every manager', {
  timeout: 30_000,
}, async () => {
  const cluster = new LocalCluster(3);
  try {
    await cluster.init();
    await cluster.startAll();
    await cluster.put('a', 'term-1-value');
    const leader = await cluster.leader();
    await cluster.operator(leader).key({ op: 'rotate' });
    await assert.rejects(
      cluster.operator(leader).key({ op: 'destroy', term: 1 }),
      (e: unknown) => keyOpRefused(e) && /rewrap first/.test((e as Error).message),
    );
    await assert.rejects(
      cluster.operator(leader).key({ op: 'destroy', term: 2 }),
      (e: unknown) => keyOpRefused(e) && /active term/.test((e as Error).message),
    );
    await cluster.operator(leader).key({ op: 'rewrap' });
    assert.match(await cluster.operator(leader).key({ op: 'destroy', term: 1 }), /term 1 is destroyed/);
    await assert.rejects(
      cluster.operator(leader).key({ op: 'destroy', term: 1 }),
      (e: unknown) => keyOpRefused(e) && /already destroyed/.test((e as Error).message),
    );
    await cluster.put('b', 'term-2-value');
    await cluster.converged();
    for (const id of cluster.ids) {
      const status = cluster.managers.get(id)!.status().keys!;
      assert.deepEqual(
        status.terms.map((t) => [t.term, t.destroyed]),
        [
          [1, true],
          [2, false],
        ],
      );
      assert.equal(
        cluster.machines.get(id)!.map.get('a'),
        'term-1-value',
        'the rewrap kept the data, now under term 2',
      );
    }
    // Every manager dropped its log up to the rewrap: no command sealed under term 1 is left on disk.
    await cluster.stopAll();
    for (const id of cluster.ids)
      assert.ok(
        ![...(await sealedTerms(cluster.dataDir(id))).values()].includes(1),
        `manager ${id} still stores term 1 ciphertext`,
      );
    await cluster.startAll();
    await cluster.converged();
    for (const id of cluster.ids) assert.equal(cluster.machines.get(id)!.map.get('a'), 'term-1-value');
  } finally {
    await cluster.destroy();
  }
});

test('a command sealed under a term that is destroyed before it commits is refused, the same way on every manager', async () => {
  const reserved = new Map<number, number>();
  const keyStoreless = {
    rootGen: 1,
    unlockGen: 0,
    usesReserved: (term: number) => reserved.get(term) ?? 0,
    reserveUses: async (term: number, uses: number) => void reserved.set(term, uses),
    rewrap: async () => undefined,
  };
  const root = Buffer.alloc(32, 7);
  const machines = [0, 1].map(
    () =>
      new (class {
        seen: string[] = [];
        apply(c: { data: Buffer }) {
          this.seen.push(c.data.toString());
          return this.seen.length;
        }
        snapshot() {
          return Buffer.from(JSON.stringify(this.seen));
        }
        restore(d: Uint8Array) {
          this.seen = JSON.parse(Buffer.from(d).toString()) as string[];
        }
      })(),
  );
  const barriers = machines.map(
    (inner) => new Barrier<number>({ clusterId: 'c', rootKey: root, local: keyStoreless, inner }),
  );
  const proposer = barriers[0]!;
  const log: Buffer[] = [proposer.rotatePayload(1)];
  const applyAll = (from: number) => {
    const results = barriers.map((b) =>
      log.slice(from).map((data, k) => b.apply({ index: from + k + 1, term: 1, kind: 'normal', data })),
    );
    return results;
  };
  applyAll(0);
  const early = await proposer.sealCommand('kv.put', Buffer.from('sealed-under-term-1'));
  log.push(proposer.rotatePayload(2), proposer.rewrapPayload(), proposer.destroyPayload(1), early);
  const results = applyAll(1);
  for (const perBarrier of results) {
    assert.deepEqual(
      perBarrier.slice(0, 3).map((r) => r.type),
      ['key-op', 'key-op', 'key-op'],
    );
    const last = perBarrier[3]!;
    assert.equal(last.type, 'refused');
    assert.equal(last.type === 'refused' && last.code, 'KEY_TERM_DESTROYED');
    assert.match(
      last.type === 'refused' ? last.message : '',
      /kv\.put command at index 5 cannot be opened: .*keyring term 1, which was destroyed/,
    );
  }
  assert.deepEqual(
    machines.map((m) => m.seen),
    [[], []],
  );
});

test('with autolock a restarted manager is locked and takes no part until unlocked; a typo and a wrong key change nothing', {
  timeout: 30_000,
}, async () => {
  const cluster = new LocalCluster(3);
  try {
    await cluster.init({ autolock: true });
    const unlockKey = cluster.unlockKey!;
    await cluster.startAll();
    for (const id of cluster.ids) {
      assert.equal(cluster.managers.get(id)!.locked, true);
      await cluster.managers.get(id)!.unlock(unlockKey);
    }
    await cluster.put('x', 'autolocked-value');
    await cluster.converged();
    await cluster.stop(3);
    const locked = await cluster.start(3);
    assert.equal(locked.locked, true);
    await assert.rejects(operator(locked).propose('kv.put', putCommand('y', 'z')), refusedWith('MANAGER_LOCKED'));
    await cluster.put('while-locked', 'v');
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.ok(
      locked.status().messagesDroppedWhileLocked > 0,
      'the locked manager received heartbeats and dropped them',
    );
    assert.equal(cluster.machines.get(3)!.map.size, 0, 'a locked manager applies nothing');

    const typo = unlockKey.slice(0, 20) + (unlockKey[20] === 'A' ? 'B' : 'A') + unlockKey.slice(21);
    await assert.rejects(
      locked.unlock(typo),
      (e: unknown) => refusedWith('UNLOCK_KEY_MALFORMED')(e) && /typo/.test((e as Error).message),
    );
    const other = await new LocalCluster(1);
    await other.init({ autolock: true });
    await assert.rejects(locked.unlock(other.unlockKey!), refusedWith('UNLOCK_KEY_WRONG'));
    await other.destroy();
    assert.equal(locked.locked, true);

    await locked.unlock(unlockKey);
    await cluster.converged();
    assert.equal(cluster.machines.get(3)!.map.get('while-locked'), 'v');
    assert.equal(cluster.machines.get(3)!.map.get('x'), 'autolocked-value');
  } finally {
    await cluster.destroy();
  }
});

test('unlock-key rotation: afterwards only the new key opens each manager; root-key rotation: everything still reads after restarts', {
  timeout: 30_000,
}, async () => {
  const cluster = new LocalCluster(3);
  try {
    await cluster.init();
    await cluster.startAll();
    await cluster.put('k', 'before-rotations');
    const leader = await cluster.leader();
    assert.match(await cluster.operator(leader).key({ op: 'rotate-root' }), /root key generation 2 is current/);
    await cluster.put('k2', 'after-root-rotation');
    const unlockKey = await cluster.operator(leader).rotateUnlock();
    // A local effect (the leader's key record rewrapped under the new unlock key) is durable
    // before the operator hears back, though a secret's write is answered before its records are.
    const answeredAt = await KeyStore.read(new DataDir(cluster.dataDir(leader.id)).keyStore);
    assert.equal(answeredAt.unlockGen, 1, "the leader's key record was not rewrapped when the rotation was answered");
    await cluster.converged();
    await cluster.stopAll();
    for (const id of cluster.ids) {
      const store = await KeyStore.read(new DataDir(cluster.dataDir(id)).keyStore);
      assert.equal(store.protection, 'unlock-key', `manager ${id} switched to autolock`);
      assert.equal(store.unlockGen, 1);
      assert.equal(
        store.rootGen,
        2,
        `manager ${id} rewrapped its root key at generation 2 once a snapshot under it was durable`,
      );
    }
    await cluster.startAll();
    for (const id of cluster.ids) {
      const manager = cluster.managers.get(id)!;
      assert.equal(manager.locked, true);
      await manager.unlock(unlockKey);
    }
    await cluster.converged();
    for (const id of cluster.ids) {
      assert.equal(cluster.machines.get(id)!.map.get('k'), 'before-rotations');
      assert.equal(cluster.machines.get(id)!.map.get('k2'), 'after-root-rotation');
    }
  } finally {
    await cluster.destroy();
  }
});

test('the leader rotates the keyring by itself when the active key is older than the interval', {
  timeout: 30_000,
}, async () => {
  const cluster = new LocalCluster(1);
  try {
    await cluster.init();
    await cluster.startAll({ keyRotationIntervalMs: 300 });
    await cluster.put('a', '1');
    const manager = cluster.managers.get(1)!;
    const deadline = Date.now() + 10_000;
    while (manager.status().keys!.activeTerm < 3) {
      assert.ok(Date.now() < deadline, 'no scheduled rotation happened');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.ok(cluster.logLines.some((line) => line.includes('"event":"keyring-rotated"')));
  } finally {
    await cluster.destroy();
  }
});

test('encryptions counted against a key survive restarts, through reservations in the key store', {
  timeout: 30_000,
}, async () => {
  const cluster = new LocalCluster(1);
  try {
    await cluster.init();
    await cluster.startAll();
    await cluster.put('a', '1');
    const before = cluster.managers.get(1)!.status().keys!.usesOfActiveTerm;
    assert.ok(before >= 1);
    await cluster.stopAll();
    const reserved = (await KeyStore.read(new DataDir(cluster.dataDir(1)).keyStore)).usesReserved(1);
    assert.ok(reserved >= before, `reserved ${reserved} < used ${before}`);
    await cluster.startAll();
    await cluster.converged();
    assert.ok(
      cluster.managers.get(1)!.status().keys!.usesOfActiveTerm >= reserved,
      'a restart resumes from the reservation, not from zero',
    );
  } finally {
    await cluster.destroy();
  }
});

test('a command the state cannot apply, or a key operation whose key does not open, is refused alike everywhere instead of stopping the managers', async () => {
  const reserved = new Map<number, number>();
  const local = {
    rootGen: 1,
    unlockGen: 0,
    usesReserved: (t: number) => reserved.get(t) ?? 0,
    reserveUses: async (t: number, u: number) => void reserved.set(t, u),
    rewrap: async () => undefined,
  };
  const throwing = {
    apply(): number {
      throw new Error('malformed command data');
    },
    snapshot: () => Buffer.alloc(0),
    restore: () => undefined,
  };
  const barrier = new Barrier<number>({ clusterId: 'c', rootKey: Buffer.alloc(32, 1), local, inner: throwing });
  barrier.apply({ index: 1, term: 1, kind: 'normal', data: barrier.rotatePayload(0) });
  const result = barrier.apply({
    index: 2,
    term: 1,
    kind: 'normal',
    data: await barrier.sealCommand('kv.put', Buffer.from('x')),
  });
  assert.equal(result.type, 'refused');
  assert.equal(result.type === 'refused' && result.code, 'COMMAND_MALFORMED');
  // A rotation whose key was sealed under another root key (corrupt or forged) is refused too.
  const stranger = new Barrier<number>({ clusterId: 'c', rootKey: Buffer.alloc(32, 2), local, inner: throwing });
  stranger.apply({ index: 1, term: 1, kind: 'normal', data: stranger.rotatePayload(0) });
  const forged = barrier.apply({ index: 3, term: 1, kind: 'normal', data: stranger.rotatePayload(0) });
  assert.equal(forged.type, 'refused');
  assert.match(
    forged.type === 'refused' ? forged.message : '',
    /rotate at index 3 was refused: the data key of keyring term 2: authentication failed/,
  );
});

test('one write path: a follower seals a command and forwards it to the leader, which applies it on every manager; a refusal comes back typed', {
  timeout: 30_000,
}, async () => {
  const cluster = new LocalCluster(3);
  try {
    await cluster.init();
    await cluster.startAll();
    await cluster.put('warm', 'up');
    const leader = await cluster.leader();
    const follower = [...cluster.managers.values()].find((m) => m !== leader)!;
    assert.notEqual(follower.status().raft?.role, 'leader');
    const usesBefore = follower.status().keys!.usesOfActiveTerm;
    const applied = await cluster.operator(follower).propose('kv.put', putCommand('via-follower', 'v'));
    assert.equal(applied, cluster.machines.get(leader.id)!.puts, "the answer is the leader's result");
    assert.ok(follower.status().keys!.usesOfActiveTerm > usesBefore, 'the follower sealed it, under its own key uses');
    await cluster.converged();
    for (const id of cluster.ids) assert.equal(cluster.machines.get(id)!.map.get('via-follower'), 'v');
    // Keyring operations take the same path; a refusal is typed, whoever asked.
    assert.match(await cluster.operator(follower).key({ op: 'rotate' }), /keyring term 2 is active/);
    await assert.rejects(
      cluster.operator(follower).key({ op: 'destroy', term: 2 }),
      (e: unknown) => keyOpRefused(e) && /active term/.test((e as Error).message),
    );
  } finally {
    await cluster.destroy();
  }
});
