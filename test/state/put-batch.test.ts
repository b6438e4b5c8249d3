import { newSecretStore, testRecordKeys } from './stores.ts';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encodePayload } from '../../src/barrier/payload.ts';
import { Keyring } from '../../src/crypto/keyring.ts';
import { RAFT_CONFIG_DEFAULTS } from '../../src/raft/config.ts';
import { normalEntryBytes } from '../../src/raft/log.ts';
import { encodeAccessCommand } from '../../src/state/access-state.ts';
import { AppliedState } from '../../src/state/applied-state.ts';
import type { Authority } from '../../src/state/state-part.ts';
import {
  PUT_BATCH_BYTES_MAX,
  PUT_BATCH_ITEMS_MAX,
  SECRET_NAME_BYTES_MAX,
  TTL_MS_MAX,
  VERSIONS_KEPT_MAX,
} from '../../src/state/limits.ts';
import {
  encodeSecretCommand,
  type Actor,
  type PutBatchItem,
  type SecretCommand,
  type SecretResult,
  type SecretStore,
} from '../../src/state/secret-store.ts';

const T0 = 1_700_000_000_000;
const ci: Actor = { name: 'ci', key: 'c1'.repeat(32) };

const item = (name: string, value: string, extra: Partial<PutBatchItem> = {}): PutBatchItem => ({
  name,
  value: Buffer.from(value),
  cas: null,
  expireAtMs: null,
  versionsKept: null,
  ...extra,
});
const batch = (...items: PutBatchItem[]): SecretCommand => ({ op: 'put-batch', items, nowMs: T0 });
const put = (name: string, value: string): SecretCommand => ({ op: 'put', ...item(name, value), nowMs: T0 });

/** Every certificate valid, every capability allowed: the store's own verdicts (cas, quotas) alone. */
const allowAll: Authority = {
  certificateValid: () => true,
  decide: () => ({ allowed: true, rule: null }),
};

/** Applies through the encoded form, as the log carries it, at log index `index`. */
function apply(store: SecretStore, command: SecretCommand, actor: Actor | null, index: number): SecretResult {
  const { kind, data } = encodeSecretCommand(command, actor);
  const decoded = store.decode(kind, data);
  return decoded.ok ? store.apply(decoded.command, decoded.actor, index, { authority: allowAll }) : decoded;
}

/** The log index and counter in a sealed record's nonce (src/crypto/record-seal.ts: format, term, nonce). */
function sealedAt(sealed: Uint8Array): { index: number; seq: number } {
  const bytes = Buffer.from(sealed);
  return { index: Number(bytes.readBigUInt64BE(5)), seq: bytes.readUInt32BE(13) };
}

test('a batch applies its items in order at one index, sealed with consecutive counters; a name twice makes two versions', async () => {
  const store = newSecretStore();
  const result = apply(store, batch(item('app/a', 'a1'), item('app/b', 'b1'), item('app/a', 'a2')), ci, 7);
  assert.deepEqual(result, { ok: true, version: 2, versions: [1, 1, 2] });
  assert.equal(store.read('app/a', {}, T0).value.toString(), 'a2', 'the later line is current');
  assert.equal(store.read('app/a', { version: 1 }, T0).value.toString(), 'a1');
  assert.equal(store.read('app/b', {}, T0).value.toString(), 'b1');
  assert.deepEqual(store.usage('ci'), { secrets: 2, valueBytes: 6 });
  // Each item seals its value then its metadata: a1 0, meta a 1, b1 2, meta b 3, a2 4, meta a 5 (replacing 1).
  // Small values live inside their secret's record: b1 (2) and a2 (4) are inside metas 3 and 5; a1 (0)
  // moved out to a record of its own when a2 came.
  const seals: number[] = [];
  for await (const record of store.records()) {
    const key = Buffer.from(record.key);
    if (key[1] !== 'm'.charCodeAt(0) && key[1] !== 'v'.charCodeAt(0)) continue;
    const at = sealedAt(record.value);
    assert.equal(at.index, 7, 'every record of the batch is sealed at its index');
    seals.push(at.seq);
  }
  assert.deepEqual(
    seals.sort((x, y) => x - y),
    [0, 3, 5],
  );
  // The next command's seals start over at its own index.
  assert.deepEqual(apply(store, put('app/c', 'c1'), ci, 8), { ok: true, version: 1 });
});

test('one refused item leaves no trace of the batch: no record, no usage, no version, no count per term', async () => {
  const store = newSecretStore({ identitySecretsMax: 3 });
  assert.deepEqual(apply(store, put('app/old', 'o1'), ci, 1), { ok: true, version: 1 });
  const before = await store.snapshot();
  const usage = store.usage('ci');
  const term = testRecordKeys().activeTerm;
  const sealed = store.recordsSealedUnder(term);

  // A compare-and-set refused at item 3: items 1 and 2 (a new secret, a version of an old one) are undone.
  const cas = apply(
    store,
    batch(item('app/new', 'n1'), item('app/old', 'o2'), item('app/old', 'o3', { cas: 1 }), item('app/x', 'x')),
    ci,
    2,
  );
  assert.equal(cas.ok, false);
  assert.equal(!cas.ok && cas.code, 'CAS_MISMATCH');
  assert.equal(!cas.ok && cas.reasonCode, 'CAS_MISMATCH');
  assert.match(
    !cas.ok ? cas.reason : '',
    /^item 3 of 4 \("app\/old"\): secret "app\/old" is at version 2, not 1; no item of the batch was applied$/,
  );
  assert.deepEqual(!cas.ok && cas.metadata, { currentVersion: '2', expectedVersion: '1', item: '3' });

  // A quota refused at item 3: the two secrets created before it are undone, and their charges.
  const quota = apply(store, batch(item('app/q1', 'x'), item('app/q2', 'x'), item('app/q3', 'x')), ci, 3);
  assert.equal(!quota.ok && quota.code, 'LIMIT');
  assert.match(!quota.ok ? quota.reason : '', /^item 3 of 3 \("app\/q3"\): identity "ci" has created 3 secrets/);

  assert.deepEqual(await store.snapshot(), before, 'the records are as they were, byte for byte');
  assert.deepEqual(store.usage('ci'), usage);
  assert.equal(store.recordsSealedUnder(term), sealed);
  assert.deepEqual(
    store.versions('app/old', T0).map((v) => v.version),
    [1],
  );
  assert.throws(() => store.metadata('app/new'), /does not exist/);

  // The same items without the refused one go in.
  assert.deepEqual(apply(store, batch(item('app/new', 'n1'), item('app/old', 'o2')), ci, 4), {
    ok: true,
    version: 2,
    versions: [1, 2],
  });
});

test('two stores applying the same batches, a refused one among them, hold the same records', async () => {
  const keys = testRecordKeys();
  const stores = [newSecretStore({}, keys), newSecretStore({}, keys)];
  const commands: SecretCommand[] = [
    batch(item('s/a', '1'), item('s/b', '2', { expireAtMs: T0 + 60_000 }), item('s/a', '3', { versionsKept: 2 })),
    batch(item('s/c', '4'), item('s/a', '5', { cas: 7 })),
    batch(item('s/a', '6'), item('s/a', '7'), item('s/c', '8', { cas: 0 })),
  ];
  const results = stores.map((store) => commands.map((command, k) => apply(store, command, ci, k + 1)));
  assert.deepEqual(results[0], results[1]);
  assert.deepEqual(
    results[0]!.map((r) => r.ok),
    [true, false, true],
  );
  assert.deepEqual(await stores[0]!.snapshot(), await stores[1]!.snapshot());
  assert.deepEqual(
    stores[0]!.versions('s/a', T0).map((v) => v.version),
    [3, 4],
    'versions kept 2',
  );
});

test('each item is authorized where it applies: one name outside the policy refuses the whole batch; delete needed where a put wipes', async () => {
  const state = new AppliedState({ keys: testRecordKeys() });
  let index = 0;
  const step = (c: { kind: string; data: Buffer }) => state.apply({ index: ++index, kind: c.kind, data: c.data });
  step(
    encodeAccessCommand({
      op: 'policy-put',
      name: 'writer',
      rules: [{ path: 'app/**', capabilities: ['read', 'write'], deny: false }],
    }),
  );
  step(
    encodeAccessCommand({
      op: 'identity-issue',
      name: 'ci',
      policies: ['writer'],
      key: ci.key,
      serial: 'aa01',
      caGen: 1,
      nowMs: T0,
    }),
  );
  const outside = step(encodeSecretCommand(batch(item('app/a', '1'), item('other/b', '2'), item('app/c', '3')), ci));
  assert.equal(!outside.ok && outside.code, 'DENIED');
  assert.match(
    !outside.ok ? outside.reason : '',
    /^item 2 of 3 \("other\/b"\): identity "ci" may not write "other\/b"/,
  );
  assert.throws(() => state.secrets.metadata('app/a'), /does not exist/, 'item 1 left no trace');

  // Item 3 lowers the versions kept of what items 1 and 2 made: it needs delete, judged on the batch's own writes.
  const wipes = step(
    encodeSecretCommand(batch(item('app/k', '1'), item('app/k', '2'), item('app/k', '3', { versionsKept: 1 })), ci),
  );
  assert.match(!wipes.ok ? wipes.reason : '', /^item 3 of 3 \("app\/k"\): identity "ci" may not delete "app\/k"/);
  assert.throws(() => state.secrets.metadata('app/k'), /does not exist/);

  assert.deepEqual(step(encodeSecretCommand(batch(item('app/a', '1'), item('app/c', '3')), ci)), {
    ok: true,
    version: 1,
    versions: [1, 1],
  });
  // A revoked certificate refuses the batch as a whole.
  step(encodeAccessCommand({ op: 'identity-revoke', name: 'ci' }));
  const revoked = step(encodeSecretCommand(batch(item('app/d', '1')), ci));
  assert.equal(!revoked.ok && revoked.reasonCode, 'CERTIFICATE_REVOKED');
});

test('a logged batch is checked field by field: item count, bytes, every item as a put', () => {
  const store = newSecretStore();
  const refusedWith = (command: unknown, pattern: RegExp) => {
    const decoded = store.decode('secret.put-batch', encodeSecretCommand(command as SecretCommand, ci).data);
    assert.equal(decoded.ok, false, `${pattern} was decoded`);
    assert.match(!decoded.ok ? decoded.reason : '', pattern);
  };
  refusedWith(batch(), /1 to 256 items/);
  refusedWith(
    batch(...Array.from({ length: PUT_BATCH_ITEMS_MAX + 1 }, (_, k) => item(`n/${k}`, 'v'))),
    /1 to 256 items/,
  );
  const big = 'x'.repeat(500 * 1024);
  refusedWith(batch(item('a', big), item('b', big)), /at most 983040 bytes of names and values/);
  refusedWith(batch(item('ok', 'v'), item('../x', 'v')), /^item 2 of the batch: a secret name/);
  refusedWith(batch(item('ok', 'v', { cas: -1 })), /^item 1 of the batch: cas is a version number/);
  refusedWith(batch(item('ok', 'v', { versionsKept: VERSIONS_KEPT_MAX + 1 })), /versions kept/);
  refusedWith(batch(item('ok', 'v', { expireAtMs: T0 + TTL_MS_MAX + 1 })), /ten years/);
  refusedWith({ op: 'put-batch', items: [{ ...item('ok', 'v'), nowMs: 5 }], nowMs: T0 }, /no field "nowMs"/);
  refusedWith({ op: 'put-batch', items: [{ ...item('ok', 'v'), value: 'text' }], nowMs: T0 }, /needs a value/);
  refusedWith({ op: 'put-batch', items: [item('ok', 'v')] }, /needs a time/);
  refusedWith({ op: 'put-batch', items: 'many', nowMs: T0 }, /1 to 256 items/);
});

test('the largest batch the limits allow, sealed and framed as the log carries it, fits one Raft entry', () => {
  // 256 items whose names are the longest and whose values fill the rest of PUT_BATCH_BYTES_MAX, with
  // every optional field at its widest (cas and expiry as 8-byte integers, versions kept), and an
  // actor whose name is the longest an identity may have.
  const name = (k: number) => `${String(k).padStart(3, '0')}/${'n'.repeat(SECRET_NAME_BYTES_MAX - 4)}`;
  const valueBytes = Math.floor(
    (PUT_BATCH_BYTES_MAX - PUT_BATCH_ITEMS_MAX * SECRET_NAME_BYTES_MAX) / PUT_BATCH_ITEMS_MAX,
  );
  const items = Array.from({ length: PUT_BATCH_ITEMS_MAX }, (_, k) => ({
    name: name(k),
    value: Buffer.alloc(valueBytes, 1),
    cas: 2 ** 52,
    expireAtMs: T0 + TTL_MS_MAX,
    versionsKept: VERSIONS_KEPT_MAX,
  }));
  const command: SecretCommand = { op: 'put-batch', items, nowMs: T0 };
  const actor: Actor = { name: 'a'.repeat(128), key: 'f'.repeat(64) };
  const encoded = encodeSecretCommand(command, actor);
  assert.equal(newSecretStore().decode(encoded.kind, encoded.data).ok, true, 'the decoder takes it');
  const keyring = Keyring.create('test-cluster', 0);
  const payload = encodePayload({
    type: 'command',
    kind: encoded.kind,
    sealed: keyring.encrypt(encoded.kind, encoded.data),
  });
  const entryBytes = normalEntryBytes(payload);
  assert.ok(
    entryBytes <= RAFT_CONFIG_DEFAULTS.entryBytesMax,
    `a worst-case batch is ${entryBytes} bytes as an entry; entryBytesMax is ${RAFT_CONFIG_DEFAULTS.entryBytesMax}`,
  );
  const framing = entryBytes - items.reduce((sum, i) => sum + i.name.length + i.value.byteLength, 0);
  assert.ok(framing < 32 * 1024, `the envelope took ${framing} bytes: well within PUT_BATCH_ENVELOPE_BYTES_MAX`);
});

test('a batch counts its items as changes for the snapshot cadence: n items add n - 1 beyond its entry, a single put adds none', () => {
  const state = new AppliedState({ keys: testRecordKeys() });
  let index = 0;
  const step = (command: SecretCommand) => {
    const { kind, data } = encodeSecretCommand(command, null);
    return state.apply({ index: ++index, kind, data });
  };
  assert.equal(state.batchedChanges, 0);
  assert.ok(step(batch(item('app/a', '1'), item('app/b', '2'), item('app/c', '3'))).ok);
  assert.equal(state.batchedChanges, 2);
  assert.ok(step(put('app/d', '4')).ok);
  assert.equal(state.batchedChanges, 2, 'one put is one change: its entry counts it');
  assert.ok(step(batch(...Array.from({ length: 10 }, (_, k) => item(`app/n${k}`, 'x')))).ok);
  assert.equal(state.batchedChanges, 11);
});
