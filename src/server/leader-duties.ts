import type { Manager } from '../manager/manager.ts';
import type { ConfChange } from '../raft/types.ts';
import { LOGIN_PRUNE_NAMES_MAX, encodeAccessCommand } from '../state/access-state.ts';
import type { AppliedResult, AppliedState } from '../state/applied-state.ts';
import { ClusterState } from '../state/cluster-state.ts';
import { LEASE_PENDING_GRACE_MS } from '../state/leases.ts';
import { ROOT_POLICY } from '../state/policy.ts';
import { encodeSecretCommand } from '../state/secret-store.ts';
import type { Logger } from '../util/logger.ts';
import type { ClusterCa } from './cluster-ca.ts';
import type { StateCommand } from './context.ts';
import type { NodeConfig } from './node-config.ts';
import { DatabaseEngineError, revokeUser } from './db/postgres-engine.ts';
import { type RotationStep, StaticRotator } from './db/static-rotation.ts';
import type { KeySchedule } from './key-schedule.ts';
import { ADMIN_IDENTITY } from './rpc.ts';

export interface LeaderDutiesOptions {
  readonly config: NodeConfig;
  readonly state: AppliedState;
  readonly cas: ClusterCa;
  readonly manager: Pick<Manager<AppliedResult>, 'raftStatus' | 'status' | 'forcedOut' | 'linearizableRead'>;
  propose(command: StateCommand): Promise<unknown>;
  proposeConfChange(change: ConfChange): Promise<void>;
  /** The cluster's wall-clock time (cluster-clock.ts). */
  readonly now: () => number;
  readonly log: Logger;
  /** Tests only: where a static role's rotation stops, standing for a crash (static-rotation.ts). */
  readonly rotationFailpoint?: (step: RotationStep) => Promise<void>;
  /** The data key's scheduled rotation and rewrap, through the proposer's keyOperation (key-schedule.ts). */
  readonly keySchedule: Pick<KeySchedule, 'run'>;
}

/**
 * What only the leader does, a few times a second: it puts what `coffer init` decided into the
 * replicated state (the CA, its own address, the recovery key, the join token, the admin
 * identity), marks the managers a forced new cluster or a restore left behind as removed,
 * promotes learners that caught up, wipes expired secrets (through the log, with the time and the
 * versions in the command, so every manager wipes the same ones), and after a rewrap re-seals the
 * records still sealed under older keyring terms.
 */
/** How often the leader looks for login identities to drop, and how long after their last certificate ended. */
export const LOGIN_PRUNE_INTERVAL_MS = 60_000;
export const LOGIN_PRUNE_GRACE_MS = 60 * 60_000;

/** How often the leader looks for due leases. */
const LEASE_SCAN_INTERVAL_MS = 1_000;
/** Leases one run revokes at most; the next run takes the rest. */
const LEASES_REVOKED_PER_RUN_MAX = 64;
/** The longest pause between tries of a lease whose database fails. */
const LEASE_RETRY_MAX_MS = 10_000;
/** The engine's own statements, for a lease whose role was removed. */
const DEFAULT_TEMPLATES = { creationSql: '', revocationSql: '', renewSql: '' } as const;

/** Re-seal commands one run of the duties proposes at most (RESEAL_RECORDS_MAX records each). */
const RESEAL_BATCHES_PER_RUN = 8;

export class LeaderDuties {
  readonly #o: LeaderDutiesOptions;
  /** Where the background re-seal goes on from (a record key), or null: from the start. */
  #resealCursor: Uint8Array | null = null;
  /** When due leases were last looked for (monotonic ms). */
  #lastLeaseScanMs = Number.NEGATIVE_INFINITY;
  /** The lease revocation under way, if one is. */
  #revoking: Promise<void> | null = null;
  /** Leases whose revocation failed: how often, and when to try again (monotonic ms). */
  readonly #leaseRetries = new Map<string, { failures: number; nextAtMs: number }>();
  readonly #rotator: StaticRotator;
  /** The static roles' rotations under way, if they are. */
  #rotating: Promise<void> | null = null;
  /** When logins were last looked at for pruning (monotonic ms). */
  #lastPruneMs = Number.NEGATIVE_INFINITY;

  constructor(options: LeaderDutiesOptions) {
    this.#o = options;
    this.#rotator = new StaticRotator({
      state: options.state,
      propose: options.propose,
      now: options.now,
      log: options.log,
      ...(options.rotationFailpoint === undefined ? {} : { failpoint: options.rotationFailpoint }),
    });
  }

  /** Does what is due, if this manager leads with a keyring; one command at a time. */
  async run(): Promise<void> {
    const { config, state, manager } = this.#o;
    const status = manager.raftStatus();
    if (status === null || status.role !== 'leader' || (manager.status().keys?.activeTerm ?? 0) === 0) return;
    const cluster = state.cluster;
    // The CA made at init moves into the replicated state, where rotations happen.
    const install = this.#o.cas.toInstall();
    if (install !== null)
      await this.#o.propose(
        ClusterState.encode({ kind: 'cluster.ca-install', certPem: install.certPem, keyPem: install.keyPem }),
      );
    // After a forced new cluster or a restore, the old members' certificates are refused from now on.
    for (const id of [...manager.forcedOut(), ...(config.retiredMembers ?? [])]) {
      if (!cluster.removed.has(id)) await this.#o.propose(ClusterState.encode({ kind: 'cluster.removed', id }));
    }
    if (cluster.addresses.get(config.nodeId) !== config.advertise) {
      await this.#o.propose(
        ClusterState.encode({ kind: 'cluster.member', id: config.nodeId, address: config.advertise }),
      );
    }
    if (cluster.recoveryPublicKey === null && (config.initialRecoveryPublicKey ?? null) !== null) {
      await this.#o.propose(
        ClusterState.encode({
          kind: 'cluster.recovery-key',
          publicKey: Buffer.from(config.initialRecoveryPublicKey!, 'hex'),
        }),
      );
    }
    if (cluster.joinTokenHash === null && config.initialJoinTokenHash !== null) {
      await this.#o.propose(
        ClusterState.encode({
          kind: 'cluster.join-token',
          hash: Buffer.from(config.initialJoinTokenHash, 'hex'),
          expiresAtMs: config.initialJoinTokenExpiresAtMs ?? null,
          uses: null,
        }),
      );
    }
    const admin = config.initialAdmin ?? null;
    if (admin !== null && !state.access.identities.has(ADMIN_IDENTITY)) {
      await this.#o.propose(
        encodeAccessCommand({
          op: 'identity-issue',
          name: ADMIN_IDENTITY,
          policies: [ROOT_POLICY.name],
          key: admin.key,
          serial: admin.serial,
          caGen: 1,
          nowMs: this.#o.now(),
        }),
      );
    }
    await this.#maybePromote();
    // The sweep names the versions it found expired (at most EXPIRY_SWEEP_VERSIONS_MAX; the next tick takes the rest).
    const sweep = await state.secrets.expiryCommand(this.#o.now());
    if (sweep !== null) await this.#o.propose(encodeSecretCommand(sweep));
    await this.#pruneLogins();
    // Revoking talks to databases, which may be slow or down: it runs beside the other duties.
    // Looked for once a second, not every run: finding what is due reads every lease.
    if (this.#revoking === null && performance.now() - this.#lastLeaseScanMs >= LEASE_SCAN_INTERVAL_MS) {
      this.#lastLeaseScanMs = performance.now();
      // A leader new to its term may not have applied every committed entry yet (a renewal, say):
      // what it finds due is read only once it has (a linearizable read waits for that).
      this.#revoking = this.#o.manager
        .linearizableRead()
        .then(() => this.#revokeLeases())
        .catch((error: unknown) =>
          // Leadership lost while proposing, say: the next leader finds the same leases due.
          this.#o.log.warn({ event: 'lease-revoke-failed', err: error }, 'revoking leases failed; will try again'),
        )
        .finally(() => (this.#revoking = null));
    }
    // Rotations of static roles' passwords talk to databases too: beside the other duties.
    if (this.#rotating === null)
      this.#rotating = this.#o.manager
        .linearizableRead()
        .then(() => this.#rotator.run())
        .catch((error: unknown) =>
          this.#o.log.warn(
            { event: 'static-rotation-failed', err: error },
            'rotating static roles failed; will try again',
          ),
        )
        .finally(() => (this.#rotating = null));
    await this.#o.keySchedule.run();
    await this.#reseal();
  }

  /**
   * After a rewrap, records still sealed under older terms are sealed again under the active one,
   * RESEAL_RECORDS_MAX per command, a few batches per run, so writes go on between them; a term
   * is destroyed only once none is left (the barrier refuses before).
   */
  async #reseal(): Promise<void> {
    const { state, manager } = this.#o;
    const rewrapTerm = manager.status().keys?.lastRewrap?.term ?? 0;
    if (rewrapTerm === 0) return;
    const inUse = await state.secrets.termsInUse();
    if (!inUse.some(({ term }) => term < rewrapTerm)) {
      this.#resealCursor = null;
      return;
    }
    for (let batch = 0; batch < RESEAL_BATCHES_PER_RUN; batch++) {
      const next = await state.secrets.resealCommand(rewrapTerm, this.#resealCursor);
      if (next === null) {
        // From the start again next run: records before the cursor may have been written meanwhile.
        this.#resealCursor = null;
        return;
      }
      this.#resealCursor = next.last;
      await this.#o.propose(encodeSecretCommand(next.command));
    }
  }

  /**
   * Login identities whose certificates have all ended are dropped (a CI system whose subjects
   * name each branch would otherwise grow the state for ever): looked for once a minute, a grace
   * of LOGIN_PRUNE_GRACE_MS after the last certificate ended.
   */
  async #pruneLogins(): Promise<void> {
    const nowMonotonicMs = performance.now();
    if (nowMonotonicMs - this.#lastPruneMs < LOGIN_PRUNE_INTERVAL_MS) return;
    this.#lastPruneMs = nowMonotonicMs;
    const nowMs = this.#o.now() - LOGIN_PRUNE_GRACE_MS;
    const names = this.#o.state.access.endedLogins(nowMs, LOGIN_PRUNE_NAMES_MAX);
    if (names.length === 0) return;
    await this.#o.propose(encodeAccessCommand({ op: 'identity-prune', name: '', names, nowMs }));
    this.#o.log.info(
      { event: 'logins-pruned', count: names.length },
      `dropped ${names.length} login identities whose certificates all ended`,
    );
  }

  /**
   * Leases that are due (ended, asked to be revoked, or opened and never activated): each user is
   * revoked in its database (idempotently: a user already gone is fine), then the leases are
   * dropped through the log. A database that fails is tried again later, 1 s, 2 s, 4 s ... up to
   * 10 s apart per lease; the leases stay (overdue) until it answers, so a new leader takes
   * over what is due.
   */
  async #revokeLeases(): Promise<void> {
    const book = this.#o.state.access.leases;
    const nowMs = this.#o.now();
    const monotonicMs = performance.now();
    const due = book
      .due(nowMs, LEASE_PENDING_GRACE_MS, LEASES_REVOKED_PER_RUN_MAX)
      .filter((lease) => (this.#leaseRetries.get(lease.id)?.nextAtMs ?? 0) <= monotonicMs);
    if (due.length === 0) return;
    // A lease due only because it ended may be renewed by another manager while this one looks:
    // the log decides which came first. Its end is marked through the log, and only those still
    // ended when the mark applied are revoked; one whose renewal applied first stays.
    const ended = due.filter((lease) => lease.state === 'active').map((lease) => lease.id);
    if (ended.length > 0)
      await this.#o.propose(encodeAccessCommand({ op: 'lease-expire', name: '', ids: ended, endedByMs: nowMs }));
    const revoking = due.filter((lease) => {
      const now = book.leases.get(lease.id);
      return now !== undefined && now.state !== 'active';
    });
    const revoked: string[] = [];
    // A database that cannot be reached is not asked again in this run (each try may wait out a
    // connect timeout): its other leases wait for the next.
    const unreachable = new Set<string>();
    for (const lease of revoking) {
      if (unreachable.has(lease.db)) continue;
      const database = book.databases.get(lease.db);
      const role = book.roles.get(`${lease.db}/${lease.role}`);
      try {
        if (database !== undefined) await revokeUser({ url: database.url }, role ?? DEFAULT_TEMPLATES, lease.username);
        revoked.push(lease.id);
        this.#leaseRetries.delete(lease.id);
      } catch (error) {
        if (error instanceof DatabaseEngineError && error.code === 'DB_UNREACHABLE') unreachable.add(lease.db);
        const failures = (this.#leaseRetries.get(lease.id)?.failures ?? 0) + 1;
        this.#leaseRetries.set(lease.id, {
          failures,
          nextAtMs: monotonicMs + Math.min(LEASE_RETRY_MAX_MS, 1000 * 2 ** (failures - 1)),
        });
        this.#o.log.warn(
          { event: 'lease-revoke-failed', lease: lease.id, db: lease.db, failures, err: error },
          `revoking lease ${lease.id} failed (${failures} times); trying again`,
        );
      }
    }
    if (revoked.length === 0) return;
    await this.#o.propose(encodeAccessCommand({ op: 'lease-revoked', name: '', ids: revoked }));
    this.#o.log.info({ event: 'leases-revoked', count: revoked.length }, `revoked ${revoked.length} leases`);
  }

  /** Promotes a learner to voter once it has every committed entry (one change at a time). */
  async #maybePromote(): Promise<void> {
    const status = this.#o.manager.raftStatus();
    if (status === null || status.progress === null) return;
    for (const learner of status.confState.learners) {
      if (this.#o.state.cluster.heldLearners.has(learner)) continue; // demoted by an operator
      const progress = status.progress.get(learner);
      if (progress !== undefined && progress.match >= status.commit) {
        this.#o.log.info({ event: 'promote', nodeId: learner }, `manager ${learner} caught up: promoting it to voter`);
        await this.#o.proposeConfChange({ type: 'add-voter', nodeId: learner });
        return;
      }
    }
  }
}
