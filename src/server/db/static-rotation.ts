import { ProposalRefused } from '../../manager/errors.ts';
import { encodeAccessCommand } from '../../state/access-state.ts';
import type { AppliedState } from '../../state/applied-state.ts';
import { encodeSecretCommand } from '../../state/secret-store.ts';
import {
  STATIC_ROTATION_SEND_WINDOW_MS,
  STATIC_ROTATION_SPACING_MS,
  type PendingRotation,
  type StaticRole,
  staticSecretName,
} from '../../state/static-roles.ts';
import type { Logger } from '../../util/logger.ts';
import type { StateCommand } from '../context.ts';
import { DatabaseEngineError, newPassword, rotatePassword } from './postgres-engine.ts';

/** Versions of a static role's secret kept: the password in use and the one before it. */
export const STATIC_SECRET_VERSIONS_KEPT = 2;
/** The longest pause between tries of a rotation whose database fails. */
const ROTATION_RETRY_MAX_MS = 10_000;

/**
 * Where a rotation stops in a test, to stand for a crash at that point (the promise never
 * settles, and the test stops the manager): after the begin is committed, after the database
 * took the password, after the secret's version is written.
 */
export type RotationStep = 'begun' | 'database-set' | 'secret-written';

export interface StaticRotatorOptions {
  readonly state: AppliedState;
  propose(command: StateCommand): Promise<unknown>;
  /** The cluster's wall-clock time. */
  readonly now: () => number;
  readonly log: Logger;
  /** Tests only: called after each step of a rotation. */
  readonly failpoint?: (step: RotationStep) => Promise<void>;
}

/**
 * The leader's rotations of static database roles' passwords (two-phase, see
 * src/state/static-roles.ts): begins what is due, and finishes what a previous leader began.
 * One role at a time; a database that fails is tried again 1 s, 2 s, 4 s ... up to 10 s later.
 */
export class StaticRotator {
  readonly #o: StaticRotatorOptions;
  readonly #retries = new Map<string, { failures: number; nextAtMs: number }>();

  constructor(options: StaticRotatorOptions) {
    this.#o = options;
  }

  async run(): Promise<void> {
    const book = this.#o.state.access.leases.statics;
    const monotonicMs = performance.now();
    // A database that cannot be reached is not asked again in this run (each try may wait out a
    // connect timeout): its other roles wait for the next.
    const unreachable = new Set<string>();
    for (const role of book.due(this.#o.now())) {
      const name = `${role.db}/${role.role}`;
      if (unreachable.has(role.db) || (this.#retries.get(name)?.nextAtMs ?? 0) > monotonicMs) continue;
      try {
        await this.#rotate(role);
        this.#retries.delete(name);
      } catch (error) {
        if (error instanceof DatabaseEngineError && error.code === 'DB_UNREACHABLE') unreachable.add(role.db);
        const failures = (this.#retries.get(name)?.failures ?? 0) + 1;
        this.#retries.set(name, {
          failures,
          nextAtMs: performance.now() + Math.min(ROTATION_RETRY_MAX_MS, 1000 * 2 ** (failures - 1)),
        });
        this.#o.log.warn(
          { event: 'static-rotation-failed', role: name, failures, err: error },
          `rotating the password of static role ${name} failed (${failures} times); trying again`,
        );
      }
    }
  }

  async #rotate(due: StaticRole): Promise<void> {
    const { state, log } = this.#o;
    const name = `${due.db}/${due.role}`;
    const pending = await this.#pendingToSend(due);
    if (pending === null) return; // not yet: the spacing since the last begin
    await this.#step('begun');
    // From the state as it is now (the role object `due` gave may have been replaced since): the
    // pending rotation names its user, which cannot change while it is pending.
    const role = state.access.leases.statics.roles.get(name);
    const database = state.access.leases.databases.get(due.db);
    if (role === undefined || database === undefined || role.pending?.startedAtMs !== pending.startedAtMs) return;
    const { startedAtMs, password, username } = pending;
    await rotatePassword(
      { url: database.url },
      role.rotationSql,
      { name: username, password },
      () => this.#o.now() - startedAtMs < STATIC_ROTATION_SEND_WINDOW_MS,
    );
    await this.#step('database-set');
    await this.#writeSecret(role, pending);
    await this.#step('secret-written');
    await this.#o.propose(encodeAccessCommand({ op: 'static-rotate-done', name, startedAtMs, nowMs: this.#o.now() }));
    log.info(
      { event: 'static-role-rotated', role: name, username },
      `rotated the password of ${username} (static role ${name})`,
    );
  }

  /**
   * The secret's next version, compare-and-set on the version the rotation began from. Refused
   * for that version, it was written already (this rotation's write, before a crash) or by a
   * deposed leader's late write of an older rotation: the secret's value tells which, and in the
   * second case it is written again over it. A role's first rotation keeps one version only: any
   * older ones are another user's passwords (the role's user was changed).
   */
  async #writeSecret(role: StaticRole, pending: PendingRotation): Promise<void> {
    const secretName = staticSecretName(role.db, role.role);
    let cas = pending.baseVersion;
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        await this.#o.propose(
          encodeSecretCommand({
            op: 'put',
            name: secretName,
            value: Buffer.from(pending.password, 'utf8'),
            cas,
            expireAtMs: null,
            versionsKept: role.lastRotatedAtMs === 0 ? 1 : STATIC_SECRET_VERSIONS_KEPT,
            nowMs: this.#o.now(),
          }),
        );
        return;
      } catch (error) {
        if (!(error instanceof ProposalRefused && error.code === 'CAS_MISMATCH')) throw error;
      }
      const secrets = this.#o.state.secrets;
      let written = false;
      try {
        const current = secrets.read(secretName, {}, this.#o.now()).value;
        written = current.equals(Buffer.from(pending.password, 'utf8'));
        current.fill(0);
      } catch {
        // Its current version deleted or destroyed by a client: not this rotation's; written over.
      }
      if (written) return;
      cas = secrets.metadata(secretName).lastVersion;
      this.#o.log.warn(
        { event: 'static-rotation-overwritten', role: `${role.db}/${role.role}` },
        `the secret of static role ${role.db}/${role.role} was written by an older rotation meanwhile; writing this one again`,
      );
    }
    throw new DatabaseEngineError('DB_UNREACHABLE', `the secret ${secretName} kept changing; will try again`);
  }

  /**
   * The rotation to send now: the pending one while its window lasts, else a new one begun
   * (through the log) once the spacing since the last begin allows; null while it does not.
   */
  async #pendingToSend(due: StaticRole): Promise<PendingRotation | null> {
    const role = this.#o.state.access.leases.statics.roles.get(`${due.db}/${due.role}`);
    if (role === undefined) return null; // removed meanwhile
    const nowMs = this.#o.now();
    if (role.pending !== null && nowMs - role.pending.startedAtMs < STATIC_ROTATION_SEND_WINDOW_MS) return role.pending;
    if (role.lastBeganAtMs !== 0 && nowMs < role.lastBeganAtMs + STATIC_ROTATION_SPACING_MS) return null;
    const name = `${role.db}/${role.role}`;
    const secrets = this.#o.state.secrets;
    const secretName = staticSecretName(role.db, role.role);
    let baseVersion = 0;
    try {
      baseVersion = secrets.metadata(secretName).lastVersion;
    } catch {
      // Not written yet: the first rotation's version is 1.
    }
    if (role.pending !== null)
      log(this.#o.log, name, 'a rotation ran out of its time to reach the database; beginning it again');
    await this.#o.propose(
      encodeAccessCommand({
        op: 'static-rotate-begin',
        name,
        username: role.username,
        password: newPassword(),
        nowMs,
        baseVersion,
      }),
    );
    const begun = this.#o.state.access.leases.statics.roles.get(name)?.pending ?? null;
    if (begun === null || begun.startedAtMs !== nowMs)
      throw new DatabaseEngineError('DB_UNREACHABLE', `the rotation of ${name} was not recorded as begun`);
    return begun;
  }

  async #step(step: RotationStep): Promise<void> {
    if (this.#o.failpoint !== undefined) await this.#o.failpoint(step);
  }
}

function log(logger: Logger, role: string, message: string): void {
  logger.warn({ event: 'static-rotation-restarted', role }, `static role ${role}: ${message}`);
}
