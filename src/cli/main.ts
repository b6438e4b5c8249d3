/**
 * The `coffer` command line. The only module that reads argv, stdin or the environment, and
 * that exits the process.
 */
import { Command, InvalidArgumentError, Option } from 'commander';
import { status as grpcStatus } from '@grpc/grpc-js';
import { ClientError } from '../client/client.ts';
import { KeyStore } from '../crypto/key-store.ts';
import { auditCommands, clusterCommands, identityCommands, policyCommands } from './admin-commands.ts';
import { devCommand } from './dev.ts';
import { healthCommand } from './health-command.ts';
import { runCommand } from './run-command.ts';
import { secretCommands } from './secret-commands.ts';
import { createInterface } from 'node:readline';
import { initCluster, joinCluster } from '../server/bootstrap.ts';
import { CofferNode } from '../server/node.ts';
import { createLogger } from '../util/logger.ts';

const program = new Command('coffer').description('Coffer: a replicated, encrypted secret store').version('0.1.0').showHelpAfterError().enablePositionalOptions();

program
  .command('init')
  .description('create a new cluster: its first manager\'s data directory, CA, keys, admin identity and join token')
  .requiredOption('--data <dir>', 'the new manager\'s data directory')
  .requiredOption('--listen <host:port>', 'where the manager will serve gRPC')
  .option('--advertise <host:port>', 'where other managers reach it (default: --listen)')
  .option('--key-file <path>', 'the key file that wraps the root key, outside the data directory (default: <data>.key)')
  .option('--autolock', 'wrap the root key with an unlock key instead of a key file; a restarted manager stays locked until given it')
  .option('--admin-dir <dir>', 'where to write the admin client identity (default: <data>-admin)')
  .option('--cert-validity-days <days>', 'lifetime of manager certificates; renewed when a third is left', parseFloat, 90)
  .addOption(new Option('--output <format>', 'text or json').choices(['text', 'json']).default('text'))
  .action(async (options: { data: string; listen: string; advertise?: string; keyFile?: string; autolock?: boolean; adminDir?: string; certValidityDays: number; output: string }) => {
    const outcome = await initCluster({
      dataDir: options.data,
      listen: options.listen,
      managerCertValidityDays: options.certValidityDays,
      ...(options.advertise === undefined ? {} : { advertise: options.advertise }),
      ...(options.keyFile === undefined ? {} : { keyFile: options.keyFile }),
      ...(options.autolock === true ? { autolock: true } : {}),
      ...(options.adminDir === undefined ? {} : { adminDir: options.adminDir }),
    });
    if (options.output === 'json') {
      process.stdout.write(`${JSON.stringify(outcome)}\n`);
      return;
    }
    process.stdout.write(
      [
        `cluster ${outcome.clusterId} created; start its first manager with: coffer server --data ${options.data}`,
        `manager join token: ${outcome.joinToken}`,
        `admin identity: ${outcome.adminDir}/{ca.crt,admin.crt,admin.key}`,
        outcome.keyFile === null ? '' : `key file: ${outcome.keyFile} (keep it apart from the data directory and its backups)`,
        outcome.unlockKey === null ? '' : `unlock key: ${outcome.unlockKey}\nstore the unlock key safely: it is shown once, and a restarted manager needs it`,
      ]
        .filter((line) => line !== '')
        .join('\n') + '\n',
    );
  });

program
  .command('join')
  .description('add a manager to a cluster (as a learner, promoted to voter once caught up), then serve')
  .requiredOption('--data <dir>', 'the new manager\'s data directory (must not exist yet)')
  .requiredOption('--listen <host:port>', 'where this manager serves gRPC')
  .requiredOption('--join <host:port>', 'any manager of the cluster')
  .requiredOption('--token <token>', 'a manager join token (CFRTKN-1-...)')
  .option('--advertise <host:port>', 'where other managers reach it (default: --listen)')
  .option('--key-file <path>', 'the key file to create (default: <data>.key)')
  .option('--snapshot-every <entries>', 'snapshot after this many applied entries', (v) => parsePositive(v, '--snapshot-every'))
  .option('--snapshot-tail <entries>', 'entries kept behind a snapshot for slow followers', (v) => parsePositive(v, '--snapshot-tail', true))
  .action(async (options: { data: string; listen: string; join: string; token: string; advertise?: string; keyFile?: string } & SnapshotFlags) => {
    const joined = await joinCluster({
      dataDir: options.data,
      listen: options.listen,
      join: options.join,
      token: options.token,
      ...(options.advertise === undefined ? {} : { advertise: options.advertise }),
      ...(options.keyFile === undefined ? {} : { keyFile: options.keyFile }),
    });
    process.stderr.write(`joined cluster ${joined.clusterId} as manager ${joined.nodeId}\n`);
    await serve(options);
  });

program
  .command('server')
  .description('run an existing manager (an autolocked one reads its unlock key from stdin)')
  .requiredOption('--data <dir>', 'the manager\'s data directory')
  .option('--key-file <path>', 'the key file (default: <data>.key)')
  .option('--snapshot-every <entries>', 'snapshot after this many applied entries', (v) => parsePositive(v, '--snapshot-every'))
  .option('--snapshot-tail <entries>', 'entries kept behind a snapshot for slow followers', (v) => parsePositive(v, '--snapshot-tail', true))
  .action(async (options: { data: string; keyFile?: string } & SnapshotFlags) => serve(options));

program.addCommand(devCommand());
program.addCommand(secretCommands());
program.addCommand(policyCommands());
program.addCommand(identityCommands());
program.addCommand(auditCommands());
program.addCommand(clusterCommands());
program.addCommand(runCommand());
program.addCommand(healthCommand());

interface SnapshotFlags {
  snapshotEvery?: number;
  snapshotTail?: number;
}

function parsePositive(value: string, flag: string, zeroOk = false): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < (zeroOk ? 0 : 1)) throw new InvalidArgumentError(`${flag} takes a whole number${zeroOk ? '' : ' above 0'}`);
  return n;
}

async function serve(options: { data: string; keyFile?: string } & SnapshotFlags): Promise<void> {
  const logger = createLogger({ component: 'coffer' });
  let unlockKey: string | undefined;
  if ((await KeyStore.read(options.data)).protection === 'unlock-key') unlockKey = await readLine('unlock key: ');
  const node = await CofferNode.start({
    dataDir: options.data,
    ...(options.keyFile === undefined ? {} : { keyFile: options.keyFile }),
    ...(unlockKey === undefined ? {} : { unlockKey }),
    ...(options.snapshotEvery === undefined ? {} : { snapshotEveryEntries: options.snapshotEvery }),
    ...(options.snapshotTail === undefined ? {} : { snapshotTailEntries: options.snapshotTail }),
    logger,
  });
  const stop = (signal: string): void => {
    logger.info({ event: 'stopping', signal }, 'stopping');
    void node.stop().then(() => process.exit(0));
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
}

function readLine(prompt: string): Promise<string> {
  if (process.stdin.isTTY) process.stderr.write(prompt);
  const lines = createInterface({ input: process.stdin, terminal: false });
  return new Promise((resolve, reject) => {
    lines.once('line', (line) => {
      lines.close();
      resolve(line.trim());
    });
    lines.once('close', () => reject(new Error('stdin closed before the unlock key was given')));
  });
}

program.parseAsync(process.argv).catch((error: unknown) => {
  const message = error instanceof ClientError ? `${grpcStatus[error.code] ?? error.code}: ${error.message}` : error instanceof Error ? error.message : String(error);
  process.stderr.write(`coffer: ${message}\n`);
  // Exit now: a failed command must not linger on open handles.
  process.exit(1);
});
