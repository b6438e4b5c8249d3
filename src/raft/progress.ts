import { assert } from '../util/assert.ts';
import type { ProgressState, ProgressStatus } from './types.ts';

/**
 * The last indexes of append messages in flight to one follower, oldest first: a bounded window,
 * so a leader never has more than `capacity` appends outstanding to a follower (flow control).
 */
export class Inflights {
  readonly #capacity: number;
  #indexes: number[] = [];

  constructor(capacity: number) {
    this.#capacity = capacity;
  }

  get count(): number {
    return this.#indexes.length;
  }

  full(): boolean {
    return this.#indexes.length >= this.#capacity;
  }

  add(lastIndex: number): void {
    assert(!this.full(), 'inflight window overflow');
    const last = this.#indexes[this.#indexes.length - 1];
    assert(last === undefined || lastIndex > last, 'inflight indexes must increase');
    this.#indexes.push(lastIndex);
  }

  /** Frees every append whose entries are all acknowledged (last index <= `index`). */
  freeUpTo(index: number): void {
    let k = 0;
    while (k < this.#indexes.length && this.#indexes[k]! <= index) k++;
    if (k > 0) this.#indexes.splice(0, k);
  }

  freeFirstOne(): void {
    this.#indexes.shift();
  }

  reset(): void {
    this.#indexes = [];
  }
}

/**
 * What the leader knows of one follower's log (§5.3) and how it is feeding it:
 * - probe: one append at a time until `next` is found (after a rejection or a restart);
 * - replicate: appends are pipelined optimistically, up to the inflight window;
 * - snapshot: a snapshot is on its way; appends wait for it.
 */
export class Progress {
  match = 0;
  next: number;
  state: ProgressState = 'probe';
  /** In probe state: an append is out and we wait for its answer (or a heartbeat response). */
  probeSent = false;
  /** In snapshot state: the index of the snapshot being sent. */
  pendingSnapshot = 0;
  /** Heard from within the current check-quorum period. */
  recentActive = false;
  /** Heard from within the previous check-quorum period (so "healthy" survives the reset). */
  activeLastPeriod = false;
  learner: boolean;
  readonly inflights: Inflights;

  constructor(next: number, learner: boolean, inflightsMax: number) {
    this.next = next;
    this.learner = learner;
    this.inflights = new Inflights(inflightsMax);
  }

  becomeProbe(): void {
    // After a snapshot, the follower has at least the snapshot's index.
    this.next = this.state === 'snapshot' ? Math.max(this.match + 1, this.pendingSnapshot + 1) : this.match + 1;
    this.state = 'probe';
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.inflights.reset();
  }

  becomeReplicate(): void {
    this.next = this.match + 1;
    this.state = 'replicate';
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.inflights.reset();
  }

  becomeSnapshot(snapshotIndex: number): void {
    this.state = 'snapshot';
    this.probeSent = false;
    this.pendingSnapshot = snapshotIndex;
    this.inflights.reset();
  }

  /** An acknowledgement up to `index`; false if it tells us nothing new (stale or duplicate). */
  maybeUpdate(index: number): boolean {
    let updated = false;
    if (this.match < index) {
      this.match = index;
      this.probeSent = false;
      updated = true;
    }
    this.next = Math.max(this.next, index + 1);
    return updated;
  }

  /** An append up to `lastIndex` went out in replicate state. */
  sentEntries(lastIndex: number): void {
    if (this.state === 'replicate') {
      this.next = lastIndex + 1;
      this.inflights.add(lastIndex);
    } else if (this.state === 'probe') {
      this.probeSent = true;
    }
  }

  /**
   * A rejection of the append at `rejected`; `hintIndex` is the highest index that may still
   * match. Returns false when the rejection is stale (answers an append we have moved past).
   */
  maybeDecreaseTo(rejected: number, hintIndex: number): boolean {
    if (this.state === 'replicate') {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, hintIndex + 1), this.match + 1);
    this.probeSent = false;
    return true;
  }

  isPaused(): boolean {
    switch (this.state) {
      case 'probe':
        return this.probeSent;
      case 'replicate':
        return this.inflights.full();
      case 'snapshot':
        return true;
    }
  }

  status(): ProgressStatus {
    return {
      match: this.match,
      next: this.next,
      state: this.state,
      learner: this.learner,
      recentActive: this.recentActive || this.activeLastPeriod,
      inflight: this.inflights.count,
      pendingSnapshot: this.state === 'snapshot' ? this.pendingSnapshot : 0,
    };
  }
}

/** The largest value that a majority of `values` has reached (the quorum index). */
export function quorumValue(values: readonly number[]): number {
  assert(values.length > 0, 'a quorum needs at least one voter');
  const sorted = [...values].sort((a, b) => b - a);
  return sorted[Math.floor(values.length / 2)]!;
}

export function majority(voterCount: number): number {
  return Math.floor(voterCount / 2) + 1;
}
