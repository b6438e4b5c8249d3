/**
 * Options that several manager commands share: `join` and `server` both join and serve, and
 * every command that makes a manager's certificate (`init`, `join`, `server --join`, `snapshot
 * restore`) takes `--san`. Declared once here so their spelling, help and parsing cannot drift.
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import { MANAGER_EXTRA_HOSTS_MAX, hostNameProblem } from '../server/manager-hosts.ts';

/** A whole number (above 0 unless `zeroOk`), for `flag`. */
export function parsePositive(value: string, flag: string, zeroOk = false): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < (zeroOk ? 0 : 1))
    throw new InvalidArgumentError(`${flag} takes a whole number${zeroOk ? '' : ' above 0'}`);
  return n;
}

/** One more `--san` name, checked as it is read so the error names the flag and the name. */
function sanName(value: string, before: string[] | undefined): string[] {
  const problem = hostNameProblem(value);
  if (problem !== null) throw new InvalidArgumentError(problem);
  const all = before ?? [];
  if (all.length >= MANAGER_EXTRA_HOSTS_MAX)
    throw new InvalidArgumentError(`at most ${MANAGER_EXTRA_HOSTS_MAX} names: ${value} is one more`);
  return [...all, value];
}

/** `--san NAME`, repeatable (its value: the names given, or undefined); `when` prefixes the help (e.g. "with --join: "). */
export function sanOption(when = ''): Option {
  return new Option(
    '--san <name>',
    `${when}another name for this manager's certificate, a DNS name or an IP address, for clients that check host names (repeatable, up to ${MANAGER_EXTRA_HOSTS_MAX}; the advertise host, localhost and 127.0.0.1 are always named)`,
  ).argParser(sanName);
}

/** The options of joining a cluster, for `join` and `server --join`; `when` prefixes their help. */
export function addJoinOptions(command: Command, when = ''): Command {
  return command
    .option('--advertise <host:port>', `${when}where other managers reach it (default: --listen)`)
    .addOption(sanOption(when))
    .option('--token <token>', `${when}a manager join token (CFRTKN-1-...)`)
    .option('--token-file <path>', `${when}a file holding the join token (instead of --token)`)
    .option(
      '--join-retry <seconds>',
      `${when}keep trying this long while the cluster is not ready for a join (unreachable, no leader, another change in flight)`,
      (v) => parsePositive(v, '--join-retry', true),
      120,
    );
}

/** The options of running a manager, for `join` (which serves once joined) and `server`. */
export function addServeOptions(command: Command): Command {
  return command
    .option(
      '--snapshot-every <changes>',
      'snapshot after this many applied changes (an entry, or one put of a batch)',
      (v) => parsePositive(v, '--snapshot-every'),
    )
    .option('--snapshot-tail <entries>', 'entries kept behind a snapshot for slow followers', (v) =>
      parsePositive(v, '--snapshot-tail', true),
    )
    .option('--metrics-listen <host:port>', 'serve Prometheus metrics over HTTP here (GET /metrics)')
    .option(
      '--identity-requests-per-second <n>',
      'requests one client identity may make of this manager per second (0: no limit; default 5000)',
      (v) => parsePositive(v, '--identity-requests-per-second', true),
    )
    .option(
      '--identity-write-bytes-per-minute <bytes>',
      'bytes of secret values one client identity may write through this manager per minute (0: no limit; default 1 GiB)',
      (v) => parsePositive(v, '--identity-write-bytes-per-minute', true),
    );
}
