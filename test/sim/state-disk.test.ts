import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SimCrash, SimStateDisk } from './state-disk.ts';

const put = (key: string, value: string) => ({
  type: 'put' as const,
  key: Buffer.from(key),
  value: Buffer.from(value),
});
const read = (disk: SimStateDisk, key: string) => disk.getSync(Buffer.from(key))?.toString();

test('a crash loses the newest unsynced batches, whole and from the end only; a synced write keeps everything before it', async () => {
  const disk = new SimStateDisk(4);
  await disk.write([put('a', '1')]);
  await disk.write([put('a', '2'), put('b', '2')]);
  await disk.write([put('a', '3'), put('b', '3')]);
  assert.equal(disk.unsynced, 3);
  disk.crash(1);
  assert.throws(() => disk.getSync(Buffer.from('a')), /dead process/);
  await disk.recover();
  assert.equal(read(disk, 'a'), '2');
  assert.equal(read(disk, 'b'), '2');
  await disk.write([put('c', '1')]);
  await disk.write([put('c', '2')], { sync: true });
  await disk.write([put('c', '3')]);
  disk.crash(5);
  await disk.recover();
  assert.equal(read(disk, 'c'), '2', 'only what followed the synced write is lost');
});

test('at most `window` batches are unsynced; a write the process dies at never happens', async () => {
  const disk = new SimStateDisk(2);
  for (let k = 1; k <= 5; k++) await disk.write([put('k', String(k))]);
  assert.equal(disk.unsynced, 2);
  disk.crash(10);
  await disk.recover();
  assert.equal(read(disk, 'k'), '3');
  disk.dieAtWrite = () => true;
  await assert.rejects(disk.write([put('k', '9')]), SimCrash);
  assert.equal(read(disk, 'k'), '3');
});
