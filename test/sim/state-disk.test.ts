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

const records = (...pairs: [string, string][]) =>
  (async function* () {
    for (const [key, value] of pairs) yield { key: Buffer.from(key), value: Buffer.from(value) };
  })();

test('prepared records are invisible until the synced switch; a crash before it leaves the old content (minus its unsynced tail) and nothing prepared', async () => {
  const disk = new SimStateDisk(16);
  await disk.write([put('a', '1')], { sync: true });
  await disk.write([put('a', '2')]);
  const prepared = await disk.prepare(records(['b', 'x'], ['c', 'y']));
  assert.equal(prepared.records, 2);
  assert.equal(read(disk, 'b'), undefined, 'written aside: not visible');
  await disk.write([put('a', '3')]);
  assert.equal(read(disk, 'a'), '3', 'the current content keeps serving reads and writes');
  disk.crash(1);
  await disk.recover();
  assert.equal(read(disk, 'a'), '2');
  assert.equal(read(disk, 'b'), undefined);
  await assert.rejects(prepared.install(), /discarded, replaced or lost/);
});

test('install switches whole and durably; a crash right after it keeps the new content; a newer prepare replaces an older one', async () => {
  const disk = new SimStateDisk(16);
  await disk.write([put('a', '1')]);
  const older = await disk.prepare(records(['old', '1']));
  const newer = await disk.prepare(records(['b', 'x'], ['c', 'y']));
  await assert.rejects(older.install(), /discarded, replaced or lost/);
  const points: string[] = [];
  disk.dieAtWrite = (point) => {
    points.push(point);
    return point === 'after-switch';
  };
  await assert.rejects(
    newer.install(),
    (error: unknown) => error instanceof SimCrash && error.point === 'after-switch',
  );
  assert.deepEqual(points, ['switch', 'after-switch']);
  disk.crash(10);
  await disk.recover();
  assert.equal(read(disk, 'a'), undefined, 'the old content went with the switch');
  assert.equal(read(disk, 'b'), 'x');
  assert.equal(read(disk, 'c'), 'y');
  assert.equal(read(disk, 'old'), undefined);
});

test('the hook is asked before every batch written aside and before the switch; dying there leaves the old content whole', async () => {
  const disk = new SimStateDisk(2);
  await disk.write([put('a', '1')]);
  const many = Array.from({ length: 40 }, (_, k): [string, string] => [`k${k}`, String(k)]);
  let asked = 0;
  disk.dieAtWrite = (point) => point === 'prepare' && ++asked === 2;
  await assert.rejects(
    disk.prepare(records(...many)),
    (error: unknown) => error instanceof SimCrash && error.point === 'prepare',
  );
  disk.crash(0);
  await disk.recover();
  assert.equal(read(disk, 'a'), '1');
  assert.equal(read(disk, 'k0'), undefined);
  disk.dieAtWrite = null;
  const prepared = await disk.prepare(records(...many));
  assert.equal(disk.stats.asideBatches, 1 + 3, 'batches of 16 records: 1 before the crash, 3 for 40 records');
  disk.dieAtWrite = (point) => point === 'switch';
  await assert.rejects(prepared.install(), (error: unknown) => error instanceof SimCrash && error.point === 'switch');
  disk.crash(5);
  await disk.recover();
  assert.equal(read(disk, 'a'), '1', 'the old content, whole');
  assert.equal(read(disk, 'k0'), undefined);
});
