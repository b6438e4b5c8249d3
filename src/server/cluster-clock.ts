import type { NodeId } from '../raft/types.ts';

/** How often a manager asks every other member for its wall clock (Peer.Clock). */
export const CLOCK_PROBE_INTERVAL_MS = 1000;
/** A member's samples older than this no longer count (it stopped answering). */
export const CLOCK_SAMPLE_TTL_MS = 30_000;
/** Beyond this, health says this manager's own clock is off (the cluster's time is still used). */
export const CLOCK_OFFSET_WARN_MS = 1000;
/** Two samples of one member's clock agree when their error bounds meet within this (drift, rounding). */
const CLOCK_DRIFT_TOLERANCE_MS = 10;
/** Samples kept per member; the one with the shortest round trip is the member's estimate. */
const SAMPLES_KEPT = 8;

interface Sample {
  readonly offsetMs: number;
  readonly roundTripMs: number;
  /** When it was taken, on the monotonic clock. */
  readonly atMs: number;
}

export interface ClockView {
  /** What this manager adds to its own wall clock to read the cluster's time. */
  readonly offsetMs: number;
  /** Each member's clock minus this manager's, as last estimated, with its error bound. */
  readonly members: ReadonlyArray<{ readonly id: NodeId; readonly offsetMs: number; readonly errorMs: number }>;
}

/**
 * The cluster's wall-clock time, as a majority of the managers' clocks tell it. Every decision
 * the cluster makes by wall time (when a TTL expires, when a join token or a certificate starts
 * and ends) reads this clock, not the host's: a manager whose own clock is minutes off (NTP
 * broken, a VM restored) still stamps and judges by the time the others keep. Raft itself never
 * reads wall time; it counts ticks of the monotonic clock.
 *
 * Offsets are measured against a reference that only the monotonic clock moves (the wall clock
 * at start, plus monotonic time since), so a step of this host's wall clock changes nothing but
 * this host's own vote, at once. Each member's offset comes from Peer.Clock round trips, NTP
 * style: the answer is taken to have been read half-way through the round trip (error at most
 * half of it); of the member's last samples the one with the shortest round trip wins, and a new
 * sample that cannot agree with older ones (their error bounds do not meet: the member's clock
 * stepped) drops them. The cluster's time is the reference plus the median of the votes: this
 * host's clock and every member's heard from lately; on a tie (an even count) the middle value
 * nearer this host's own, so two clocks that disagree do not move this one. One clock, however
 * far off, moves nothing while most clocks agree.
 */
export class ClusterClock {
  readonly #samples = new Map<NodeId, Sample[]>();
  readonly #wallNowMs: () => number;
  readonly #monotonicNowMs: () => number;
  /** Wall time at start minus monotonic time then: the reference is this plus monotonic time. */
  readonly #epochMs: number;
  /** The members' votes (their offsets from the reference), sorted; refreshed as samples come and age. */
  #votes: number[] = [];

  constructor(options: { readonly wallNowMs?: () => number; readonly monotonicNowMs?: () => number } = {}) {
    this.#wallNowMs = options.wallNowMs ?? Date.now;
    this.#monotonicNowMs = options.monotonicNowMs ?? (() => performance.now());
    this.#epochMs = this.#wallNowMs() - this.#monotonicNowMs();
  }

  /** The cluster's time, whole ms since the epoch (commands carry it, and their checks want integers). */
  now(): number {
    const referenceMs = this.#epochMs + this.#monotonicNowMs();
    const own = this.#wallNowMs() - referenceMs;
    return Math.round(referenceMs + median(this.#votes, own));
  }

  /**
   * One round trip to `member`: when it was sent (monotonic clock), the member's wall clock in
   * its answer, and the round trip's length.
   */
  record(member: NodeId, sentMonotonicMs: number, memberWallMs: number, roundTripMs: number): void {
    if (!Number.isFinite(memberWallMs) || !Number.isFinite(roundTripMs) || roundTripMs < 0)
      throw new Error(`a clock sample needs finite times (member ${member}: ${memberWallMs}, ${roundTripMs} ms)`);
    const fresh: Sample = {
      offsetMs: memberWallMs - (this.#epochMs + sentMonotonicMs + roundTripMs / 2),
      roundTripMs,
      atMs: this.#monotonicNowMs(),
    };
    // Older samples that cannot be right if this one is (the member's clock stepped) go.
    const samples = (this.#samples.get(member) ?? []).filter(
      (s) =>
        Math.abs(s.offsetMs - fresh.offsetMs) <= (s.roundTripMs + fresh.roundTripMs) / 2 + CLOCK_DRIFT_TOLERANCE_MS,
    );
    samples.push(fresh);
    if (samples.length > SAMPLES_KEPT) samples.shift();
    this.#samples.set(member, samples);
    this.#update();
  }

  /** A member that left: its clock no longer counts. */
  forget(member: NodeId): void {
    this.#samples.delete(member);
    this.#update();
  }

  /** What this manager adds to its host clock to read the cluster's time; samples that aged out no longer count. */
  offsetMs(): number {
    this.#update();
    return this.now() - this.#wallNowMs();
  }

  view(): ClockView {
    this.#update();
    const referenceMs = this.#epochMs + this.#monotonicNowMs();
    const own = this.#wallNowMs() - referenceMs;
    const members = [...this.#best()].map(([id, s]) => ({
      id,
      offsetMs: Math.round(s.offsetMs - own),
      errorMs: Math.ceil(s.roundTripMs / 2),
    }));
    return { offsetMs: this.now() - this.#wallNowMs(), members };
  }

  #best(): Map<NodeId, Sample> {
    const oldest = this.#monotonicNowMs() - CLOCK_SAMPLE_TTL_MS;
    const best = new Map<NodeId, Sample>();
    for (const [id, samples] of this.#samples) {
      let pick: Sample | null = null;
      for (const s of samples) if (s.atMs >= oldest && (pick === null || s.roundTripMs <= pick.roundTripMs)) pick = s;
      if (pick !== null) best.set(id, pick);
    }
    return best;
  }

  #update(): void {
    this.#votes = [...this.#best().values()].map((s) => s.offsetMs).sort((a, b) => a - b);
  }
}

/**
 * The median of `votes` (sorted) and `own`; of two middle values, the one nearer `own`. Without
 * allocating: every request that stamps or judges a time asks for it.
 */
function median(votes: readonly number[], own: number): number {
  let pos = 0;
  while (pos < votes.length && votes[pos]! < own) pos++;
  // The merged order: votes[0..pos), own, votes[pos..).
  const at = (i: number): number => (i < pos ? votes[i]! : i === pos ? own : votes[i - 1]!);
  const total = votes.length + 1;
  const mid = total >> 1;
  if (total % 2 === 1) return at(mid);
  const low = at(mid - 1);
  const high = at(mid);
  return Math.abs(low - own) <= Math.abs(high - own) ? low : high;
}
