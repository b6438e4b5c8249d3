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

test('a put applied twice, one not applied, or a wrong value violates applied-exactly-once, naming the node and the entry', async () => {
  const { secretNameOf } = await import('./applied-secrets.ts');
  const c = new Checker();
  // Three puts to one name (found by trying texts), committed at 1, 2 and 4; entry 3 is empty.
  const texts: string[] = [];
  for (let k = 0; texts.length < 3; k++) if (secretNameOf(`p${k}`) === secretNameOf('p0')) texts.push(`p${k}`);
  const name = secretNameOf('p0');
  const log = new Map([
    [1, entry(1, 1, texts[0]!)],
    [2, entry(2, 1, texts[1]!)],
    [3, entry(3, 1, '')],
    [4, entry(4, 1, texts[2]!)],
  ]);
  c.onCommit(1, 1, 0, 4, (i) => log.get(i));
  const v = (version: number, value: string | null) => ({ version, value });
  c.onSecretRead(1, 3, name, [v(1, texts[0]!), v(2, texts[1]!)]);
  c.onSecretRead(1, 4, name, [v(1, null), v(2, null), v(3, texts[2]!)]);
  c.onSecretRead(2, 0, name, []);
  const message = (run: () => void): string => {
    try {
      run();
    } catch (error) {
      assert.ok(error instanceof SafetyViolation && error.property === 'applied-exactly-once', String(error));
      return error.detail;
    }
    assert.fail('no violation');
  };
  const twice = message(() => c.onSecretRead(2, 4, name, [v(1, null), v(2, null), v(3, null), v(4, null)]));
  assert.match(twice, /node 2 .*index 4.*versions 1\.\.4.*versions 1\.\.3: a put applied twice .*entry 4/);
  const missing = message(() => c.onSecretRead(3, 4, name, [v(1, null), v(2, null)]));
  assert.match(missing, /node 3 .*the put of entry 4 \(version 3, .*\) is not applied/);
  const wrong = message(() => c.onSecretRead(3, 2, name, [v(1, texts[0]!), v(2, texts[0]!)]));
  assert.match(
    wrong,
    /version 2 holds .* \(the put of entry 1\), where the committed log applied once gives .* \(entry 2\)/,
  );
  violates('applied-exactly-once', () => c.onSecretRead(3, 5, name, []));
  c.onSecretsImage(1, 4, 'aa');
  c.onSecretsImage(2, 4, 'aa');
  violates('applied-exactly-once', () => c.onSecretsImage(3, 4, 'bb'));
});

test('a policy write lost, one of beyond the index, or small parts that differ at one index violate small-parts', async () => {
  const { policyOf } = await import('./applied-policies.ts');
  const c = new Checker();
  // Two writes to one policy (found by trying texts), committed at 1 and 3; entry 2 is a secret put.
  const texts: string[] = [];
  const name = policyOf(encoder.encode('a0'))!.name;
  for (let k = 0; texts.length < 2; k++) {
    const write = policyOf(encoder.encode(`a${k}`))!;
    if (
      write.name === name &&
      (texts.length === 0 || write.rulesText !== policyOf(encoder.encode(texts[0]!))!.rulesText)
    )
      texts.push(`a${k}`);
  }
  const rules = texts.map((t) => policyOf(encoder.encode(t))!.rulesText);
  const log = new Map([
    [1, entry(1, 1, texts[0]!)],
    [2, entry(2, 1, 'v1')],
    [3, entry(3, 1, texts[1]!)],
  ]);
  c.onCommit(1, 1, 0, 3, (i) => log.get(i));
  c.onPolicyRead(1, 0, name, null);
  c.onPolicyRead(1, 2, name, rules[0]!);
  c.onPolicyRead(1, 3, name, rules[1]!);
  const message = (run: () => void): string => {
    try {
      run();
    } catch (error) {
      assert.ok(error instanceof SafetyViolation && error.property === 'small-parts', String(error));
      return error.detail;
    }
    assert.fail('no violation');
  };
  // A start from an image that missed the write of entry 3 holds entry 1's rules at index 3.
  assert.match(
    message(() => c.onPolicyRead(2, 3, name, rules[0]!)),
    /node 2 .*index 3.*entries 1\).*entry 3/,
  );
  assert.match(
    message(() => c.onPolicyRead(2, 1, name, null)),
    /no such policy.*entry 1/,
  );
  assert.match(
    message(() => c.onPolicyRead(2, 2, name, rules[1]!)),
    /entries 3\).*entry 1/,
  );
  violates('small-parts', () => c.onPolicyRead(2, 4, name, rules[1]!));
  c.onSmallPartsImage(1, 3, 'aa');
  c.onSmallPartsImage(2, 3, 'aa');
  violates('small-parts', () => c.onSmallPartsImage(3, 3, 'bb'));
});
