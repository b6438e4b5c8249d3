/**
 * The lease run's clients and watchers (leases-run.ts starts them): clients that get credentials,
 * renew some, revoke some by id, an operator that revokes by prefix now and then, logins tried
 * with the credentials (right after issuing, mid-life, after a renewal, after a revocation done),
 * and two pollers: PostgreSQL's `v-%` users (pg_roles, as the harness's superuser over loopback)
 * and Leases.List, once a second each. Everything goes to `events` (leases.ts), with wall-clock
 * times (ms since the epoch), the unit of the lease ends the servers state.
 */
import { status as grpcStatus } from '@grpc/grpc-js';
import { ClientError, CofferClient } from '../../src/client/client.ts';
import type { Random } from '../../src/util/prng.ts';
import type { TestPostgres } from '../db/support/postgres.ts';
import type { LeaseEvent, LeaseRole, ListedLease, LoginEvent, Outcome } from './leases.ts';
import type { ProcessCluster } from './process-cluster.ts';

/** A credential request's deadline: the user is made in the database before the answer. */
const ISSUE_DEADLINE_MS = 5000;
/** Leases.Revoke waits up to 10 s for the leader (REVOKE_WAIT_MS), so its deadline is longer. */
const REVOKE_DEADLINE_MS = 15_000;
/** Errors after which a request certainly was not carried out (it never reached a leader or was refused). */
const NOT_DONE =
  /No connection established|no leader is known|READ_REFUSED|is locked|refused until it can|LEASE_NOT_FOUND|DB_ROLE_NOT_FOUND|INVALID_ARGUMENT|PERMISSION_DENIED/;

interface Held {
  readonly leaseId: string;
  readonly username: string;
  readonly password: string;
  readonly role: string;
  /** The last acknowledged end. */
  endMs: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function describeError(error: unknown): string {
  if (error instanceof ClientError)
    return `${grpcStatus[error.code] ?? error.code}${error.reason === '' ? '' : ` ${error.reason}`}: ${error.message.slice(0, 160)}`;
  return (error instanceof Error ? error.message : String(error)).slice(0, 200);
}

function outcomeOf(error: unknown): Outcome {
  return NOT_DONE.test(describeError(error)) ? 'fail' : 'info';
}

export class LeaseWorkload {
  readonly events: LeaseEvent[] = [];
  readonly #c: ProcessCluster;
  readonly #pg: TestPostgres;
  readonly #db: string;
  readonly #roles: readonly LeaseRole[];
  readonly #random: Random;
  readonly #clients: number;
  /** Per manager: a client for quick calls, one for revocations (which wait for the leader). */
  readonly #quick: CofferClient[];
  readonly #slow: CofferClient[];
  /** Over every manager, with a short deadline: the Leases.List poller's. */
  readonly #roaming: CofferClient;
  /** Over every manager: the operator's (a manager that is down is skipped). */
  readonly #operatorClient: CofferClient;
  readonly #held = new Map<string, Held>();
  readonly #timers = new Set<NodeJS.Timeout>();
  readonly #probes = new Set<Promise<void>>();
  /** Credential requests under way: their role and when they were sent. */
  readonly #asking = new Set<{ readonly role: string; readonly start: number }>();
  #running = false;
  #polling = false;
  #loops: Promise<void>[] = [];
  #pollers: Promise<void>[] = [];

  constructor(options: {
    cluster: ProcessCluster;
    pg: TestPostgres;
    db: string;
    roles: readonly LeaseRole[];
    clients: number;
    random: Random;
  }) {
    this.#c = options.cluster;
    this.#pg = options.pg;
    this.#db = options.db;
    this.#roles = options.roles;
    this.#random = options.random;
    this.#clients = options.clients;
    this.#quick = this.#c.managers.map((m) => this.#c.client(m, ISSUE_DEADLINE_MS));
    this.#slow = this.#c.managers.map((m) => this.#c.client(m, REVOKE_DEADLINE_MS));
    this.#roaming = new CofferClient({
      ...this.#c.adminPem(),
      addresses: this.#c.managers.map((m) => m.address),
      deadlineMs: 2500,
    });
    this.#operatorClient = new CofferClient({
      ...this.#c.adminPem(),
      addresses: this.#c.managers.map((m) => m.address),
      deadlineMs: REVOKE_DEADLINE_MS,
    });
  }

  /** The pollers, then the clients and the operator. */
  start(): void {
    this.startPolling();
    this.#running = true;
    for (let k = 0; k < this.#clients; k++) this.#loops.push(this.#client(k));
    this.#loops.push(this.#operator());
  }

  startPolling(): void {
    if (this.#polling) return;
    this.#polling = true;
    this.#pollers.push(this.#pollRoles(), this.#pollList());
  }

  /** Stops the clients and the operator (the pollers go on): waits for their requests and logins. */
  async stopClients(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#loops);
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers.clear();
    await Promise.all(this.#probes);
  }

  async stopPolling(): Promise<void> {
    this.#polling = false;
    await Promise.all(this.#pollers);
  }

  close(): void {
    for (const client of [...this.#quick, ...this.#slow, this.#roaming, this.#operatorClient]) client.close();
  }

  /** Users named v-% in PostgreSQL now, as the harness's superuser over loopback. */
  async users(): Promise<string[]> {
    const result = await this.#pg.query<{ rolname: string }>(
      "SELECT rolname FROM pg_roles WHERE rolname LIKE 'v-%' ORDER BY rolname",
    );
    return result.rows.map((row) => row.rolname);
  }

  /** Leases.List of the run's database (linearizable), through any manager. */
  async leases(): Promise<ListedLease[]> {
    const reply = await this.#roaming.listLeases(`${this.#db}/`);
    return reply.leases.map((l) => ({
      leaseId: l.leaseId,
      username: l.username,
      state: l.state,
      expiresAtMs: Number(l.expiresAtMs),
    }));
  }

  #manager(): { name: string; quick: CofferClient; slow: CofferClient } {
    const k = this.#random.int(this.#c.managers.length);
    return { name: this.#c.managers[k]!.name, quick: this.#quick[k]!, slow: this.#slow[k]! };
  }

  #later(atMs: number, what: () => void): void {
    if (!this.#running) return;
    const timer = setTimeout(
      () => {
        this.#timers.delete(timer);
        if (this.#running) what();
      },
      Math.max(0, atMs - Date.now()),
    );
    this.#timers.add(timer);
  }

  /** One client: credentials, renewals, revocations by id, in a random mix. */
  async #client(client: number): Promise<void> {
    while (this.#running) {
      const roll = this.#random.float();
      if (roll < 0.45 || this.#held.size === 0) await this.#issue(client);
      else if (roll < 0.75) await this.#renew();
      else if (roll < 0.9) await this.#revokeById();
      await sleep(150 + this.#random.int(450));
    }
  }

  async #issue(client: number): Promise<void> {
    // Two roles, half and half: the operator revokes the second's by prefix.
    const role = this.#roles[this.#random.float() < 0.5 ? 0 : this.#roles.length - 1]!;
    const { name, quick } = this.#manager();
    const start = Date.now();
    const asked = { role: role.role, start };
    this.#asking.add(asked);
    try {
      const creds = await quick.getCredentials(this.#db, role.role).finally(() => this.#asking.delete(asked));
      const end = Date.now();
      const expiresAtMs = Number(creds.expiresAtMs);
      this.events.push({
        f: 'issue',
        client,
        role: role.role,
        manager: name,
        start,
        end,
        outcome: 'ok',
        leaseId: creds.leaseId,
        username: creds.username,
        expiresAtMs,
        ttlS: Number(creds.ttlSeconds),
      });
      const held: Held = {
        leaseId: creds.leaseId,
        username: creds.username,
        password: creds.password,
        role: role.role,
        endMs: expiresAtMs,
      };
      this.#held.set(held.leaseId, held);
      this.#login(held, 'issued');
      this.#later(end + (expiresAtMs - end) / 2, () => this.#login(held, 'mid-life'));
    } catch (error) {
      this.events.push({
        f: 'issue',
        client,
        role: role.role,
        manager: name,
        start,
        end: Date.now(),
        outcome: outcomeOf(error),
        error: describeError(error),
      });
    }
  }

  /**
   * Renews a held lease: most often the one nearest its end, sometimes one in its last moments or
   * just past its end (before the leader has revoked it), where a renewal meets a revocation.
   */
  async #renew(): Promise<void> {
    const now = Date.now();
    const live = [...this.#held.values()].filter((h) => h.endMs > now - 1000);
    if (live.length === 0) return;
    const roll = this.#random.float();
    const soon = live.filter((h) => h.endMs > now + 1500 && h.endMs < now + 4000);
    const held =
      roll < 0.5
        ? live.reduce((a, h) => (h.endMs < a.endMs ? h : a))
        : roll < 0.85 || soon.length === 0
          ? live[this.#random.int(live.length)]!
          : soon[this.#random.int(soon.length)]!;
    // From 1.5 s before its end to 1 s after it.
    if (roll >= 0.85 && soon.includes(held))
      await sleep(Math.max(0, held.endMs - 1500 + this.#random.int(2500) - Date.now()));
    if (!this.#held.has(held.leaseId)) return;
    const { quick } = this.#manager();
    const start = Date.now();
    try {
      const reply = await quick.renewLease(held.leaseId, 0);
      const end = Date.now();
      const expiresAtMs = Number(reply.expiresAtMs);
      this.events.push({
        f: 'renew',
        leaseId: held.leaseId,
        incrementS: 0,
        start,
        end,
        outcome: 'ok',
        expiresAtMs,
      });
      const before = held.endMs;
      held.endMs = Math.max(held.endMs, expiresAtMs);
      // A login where only the renewal says the user works: past the end it had before.
      const from = Math.max(end, before);
      if (expiresAtMs - from > 2000) this.#later(from + (expiresAtMs - from) / 2, () => this.#login(held, 'renewed'));
    } catch (error) {
      const text = describeError(error);
      this.events.push({
        f: 'renew',
        leaseId: held.leaseId,
        incrementS: 0,
        start,
        end: Date.now(),
        outcome: outcomeOf(error),
        error: text,
      });
      if (/LEASE_NOT_FOUND/.test(text)) this.#held.delete(held.leaseId);
    }
  }

  async #revokeById(): Promise<void> {
    const held = [...this.#held.values()][this.#random.int(this.#held.size)];
    if (held === undefined) return;
    this.#held.delete(held.leaseId);
    const { slow } = this.#manager();
    const start = Date.now();
    try {
      const reply = await slow.revokeLeases({ leaseId: held.leaseId });
      this.events.push({
        f: 'revoke',
        leaseId: held.leaseId,
        start,
        end: Date.now(),
        outcome: 'ok',
        leaseIds: reply.leaseIds,
        revoked: reply.revoked,
      });
      if (reply.revoked) this.#login(held, 'revoked');
    } catch (error) {
      this.events.push({
        f: 'revoke',
        leaseId: held.leaseId,
        start,
        end: Date.now(),
        outcome: outcomeOf(error),
        error: describeError(error),
      });
    }
  }

  /**
   * An operator, with a client of every manager: every few seconds the leases of the second role
   * revoked by prefix (now and then the whole database's). Half the time instead, a revocation
   * timed to meet a creation: 150-600 ms after a request for credentials of that role was sent
   * (its users are slow to make), the operator lists the role's leases and revokes the pending
   * ones by id (by prefix if it sees none), while their users are not committed yet, as
   * rotate-kill times a kill inside a key operation.
   */
  async #operator(): Promise<void> {
    const role = this.#roles[this.#roles.length - 1]!;
    while (this.#running) {
      await sleep(1500 + this.#random.int(2500));
      let pending: string[] = [];
      if (this.#random.float() < 0.5) {
        const afterMs = 150 + this.#random.int(450);
        const until = Date.now() + 3000;
        while (
          this.#running &&
          Date.now() < until &&
          ![...this.#asking].some((a) => a.role === role.role && Date.now() - a.start >= afterMs)
        )
          await sleep(20);
        pending = await this.#operatorClient
          .listLeases(`${this.#db}/${role.role}/`)
          .then((reply) => reply.leases.filter((l) => l.state === 'pending').map((l) => l.leaseId))
          .catch(() => []);
      }
      if (!this.#running) return;
      for (const leaseId of pending) await this.#operatorRevoke({ leaseId });
      if (pending.length === 0)
        await this.#operatorRevoke({
          prefix: this.#random.float() < 0.15 ? `${this.#db}/` : `${this.#db}/${role.role}/`,
        });
    }
  }

  /** One revocation of the operator's, recorded; the leases it names are no longer used. */
  async #operatorRevoke(target: { leaseId: string } | { prefix: string }): Promise<void> {
    const prefix = 'prefix' in target ? target.prefix : target.leaseId;
    const start = Date.now();
    try {
      const reply = await this.#operatorClient.revokeLeases(target);
      this.events.push({
        f: 'revoke',
        ...target,
        start,
        end: Date.now(),
        outcome: 'ok',
        leaseIds: reply.leaseIds,
        revoked: reply.revoked,
      });
      const named = reply.leaseIds.map((id) => this.#held.get(id)).filter((h): h is Held => h !== undefined);
      for (const h of named) this.#held.delete(h.leaseId);
      // One of them tried: it must be refused now.
      if (reply.revoked && named.length > 0) this.#login(named[this.#random.int(named.length)]!, 'revoked');
    } catch (error) {
      this.events.push({
        f: 'revoke',
        ...target,
        start,
        end: Date.now(),
        outcome: outcomeOf(error),
        error: describeError(error),
      });
      // Its leases may be revoked at any time from now: no longer used.
      for (const id of [...this.#held.keys()]) if (id.startsWith(prefix)) this.#held.delete(id);
    }
  }

  /** A login with the credential, over loopback: ok, refused by the server, or anything else (tells nothing). */
  #login(held: Held, why: LoginEvent['why']): void {
    // Mid-life and after a renewal: only while this workload holds it (not revoked since).
    if ((why === 'mid-life' || why === 'renewed') && !this.#held.has(held.leaseId)) return;
    const start = Date.now();
    const probe = this.#pg
      .canLogin(held.username, held.password)
      .then(
        (ok): Pick<LoginEvent, 'result' | 'error'> => ({ result: ok ? 'ok' : 'refused' }),
        (error: unknown) => ({ result: 'error' as const, error: describeError(error) }),
      )
      .then((outcome) => {
        this.events.push({
          f: 'login',
          leaseId: held.leaseId,
          username: held.username,
          why,
          start,
          end: Date.now(),
          ...outcome,
        });
      })
      .finally(() => this.#probes.delete(probe));
    this.#probes.add(probe);
  }

  /** Once a second while polling: `record` of what `read` answered (a poll without an answer tells nothing). */
  async #poll<T>(read: () => Promise<T>, record: (answer: T, start: number, end: number) => void): Promise<void> {
    while (this.#polling) {
      const start = Date.now();
      try {
        const answer = await read();
        record(answer, start, Date.now());
      } catch {
        // No answer (no leader for now, say): nothing learned.
      }
      await sleep(Math.max(0, start + 1000 - Date.now()));
    }
  }

  #pollRoles(): Promise<void> {
    return this.#poll(
      () => this.users(),
      (users, start, end) => this.events.push({ f: 'roles', start, end, users }),
    );
  }

  #pollList(): Promise<void> {
    return this.#poll(
      () => this.leases(),
      (leases, start, end) => this.events.push({ f: 'list', start, end, leases }),
    );
  }
}
