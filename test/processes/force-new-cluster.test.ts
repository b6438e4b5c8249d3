import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ProcessCluster } from '../chaos/process-cluster.ts';
import { eventually, freePort } from './processes.ts';

// Quorum loss for good: two of three managers are gone. The survivor starts a one-member cluster
// from its data with --force-new-cluster; a new manager joins it; an old member that comes back
// is refused and disturbs nothing.
test('coffer server --force-new-cluster starts a one-member cluster from a survivor, new managers join, old members are refused', {
  timeout: 240_000,
}, async () => {
  const root = mkdtempSync(join(tmpdir(), 'coffer-force-'));
  let cluster: ProcessCluster | null = null;
  try {
    cluster = await ProcessCluster.start(root, 3);
    const c = cluster;
    const [m1, m2, m3] = c.managers as [(typeof c.managers)[0], (typeof c.managers)[0], (typeof c.managers)[0]];
    const writer = c.client(m1, 5000);
    for (let k = 0; k < 20; k++) await writer.put(`force/k${k}`, Buffer.from(`v${k}`));
    writer.close();
    const survivorId = (await c.status(m2)).nodeId;
    const oldIds = await Promise.all([m1, m3].map(async (m) => (await c.status(m)).nodeId));
    await eventually('m2 to have applied every write', 10_000, async () =>
      (await c.status(m2)).appliedIndex >= (await c.status(m1)).appliedIndex ? true : undefined,
    );
    for (const m of c.managers) await c.kill(m);

    // Without the flag, the survivor alone has no quorum: no leader.
    c.restart(m2);
    await eventually('m2 to answer', 30_000, async () => c.status(m2));
    await new Promise((resolve) => setTimeout(resolve, 3000)); // several election timeouts
    assert.notEqual((await c.status(m2)).role, 'leader');
    await c.kill(m2);

    c.procs.start(m2.name, ['server', '--data', m2.data, '--force-new-cluster']);
    const alone = await eventually('the survivor to lead alone', 30_000, async () => {
      const s = await c.status(m2);
      return s.role === 'leader' && s.voters.length === 1 ? s : undefined;
    });
    assert.deepEqual(alone.voters, [survivorId]);
    const client = c.client(m2, 5000);
    for (let k = 0; k < 20; k++)
      assert.equal((await client.get(`force/k${k}`)).value.toString(), `v${k}`, `force/k${k} survived`);
    await client.put('force/after', Buffer.from('written by the new cluster'));

    // A new manager joins the new cluster with the old join token (it is in the replicated state).
    const m4 = { name: 'm4', slot: 3, data: join(root, 'm4'), address: `127.0.0.1:${await freePort()}` };
    c.procs.start(m4.name, [
      'join',
      '--data',
      m4.data,
      '--listen',
      m4.address,
      '--join',
      m2.address,
      '--token-file',
      c.joinTokenFile,
    ]);
    await eventually('the new manager to become a voter', 60_000, async () =>
      (await c.status(m2)).voters.length === 2 ? true : undefined,
    );
    c.managers.push(m4);
    const fromNew = c.client(m4, 5000);
    assert.equal(
      (await eventually('a read on the new manager', 20_000, async () => fromNew.get('force/after'))).value.toString(),
      'written by the new cluster',
    );

    // An old member comes back with its old data: it is not a member, its certificate is refused.
    c.restart(m1);
    await new Promise((resolve) => setTimeout(resolve, 4000));
    const after = await c.status(m2);
    assert.equal(after.role, 'leader', 'the old member did not disturb the new cluster');
    assert.equal(after.voters.length, 2);
    for (const id of oldIds) assert.ok(!after.voters.includes(id) && !after.learners.includes(id));
    await client.put('force/still', Buffer.from('ok'));
    assert.equal((await fromNew.get('force/still')).value.toString(), 'ok');
    const oldM1 = oldIds[0]!;
    await eventually('the old member to be refused as removed', 20_000, async () =>
      c.procs.log('m2').includes(`manager ${oldM1} was removed from the cluster`) ? true : undefined,
    );
    client.close();
    fromNew.close();
  } finally {
    await cluster?.stop();
    rmSync(root, { recursive: true, force: true });
  }
});
