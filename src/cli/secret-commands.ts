import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import type { SecretMetadataReply } from '../client/client.ts';
import { addClientOptions, clientFrom, print, type ClientFlags } from './client-config.ts';
import { printable } from './printable.ts';

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
  return secret;
}
