import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Packr } from 'msgpackr';
import { encodePayload } from '../../src/barrier/payload.ts';
import { packLarge } from '../../src/codec/pack-large.ts';

// msgpackr packs into one module-wide buffer; what is packed after a large value used to be a
// view of a buffer as large as it. Kept in the Raft log, such views held a state image's worth of
// memory each (a manager with 100,000 secrets held 292 MB of them).
const big = { image: Buffer.alloc(4 * 1024 * 1024, 1) };

test('after a large image is packed, small packs are views of a small buffer again', () => {
  const packr = new Packr({ useRecords: false, moreTypes: false });
  const image = packLarge(packr, big);
  assert.ok(image.byteLength > 4 * 1024 * 1024);
  assert.deepEqual(packr.unpack(image), big, 'the image stays valid');
  const small = packr.pack([1, 'c', 'secret.put', Buffer.alloc(300)]);
  assert.ok(small.buffer.byteLength <= 64 * 1024, `a small pack is a view of a ${small.buffer.byteLength}-byte buffer`);
});

test('a log entry payload owns its bytes, whatever was packed before it', () => {
  new Packr({ useRecords: false, moreTypes: false }).pack(big); // grows msgpackr's shared buffer
  const payload = encodePayload({ type: 'command', kind: 'secret.put', sealed: Buffer.alloc(300, 2) });
  assert.ok(payload.buffer.byteLength <= 8192, `the payload is a view of a ${payload.buffer.byteLength}-byte buffer`);
});
