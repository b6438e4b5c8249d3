import { closeSync, fsyncSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { Command, Option } from 'commander';
import { readBackupHeader } from '../backup/backup-file.ts';
import { restoreBackup } from '../server/restore.ts';
import { readKeyLine, readTextKeyFile, readUnlockKeyFile } from './key-input.ts';
import { addClientOptions, clientFrom, print, type ClientFlags } from './client-config.ts';
import { progress } from './progress.ts';

/** Writes a file whole or not at all: a new temporary file (mode 600), fsync, rename, fsync of the directory. */
function writeFileDurably(path: string, data: Buffer): void {
  const temporary = `${path}.partial`;
  rmSync(temporary, { force: true }); // one left by an interrupted save keeps its old mode: start afresh
  const fd = openSync(temporary, 'wx', 0o600);
  try {
    for (let offset = 0; offset < data.byteLength; ) offset += writeSync(fd, data, offset);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temporary, path);
  const dir = openSync(dirname(path), 'r');
  try {
    fsyncSync(dir);
  } finally {
    closeSync(dir);
  }
}

export function snapshotCommands(): Command {
  const snapshot = new Command('snapshot').description(
    'backups: save the whole cluster to a file, restore a new cluster from one',
  );
  addClientOptions(snapshot.command('save <file>'))
    .description(
      'a consistent, encrypted backup of every secret, version, policy and identity (opens with the recovery key, or the unlock key of an autolocked cluster)',
    )
    .action(async (file: string, flags: ClientFlags) => {
      const client = clientFrom(flags, process.env);
      const bar = progress('saving');
      try {
        const backup = await client.saveBackup((done, total) => bar.update(done, total));
        bar.end();
        writeFileDurably(file, backup.data);
        const header = readBackupHeader(backup.data).header;
        const opens = [
          header.recovery === null ? '' : 'the recovery key',
          header.unlock === null ? '' : 'the unlock key',
        ]
          .filter((k) => k !== '')
          .join(' or ');
        print(
          flags,
          { file, bytes: backup.data.byteLength, index: backup.index, opensWith: opens },
          () =>
            `backup of index ${backup.index} written to ${file} (${backup.data.byteLength} bytes); it opens with ${opens}`,
        );
      } finally {
        client.close();
      }
    });
  snapshot
    .command('restore <file>')
    .description(
      'start a new one-manager cluster from a backup (then: coffer server --data DIR; more managers join it)',
    )
    .requiredOption('--data <dir>', "the new manager's data directory (must not hold a manager)")
    .requiredOption('--listen <host:port>', 'where the new manager will serve gRPC')
    .option('--advertise <host:port>', 'where other managers reach it (default: --listen)')
    .option('--key-file <path>', 'the key file to wrap the root key with (used if it exists; default: <data>.key)')
    .option('--autolock', 'wrap the root key with a new unlock key instead of a key file')
    .option('--recovery-key-file <path>', 'read the recovery key from this file')
    .option('--unlock-key-file <path>', 'read the unlock key from this file (a backup made by an autolocked manager)')
    .addOption(new Option('--output <format>', 'text or json').choices(['text', 'json']).default('text'))
    .action(
      async (
        file: string,
        flags: {
          data: string;
          listen: string;
          advertise?: string;
          keyFile?: string;
          autolock?: boolean;
          recoveryKeyFile?: string;
          unlockKeyFile?: string;
          output: string;
        },
      ) => {
        if (flags.recoveryKeyFile !== undefined && flags.unlockKeyFile !== undefined)
          throw new Error('give --recovery-key-file or --unlock-key-file, not both');
        let bytes: Buffer;
        try {
          bytes = readFileSync(file);
        } catch (error) {
          throw new Error(`cannot read the backup ${file}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
        }
        const text =
          flags.recoveryKeyFile !== undefined
            ? readTextKeyFile(flags.recoveryKeyFile, 'recovery key')
            : flags.unlockKeyFile !== undefined
              ? readUnlockKeyFile(flags.unlockKeyFile)
              : await readKeyLine('recovery key (or unlock key): ');
        const key = /^CFRKEY-/i.test(text) ? { unlockKey: text } : { recoveryKey: text };
        const outcome = await restoreBackup({
          file: bytes,
          key,
          dataDir: flags.data,
          listen: flags.listen,
          ...(flags.advertise === undefined ? {} : { advertise: flags.advertise }),
          ...(flags.keyFile === undefined ? {} : { keyFile: flags.keyFile }),
          ...(flags.autolock === true ? { autolock: true } : {}),
        });
        print({ output: flags.output }, outcome, () =>
          [
            `restored cluster ${outcome.clusterId} as of index ${outcome.index} (${outcome.secrets} secrets, backup of ${new Date(outcome.createdAtMs).toISOString()}) into ${flags.data} as manager ${outcome.nodeId}`,
            `start it with: coffer server --data ${flags.data}; then join more managers (the backup's join token works; coffer cluster rotate-join-token makes a new one)`,
            outcome.unlockKey === null
              ? ''
              : `unlock key: ${outcome.unlockKey}\nstore it safely: it is shown once, and the restarted manager needs it`,
          ]
            .filter((line) => line !== '')
            .join('\n'),
        );
      },
    );
  return snapshot;
}
