import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { chown, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from '../../processes/processes.ts';

/**
 * A real PostgreSQL server (Debian's packages) on 127.0.0.1 for tests of dynamic database
 * credentials: the manager connects as an admin, creates short-lived roles with SQL templates and
 * drops them when their leases end, and the tests check with a real client that a role logs in
 * until it is revoked and is refused after. A mock would agree with the code under test; a real
 * server enforces passwords, VALID UNTIL and DROP ROLE the way production does.
 *
 * Everything (cluster, sockets, log) lives in the directory given to start(); the postmaster runs
 * in the foreground as a child of the test and is stopped by PID.
 *
 * Needs Debian's postgresql package (.ci/run installs it): initdb and postgres under
 * /usr/lib/postgresql/VERSION/bin (the newest version there is used). PostgreSQL refuses to run as
 * root, so as root the server runs as the package's `postgres` system user, which then owns the
 * directory given to start().
 */

export interface TestPostgresOptions {
  /** coffer_admin's password. Default: a new random one. */
  readonly password?: string;
}

/** The superuser the code under test connects as (made by start(), like a DBA would for the feature). */
export const ADMIN_USER = 'coffer_admin';
/** The database made by start(), owned by coffer_admin; connections go there unless told otherwise. */
export const DATABASE = 'app';
/**
 * The bootstrap superuser initdb makes. The harness's own connections (query(), roles(), the
 * readiness probe) use it, never coffer_admin: a test of the feature may change coffer_admin's
 * password (root rotation) or privileges, and the harness must still get in.
 */
const SUPERUSER = 'postgres';
/** Where Debian installs each major version: /usr/lib/postgresql/15/bin/initdb, ... */
const PG_LIB = '/usr/lib/postgresql';
/** How long initdb may take (a few seconds normally; a loaded 2-core CI machine is slower). */
const INITDB_TIMEOUT_MS = 60_000;
/** How long start() and restart() wait for the server to accept a connection. */
const START_DEADLINE_MS = 30_000;
/** After SIGINT (fast shutdown: backends are ended, a checkpoint is written), before SIGKILL. */
const FAST_SHUTDOWN_GRACE_MS = 10_000;
/** After SIGKILL the kernel ends the process at once; longer than this means something else is wrong. */
const KILL_WAIT_MS = 5_000;
/** start() retries with a new port when postgres finds one taken (freePort() releases the port it found). */
const START_ATTEMPTS = 3;
/** Connect (including authentication) and query bounds for the harness's own connections. */
const CONNECT_TIMEOUT_MS = 5_000;
const OPERATION_TIMEOUT_MS = 10_000;
/** sun_path is 108 bytes on Linux; postgres refuses a longer socket path, so say so up front. */
const MAX_SOCKET_PATH = 107;
/**
 * The first OID of objects made after initdb (FirstNormalObjectId): roles below it are the
 * bootstrap superuser and the predefined pg_* roles.
 */
const FIRST_NORMAL_OID = 16384;
/**
 * SQLSTATEs of a refused login: 28P01 a wrong password, and also an unknown role or one past its
 * VALID UNTIL (the server does not tell those apart, so no one can probe for role names); 28000 a
 * role without LOGIN or no pg_hba.conf line.
 */
const LOGIN_REFUSED = new Set(['28P01', '28000']);

interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly error?: Error;
}

/** The OS user initdb and postgres run as: the postgres system user as root, else whoever runs the tests. */
interface RunAs {
  readonly uid: number;
  readonly gid: number;
  readonly name: string;
}

/** One postmaster: start() makes the first, restart() the next ones. */
interface Server {
  readonly child: ChildProcess;
  readonly exited: Promise<Exit>;
  /** What the exit listener saw, read synchronously while waiting for the first connection. */
  readonly state: { exit: Exit | null };
}

export class TestPostgres {
  readonly host = '127.0.0.1' as const;
  readonly port: number;
  readonly adminUser = ADMIN_USER;
  readonly adminPassword: string;
  readonly database = DATABASE;
  /** postgres://coffer_admin:PASSWORD@127.0.0.1:PORT/app (the password URL-encoded). */
  readonly adminUrl: string;
  /** The major version in use ('15' on bookworm). */
  readonly version: string;
  readonly dataDir: string;
  /** Where postgres puts its Unix socket (-k): in `dir`, not /var/run/postgresql, which a test may not own. */
  readonly socketDir: string;
  /** initdb's and postgres's stdout and stderr, across restarts. */
  readonly logPath: string;

  readonly #dir: string;
  readonly #bin: string;
  readonly #runAs: RunAs | null;
  readonly #superuserPassword: string;
  #server: Server;
  /** The processes pause() stopped: the postmaster and its children then. */
  #paused: number[] = [];
  #stopping: Promise<void> | null = null;
  #stopped = false;
  readonly #killOnExit = (): void => {
    // The test process ends without stop() (a failed before(), a crash): don't leave a postmaster
    // behind. Its children notice it is gone and exit by themselves.
    if (this.running) {
      for (const pid of this.#paused) signal(pid, 'SIGCONT');
      this.#server.child.kill('SIGKILL');
    }
  };

  private constructor(fields: {
    port: number;
    adminPassword: string;
    superuserPassword: string;
    version: string;
    dir: string;
    bin: string;
    runAs: RunAs | null;
    dataDir: string;
    socketDir: string;
    logPath: string;
    server: Server;
  }) {
    this.port = fields.port;
    this.adminPassword = fields.adminPassword;
    this.adminUrl = `postgres://${ADMIN_USER}:${encodeURIComponent(fields.adminPassword)}@127.0.0.1:${fields.port}/${DATABASE}`;
    this.version = fields.version;
    this.dataDir = fields.dataDir;
    this.socketDir = fields.socketDir;
    this.logPath = fields.logPath;
    this.#dir = fields.dir;
    this.#bin = fields.bin;
    this.#runAs = fields.runAs;
    this.#superuserPassword = fields.superuserPassword;
    this.#server = fields.server;
    process.on('exit', this.#killOnExit);
  }

  /**
   * Makes a new cluster in `dir` (made if missing; use a fresh one: initdb refuses a data directory
   * that has files), starts postgres on a free port on 127.0.0.1, and once it accepts a connection
   * creates coffer_admin (LOGIN SUPERUSER, password-checked) and the database `app`. If anything
   * fails after postgres started, postgres is stopped before the error is thrown.
   */
  static async start(dir: string, options: TestPostgresOptions = {}): Promise<TestPostgres> {
    const { version, bin } = findBinaries();
    const runAs = await serverUser();
    const paths = {
      data: join(dir, 'data'),
      sockets: join(dir, 'run'),
      log: join(dir, 'postgres.log'),
      pwfile: join(dir, 'superuser.pw'),
    };
    if (join(paths.sockets, '.s.PGSQL.65535').length > MAX_SOCKET_PATH)
      throw new Error(`${dir} is too long for a Unix socket path under it: use a shorter directory (os.tmpdir())`);
    await mkdir(paths.data, { recursive: true, mode: 0o700 });
    await mkdir(paths.sockets, { recursive: true, mode: 0o700 });
    const superuserPassword = randomBytes(18).toString('base64url');
    await writeFile(paths.pwfile, `${superuserPassword}\n`, { mode: 0o600 });
    if (runAs !== null) {
      // postgres checks that it owns its data directory (and that it is 0700 or 0750); it makes its
      // socket in -k; and it must get through `dir` to reach either (mkdtemp makes `dir` 0700).
      for (const path of [dir, paths.data, paths.sockets, paths.pwfile]) await chown(path, runAs.uid, runAs.gid);
    }
    try {
      // Passwords checked from the first connection on (-A with --pwfile): no moment, and no
      // socket, where anyone gets in without one. pg_hba.conf is rewritten below anyway. -N: no
      // fsync, a test cluster does not outlive the machine.
      await run(
        join(bin, 'initdb'),
        [
          '-D',
          paths.data,
          '-U',
          SUPERUSER,
          `--pwfile=${paths.pwfile}`,
          '-A',
          'scram-sha-256',
          '-E',
          'UTF8',
          '--locale=C',
          '-N',
          '--no-instructions',
        ],
        runAs,
        dir,
      );
    } catch (error) {
      const message = (error as Error).message;
      const hint =
        runAs !== null && /Permission denied/.test(message)
          ? ` (as root it runs as ${runAs.name}, which must reach ${dir}: its parent directories need o+x)`
          : '';
      throw new Error(`initdb failed${hint}: ${message}`);
    } finally {
      await rm(paths.pwfile, { force: true });
    }
    // Only TCP on 127.0.0.1 and the harness's own socket, both with SCRAM; trust nowhere, so a
    // role's password and VALID UNTIL are what decide every login a test makes.
    await writeFile(
      join(paths.data, 'pg_hba.conf'),
      `# Written by test/db/support/postgres.ts for one test run.
# TYPE  DATABASE  USER  ADDRESS        METHOD
local   all       all                  scram-sha-256
host    all       all   127.0.0.1/32   scram-sha-256
`,
    );

    const adminPassword = options.password ?? randomBytes(18).toString('base64url');
    let lastFailure = '';
    for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
      const port = await freePort();
      const logStart = existsSync(paths.log) ? statSync(paths.log).size : 0;
      const server = spawnPostgres(bin, paths.data, paths.sockets, port, paths.log, runAs, dir);
      if (server.child.pid === undefined) {
        const failed = await server.exited;
        throw new Error(`could not start ${join(bin, 'postgres')}: ${failed.error?.message ?? 'no pid'}`);
      }
      const postgres = new TestPostgres({
        port,
        adminPassword,
        superuserPassword,
        version,
        dir,
        bin,
        runAs,
        dataDir: paths.data,
        socketDir: paths.sockets,
        logPath: paths.log,
        server,
      });
      try {
        await postgres.#waitUntilReady();
        await postgres.#asSuperuser('postgres', async (client) => {
          await client.query(
            `CREATE ROLE ${client.escapeIdentifier(ADMIN_USER)} WITH LOGIN SUPERUSER PASSWORD ${client.escapeLiteral(adminPassword)}`,
          );
          await client.query(
            `CREATE DATABASE ${client.escapeIdentifier(DATABASE)} OWNER ${client.escapeIdentifier(ADMIN_USER)}`,
          );
        });
        return postgres;
      } catch (error) {
        const exitedByItself = server.state.exit !== null;
        await postgres.stop();
        const log = await logTail(paths.log, logStart);
        lastFailure = `${(error as Error).message}\n--- ${paths.log} (tail) ---\n${log}`;
        // Only a port taken between freePort() and postgres's bind() is worth another try.
        if (!exitedByItself || !/could not bind|Address already in use/.test(log)) break;
      }
    }
    throw new Error(`postgres did not start: ${lastFailure}`);
  }

  /** The postmaster's PID (a new one after restart()). */
  get pid(): number {
    return this.#server.child.pid!;
  }

  /** Whether the postmaster is there (running or paused): false after stopServer() or stop(). */
  get running(): boolean {
    return this.#server.state.exit === null;
  }

  /**
   * A client logged in as `user` over TCP to 127.0.0.1 (SCRAM). The caller ends it. Rejects with
   * pg's DatabaseError on a refused login (code 28P01: wrong password, unknown role, past VALID
   * UNTIL; 28000: no LOGIN), or a connection error when the server is stopped or paused.
   */
  async connect(user: string, password: string, database: string = DATABASE): Promise<pg.Client> {
    const client = new pg.Client({
      host: this.host,
      port: this.port,
      user,
      password,
      database,
      ssl: false,
      connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
      query_timeout: OPERATION_TIMEOUT_MS,
    });
    // A server going away under an idle client emits 'error' on it; unhandled, that would end the
    // test process. The next query on the client fails, which is where a test sees it.
    client.on('error', () => {});
    try {
      await client.connect();
    } catch (error) {
      await client.end().catch(() => {});
      throw error;
    }
    return client;
  }

  /**
   * Whether `user` logs in with `password` and runs `SELECT 1`: false when the server refuses the
   * login (see LOGIN_REFUSED); anything else (server stopped, paused, a timeout) is thrown, so a
   * test never takes "the database is down" for "the role is gone".
   */
  async canLogin(user: string, password: string, database: string = DATABASE): Promise<boolean> {
    let client: pg.Client;
    try {
      client = await this.connect(user, password, database);
    } catch (error) {
      if (error instanceof pg.DatabaseError && error.code !== undefined && LOGIN_REFUSED.has(error.code)) return false;
      throw error;
    }
    try {
      await client.query('SELECT 1');
      return true;
    } finally {
      await client.end().catch(() => {});
    }
  }

  /**
   * Runs one statement (with $1... parameters) in `app` as the bootstrap superuser, not coffer_admin,
   * so it works whatever a test did to coffer_admin. Objects it creates are owned by `postgres`.
   */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params: readonly unknown[] = [],
  ): Promise<pg.QueryResult<R>> {
    return this.#asSuperuser(DATABASE, (client) => client.query<R>(sql, [...params]));
  }

  /**
   * The roles tests and the code under test made, sorted: every role in pg_roles but the
   * predefined pg_* roles, the bootstrap superuser and coffer_admin.
   */
  async roles(): Promise<string[]> {
    const result = await this.query<{ rolname: string }>(
      'SELECT rolname FROM pg_roles WHERE oid >= $1 AND rolname <> $2 ORDER BY rolname',
      [FIRST_NORMAL_OID, ADMIN_USER],
    );
    return result.rows.map((row) => row.rolname);
  }

  /**
   * SIGSTOP to the postmaster and every process it has (backends, checkpointer, ...): the server
   * hangs without going away. A new connection gets through the kernel's TCP handshake and then
   * waits (pg's connectionTimeoutMillis ends it), and an open connection's queries wait too, as
   * with a database host that stopped answering. resume() undoes it.
   */
  async pause(): Promise<void> {
    this.#assertRunning('pause');
    if (this.#paused.length > 0) return;
    // The postmaster first, so that it forks nothing the list below would miss.
    signal(this.pid, 'SIGSTOP');
    const children = childrenOf(this.pid);
    for (const pid of children) signal(pid, 'SIGSTOP');
    this.#paused = [this.pid, ...children];
  }

  /** SIGCONT to what pause() stopped; the server answers again at once. */
  async resume(): Promise<void> {
    const paused = this.#paused;
    this.#paused = [];
    // Children first: a resumed postmaster that found a child stopped might take it for hung.
    for (const pid of paused.slice(1)) signal(pid, 'SIGCONT');
    for (const pid of paused.slice(0, 1)) signal(pid, 'SIGCONT');
  }

  /**
   * Fast shutdown (SIGINT), keeping the data directory: connections to the port are then refused
   * (ECONNREFUSED), as with a database that is down. restart() brings it back on the same port.
   */
  async stopServer(): Promise<void> {
    await this.#shutdown(this.#server);
  }

  /**
   * Starts the server again on the same port and data directory (stopping it first if it is
   * running), and resolves once it accepts a connection. Roles, passwords and data are as they were.
   */
  async restart(): Promise<void> {
    if (this.#stopped) throw new Error('restart() after stop(): start a new TestPostgres');
    await this.#shutdown(this.#server);
    const logStart = existsSync(this.logPath) ? statSync(this.logPath).size : 0;
    this.#server = spawnPostgres(
      this.#bin,
      this.dataDir,
      this.socketDir,
      this.port,
      this.logPath,
      this.#runAs,
      this.#dir,
    );
    try {
      await this.#waitUntilReady();
    } catch (error) {
      await this.#shutdown(this.#server);
      const log = await logTail(this.logPath, logStart);
      throw new Error(`postgres did not restart: ${(error as Error).message}\n--- ${this.logPath} (tail) ---\n${log}`);
    }
  }

  /**
   * Fast shutdown (SIGINT), then SIGKILL (to the postmaster and its children) if it is still there
   * after a grace period; resolves once it has exited. Idempotent; the data directory stays (the
   * test removes `dir`).
   */
  stop(): Promise<void> {
    this.#stopped = true;
    this.#stopping ??= this.#shutdown(this.#server).finally(() => process.off('exit', this.#killOnExit));
    return this.#stopping;
  }

  async #shutdown(server: Server): Promise<void> {
    if (server.state.exit !== null) return;
    // A stopped process would keep SIGINT pending and never act on it.
    await this.resume();
    // child.kill() signals the PID only while the child is unreaped: once node has reaped it the
    // PID may belong to another process, and kill() then does nothing.
    server.child.kill('SIGINT');
    if (await within(server.exited, FAST_SHUTDOWN_GRACE_MS)) return;
    // Children of a killed postmaster notice it is gone and exit, but one busy in a query may
    // take its time: they go too.
    const children = childrenOf(server.child.pid!);
    server.child.kill('SIGKILL');
    for (const pid of children) signal(pid, 'SIGKILL');
    if (!(await within(server.exited, KILL_WAIT_MS)))
      throw new Error(`postgres (pid ${server.child.pid}) did not exit ${KILL_WAIT_MS} ms after SIGKILL`);
  }

  #assertRunning(what: string): void {
    if (!this.running) throw new Error(`${what}: postgres (pid ${this.pid}) is not running`);
  }

  async #waitUntilReady(): Promise<void> {
    const deadline = Date.now() + START_DEADLINE_MS;
    let lastError = 'no attempt';
    while (Date.now() < deadline) {
      const exited = this.#server.state.exit;
      if (exited !== null)
        throw new Error(
          `postgres (pid ${this.pid}) exited during start: ${exited.error?.message ?? `code ${exited.code}, signal ${exited.signal}`}`,
        );
      try {
        // ECONNREFUSED before it listens, 57P03 ("the database system is starting up") while it
        // recovers or starts.
        await this.#asSuperuser('postgres', (client) => client.query('SELECT 1'), 2_000);
        return;
      } catch (error) {
        const code = (error as { code?: string }).code;
        lastError = `${code === undefined ? '' : `${code} `}${(error as Error).message}`;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(
      `postgres (pid ${this.pid}) did not accept a connection on 127.0.0.1:${this.port} within ${START_DEADLINE_MS} ms (last: ${lastError})`,
    );
  }

  async #asSuperuser<T>(
    database: string,
    operation: (client: pg.Client) => Promise<T>,
    connectTimeoutMs = CONNECT_TIMEOUT_MS,
  ): Promise<T> {
    const client = new pg.Client({
      host: this.host,
      port: this.port,
      user: SUPERUSER,
      password: this.#superuserPassword,
      database,
      ssl: false,
      connectionTimeoutMillis: connectTimeoutMs,
      query_timeout: OPERATION_TIMEOUT_MS,
    });
    client.on('error', () => {});
    try {
      await client.connect();
      return await operation(client);
    } finally {
      await client.end().catch(() => {});
    }
  }
}

/** The newest PostgreSQL under /usr/lib/postgresql with both initdb and postgres. */
function findBinaries(): { version: string; bin: string } {
  const versions = existsSync(PG_LIB)
    ? readdirSync(PG_LIB)
        .filter((name) => /^\d+(\.\d+)?$/.test(name))
        .filter((name) => ['initdb', 'postgres'].every((program) => existsSync(join(PG_LIB, name, 'bin', program))))
        .sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a))
    : [];
  const version = versions[0];
  if (version === undefined)
    throw new Error(`no ${PG_LIB}/VERSION/bin/initdb and postgres: install Debian's postgresql package`);
  return { version, bin: join(PG_LIB, version, 'bin') };
}

/**
 * As root: the `postgres` system user Debian's package makes (postgres exits at once when run as
 * root). Otherwise null: the server runs as whoever runs the tests.
 */
async function serverUser(): Promise<RunAs | null> {
  if (process.getuid?.() !== 0) return null;
  // /etc/passwd, not `id`: one file read, and the package puts its user there.
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((entry) => entry.startsWith(`${SUPERUSER}:`));
  const fields = line?.split(':');
  const uid = Number(fields?.[2]);
  const gid = Number(fields?.[3]);
  if (fields === undefined || !Number.isInteger(uid) || !Number.isInteger(gid) || uid === 0)
    throw new Error(
      `running as root, and PostgreSQL refuses to: there is no ${SUPERUSER} user to run it as (Debian's postgresql package makes one)`,
    );
  return { uid, gid, name: SUPERUSER };
}

/**
 * Spawns the postmaster in the foreground. As root, node's spawn switches to the postgres user
 * itself (setgid, setgroups(0), setuid before exec): the PID is the postmaster's, with no
 * runuser or su in between to swallow SIGSTOP or turn SIGINT into SIGTERM.
 */
function spawnPostgres(
  bin: string,
  dataDir: string,
  socketDir: string,
  port: number,
  logPath: string,
  runAs: RunAs | null,
  cwd: string,
): Server {
  // The log file itself as stdout and stderr, not a pipe: nothing in this process has to drain
  // it, and what postgres wrote is there even if the test process dies.
  const logFd = openSync(logPath, 'a');
  let child: ChildProcess;
  try {
    // -h only 127.0.0.1 (no IPv6 ::1 the pg_hba.conf does not cover); -k a socket directory of
    // its own. fsync off and small buffers: a throwaway cluster on a shared 2-core machine. The
    // postmaster stays in the test's process group, so a Ctrl-C reaches it too (a fast shutdown);
    // its children each call setsid(), hence childrenOf() where they must be signalled as well.
    child = spawn(
      join(bin, 'postgres'),
      [
        '-D',
        dataDir,
        '-h',
        '127.0.0.1',
        '-p',
        String(port),
        '-k',
        socketDir,
        '-c',
        'fsync=off',
        '-c',
        'synchronous_commit=off',
        '-c',
        'full_page_writes=off',
        '-c',
        'shared_buffers=16MB',
        '-c',
        'password_encryption=scram-sha-256',
      ],
      {
        stdio: ['ignore', logFd, logFd],
        cwd,
        env: serverEnv(runAs),
        ...(runAs === null ? {} : { uid: runAs.uid, gid: runAs.gid }),
      },
    );
  } finally {
    closeSync(logFd);
  }
  const state: { exit: Exit | null } = { exit: null };
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.once('error', (error) => resolve({ code: null, signal: null, error }));
  }).then((value) => {
    state.exit = value;
    return value;
  });
  return { child, exited, state };
}

/** English messages whatever the machine's locale, and root's HOME not handed to the postgres user. */
function serverEnv(runAs: RunAs | null): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, LC_ALL: 'C' };
  // libpq settings in the environment mean nothing to the server, but keep them out of its way.
  for (const name of Object.keys(env)) if (name.startsWith('PG')) delete env[name];
  if (runAs !== null) {
    env['HOME'] = '/var/lib/postgresql';
    env['USER'] = runAs.name;
    env['LOGNAME'] = runAs.name;
  }
  return env;
}

function run(program: string, args: string[], runAs: RunAs | null, cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(
      program,
      args,
      {
        timeout: INITDB_TIMEOUT_MS,
        cwd,
        env: serverEnv(runAs),
        ...(runAs === null ? {} : { uid: runAs.uid, gid: runAs.gid }),
      },
      (error, stdout, stderr) => {
        if (error === null) return resolve();
        // error.message repeats the command line and stderr; this says them once, with how it ended.
        const how = error.killed ? `killed after ${INITDB_TIMEOUT_MS} ms` : `exit code ${error.code}`;
        reject(new Error(`${program} ${args.join(' ')}: ${how}\n${stdout}${stderr}`));
      },
    );
  });
}

/** The PIDs whose parent is `pid` (Linux /proc): the postmaster's backends and auxiliary processes. */
function childrenOf(pid: number): number[] {
  const children: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // exited meanwhile
    }
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses, so read after the last ')'.
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (ppid === pid) children.push(Number(entry));
  }
  return children;
}

/** process.kill that ignores a process already gone. */
function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
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

/** What postgres wrote to the log from byte `from` on (this attempt's), its last 4000 characters. */
async function logTail(path: string, from: number): Promise<string> {
  const text = await readFile(path).then(
    (bytes) => bytes.subarray(from).toString('utf8'),
    (error: Error) => `(unreadable: ${error.message})`,
  );
  return text.length > 4000 ? `...${text.slice(-4000)}` : text;
}
