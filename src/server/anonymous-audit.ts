import type { AuditEvent } from '../audit/audit-log.ts';

/**
 * Requests from callers without a certificate are audited one by one up to this many per second
 * on a manager; beyond it they are counted, and one summary record per second says how many.
 * Anyone who can reach the port can send them, so their cost on disk must not grow with the
 * attacker's rate: at most this many small records (and one summary) a second.
 */
export const ANONYMOUS_RECORDS_PER_SECOND_MAX = 20;
/** The caller's address as it is recorded (grpc-js's "ipv4:127.0.0.1:41234" is far shorter). */
export const SOURCE_CHARS_MAX = 64;

type Append = (event: AuditEvent) => Promise<unknown>;

/**
 * The audit records of anonymous requests (no certificate: refused ones, and the Join service's
 * own). Each is small and bounded: the method, the source address and the outcome, never a byte
 * of the request.
 */
export class AnonymousAudit {
  readonly #append: Append;
  readonly #nowMs: () => number;
  #windowStartMs = -Infinity;
  #recordedInWindow = 0;
  #suppressed = 0;
  #summaryTimer: NodeJS.Timeout | null = null;
  /** Requests not recorded one by one, since the start (for metrics and tests). */
  suppressedTotal = 0;

  constructor(append: Append, nowMs: () => number = Date.now) {
    this.#append = append;
    this.#nowMs = nowMs;
  }

  /**
   * Audits one anonymous request. Resolves once its record is durable, or at once when it was
   * only counted (the summary follows within a second). Rejects if the record cannot be written.
   */
  record(event: { method: string; source: string; outcome: AuditEvent['outcome']; code: string }): Promise<void> {
    const now = this.#nowMs();
    if (now - this.#windowStartMs >= 1000) {
      this.#windowStartMs = now;
      this.#recordedInWindow = 0;
    }
    if (this.#recordedInWindow < ANONYMOUS_RECORDS_PER_SECOND_MAX) {
      this.#recordedInWindow++;
      return this.#append({
        identity: '',
        role: '',
        method: event.method,
        target: `from ${boundedSource(event.source)}`,
        outcome: event.outcome,
        code: event.code,
      }).then(() => undefined);
    }
    this.#suppressed++;
    this.suppressedTotal++;
    this.#summaryTimer ??= setTimeout(() => this.#summarize(), Math.max(0, this.#windowStartMs + 1000 - now));
    this.#summaryTimer.unref();
    return Promise.resolve();
  }

  #summarize(): void {
    this.#summaryTimer = null;
    const count = this.#suppressed;
    this.#suppressed = 0;
    if (count === 0) return;
    // A failure here breaks the audit log like any other, and requests are refused until it can write.
    void this.#append({
      identity: '',
      role: '',
      method: 'anonymous',
      target: `${count} more requests without a certificate in one second, not recorded one by one`,
      outcome: 'denied',
      code: 'UNAUTHENTICATED',
    }).catch(() => undefined);
  }

  /** Writes a pending summary now (shutdown). */
  flush(): void {
    if (this.#summaryTimer === null) return;
    clearTimeout(this.#summaryTimer);
    this.#summarize();
  }
}

/** A source address as recorded: printable ASCII only, at most SOURCE_CHARS_MAX characters. */
export function boundedSource(source: string): string {
  const printable = source.replace(/[^\x21-\x7e]/g, '?');
  return printable.length <= SOURCE_CHARS_MAX ? printable : `${printable.slice(0, SOURCE_CHARS_MAX)}...`;
}
