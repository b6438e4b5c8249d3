import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  IDENTITY_REQUESTS_PER_SECOND_DEFAULT,
  IDENTITY_WRITE_BYTES_PER_MINUTE_DEFAULT,
  IdentityRateLimiter,
} from '../../src/server/rate-limit.ts';

/** A clock the test moves by hand. */
function fakeClock(): { now: () => number; advance: (ms: number) => void } {
  let ms = 1_000_000;
  return {
    now: () => ms,
    advance: (by) => {
      ms += by;
    },
  };
}

test("requests: a burst of one second's worth, then refused with the limit and the flag named, then refilled over time", () => {
  const clock = fakeClock();
  const limiter = new IdentityRateLimiter({ requestsPerSecond: 1000, nowMs: clock.now });
  for (let k = 0; k < 1000; k++) assert.equal(limiter.request('ci'), null, `request ${k}`);
  assert.deepEqual(limiter.request('ci'), {
    message: 'identity "ci" exceeded 1000 requests/s on this manager (--identity-requests-per-second); retry in 1 ms',
    retryAfterMs: 1,
  });
  assert.equal(limiter.request('ops'), null, 'each identity has its own bucket');
  clock.advance(1);
  assert.equal(limiter.request('ci'), null, 'one token a millisecond at 1000/s');
  assert.notEqual(limiter.request('ci'), null);
  clock.advance(250);
  for (let k = 0; k < 250; k++) assert.equal(limiter.request('ci'), null);
  assert.notEqual(limiter.request('ci'), null, 'refused requests took nothing, and nothing more came');
  clock.advance(60_000);
  for (let k = 0; k < 1000; k++) assert.equal(limiter.request('ci'), null);
  assert.notEqual(limiter.request('ci'), null, 'an idle minute refills one burst, not sixty');
});

test('writes: bytes per minute, a refusal that says when to retry; a write larger than the whole minute passes on a full bucket and leaves debt', () => {
  const clock = fakeClock();
  const limiter = new IdentityRateLimiter({ writeBytesPerMinute: 60_000, nowMs: clock.now });
  assert.equal(limiter.write('ci', 50_000), null);
  assert.equal(limiter.write('ci', 10_000), null);
  assert.deepEqual(limiter.write('ci', 1000), {
    message:
      'identity "ci" exceeded 58.5 KiB of writes per minute on this manager (--identity-write-bytes-per-minute); retry in 1 s',
    retryAfterMs: 1000,
  });
  clock.advance(999);
  assert.notEqual(limiter.write('ci', 1000), null);
  clock.advance(1);
  assert.equal(limiter.write('ci', 1000), null, '1000 bytes a second at 60,000 a minute');
  assert.equal(limiter.request('ci'), null, 'the request bucket is apart');
  clock.advance(60_000);
  assert.equal(limiter.write('ci', 100_000), null, 'more than the bucket holds, on a full bucket');
  clock.advance(30_000);
  assert.match(
    limiter.write('ci', 1)?.message ?? '',
    /retry in 11 s$/,
    'in debt: 40,000 under, 30,000 back since: 10,001 bytes short at 1000 a second',
  );
  assert.equal(limiter.write('ci', 0), null, 'no bytes, no limit');
});

test('0 turns a limit off; bad settings are refused', () => {
  const clock = fakeClock();
  const off = new IdentityRateLimiter({ requestsPerSecond: 0, writeBytesPerMinute: 0, nowMs: clock.now });
  for (let k = 0; k < 100_000; k++) assert.equal(off.request('ci'), null);
  assert.equal(off.write('ci', 10 * 1024 ** 3), null);
  assert.equal(off.tracked, 0, 'nothing tracked when off');
  assert.throws(
    () => new IdentityRateLimiter({ requestsPerSecond: -1 }),
    /requestsPerSecond must be a number of at least 0/,
  );
  assert.throws(() => new IdentityRateLimiter({ writeBytesPerMinute: Number.NaN }), /writeBytesPerMinute/);
  assert.throws(() => new IdentityRateLimiter({ identitiesMax: 0 }), /identitiesMax/);
});

test('memory is bounded: at most N identities, the least recently seen forgotten first', () => {
  const clock = fakeClock();
  const limiter = new IdentityRateLimiter({ requestsPerSecond: 2, identitiesMax: 3, nowMs: clock.now });
  for (const id of ['a', 'b', 'c']) {
    limiter.request(id);
    limiter.request(id);
  }
  assert.notEqual(limiter.request('a'), null, 'a is out of tokens (and now the most recently seen)');
  limiter.request('d'); // forgets b, the least recently seen
  assert.equal(limiter.tracked, 3);
  assert.notEqual(limiter.request('a'), null, 'a was kept: still out of tokens');
  assert.notEqual(limiter.request('c'), null, 'c was kept: still out of tokens');
  assert.equal(limiter.request('b'), null, 'b was forgotten, so it starts afresh');
  assert.equal(limiter.tracked, 3);
  for (let k = 0; k < 10_000; k++) limiter.request(`id${k}`);
  assert.equal(limiter.tracked, 3);
});

test('the defaults let one identity drive a ~3,000 requests/s benchmark on a manager', () => {
  assert.equal(IDENTITY_REQUESTS_PER_SECOND_DEFAULT, 5_000);
  assert.equal(IDENTITY_WRITE_BYTES_PER_MINUTE_DEFAULT, 1024 ** 3);
  const clock = fakeClock();
  const limiter = new IdentityRateLimiter({ nowMs: clock.now });
  // Ten seconds at 3,000 requests/s, each writing a 1 KiB value: nothing refused.
  for (let ms = 0; ms < 10_000; ms++) {
    for (let k = 0; k < 3; k++) {
      assert.equal(limiter.request('bench'), null);
      assert.equal(limiter.write('bench', 1024), null);
    }
    clock.advance(1);
  }
});
