import { createReadStream, readFileSync } from 'node:fs';
import type { Readable } from 'node:stream';
import { Command, InvalidArgumentError, Option } from 'commander';
import type { SecretMetadataReply } from '../client/client.ts';
import { clientFrom, print } from './client-config.ts';
import { addClientOptions, type ClientFlags } from './client-flags.ts';
import {
  IMPORT_BATCHES_IN_FLIGHT_DEFAULT,
  formatFromName,
  type ImportFailure,
  type ImportFormat,
  importSecrets,
  parseImport,
  prefixProblem,
} from './import.ts';
import { PUT_BATCH_BYTES_MAX, PUT_BATCH_ITEMS_MAX, formatBytes } from '../state/limits.ts';
import { printable } from './printable.ts';
import { progress } from './progress.ts';

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new InvalidArgumentError('a whole number is expected');
  return n;
}

/** `5m`, `2h`, `30d` or seconds. */
export function durationSeconds(value: string): number {
  const match = /^(\d+)([smhd]?)$/.exec(value);
  if (match === null) throw new InvalidArgumentError('a duration is a number with s, m, h or d (e.g. 90d)');
  return Number(match[1]) * { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[match[2] as '' | 's' | 'm' | 'h' | 'd'];
}

async function readStdin(): Promise<Buffer> {
  if (process.stdin.isTTY) process.stderr.write('value (end with Ctrl-D): ');
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const time = (ms: number): string => (ms === 0 ? '-' : new Date(ms).toISOString());

export function secretCommands(): Command {
  const secret = new Command('secret').description('read and write secrets');

  addClientOptions(secret.command('put <name>'))
    .description('store a new version; the value comes from stdin or --from-file, never from the command line')
    .option('--from-file <file>', 'read the value from this file')
    .option('--cas <version>', 'only if the secret is at this version (0: only if it does not exist)', positiveInt)
    .option('--ttl <duration>', 'expire after this long (e.g. 30d)', durationSeconds)
    .option('--versions-kept <n>', 'versions to keep for this secret', positiveInt)
    .action(
      async (
        name: string,
        flags: ClientFlags & { fromFile?: string; cas?: number; ttl?: number; versionsKept?: number },
      ) => {
        const value = flags.fromFile === undefined ? await readStdin() : readFileSync(flags.fromFile);
        const client = clientFrom(flags, process.env);
        try {
          const reply = await client.put(name, value, {
            ...(flags.cas === undefined ? {} : { cas: flags.cas }),
            ...(flags.ttl === undefined ? {} : { ttlSeconds: flags.ttl }),
            ...(flags.versionsKept === undefined ? {} : { versionsKept: flags.versionsKept }),
          });
          print(flags, reply, () => `${printable(name)}: version ${reply.version}`);
        } finally {
          value.fill(0);
          client.close();
        }
      },
    );

  addClientOptions(secret.command('get <name>'))
    .description('print a value alone on stdout (the current version unless --version or --label)')
    .option('--version <n>', 'this version', positiveInt)
    .option('--label <label>', 'the version this label points at')
    .option('--stale', 'answer from the manager asked, without confirming with the leader')
    .action(async (name: string, flags: ClientFlags & { version?: number; label?: string; stale?: boolean }) => {
      const client = clientFrom(flags, process.env);
      try {
        const reply = await client.get(name, {
          ...(flags.version === undefined ? {} : { version: flags.version }),
          ...(flags.label === undefined ? {} : { label: flags.label }),
          stale: flags.stale === true,
        });
        if (flags.output === 'json')
          print(
            flags,
            { name, version: reply.version, appliedIndex: reply.appliedIndex, value: reply.value.toString('base64') },
            () => '',
          );
        else process.stdout.write(reply.value);
      } finally {
        client.close();
      }
    });

  addClientOptions(secret.command('ls [prefix]'))
    .description('list names under a prefix (no values)')
    .option('--all', 'include deleted secrets')
    .action(async (prefix: string | undefined, flags: ClientFlags & { all?: boolean }) => {
      const client = clientFrom(flags, process.env);
      try {
        const secrets: SecretMetadataReply[] = [];
        let token = '';
        do {
          const page = await client.list(prefix ?? '', { pageToken: token, includeDeleted: flags.all === true });
          secrets.push(...page.secrets);
          token = page.nextPageToken;
        } while (token !== '');
        // The store lists in its keys' order (keyed tags of the names), not alphabetically.
        secrets.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
        // Nothing to print is an answer, but often a surprise: say why it may be empty (on stderr).
        if (secrets.length === 0 && flags.output !== 'json') {
          process.stderr.write(
            `coffer: no secrets${prefix ? ` under ${printable(prefix)}` : ''} that this identity may list (listing needs the list capability on the names, not only read)\n`,
          );
          return;
        }
        print(flags, secrets, () =>
          secrets.map((s) => `${printable(s.name)}\tv${s.currentVersion}${s.deleted ? '\t(deleted)' : ''}`).join('\n'),
        );
      } finally {
        client.close();
      }
    });

  addClientOptions(secret.command('versions <name>'))
    .description('the metadata of each kept version')
    .action(async (name: string, flags: ClientFlags) => {
      const client = clientFrom(flags, process.env);
      try {
        const reply = await client.versions(name);
        print(flags, reply, () =>
          reply.versions
            .map(
              (v) =>
                `v${v.version}\t${time(v.createdAtMs)}\t${v.destroyed ? 'destroyed' : v.expired ? 'expired' : 'live'}${v.expireAtMs !== 0 ? `\texpires ${time(v.expireAtMs)}` : ''}${v.labels.length > 0 ? `\t[${v.labels.map(printable).join(', ')}]` : ''}`,
            )
            .join('\n'),
        );
      } finally {
        client.close();
      }
    });

  const simple = (
    verb: string,
    description: string,
    run: (client: ReturnType<typeof clientFrom>, name: string) => Promise<{ version: number }>,
  ) =>
    addClientOptions(secret.command(`${verb} <name>`))
      .description(description)
      .action(async (name: string, flags: ClientFlags) => {
        const client = clientFrom(flags, process.env);
        try {
          const reply = await run(client, name);
          print(flags, reply, () => `${printable(name)}: ${verb} done`);
        } finally {
          client.close();
        }
      });
  simple('rm', 'delete (soft: undelete brings it back)', (c, n) => c.delete(n));
  simple('undelete', 'bring back a deleted secret', (c, n) => c.undelete(n));

  addClientOptions(secret.command('destroy <name>'))
    .description('wipe versions for good')
    .requiredOption('--versions <n,...>', 'the versions to destroy', (v) =>
      v.split(',').map((x) => positiveInt(x.trim())),
    )
    .action(async (name: string, flags: ClientFlags & { versions: number[] }) => {
      const client = clientFrom(flags, process.env);
      try {
        const reply = await client.destroy(name, flags.versions);
        print(
          flags,
          reply,
          () =>
            `${printable(name)}: destroyed version${flags.versions.length > 1 ? 's' : ''} ${flags.versions.join(', ')}`,
        );
      } finally {
        client.close();
      }
    });

  addClientOptions(secret.command('generate <name>'))
    .description('store a random value made by the server (it never travels in the request)')
    .option('--length <n>', 'characters', positiveInt, 32)
    .option('--charset <charset>', 'alphanumeric, hex, base64url or printable', 'alphanumeric')
    .option('--cas <version>', 'only if the secret is at this version (0: only if it does not exist)', positiveInt)
    .option('--ttl <duration>', 'expire after this long', durationSeconds)
    .action(
      async (name: string, flags: ClientFlags & { length: number; charset: string; cas?: number; ttl?: number }) => {
        const client = clientFrom(flags, process.env);
        try {
          const reply = await client.generate(name, {
            length: flags.length,
            charset: flags.charset,
            ...(flags.cas === undefined ? {} : { cas: flags.cas }),
            ...(flags.ttl === undefined ? {} : { ttlSeconds: flags.ttl }),
          });
          print(flags, reply, () => `${printable(name)}: version ${reply.version} (generated)`);
        } finally {
          client.close();
        }
      },
    );

  addClientOptions(secret.command('label <name> <label> [version]'))
    .description('point a label at a version (moving "current" back is a rollback); --remove takes a label off')
    .option('--remove', 'remove the label')
    .action(
      async (name: string, label: string, version: string | undefined, flags: ClientFlags & { remove?: boolean }) => {
        const client = clientFrom(flags, process.env);
        try {
          if (flags.remove === true) {
            print(
              flags,
              await client.unlabel(name, label),
              () => `${printable(name)}: label ${printable(label)} removed`,
            );
          } else {
            if (version === undefined) throw new Error('give the version the label points at');
            print(
              flags,
              await client.label(name, label, positiveInt(version)),
              () => `${printable(name)}: ${printable(label)} -> v${version}`,
            );
          }
        } finally {
          client.close();
        }
      },
    );
  secret.addCommand(importCommand());
  return secret;
}

/**
 * Single puts in flight at once by default (lines of a refused batch sent again one by one, or
 * every line with --batch-items 1): enough for the leader to gather many into one fsync.
 */
export const IMPORT_CONCURRENCY_DEFAULT = 32;

/** Lines in a file (for the progress bar), counted without keeping any. */
async function countLines(path: string): Promise<number> {
  let lines = 0;
  let last = 0x0a;
  for await (const chunk of createReadStream(path)) {
    const bytes = chunk as Buffer;
    for (let at = bytes.indexOf(0x0a); at >= 0; at = bytes.indexOf(0x0a, at + 1)) lines++;
    if (bytes.byteLength > 0) last = bytes[bytes.byteLength - 1]!;
    bytes.fill(0);
  }
  return last === 0x0a ? lines : lines + 1;
}

const describeFailure = (f: ImportFailure): string =>
  `line ${f.line}${f.name === null ? '' : ` "${printable(f.name)}"`}: ${
    f.kind === 'bad' ? `skipped: ${f.reason}` : `refused: ${f.code ?? 'error'}: ${f.reason}`
  }`;

/** A commander parser of whole numbers from `min` to `max`. */
function wholeNumber(min: number, max: number): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (!Number.isSafeInteger(n) || n < min || n > max) throw new InvalidArgumentError(`${min} to ${max}`);
    return n;
  };
}

function importCommand(): Command {
  const command = addClientOptions(new Command('import').argument('<file>'))
    .description(
      'store many secrets from JSON lines ({"name","value"|"value_base64","ttl_seconds","versions_kept"}) or a .env file (KEY=value); FILE - reads stdin. Bad lines are reported and skipped, the others sent. Exit 0: every line imported; 1: some line bad or refused; 2: usage',
    )
    .addOption(
      new Option('--format <format>', 'the file format (default: from the name, else the first line)').choices([
        'jsonl',
        'env',
      ]),
    )
    .option('--prefix <prefix>', 'put before every name (e.g. app/prod/: KEY becomes app/prod/KEY)')
    .option(
      '--batches <n>',
      'batches of puts in flight at once, 1 to 64 (each one Raft entry, all or none)',
      wholeNumber(1, 64),
      IMPORT_BATCHES_IN_FLIGHT_DEFAULT,
    )
    .option(
      '--batch-items <n>',
      `lines per batch, 1 to ${PUT_BATCH_ITEMS_MAX} (and at most ${formatBytes(PUT_BATCH_BYTES_MAX)} of names and values); 1: single puts`,
      wholeNumber(1, PUT_BATCH_ITEMS_MAX),
      PUT_BATCH_ITEMS_MAX,
    )
    .option(
      '--concurrency <n>',
      'single puts in flight at once, 1 to 1024: lines of a refused batch sent one by one, or every line with --batch-items 1',
      wholeNumber(1, 1024),
      IMPORT_CONCURRENCY_DEFAULT,
    )
    .option('--if-absent', 'only create: a name that exists is left alone (counted, not a failure)')
    .option('--dry-run', 'check every line; send nothing')
    // Usage errors exit 2 (1 is for lines that failed).
    .exitOverride((error) => process.exit(error.exitCode === 0 ? 0 : 2));
  return command.action(
    async (
      file: string,
      flags: ClientFlags & {
        format?: ImportFormat;
        prefix?: string;
        concurrency: number;
        batches: number;
        batchItems: number;
        ifAbsent?: boolean;
        dryRun?: boolean;
      },
    ) => {
      const usage = (message: string): never => command.error(`error: ${message}`, { exitCode: 2 });
      const prefix = flags.prefix ?? '';
      const problem = prefixProblem(prefix);
      if (problem !== null) usage(problem);
      const stdin = file === '-';
      let input: Readable;
      if (stdin) input = process.stdin;
      else {
        const stream = createReadStream(file);
        // Open errors (missing file, a directory, no permission) before anything is sent.
        const opened = await new Promise<NodeJS.ErrnoException | null>((resolve) => {
          stream.once('ready', () => resolve(null));
          stream.once('error', resolve);
        });
        if (opened !== null) usage(`cannot read ${printable(file)}: ${opened.code ?? opened.message}`);
        input = stream;
      }
      const dryRun = flags.dryRun === true;
      let client: ReturnType<typeof clientFrom> | null = null;
      if (!dryRun) {
        try {
          client = clientFrom(flags, process.env);
        } catch (error) {
          usage((error as Error).message);
        }
      }
      const json = flags.output === 'json';
      const bar = progress(dryRun ? 'checking' : 'importing', { unit: 'lines' });
      const total = !stdin && process.stderr.isTTY === true ? await countLines(file) : 0;
      const startedAt = Date.now();
      try {
        const summary = await importSecrets(
          parseImport(input, {
            format: flags.format ?? (stdin ? null : formatFromName(file)),
            prefix,
          }),
          {
            ...(client === null
              ? {}
              : {
                  put: (name, value, options) => client.put(name, value, options),
                  putBatch: (items) => client.putBatch(items),
                }),
            concurrency: flags.concurrency,
            batchesInFlight: flags.batches,
            batchItemsMax: flags.batchItems,
            ifAbsent: flags.ifAbsent === true,
            dryRun,
            onProgress: (done) => bar.update(done, total),
            onFailure: (failure) => {
              if (json) return;
              bar.clear();
              process.stderr.write(`coffer: ${describeFailure(failure)}\n`);
            },
          },
        );
        bar.end();
        const seconds = (Date.now() - startedAt) / 1000;
        const failed = summary.bad + summary.refused > 0 || summary.stoppedAtLine !== null;
        print(
          flags,
          {
            ok: !failed,
            dryRun,
            ...summary,
            seconds,
            linesPerSecond: seconds > 0 ? Math.round(summary.lines / seconds) : 0,
          },
          () =>
            [
              dryRun
                ? `dry run: ${summary.valid} secrets valid, nothing sent`
                : `imported ${summary.imported} of ${summary.valid} secrets from ${summary.lines} lines in ${seconds.toFixed(1)} s`,
              `${summary.bad} bad line${summary.bad === 1 ? '' : 's'} skipped`,
              ...(dryRun ? [] : [`${summary.refused} refused`]),
              ...(flags.ifAbsent === true ? [`${summary.existing} already existed`] : []),
              ...(summary.stoppedAtLine === null
                ? []
                : [`stopped at line ${summary.stoppedAtLine}: the cluster stayed unavailable`]),
            ].join('; '),
        );
        if (failed) process.exitCode = 1;
      } finally {
        bar.end();
        client?.close();
        if (!stdin) input.destroy();
      }
    },
  );
}
