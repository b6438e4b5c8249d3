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
 * state/ holds an image of the keys (the keyring wrapped by the root key) beside the secrets. Once
 * a term is destroyed, no image that still held its key may stay in state/'s files: the manager
 * compacts state/ as it does its Raft storage.
 */

let cluster: InProcessCluster;

before(async () => {
  cluster = await InProcessCluster.start(1);
});

after(async () => {
  await cluster?.stop();
});

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

const IMAGE_KEY = Buffer.from([0x00, 0x69]);

async function storedImage(): Promise<Buffer> {
  const store = await LevelStateStore.open(new DataDir(join(cluster.root, 'm1')).state);
  try {
    return Buffer.from((await store.get(IMAGE_KEY))!);
  } finally {
    await store.close();
  }
}

async function restart(): Promise<void> {
  cluster.nodes[0] = await CofferNode.start({
    dataDir: join(cluster.root, 'm1'),
    logger: createLogger({ level: 'silent' }),
    tickIntervalMs: 50,
  });
  await cluster.servesReads(0);
}

test('after a destroy, no image of the keys that held the destroyed term is left in the files of state/', {
  timeout: 120_000,
}, async () => {
  const at = cluster.addresses[0]!;
  const keys = (method: string, request: object = {}) => cluster.admin.call(at, 'Keys', method, request, 10_000);
  for (let k = 0; k < 5; k++)
    await cluster.admin.call(at, 'Secrets', 'put', { name: `app/reclaim/k${k}`, value: Buffer.from(`v${k}`) }, 10_000);
  await keys('Rotate');
  await keys('Rewrap');
  // The image as it is now: its wrapped keyring still holds term 1's key.
  await cluster.nodes[0]!.stop();
  const held = await storedImage();
  await restart();
  await eventually('term 1 to be destroyed once its records are re-sealed', 60_000, async () => {
    try {
      await keys('Destroy', { term: 1 });
      return true;
    } catch (error) {
      if (/still sealed/.test(String((error as Error).message))) return undefined;
      throw error;
    }
  });
  await cluster.admin.call(at, 'Secrets', 'put', { name: 'app/reclaim/after', value: Buffer.from('after') }, 10_000);
  await cluster.nodes[0]!.stop();
  const now = await storedImage();
  assert.equal(now.equals(held), false, 'the stored image changed with the destroy');
  // A distinctive slice of the old image (its sealed part) must be in no file of state/.
  const slice = held.subarray(held.length - 48, held.length - 16);
  const files = filesUnder(new DataDir(join(cluster.root, 'm1')).state);
  for (const file of files)
    assert.equal(readFileSync(file).includes(slice), false, `${file} still holds the image from before the destroy`);
  await restart();
  const got = await cluster.admin.call<Record<string, unknown>>(
    at,
    'Secrets',
    'get',
    { name: 'app/reclaim/k3' },
    10_000,
  );
  assert.equal((got['value'] as Buffer).toString(), 'v3', 'the secrets are all still there');
});
