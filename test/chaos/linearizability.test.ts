import { test } from 'node:test';
import assert from 'node:assert/strict';
import { checkHistory, checkStaleReads, type Operation } from './linearizability.ts';

let ids = 0;
const put = (process: number, value: string, invokeMs: number, completeMs: number, version?: number, key = 'k'): Operation =>
  ({ id: ++ids, process, key, kind: 'put', value, invokeMs, completeMs: version === undefined ? Infinity : completeMs, outcome: version === undefined ? 'info' : 'ok', ...(version === undefined ? {} : { version }) });
const cas = (process: number, expectedVersion: number, value: string, invokeMs: number, completeMs: number, outcome: 'ok' | 'fail' | 'info', version?: number): Operation =>
  ({ id: ++ids, process, key: 'k', kind: 'cas', value, expectedVersion, invokeMs, completeMs: outcome === 'info' ? Infinity : completeMs, outcome, ...(version === undefined ? {} : { version }) });
const get = (process: number, invokeMs: number, completeMs: number, version: number, value: string | null, stale = false, key = 'k'): Operation =>
  ({ id: ++ids, process, key, kind: 'get', invokeMs, completeMs, outcome: 'ok', version, readValue: value, stale });

const linearizable = (ops: Operation[]) => checkHistory(ops).linearizable;

test('sequential and properly overlapping histories are linearizable', () => {
  assert.equal(linearizable([put(1, 'a', 0, 1, 1), get(2, 2, 3, 1, 'a'), put(1, 'b', 4, 5, 2), get(2, 6, 7, 2, 'b')]), true);
  // A read overlapping a write may see either value.
  assert.equal(linearizable([put(1, 'a', 0, 1, 1), put(1, 'b', 2, 10, 2), get(2, 3, 4, 1, 'a'), get(3, 5, 6, 2, 'b')]), true);
  // Reads before any write see nothing (version 0).
  assert.equal(linearizable([get(1, 0, 1, 0, null), put(2, 'a', 2, 3, 1)]), true);
});

test('a read that misses a write which completed before it began is not linearizable', () => {
  const verdict = checkHistory([put(1, 'a', 0, 1, 1), get(2, 2, 3, 0, null)]);
  assert.equal(verdict.linearizable, false);
  // The explanation names both operations: the write of v1 and the read that missed it.
  assert.match(verdict.keys[0]!.explanation ?? '', /#\d+ p1 put\("a"\).*#\d+ p2 get\(\) -> v0=null/);
});

test('a new-then-old inversion between two reads is not linearizable (the tricky one)', () => {
  // The write overlaps both reads, but the first read (which saw the new value) returned before
  // the second (which saw the old one) began.
  assert.equal(linearizable([put(1, 'a', 0, 1, 1), put(1, 'b', 2, 20, 2), get(2, 3, 4, 2, 'b'), get(3, 5, 6, 1, 'a')]), false);
  // The same reads overlapping each other are fine.
  assert.equal(linearizable([put(1, 'a', 0, 1, 1), put(1, 'b', 2, 20, 2), get(2, 3, 6, 2, 'b'), get(3, 5, 7, 1, 'a')]), true);
});

test('unknown outcomes: an info write may take effect late, or never, but not before it was invoked', () => {
  assert.equal(linearizable([put(1, 'a', 0, 1, 1), put(2, 'x', 2, 0), get(3, 50, 51, 2, 'x')]), true, 'applied, seen later');
  assert.equal(linearizable([put(1, 'a', 0, 1, 1), put(2, 'x', 2, 0), get(3, 50, 51, 1, 'a')]), true, 'never applied');
  assert.equal(linearizable([get(3, 0, 1, 1, 'x'), put(2, 'x', 2, 0)]), false, 'seen before it was invoked');
});

test('versions must add up: two concurrent CAS on one version cannot both succeed; a wrong version number is caught', () => {
  assert.equal(linearizable([put(1, 'a', 0, 1, 1), cas(2, 1, 'b', 2, 5, 'ok', 2), cas(3, 1, 'c', 3, 6, 'ok', 2)]), false);
  assert.equal(linearizable([put(1, 'a', 0, 1, 1), cas(2, 1, 'b', 2, 5, 'ok', 2), cas(3, 1, 'c', 3, 6, 'fail')]), true, 'one wins, the other sees a mismatch');
  assert.equal(linearizable([put(1, 'a', 0, 1, 1), cas(2, 1, 'b', 2, 3, 'fail')]), false, 'a CAS refused although its version was current');
  assert.equal(linearizable([put(1, 'a', 0, 1, 1), put(2, 'b', 2, 3, 3)]), false, 'version 3 after version 1');
  assert.equal(linearizable([put(1, 'a', 0, 1, 1), cas(2, 1, 'b', 2, 0, 'info'), get(3, 10, 11, 2, 'b')]), true, 'an info CAS that applied');
});

test('keys are independent; each verdict names its key', () => {
  const verdict = checkHistory([put(1, 'a', 0, 1, 1, 'x'), get(2, 2, 3, 1, 'a', false, 'x'), put(1, 'b', 0, 1, 1, 'y'), get(2, 2, 3, 0, null, false, 'y')]);
  assert.equal(verdict.linearizable, false);
  assert.deepEqual(verdict.keys.map((k) => [k.key, k.linearizable]), [['x', true], ['y', false]]);
});

test('stale reads keep their weaker promise: no reading from the future, no going back for one process', () => {
  const history = [put(1, 'a', 0, 1, 1), put(1, 'b', 2, 3, 2), get(2, 4, 5, 1, 'a', true), get(2, 6, 7, 2, 'b', true)];
  assert.deepEqual(checkStaleReads(history), [], 'behind is allowed for a stale read');
  assert.equal(checkHistory(history).linearizable, true);
  assert.equal(checkStaleReads([put(1, 'a', 0, 1, 1), put(1, 'b', 2, 3, 2), get(2, 4, 5, 2, 'b', true), get(2, 6, 7, 1, 'a', true)]).length, 1, 'went back');
  assert.equal(checkStaleReads([get(2, 0, 1, 1, 'a', true), put(1, 'a', 2, 3, 1)]).length, 1, 'from the future');
  assert.equal(checkStaleReads([put(1, 'a', 0, 1, 1), get(2, 4, 5, 1, 'zzz', true)]).length, 1, 'a value nobody wrote');
});

test('a larger concurrent history from a correct register is linearizable, and corrupting one read breaks it', () => {
  // Simulate a correct register: each op takes effect at a random instant inside its interval.
  let seed = 7;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const ops: Operation[] = [];
  const effects: Array<{ at: number; apply: () => void }> = [];
  let version = 0;
  let value: string | null = null;
  for (let k = 0; k < 120; k++) {
    const invoke = k * 3 + Math.floor(random() * 3);
    const complete = invoke + 1 + Math.floor(random() * 12);
    const at = invoke + random() * (complete - invoke);
    const process = k % 6;
    if (random() < 0.5) {
      const op = { id: ++ids, process, key: 'k', kind: 'put' as const, value: `v${k}`, invokeMs: invoke, completeMs: complete, outcome: 'ok' as const, version: 0 };
      ops.push(op);
      effects.push({ at, apply: () => ((version += 1), (value = op.value), (op.version = version)) });
    } else {
      const op = { id: ++ids, process, key: 'k', kind: 'get' as const, invokeMs: invoke, completeMs: complete, outcome: 'ok' as const, version: 0, readValue: null as string | null };
      ops.push(op);
      effects.push({ at, apply: () => ((op.version = version), (op.readValue = value)) });
    }
  }
  for (const effect of effects.sort((a, b) => a.at - b.at)) effect.apply();
  assert.equal(linearizable(ops), true);
  // Make one read return a real but overwritten value: one whose overwrite completed before the read began.
  const writes = ops.filter((op) => op.kind === 'put');
  let corrupted = false;
  for (const read of ops.filter((op) => op.kind === 'get') as Array<{ version: number; readValue: string | null; invokeMs: number }>) {
    const old = writes.find((w) => writes.some((later) => (later.version ?? 0) > (w.version ?? 0) && later.completeMs < read.invokeMs));
    if (old === undefined) continue;
    read.version = old.version!;
    read.readValue = old.value!;
    corrupted = true;
    break;
  }
  assert.ok(corrupted);
  assert.equal(linearizable(ops), false);
});
