import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { LevelStateStore } from '../../src/kv/level-state-store.ts';
import { DataDir } from '../../src/manager/data-dir.ts';
import { CofferNode } from '../../src/server/node.ts';
import { createLogger } from '../../src/util/logger.ts';
import { eventually } from '../processes/processes.ts';
import { InProcessCluster } from './in-process-cluster.ts';

/**
 * The secrets live in the manager's `state/` LevelDB. A restart (before any snapshot, and after
 * one) rebuilds it from the snapshot and the log with every entry applied once: the versions a
 * client saw stay the versions it sees. Nothing in `state/` is readable.
 */

type Reply = Record<string, unknown>;
let cluster: InProcessCluster;

before(async () => {
  cluster = await InProcessCluster.start(1);
});

after(async () => {
  await cluster?.stop();
});

async function restart(options: { snapshotEveryEntries?: number } = {}, stopped = false): Promise<void> {
  if (!stopped) await cluster.nodes[0]!.stop();
  cluster.nodes[0] = await CofferNode.start({
    ...options,
    dataDir: join(cluster.root, 'm1'),
    logger: createLogger({ level: 'silent' }),
    tickIntervalMs: 50,
  });
  await eventually('the manager to lead again', 20_000, async () =>
    cluster.nodes[0]!.manager.raftStatus()?.role === 'leader' ? true : undefined,
  );
  // Leading is not yet serving: a linearizable read waits for an entry of the new term to commit.
  await cluster.servesReads(0);
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

test('a restart applies every entry once: the same versions, values and listing; state/ holds no name or value', {
  timeout: 120_000,
}, async () => {
  const at = cluster.addresses[0]!;
  const call = (method: string, request: object) =>
    cluster.admin.call<Reply>(cluster.addresses[0]!, 'Secrets', method, request, 10_000);
  const value = (n: number) => Buffer.from(`restart-value-${n}-a1b2c3d4`);
  for (let n = 1; n <= 3; n++) await call('put', { name: 'app/restart/token', value: value(n) });
  await call('put', { name: 'app/restart/other', value: value(9) });
  const check = async (when: string): Promise<void> => {
    const versions = await call('versions', { name: 'app/restart/token' });
    assert.deepEqual(
      (versions['versions'] as Reply[]).map((v) => v['version']),
      [1, 2, 3],
      `${when}: no version applied twice`,
    );
    const got = await call('get', { name: 'app/restart/token' });
    assert.equal((got['value'] as Buffer).toString(), value(3).toString(), when);
    assert.equal(
      ((await call('get', { name: 'app/restart/token', version: 1 }))['value'] as Buffer).toString(),
      value(1).toString(),
    );
    const listed = await call('list', { prefix: 'app/restart/' });
    assert.deepEqual(
      (listed['secrets'] as Reply[]).map((s) => s['name']).sort(),
      ['app/restart/other', 'app/restart/token'],
      when,
    );
  };
  await check('before a restart');
  await restart();
  await check('after a restart with no snapshot');
  const from = cluster.nodes[0]!.manager.startedFrom()!;
  assert.equal(from.fromStore, true, `the restart started from state/ (${String(from.fallback)})`);
  assert.ok(from.index >= 4, `at the index state/ held (${from.index})`);
  assert.equal(cluster.nodes[0]!.state.stats.skippedOnStart, 0, 'and replayed nothing state/ already held');

  // An image in state/ that does not open (tampered, or sealed under a root key this manager no
  // longer reaches): the restart falls back to the snapshot and the log, and loses nothing.
  await cluster.nodes[0]!.stop();
  const store = await LevelStateStore.open(new DataDir(join(cluster.root, 'm1')).state);
  const imageKey = Buffer.from([0x00, 0x69]);
  const image = Buffer.from((await store.get(imageKey))!);
  image[image.length - 5]! ^= 0x01;
  await store.write([{ type: 'put', key: imageKey, value: image }], { sync: true });
  await store.close();
  await restart({}, true);
  await check('after a restart whose stored image did not open');
  const fallback = cluster.nodes[0]!.manager.startedFrom()!;
  assert.equal(fallback.fromStore, false, 'the tampered image was not used');
  assert.match(String(fallback.fallback), /./, 'and why is said');
  assert.ok(
    cluster.nodes[0]!.state.stats.skippedOnStart >= 4,
    `the replayed puts were already in state/ (${cluster.nodes[0]!.state.stats.skippedOnStart} skipped)`,
  );
  // Snapshots every few entries: the next restart restores one into state/, then replays the rest.
  await restart({ snapshotEveryEntries: 4 });
  for (let k = 0; k < 12; k++) await call('put', { name: `app/more/k${k}`, value: value(100 + k) });
  await restart({ snapshotEveryEntries: 4 });
  await check('after a restart from a snapshot');
  assert.equal(((await call('get', { name: 'app/more/k11' }))['value'] as Buffer).toString(), value(111).toString());

  const stateDir = new DataDir(join(cluster.root, 'm1')).state;
  const files = filesUnder(stateDir);
  assert.ok(files.length > 0, 'the state store is on disk');
  const bytes = Buffer.concat(files.map((f) => readFileSync(f)));
  for (const text of ['restart-value', 'app/restart', 'restart/token', 'token', 'more/k11'])
    assert.equal(bytes.includes(Buffer.from(text)), false, `"${text}" is not readable in ${stateDir}`);
  assert.ok(at.length > 0);
});
