import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import type { LeaseReply, StaticRoleReply } from '../client/client.ts';
import { withClient } from './admin-commands.ts';
import { print } from './client-config.ts';
import { addClientOptions, type ClientFlags } from './client-flags.ts';
import { printable } from './printable.ts';
import { durationSeconds } from './secret-commands.ts';

/** A file's text, or stdin's for `-`: where a connection string or SQL comes from (never an argument). */
async function readTextFile(path: string, what: string): Promise<string> {
  if (path === '-') {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8').trim();
  }
  try {
    return readFileSync(path, 'utf8').trim();
  } catch (error) {
    throw new Error(`cannot read the ${what} file ${path}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** NAME/ROLE, as the commands name a database role. */
function dbRole(text: string): { db: string; role: string } {
  const match = /^([a-z][a-z0-9_-]{0,63})\/([a-z][a-z0-9_-]{0,63})$/.exec(text);
  if (match === null)
    throw new InvalidArgumentError('a database role is NAME/ROLE (lower-case letters, digits, _ and -)');
  return { db: match[1]!, role: match[2]! };
}

const time = (ms: number): string => new Date(ms).toISOString();

function leaseLine(l: LeaseReply): string {
  return `${printable(l.leaseId)}\t${printable(l.username)}\t${printable(l.owner)}\t${l.state}\tuntil ${time(l.expiresAtMs)}`;
}

/** `coffer db`: the databases Coffer makes users in, and their roles. */
export function dbCommands(): Command {
  const db = new Command('db').description('databases Coffer makes short-lived users in (dynamic credentials)');
  addClientOptions(db.command('configure <name>'))
    .description('the admin connection string of a PostgreSQL database (checked, stored sealed, never shown again)')
    .requiredOption('--url-file <file>', 'a file holding postgres://USER:PASSWORD@HOST:PORT/DB, or - for stdin')
    .action(async (name: string, flags: ClientFlags & { urlFile: string }) => {
      const url = await readTextFile(flags.urlFile, 'connection string');
      const reply = await withClient(flags, (c) => c.configureDatabase(name, url));
      print(flags, reply, () => `database ${printable(name)} configured (${printable(reply.urlRedacted)})`);
    });
  addClientOptions(db.command('remove <name>'))
    .description('forget a database (refused while it has leases)')
    .action(async (name: string, flags: ClientFlags) => {
      print(flags, await withClient(flags, (c) => c.removeDatabase(name)), () => `database ${printable(name)} removed`);
    });
  const role = db.command('role').description('roles: the SQL that makes and drops a user, and how long one lasts');
  addClientOptions(role.command('put <db-role>'))
    .description('write a role NAME/ROLE; SQL templates see {{name}}, {{password}} and {{expiration}}')
    .requiredOption('--creation-sql-file <file>', 'the SQL that makes the user')
    .option('--revocation-sql-file <file>', 'the SQL that removes it (default: revoke all, end its sessions, drop it)')
    .option('--renew-sql-file <file>', 'the SQL that moves its end (default: ALTER ROLE ... VALID UNTIL)')
    .option('--default-ttl <duration>', 'how long a credential lasts (default 1h)', durationSeconds)
    .option('--max-ttl <duration>', 'the longest renewals may take it (default 24h)', durationSeconds)
    .action(
      async (
        name: string,
        flags: ClientFlags & {
          creationSqlFile: string;
          revocationSqlFile?: string;
          renewSqlFile?: string;
          defaultTtl?: number;
          maxTtl?: number;
        },
      ) => {
        const { db: dbName, role: roleName } = dbRole(name);
        const reply = await withClient(flags, async (c) =>
          c.putDatabaseRole({
            db: dbName,
            role: roleName,
            creationSql: await readTextFile(flags.creationSqlFile, 'creation SQL'),
            revocationSql:
              flags.revocationSqlFile === undefined
                ? ''
                : await readTextFile(flags.revocationSqlFile, 'revocation SQL'),
            renewSql: flags.renewSqlFile === undefined ? '' : await readTextFile(flags.renewSqlFile, 'renew SQL'),
            defaultTtlSeconds: flags.defaultTtl ?? 0,
            maxTtlSeconds: flags.maxTtl ?? 0,
          }),
        );
        print(
          flags,
          reply,
          () =>
            `role ${printable(name)} written (ttl ${reply.defaultTtlSeconds ?? 0}s, at most ${reply.maxTtlSeconds ?? 0}s)`,
        );
      },
    );
  addClientOptions(role.command('rm <db-role>'))
    .description('remove a role (its leases go on until they end)')
    .action(async (name: string, flags: ClientFlags) => {
      const { db: dbName, role: roleName } = dbRole(name);
      print(
        flags,
        await withClient(flags, (c) => c.removeDatabaseRole(dbName, roleName)),
        () => `role ${printable(name)} removed`,
      );
    });
  staticCommands(db);
  return db;
}

function staticLine(r: StaticRoleReply): string {
  const last = r.lastRotatedAtMs === 0 ? 'not rotated yet' : `rotated ${time(r.lastRotatedAtMs)}`;
  const next = r.nextRotationAtMs === 0 ? 'due now' : `next ${time(r.nextRotationAtMs)}`;
  return `static role ${printable(r.db)}/${printable(r.role)}: user ${printable(r.username)}, every ${r.rotationPeriodSeconds}s; ${last}, ${next}${r.rotationInProgress ? ' (rotation in progress)' : ''}`;
}

/** `coffer db static ...` and `coffer db rotate`: existing users whose passwords Coffer rotates. */
function staticCommands(db: Command): void {
  const statics = db
    .command('static')
    .description('static roles: an existing user whose password Coffer rotates (kept as sys/db/NAME/static/ROLE)');
  addClientOptions(statics.command('put <db-role>'))
    .description("take over an existing user's password: rotated now, then every --rotation-period and on demand")
    .requiredOption('--username <user>', 'the existing database user (not the admin of the connection string)')
    .option('--rotation-period <duration>', 'how often (default 24h; at least 1m)', durationSeconds)
    .option(
      '--rotation-sql-file <file>',
      'the SQL that sets the password (default: ALTER ROLE "{{name}}" WITH PASSWORD \'{{password}}\')',
    )
    .action(
      async (
        name: string,
        flags: ClientFlags & { username: string; rotationPeriod?: number; rotationSqlFile?: string },
      ) => {
        const { db: dbName, role: roleName } = dbRole(name);
        const rotationSql =
          flags.rotationSqlFile === undefined ? '' : await readTextFile(flags.rotationSqlFile, 'rotation SQL');
        const reply = await withClient(flags, (c) =>
          c.putStaticRole({
            db: dbName,
            role: roleName,
            username: flags.username,
            rotationSql,
            rotationPeriodSeconds: flags.rotationPeriod ?? 0,
          }),
        );
        print(flags, reply, () => staticLine(reply));
      },
    );
  addClientOptions(statics.command('get <db-role>'))
    .description('a static role: its user, period, last and next rotation')
    .action(async (name: string, flags: ClientFlags) => {
      const { db: dbName, role: roleName } = dbRole(name);
      const reply = await withClient(flags, (c) => c.getStaticRole(dbName, roleName));
      print(flags, reply, () => staticLine(reply));
    });
  addClientOptions(statics.command('rm <db-role>'))
    .description('stop rotating (the user keeps its last password, and the secret stays until deleted)')
    .action(async (name: string, flags: ClientFlags) => {
      const { db: dbName, role: roleName } = dbRole(name);
      print(
        flags,
        await withClient(flags, (c) => c.removeStaticRole(dbName, roleName)),
        () => `static role ${printable(name)} removed`,
      );
    });
  addClientOptions(db.command('rotate <db-role>'))
    .description("rotate a static role's password now (at most once every 30 s)")
    .action(async (name: string, flags: ClientFlags) => {
      const { db: dbName, role: roleName } = dbRole(name);
      const reply = await withClient(flags, (c) => c.rotateStaticRole(dbName, roleName));
      print(flags, reply, () =>
        reply.rotated
          ? staticLine(reply)
          : `${staticLine(reply)}\nasked for: the rotation was not done yet (see coffer db static get)`,
      );
      if (!reply.rotated) process.exitCode = 1;
    });
}

/** `coffer creds get NAME/ROLE`: a new database user, under a lease. */
export function credsCommands(): Command {
  const creds = new Command('creds').description('dynamic credentials: a database user made for you, for a while');
  addClientOptions(creds.command('get <db-role>'))
    .description('make a user now; prints username, password, lease id and ttl (the password only here)')
    .option('--ttl <duration>', "shorter than the role's default", durationSeconds)
    .action(async (name: string, flags: ClientFlags & { ttl?: number }) => {
      const { db: dbName, role: roleName } = dbRole(name);
      const reply = await withClient(flags, (c) => c.getCredentials(dbName, roleName, flags.ttl ?? 0));
      // The scripts contract: snake_case keys.
      print(
        flags,
        { username: reply.username, password: reply.password, lease_id: reply.leaseId, ttl_seconds: reply.ttlSeconds },
        () =>
          `username\t${printable(reply.username)}\npassword\t${printable(reply.password)}\nlease_id\t${printable(reply.leaseId)}\nttl\t${reply.ttlSeconds}s (until ${time(reply.expiresAtMs)})`,
      );
    });
  return creds;
}

/** `coffer lease`: renew, revoke, list. */
export function leaseCommands(): Command {
  const lease = new Command('lease').description('leases of dynamic credentials: renew, revoke, list');
  addClientOptions(lease.command('renew <lease-id>'))
    .description("move a lease's end (never past its maximum)")
    .option('--increment <duration>', "from now (default: the role's ttl)", durationSeconds)
    .action(async (id: string, flags: ClientFlags & { increment?: number }) => {
      const reply = await withClient(flags, (c) => c.renewLease(id, flags.increment ?? 0));
      print(
        flags,
        reply,
        () => `lease ${printable(id)} until ${time(reply.expiresAtMs)} (at most ${time(reply.maxExpiresAtMs)})`,
      );
    });
  addClientOptions(lease.command('revoke [lease-id]'))
    .description('revoke a lease now (its user is dropped), or every lease under --prefix')
    .option('--prefix <prefix>', 'every lease whose id starts with this (NAME/ or NAME/ROLE/)')
    .action(async (id: string | undefined, flags: ClientFlags & { prefix?: string }) => {
      if ((id === undefined) === (flags.prefix === undefined))
        throw new InvalidArgumentError('give a lease id or --prefix, not both');
      const reply = await withClient(flags, (c) =>
        c.revokeLeases(id !== undefined ? { leaseId: id } : { prefix: flags.prefix! }),
      );
      print(flags, reply, () =>
        reply.leaseIds.length === 0
          ? 'no such lease'
          : `${reply.leaseIds.length} lease(s) ${reply.revoked ? 'revoked' : 'due: the leader revokes them soon (once the database answers; a user still being made, a minute after its lease opened)'}`,
      );
    });
  addClientOptions(lease.command('list'))
    .description('leases (those under --prefix)')
    .option('--prefix <prefix>', 'NAME/ or NAME/ROLE/', '')
    .action(async (flags: ClientFlags & { prefix: string }) => {
      const reply = await withClient(flags, (c) => c.listLeases(flags.prefix));
      print(flags, reply.leases, () => reply.leases.map(leaseLine).join('\n'));
    });
  return lease;
}
