import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Packr } from 'msgpackr';
import type { Message } from '../../src/raft/types.ts';
import {
  WireError,
  decodeMessages,
  decodeSnapshotHeader,
  encodeMessages,
  encodeSnapshotHeader,
} from '../../src/transport/wire.ts';

const packr = new Packr({ useRecords: false, moreTypes: false });

const EXAMPLES: Message[] = [
  {
    type: 'append',
    from: 1,
    to: 2,
    term: 3,
    prevIndex: 4,
    prevTerm: 2,
    commit: 4,
    entries: [
      { kind: 'normal', term: 3, index: 5, data: Buffer.from('x') },
      { kind: 'conf-change', term: 3, index: 6, change: { type: 'add-learner', nodeId: 9 } },
    ],
  },
  { type: 'append-response', from: 2, to: 1, term: 3, index: 6, reject: false, hintIndex: 0, hintTerm: 0 },
  { type: 'vote', from: 1, to: 2, term: 3, lastIndex: 6, lastTerm: 3, transfer: true },
  { type: 'pre-vote', from: 1, to: 2, term: 4, lastIndex: 6, lastTerm: 3, transfer: false },
  { type: 'vote-response', from: 2, to: 1, term: 3, reject: true },
  { type: 'pre-vote-response', from: 2, to: 1, term: 4, reject: false },
  { type: 'heartbeat', from: 1, to: 2, term: 3, commit: 6, readSeq: 7 },
  { type: 'heartbeat-response', from: 2, to: 1, term: 3, readSeq: 7 },
  { type: 'timeout-now', from: 1, to: 2, term: 3 },
  { type: 'read-index', from: 2, to: 1, term: 3, context: '2:17' },
  { type: 'read-index-response', from: 1, to: 2, term: 3, context: '2:17', index: 6, refusal: null },
  { type: 'read-index-response', from: 1, to: 2, term: 3, context: '2:18', index: 0, refusal: 'leader-not-ready' },
];

test('every message type survives the wire unchanged', () => {
  assert.deepEqual(decodeMessages(encodeMessages(EXAMPLES)), EXAMPLES);
  const snapshot = {
    type: 'snapshot' as const,
    from: 1,
    to: 3,
    term: 5,
    snapshot: {
      metadata: { index: 100, term: 4, confState: { voters: [1, 2, 3], learners: [4] } },
      data: Buffer.alloc(0),
    },
  };
  const header = decodeSnapshotHeader(encodeSnapshotHeader(snapshot));
  assert.deepEqual(header, { from: 1, to: 3, term: 5, metadata: snapshot.snapshot.metadata, records: false });
  // A descriptor whose records follow says so in an eighth field; a header of seven (an older
  // manager's) has none, and any other value there is refused.
  assert.equal(decodeSnapshotHeader(encodeSnapshotHeader(snapshot, true)).records, true);
  const eight = packr.unpack(encodeSnapshotHeader(snapshot, true)) as unknown[];
  assert.throws(() => decodeSnapshotHeader(packr.pack([...eight.slice(0, 7), 2])), /records follow/);
});

test('a malformed field is refused with a WireError that names it, before the core sees anything', () => {
  const bad = (fields: unknown[][], pattern: RegExp) =>
    assert.throws(
      () => decodeMessages(packr.pack(fields)),
      (e: unknown) => e instanceof WireError && pattern.test(e.message),
    );
  bad([[6, 1, 2, -1, 0, 0]], /term is not a non-negative integer/);
  bad([[6, 0, 2, 1, 0, 0]], /from is 0/);
  bad([[6, 1, 2, 1, 0]], /has 5 fields, not 6/);
  bad([[99, 1, 2, 1]], /unknown message type/);
  bad([[4, 1, 2, 1, 'yes']], /reject is not a boolean/);
  bad([[0, 1, 2, 1, 4, 1, 4, [[1, 7, 0, Buffer.from('x')]]]], /not consecutive after prevIndex/);
  bad([[0, 1, 2, 1, 4, 1, 4, [[1, 5, 0, 'not bytes']]]], /entry data is not bytes/);
  bad([[10, 1, 2, 1, 'x'.repeat(300)]], /at most 256 characters/);
  bad([[8, 1, 2, 1]], /must arrive in chunks/);
  assert.throws(() => decodeMessages(Buffer.from([0xc1])), WireError);
  assert.throws(() => decodeMessages(packr.pack(Array.from({ length: 5000 }, () => [9, 1, 2, 1]))), /more than 4096/);
});
