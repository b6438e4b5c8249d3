import { type ChildProcess, spawn } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { CofferClient } from '../client/client.ts';
import { LoginSession } from './login-session.ts';
import { LeaseKeeper } from './lease-keeper.ts';
import { clientFrom } from './client-config.ts';
import { addClientOptions, type ClientFlags } from './client-flags.ts';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** PREFIX=DB/ROLE: an environment variable prefix, then a database role as `coffer db role put` names it. */
const CREDS_VALUE = /^([A-Za-z_][A-Za-z0-9_]*)=([a-z][a-z0-9_-]{0,63})\/([a-z][a-z0-9_-]{0,63})$/;
const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

interface WantedSecret {
  variable: string;
  name: string;
  label?: string;
  version?: number;
}

interface WantedCreds {
  prefix: string;
  db: string;
  role: string;
}

/**
 * `coffer run --env VAR=NAME --creds PREFIX=DB/ROLE ... -- CMD ARGS`: reads the secrets and gets
 * database credentials under leases, then starts CMD with them as environment variables. They are
 * written nowhere: not to disk, not to stdout, not to a log. The leases are renewed while CMD runs
 * and revoked when it exits (lease-keeper.ts).
 */
export function runCommand(): Command {
  const collect = (value: string, all: string[]): string[] => [...all, value];
  return addClientOptions(new Command('run'))
    .description('run a command with secrets and database credentials as environment variables (written nowhere)')
    .option(
      '--env <VAR=NAME>',
      'set VAR to the secret NAME (repeatable; NAME@LABEL or NAME#VERSION pick one)',
      collect,
      [] as string[],
    )
    .option(
      '--creds <PREFIX=DB/ROLE>',
      'set PREFIX_USERNAME, PREFIX_PASSWORD and PREFIX_LEASE_ID to new credentials of DB/ROLE, renewed while CMD runs and revoked when it exits (repeatable)',
      collect,
      [] as string[],
    )
    .option('--login-role <role>', 'log in first with a token (a jwt role), and keep the login fresh while CMD runs')
    .option('--login-token-file <file>', 'with --login-role: the token, read again at each login (a projected token)')
    .option(
      '--login-dir <dir>',
      "with --login-role: where the login's key, certificate and client.env go (CMD gets COFFER_* pointing there; default: a private directory removed at the end)",
    )
    .argument('<command...>', 'the command and its arguments, after --')
    .action(async (command: string[], flags: ClientFlags & RunLoginFlags & { env: string[]; creds: string[] }) => {
      const wanted = flags.env.map(parseEnv);
      const creds = flags.creds.map(parseCreds);
      if (wanted.length + creds.length === 0)
        throw new InvalidArgumentError(
          'give CMD something: --env VAR=NAME (a secret) or --creds PREFIX=DB/ROLE (a database user)',
        );
      const variables = [
        ...wanted.map((w) => w.variable),
        ...creds.flatMap((c) => ['USERNAME', 'PASSWORD', 'LEASE_ID'].map((v) => `${c.prefix}_${v}`)),
      ];
      const twice = variables.find((v, k) => variables.indexOf(v) !== k);
      if (twice !== undefined)
        throw new InvalidArgumentError(`${twice} would be set twice (by --env or --creds): give each once`);
      const session = flags.loginRole === undefined ? null : await startSession(flags);
      try {
        process.exitCode = await readAndRun(wanted, creds, command, flags, session?.session ?? null);
      } finally {
        session?.stop();
      }
    });
}

function parseEnv(pair: string): WantedSecret {
  const at = pair.indexOf('=');
  const variable = pair.slice(0, at);
  const ref = pair.slice(at + 1);
  if (at <= 0 || !ENV_NAME.test(variable) || ref === '')
    throw new Error(`--env takes VAR=NAME, e.g. DB_PASSWORD=app/db/password; "${pair}" is not that`);
  const [name, label] = ref.split('@') as [string, string | undefined];
  const [plain, version] = name.split('#') as [string, string | undefined];
  if (version !== undefined && !/^[1-9]\d*$/.test(version))
    throw new Error(`--env ${pair}: a version after # is a number`);
  return {
    variable,
    name: plain,
    ...(label === undefined ? {} : { label }),
    ...(version === undefined ? {} : { version: Number(version) }),
  };
}

function parseCreds(pair: string): WantedCreds {
  const match = CREDS_VALUE.exec(pair);
  if (match === null)
    throw new InvalidArgumentError(
      `--creds takes PREFIX=DB/ROLE, e.g. PG=main/readonly (sets PG_USERNAME, PG_PASSWORD, PG_LEASE_ID; DB and ROLE in lower case); "${pair}" is not that`,
    );
  return { prefix: match[1]!, db: match[2]!, role: match[3]! };
}

/**
 * Reads the secrets and gets the credentials, starts the command with them, renews the leases
 * while it runs, revokes them when it exits, and resolves with its exit status. A signal that
 * comes before the command starts ends it there (the leases revoked); after, it is passed on.
 */
async function readAndRun(
  wanted: readonly WantedSecret[],
  creds: readonly WantedCreds[],
  command: string[],
  flags: ClientFlags,
  session: LoginSession | null,
): Promise<number> {
  const clients = clientSource(flags, session);
  // The child may talk to Coffer itself, as the login (its files renewed in place).
  const env: NodeJS.ProcessEnv = { ...process.env, ...(session?.env ?? {}) };
  let child: ChildProcess | null = null;
  let early: NodeJS.Signals | null = null;
  const relay = (signal: NodeJS.Signals): void => {
    if (child === null) early ??= signal;
    else child.kill(signal);
  };
  for (const signal of SIGNALS) process.on(signal, relay);
  const keeper = new LeaseKeeper({
    api: () => clients.current(),
    report: (line) => process.stderr.write(`coffer run: ${line}\n`),
  });
  try {
    try {
      for (const w of wanted) {
        const reply = await clients.current().get(w.name, {
          ...(w.label === undefined ? {} : { label: w.label }),
          ...(w.version === undefined ? {} : { version: w.version }),
        });
        const value = reply.value.toString('utf8');
        reply.value.fill(0);
        // An environment variable cannot hold a NUL byte; the error spawn would throw quotes the value.
        if (value.includes('\0'))
          throw new Error(
            `--env ${w.variable}: the secret ${w.name} holds a NUL byte, which no environment variable can hold`,
          );
        env[w.variable] = value;
      }
      for (const c of creds) {
        if (early !== null) break;
        const issued = await keeper.acquire(c.prefix, c.db, c.role);
        env[`${c.prefix}_USERNAME`] = issued.username;
        env[`${c.prefix}_PASSWORD`] = issued.password;
        env[`${c.prefix}_LEASE_ID`] = issued.leaseId;
      }
    } catch (error) {
      await keeper.revokeAll();
      throw error;
    }
    if (early !== null) {
      await keeper.revokeAll();
      return statusOf(null, early);
    }
    // Nothing to renew or revoke: the client is done.
    if (creds.length === 0) clients.close();
    keeper.start();
    const [program, ...args] = command as [string, ...string[]];
    let started: ChildProcess;
    try {
      started = spawn(program, args, { env, stdio: 'inherit' });
    } catch (error) {
      // Thrown at once (a bad argument): its message may quote the environment, so only its code is told.
      await keeper.revokeAll();
      process.stderr.write(
        `coffer run: cannot start ${program}: ${(error as NodeJS.ErrnoException).code ?? 'error'}\n`,
      );
      return 127;
    }
    child = started;
    const code = await new Promise<number>((resolve) => {
      started.on('error', (error) => {
        process.stderr.write(`coffer run: cannot start ${program}: ${error.message}\n`);
        resolve(127);
      });
      started.on('exit', (exitCode, signal) => resolve(statusOf(exitCode, signal)));
    });
    await keeper.revokeAll();
    return code;
  } finally {
    for (const signal of SIGNALS) process.off(signal, relay);
    clients.close();
  }
}

/** A process's exit status as a shell reports it: its code, or 128 + the signal that ended it. */
function statusOf(exitCode: number | null, signal: NodeJS.Signals | null): number {
  return exitCode ?? (signal === null ? 1 : 128 + (osConstants.signals[signal] ?? 0));
}

/** The client to call now: with a login, one made from its current certificate (renewed in place). */
function clientSource(flags: ClientFlags, session: LoginSession | null): { current(): CofferClient; close(): void } {
  if (session === null) {
    const client = clientFrom(flags, process.env);
    return { current: () => client, close: () => client.close() };
  }
  let client: CofferClient | null = null;
  let certPem = '';
  return {
    current: () => {
      const login = session.current;
      if (client === null || login.certificatePem !== certPem) {
        client?.close();
        certPem = login.certificatePem;
        client = new CofferClient({
          addresses: session.env['COFFER_ADDR']!.split(','),
          caPem: login.caCertificatePem,
          certPem: login.certificatePem,
          keyPem: login.keyPem,
        });
      }
      return client;
    },
    close: () => client?.close(),
  };
}

interface RunLoginFlags {
  loginRole?: string;
  loginTokenFile?: string;
  loginDir?: string;
}

/** The login `coffer run --login-role` keeps fresh, and how to end it (a directory it made is removed). */
async function startSession(flags: ClientFlags & RunLoginFlags): Promise<{ session: LoginSession; stop(): void }> {
  if (flags.loginTokenFile === undefined)
    throw new Error('--login-role needs --login-token-file (the token to log in with)');
  const addr = flags.addr ?? process.env['COFFER_ADDR'] ?? '';
  const ca = flags.ca ?? process.env['COFFER_CA'] ?? '';
  if (addr === '') throw new Error('addr is not set: pass --addr or set COFFER_ADDR');
  if (ca === '') throw new Error('ca is not set: pass --ca (the cluster CA certificate) or set COFFER_CA');
  const made = flags.loginDir === undefined ? mkdtempSync(join(tmpdir(), 'coffer-login-')) : null;
  const removeMade = (): void => {
    if (made !== null) rmSync(made, { recursive: true, force: true });
  };
  const session = await LoginSession.start({
    addresses: addr
      .split(',')
      .map((a) => a.trim())
      .filter((a) => a !== ''),
    caPem: readFileSync(ca, 'utf8'),
    role: flags.loginRole!,
    tokenFile: flags.loginTokenFile,
    dir: flags.loginDir ?? made!,
    onError: (error, leftMs, permanent) =>
      process.stderr.write(
        `coffer run: renewing the login failed (${error.message}); the certificate has ${Math.max(0, Math.round(leftMs / 1000))} s left${permanent ? ': not trying again' : ', trying again'}\n`,
      ),
  }).catch((error: unknown) => {
    removeMade();
    throw error;
  });
  return {
    session,
    stop: () => {
      session.stop();
      removeMade();
    },
  };
}
