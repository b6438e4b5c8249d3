import { randomBytes } from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { encodeAccessCommand, type AccessCommand } from '../../state/access-state.ts';
import { accessGuard } from '../../state/access-guard.ts';
import { DB_NAME_PATTERN, LEASE_CREATE_WINDOW_MS, dbRoleProblem, type DbRole, type Lease } from '../../state/leases.ts';
import type { ServiceContext } from '../context.ts';
import { refuse } from '../errors.ts';
import { engineRefusal } from './engine-refusal.ts';
import { authorize, authenticateClient, noteTarget, unary, type Call } from '../rpc.ts';
import {
  DatabaseEngineError,
  checkConnection,
  checkTemplates,
  createUser,
  newPassword,
  newUsername,
  redactedUrl,
  renewUser,
} from './postgres-engine.ts';
import { isStaticRole, staticCredentials, staticRoleMethods } from './static-role-methods.ts';

const NAME_RULE = 'a database or role name is a lower-case letter then up to 63 of [a-z0-9_-]';
/** How long Leases.Revoke waits for the leader to have revoked what it asked for. */
export const REVOKE_WAIT_MS = 10_000;

type RoleMessage = {
  db: string;
  role: string;
  creationSql: string;
  revocationSql: string;
  renewSql: string;
  defaultTtlSeconds: number;
  maxTtlSeconds: number;
};

/**
 * PostgreSQL refuses concurrent changes to one object's privileges ("tuple concurrently updated",
 * a serialization failure, a deadlock): two requests for credentials of one role at once, on one
 * manager or two. The creation is one transaction, rolled back on failure, so it is run again,
 * a few times, after a short random pause.
 */
const RETRIED_SQLSTATES = /\b(XX000|40001|40P01)\b/;
const CREATE_TRIES_MAX = 5;

async function createUserRetrying(...args: Parameters<typeof createUser>): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await createUser(...args);
    } catch (error) {
      const retried =
        error instanceof DatabaseEngineError && error.code === 'DB_REFUSED' && RETRIED_SQLSTATES.test(error.message);
      if (!retried || attempt >= CREATE_TRIES_MAX) throw error;
      await new Promise((resolve) => setTimeout(resolve, 20 + Math.random() * 80 * attempt));
    }
  }
}

function leaseReply(lease: Lease): Record<string, unknown> {
  return {
    leaseId: lease.id,
    db: lease.db,
    role: lease.role,
    username: lease.username,
    owner: lease.owner,
    issuedAtMs: lease.issuedAtMs,
    expiresAtMs: lease.expiresAtMs,
    maxExpiresAtMs: lease.maxExpiresAtMs,
    state: lease.state,
  };
}

/**
 * The Database and Leases services: databases and their roles (administration), credentials made
 * on demand under a lease, and the leases' renewal and revocation. The manager that takes a
 * credentials request makes the user: it opens the lease through the log first (pending), makes
 * the user in the database, then activates the lease, so the leader knows of every user before it
 * exists. Revocation is the leader's (leader-duties.ts): a revoke request marks leases due.
 */
export function databaseServices(ctx: ServiceContext): {
  database: grpc.UntypedServiceImplementation;
  leases: grpc.UntypedServiceImplementation;
} {
  const access = ctx.state.access;
  const book = access.leases;
  const write = async (command: AccessCommand, caller: { id: string; spki: string }): Promise<void> => {
    const refusal = accessGuard(access, command, { name: caller.id, key: caller.spki });
    if (refusal !== null) throw refuse('GRANT_NOT_HELD', refusal);
    await ctx.propose(encodeAccessCommand(command, { name: caller.id, key: caller.spki }));
  };
  /** `write` on sys/leases/DB/ROLE, the lease id's first two parts (refused for an id of another form). */
  const authorizeLeases = (call: Call<unknown>, leaseId: string): void => {
    const parts = leaseId.split('/');
    if (parts.length !== 3 || !DB_NAME_PATTERN.test(parts[0]!) || !DB_NAME_PATTERN.test(parts[1]!))
      throw refuse('INVALID_ARGUMENT', 'a lease id is DB/ROLE/ID (as coffer creds get printed it)', {
        field: 'lease_id',
      });
    authorize(ctx, call, 'write', `sys/leases/${parts[0]}/${parts[1]}`);
  };
  const checkName = (value: string, field: string): void => {
    if (!DB_NAME_PATTERN.test(value)) throw refuse('INVALID_NAME', NAME_RULE, { field });
  };

  const database: grpc.UntypedServiceImplementation = {
    ...staticRoleMethods(ctx),
    configure: unary(ctx, 'Database.Configure', async (call: Call<{ name: string; url: string }>) => {
      const { name, url } = call.request;
      checkName(name, 'name');
      const caller = authorize(ctx, call, 'admin', `sys/db/${name}`);
      if (!/^postgres(ql)?:\/\//.test(url) || url.length > 4096)
        throw refuse('INVALID_ARGUMENT', 'url: postgres://USER:PASSWORD@HOST:PORT/DATABASE', { field: 'url' });
      // A URL that does not work is refused now, not at the first request for credentials.
      await checkConnection({ url }).catch((error: unknown) => {
        throw engineRefusal(error);
      });
      await write({ op: 'db-configure', name, url }, caller);
      ctx.log.info({ event: 'db-configured', db: name }, `database ${name} configured`);
      return { name, urlRedacted: redactedUrl(url) };
    }),
    remove: unary(ctx, 'Database.Remove', async (call: Call<{ name: string }>) => {
      const { name } = call.request;
      checkName(name, 'name');
      const caller = authorize(ctx, call, 'admin', `sys/db/${name}`);
      await write({ op: 'db-remove', name }, caller);
      return { name, urlRedacted: '' };
    }),
    putRole: unary(ctx, 'Database.PutRole', async (call: Call<RoleMessage>) => {
      const m = call.request;
      checkName(m.db, 'db');
      checkName(m.role, 'role');
      const caller = authorize(ctx, call, 'admin', `sys/db/${m.db}/roles/${m.role}`);
      const dbRole: DbRole = {
        db: m.db,
        role: m.role,
        creationSql: m.creationSql,
        revocationSql: m.revocationSql,
        renewSql: m.renewSql,
        defaultTtlSeconds: m.defaultTtlSeconds === 0 ? 3600 : m.defaultTtlSeconds,
        maxTtlSeconds: m.maxTtlSeconds === 0 ? Math.max(m.defaultTtlSeconds, 86_400) : m.maxTtlSeconds,
      };
      const problem = dbRoleProblem(dbRole as unknown as Record<string, unknown>);
      if (problem !== null) throw refuse('INVALID_ARGUMENT', `role ${m.db}/${m.role}: ${problem}`);
      // Templates that could never run are refused now, not when a lease needs them.
      try {
        checkTemplates(dbRole);
      } catch (error) {
        throw engineRefusal(error);
      }
      await write({ op: 'db-role-put', name: `${m.db}/${m.role}`, dbRole }, caller);
      return dbRole;
    }),
    removeRole: unary(ctx, 'Database.RemoveRole', async (call: Call<{ db: string; role: string }>) => {
      const { db, role } = call.request;
      checkName(db, 'db');
      checkName(role, 'role');
      const caller = authorize(ctx, call, 'admin', `sys/db/${db}/roles/${role}`);
      await write({ op: 'db-role-remove', name: `${db}/${role}` }, caller);
      return { name: `${db}/${role}`, urlRedacted: '' };
    }),
    getCredentials: unary(
      ctx,
      'Database.GetCredentials',
      async (call: Call<{ db: string; role: string; ttlSeconds: number }>) => {
        const { db, role: roleName, ttlSeconds } = call.request;
        checkName(db, 'db');
        checkName(roleName, 'role');
        // At the read point first: a static role made a moment ago is one on every manager.
        await ctx.readPoint();
        if (isStaticRole(ctx, db, roleName)) return staticCredentials(ctx, call, db, roleName);
        const caller = authorize(ctx, call, 'read', `sys/db/${db}/creds/${roleName}`);
        const role = book.roles.get(`${db}/${roleName}`);
        const database = book.databases.get(db);
        if (role === undefined || database === undefined)
          throw refuse('DB_ROLE_NOT_FOUND', `database role ${db}/${roleName} does not exist`);
        const nowMs = ctx.clock.now();
        const ttl = ttlSeconds === 0 ? role.defaultTtlSeconds : Math.min(Math.max(ttlSeconds, 10), role.maxTtlSeconds);
        const expiresAtMs = nowMs + ttl * 1000;
        const username = newUsername(roleName, nowMs);
        const password = newPassword();
        const id = `${db}/${roleName}/${randomBytes(16).toString('hex')}`;
        noteTarget(call, `sys/db/${db}/creds/${roleName} lease ${id}`);
        // The lease first: a user is never made that the leader does not know to revoke.
        await ctx.propose(
          encodeAccessCommand({
            op: 'lease-open',
            name: id,
            db,
            role: roleName,
            username,
            owner: caller.id,
            nowMs,
            expiresAtMs,
            maxExpiresAtMs: nowMs + role.maxTtlSeconds * 1000,
          }),
        );
        // Within its window only: after it, the leader may already have revoked a lease never
        // activated, and a user committed then would be one no lease names.
        const inWindow = (): boolean => ctx.clock.now() - nowMs < LEASE_CREATE_WINDOW_MS;
        try {
          await createUserRetrying({ url: database.url }, role, { name: username, password, expiresAtMs }, inWindow);
        } catch (error) {
          // Nothing was made (the creation ran in one transaction); the leader drops the lease.
          await ctx.propose(encodeAccessCommand({ op: 'lease-revoke', name: '', ids: [id] })).catch(() => undefined);
          throw engineRefusal(error);
        }
        await ctx.propose(encodeAccessCommand({ op: 'lease-activate', name: id }));
        ctx.log.info(
          { event: 'credentials-issued', lease: id, username, identity: caller.id, ttlSeconds: ttl },
          `made database user ${username} for ${caller.id} (lease ${id})`,
        );
        return { username, password, leaseId: id, ttlSeconds: ttl, expiresAtMs };
      },
    ),
  };

  const leases: grpc.UntypedServiceImplementation = {
    renew: unary(ctx, 'Leases.Renew', async (call: Call<{ leaseId: string; incrementSeconds: number }>) => {
      const { leaseId, incrementSeconds } = call.request;
      noteTarget(call, `sys/leases/${leaseId}`);
      const caller = authenticateClient(ctx, call);
      await ctx.readPoint();
      const lease = book.leases.get(leaseId);
      // Whether a lease exists is told only to its owner or to whoever may manage its role's leases.
      if (lease?.owner !== caller.id) authorizeLeases(call, leaseId);
      if (lease === undefined || lease.state !== 'active')
        throw refuse('LEASE_NOT_FOUND', `lease ${leaseId.slice(0, 200)} does not exist, or is being revoked`);
      // An ended lease is not brought back: its user no longer logs in, and the leader is revoking it.
      if (lease.expiresAtMs <= ctx.clock.now())
        throw refuse(
          'LEASE_NOT_FOUND',
          `lease ${leaseId} ended at ${new Date(lease.expiresAtMs).toISOString()}: get new credentials`,
        );
      const role = book.roles.get(`${lease.db}/${lease.role}`);
      const database = book.databases.get(lease.db);
      if (role === undefined || database === undefined)
        throw refuse('DB_ROLE_NOT_FOUND', `the role of lease ${leaseId} no longer exists`);
      const increment = incrementSeconds === 0 ? role.defaultTtlSeconds : incrementSeconds;
      const expiresAtMs = Math.min(ctx.clock.now() + increment * 1000, lease.maxExpiresAtMs);
      const command: AccessCommand = { op: 'lease-renew', name: leaseId, expiresAtMs };
      const refusal = accessGuard(access, command, { name: caller.id, key: caller.spki });
      if (refusal !== null) throw refuse('GRANT_NOT_HELD', refusal);
      // The database first: a lease never says longer than the user works.
      await renewUser({ url: database.url }, role, { name: lease.username, expiresAtMs }).catch((error: unknown) => {
        throw engineRefusal(error);
      });
      await ctx.propose(encodeAccessCommand(command, { name: caller.id, key: caller.spki }));
      // The leader applied it; this manager (a follower, maybe) catches up, so the reply says the new end.
      await ctx.readPoint();
      return leaseReply(book.leases.get(leaseId) ?? lease);
    }),
    revoke: unary(ctx, 'Leases.Revoke', async (call: Call<{ leaseId: string; prefix: string }>) => {
      const { leaseId, prefix } = call.request;
      if ((leaseId === '') === (prefix === ''))
        throw refuse('INVALID_ARGUMENT', 'give a lease id or a prefix (DB/ or DB/ROLE/)', { field: 'lease_id' });
      noteTarget(call, `sys/leases/${(leaseId || prefix).slice(0, 200)}`);
      const caller = authenticateClient(ctx, call);
      await ctx.readPoint();
      let ids: string[];
      if (leaseId !== '') {
        if (book.leases.get(leaseId)?.owner !== caller.id) authorizeLeases(call, leaseId);
        ids = book.leases.has(leaseId) ? [leaseId] : [];
      } else {
        // Revoking by prefix is an operator's act: sudo on the prefix.
        authorize(ctx, call, 'sudo', `sys/leases/${prefix.replace(/\/$/, '')}`);
        ids = book.withPrefix(prefix).map((l) => l.id);
      }
      for (let at = 0; at < ids.length; at += 256)
        await write({ op: 'lease-revoke', name: '', ids: ids.slice(at, at + 256) }, caller);
      // Wait (bounded) for the leader to have revoked them; not for leases whose user was never
      // reported made, which the leader revokes only after the pending grace (leases.ts).
      const deadline = performance.now() + REVOKE_WAIT_MS;
      const awaited = (id: string): boolean => {
        const lease = book.leases.get(id);
        return lease !== undefined && lease.activated !== false;
      };
      while (ids.some(awaited) && performance.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        await ctx.readPoint();
      }
      return { leaseIds: ids, revoked: !ids.some((id) => book.leases.has(id)) };
    }),
    list: unary(ctx, 'Leases.List', async (call: Call<{ prefix: string }>) => {
      authorize(ctx, call, 'list', 'sys/leases');
      await ctx.readPoint();
      return { leases: book.withPrefix(call.request.prefix).slice(0, 10_000).map(leaseReply) };
    }),
  };
  return { database, leases };
}
