import type * as grpc from '@grpc/grpc-js';
import { type AccessCommand, encodeAccessCommand } from '../../state/access-state.ts';
import { accessGuard } from '../../state/access-guard.ts';
import { DB_NAME_PATTERN } from '../../state/leases.ts';
import {
  STATIC_SECRET_NAME_PATTERN,
  type StaticRole,
  StaticRoleBook,
  type StaticRoleConfig,
  staticRoleProblem,
  staticSecretName,
} from '../../state/static-roles.ts';
import type { ServiceContext } from '../context.ts';
import { refuse } from '../errors.ts';
import { engineRefusal } from './engine-refusal.ts';
import { authorize, noteTarget, unary, type Call } from '../rpc.ts';
import { checkRotationTemplate, describeUser } from './postgres-engine.ts';

/** How long a read of a static role's password waits for a rotation under way before it is refused. */
export const ROTATION_READ_WAIT_MS = 5_000;
/** How long PutStaticRole waits for the first rotation, and RotateStaticRole for its rotation. */
const FIRST_ROTATION_WAIT_MS = 15_000;
const ROTATE_WAIT_MS = 45_000;

type StaticRoleRequest = {
  db: string;
  role: string;
  username: string;
  rotationSql: string;
  rotationPeriodSeconds: number;
};

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

function reply(role: StaticRole, rotated = false): Record<string, unknown> {
  return {
    db: role.db,
    role: role.role,
    username: role.username,
    rotationSql: role.rotationSql,
    rotationPeriodSeconds: role.rotationPeriodSeconds,
    lastRotatedAtMs: role.lastRotatedAtMs,
    nextRotationAtMs: StaticRoleBook.nextRotationAtMs(role),
    rotationInProgress: role.pending !== null,
    rotated,
  };
}

/**
 * Waits (up to `waitMs`, reading at the read point again) while a rotation of the static role
 * whose password `secretName` holds is under way: between the database taking the new password
 * and the secret's new version, the secret's is one the database no longer accepts. Refused with
 * ROTATION_IN_PROGRESS if it is still under way. Other names return at once.
 */
export async function awaitStaticRotation(
  ctx: ServiceContext,
  secretName: string,
  waitMs = ROTATION_READ_WAIT_MS,
): Promise<void> {
  if (!STATIC_SECRET_NAME_PATTERN.test(secretName)) return;
  const [, , db, , role] = secretName.split('/');
  const statics = ctx.state.access.leases.statics;
  const deadline = performance.now() + waitMs;
  // Under way, or never done for the role's user (a new role, or one whose user was changed: the
  // secret holds no password of this user yet).
  const rotating = (r: StaticRole | undefined): boolean =>
    r !== undefined && (r.pending !== null || r.lastRotatedAtMs === 0);
  while (rotating(statics.roles.get(`${db}/${role}`))) {
    if (performance.now() >= deadline)
      throw refuse(
        'ROTATION_IN_PROGRESS',
        `the password of static role ${db}/${role} is being rotated: retry in a few seconds (the database may be unreachable: see the managers' logs)`,
      );
    await sleep(100);
    await ctx.readPoint();
  }
}

/** Whether a static role (and no dynamic one) answers Database.GetCredentials for DB/ROLE. */
export function isStaticRole(ctx: ServiceContext, db: string, role: string): boolean {
  const book = ctx.state.access.leases;
  return !book.roles.has(`${db}/${role}`) && book.statics.roles.has(`${db}/${role}`);
}

/** Database.GetCredentials for a static role: its user and current password, no lease. */
export async function staticCredentials(
  ctx: ServiceContext,
  call: Call<unknown>,
  db: string,
  roleName: string,
): Promise<Record<string, unknown>> {
  const secretName = staticSecretName(db, roleName);
  authorize(ctx, call, 'read', secretName);
  noteTarget(call, secretName);
  await awaitStaticRotation(ctx, secretName);
  // Checked again after the wait: a revocation committed meanwhile is honoured.
  authorize(ctx, call, 'read', secretName);
  const role = ctx.state.access.leases.statics.roles.get(`${db}/${roleName}`);
  if (role === undefined) throw refuse('STATIC_ROLE_NOT_FOUND', `static role ${db}/${roleName} does not exist`);
  const nowMs = ctx.clock.now();
  let value: Buffer;
  try {
    value = ctx.state.secrets.read(secretName, {}, nowMs).value;
  } catch {
    throw refuse(
      'ROTATION_IN_PROGRESS',
      `static role ${db}/${roleName} has no password yet: its first rotation is not done`,
    );
  }
  const password = value.toString('utf8');
  value.fill(0);
  const nextAtMs = StaticRoleBook.nextRotationAtMs(role);
  return {
    username: role.username,
    password,
    leaseId: '',
    ttlSeconds: Math.max(0, Math.floor((nextAtMs - nowMs) / 1000)),
    expiresAtMs: nextAtMs,
  };
}

/** The Database service's static role methods (merged into it by db-service.ts). */
export function staticRoleMethods(ctx: ServiceContext): grpc.UntypedServiceImplementation {
  const access = ctx.state.access;
  const statics = access.leases.statics;
  const checkNames = (db: string, role: string): void => {
    for (const [value, field] of [
      [db, 'db'],
      [role, 'role'],
    ] as const)
      if (!DB_NAME_PATTERN.test(value))
        throw refuse('INVALID_NAME', 'a database or role name is a lower-case letter then up to 63 of [a-z0-9_-]', {
          field,
        });
  };
  const write = async (command: AccessCommand, caller: { id: string; spki: string }): Promise<void> => {
    const refusal = accessGuard(access, command, { name: caller.id, key: caller.spki });
    if (refusal !== null) throw refuse('GRANT_NOT_HELD', refusal);
    await ctx.propose(encodeAccessCommand(command, { name: caller.id, key: caller.spki }));
  };
  const existing = (db: string, role: string): StaticRole => {
    const found = statics.roles.get(`${db}/${role}`);
    if (found === undefined) throw refuse('STATIC_ROLE_NOT_FOUND', `static role ${db}/${role} does not exist`);
    return found;
  };
  /** Waits (bounded) until `done` holds for the role, reading at the read point each time. */
  const waitFor = async (db: string, role: string, waitMs: number, done: (r: StaticRole) => boolean) => {
    const deadline = performance.now() + waitMs;
    for (;;) {
      await ctx.readPoint();
      const current = existing(db, role);
      if (done(current)) return { role: current, done: true };
      if (performance.now() >= deadline) return { role: current, done: false };
      await sleep(200);
    }
  };

  return {
    putStaticRole: unary(ctx, 'Database.PutStaticRole', async (call: Call<StaticRoleRequest>) => {
      const m = call.request;
      checkNames(m.db, m.role);
      const caller = authorize(ctx, call, 'admin', `sys/db/${m.db}/static-roles/${m.role}`);
      const config: StaticRoleConfig = {
        db: m.db,
        role: m.role,
        username: m.username,
        rotationSql: m.rotationSql,
        rotationPeriodSeconds: m.rotationPeriodSeconds === 0 ? 86_400 : m.rotationPeriodSeconds,
      };
      const problem = staticRoleProblem(config as unknown as Record<string, unknown>);
      if (problem !== null) throw refuse('INVALID_ARGUMENT', `static role ${m.db}/${m.role}: ${problem}`);
      try {
        checkRotationTemplate(config.rotationSql);
      } catch (error) {
        throw engineRefusal(error);
      }
      await ctx.readPoint();
      const database = access.leases.databases.get(m.db);
      if (database === undefined) throw refuse('DB_ROLE_NOT_FOUND', `database "${m.db}" is not configured`);
      const user = await describeUser({ url: database.url }, config.username).catch((error: unknown) => {
        throw engineRefusal(error);
      });
      if (!user.exists)
        throw refuse('INVALID_ARGUMENT', `database "${m.db}" has no user "${config.username}": create it first`, {
          field: 'username',
        });
      if (user.isAdmin)
        throw refuse(
          'INVALID_ARGUMENT',
          `"${config.username}" is the user Coffer logs in to database "${m.db}" as: rotating its password would lock Coffer out`,
          { field: 'username' },
        );
      // Whoever may read a static role's password holds its user's rights: a user that
      // administers the database is not handed over this way (a delegated admin of static roles
      // would make itself superuser). Such a password stays with the people who hold it.
      if (user.isPrivileged)
        throw refuse(
          'INVALID_ARGUMENT',
          `"${config.username}" is a superuser or may create roles, bypass row security or replicate: Coffer does not take over such users' passwords`,
          { field: 'username' },
        );
      const putAtMs = ctx.clock.now();
      await write({ op: 'static-role-put', name: `${m.db}/${m.role}`, staticRole: config }, caller);
      const { role } = await waitFor(m.db, m.role, FIRST_ROTATION_WAIT_MS, (r) => r.lastRotatedAtMs !== 0);
      // `rotated`: by this put (a new role, or a new user); an update that kept the user says false.
      return reply(role, role.lastRotatedAtMs >= putAtMs);
    }),
    getStaticRole: unary(ctx, 'Database.GetStaticRole', async (call: Call<{ db: string; role: string }>) => {
      const { db, role } = call.request;
      checkNames(db, role);
      authorize(ctx, call, 'admin', `sys/db/${db}/static-roles/${role}`);
      await ctx.readPoint();
      return reply(existing(db, role));
    }),
    removeStaticRole: unary(ctx, 'Database.RemoveStaticRole', async (call: Call<{ db: string; role: string }>) => {
      const { db, role } = call.request;
      checkNames(db, role);
      const caller = authorize(ctx, call, 'admin', `sys/db/${db}/static-roles/${role}`);
      await ctx.readPoint();
      existing(db, role);
      await write({ op: 'static-role-remove', name: `${db}/${role}` }, caller);
      return { name: `${db}/${role}`, urlRedacted: '' };
    }),
    rotateStaticRole: unary(ctx, 'Database.RotateStaticRole', async (call: Call<{ db: string; role: string }>) => {
      const { db, role } = call.request;
      checkNames(db, role);
      const caller = authorize(ctx, call, 'admin', `sys/db/${db}/static-roles/${role}`);
      await ctx.readPoint();
      existing(db, role);
      const requestedAtMs = ctx.clock.now();
      await write({ op: 'static-rotate-request', name: `${db}/${role}`, nowMs: requestedAtMs }, caller);
      // Done when a rotation that began after this request finished (the request is cleared then).
      const { role: after, done } = await waitFor(
        db,
        role,
        ROTATE_WAIT_MS,
        (r) => r.requestedAtMs === 0 && r.pending === null && r.lastRotatedAtMs >= requestedAtMs,
      );
      return reply(after, done);
    }),
  };
}
