import { test } from 'node:test';
import assert from 'node:assert/strict';
import { availability, longestGapMs } from './availability.ts';
import { historyLines, parseHistoryLines } from './history-file.ts';
import { checkHistory, type Operation } from './linearizability.ts';
import type { FaultRecord } from './nemesis.ts';

/** A small history of one key: two writers, a refused cas, an unknown put, reads (one stale). */
function history(readValue: string): Operation[] {
  return [
    { id: 1, process: 0, key: 'k', kind: 'put', value: 'a', invokeMs: 0, completeMs: 10, outcome: 'ok', version: 1 },
    {
      id: 2,
      process: 1,
      key: 'k',
      kind: 'cas',
      value: 'b',
      expectedVersion: 1,
      invokeMs: 12,
      completeMs: 20,
      outcome: 'ok',
      version: 2,
    },
    {
      id: 3,
      process: 0,
      key: 'k',
      kind: 'cas',
      value: 'c',
      expectedVersion: 1,
      invokeMs: 22,
      completeMs: 30,
      outcome: 'fail',
      currentVersion: 2,
    },
    {
      id: 4,
      process: 2,
      key: 'k',
      kind: 'put',
      value: 'd',
      invokeMs: 25,
      completeMs: Infinity,
      outcome: 'info',
      gaveUpMs: 1025,
    },
    {
      id: 5,
      process: 1,
      key: 'k',
      kind: 'get',
      invokeMs: 31,
      completeMs: 35,
      outcome: 'ok',
      version: 2,
      readValue,
    },
    {
      id: 6,
      process: 0,
      key: 'k',
      kind: 'get',
      invokeMs: 36,
      completeMs: 40,
      outcome: 'ok',
      version: 1,
      readValue: 'a',
      stale: true,
    },
  ];
}

const fault: FaultRecord = { atMs: 5, endMs: 33.5, nemesis: 'kill-leader', targets: ['m2'], detail: 'kill -9 m2' };

test('a history written as JSON lines reads back to the same operations and faults, and checks the same', () => {
  const ops = history('b');
  const lines = historyLines(ops, [fault]);
  assert.equal(lines.length, ops.length * 2 + 1, 'an invocation and a completion per operation, a line per fault');
  const parsed = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  const times = parsed.map((l) => l['time'] as number);
  assert.deepEqual(
    times,
    [...times].sort((a, b) => a - b),
    'in time order',
  );
  assert.deepEqual(parsed[0], { process: 0, f: 'put', key: 'k', type: 'invoke', value: 'a', time: 0 });
  assert.ok(
    parsed.some((l) => l['type'] === 'fail' && l['f'] === 'cas' && l['current'] === 2 && l['version'] === 1),
    'a refused cas says the version it expected and the one the key was at',
  );
  assert.ok(
    parsed.some((l) => l['type'] === 'info' && l['time'] === 1_025_000_000),
    'an info at the time its client gave up',
  );
  assert.ok(parsed.some((l) => l['process'] === 'nemesis' && l['kind'] === 'kill-leader' && l['end'] === 33_500_000));
  const back = parseHistoryLines(lines);
  const byInvoke = (list: readonly Operation[]) =>
    [...list].sort((a, b) => a.invokeMs - b.invokeMs).map(({ id: _, ...op }) => op);
  assert.deepEqual(byInvoke(back.ops), byInvoke(ops));
  assert.deepEqual(back.faults, [fault]);
  assert.equal(checkHistory(back.ops).linearizable, true);
});

test('an anomaly written to a history file is found again when it is read back', () => {
  // The read sees a value no write wrote.
  const back = parseHistoryLines(historyLines(history('never written'), []));
  const verdict = checkHistory(back.ops);
  assert.equal(verdict.linearizable, false);
  assert.match(verdict.keys[0]!.explanation ?? '', /never written/);
});

test('a history file that does not hold together is refused with the line that is wrong', () => {
  const lines = historyLines(history('b'), []);
  assert.throws(() => parseHistoryLines(lines.slice(1)), /line 1: a completion of process 0 without its invocation/);
  const twice = [lines[0]!, lines[0]!];
  assert.throws(() => parseHistoryLines(twice), /line 2: process 0 invokes twice/);
});

test('availability: the longest stretch without an acknowledgement, from a fault until the first after it healed', () => {
  // Acks at 100, 200, then nothing until 1,500, then 1,600.
  const acks = [100, 200, 1500, 1600];
  assert.equal(longestGapMs(acks, 150, 400, 5000), 1300, 'from the last ack to the first after the heal');
  assert.equal(longestGapMs(acks, 150, 1550, 5000), 1300);
  assert.equal(longestGapMs(acks, 1550, 1560, 5000), 50, 'a fault that stopped nothing');
  assert.equal(longestGapMs(acks, 1700, 1800, 5000), 3300, 'nothing acknowledged until the end of the run');
  const ops: Operation[] = acks.map((at, k) => ({
    id: k,
    process: 0,
    key: 'k',
    kind: k % 2 === 0 ? 'put' : 'get',
    invokeMs: at - 5,
    completeMs: at,
    outcome: 'ok',
    version: 1,
    value: 'a',
    readValue: 'a',
  }));
  const { perKind } = availability(
    ops,
    [
      { atMs: 150, endMs: 400, nemesis: 'pause', targets: ['m1'], detail: '' },
      { atMs: 1550, endMs: 1560, nemesis: 'pause', targets: ['m1'], detail: '' },
    ],
    5000,
  );
  assert.equal(perKind.length, 1);
  // Writes at 100 and 1,500 only: 1,350 ms for the first fault, and none after the second until the end.
  assert.deepEqual(perKind[0]!.writeGapMs, { median: 1350, max: 3450 });
  assert.deepEqual(perKind[0]!.readGapMs, { median: 50, max: 1400 }); // reads at 200 and 1,600
  assert.equal(perKind[0]!.met, false, 'over the 1 s goal of a pause');
});
