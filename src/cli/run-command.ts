import { spawn } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command } from 'commander';
import { CofferClient } from '../client/client.ts';
import { LoginSession } from './login-session.ts';
import { clientFrom } from './client-config.ts';
import { addClientOptions, type ClientFlags } from './client-flags.ts';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * `coffer run --env VAR=NAME ... -- CMD ARGS`: reads the secrets, then starts CMD with them as
 * environment variables. They are written nowhere: not to disk, not to stdout, not to a log.
 */
export function runCommand(): Command {
  return addClientOptions(new Command('run'))
    .description('run a command with secrets as environment variables (written nowhere)')
    .requiredOption(
      '--env <VAR=NAME>',
      'set VAR to the secret NAME (repeatable; NAME@LABEL or NAME#VERSION pick one)',
      (value: string, all: string[]) => [...all, value],
      [] as string[],
    )
    .option('--login-role <role>', 'log in first with a token (a jwt role), and keep the login fresh while CMD runs')
    .option('--login-token-file <file>', 'with --login-role: the token, read again at each login (a projected token)')
    .option(
      '--login-dir <dir>',
      "with --login-role: where the login's key, certificate and client.env go (CMD gets COFFER_* pointing there; default: a private directory removed at the end)",
    )
    .argument('<command...>', 'the command and its arguments, after --')
    .action(async (command: string[], flags: ClientFlags & RunLoginFlags & { env: string[] }) => {
      const wanted = flags.env.map((pair) => {
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
      });
      const session = flags.loginRole === undefined ? null : await startSession(flags);
      try {
        process.exitCode = await readAndRun(wanted, command, flags, session?.session ?? null);
      } finally {
        session?.stop();
      }
    });
}

/** Reads the secrets, starts the command with them, and resolves with its exit status. */
async function readAndRun(
  wanted: ReadonlyArray<{ variable: string; name: string; label?: string; version?: number }>,
  command: string[],
  flags: ClientFlags,
  session: LoginSession | null,
): Promise<number> {
  const client =
    session === null
      ? clientFrom(flags, process.env)
      : new CofferClient({
          addresses: session.env['COFFER_ADDR']!.split(','),
          caPem: session.current.caCertificatePem,
          certPem: session.current.certificatePem,
          keyPem: session.current.keyPem,
        });
  // The child may talk to Coffer itself, as the login (its files renewed in place).
  const env: NodeJS.ProcessEnv = { ...process.env, ...(session?.env ?? {}) };
  try {
    for (const w of wanted) {
      const reply = await client.get(w.name, {
        ...(w.label === undefined ? {} : { label: w.label }),
        ...(w.version === undefined ? {} : { version: w.version }),
      });
      env[w.variable] = reply.value.toString('utf8');
      reply.value.fill(0);
    }
  } finally {
    client.close();
  }
  const [program, ...args] = command as [string, ...string[]];
  const child = spawn(program, args, { env, stdio: 'inherit' });
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => child.kill(signal));
  const code = await new Promise<number>((resolve) => {
    child.on('error', (error) => {
      process.stderr.write(`coffer run: cannot start ${program}: ${error.message}\n`);
      resolve(127);
    });
    child.on('exit', (exitCode, signal) =>
      resolve(exitCode ?? (signal === null ? 1 : 128 + (osConstants.signals[signal] ?? 0))),
    );
  });
  return code;
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
