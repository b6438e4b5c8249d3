/**
 * The `coffer` command line's commands (run.ts starts it). With run.ts and the entries (main.ts, compiled-entry.ts), the only modules that read argv,
 * stdin or the environment, and that exits the process.
 */
import { Command, Option } from 'commander';
import { status as grpcStatus } from '@grpc/grpc-js';
import { ClientError } from '../client/client.ts';
import { KeyStore } from '../crypto/key-store.ts';
import {
  auditCommands,
  autolockCommand,
  caCommands,
  clusterCommands,
  identityCommands,
  keyCommands,
  policyCommands,
} from './admin-commands.ts';
import { authCommands, loginCommands } from './auth-commands.ts';
import { credsCommands, dbCommands, leaseCommands } from './db-commands.ts';
import { devCommand } from './dev.ts';
import { healthCommand } from './health-command.ts';
import { runCommand } from './run-command.ts';
import { snapshotCommands } from './snapshot-commands.ts';
import { sendUnlockKey, waitForUnlockKey } from './unlock.ts';
import { readKeyLine, readUnlockKeyFile } from './key-input.ts';
import { durationSeconds, secretCommands } from './secret-commands.ts';
import { printable } from './printable.ts';
import { addJoinOptions, addServeOptions, sanOption } from './manager-options.ts';
import { existsSync, readFileSync } from 'node:fs';
import { createKeyFile } from '../crypto/root-key.ts';
import { DataDir, isManagerDataDir } from '../manager/data-dir.ts';
import { initCluster, joinCluster } from '../server/bootstrap.ts';
import { normalizeExtraHosts } from '../server/manager-hosts.ts';
import { readNodeConfig } from '../server/node-config.ts';
import { CofferNode } from '../server/node.ts';
import { createLogger } from '../util/logger.ts';

/** The exit status of a manager whose replica stopped on an error (sysexits EX_SOFTWARE). */
const EXIT_REPLICA_FAILED = 70;
/** EX_TEMPFAIL: start me again (after a full disk had room again). */
const EXIT_RESTART = 75;
/** The exit status of a manager that learned it was removed from the cluster (sysexits EX_NOPERM). */
const EXIT_REMOVED = 77;

/** The whole command tree, built when this module loads; `runCli` parses argv with it (tests walk it). */
export const program = new Command('coffer')
  .description('Coffer: a replicated, encrypted secret store')
  .version('0.1.0')
  .showHelpAfterError()
  .enablePositionalOptions();

program
  .command('init')
  .description("create a new cluster: its first manager's data directory, CA, keys, admin identity and join token")
  .requiredOption('--data <dir>', "the new manager's data directory")
  .requiredOption('--listen <host:port>', 'where the manager will serve gRPC')
  .option('--advertise <host:port>', 'where other managers reach it (default: --listen)')
  .addOption(sanOption())
  .option('--key-file <path>', 'the key file that wraps the root key, outside the data directory (default: <data>.key)')
  .option(
    '--autolock',
    'wrap the root key with an unlock key instead of a key file; a restarted manager stays locked until given it',
  )
  .option(
    '--unlock-key-file <path>',
    'with --autolock: the unlock key to use, from this file (its text, or 32 random bytes, e.g. a Docker secret), instead of a new one',
  )
  .option('--admin-dir <dir>', 'where to write the admin client identity (default: <data>-admin)')
  .option(
    '--cert-validity-days <days>',
    'lifetime of manager certificates; renewed when a third is left',
    parseFloat,
    90,
  )
  .option(
    '--token-file <path>',
    'also write the join token to this file (mode 600), for managers that read it with --token-file',
  )
  .option(
    '--join-token-ttl <duration>',
    'how long the first join token works (e.g. 1h, 7d; default 24h)',
    durationSeconds,
  )
  .option(
    '--health-dir <dir>',
    'also write a client identity that may only check health (ca.crt, health.crt, health.key)',
  )
  .option('--recovery-key-file <path>', 'write the recovery key to this file (mode 600) instead of printing it')
  .option(
    '--if-missing',
    'do nothing (and exit 0) if --data already holds a manager: for a start command that runs on every boot',
  )
  .addOption(new Option('--output <format>', 'text or json').choices(['text', 'json']).default('text'))
  .action(
    async (options: {
      data: string;
      listen: string;
      advertise?: string;
      san?: string[];
      keyFile?: string;
      autolock?: boolean;
      adminDir?: string;
      certValidityDays: number;
      tokenFile?: string;
      healthDir?: string;
      recoveryKeyFile?: string;
      unlockKeyFile?: string;
      ifMissing?: boolean;
      output: string;
      joinTokenTtl?: number;
    }) => {
      if (options.unlockKeyFile !== undefined && options.autolock !== true)
        throw new Error('--unlock-key-file is for an autolocked cluster: add --autolock');
      if (options.ifMissing === true && isManagerDataDir(options.data)) {
        process.stderr.write(`coffer: ${options.data} already holds a manager: nothing to do\n`);
        return;
      }
      const outcome = await initCluster({
        dataDir: options.data,
        listen: options.listen,
        managerCertValidityDays: options.certValidityDays,
        ...(options.advertise === undefined ? {} : { advertise: options.advertise }),
        extraHosts: options.san ?? [],
        ...(options.keyFile === undefined ? {} : { keyFile: options.keyFile }),
        ...(options.autolock === true ? { autolock: true } : {}),
        ...(options.unlockKeyFile === undefined ? {} : { unlockKey: readUnlockKeyFile(options.unlockKeyFile) }),
        ...(options.adminDir === undefined ? {} : { adminDir: options.adminDir }),
        ...(options.tokenFile === undefined ? {} : { tokenFile: options.tokenFile }),
        ...(options.recoveryKeyFile === undefined ? {} : { recoveryKeyFile: options.recoveryKeyFile }),
        ...(options.healthDir === undefined ? {} : { healthDir: options.healthDir }),
        ...(options.joinTokenTtl === undefined ? {} : { joinTokenTtlMs: options.joinTokenTtl * 1000 }),
      });
      if (options.output === 'json') {
        process.stdout.write(`${JSON.stringify(outcome)}\n`);
        return;
      }
      process.stdout.write(
        [
          `cluster ${outcome.clusterId} created; start its first manager with: coffer server --data ${options.data}`,
          // A token handed over in a file stays out of the output (and so out of container logs).
          options.tokenFile === undefined
            ? `manager join token: ${outcome.joinToken}`
            : `manager join token written to ${options.tokenFile}`,
          `admin identity: ${outcome.adminDir}/{ca.crt,admin.crt,admin.key}`,
          outcome.keyFile === null
            ? ''
            : `key file: ${outcome.keyFile} (used if it existed, made otherwise; keep it apart from the data directory and its backups)`,
          outcome.unlockKey === null
            ? ''
            : `unlock key: ${outcome.unlockKey}\nstore the unlock key safely: it is shown once, and a restarted manager needs it`,
          outcome.recoveryKey === null
            ? `recovery key written to ${options.recoveryKeyFile}`
            : `recovery key: ${outcome.recoveryKey}\nstore the recovery key offline: it is shown once, and it opens backups (coffer snapshot restore) when every manager is lost`,
        ]
          .filter((line) => line !== '')
          .join('\n') + '\n',
      );
    },
  );

addServeOptions(
  addJoinOptions(
    program
      .command('join')
      .description('add a manager to a cluster (as a learner, promoted to voter once caught up), then serve')
      .requiredOption('--data <dir>', "the new manager's data directory (must not hold a manager yet)")
      .requiredOption('--listen <host:port>', 'where this manager serves gRPC')
      .requiredOption('--join <host:port>', 'any manager of the cluster')
      .option(
        '--key-file <path>',
        'the key file: used if it exists (e.g. a Docker secret), created otherwise (default: <data>.key)',
      ),
  ),
).action(async (options: JoinFlags & { join: string; listen: string } & SnapshotFlags) => {
  await join(options);
  await serve(options);
});

addServeOptions(
  addJoinOptions(
    program
      .command('server')
      .description(
        'run a manager (an autolocked one reads its unlock key from stdin); with --join, first join a cluster if --data holds no manager yet',
      )
      .requiredOption('--data <dir>', "the manager's data directory")
      .option('--key-file <path>', 'the key file (default: <data>.key)')
      .option(
        '--join <host:port>',
        'if --data holds no manager yet: join the cluster through this manager first (then --listen and a token are needed)',
      )
      .option(
        '--listen <host:port>',
        'where this manager serves gRPC (default: the address given at init or join); needed with --join',
      ),
    'with --join: ',
  ),
)
  .option(
    '--unlock-key-file <path>',
    'an autolocked manager: read the unlock key from this file (e.g. a Docker secret); otherwise from stdin, or else it waits for coffer unlock',
  )
  .option(
    '--force-new-cluster',
    "quorum lost for good: start a one-member cluster from this manager's data; every other member is removed, new managers join it",
  )
  .option(
    '--wait-when-removed',
    'once this manager learns it was removed from the cluster, stay up (serving nothing, health NOT_SERVING) instead of exiting with status 77',
  )
  .option(
    '--new-audit-log',
    "this manager's audit log is missing or does not verify (it will not start on it): move what is left aside and start a new log",
  )
  .action(
    async (
      options: JoinFlags & {
        join?: string;
        listen?: string;
        forceNewCluster?: boolean;
        unlockKeyFile?: string;
        newAuditLog?: boolean;
        waitWhenRemoved?: boolean;
      } & SnapshotFlags,
    ) => {
      const { join: through, listen } = options;
      if (through === undefined) {
        for (const flag of ['advertise', 'token', 'tokenFile'] as const) {
          if (options[flag] !== undefined)
            throw new Error(`--${flag === 'tokenFile' ? 'token-file' : flag} is only for joining: it needs --join`);
        }
        // The names are fixed when the certificate is first made; a later --san would be ignored.
        if (options.san !== undefined)
          throw new Error(
            "--san is only for joining: it needs --join (a manager's names are set at init or join, and kept at renewal)",
          );
      } else if (!isManagerDataDir(options.data)) {
        if (listen === undefined) throw new Error('--join needs --listen: where this manager will serve');
        await join({ ...options, join: through, listen });
      } else {
        // A later start of a joined manager (compose runs the same command on every boot): the
        // join options are not used again. Names added to the command since are not in the
        // certificate, and clients that dial them would fail the host-name check: say so.
        const named = (await readNodeConfig(options.data)).extraHosts ?? [];
        const missing = normalizeExtraHosts(options.san ?? []).filter((name) => !named.includes(name));
        if (missing.length > 0)
          process.stderr.write(
            `coffer: warning: this manager joined before; its certificate keeps the names it was made with, not --san ${missing.join(', ')}\n`,
          );
      }
      await serve(options);
    },
  );

program
  .command('keyfile')
  .description("key files, which wrap a manager's root key")
  .command('new')
  .description('make a new key file (32 random bytes, mode 600) for init or join to use, e.g. as a Docker secret')
  .argument('<path>', 'where to write it (must not exist)')
  .action((path: string) => {
    if (existsSync(path))
      throw new Error(`${path} exists: a key file is never overwritten (its cluster could not be opened without it)`);
    createKeyFile(path).fill(0);
    process.stderr.write(
      `key file ${path} written (mode 600); keep it apart from the data directory and its backups\n`,
    );
  });

program
  .command('unlock')
  .description(
    'give a locked manager on this host its unlock key (prompted, or one line on stdin); it then starts serving',
  )
  .requiredOption('--data <dir>', "the locked manager's data directory")
  .option('--unlock-key-file <path>', 'read the unlock key from this file instead')
  .action(async (options: { data: string; unlockKeyFile?: string }) => {
    const key =
      options.unlockKeyFile !== undefined
        ? readUnlockKeyFile(options.unlockKeyFile)
        : await readKeyLine('unlock key: ', 'the unlock key');
    const reply = await sendUnlockKey(options.data, key);
    if (!reply.startsWith('ok')) throw new Error(reply.replace(/^error: /, ''));
    process.stderr.write(`${printable(reply)}\n`);
  });

program.addCommand(devCommand());
program.addCommand(secretCommands());
program.addCommand(policyCommands());
program.addCommand(identityCommands());
program.addCommand(authCommands());
program.addCommand(loginCommands());
program.addCommand(dbCommands());
program.addCommand(credsCommands());
program.addCommand(leaseCommands());
program.addCommand(auditCommands());
program.addCommand(clusterCommands());
program.addCommand(caCommands());
program.addCommand(keyCommands());
program.addCommand(autolockCommand());
program.addCommand(snapshotCommands());
program.addCommand(runCommand());
program.addCommand(healthCommand());

interface JoinFlags {
  data: string;
  joinRetry?: number;
  listen?: string;
  advertise?: string;
  san?: string[];
  token?: string;
  tokenFile?: string;
  keyFile?: string;
}

/** Joins a cluster (`coffer join`, or `coffer server --join` on a first start). */
async function join(options: JoinFlags & { join: string; listen: string }): Promise<void> {
  if ((options.token === undefined) === (options.tokenFile === undefined))
    throw new Error('give the join token with --token-file (or --token, one of them)');
  if (options.token !== undefined)
    process.stderr.write(
      'coffer: warning: a join token on the command line can be read by other users of this host (ps, /proc); prefer --token-file\n',
    );
  const token = options.token ?? readTokenFile(options.tokenFile!);
  const joined = await joinCluster({
    dataDir: options.data,
    listen: options.listen,
    join: options.join,
    token,
    ...(options.advertise === undefined ? {} : { advertise: options.advertise }),
    extraHosts: options.san ?? [],
    ...(options.keyFile === undefined ? {} : { keyFile: options.keyFile }),
    retryMs: (options.joinRetry ?? 0) * 1000,
    onRetry: (error) => process.stderr.write(`coffer: cannot join yet: ${error.message}; retrying\n`),
  });
  process.stderr.write(`joined cluster ${joined.clusterId} as manager ${joined.nodeId}\n`);
}

function readTokenFile(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new Error(`cannot read the join token file ${path}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  const token = text.trim();
  if (token === '') throw new Error(`the join token file ${path} is empty`);
  return token;
}

interface SnapshotFlags {
  snapshotEvery?: number;
  snapshotTail?: number;
  metricsListen?: string;
  identityRequestsPerSecond?: number;
  identityWriteBytesPerMinute?: number;
}

async function serve(
  options: {
    data: string;
    keyFile?: string;
    listen?: string;
    forceNewCluster?: boolean;
    unlockKeyFile?: string;
    newAuditLog?: boolean;
    waitWhenRemoved?: boolean;
  } & SnapshotFlags,
): Promise<void> {
  const logger = createLogger({ component: 'coffer' });
  let unlockKey: string | undefined;
  if ((await KeyStore.read(new DataDir(options.data).keyStore)).protection === 'unlock-key') {
    if (options.unlockKeyFile !== undefined) unlockKey = readUnlockKeyFile(options.unlockKeyFile);
    else {
      // A key on stdin (or typed at a terminal); with none, wait locked for coffer unlock.
      unlockKey = await readKeyLine('unlock key: ', 'the unlock key').catch(() => undefined);
      if (unlockKey === undefined || unlockKey === '')
        unlockKey = await waitForUnlockKey(options.data, (line) => logger.info({ event: 'locked' }, line));
    }
  }
  const node = await CofferNode.start({
    dataDir: options.data,
    // Logged at fatal by the node; exit so a supervisor (compose's restart policy, systemd)
    // starts the manager again from what is on disk.
    onFatal: () => {
      process.exitCode = EXIT_REPLICA_FAILED;
      void node.stop().finally(() => process.exit(EXIT_REPLICA_FAILED));
    },
    // A full disk: the manager waited, refusing requests, until space came back; it exits so
    // its supervisor starts it again from disk (the path a kill -9 takes, and tests).
    onDiskSpaceBack: () => {
      process.exitCode = EXIT_RESTART;
      void node.stop().finally(() => process.exit(EXIT_RESTART));
    },
    // Its log says why (removed-from-cluster); a manager that can never serve again does not
    // linger looking alive, unless asked to (to be inspected).
    ...(options.waitWhenRemoved === true
      ? {}
      : {
          onRemoved: () => {
            logger.error(
              { event: 'exiting-removed' },
              `this manager was removed from the cluster: exiting (status ${EXIT_REMOVED}). Delete its data directory, or join the cluster again with a new one; --wait-when-removed keeps it up`,
            );
            process.exitCode = EXIT_REMOVED;
            void node.stop().finally(() => process.exit(EXIT_REMOVED));
          },
        }),
    ...(options.keyFile === undefined ? {} : { keyFile: options.keyFile }),
    ...(options.listen === undefined ? {} : { listen: options.listen }),
    ...(unlockKey === undefined ? {} : { unlockKey }),
    ...(options.snapshotEvery === undefined ? {} : { snapshotEveryEntries: options.snapshotEvery }),
    ...(options.snapshotTail === undefined ? {} : { snapshotTailEntries: options.snapshotTail }),
    ...(options.metricsListen === undefined ? {} : { metricsListen: options.metricsListen }),
    ...(options.identityRequestsPerSecond === undefined
      ? {}
      : { identityRequestsPerSecond: options.identityRequestsPerSecond }),
    ...(options.identityWriteBytesPerMinute === undefined
      ? {}
      : { identityWriteBytesPerMinute: options.identityWriteBytesPerMinute }),
    ...(options.forceNewCluster === true ? { forceNewCluster: true } : {}),
    ...(options.newAuditLog === true ? { newAuditLog: true } : {}),
    logger,
  });
  const stop = (signal: string): void => {
    logger.info({ event: 'stopping', signal }, 'stopping');
    void node.stop().then(() => process.exit(0));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  // Started by `coffer dev` (an IPC channel to it): stop when it goes, even by kill -9, so no
  // manager outlives the dev cluster that started it.
  if (process.channel !== undefined) process.once('disconnect', () => stop('coffer dev exited'));
}

/** Runs the command `argv` names; a failure is printed (escaped) and exits 1. */
export function runCli(argv: readonly string[]): Promise<void> {
  return program.parseAsync(argv).then(
    () => undefined,
    (error: unknown) => {
      const message =
        error instanceof ClientError
          ? `${grpcStatus[error.code] ?? error.code}: ${error.message}`
          : error instanceof Error
            ? error.message
            : String(error);
      // A server's details (and names in them) are others' text: escaped like every other.
      process.stderr.write(`coffer: ${printable(message)}\n`);
      // Exit now: a failed command must not linger on open handles.
      process.exit(1);
    },
  );
}
