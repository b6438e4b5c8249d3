import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Checker, SafetyViolation, type Property } from './checker.ts';
import type { Entry } from '../../src/raft/types.ts';

// The checker is the simulator's judge: each property must actually fire on a violating history.

const encoder = new TextEncoder();
const entry = (index: number, term: number, value: string): Entry => ({
  kind: 'normal',
  index,
  term,
  data: encoder.encode(value),
});

function violates(property: Property, run: () => void): void {
  assert.throws(run, (error: unknown) => error instanceof SafetyViolation && error.property === property);
}

test('two leaders in one term violate election safety; one leader per term does not', () => {
  const c = new Checker();
  c.onLeader(1, 5);
  c.onLeader(1, 5);
  c.onLeader(2, 6);
  violates('election-safety', () => c.onLeader(3, 6));
});

test('different entries at the same index and term, or different terms before it, violate log matching', () => {
  const c = new Checker();
  c.onEntryPersisted(1, entry(3, 2, 'a'), 1);
  c.onEntryPersisted(2, entry(3, 2, 'a'), 1);
  violates('log-matching', () => c.onEntryPersisted(3, entry(3, 2, 'b'), 1));
  violates('log-matching', () => c.onEntryPersisted(3, entry(3, 2, 'a'), 2));
});

test('committing another entry where one was committed violates state machine safety', () => {
  const c = new Checker();
  const logA = new Map([
    [1, entry(1, 1, 'x')],
    [2, entry(2, 1, 'y')],
  ]);
  const logB = new Map([
    [1, entry(1, 1, 'x')],
    [2, entry(2, 2, 'z')],
  ]);
  c.onCommit(1, 1, 0, 2, (i) => logA.get(i));
  c.onCommit(2, 1, 0, 1, (i) => logB.get(i));
  violates('state-machine-safety', () => c.onCommit(2, 2, 1, 2, (i) => logB.get(i)));
});

test('a leader lacking an entry committed in an earlier term violates leader completeness', () => {
  const c = new Checker();
  const log = new Map([
    [1, entry(1, 1, 'x')],
    [2, entry(2, 1, 'y')],
  ]);
  c.onCommit(1, 1, 0, 2, (i) => log.get(i));
  c.onBecomeLeader(2, 2, 1, 2, (i) => log.get(i)?.term);
  violates('leader-completeness', () => c.onBecomeLeader(3, 3, 1, 1, (i) => log.get(i)?.term));
  violates('leader-completeness', () => c.onBecomeLeader(3, 3, 1, 2, (i) => (i === 2 ? 2 : 1)));
});

test('applying with a gap, or an entry nobody committed, violates apply order', () => {
  const c = new Checker();
  const log = new Map([
    [1, entry(1, 1, 'x')],
    [2, entry(2, 1, 'y')],
  ]);
  c.onCommit(1, 1, 0, 1, (i) => log.get(i));
  const s1 = c.onApply(1, 0, 0, log.get(1)!);
  violates('apply-order', () => c.onApply(2, 0, 0, log.get(2)!));
  violates('apply-order', () => c.onApply(1, 1, s1, log.get(2)!));
});

test('a read point below what was committed when the read began violates read linearizability', () => {
  const c = new Checker();
  c.onReadState(1, 'r1', 7, 7);
  violates('read-linearizability', () => c.onReadState(1, 'r2', 6, 7));
});

test('a persisted term or commit that goes back, even across a restart, is caught', () => {
  const c = new Checker();
  c.onDurableHardState(1, 3, 10);
  violates('monotonic-term', () => c.onDurableHardState(1, 2, 10));
  violates('monotonic-commit', () => c.onDurableHardState(1, 3, 9));
});
