import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { CofferNode } from '../../src/server/node.ts';
import { createLogger } from '../../src/util/logger.ts';
import { eventually } from '../processes/processes.ts';
import { InProcessCluster } from './in-process-cluster.ts';

/**
 * A manager that was down while the others snapshotted and compacted their logs is sent a
 * snapshot: a small descriptor, then the state store's records streamed in chunks, written aside
 * and installed once Raft accepts it. It then serves the same secrets, and a restart after it
 * applies nothing twice.
 */

type Reply = Record<string, unknown>;
const OPTIONS = { snapshotEveryEntries: 20, snapshotTailEntries: 5 };
let cluster: InProcessCluster | undefined;

after(async () => {
  await cluster?.stop();
});

test('a manager that was down while the others compacted catches up by a streamed snapshot, serves the same secrets, and a restart repeats nothing', {
  timeout: 180_000,
}, async () => {
  cluster = await InProcessCluster.start(3, OPTIONS);
  const c = cluster;
  const call = (at: string, method: string, request: object) =>
    c.admin.call<Reply>(at, 'Secrets', method, request, 10_000);
  const value = (k: number) => `catch-value-${k}`;
  const down = c.nodes.findIndex((n) => n.manager.raftStatus()?.role !== 'leader');
  const live = c.addresses[c.nodes.findIndex((n) => n.manager.raftStatus()?.role === 'leader')]!;
  for (let k = 0; k < 10; k++) await call(live, 'put', { name: `app/catch/k${k}`, value: Buffer.from(value(k)) });
  await c.nodes[down]!.stop();
  // Enough writes for several snapshots, and a log compacted past what the stopped manager holds.
  for (let k = 10; k < 150; k++) await call(live, 'put', { name: `app/catch/k${k}`, value: Buffer.from(value(k)) });
  await call(live, 'put', { name: 'app/catch/k0', value: Buffer.from('catch-value-0-again') });

  const start = () =>
    CofferNode.start({
      ...OPTIONS,
      dataDir: join(c.root, `m${down + 1}`),
      logger: createLogger({ level: 'silent' }),
      tickIntervalMs: 50,
    });
  c.nodes[down] = await start();
  const at = c.addresses[down]!;
  await eventually('the restarted manager to serve the last write', 60_000, async () => {
    const got = await call(at, 'get', { name: 'app/catch/k149' });
    return (got['value'] as Buffer).toString() === value(149) ? true : undefined;
  });
  assert.ok(c.nodes[down]!.state.stats.snapshotsInstalled >= 1, 'it installed a streamed snapshot');
  const recordBytes = c.nodes.reduce((n, node) => n + node.transport.stats.snapshotRecordBytesSent, 0);
  assert.ok(recordBytes > 150 * 30, `the leader streamed the records (${recordBytes} bytes)`);

  const check = async (when: string): Promise<void> => {
    for (const k of [1, 9, 10, 77, 148])
      assert.equal(
        ((await call(at, 'get', { name: `app/catch/k${k}` }))['value'] as Buffer).toString(),
        value(k),
        `${when}: app/catch/k${k}`,
      );
    const versions = await call(at, 'versions', { name: 'app/catch/k0' });
    assert.deepEqual(
      (versions['versions'] as Reply[]).map((v) => v['version']),
      [1, 2],
      `${when}: app/catch/k0 has its two versions, none applied twice`,
    );
    const listed = await call(at, 'list', { prefix: 'app/catch/', pageSize: 1000 });
    assert.equal((listed['secrets'] as Reply[]).length, 150, `${when}: every secret is listed`);
  };
  await check('after the catch-up');
  // A restart from the received snapshot (a descriptor beside the installed store) and the log after it.
  await c.nodes[down]!.stop();
  c.nodes[down] = await start();
  await eventually('the manager to serve again after its restart', 30_000, async () =>
    (await call(at, 'get', { name: 'app/catch/k149' })) ? true : undefined,
  );
  await check('after a restart');
});
