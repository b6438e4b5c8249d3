import { accessSync, closeSync, constants, fsyncSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { Command } from 'commander';
import { readBackupFile, type BackupFile } from '../backup/backup-stream.ts';
import { restoreBackup } from '../server/restore.ts';
import { readKeyLine, readTextKeyFile, readUnlockKeyFile } from './key-input.ts';
import { clientFrom, print } from './client-config.ts';
import { addClientOptions, outputOption, type ClientFlags } from './client-flags.ts';
import { progress } from './progress.ts';
import { sanOption } from './manager-options.ts';

/**
 * A file written whole or not at all, as its bytes arrive: a new temporary file (mode 600) that
 * `write` appends to; `finish` fsyncs it, has it checked, renames it into place and fsyncs the
 * directory; `abandon` removes it.
 */
function durableFile(path: string): {
  write(data: Buffer): void;
  finish(check: (temporary: string) => Promise<void>): Promise<void>;
  abandon(): void;
} {
  const temporary = `${path}.partial`;
  rmSync(temporary, { force: true }); // one left by an interrupted save keeps its old mode: start afresh
  let fd: number | null = openSync(temporary, 'wx', 0o600);
  const close = (): void => {
    if (fd !== null) closeSync(fd);
    fd = null;
  };
  return {
    write(data) {
      for (let offset = 0; offset < data.byteLength; ) offset += writeSync(fd!, data, offset);
    },
    async finish(check) {
      fsyncSync(fd!);
      close();
      await check(temporary);
      renameSync(temporary, path);
      const dir = openSync(dirname(path), 'r');
      try {
        fsyncSync(dir);
      } finally {
        closeSync(dir);
      }
    },
    abandon() {
      close();
      rmSync(temporary, { force: true });
    },
  };
}

/** Reads a backup file through, checking its structure and checksums (no key: that is the restore's). */
async function checkBackupFile(path: string): Promise<BackupFile> {
  const { backup, handle } = await readBackupFile(path);
  try {
    if (backup.format === 2) for await (const _ of backup.chunks(null));
    return backup;
  } finally {
    await handle.close();
  }
}

/**
 * The key of a backup, from stdin (prompted on a terminal). The header says which keys open it,
 * so the prompt, and the error when stdin closes first (`< /dev/null`, a script), name that key
 * and the flag that gives it from a file.
 */
async function askForBackupKey(file: string): Promise<string> {
  const { backup, handle } = await readBackupFile(file);
  await handle.close();
  const keys = [
    backup.header.recovery === null ? null : { what: 'its recovery key (CFRREC-1-...)', flag: '--recovery-key-file' },
    backup.header.unlock === null
      ? null
      : { what: 'the unlock key of the cluster it was made from (CFRKEY-1-...)', flag: '--unlock-key-file' },
  ].filter((k) => k !== null);
  if (keys.length === 0) throw new Error(`the backup ${file} holds no wrapped key: nothing can open it`);
  const prompt =
    keys.length === 2
      ? 'recovery key (or unlock key): '
      : keys[0]!.flag === '--recovery-key-file'
        ? 'recovery key: '
        : 'unlock key: ';
  try {
    return await readKeyLine(prompt, 'the key');
  } catch {
    throw new Error(
      `the backup ${file} opens with ${keys.map((k) => k.what).join(' or ')}: give it with ${keys.map((k) => `${k.flag} FILE`).join(' or ')}, or as one line on stdin (a terminal is prompted for it); stdin closed before a key was given`,
    );
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
      const out = durableFile(file);
      try {
        const saved = await client.saveBackup(
          (data) => out.write(data),
          (done, total) => bar.update(done, total),
        );
        bar.end();
        let backup: BackupFile | null = null;
        await out.finish(async (temporary) => {
          backup = await checkBackupFile(temporary);
        });
        const header = (backup as BackupFile | null)!.header;
        const opens = [
          header.recovery === null ? '' : 'the recovery key',
          header.unlock === null ? '' : 'the unlock key',
        ]
          .filter((k) => k !== '')
          .join(' or ');
        print(
          flags,
          { file, bytes: saved.bytes, index: saved.index, opensWith: opens },
          () => `backup of index ${saved.index} written to ${file} (${saved.bytes} bytes); it opens with ${opens}`,
        );
      } catch (error) {
        out.abandon();
        throw error;
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
    .addOption(sanOption())
    .option('--key-file <path>', 'the key file to wrap the root key with (used if it exists; default: <data>.key)')
    .option('--autolock', 'wrap the root key with a new unlock key instead of a key file')
    .option('--recovery-key-file <path>', 'read the recovery key from this file')
    .option('--unlock-key-file <path>', 'read the unlock key from this file (a backup made by an autolocked manager)')
    .addOption(outputOption())
    .action(
      async (
        file: string,
        flags: {
          data: string;
          listen: string;
          advertise?: string;
          san?: string[];
          keyFile?: string;
          autolock?: boolean;
          recoveryKeyFile?: string;
          unlockKeyFile?: string;
          output: string;
        },
      ) => {
        if (flags.recoveryKeyFile !== undefined && flags.unlockKeyFile !== undefined)
          throw new Error('give --recovery-key-file or --unlock-key-file, not both');
        try {
          accessSync(file, constants.R_OK);
        } catch (error) {
          throw new Error(`cannot read the backup ${file}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
        }
        const text =
          flags.recoveryKeyFile !== undefined
            ? readTextKeyFile(flags.recoveryKeyFile, 'recovery key')
            : flags.unlockKeyFile !== undefined
              ? readUnlockKeyFile(flags.unlockKeyFile)
              : await askForBackupKey(file);
        const key = /^CFRKEY-/i.test(text) ? { unlockKey: text } : { recoveryKey: text };
        const bar = progress('restoring');
        const outcome = await restoreBackup({
          file,
          key,
          onProgress: (done, total) => bar.update(done, total),
          dataDir: flags.data,
          listen: flags.listen,
          ...(flags.advertise === undefined ? {} : { advertise: flags.advertise }),
          extraHosts: flags.san ?? [],
          ...(flags.keyFile === undefined ? {} : { keyFile: flags.keyFile }),
          ...(flags.autolock === true ? { autolock: true } : {}),
        });
        bar.end();
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
