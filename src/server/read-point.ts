import { ReplicaError } from '../replica/replica.ts';
import type { ReadRefusalReason } from '../raft/index.ts';

/**
 * How long a linearizable read waits for a leader to confirm it: a manager that has just started,
 * or whose cluster is electing, knows no leader (or one that has not committed an entry of its
 * term) for a moment. The read is asked again until one answers, as etcd holds a request through
 * an election, instead of failing at once with UNAVAILABLE and making every client retry. Past
 * this it fails as before (UNAVAILABLE, READ_REFUSED). A manager that has known no leader for
 * longer than this (cut off from the majority, or removed) does not wait at all: its clients are
 * told at once, and move on to another manager.
 */
export const READ_LEADER_WAIT_MS = 3000;
/** How often a read refused for want of a leader is asked again meanwhile. */
export const READ_LEADER_RETRY_MS = 10;

/** The refusals that a leader being elected or heard clears (not a queue that is full). */
const WAITED_OUT: ReadonlySet<ReadRefusalReason> = new Set(['no-leader', 'leader-not-ready', 'leadership-lost']);

/**
 * A sleep that every caller within its time shares: reads waiting for a leader wake in one turn
 * of the event loop, so their askings go out as one read index request (a replica batches the
 * reads of a turn), not one per read every few milliseconds while no leader is known.
 */
export function sharedSleep(): (ms: number) => Promise<void> {
  let pending: Promise<void> | null = null;
  return (ms) =>
    (pending ??= new Promise<void>((resolve) =>
      setTimeout(() => {
        pending = null;
        resolve();
      }, ms),
    ));
}

const sleepShared = sharedSleep();

export interface ReadWaitOptions {
  /** Whether a refused read may wait now (false: a manager that has known no leader for long). */
  readonly waitable?: () => boolean;
  readonly waitMs?: number;
  readonly retryMs?: number;
  readonly nowMs?: () => number;
  readonly sleep?: (ms: number) => Promise<void>;
}

/** `read()` (a linearizable read point), asked again while it is refused for want of a leader, up to `waitMs`. */
export async function readOnceLed(read: () => Promise<number>, options: ReadWaitOptions = {}): Promise<number> {
  const waitMs = options.waitMs ?? READ_LEADER_WAIT_MS;
  const retryMs = options.retryMs ?? READ_LEADER_RETRY_MS;
  const nowMs = options.nowMs ?? (() => performance.now());
  const sleep = options.sleep ?? sleepShared;
  const waitable = options.waitable ?? (() => true);
  const startMs = nowMs();
  const deadline = startMs + waitMs;
  let waited = false;
  for (;;) {
    try {
      return await read();
    } catch (error) {
      if (!(error instanceof ReplicaError && error.readRefusal !== null && WAITED_OUT.has(error.readRefusal)))
        throw error;
      if (!waited && !waitable()) throw error;
      if (nowMs() + retryMs > deadline) {
        if (!waited) throw error;
        const waitedMs = Math.round(nowMs() - startMs);
        throw new ReplicaError(error.code, `${error.message} (after ${waitedMs} ms of waiting)`, error.readRefusal);
      }
      waited = true;
      await sleep(retryMs);
    }
  }
}
