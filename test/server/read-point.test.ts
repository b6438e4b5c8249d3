import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ReadRefusalReason } from '../../src/raft/index.ts';
import { ReplicaError } from '../../src/replica/replica.ts';
import { READ_LEADER_WAIT_MS, readOnceLed, sharedSleep } from '../../src/server/read-point.ts';

const refused = (reason: ReadRefusalReason) => new ReplicaError('READ_REFUSED', `refused: ${reason}`, reason);

/** A clock that moves only when the read waits: the test runs at once and decides every time. */
function clock() {
  let now = 0;
  const slept: number[] = [];
  return {
    slept,
    options: {
      nowMs: () => now,
      sleep: async (ms: number) => {
        slept.push(ms);
        now += ms;
      },
    },
  };
}

test('a read refused for want of a leader (none known, one not ready, one lost) is asked again until a leader answers', async () => {
  const c = clock();
  const answers: Array<ReplicaError | number> = [
    refused('no-leader'),
    refused('no-leader'),
    refused('leader-not-ready'),
    refused('leadership-lost'),
    42,
  ];
  let asked = 0;
  const index = await readOnceLed(async () => {
    const answer = answers[asked++]!;
    if (typeof answer === 'number') return answer;
    throw answer;
  }, c.options);
  assert.equal(index, 42);
  assert.equal(asked, 5);
  assert.equal(c.slept.length, 4, 'one wait between two askings');
});

test('a read still without a leader after the wait fails with the last refusal; the wait is bounded', async () => {
  const c = clock();
  let asked = 0;
  await assert.rejects(
    readOnceLed(async () => {
      asked++;
      throw refused('no-leader');
    }, c.options),
    (error: unknown) =>
      error instanceof ReplicaError &&
      error.code === 'READ_REFUSED' &&
      error.readRefusal === 'no-leader' &&
      /refused: no-leader \(after \d+ ms of waiting\)/.test(error.message),
  );
  const waitedMs = c.slept.reduce((a, b) => a + b, 0);
  assert.ok(waitedMs <= READ_LEADER_WAIT_MS && waitedMs >= READ_LEADER_WAIT_MS - 20, `waited ${waitedMs} ms`);
  assert.equal(asked, c.slept.length + 1);
});

test('other failures are not waited out: a full read queue, a stopped replica, any other error', async () => {
  for (const error of [
    refused('too-many-pending'),
    new ReplicaError('READ_REFUSED', 'more than 10000 reads are waiting; retry later'),
    new ReplicaError('REPLICA_STOPPED', 'stopped'),
    new Error('disk'),
  ]) {
    const c = clock();
    let asked = 0;
    await assert.rejects(
      readOnceLed(async () => {
        asked++;
        throw error;
      }, c.options),
      (thrown: unknown) => thrown === error,
    );
    assert.equal(asked, 1, error.message);
    assert.deepEqual(c.slept, []);
  }
});

test('reads waiting for a leader share one timer: one refused later joins the wait under way, so they are asked again in one turn (one read index request)', async () => {
  const sleep = sharedSleep();
  const first = sleep(10);
  assert.equal(sleep(10), first, 'a second wait within the first joins it');
  await first;
  assert.notEqual(sleep(10), first, 'once it has fired, a wait starts a new one');
  await sleep(10);
});

test('a manager that has known no leader for longer than the wait refuses at once: its clients move on to another', async () => {
  const c = clock();
  let asked = 0;
  const error = refused('no-leader');
  await assert.rejects(
    readOnceLed(
      async () => {
        asked++;
        throw error;
      },
      { ...c.options, waitable: () => false },
    ),
    (thrown: unknown) => thrown === error,
  );
  assert.equal(asked, 1);
  assert.deepEqual(c.slept, []);
});
