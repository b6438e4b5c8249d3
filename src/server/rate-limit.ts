import { formatBytes } from '../state/limits.ts';

/**
 * Requests per second one identity may make of one manager. A benchmark with one identity drives
 * about 3,000 requests/s per manager; 5,000 leaves it two thirds of headroom, while a runaway
 * client is held to a rate that a manager serves without starving the others.
 */
export const IDENTITY_REQUESTS_PER_SECOND_DEFAULT = 5_000;
/**
 * Bytes of secret values one identity may write through one manager per minute: 1 GiB (about
 * 17 MiB/s, 2,000 values of the largest size). The benchmark's ~3,000 writes/s of small values is
 * a few MiB/s; a client that writes large values flat out is slowed to a rate at which the log
 * is snapshotted every few seconds (SNAPSHOT_EVERY_BYTES) rather than outrunning it.
 */
export const IDENTITY_WRITE_BYTES_PER_MINUTE_DEFAULT = 1024 * 1024 * 1024;
/** Identities tracked at once; the least recently seen is forgotten beyond (it starts afresh). */
export const RATE_LIMIT_IDENTITIES_MAX = 10_000;

export interface IdentityRateLimitOptions {
  /** 0 turns the request limit off. */
  readonly requestsPerSecond?: number;
  /** 0 turns the write limit off. */
  readonly writeBytesPerMinute?: number;
  readonly identitiesMax?: number;
  /** A monotonic clock in milliseconds (tests inject a fake one). */
  readonly nowMs?: () => number;
}

/**
 * A token bucket: holds up to `capacity` tokens and refills at `perMs`. A cost larger than the
 * whole capacity passes once the bucket is full and leaves it in debt, so a large write is slowed,
 * never refused for good.
 */
class Bucket {
  readonly capacity: number;
  readonly perMs: number;
  #tokens: number;
  #lastMs: number;

  constructor(capacity: number, perMs: number, nowMs: number) {
    this.capacity = capacity;
    this.perMs = perMs;
    this.#tokens = capacity;
    this.#lastMs = nowMs;
  }

  /** Takes `cost` and returns 0, or returns how many ms until it could be taken (nothing taken). */
  take(cost: number, nowMs: number): number {
    this.#tokens = Math.min(this.capacity, this.#tokens + Math.max(0, nowMs - this.#lastMs) * this.perMs);
    this.#lastMs = Math.max(this.#lastMs, nowMs);
    const needed = Math.min(cost, this.capacity);
    if (this.#tokens >= needed) {
      this.#tokens -= cost;
      return 0;
    }
    return Math.ceil((needed - this.#tokens) / this.perMs);
  }
}

interface Buckets {
  requests: Bucket | null;
  writes: Bucket | null;
}

/** A request or write over its rate: what to tell the client, and in how many ms it could pass. */
export interface RateRefusal {
  readonly message: string;
  readonly retryAfterMs: number;
}

/**
 * Per-identity rate limits at one manager's edge: requests per second and bytes written per
 * minute, each a token bucket whose burst is one period's worth. Local to the manager (not
 * replicated): a cluster of N managers takes up to N times the rate from one identity. Memory is
 * bounded: at most `identitiesMax` identities are tracked, the least recently seen dropped.
 */
export class IdentityRateLimiter {
  readonly #requestsPerSecond: number;
  readonly #writeBytesPerMinute: number;
  readonly #identitiesMax: number;
  readonly #nowMs: () => number;
  /** In order of last use, oldest first (a Map keeps insertion order; a use re-inserts). */
  readonly #identities = new Map<string, Buckets>();

  constructor(options: IdentityRateLimitOptions = {}) {
    this.#requestsPerSecond = options.requestsPerSecond ?? IDENTITY_REQUESTS_PER_SECOND_DEFAULT;
    this.#writeBytesPerMinute = options.writeBytesPerMinute ?? IDENTITY_WRITE_BYTES_PER_MINUTE_DEFAULT;
    this.#identitiesMax = options.identitiesMax ?? RATE_LIMIT_IDENTITIES_MAX;
    this.#nowMs = options.nowMs ?? (() => performance.now());
    for (const [name, value] of [
      ['requestsPerSecond', this.#requestsPerSecond],
      ['writeBytesPerMinute', this.#writeBytesPerMinute],
    ] as const) {
      if (!(Number.isFinite(value) && value >= 0))
        throw new TypeError(`rate limit ${name} must be a number of at least 0 (0: no limit): got ${value}`);
    }
    if (!(Number.isSafeInteger(this.#identitiesMax) && this.#identitiesMax >= 1))
      throw new TypeError(`rate limit identitiesMax must be a whole number above 0: got ${this.#identitiesMax}`);
  }

  /** One request by `identity`: null if it may go on, or why not and when to retry (RESOURCE_EXHAUSTED). */
  request(identity: string): RateRefusal | null {
    if (this.#requestsPerSecond === 0) return null;
    const now = this.#nowMs();
    const buckets = this.#buckets(identity);
    buckets.requests ??= new Bucket(this.#requestsPerSecond, this.#requestsPerSecond / 1000, now);
    const waitMs = buckets.requests.take(1, now);
    if (waitMs === 0) return null;
    return {
      message: `identity "${identity}" exceeded ${this.#requestsPerSecond} requests/s on this manager (--identity-requests-per-second); retry in ${waitMs} ms`,
      retryAfterMs: waitMs,
    };
  }

  /** `bytes` of secret values written by `identity`: null if they may go, or why not and when to retry. */
  write(identity: string, bytes: number): RateRefusal | null {
    if (this.#writeBytesPerMinute === 0 || bytes <= 0) return null;
    const now = this.#nowMs();
    const buckets = this.#buckets(identity);
    buckets.writes ??= new Bucket(this.#writeBytesPerMinute, this.#writeBytesPerMinute / 60_000, now);
    const waitMs = buckets.writes.take(bytes, now);
    if (waitMs === 0) return null;
    const wait = waitMs < 1000 ? `${waitMs} ms` : `${Math.ceil(waitMs / 1000)} s`;
    return {
      message: `identity "${identity}" exceeded ${formatBytes(this.#writeBytesPerMinute)} of writes per minute on this manager (--identity-write-bytes-per-minute); retry in ${wait}`,
      retryAfterMs: waitMs,
    };
  }

  /** Identities tracked now (at most identitiesMax). */
  get tracked(): number {
    return this.#identities.size;
  }

  #buckets(identity: string): Buckets {
    let buckets = this.#identities.get(identity);
    if (buckets === undefined) {
      buckets = { requests: null, writes: null };
      if (this.#identities.size >= this.#identitiesMax) this.#identities.delete(this.#identities.keys().next().value!);
    } else {
      this.#identities.delete(identity);
    }
    this.#identities.set(identity, buckets);
    return buckets;
  }
}
