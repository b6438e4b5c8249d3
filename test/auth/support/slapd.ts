import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, statSync } from 'node:fs';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Attribute, Change, Client, EqualityFilter, NoSuchObjectError } from 'ldapts';
import { freePort } from '../../processes/processes.ts';
import { makeTlsMaterial } from './test-tls.ts';

/**
 * A real OpenLDAP server (Debian's slapd) on 127.0.0.1 for tests of the LDAP login: the manager
 * binds as the user over LDAPS or StartTLS and reads the user's groups, and that is checked
 * against a directory that enforces passwords, TLS and access rules, not a mock that agrees with
 * the code under test. Everything (config, TLS material, database, log) lives in the directory
 * given to start(); the daemon runs in the foreground as a child of the test and is stopped by PID.
 *
 * Needs slapd and ldap-utils (.ci/run installs them): /usr/sbin/slapd, /usr/sbin/slapadd, the
 * schemas in /etc/ldap/schema and the modules in /usr/lib/ldap, Debian's layout.
 */

export interface LdapUser {
  readonly uid: string;
  readonly password: string;
  /** Names (cn) of groupOfNames entries under ou=groups listing this user as a member; made as needed. */
  readonly groups: readonly string[];
  readonly mail?: string;
}

export interface SlapdOptions {
  readonly users: readonly LdapUser[];
  /** Default dc=example,dc=test. Its first RDN must be dc=, o= or ou= (the entry the harness makes for it). */
  readonly baseDn?: string;
  /**
   * slapd's -d level. Default 'none': only what slapd logs whatever the level (startup, errors such
   * as a port in use). 'stats' logs every connection and operation (binds, searches, TLS) to
   * slapd.log, for debugging a test. Any -d level keeps slapd in the foreground.
   */
  readonly debugLevel?: string;
}

const SLAPD = '/usr/sbin/slapd';
const SLAPADD = '/usr/sbin/slapadd';
const SCHEMA_DIR = '/etc/ldap/schema';
const MODULE_DIR = '/usr/lib/ldap';
/** How long start() waits for slapd to accept a bind. */
const START_DEADLINE_MS = 15_000;
/** How long stop() waits after SIGTERM (slapd flushes the database and exits) before SIGKILL. */
const TERM_GRACE_MS = 5_000;
/** After SIGKILL the kernel ends the process at once; longer than this means something else is wrong. */
const KILL_WAIT_MS = 5_000;
/** start() retries with new ports when slapd finds one taken (freePort() releases the port it found). */
const START_ATTEMPTS = 3;
const OPERATION_TIMEOUT_MS = 10_000;

interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly error?: Error;
}

export class Slapd {
  /** ldap://127.0.0.1:PORT; StartTLS works on it (the server certificate names 127.0.0.1 and localhost). */
  readonly ldapUrl: string;
  /** ldaps://127.0.0.1:PORT2. */
  readonly ldapsUrl: string;
  /** The CA (made for this run) that signed the server certificate: trust it to reach the server over TLS. */
  readonly caPem: string;
  readonly baseDn: string;
  /** ou=people,BASE: users are uid=UID under it (inetOrgPerson, userPassword {SSHA}). */
  readonly usersDn: string;
  /** ou=groups,BASE: groups are cn=NAME under it (groupOfNames, member: the users' DNs). */
  readonly groupsDn: string;
  /** The rootdn: not subject to the access rules, for the harness and tests to change entries. */
  readonly adminDn: string;
  readonly adminPassword: string;
  readonly pid: number;
  /** slapd's stdout and stderr. */
  readonly logPath: string;

  readonly #child: ChildProcess;
  readonly #exited: Promise<Exit>;
  #stopping: Promise<void> | null = null;

  private constructor(fields: {
    ldapUrl: string;
    ldapsUrl: string;
    caPem: string;
    baseDn: string;
    adminPassword: string;
    logPath: string;
    child: ChildProcess;
    exited: Promise<Exit>;
  }) {
    this.ldapUrl = fields.ldapUrl;
    this.ldapsUrl = fields.ldapsUrl;
    this.caPem = fields.caPem;
    this.baseDn = fields.baseDn;
    this.usersDn = `ou=people,${fields.baseDn}`;
    this.groupsDn = `ou=groups,${fields.baseDn}`;
    this.adminDn = `cn=admin,${fields.baseDn}`;
    this.adminPassword = fields.adminPassword;
    this.logPath = fields.logPath;
    this.#child = fields.child;
    this.#exited = fields.exited;
    this.pid = fields.child.pid!;
  }

  /**
   * Writes a new configuration, TLS material and database into `dir` (made if missing; use a fresh
   * one: slapadd refuses entries a database there already has), loads the users and their groups,
   * starts slapd and resolves once it accepts a bind. If anything fails after slapd started, slapd
   * is stopped before the error is thrown.
   */
  static async start(dir: string, options: SlapdOptions): Promise<Slapd> {
    for (const path of [SLAPD, SLAPADD, SCHEMA_DIR, MODULE_DIR])
      if (!existsSync(path)) throw new Error(`${path} is missing: install Debian's slapd and ldap-utils`);
    const baseDn = options.baseDn ?? 'dc=example,dc=test';
    const paths = {
      conf: join(dir, 'slapd.conf'),
      data: join(dir, 'data'),
      ldif: join(dir, 'initial.ldif'),
      ca: join(dir, 'ca.pem'),
      cert: join(dir, 'server.pem'),
      key: join(dir, 'server.key'),
      log: join(dir, 'slapd.log'),
    };
    await mkdir(paths.data, { recursive: true });
    const tls = await makeTlsMaterial('LDAP');
    await writeFile(paths.ca, tls.caPem);
    await writeFile(paths.cert, tls.certPem);
    await writeFile(paths.key, tls.keyPem, { mode: 0o600 });
    await chmod(paths.key, 0o600); // writeFile's mode applies only to a file it creates
    const adminPassword = randomBytes(18).toString('base64url');
    await writeFile(paths.conf, slapdConf(baseDn, adminPassword, dir, paths));
    await writeFile(paths.ldif, initialLdif(baseDn, options.users));
    await run(SLAPADD, ['-q', '-f', paths.conf, '-l', paths.ldif]);

    const debugLevel = options.debugLevel ?? 'none';
    let lastFailure = '';
    for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
      const ldapPort = await freePort();
      let ldapsPort = await freePort();
      while (ldapsPort === ldapPort) ldapsPort = await freePort();
      const ldapUrl = `ldap://127.0.0.1:${ldapPort}`;
      const ldapsUrl = `ldaps://127.0.0.1:${ldapsPort}`;
      // The log file itself as stdout and stderr, not a pipe: nothing in this process has to drain
      // it, and what slapd wrote is there even if the test process dies.
      const logStart = existsSync(paths.log) ? statSync(paths.log).size : 0;
      const logFd = openSync(paths.log, 'a');
      let child: ChildProcess;
      try {
        // No -u/-g: slapd runs as whoever runs the tests (root in CI), and everything it opens is
        // in `dir` or world-readable. The process group stays the test's, so a Ctrl-C reaches it too.
        child = spawn(SLAPD, ['-d', debugLevel, '-h', `${ldapUrl}/ ${ldapsUrl}/`, '-f', paths.conf], {
          stdio: ['ignore', logFd, logFd],
        });
      } finally {
        closeSync(logFd);
      }
      // What the exit listener saw, read synchronously while waiting for the first bind.
      const state: { exit: Exit | null } = { exit: null };
      const exited = new Promise<Exit>((resolve) => {
        child.once('exit', (code, signal) => resolve({ code, signal }));
        child.once('error', (error) => resolve({ code: null, signal: null, error }));
      }).then((value) => {
        state.exit = value;
        return value;
      });
      if (child.pid === undefined) {
        const failed = await exited;
        throw new Error(`could not start ${SLAPD}: ${failed.error?.message ?? 'no pid'}`);
      }
      const server = new Slapd({
        ldapUrl,
        ldapsUrl,
        caPem: tls.caPem,
        baseDn,
        adminPassword,
        logPath: paths.log,
        child,
        exited,
      });
      try {
        await server.#waitUntilReady(() => state.exit);
        return server;
      } catch (error) {
        const exitedByItself = state.exit !== null;
        await server.stop();
        const log = await logTail(paths.log, logStart);
        lastFailure = `${(error as Error).message}\n--- ${paths.log} (tail) ---\n${log}`;
        // Only a port taken between freePort() and slapd's bind() is worth another try.
        if (!exitedByItself || !/Address already in use/.test(log)) break;
      }
    }
    throw new Error(`slapd did not start: ${lastFailure}`);
  }

  /** uid=UID,ou=people,BASE. */
  userDn(uid: string): string {
    return `uid=${escapeDnValue(uid)},${this.usersDn}`;
  }

  /** cn=NAME,ou=groups,BASE. */
  groupDn(name: string): string {
    return `cn=${escapeDnValue(name)},${this.groupsDn}`;
  }

  /** Replaces the user's password (as the rootdn, stored as {SSHA}). */
  async setPassword(uid: string, password: string): Promise<void> {
    await this.#asAdmin((client) =>
      client.modify(
        this.userDn(uid),
        new Change({
          operation: 'replace',
          modification: new Attribute({ type: 'userPassword', values: [ssha(password)] }),
        }),
      ),
    );
  }

  /** Adds a user and puts it into its groups (made if missing). */
  async addUser(user: LdapUser): Promise<void> {
    await this.#asAdmin((client) => client.add(this.userDn(user.uid), userAttributes(user)));
    await this.setGroups(user.uid, user.groups);
  }

  /**
   * Makes the user a member of exactly `groups`: added to the missing ones (a group not there yet
   * is made), removed from the others (a group it was the last member of is deleted: groupOfNames
   * must have a member).
   */
  async setGroups(uid: string, groups: readonly string[]): Promise<void> {
    const dn = this.userDn(uid);
    await this.#asAdmin(async (client) => {
      const wanted = new Set(groups);
      const current = await this.#groupsOf(client, dn);
      for (const group of current) {
        if (!wanted.has(group.cn)) await this.#removeMember(client, group, dn);
      }
      const have = new Set(current.map((group) => group.cn));
      for (const name of wanted) {
        if (have.has(name)) continue;
        const groupDn = this.groupDn(name);
        const exists = await client.search(groupDn, { scope: 'base', attributes: ['cn'] }).then(
          () => true,
          (error: unknown) => {
            if (error instanceof NoSuchObjectError) return false;
            throw error;
          },
        );
        if (exists) {
          await client.modify(
            groupDn,
            new Change({ operation: 'add', modification: new Attribute({ type: 'member', values: [dn] }) }),
          );
        } else {
          await client.add(groupDn, { objectClass: 'groupOfNames', cn: name, member: dn });
        }
      }
    });
  }

  /** Deletes the user's entry and takes it out of its groups (deleting a group it was the last member of). */
  async removeUser(uid: string): Promise<void> {
    const dn = this.userDn(uid);
    await this.#asAdmin(async (client) => {
      for (const group of await this.#groupsOf(client, dn)) await this.#removeMember(client, group, dn);
      await client.del(dn);
    });
  }

  /** SIGTERM, then SIGKILL if slapd is still there after a grace period; resolves once it has exited. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    // child.kill() signals the PID only while the child is unreaped: once node has reaped it the
    // PID may belong to another process, and kill() then does nothing.
    this.#child.kill('SIGTERM');
    if (await within(this.#exited, TERM_GRACE_MS)) return;
    this.#child.kill('SIGKILL');
    if (!(await within(this.#exited, KILL_WAIT_MS)))
      throw new Error(`slapd (pid ${this.pid}) did not exit ${KILL_WAIT_MS} ms after SIGKILL`);
  }

  async #waitUntilReady(exit: () => Exit | null): Promise<void> {
    const deadline = Date.now() + START_DEADLINE_MS;
    let lastError = 'no attempt';
    while (Date.now() < deadline) {
      const exited = exit();
      if (exited !== null)
        throw new Error(
          `slapd (pid ${this.pid}) exited during start: ${exited.error?.message ?? `code ${exited.code}, signal ${exited.signal}`}`,
        );
      const client = new Client({ url: this.ldapUrl, connectTimeout: 1_000, timeout: 2_000 });
      try {
        await client.bind(this.adminDn, this.adminPassword);
        return;
      } catch (error) {
        lastError = `${(error as Error).name}: ${(error as Error).message}`;
      } finally {
        await client.unbind().catch(() => {});
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(
      `slapd (pid ${this.pid}) did not accept a bind on ${this.ldapUrl} within ${START_DEADLINE_MS} ms (last: ${lastError})`,
    );
  }

  async #asAdmin<T>(operation: (client: Client) => Promise<T>): Promise<T> {
    const client = new Client({
      url: this.ldapUrl,
      connectTimeout: OPERATION_TIMEOUT_MS,
      timeout: OPERATION_TIMEOUT_MS,
    });
    try {
      await client.bind(this.adminDn, this.adminPassword);
      return await operation(client);
    } finally {
      await client.unbind().catch(() => {});
    }
  }

  /** The groups listing `memberDn`, with how many members each has. */
  async #groupsOf(client: Client, memberDn: string): Promise<{ dn: string; cn: string; members: number }[]> {
    const { searchEntries } = await client.search(this.groupsDn, {
      scope: 'one',
      filter: new EqualityFilter({ attribute: 'member', value: memberDn }),
      attributes: ['cn', 'member'],
    });
    return searchEntries.map((entry) => ({
      dn: entry.dn,
      cn: String([entry['cn']].flat()[0]),
      members: [entry['member'] ?? []].flat().length,
    }));
  }

  async #removeMember(client: Client, group: { dn: string; members: number }, memberDn: string): Promise<void> {
    if (group.members <= 1) {
      await client.del(group.dn);
      return;
    }
    await client.modify(
      group.dn,
      new Change({ operation: 'delete', modification: new Attribute({ type: 'member', values: [memberDn] }) }),
    );
  }
}

/**
 * The whole configuration as a slapd.conf (-f): simpler than a cn=config directory, and slapadd
 * and slapd read it the same way. back_mdb and dynlist are modules in Debian's build.
 */
function slapdConf(
  baseDn: string,
  adminPassword: string,
  dir: string,
  paths: { data: string; ca: string; cert: string; key: string },
): string {
  const users = `ou=people,${baseDn}`;
  const groups = `ou=groups,${baseDn}`;
  return `# Written by test/auth/support/slapd.ts for one test run.
include ${q(`${SCHEMA_DIR}/core.schema`)}
include ${q(`${SCHEMA_DIR}/cosine.schema`)}
include ${q(`${SCHEMA_DIR}/nis.schema`)}
include ${q(`${SCHEMA_DIR}/inetorgperson.schema`)}
# groupOfURLs, which the dynlist memberOf rule below names.
include ${q(`${SCHEMA_DIR}/dyngroup.schema`)}

pidfile ${q(join(dir, 'slapd.pid'))}
argsfile ${q(join(dir, 'slapd.args'))}
modulepath ${q(MODULE_DIR)}
moduleload back_mdb
moduleload dynlist

TLSCACertificateFile ${q(paths.ca)}
TLSCertificateFile ${q(paths.cert)}
TLSCertificateKeyFile ${q(paths.key)}
TLSVerifyClient never

database mdb
maxsize 104857600
suffix ${q(baseDn)}
rootdn ${q(`cn=admin,${baseDn}`)}
rootpw ${ssha(adminPassword)}
directory ${q(paths.data)}
index objectClass eq
index uid eq
index member eq

# The password: compared by a bind (anonymous auth), changed by its owner, read by nobody else.
access to attrs=userPassword
  by self write
  by anonymous auth
  by * none
# The root DSE and the schema: what a client reads to learn the server (StartTLS support, say).
access to dn.base="" by * read
access to dn.base="cn=Subschema" by * read
# Groups: readable once bound, so a user bound as itself can look up its own memberships.
access to dn.subtree=${q(groups)}
  by users read
  by * none
# A user reads its own entry; nobody else reads users (the rootdn passes every rule). Bound users
# read ou=people itself, or a search under it (for their own uid) would end in noSuchObject.
access to dn.base=${q(users)}
  by users read
  by * none
access to dn.children=${q(users)}
  by self read
  by * none
access to *
  by users read
  by * none

# memberOf on a user's entry, computed at read time from the groupOfNames listing it (unlike the
# memberof overlay, this also covers entries loaded with slapadd, which runs no overlay).
overlay dynlist
dynlist-attrset groupOfURLs memberURL member+memberOf@groupOfNames
`;
}

/** A slapd.conf argument, quoted (paths from mkdtemp have no quote or backslash, but a DN may have a space). */
function q(value: string): string {
  if (/["\\\n]/.test(value)) throw new Error(`cannot quote ${JSON.stringify(value)} for slapd.conf`);
  return `"${value}"`;
}

function initialLdif(baseDn: string, users: readonly LdapUser[]): string {
  const entries: [string, Record<string, string | readonly string[]>][] = [[baseDn, baseEntry(baseDn)]];
  const usersDn = `ou=people,${baseDn}`;
  const groupsDn = `ou=groups,${baseDn}`;
  entries.push([usersDn, { objectClass: 'organizationalUnit', ou: 'people' }]);
  entries.push([groupsDn, { objectClass: 'organizationalUnit', ou: 'groups' }]);
  const members = new Map<string, string[]>();
  for (const user of users) {
    const dn = `uid=${escapeDnValue(user.uid)},${usersDn}`;
    entries.push([dn, userAttributes(user)]);
    for (const group of new Set(user.groups)) {
      const list = members.get(group) ?? [];
      list.push(dn);
      members.set(group, list);
    }
  }
  for (const [name, list] of members)
    entries.push([`cn=${escapeDnValue(name)},${groupsDn}`, { objectClass: 'groupOfNames', cn: name, member: list }]);
  return entries.map(([dn, attributes]) => ldifEntry(dn, attributes)).join('\n');
}

/** The entry for the base DN itself, from its first RDN. */
function baseEntry(baseDn: string): Record<string, string | readonly string[]> {
  const match = /^(dc|o|ou)=([^,+\\]+)(,|$)/i.exec(baseDn);
  if (match === null) throw new Error(`baseDn ${baseDn}: its first RDN must be dc=, o= or ou= (no escapes)`);
  const value = match[2]!;
  switch (match[1]!.toLowerCase()) {
    case 'dc':
      return { objectClass: ['dcObject', 'organization'], dc: value, o: value };
    case 'o':
      return { objectClass: 'organization', o: value };
    default:
      return { objectClass: 'organizationalUnit', ou: value };
  }
}

function userAttributes(user: LdapUser): Record<string, string | string[]> {
  return {
    objectClass: 'inetOrgPerson',
    uid: user.uid,
    cn: user.uid,
    sn: user.uid,
    userPassword: ssha(user.password),
    ...(user.mail === undefined ? {} : { mail: user.mail }),
  };
}

function ldifEntry(dn: string, attributes: Record<string, string | readonly string[]>): string {
  const lines = [ldifLine('dn', dn)];
  for (const [type, values] of Object.entries(attributes))
    for (const value of typeof values === 'string' ? [values] : values) lines.push(ldifLine(type, value));
  return `${lines.join('\n')}\n`;
}

/** `type: value`, or `type:: BASE64` for a value LDIF cannot hold as is (RFC 2849 SAFE-STRING). */
function ldifLine(type: string, value: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the range is what RFC 2849 excludes
  const safe = /^(?![ :<])[\x01-\x09\x0b\x0c\x0e-\x7f]*$/.test(value) && !value.endsWith(' ');
  return safe ? `${type}: ${value}` : `${type}:: ${Buffer.from(value, 'utf8').toString('base64')}`;
}

/** An attribute value as it goes into a DN (RFC 4514, section 2.4). */
export function escapeDnValue(value: string): string {
  let out = value.replace(/[\\,+"<>;=]/g, (c) => `\\${c}`).replace(/\0/g, '\\00');
  if (out.startsWith(' ') || out.startsWith('#')) out = `\\${out}`;
  if (out.length > 1 && out.endsWith(' ') && !out.endsWith('\\ ')) out = `${out.slice(0, -1)}\\ `;
  return out;
}

/** RFC 2307-style {SSHA}: SHA-1 over the password and an 8-byte salt, then the salt, base64 (what slappasswd makes). */
export function ssha(password: string): string {
  const salt = randomBytes(8);
  const digest = createHash('sha1').update(password, 'utf8').update(salt).digest();
  return `{SSHA}${Buffer.concat([digest, salt]).toString('base64')}`;
}

function run(program: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(program, args, { timeout: 30_000 }, (error, stdout, stderr) => {
      if (error === null) resolve();
      else reject(new Error(`${program} ${args.join(' ')}: ${error.message}\n${stdout}${stderr}`));
    });
  });
}

async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true), timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

/** What slapd wrote to the log from byte `from` on (this attempt's), its last 4000 characters. */
async function logTail(path: string, from: number): Promise<string> {
  const text = await readFile(path).then(
    (bytes) => bytes.subarray(from).toString('utf8'),
    (error: Error) => `(unreadable: ${error.message})`,
  );
  return text.length > 4000 ? `...${text.slice(-4000)}` : text;
}
