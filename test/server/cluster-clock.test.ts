import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CLOCK_SAMPLE_TTL_MS, ClusterClock } from '../../src/server/cluster-clock.ts';

/** A host whose wall clock reads `true + offset`; monotonic time starts at 0. */
function host(trueStartMs: number, offsetMs = 0) {
  const t = { trueMs: trueStartMs, offsetMs, monoMs: 0 };
  const clock = new ClusterClock({ wallNowMs: () => t.trueMs + t.offsetMs, monotonicNowMs: () => t.monoMs });
  const advance = (ms: number) => {
    t.trueMs += ms;
    t.monoMs += ms;
  };
  /** A round trip to a member whose clock is `memberOffsetMs` off true, answered `answerAtMs` into `roundTripMs`. */
  const probe = (member: number, memberOffsetMs: number, roundTripMs = 10, answerAtMs = roundTripMs / 2) => {
    const sent = t.monoMs;
    const memberWall = t.trueMs + answerAtMs + memberOffsetMs;
    advance(roundTripMs);
    clock.record(member, sent, memberWall, roundTripMs);
  };
  return { clock, t, advance, probe };
}

test('a manager whose own clock is off reads the time the others keep', () => {
  const h = host(1_000_000, -300_000); // 300 s behind
  h.probe(2, 0);
  h.probe(3, 3);
  assert.equal(h.clock.now(), h.t.trueMs);
  assert.equal(h.clock.offsetMs(), 300_000);
  // Whole milliseconds, whatever the round trips: commands carry the time as an integer.
  h.probe(2, 0, 7);
  h.probe(3, 0, 9);
  assert.ok(Number.isSafeInteger(h.clock.now()) && Number.isSafeInteger(h.clock.offsetMs()));
});

test('one member whose clock is off moves nothing: the median of three is a good clock', () => {
  const h = host(5_000_000);
  h.probe(2, 900_000);
  h.probe(3, -3);
  assert.equal(h.clock.now(), h.t.trueMs, 'the median of 0, +900 s and -3 ms is 0');
  // Two against one, whatever their side: the lone clock is the one that is wrong.
  h.probe(3, 900_000);
  assert.equal(h.clock.now(), h.t.trueMs + 900_000);
});

test("this host's clock stepping moves its own vote at once, not the cluster's time", () => {
  const h = host(2_000_000);
  h.probe(2, 0);
  h.probe(3, 0);
  h.t.offsetMs = -120_000; // NTP broken, the clock set back two minutes: no probe since
  assert.equal(h.clock.now(), h.t.trueMs);
  assert.equal(h.clock.offsetMs(), 120_000);
  h.t.offsetMs = 600_000;
  assert.equal(h.clock.now(), h.t.trueMs);
});

test("a member's clock that steps is followed at its next sample, not after its old samples age out", () => {
  const h = host(3_000_000);
  h.probe(2, 0, 2); // short round trips: they would win the shortest-round-trip pick
  h.probe(3, 0, 2);
  h.probe(2, 0, 2);
  // Members 2 and 3 both step 60 s ahead (as if this host were the one off).
  h.probe(2, 60_000, 30);
  h.probe(3, 60_000, 30);
  assert.equal(h.clock.now(), h.t.trueMs + 60_000);
});

test('two clocks that disagree (one member heard from) do not move this one', () => {
  const h = host(0);
  h.probe(2, 600_000, 0);
  assert.equal(h.clock.now(), h.t.trueMs);
  h.probe(3, 600_000, 0);
  assert.equal(h.clock.now(), h.t.trueMs + 600_000, 'a majority of three');
});

test("of a member's samples the shortest round trip wins, samples age out, and a member that left no longer counts", () => {
  const h = host(10_000);
  // True offset +1,000 ms. A slow round trip of 800 ms answered late in its window reads +1,300:
  // within its error bound (400 ms), so it is kept, but the 10 ms round trip wins.
  h.probe(2, 1_000, 800, 700);
  h.probe(2, 1_000, 10);
  h.probe(2, 1_000, 400, 300);
  assert.equal(h.clock.view().members[0]!.offsetMs, 1_000);
  assert.equal(h.clock.view().members[0]!.errorMs, 5);
  h.probe(3, 1_000, 0);
  assert.equal(h.clock.offsetMs(), 1_000);
  h.advance(CLOCK_SAMPLE_TTL_MS + 1);
  assert.equal(h.clock.offsetMs(), 0, 'nobody heard from lately: this clock alone');
  h.probe(3, 1_000, 0);
  h.probe(2, 1_000, 0);
  assert.equal(h.clock.offsetMs(), 1_000);
  h.clock.forget(2);
  assert.equal(h.clock.offsetMs(), 0, "a tie of two: this host's own");
  assert.throws(() => h.clock.record(2, 0, Number.NaN, 1), /finite/);
});
