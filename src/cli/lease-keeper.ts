import { ClientError, type LeaseReply } from '../client/client.ts';
import { RENEW_AT_FRACTION, RENEW_RETRY_MS } from './login-session.ts';
import { printable } from './printable.ts';

/** The calls the keeper makes (a CofferClient has them). */
export interface LeaseApi {
  getCredentials(db: string, role: string, ttlSeconds?: number): Promise<IssuedCredentials>;
  renewLease(leaseId: string, incrementSeconds?: number): Promise<LeaseReply>;
  revokeLeases(target: { leaseId: string }): Promise<{ leaseIds: string[]; revoked: boolean }>;
}

export interface IssuedCredentials {
  readonly username: string;
  readonly password: string;
  readonly leaseId: string;
  readonly ttlSeconds: number;
  readonly expiresAtMs: number;
}

/** Time as the keeper reads it: injected, so that tests decide when timers fire. */
export interface KeeperClock {
  /** A monotonic clock (performance.now()): the cluster's timestamps are never compared with it. */
  nowMs(): number;
  schedule(run: () => void, delayMs: number): { cancel(): void };
}

export const SYSTEM_CLOCK: KeeperClock = {
  nowMs: () => performance.now(),
  schedule: (run, delayMs) => {
    const timer = setTimeout(run, delayMs);
    // The child process keeps `coffer run` alive, not a renewal waiting for its turn.
    timer.unref();
    return { cancel: () => clearTimeout(timer) };
  },
};

export interface LeaseKeeperOptions {
  /** The client to call now (a login's renewed certificate makes a new one). */
  readonly api: () => LeaseApi;
  /** One line for the user (stderr), without its newline. */
  readonly report: (line: string) => void;
  readonly clock?: KeeperClock;
}

export interface RevokeOutcome {
  readonly revoked: readonly string[];
  /** Marked for revocation, but the leader has not dropped the user yet (the database did not answer). */
  readonly due: readonly string[];
  readonly failed: readonly string[];
}

/** The first pause after a failed renewal; then 2 s, 4 s ... up to RENEW_RETRY_MS. */
const RETRY_FIRST_MS = 1_000;
/** Near a lease's end, retries come at half the time left, but no closer than this. */
const RETRY_CLOSEST_MS = 250;
/** Tries per lease at revocation, this far apart times the attempt. */
const REVOKE_ATTEMPTS = 3;
const REVOKE_PAUSE_MS = 500;
/** Refusals that renewing again cannot change. */
const PERMANENT_REFUSALS: ReadonlySet<string> = new Set([
  'LEASE_NOT_FOUND',
  'POLICY_DENIED',
  'DB_ROLE_NOT_FOUND',
  'IDENTITY_REVOKED',
  'CERTIFICATE_REVOKED',
]);
/**
 * Refusals that say the cluster no longer holds the lease: not found, or (for its owner, who needs
 * no policy to renew or revoke its own lease) denied, which is what an owner is told once the
 * lease is gone, since the cluster then no longer knows it as the owner's.
 */
const GONE_REFUSALS: ReadonlySet<string> = new Set(['LEASE_NOT_FOUND', 'POLICY_DENIED']);

interface HeldLease {
  readonly leaseId: string;
  /** What the user knows it by (the environment prefix). */
  readonly label: string;
  /** The role's default ttl as the lease was given it: a renewal asks for that (increment 0) and gets no more. */
  readonly ttlMs: number;
  /** When it ends by the monotonic clock, counted from before the request (so never later than the cluster's end). */
  endMs: number;
  /** When it ends by the cluster's clock: compared only with the cluster's other timestamps, and printed. */
  expiresAtMs: number;
  timer: { cancel(): void } | null;
  renewing: Promise<void> | null;
  failures: number;
  /** No more renewals: at its maximum, refused for good, or ended. */
  settled: boolean;
  /** The cluster no longer holds it: nothing to revoke. */
  gone: boolean;
}

const iso = (ms: number): string => new Date(ms).toISOString();
const seconds = (ms: number): string => `${(Math.max(0, ms) / 1000).toFixed(1)} s`;

function errorText(error: unknown): string {
  if (error instanceof ClientError)
    return printable(error.reason === '' ? error.message : `${error.reason}: ${error.message}`);
  return printable(error instanceof Error ? error.message : String(error));
}

const reasonOf = (error: unknown): string => (error instanceof ClientError ? error.reason : '');

/**
 * The leases `coffer run --creds` holds for its child: each renewed at two thirds of the time it
 * has left (the role's default increment; the cluster caps it at the lease's maximum), until a
 * renewal no longer moves its end; failures retried with growing pauses while time remains; and
 * all revoked when the child exits. Time is measured on a monotonic clock from before each
 * request: the cluster's timestamps are compared only with each other.
 */
export class LeaseKeeper {
  readonly #options: LeaseKeeperOptions;
  readonly #clock: KeeperClock;
  readonly #leases: HeldLease[] = [];
  #started = false;
  #stopped = false;

  constructor(options: LeaseKeeperOptions) {
    this.#options = options;
    this.#clock = options.clock ?? SYSTEM_CLOCK;
  }

  /** The ids of the leases held (not revoked yet). */
  get leaseIds(): string[] {
    return this.#leases.map((l) => l.leaseId);
  }

  /** New credentials of DB/ROLE under a lease the keeper then holds (renewed once started, revoked by revokeAll). */
  async acquire(label: string, db: string, role: string): Promise<IssuedCredentials> {
    const askedMs = this.#clock.nowMs();
    const issued = await this.#options.api().getCredentials(db, role, 0);
    // A static role's password has no lease: nothing to renew or revoke. It changes at the role's
    // next rotation (ttl_seconds from now), which a long-running child should know.
    if (issued.leaseId === '') {
      this.#options.report(
        `${printable(label)}: static role ${printable(db)}/${printable(role)} (no lease); its password is rotated at ${iso(issued.expiresAtMs)}`,
      );
      return issued;
    }
    const lease: HeldLease = {
      leaseId: issued.leaseId,
      label,
      ttlMs: issued.ttlSeconds * 1000,
      endMs: askedMs + issued.ttlSeconds * 1000,
      expiresAtMs: issued.expiresAtMs,
      timer: null,
      renewing: null,
      failures: 0,
      settled: false,
      gone: false,
    };
    this.#leases.push(lease);
    if (this.#started) this.#scheduleRenewal(lease);
    return issued;
  }

  /** Starts renewing every lease held (and those acquired later). */
  start(): void {
    if (this.#started || this.#stopped) return;
    this.#started = true;
    for (const lease of this.#leases) this.#scheduleRenewal(lease);
  }

  /** No more renewals (one under way finishes). */
  stop(): void {
    this.#stopped = true;
    for (const lease of this.#leases) {
      lease.timer?.cancel();
      lease.timer = null;
    }
  }

  /**
   * Stops renewing, then revokes every lease held, each tried a few times. Reports those it could
   * not revoke (the cluster revokes them when they end) and those the leader has yet to drop.
   */
  async revokeAll(): Promise<RevokeOutcome> {
    this.stop();
    // A renewal under way would race the revocation: let it land first (its call has a deadline).
    await Promise.all(this.#leases.map((l) => l.renewing));
    const leases = this.#leases.splice(0);
    const results = await Promise.all(
      leases.map(async (lease) => ({ lease, result: lease.gone ? 'revoked' : await this.#revoke(lease) })),
    );
    const outcome = { revoked: [] as string[], due: [] as string[], failed: [] as string[] };
    for (const { lease, result } of results) {
      if (result === 'revoked') outcome.revoked.push(lease.leaseId);
      else if (result === 'due') {
        outcome.due.push(lease.leaseId);
        this.#options.report(
          `lease ${printable(lease.leaseId)} (${lease.label}_*) is revoked, but its database has not confirmed yet: the leader drops the user once it answers`,
        );
      } else {
        outcome.failed.push(lease.leaseId);
        this.#options.report(
          `could not revoke lease ${printable(lease.leaseId)} (${lease.label}_*): ${result.error}; the cluster revokes it when it ends, at ${iso(lease.expiresAtMs)}`,
        );
      }
    }
    return outcome;
  }

  async #revoke(lease: HeldLease): Promise<'revoked' | 'due' | { error: string }> {
    for (let attempt = 1; ; attempt++) {
      try {
        const reply = await this.#options.api().revokeLeases({ leaseId: lease.leaseId });
        return reply.revoked ? 'revoked' : 'due';
      } catch (error) {
        if (GONE_REFUSALS.has(reasonOf(error))) return 'revoked';
        if (attempt >= REVOKE_ATTEMPTS || PERMANENT_REFUSALS.has(reasonOf(error))) return { error: errorText(error) };
        await this.#sleep(REVOKE_PAUSE_MS * attempt);
      }
    }
  }

  #sleep(delayMs: number): Promise<void> {
    return new Promise((resolve) => this.#clock.schedule(resolve, delayMs));
  }

  /** The next renewal at two thirds of the time the lease has left. */
  #scheduleRenewal(lease: HeldLease): void {
    const leftMs = lease.endMs - this.#clock.nowMs();
    this.#at(lease, Math.max(0, leftMs * RENEW_AT_FRACTION));
  }

  #at(lease: HeldLease, delayMs: number): void {
    if (this.#stopped || lease.settled) return;
    lease.timer?.cancel();
    lease.timer = this.#clock.schedule(() => {
      lease.timer = null;
      lease.renewing = this.#renew(lease).finally(() => {
        lease.renewing = null;
      });
    }, delayMs);
  }

  async #renew(lease: HeldLease): Promise<void> {
    const askedMs = this.#clock.nowMs();
    let reply: LeaseReply;
    try {
      reply = await this.#options.api().renewLease(lease.leaseId, 0);
    } catch (error) {
      if (!this.#stopped) this.#renewFailed(lease, error);
      return;
    }
    lease.failures = 0;
    // How far the cluster moved the end (its clock against itself), and at most the increment
    // from before the request (the cluster's "now" came after it).
    const movedMs = reply.expiresAtMs - lease.expiresAtMs;
    lease.endMs = Math.min(lease.endMs + movedMs, askedMs + lease.ttlMs);
    lease.expiresAtMs = reply.expiresAtMs;
    if (this.#stopped) return;
    if (movedMs <= 0 || reply.expiresAtMs >= reply.maxExpiresAtMs) {
      lease.settled = true;
      this.#options.report(
        `lease ${printable(lease.leaseId)} (${lease.label}_*) cannot be renewed past its maximum: the credentials end at ${iso(reply.expiresAtMs)}, in ${seconds(lease.endMs - this.#clock.nowMs())}; the command keeps running`,
      );
      return;
    }
    this.#scheduleRenewal(lease);
  }

  #renewFailed(lease: HeldLease, error: unknown): void {
    const reason = reasonOf(error);
    if (PERMANENT_REFUSALS.has(reason)) {
      lease.settled = true;
      lease.gone = GONE_REFUSALS.has(reason);
      this.#options.report(
        `renewing lease ${printable(lease.leaseId)} (${lease.label}_*) was refused (${errorText(error)})${lease.gone ? ': it was revoked' : ''}; not trying again, the command keeps running`,
      );
      return;
    }
    const leftMs = lease.endMs - this.#clock.nowMs();
    if (leftMs <= 0) {
      lease.settled = true;
      this.#options.report(
        `lease ${printable(lease.leaseId)} (${lease.label}_*) ended before it could be renewed (${errorText(error)}): its credentials no longer work`,
      );
      return;
    }
    lease.failures++;
    const backoffMs = Math.min(RENEW_RETRY_MS, RETRY_FIRST_MS * 2 ** (lease.failures - 1));
    const delayMs = Math.min(backoffMs, Math.max(RETRY_CLOSEST_MS, leftMs / 2));
    this.#options.report(
      `renewing lease ${printable(lease.leaseId)} (${lease.label}_*) failed (${errorText(error)}); it has ${seconds(leftMs)} left, trying again in ${seconds(delayMs)}`,
    );
    this.#at(lease, delayMs);
  }
}
