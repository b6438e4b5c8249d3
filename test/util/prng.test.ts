import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SeededRandom } from '../../src/util/prng.ts';

test('the same seed gives the same sequence, and another seed another one', () => {
  const draw = (seed: number): number[] => {
    const r = new SeededRandom(seed);
    return Array.from({ length: 64 }, () => r.int(1_000_000));
  };
  assert.deepEqual(draw(42), draw(42));
  assert.notDeepEqual(draw(42), draw(43));
  assert.notDeepEqual(draw(2 ** 40), draw(2 ** 40 + 2 ** 32), 'the high bits of the seed count too');
});

test('int(bound) stays in [0, bound) and covers it roughly evenly', () => {
  const r = new SeededRandom(7);
  const counts = new Array<number>(10).fill(0);
  for (let k = 0; k < 100_000; k++) {
    const v = r.int(10);
    assert.ok(Number.isInteger(v) && v >= 0 && v < 10);
    counts[v]!++;
  }
  for (const c of counts) assert.ok(c > 9_000 && c < 11_000, `bucket count ${c} is far from 10,000`);
});

test('a bad bound or seed is a TypeError that names it', () => {
  assert.throws(() => new SeededRandom(1).int(0), /bound must be a positive safe integer: got 0/);
  assert.throws(() => new SeededRandom(1.5), /seed must be a safe integer/);
});
