import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { ClientError, type CofferClient } from '../../src/client/client.ts';
import { newLeafKey } from '../../src/crypto/pki.ts';
import { ProposalRefused } from '../../src/manager/errors.ts';
import type { KeyOperation } from '../../src/manager/manager.ts';
import { ClusterClock } from '../../src/server/cluster-clock.ts';
import {
  KEY_SCHEDULE_RETRY_FIRST_MS,
  KeySchedule,
  type KeyScheduleOptions,
  type KeyScheduleStep,
  keyScheduleAction,
} from '../../src/server/key-schedule.ts';
import { CofferNode, type NodeOptions } from '../../src/server/node.ts';
import { KEY_SCHEDULE_PERIOD_MAX_MS, KEY_SCHEDULE_PERIOD_MIN_MS } from '../../src/state/cluster-state.ts';
import { createLogger } from '../../src/util/logger.ts';
import { AdminClient, coffer, eventually } from '../processes/processes.ts';
import { InProcessCluster } from './in-process-cluster.ts';

const HOUR_MS = 60 * 60_000;
const DAY_MS = 24 * HOUR_MS;

// ---- the decision and the retries, without a cluster ------------------------------------------

const facts = {
  periodMs: HOUR_MS,
  nowMs: 10 * HOUR_MS,
  activeTerm: 3,
  activeCreatedAtMs: 9 * HOUR_MS,
  lastRewrapTerm: 3,
  olderTermsLive: true,
};

test('the decision: rotate once the active term is a period old; a rotation not yet rewrapped is rewrapped first; off, nothing', () => {
  assert.equal(keyScheduleAction(facts), 'rotate', 'exactly one period old');
  assert.equal(keyScheduleAction({ ...facts, nowMs: 10 * HOUR_MS - 1 }), null, 'not yet');
  assert.equal(keyScheduleAction({ ...facts, periodMs: null }), null, 'no schedule');
  assert.equal(keyScheduleAction({ ...facts, activeTerm: 0 }), null, 'no keyring yet');
  // A leader rotated (term 4) and stopped before its rewrap: whoever leads next rewraps, and does not rotate again.
  const rotated = { ...facts, activeTerm: 4, activeCreatedAtMs: 10 * HOUR_MS, lastRewrapTerm: 3 };
  assert.equal(keyScheduleAction(rotated), 'rewrap');
  assert.equal(keyScheduleAction({ ...rotated, lastRewrapTerm: 4 }), null, 'rewrapped: the next is a period away');
  assert.equal(keyScheduleAction({ ...rotated, nowMs: 12 * HOUR_MS }), 'rewrap', 'the rewrap comes before a rotation');
  assert.equal(
    keyScheduleAction({
      ...facts,
      activeTerm: 1,
      activeCreatedAtMs: 10 * HOUR_MS,
      lastRewrapTerm: 0,
      olderTermsLive: false,
    }),
    null,
    "a new cluster's only term needs no rewrap",
  );
});

/** A leader's keyring, as the schedule reads it, and a keyOperation that applies to it (or fails). */
function fakeLeader(failures: number): {
  options: KeyScheduleOptions;
  operations: string[];
  monotonic: { ms: number };
  logs: () => string;
} {
  const terms = [{ term: 1, createdAtMs: 0, destroyed: false }];
  let lastRewrap: { index: number; term: number } | null = null;
  let failuresLeft = failures;
  const operations: string[] = [];
  const monotonic = { ms: 0 };
  let logs = '';
  const active = () => terms[terms.length - 1]!;
  const manager = {
    raftStatus: () => ({ role: 'leader' }),
    status: () => ({
      keys: {
        activeTerm: active().term,
        activeCreatedAtMs: active().createdAtMs,
        terms,
        lastRewrap,
      },
    }),
    linearizableRead: async () => 1,
  } as unknown as KeyScheduleOptions['manager'];
  const options: KeyScheduleOptions = {
    cluster: { keySchedulePeriodMs: HOUR_MS },
    manager,
    keyOperation: async (operation: KeyOperation) => {
      operations.push(operation.op);
      if (failuresLeft > 0) {
        failuresLeft--;
        throw new ProposalRefused('barrier', 'NOT_APPLIED', 'the disk said no');
      }
      if (operation.op === 'rotate')
        terms.push({ term: active().term + 1, createdAtMs: 2 * HOUR_MS, destroyed: false });
      if (operation.op === 'rewrap') lastRewrap = { index: 9, term: active().term };
      return { op: operation.op, detail: 'applied' };
    },
    now: () => 2 * HOUR_MS,
    log: createLogger({
      level: 'info',
      format: 'json',
      destination: new Writable({
        write(chunk: Buffer, _encoding, done) {
          logs += chunk.toString();
          done();
        },
      }),
    }),
    monotonicNowMs: () => monotonic.ms,
  };
  return { options, operations, monotonic, logs: () => logs };
}

test('a failed rotation is logged and tried again after a pause, not at every run; then it rotates once and rewraps', async () => {
  const leader = fakeLeader(2);
  const schedule = new KeySchedule(leader.options);
  await schedule.run();
  assert.deepEqual(leader.operations, ['rotate']);
  assert.match(leader.logs(), /"event":"key-schedule-failed".*"failures":1.*"retryInMs":10000/);
  for (let k = 0; k < 5; k++) await schedule.run();
  assert.deepEqual(leader.operations, ['rotate'], 'no tries during the pause');
  leader.monotonic.ms += KEY_SCHEDULE_RETRY_FIRST_MS;
  await schedule.run();
  assert.deepEqual(leader.operations, ['rotate', 'rotate']);
  leader.monotonic.ms += KEY_SCHEDULE_RETRY_FIRST_MS;
  await schedule.run();
  assert.deepEqual(leader.operations, ['rotate', 'rotate'], 'the pause doubled');
  leader.monotonic.ms += KEY_SCHEDULE_RETRY_FIRST_MS;
  await schedule.run();
  assert.deepEqual(leader.operations, ['rotate', 'rotate', 'rotate', 'rewrap']);
  assert.match(leader.logs(), /"event":"key-rotated-on-schedule","term":2/);
  for (let k = 0; k < 5; k++) await schedule.run();
  assert.deepEqual(leader.operations, ['rotate', 'rotate', 'rotate', 'rewrap'], 'one rotation per period');
});

// ---- a cluster whose time the test moves ------------------------------------------------------

/** How far the test has moved the cluster's time ahead of the hosts' clocks. */
let shiftMs = 0;

/** The cluster's time as the managers measure it, moved `shiftMs` ahead (the same on every manager). */
class ShiftedClock extends ClusterClock {
  override now(): number {
    return super.now() + shiftMs;
  }
}

/** The step at which the next scheduled rotation stops (standing for its leader's crash), and who waits for it. */
let armed: { step: KeyScheduleStep; hit: (index: number) => void } | null = null;
const never = new Promise<void>(() => {});
const failpoint = async (index: number, step: KeyScheduleStep): Promise<void> => {
  if (armed?.step !== step) return;
  const { hit } = armed;
  armed = null;
  hit(index);
  await never;
};

let logs = '';
const logger = createLogger({
  level: 'info',
  format: 'json',
  destination: new Writable({
    write(chunk: Buffer, _encoding, done) {
      logs += chunk.toString();
      done();
    },
  }),
});
const nodeOptions = (index: number): Partial<NodeOptions> => ({
  logger,
  clock: new ShiftedClock(),
  keyScheduleFailpoint: (step) => failpoint(index, step),
});

let cluster: InProcessCluster;
let admin: CofferClient;
const SECRETS = 40;
const secretValue = (k: number): string => `value-${k}-of-the-schedule-test`;

before(async () => {
  cluster = await InProcessCluster.start(3, nodeOptions);
  await cluster.servesReads(0);
  admin = cluster.adminClient();
  for (let k = 0; k < SECRETS; k++) await admin.put(`app/schedule/s${k}`, Buffer.from(secretValue(k)));
});

after(async () => {
  admin?.close();
  await cluster?.stop();
});

type KeyStatus = Awaited<ReturnType<CofferClient['keyStatus']>>;

/** Keys.Status as manager `k` answers it (its own applied state). */
async function statusAt(k: number): Promise<KeyStatus> {
  const client = cluster.adminClient([cluster.addresses[k]!]);
  try {
    return await client.keyStatus();
  } finally {
    client.close();
  }
}

const leaderIndex = (): number => cluster.nodes.findIndex((n) => n.manager.raftStatus()?.role === 'leader');
const keysOf = (k: number) => cluster.nodes[k]!.manager.status().keys!;
const rotatedLines = (): string[] => logs.split('\n').filter((line) => line.includes('"key-rotated-on-schedule"'));

async function readsAll(client: CofferClient): Promise<void> {
  for (let k = 0; k < SECRETS; k++)
    assert.equal((await client.get(`app/schedule/s${k}`)).value.toString(), secretValue(k), `app/schedule/s${k}`);
}

const refused = (code: grpc.status, pattern: RegExp) => (error: unknown) => {
  assert.ok(error instanceof ClientError, String(error));
  assert.equal(grpc.status[error.code], grpc.status[code], error.message);
  assert.match(error.message, pattern);
  return true;
};

test('a schedule is set, replicated and shown; periods out of range and callers without sudo on sys/keys are refused', {
  timeout: 60_000,
}, async () => {
  const before = await statusAt(0);
  assert.equal(before.schedulePeriodMs, 0, 'no schedule at first');
  assert.equal(before.nextRotationAtMs, 0);
  const set = await admin.keySchedule(30 * DAY_MS);
  assert.equal(set.periodMs, 30 * DAY_MS);
  assert.equal(set.nextRotationAtMs, before.activeCreatedAtMs + 30 * DAY_MS);
  for (let k = 0; k < cluster.nodes.length; k++) {
    await eventually(`manager ${k + 1} to apply the schedule`, 10_000, async () =>
      cluster.nodes[k]!.state.cluster.keySchedulePeriodMs === 30 * DAY_MS ? true : undefined,
    );
    const shown = await statusAt(k);
    assert.equal(shown.schedulePeriodMs, 30 * DAY_MS, `shown by manager ${k + 1}`);
    assert.equal(shown.nextRotationAtMs, shown.activeCreatedAtMs + 30 * DAY_MS);
  }

  const limits = /at least 1 h and at most 365 d/;
  await assert.rejects(
    admin.keySchedule(KEY_SCHEDULE_PERIOD_MIN_MS - 1),
    refused(grpc.status.INVALID_ARGUMENT, limits),
  );
  await assert.rejects(admin.keySchedule(59 * 60_000), (error: unknown) => {
    assert.ok(error instanceof ClientError);
    assert.equal(error.reason, 'INVALID_ARGUMENT');
    assert.equal(error.metadata['field'], 'period_ms');
    assert.match(error.message, /got 3540000 ms/);
    return true;
  });
  await assert.rejects(admin.keySchedule(366 * DAY_MS), refused(grpc.status.INVALID_ARGUMENT, limits));
  await assert.rejects(
    admin.call('Keys', 'schedule', {}, true),
    refused(grpc.status.INVALID_ARGUMENT, limits),
    'neither a period nor off',
  );
  await assert.rejects(
    admin.call('Keys', 'schedule', { periodMs: HOUR_MS, off: true }, true),
    refused(grpc.status.INVALID_ARGUMENT, /a period or off, not both/),
  );
  assert.equal(
    (await admin.keySchedule(KEY_SCHEDULE_PERIOD_MAX_MS)).periodMs,
    KEY_SCHEDULE_PERIOD_MAX_MS,
    'the limits are allowed',
  );

  // admin on every sys/ path, not sudo: it sees the schedule, and may not change it.
  const at = cluster.addresses[0]!;
  await cluster.admin.call(at, 'Policies', 'put', {
    name: 'keys-watcher',
    rules: [{ path: 'sys/**', capabilities: ['read', 'list', 'admin'], deny: false }],
  });
  const key = newLeafKey();
  const issued = await cluster.admin.call<Record<string, string>>(at, 'Identities', 'issue', {
    name: 'keys-watcher',
    policies: ['keys-watcher'],
    publicKeyPem: key.publicPem,
  });
  const watcher = new AdminClient('', cluster.clusterId, {
    caPem: issued['caCertificatePem']!,
    certPem: issued['certificatePem']!,
    keyPem: key.privatePem,
  });
  try {
    const shown = await eventually('the identity to be known', 10_000, async () =>
      watcher.call<{ schedulePeriodMs: number }>(at, 'Keys', 'status', {}),
    );
    assert.equal(shown.schedulePeriodMs, KEY_SCHEDULE_PERIOD_MAX_MS);
    await assert.rejects(watcher.call(at, 'Keys', 'schedule', { off: true }), (error: grpc.ServiceError) => {
      assert.equal(grpc.status[error.code], 'PERMISSION_DENIED', error.details);
      assert.match(error.details, /may not sudo "sys\/keys"/);
      return true;
    });
  } finally {
    watcher.close();
  }
  assert.equal((await statusAt(0)).schedulePeriodMs, KEY_SCHEDULE_PERIOD_MAX_MS, 'the refusals changed nothing');
});

test('not due: no rotation; due: exactly one rotation and one rewrap, every record re-sealed under the new term, every value still read', {
  timeout: 90_000,
}, async () => {
  await admin.keySchedule(HOUR_MS);
  const term = keysOf(leaderIndex()).activeTerm;
  const rewrapsBefore = keysOf(leaderIndex()).lastRewrap?.index ?? 0;
  // The key is seconds old: a few runs of the leader's duties (every 250 ms) leave it be.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  assert.equal(keysOf(leaderIndex()).activeTerm, term, 'not due: not rotated');
  assert.equal(rotatedLines().length, 0);

  shiftMs += HOUR_MS + 60_000;
  await eventually('the scheduled rotation and its rewrap', 30_000, async () => {
    const keys = keysOf(leaderIndex());
    return keys.activeTerm === term + 1 && keys.lastRewrap?.term === term + 1 ? true : undefined;
  });
  const rewrapIndex = keysOf(leaderIndex()).lastRewrap!.index;
  assert.ok(rewrapIndex > rewrapsBefore);
  await eventually(`every record re-sealed under term ${term + 1}, on every manager`, 30_000, async () => {
    for (let k = 0; k < cluster.nodes.length; k++) {
      const held = (await statusAt(k)).recordsByTerm.filter((r) => r.records > 0);
      if (held.length !== 1 || held[0]!.term !== term + 1) return undefined;
    }
    return true;
  });
  // Still one rotation and one rewrap a while later: the new term is seconds old.
  await new Promise((resolve) => setTimeout(resolve, 1500));
  for (let k = 0; k < cluster.nodes.length; k++) {
    assert.equal(keysOf(k).activeTerm, term + 1, `manager ${k + 1}: one rotation`);
    assert.equal(keysOf(k).lastRewrap?.index, rewrapIndex, `manager ${k + 1}: one rewrap`);
  }
  const lines = rotatedLines();
  assert.equal(lines.length, 1, lines.join('\n'));
  assert.match(lines[0]!, new RegExp(`"term":${term + 1}\\b`));
  const shown = await statusAt(leaderIndex());
  assert.equal(shown.nextRotationAtMs, shown.activeCreatedAtMs + HOUR_MS, 'the next one is a period after the new key');
  assert.ok(shown.activeCreatedAtMs >= Date.now() + shiftMs - 60_000, "the new key is stamped with the cluster's time");
  await readsAll(admin);
});

test('a leader that rotated on schedule and stopped before its rewrap: the next leader rewraps, and does not rotate again', {
  timeout: 120_000,
}, async () => {
  const term = keysOf(leaderIndex()).activeTerm;
  const stopped = new Promise<number>((resolve) => {
    armed = { step: 'rotated', hit: resolve };
  });
  shiftMs += HOUR_MS + 60_000;
  const crashed = await stopped;
  const keys = keysOf(crashed);
  assert.equal(keys.activeTerm, term + 1, 'it rotated');
  assert.equal(keys.lastRewrap?.term, term, 'and did not rewrap');
  await cluster.nodes[crashed]!.stop();

  const others = cluster.addresses.filter((_, k) => k !== crashed);
  const survivors = cluster.adminClient(others);
  try {
    const next = await eventually('another leader to rewrap under the new term', 60_000, async () => {
      const at = cluster.nodes.findIndex((n, k) => k !== crashed && n.manager.raftStatus()?.role === 'leader');
      return at >= 0 && keysOf(at).lastRewrap?.term === term + 1 ? at : undefined;
    });
    assert.notEqual(next, crashed);
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal(keysOf(next).activeTerm, term + 1, 'no second rotation');
    assert.equal(rotatedLines().length, 2, 'one line per scheduled rotation');
    await eventually(`every record re-sealed under term ${term + 1}`, 30_000, async () => {
      const held = (await survivors.keyStatus()).recordsByTerm.filter((r) => r.records > 0);
      return held.length === 1 && held[0]!.term === term + 1 ? true : undefined;
    });
    await readsAll(survivors);
  } finally {
    survivors.close();
  }
  // The stopped manager comes back and catches up (the last test wants all three).
  cluster.nodes[crashed] = await CofferNode.start({
    ...nodeOptions(crashed),
    dataDir: join(cluster.root, `m${crashed + 1}`),
    tickIntervalMs: 50,
  });
  await eventually('the restarted manager to catch up', 30_000, async () =>
    keysOf(crashed).lastRewrap?.term === term + 1 ? true : undefined,
  );
});

test('coffer key schedule --every / --off and coffer key status; off, the schedule rotates no more', {
  timeout: 120_000,
}, async () => {
  const env = cluster.adminEnv();
  const ok = async (args: string[]): Promise<string> => {
    const r = await coffer(args, '', env);
    assert.equal(r.code, 0, `coffer ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };
  const fails = async (args: string[], pattern: RegExp): Promise<void> => {
    const r = await coffer(args, '', env);
    assert.notEqual(r.code, 0, `coffer ${args.join(' ')} should fail`);
    assert.match(r.stderr, pattern);
  };
  assert.match(
    await ok(['key', 'schedule', '--every', '1h']),
    /scheduled rotation: every 1h, then a rewrap; next due \d{4}-/,
  );
  assert.match(await ok(['key', 'status']), /^scheduled rotation: every 1h, then a rewrap; next due \d{4}-/m);
  await Promise.all([
    fails(['key', 'schedule', '--every', '30m'], /INVALID_ARGUMENT: .*at least 1 h and at most 365 d/),
    fails(['key', 'schedule'], /--every DURATION .*or --off/),
  ]);
  assert.match(await ok(['key', 'schedule', '--off']), /scheduled rotation: off/);
  const status = await admin.keyStatus();
  assert.equal(status.schedulePeriodMs, 0);
  assert.equal(status.nextRotationAtMs, 0);

  const term = keysOf(leaderIndex()).activeTerm;
  shiftMs += 2 * HOUR_MS;
  await new Promise((resolve) => setTimeout(resolve, 1500));
  for (let k = 0; k < cluster.nodes.length; k++) assert.equal(keysOf(k).activeTerm, term, `manager ${k + 1}: off`);
  assert.equal(rotatedLines().length, 2);
});

test("with a schedule, the manager's own rotation by age (30 days) gives way to it; off, it rotates again", {
  timeout: 60_000,
}, async () => {
  await admin.keySchedule(90 * 24 * HOUR_MS);
  const term = keysOf(leaderIndex()).activeTerm;
  // 31 days on: past the automatic interval, within the schedule's 90.
  shiftMs += 31 * 24 * HOUR_MS;
  await new Promise((resolve) => setTimeout(resolve, 1500));
  for (let k = 0; k < cluster.nodes.length; k++)
    assert.equal(keysOf(k).activeTerm, term, `manager ${k + 1}: the 90-day schedule holds`);
  // Without a schedule the automatic rotation is back, and the key is 31 days old.
  await admin.keySchedule(null);
  await eventually('the automatic rotation of a 31-day-old key', 30_000, async () =>
    keysOf(leaderIndex()).activeTerm === term + 1 ? true : undefined,
  );
});
