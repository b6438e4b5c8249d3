import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CryptoError } from '../../src/crypto/errors.ts';
import { ManagerError, ProposalRefused } from '../../src/manager/errors.ts';
import { RaftError } from '../../src/raft/errors.ts';
import { ReplicaError } from '../../src/replica/replica.ts';
import { REFUSAL_CODE_REASONS, SERVICE_REASONS, refusalStatus, refuse, toStatus } from '../../src/server/errors.ts';
import { REFUSAL_CODES, REFUSAL_REASON_CODES, RefusalError, type RefusalReason } from '../../src/state/state-part.ts';
import {
  ERROR_REASON_PATTERN,
  STATUS_DETAILS_BYTES_MAX,
  decodeStatusDetails,
  encodeStatusDetails,
  errorDetailsOf,
  errorTrailers,
} from '../../src/transport/error-details.ts';

const root = join(import.meta.dirname, '../..');

test('google.rpc.Status with an ErrorInfo: what is encoded decodes back; foreign, broken or oversized details decode to nothing', () => {
  const details = { reason: 'CAS_MISMATCH', metadata: { currentVersion: '3', expectedVersion: '2' } };
  const bytes = encodeStatusDetails(grpc.status.FAILED_PRECONDITION, 'secret "a" is at version 3, not 2', details);
  assert.deepEqual(decodeStatusDetails(bytes), details);
  for (let cut = 0; cut < bytes.byteLength; cut++)
    assert.doesNotThrow(
      () => decodeStatusDetails(bytes.subarray(0, cut)),
      `cut at ${cut}: null or what was there, never a throw`,
    );
  assert.equal(decodeStatusDetails(Buffer.alloc(STATUS_DETAILS_BYTES_MAX + 1)), null, 'oversized');
  assert.equal(decodeStatusDetails(Buffer.from([0x1a, 0x05, 0x0a])), null, 'truncated');
  const foreign = encodeStatusDetails(grpc.status.INTERNAL, 'x', { reason: 'OTHER', metadata: {} });
  assert.equal(
    decodeStatusDetails(Buffer.from(foreign.toString('latin1').replace('coffer.dev', 'example.io'), 'latin1')),
    null,
    'an ErrorInfo of another domain is not ours',
  );
  assert.throws(() => encodeStatusDetails(grpc.status.INTERNAL, 'x', { reason: 'not snake', metadata: {} }), TypeError);
  assert.throws(
    () => encodeStatusDetails(grpc.status.INTERNAL, 'x', { reason: 'INTERNAL', metadata: { 'Bad-Key': 'v' } }),
    TypeError,
  );
  // Long messages and values are cut: trailers must fit a client's 8 KiB of metadata.
  const long = encodeStatusDetails(grpc.status.INTERNAL, 'm'.repeat(100_000), {
    reason: 'INTERNAL',
    metadata: { path: 'p'.repeat(100_000) },
  });
  assert.ok(long.byteLength < 2048, `${long.byteLength} bytes`);
});

test('the trailers: the details and the plain reason; a client falls back to the plain reason, and reads nothing from none', () => {
  const trailers = errorTrailers(grpc.status.NOT_FOUND, 'secret "a" does not exist', {
    reason: 'SECRET_NOT_FOUND',
    metadata: {},
  });
  assert.deepEqual(errorDetailsOf(trailers), { reason: 'SECRET_NOT_FOUND', metadata: {} });
  const plainOnly = new grpc.Metadata();
  plainOnly.set('coffer-error-reason', 'NO_LEADER');
  assert.deepEqual(errorDetailsOf(plainOnly), { reason: 'NO_LEADER', metadata: {} });
  const garbage = new grpc.Metadata();
  garbage.set('coffer-error-reason', 'no leader; retry');
  assert.equal(errorDetailsOf(garbage), null);
  assert.equal(errorDetailsOf(new grpc.Metadata()), null);
  assert.equal(errorDetailsOf(undefined), null);
});

test('every reason is UPPER_SNAKE, and a reason has one status wherever it is made', () => {
  for (const reason of [
    ...Object.keys(SERVICE_REASONS),
    ...Object.keys(REFUSAL_REASON_CODES),
    ...Object.values(REFUSAL_CODE_REASONS),
  ])
    assert.match(reason, ERROR_REASON_PATTERN);
  for (const [reason, code] of Object.entries(REFUSAL_REASON_CODES)) {
    const status = SERVICE_REASONS[reason as keyof typeof SERVICE_REASONS];
    if (status !== undefined)
      assert.equal(status, refusalStatus(code), `${reason}: refused by the edge and by the state alike`);
  }
  for (const code of REFUSAL_CODES) assert.ok(REFUSAL_CODE_REASONS[code] !== undefined, code);
});

test('toStatus: internal errors become their status with their own stable code as the reason', () => {
  const cases: Array<[unknown, keyof typeof grpc.status, string, Record<string, string>?]> = [
    [refuse('QUOTA_EXCEEDED', 'over', { limit: '10' }), 'RESOURCE_EXHAUSTED', 'QUOTA_EXCEEDED', { limit: '10' }],
    [RefusalError.as('LABEL_NOT_FOUND', 'no label', { label: 'x' }), 'NOT_FOUND', 'LABEL_NOT_FOUND', { label: 'x' }],
    [new RefusalError('DELETED', 'deleted'), 'NOT_FOUND', 'SECRET_DELETED'],
    [
      new ProposalRefused('state', 'CAS_MISMATCH', 'cas', { reasonCode: 'CAS_MISMATCH' }),
      'FAILED_PRECONDITION',
      'CAS_MISMATCH',
    ],
    [new ProposalRefused('key-op', 'KEY_OP_REFUSED', 'no'), 'FAILED_PRECONDITION', 'KEY_OP_REFUSED'],
    [new RaftError('NOT_LEADER', 'not the leader', 2), 'UNAVAILABLE', 'NOT_LEADER', { leaderId: '2' }],
    [new RaftError('ENTRY_TOO_LARGE', 'too large'), 'RESOURCE_EXHAUSTED', 'ENTRY_TOO_LARGE'],
    [new ReplicaError('PROPOSAL_LOST', 'lost'), 'ABORTED', 'PROPOSAL_LOST'],
    [new ManagerError('MANAGER_LOCKED', 'locked'), 'UNAVAILABLE', 'MANAGER_LOCKED'],
    [new CryptoError('KEY_USES_EXHAUSTED', 'rotate'), 'UNAVAILABLE', 'KEY_USES_EXHAUSTED'],
    [new Error('a bug'), 'INTERNAL', 'INTERNAL'],
  ];
  for (const [error, status, reason, metadata] of cases) {
    const s = toStatus(error);
    assert.deepEqual([grpc.status[s.code], s.reason, s.metadata], [status, reason, metadata ?? {}], String(error));
  }
  assert.equal(toStatus(new Error('a bug')).details, 'internal error; the manager logged it', 'no internal text leaks');
});

test("a forwarded refusal's reason and metadata are checked: one not of its code, or bad metadata, is dropped", () => {
  const forged = new ProposalRefused('state', 'NOT_FOUND', 'x', {
    reasonCode: 'QUOTA_EXCEEDED' satisfies RefusalReason,
    metadata: { ok: 'kept', 'Bad-Key': 'dropped', n: 3 as unknown as string },
  });
  const s = toStatus(forged);
  assert.equal(s.reason, 'NOT_FOUND', 'QUOTA_EXCEEDED is not a NOT_FOUND reason');
  assert.deepEqual(s.metadata, { ok: 'kept' });
  assert.equal(toStatus(new ProposalRefused('state', 'NOT_FOUND', 'x', { reasonCode: '\r\nX' })).reason, 'NOT_FOUND');
});

test('every refusal a server module sends names its reason: none is made with new ServiceError(status, message)', () => {
  // bootstrap.ts runs in a joiner (its errors are never sent); node.ts's is a start-up error;
  // leader-link.ts passes on the leader's own reason.
  const exempt = new Set(['errors.ts', 'bootstrap.ts', 'node.ts', 'leader-link.ts']);
  const offenders = readdirSync(join(root, 'src/server'))
    .filter((f) => f.endsWith('.ts') && !exempt.has(f))
    .filter((f) => readFileSync(join(root, 'src/server', f), 'utf8').includes('new ServiceError('));
  assert.deepEqual(offenders, [], 'use refuse(REASON, message, metadata)');
});

test('docs/errors.md lists every reason the server names', () => {
  const doc = readFileSync(join(root, 'docs/errors.md'), 'utf8');
  const missing = [
    ...Object.keys(SERVICE_REASONS),
    ...Object.keys(REFUSAL_REASON_CODES),
    ...Object.values(REFUSAL_CODE_REASONS),
  ].filter((reason) => !doc.includes(`\`${reason}\``));
  assert.deepEqual(missing, []);
});

test('api.proto: every rpc has a comment, every reason the protos name is a documented one, and the stale "until policies exist" is gone', () => {
  const api = readFileSync(join(root, 'proto/coffer/v1/api.proto'), 'utf8');
  const peer = readFileSync(join(root, 'proto/coffer/v1/peer.proto'), 'utf8');
  const doc = readFileSync(join(root, 'docs/errors.md'), 'utf8');
  const lines = api.split('\n');
  const bare = lines
    .map((line, k) => ({ line, above: lines[k - 1] ?? '' }))
    .filter(({ line, above }) => /^\s*rpc /.test(line) && !/^\s*\/\//.test(above))
    .map(({ line }) => line.trim());
  assert.deepEqual(bare, [], 'rpcs without a comment');
  assert.doesNotMatch(api, /until policies exist/);
  const statusNames = new Set(Object.keys(grpc.status).filter((k) => Number.isNaN(Number(k))));
  const comments = [...api.matchAll(/\/\/.*$/gm), ...peer.matchAll(/\/\/.*$/gm)].map((m) => m[0]).join('\n');
  const named = new Set([...comments.matchAll(/\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b/g)].map((m) => m[0]));
  const unknown = [...named].filter((r) => !statusNames.has(r) && !doc.includes(`\`${r}\``));
  assert.deepEqual(unknown, [], 'reasons named in the protos that docs/errors.md does not list');
  // Every reason a client of the API can meet is named where the calls are described.
  const peerOnly = new Set(['NOT_A_MEMBER', 'JOIN_TOKEN_REFUSED', 'JOIN_TOKEN_NOT_READY', 'JOIN_THROUGH_LEADER']);
  const unnamed = Object.keys(SERVICE_REASONS).filter(
    (r) => !(peerOnly.has(r) || r === 'ADDRESS_NOT_PROVEN' ? peer : api).includes(r),
  );
  assert.deepEqual(unnamed, [], 'reasons the protos never mention');
});
