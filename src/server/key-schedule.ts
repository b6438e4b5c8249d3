import { ProposalRefused } from '../manager/errors.ts';
import type { KeyOperation, Manager } from '../manager/manager.ts';
import type { KeyOperationDone } from '../manager/proposer.ts';
import type { AppliedResult } from '../state/applied-state.ts';
import type { ClusterState } from '../state/cluster-state.ts';
import type { Logger } from '../util/logger.ts';

/** The pause after a scheduled rotation or rewrap failed; it doubles with each failure in a row. */
export const KEY_SCHEDULE_RETRY_FIRST_MS = 10_000;
/** The longest pause between tries of a scheduled rotation or rewrap that keeps failing. */
export const KEY_SCHEDULE_RETRY_MAX_MS = 10 * 60_000;

/** The pause after the linearizable read before a decision failed (a leader not yet ready to serve reads). */
const KEY_SCHEDULE_READ_RETRY_MS = 1_000;

/**
 * Where a scheduled rotation stops in a test, to stand for its leader's crash (the promise never
 * settles, and the test stops the manager): after the rotation is applied, before the rewrap.
 */
export type KeyScheduleStep = 'rotated';

/** What the schedule decides by: the schedule and the keyring, both replicated, and the cluster's time. */
export interface KeyScheduleFacts {
  /** The schedule's period (cluster state), or null: no schedule. */
  readonly periodMs: number | null;
  /** The cluster's time (cluster-clock.ts). */
  readonly nowMs: number;
  /** The active data key's term (0: the keyring has none yet). */
  readonly activeTerm: number;
  /** When the active term was made, by the clock of the manager that proposed its rotation. */
  readonly activeCreatedAtMs: number;
  /** The term that was active when the last rewrap applied (0: never). */
  readonly lastRewrapTerm: number;
  /** Whether a term older than the active one is still live (not destroyed): data may still be sealed under it. */
  readonly olderTermsLive: boolean;
}

/**
 * What the schedule does now, from replicated facts only, so any leader decides the same: a
 * rotation that no rewrap followed yet is rewrapped first (a leader that rotated and stopped
 * before its rewrap; a manual `coffer key rotate`; the automatic rotation near a key's use
 * limit); else, once the active term is `periodMs` old, a rotation. The rotation makes a new
 * active term, created now, so the next one is due a whole period later, whichever leader looks.
 */
export function keyScheduleAction(facts: KeyScheduleFacts): 'rotate' | 'rewrap' | null {
  if (facts.periodMs === null || facts.activeTerm === 0) return null;
  if (facts.lastRewrapTerm < facts.activeTerm && facts.olderTermsLive) return 'rewrap';
  return facts.nowMs - facts.activeCreatedAtMs >= facts.periodMs ? 'rotate' : null;
}

/** When the next scheduled rotation is due (it may be past: due now), or 0 without a schedule or a keyring. */
export function nextScheduledRotationAtMs(periodMs: number | null, activeCreatedAtMs: number): number {
  return periodMs === null || activeCreatedAtMs === 0 ? 0 : activeCreatedAtMs + periodMs;
}

export interface KeyScheduleOptions {
  /** Where the schedule is replicated. */
  readonly cluster: Pick<ClusterState, 'keySchedulePeriodMs'>;
  readonly manager: Pick<Manager<AppliedResult>, 'raftStatus' | 'status' | 'linearizableRead'>;
  /** The write path of keyring operations (Proposer.keyOperation), as Keys.Rotate and Keys.Rewrap use it. */
  keyOperation(operation: KeyOperation): Promise<KeyOperationDone>;
  /** The cluster's wall-clock time (cluster-clock.ts): the clock rotations are stamped with too. */
  readonly now: () => number;
  readonly log: Logger;
  /** Monotonic time for the pause between failed tries (default performance.now). */
  readonly monotonicNowMs?: () => number;
  /** Tests only: where a scheduled rotation stops, standing for a crash. */
  readonly failpoint?: (step: KeyScheduleStep) => Promise<void>;
}

/**
 * The data key's scheduled rotation, a leader duty (`coffer key schedule --every 30d`): when the
 * active term is older than the schedule's period, the leader rotates the data key, then rewraps,
 * through the proposer as the Keys RPCs do; the leader's background re-seal then moves the
 * records to the new term. The decision reads only replicated state (keyScheduleAction), after a
 * linearizable read, so a new leader sees whatever its predecessor committed: one rotation per
 * period, and a rotation cut off before its rewrap is rewrapped by the next leader. A failure is
 * logged and tried again after a pause (KEY_SCHEDULE_RETRY_FIRST_MS, doubling to
 * KEY_SCHEDULE_RETRY_MAX_MS).
 */
export class KeySchedule {
  readonly #o: KeyScheduleOptions;
  readonly #monotonicNowMs: () => number;
  /** Failures in a row, and when the next try may come (monotonic ms). */
  #failures = 0;
  #retryAtMs = Number.NEGATIVE_INFINITY;

  constructor(options: KeyScheduleOptions) {
    this.#o = options;
    this.#monotonicNowMs = options.monotonicNowMs ?? (() => performance.now());
  }

  /** Rotates and rewraps if due, on the leader; never throws (a failure is logged and tried again later). */
  async run(): Promise<void> {
    if (!this.#leads() || this.#monotonicNowMs() < this.#retryAtMs) return;
    // Cheap first: most runs find nothing due in what this manager has applied.
    if (this.#action() === null) return;
    try {
      // Everything committed before (a previous leader's rotation or rewrap, say) is applied here now.
      await this.#o.manager.linearizableRead();
    } catch (error) {
      // A leader just elected serves reads once an entry of its term has committed: soon.
      this.#retryAtMs = this.#monotonicNowMs() + KEY_SCHEDULE_READ_RETRY_MS;
      this.#o.log.debug(
        { event: 'key-schedule-read-retry', reason: error instanceof Error ? error.message : String(error) },
        'the scheduled key rotation waits for a linearizable read',
      );
      return;
    }
    try {
      if (!this.#leads()) return;
      if (this.#action() === 'rotate') {
        await this.#rotate();
        await this.#o.failpoint?.('rotated');
      }
      if (this.#leads() && this.#action() === 'rewrap') await this.#rewrap();
      this.#failures = 0;
      this.#retryAtMs = Number.NEGATIVE_INFINITY;
    } catch (error) {
      this.#failures++;
      const pauseMs = Math.min(KEY_SCHEDULE_RETRY_MAX_MS, KEY_SCHEDULE_RETRY_FIRST_MS * 2 ** (this.#failures - 1));
      this.#retryAtMs = this.#monotonicNowMs() + pauseMs;
      // The message of a refusal (no key material is ever in one), never the error object whole.
      this.#o.log.warn(
        {
          event: 'key-schedule-failed',
          failures: this.#failures,
          retryInMs: pauseMs,
          code: error instanceof ProposalRefused ? error.code : undefined,
          reason: error instanceof Error ? error.message : String(error),
        },
        `the scheduled rotation of the data key (or its rewrap) failed (${this.#failures} times in a row); trying again in ${Math.round(pauseMs / 1000)} s`,
      );
    }
  }

  async #rotate(): Promise<void> {
    const fromTerm = this.#keys()?.activeTerm ?? 0;
    try {
      await this.#o.keyOperation({ op: 'rotate' });
    } catch (error) {
      // Another rotation of the same term applied first (the one near a key's use limit): the
      // keyring moved on all the same, and the rewrap below follows it.
      if (error instanceof ProposalRefused && error.code === 'NOT_CHANGED') return;
      throw error;
    }
    const term = this.#keys()?.activeTerm ?? 0;
    this.#o.log.info(
      { event: 'key-rotated-on-schedule', term, previousTerm: fromTerm, periodMs: this.#o.cluster.keySchedulePeriodMs },
      `rotated the data key on schedule: keyring term ${term} is active; rewrapping next`,
    );
  }

  async #rewrap(): Promise<void> {
    await this.#o.keyOperation({ op: 'rewrap' });
    const term = this.#keys()?.activeTerm ?? 0;
    this.#o.log.info(
      { event: 'key-rewrapped-on-schedule', term },
      `rewrapped under keyring term ${term} after the scheduled rotation; records move to it in the background`,
    );
  }

  #leads(): boolean {
    return this.#o.manager.raftStatus()?.role === 'leader';
  }

  #keys(): ReturnType<KeyScheduleOptions['manager']['status']>['keys'] {
    return this.#o.manager.status().keys;
  }

  /** What is due, from what this manager has applied. */
  #action(): 'rotate' | 'rewrap' | null {
    const keys = this.#keys();
    if (keys === null) return null;
    return keyScheduleAction({
      periodMs: this.#o.cluster.keySchedulePeriodMs,
      nowMs: this.#o.now(),
      activeTerm: keys.activeTerm,
      activeCreatedAtMs: keys.activeCreatedAtMs,
      lastRewrapTerm: keys.lastRewrap?.term ?? 0,
      olderTermsLive: keys.terms.some((t) => t.term < keys.activeTerm && !t.destroyed),
    });
  }
}
