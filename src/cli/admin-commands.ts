import { CLOCK_OFFSET_WARN_MS } from '../server/cluster-clock.ts';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import type { CofferClient } from '../client/client.ts';
import { generateRecoveryKey } from '../crypto/recovery-key.ts';
import { generateUnlockKey } from '../crypto/unlock-key.ts';
import { AUDIT_FILE, verifyAuditDir, type AuditAnchor } from '../audit/audit-log.ts';
import { identityOf, newLeafKey } from '../crypto/pki.ts';
import { durationSeconds } from './secret-commands.ts';
import { clientFrom, print } from './client-config.ts';
import { addClientOptions, type ClientFlags } from './client-flags.ts';
import { readKeyLine, readUnlockKeyFile } from './key-input.ts';
import { printable, printableJson } from './printable.ts';
import { readAuditKey } from '../server/audit-key.ts';
import { DataDir } from '../manager/data-dir.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';

type Rule = { path: string; capabilities: string[]; deny?: boolean };

const RULES_EXAMPLE = '[{"path": "app/**", "capabilities": ["read", "list"]}]';

/**
 * What `coffer policy put --help` shows after the options: a rules file that uses `**`, `*` and a
 * deny, and why each name is or is not covered (the ranking is src/state/policy.ts's).
 */
export const POLICY_PUT_HELP = `
A policy file is a JSON list of rules. A rule has a "path" glob over secret names (or sys/ paths),
"capabilities" (read, write, list, delete, admin, sudo), and "deny": true to forbid instead of
allow. In a path, * matches within one segment and ** matches across segments (any number of
them). Nothing is allowed unless a rule allows it; for each capability, the matching rule with
the most literal characters (not / or *) decides, and a deny wins a tie.

Example, rules.json:
  [
    {"path": "app/**", "capabilities": ["read", "list"]},
    {"path": "app/*/db", "capabilities": ["read", "write"]},
    {"path": "app/prod/**", "capabilities": ["read", "write"], "deny": true}
  ]

  app/**       read and list app/db, app/web/db and app/web/eu/db (any depth)
  app/*/db     read and write app/web/db, not app/web/eu/db (* stays in one segment)
  app/prod/**  nothing under app/prod/ is read or written: for app/prod/db it outranks app/*/db
               (7 literal characters to 5); listing app/prod/ stays allowed by app/**

  coffer policy put app-team --file rules.json
  coffer policy get app-team          # the rules as stored (normal form)
`;

/**
 * The rules of a policy file: a JSON list of rules, or an object with one (`{"rules": [...]}`, as
 * `policy get --output json` prints a policy). Each rule is an object with a path and a list of
 * capabilities; the managers check the rest (globs, capability names) and say what is wrong.
 */
export function policyRulesFrom(text: string, file: string): Rule[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error(`${file} is not JSON: a policy file holds a list of rules, such as ${RULES_EXAMPLE}`);
  }
  const rules =
    parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed) && 'rules' in parsed
      ? (parsed as { rules: unknown }).rules
      : parsed;
  if (!Array.isArray(rules))
    throw new Error(
      `${file} holds ${describeJson(rules)}, not a list of rules: write them as ${RULES_EXAMPLE} (or {"rules": [...]})`,
    );
  for (const [k, rule] of rules.entries()) {
    const r = rule as Partial<Record<keyof Rule, unknown>> | null;
    if (r === null || typeof r !== 'object' || Array.isArray(r))
      throw new Error(
        `rule ${k + 1} of ${file} is ${describeJson(rule)}, not an object such as ${RULES_EXAMPLE.slice(1, -1)}`,
      );
    if (typeof r.path !== 'string') throw new Error(`rule ${k + 1} of ${file} has no "path" (a glob of secret names)`);
    if (!Array.isArray(r.capabilities) || !r.capabilities.every((c) => typeof c === 'string'))
      throw new Error(`rule ${k + 1} of ${file} has no "capabilities" list (read, write, list, delete, admin, sudo)`);
    if (r.deny !== undefined && typeof r.deny !== 'boolean')
      throw new Error(`rule ${k + 1} of ${file}: "deny" is true or false`);
  }
  return rules as Rule[];
}

function describeJson(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

export function policyCommands(): Command {
  const policy = new Command('policy').description('manage policies (rules of path globs and capabilities)');
  addClientOptions(policy.command('put <name>'))
    .description('create or replace a policy from a JSON file of rules (an example follows the options)')
    .requiredOption('--file <file>', 'the rules, as JSON (- for stdin)')
    .addHelpText('after', POLICY_PUT_HELP)
    .action(async (name: string, flags: ClientFlags & { file: string }) => {
      const rules = policyRulesFrom(readFileSync(flags.file === '-' ? 0 : flags.file, 'utf8'), flags.file);
      const client = clientFrom(flags, process.env);
      try {
        print(flags, await client.putPolicy(name, rules), () => `policy ${printable(name)}: ${rules.length} rule(s)`);
      } finally {
        client.close();
      }
    });
  addClientOptions(policy.command('get <name>'))
    .description('print the rules of a policy (the JSON that policy put --file takes)')
    .action(async (name: string, flags: ClientFlags) => {
      const client = clientFrom(flags, process.env);
      try {
        const reply = await client.getPolicy(name);
        print(flags, reply, () => printableJson(JSON.stringify(reply.rules, null, 2)));
      } finally {
        client.close();
      }
    });
  addClientOptions(policy.command('ls'))
    .description('list the policies with their number of rules (the built-in root policy first)')
    .action(async (flags: ClientFlags) => {
      const client = clientFrom(flags, process.env);
      try {
        const reply = await client.listPolicies();
        print(flags, reply.policies, () =>
          reply.policies.map((p) => `${printable(p.name)}\t${p.rules.length} rule(s)`).join('\n'),
        );
      } finally {
        client.close();
      }
    });
  addClientOptions(policy.command('rm <name>'))
    .description('remove a policy; identities bound to it lose what it allowed')
    .action(async (name: string, flags: ClientFlags) => {
      const client = clientFrom(flags, process.env);
      try {
        print(flags, await client.removePolicy(name), () => `policy ${printable(name)} removed`);
      } finally {
        client.close();
      }
    });
  return policy;
}

export function identityCommands(): Command {
  const identity = new Command('identity').description('client identities: certificates bound to policies');
  addClientOptions(identity.command('issue <name>'))
    .description(
      'make a key here and have the cluster certify it; writes ca.crt, NAME.crt, NAME.key and client.env to --out',
    )
    .option(
      '--policy <policy>',
      'a policy to bind (repeatable)',
      (value: string, all: string[]) => [...all, value],
      [] as string[],
    )
    .requiredOption('--out <dir>', 'where to write the identity')
    .option('--validity-days <days>', 'certificate lifetime (default 365)', (v) => Number(v))
    .option(
      '--reissue',
      'the identity exists: replace its policies and add a new key (needs the right to grant its policies)',
    )
    .action(
      async (
        name: string,
        flags: ClientFlags & { policy: string[]; out: string; validityDays?: number; reissue?: boolean },
      ) => {
        const key = newLeafKey();
        const client = clientFrom(flags, process.env);
        try {
          const issued = await client.issueIdentity(name, flags.policy, key.publicPem, flags.validityDays ?? 0, {
            reissue: flags.reissue === true,
          });
          writeIdentityDir(flags.out, name, issued, key.privatePem, flags.addr ?? process.env['COFFER_ADDR'] ?? '');
          print(
            flags,
            { name, serial: issued.serial, notAfterMs: issued.notAfterMs, dir: flags.out },
            () =>
              `identity ${printable(name)} issued (serial ${printable(issued.serial)}, until ${new Date(issued.notAfterMs).toISOString()}) in ${printable(flags.out)}`,
          );
        } finally {
          client.close();
        }
      },
    );
  addClientOptions(identity.command('renew'))
    .description(
      'a new key and certificate for the identity you are (after coffer ca rotate, or before yours expires); writes them to --out',
    )
    .requiredOption(
      '--out <dir>',
      'where to write ca.crt, NAME.crt, NAME.key and client.env (may be the current directory of the identity)',
    )
    .option('--validity-days <days>', 'certificate lifetime (default 365)', (v) => Number(v))
    .action(async (flags: ClientFlags & { out: string; validityDays?: number }) => {
      const key = newLeafKey();
      const client = clientFrom(flags, process.env);
      try {
        const issued = await client.renewIdentity(key.publicPem, flags.validityDays ?? 0);
        const name = identityOf(issued.certificatePem).id;
        writeIdentityDir(flags.out, name, issued, key.privatePem, flags.addr ?? process.env['COFFER_ADDR'] ?? '');
        print(
          flags,
          { name, serial: issued.serial, notAfterMs: issued.notAfterMs, dir: flags.out },
          () =>
            `identity ${printable(name)} renewed (serial ${printable(issued.serial)}, until ${new Date(issued.notAfterMs).toISOString()}) in ${printable(flags.out)}; its older certificates keep working until revoked or their CA is retired`,
        );
      } finally {
        client.close();
      }
    });
  addClientOptions(identity.command('revoke <name>'))
    .description('refuse every certificate of this identity, on every manager')
    .action(async (name: string, flags: ClientFlags) => {
      const client = clientFrom(flags, process.env);
      try {
        print(flags, await client.revokeIdentity(name), () => `identity ${printable(name)} revoked`);
      } finally {
        client.close();
      }
    });
  addClientOptions(identity.command('forget <name>'))
    .description('forget a revoked login identity (ROLE:SUBJECT), so its subject may log in again')
    .action(async (name: string, flags: ClientFlags) => {
      print(
        flags,
        await withClient(flags, (c) => c.forgetIdentity(name)),
        () => `identity ${printable(name)} forgotten`,
      );
    });
  addClientOptions(identity.command('ls'))
    .description('list the identities you administer: policies, and live certificates or revoked')
    .action(async (flags: ClientFlags) => {
      const client = clientFrom(flags, process.env);
      try {
        const reply = await client.listIdentities();
        print(flags, reply.identities, () =>
          reply.identities
            .map(
              (i) =>
                `${printable(i.name)}\t${i.policies.map(printable).join(',') || '-'}\t${i.revoked ? 'revoked' : `${i.certificates} certificate(s)`}`,
            )
            .join('\n'),
        );
      } finally {
        client.close();
      }
    });
  return identity;
}

/** An identity's files: the trusted CAs, its certificate and key (mode 600), and a client.env for them. */
export function writeIdentityDir(
  dir: string,
  name: string,
  issued: { caCertificatePem: string; certificatePem: string },
  keyPem: string,
  addr: string,
): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, 'ca.crt'), issued.caCertificatePem);
  writeFileSync(join(dir, `${name}.crt`), issued.certificatePem);
  writeFileSync(join(dir, `${name}.key`), keyPem, { mode: 0o600 });
  writeFileSync(
    join(dir, 'client.env'),
    `COFFER_ADDR=${addr}\nCOFFER_CA=${join(dir, 'ca.crt')}\nCOFFER_CERT=${join(dir, `${name}.crt`)}\nCOFFER_KEY=${join(dir, `${name}.key`)}\n`,
  );
}

/** The cluster CA: rotate it (a new CA, cross-signed) and retire the old one once everyone moved. */
export function caCommands(): Command {
  const ca = new Command('ca').description('the cluster CA that certifies managers and clients');
  addClientOptions(ca.command('rotate'))
    .description(
      'a new CA, cross-signed by the active one: managers move to it at once; then each client runs coffer identity renew, then coffer ca retire',
    )
    .option('--ca-out <path>', 'write every trusted CA certificate (the new one first) here: the CA file for clients')
    .action(async (flags: ClientFlags & { caOut?: string }) => {
      const reply = await withClient(flags, (c) => c.rotateCa());
      if (flags.caOut !== undefined) writeFileSync(flags.caOut, reply.caCertificatesPem);
      print(
        flags,
        { generation: reply.generation, ...(flags.caOut === undefined ? {} : { caOut: flags.caOut }) },
        () =>
          `CA generation ${reply.generation} is active; the one before stays trusted until coffer ca retire${flags.caOut === undefined ? '' : `; CA file written to ${flags.caOut}`}`,
      );
    });
  addClientOptions(ca.command('retire'))
    .description('stop trusting the CA the last rotation replaced: certificates only it signed stop working')
    .option('--force', 'retire even though some identities have no certificate of the new CA (they are cut off)')
    .action(async (flags: ClientFlags & { force?: boolean }) => {
      const reply = await withClient(flags, (c) => c.retireCa({ force: flags.force === true }));
      print(
        flags,
        reply,
        () =>
          `CA generation ${reply.retiredGeneration} retired${reply.identitiesCutOff.length === 0 ? '' : `; cut off: ${reply.identitiesCutOff.map(printable).join(', ')}`}`,
      );
    });
  return ca;
}

/** `coffer audit tail` as text: one line per record, its fields (written by whoever made the request) escaped, tab-separated. */
export function formatAuditTail(records: ReadonlyArray<Record<string, unknown>>): string {
  return records
    .map((r) =>
      ['time', 'identity', 'method', 'target', 'outcome', 'code'].map((field) => printable(r[field] ?? '')).join('\t'),
    )
    .join('\n');
}

/** `--anchor SEQ:HASH`: a record of the chain the cluster knows (see AuditAnchor). */
function parseAnchor(value: string): AuditAnchor {
  const match = /^(\d+):([0-9a-f]{64})$/.exec(value);
  if (match === null) throw new InvalidArgumentError('an anchor is SEQ:HASH, a record number and its 64 hex hash');
  return { seq: Number(match[1]), hash: match[2]! };
}

export function auditCommands(): Command {
  const audit = new Command('audit').description('the audit log of a manager');
  addClientOptions(audit.command('tail'))
    .description(
      "the last records of the manager asked's audit log: time, identity, method, target, outcome, status (--output json: every field, and timeMs)",
    )
    .option('-n, --count <n>', 'records', (v) => Number(v), 20)
    .action(async (flags: ClientFlags & { count: number }) => {
      const client = clientFrom(flags, process.env);
      try {
        const reply = await client.auditTail(flags.count);
        print(flags, reply.records, () => formatAuditTail(reply.records));
      } finally {
        client.close();
      }
    });
  addClientOptions(audit.command('verify'))
    .description(
      "check the audit chain: of the manager asked; or here, offline, of a manager's data directory (--data), or of a copy of its audit directory (--dir, with --data for the key)",
    )
    .option(
      '--data <dir>',
      "a manager's data directory, running or not: its key store holds the audit key; its audit log is checked unless --dir",
    )
    .option(
      '--dir <dir>',
      "with --data: check this copy of the manager's audit directory (audit.log, audit.head) instead",
    )
    .option('--key-file <path>', "with --data: the manager's key file (default: <data>.key)")
    .option(
      '--unlock-key-file <path>',
      'with --data, an autolocked manager: its unlock key, from this file (otherwise it is read from stdin)',
    )
    .option(
      '--anchor <seq:hash>',
      'with --data: a record the cluster anchored for this manager; the log must reach it and hold it',
      parseAnchor,
    )
    .action(
      async (
        flags: ClientFlags & {
          data?: string;
          dir?: string;
          keyFile?: string;
          unlockKeyFile?: string;
          anchor?: AuditAnchor;
        },
      ) => {
        let report: { ok: boolean; records: number; line: number; problem: string; anchor?: string };
        if (flags.data !== undefined) {
          const data = new DataDir(flags.data);
          // The key is read from the key store without starting the manager (nothing is written).
          const key = await readAuditKey(data.root, {
            keyFile: flags.keyFile ?? data.defaultKeyFile,
            unlockKey: () =>
              flags.unlockKeyFile !== undefined
                ? Promise.resolve(readUnlockKeyFile(flags.unlockKeyFile))
                : readKeyLine('unlock key: ', 'the unlock key'),
          });
          try {
            const r = await verifyAuditDir(flags.dir ?? data.audit, key, flags.anchor ?? null);
            report = {
              ok: r.ok,
              records: r.records,
              line: r.firstBroken?.line ?? 0,
              problem: r.firstBroken?.problem ?? '',
            };
          } finally {
            key.fill(0);
          }
        } else {
          if (flags.dir !== undefined)
            throw new Error(
              `--dir needs --data MANAGER_DATA_DIR: the chain is keyed, and the key is in that manager's key store (a copied ${AUDIT_FILE} cannot be checked without it)`,
            );
          for (const flag of ['keyFile', 'unlockKeyFile', 'anchor'] as const) {
            if (flags[flag] !== undefined)
              throw new Error(
                `--${flag.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} is for a check here, offline: it needs --data`,
              );
          }
          const client = clientFrom(flags, process.env);
          try {
            const r = await client.auditVerify();
            report = {
              ok: r.ok,
              records: r.records,
              line: r.firstBrokenLine,
              problem: r.problem,
              ...(r.anchorHash === '' ? {} : { anchor: `${r.anchorSeq}:${r.anchorHash}` }),
            };
          } finally {
            client.close();
          }
        }
        const anchored =
          report.anchor === undefined
            ? ''
            : ` (checked against the cluster's anchor ${report.anchor}; keep it for an offline check with --anchor)`;
        print(flags, report, () =>
          report.ok
            ? `audit log intact: ${report.records} records${anchored}`
            : `audit log broken${report.line === 0 ? '' : ` at line ${report.line}`}: ${printable(report.problem)}${anchored}`,
        );
        if (!report.ok) process.exitCode = 3;
      },
    );
  return audit;
}

export interface MemberStatusReply {
  nodeId: number;
  address: string;
  role: string;
  healthy: boolean;
  matchIndex: number;
  lag: number;
  held: boolean;
}

function positiveInteger(value: string, flag: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`${flag} is a whole number of at least 1`);
  return n;
}

function parseNodeId(value: string): number {
  const id = Number(value);
  if (!Number.isSafeInteger(id) || id <= 0)
    throw new InvalidArgumentError(
      'a manager is named by its node id, a whole number above 0 (see coffer cluster status)',
    );
  return id;
}

export async function withClient<T>(flags: ClientFlags, run: (client: CofferClient) => Promise<T>): Promise<T> {
  const client = clientFrom(flags, process.env);
  try {
    return await run(client);
  } finally {
    client.close();
  }
}

/** The members table, from the leader's view when the manager asked is not the leader. */
async function clusterStatusText(flags: ClientFlags, s: Record<string, unknown>): Promise<string> {
  let members = s.members as MemberStatusReply[];
  let view = `manager ${String(s.nodeId)}`;
  if (s.progressKnown !== true) {
    const leader = members.find((m) => m.role === 'leader');
    if (leader !== undefined && leader.address !== '') {
      try {
        const fromLeader = await withClient({ ...flags, addr: leader.address }, (c) => c.clusterStatus());
        members = fromLeader.members as MemberStatusReply[];
        view = `the leader, manager ${leader.nodeId}`;
      } catch {
        view += ' (the leader did not answer: health and lag unknown)';
      }
    }
  }
  // Each member's own view (term, indexes, certificate); a locked or stopped one does not answer.
  const own = await Promise.all(
    members.map((m) =>
      m.address === ''
        ? Promise.resolve(null)
        : withClient({ ...flags, addr: m.address }, (c) => c.clusterStatus()).catch(() => null),
    ),
  );
  const keys = await withClient(flags, (c) => c.keyStatus()).catch(() => null);
  const expiry = new Date(Number(s.certificateNotAfterMs)).toISOString();
  return [
    `manager ${String(s.nodeId)}: ${printable(s.role)}, term ${String(s.term)}, leader ${String(s.leaderId)}, commit ${String(s.commitIndex)}, applied ${String(s.appliedIndex)}, unlocked`,
    keys === null
      ? `keyring term ${String(s.keyringTerm)}`
      : `keyring term ${keys.activeTerm}, rotated ${new Date(keys.activeCreatedAtMs).toISOString()}; root key generation ${keys.rootGeneration}; autolock ${keys.protection === 'unlock-key' ? 'on' : 'off'}; recovery key ${keys.hasRecoveryKey ? 'set' : 'NOT SET (coffer key rotate-recovery)'}`,
    `certificate ${printable(s.certificateSerial)} valid until ${expiry}`,
    ...(Math.abs(Number(s.clockOffsetMs ?? 0)) >= CLOCK_OFFSET_WARN_MS
      ? [
          `host clock ${hostClock(Number(s.clockOffsetMs))} from the cluster's time (the median of the members' clocks, which this manager uses): fix its time source (NTP)`,
        ]
      : []),
    `members (health and lag as seen by ${view}):`,
    ...membersTable(members, own),
  ].join('\n');
}

/**
 * The members table of `coffer cluster status`: a header and a row per member, every column as
 * wide as its widest cell, so each cell starts under its header whatever the node ids' lengths.
 * One cell per column: a cell holding several values would not line up under several headers.
 * `own[k]` is member k's own Cluster.Status reply (term, indexes, certificate), null if none came.
 */
export function membersTable(
  members: readonly MemberStatusReply[],
  own: ReadonlyArray<Record<string, unknown> | null | undefined>,
): string[] {
  const day = (ms: unknown) => new Date(Number(ms)).toISOString().slice(0, 10);
  const rows = members.map((m, k) => {
    const o = own[k];
    return [
      String(m.nodeId),
      printable(m.address),
      printable(m.role) + (m.held ? ' (held)' : ''),
      m.healthy ? 'healthy' : 'unreachable',
      String(m.matchIndex),
      String(m.lag),
      ...(o === null || o === undefined
        ? ['-', '-', '-', 'no answer (down or locked)']
        : [
            String(o.term),
            `${String(o.commitIndex)}/${String(o.appliedIndex)}`,
            hostClock(Number(o.clockOffsetMs ?? 0)),
            day(o.certificateNotAfterMs),
          ]),
    ];
  });
  const header = [
    'NODE',
    'ADDRESS',
    'ROLE',
    'HEALTH',
    'MATCH',
    'LAG',
    'TERM',
    'COMMIT/APPLIED',
    'HOST-CLOCK',
    'CERT-EXPIRES',
  ];
  const widths = header.map((h, k) => Math.max(h.length, ...rows.map((r) => r[k]!.length)));
  const line = (cells: string[]) =>
    cells
      .map((c, k) => c.padEnd(widths[k]!))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

/**
 * A member's host clock against the cluster's time: "in step" within CLOCK_OFFSET_WARN_MS, else how
 * far off (the member itself reads the cluster's time: `offsetMs` is what it adds to its clock).
 */
export function hostClock(offsetMs: number): string {
  if (!Number.isFinite(offsetMs) || Math.abs(offsetMs) < CLOCK_OFFSET_WARN_MS) return 'in step';
  const seconds = -offsetMs / 1000;
  return `${seconds > 0 ? '+' : ''}${seconds.toFixed(1)} s off`;
}

export function clusterCommands(): Command {
  const cluster = new Command('cluster').description("the cluster's managers: status, membership, leadership");
  addClientOptions(cluster.command('status'))
    .description("this manager's view, and every member with its role, health and lag")
    .action(async (flags: ClientFlags) => {
      const s = await withClient(flags, (c) => c.clusterStatus());
      const text = flags.output === 'json' ? '' : await clusterStatusText(flags, s);
      print(flags, s, () => text);
    });
  addClientOptions(cluster.command('transfer-leader [node]'))
    .description('hand leadership to a voter (default: the most caught-up one); waits until it leads')
    .action(async (node: string | undefined, flags: ClientFlags) => {
      const reply = await withClient(flags, (c) => c.transferLeader(node === undefined ? 0 : parseNodeId(node)));
      print(flags, reply, () => `manager ${reply.leaderId} leads`);
    });
  addClientOptions(cluster.command('rotate-join-token'))
    .description('a new manager join token; the old one stops working on every manager at once')
    .option('--ttl <duration>', 'how long it works (e.g. 1h, 7d; default 24h, at most 365d)', durationSeconds)
    .option('--uses <n>', 'how many managers may join with it (default: any number until it expires)', (v) =>
      positiveInteger(v, '--uses'),
    )
    .option(
      '--token-file <path>',
      'write the token to this file (mode 600, replacing it whole, e.g. the file managers join with) instead of printing it',
    )
    .action(async (flags: ClientFlags & { ttl?: number; uses?: number; tokenFile?: string }) => {
      const reply = await withClient(flags, (c) =>
        c.rotateJoinToken({
          ...(flags.ttl === undefined ? {} : { ttlSeconds: flags.ttl }),
          ...(flags.uses === undefined ? {} : { uses: flags.uses }),
        }),
      );
      const until = new Date(reply.expiresAtMs).toISOString();
      if (flags.tokenFile !== undefined) {
        // Replaced whole, by a rename: managers read this file when they join (compose's
        // /shared/join-token), and one must never read half a token.
        await writeFileAtomic(flags.tokenFile, `${reply.token}\n`, 0o600);
        print(
          flags,
          { tokenFile: flags.tokenFile, expiresAtMs: reply.expiresAtMs },
          () =>
            `manager join token written to ${flags.tokenFile} (works until ${until}${flags.uses === undefined ? '' : ` for ${flags.uses} join(s)`})`,
        );
        return;
      }
      print(
        flags,
        reply,
        () =>
          `manager join token: ${reply.token}\nworks until ${until}${flags.uses === undefined ? '' : ` for ${flags.uses} join(s)`}; hand it over in a file (coffer join --token-file), not on a command line`,
      );
    });
  const change = (name: 'promote' | 'demote' | 'remove', description: string) =>
    addClientOptions(cluster.command(`${name} <node>`))
      .description(description)
      .option('--force', 'skip the quorum check (only when the missing managers are gone for good)')
      .action(async (node: string, flags: ClientFlags & { force?: boolean }) => {
        const id = parseNodeId(node);
        const options = { force: flags.force === true };
        const reply = await withClient(flags, (c) =>
          name === 'promote'
            ? c.promote(id, options)
            : name === 'demote'
              ? c.demote(id, options)
              : c.removeMember(id, options),
        );
        print(
          flags,
          reply,
          () => `voters: ${reply.voters.join(', ') || 'none'}; learners: ${reply.learners.join(', ') || 'none'}`,
        );
      });
  change('promote', 'make a learner a voter (it must have caught up)');
  change('demote', 'make a voter a learner, kept one until promoted; the leader hands over first');
  change('remove', 'remove a manager for good (its certificate is refused from then on); the leader hands over first');
  return cluster;
}

export function keyCommands(): Command {
  const key = new Command('key').description('the keyring: data keys, the root key and the unlock key');
  addClientOptions(key.command('status'))
    .description(
      'the active data key term, live and destroyed terms, root and unlock generations, the rotation schedule',
    )
    .action(async (flags: ClientFlags) => {
      const s = await withClient(flags, (c) => c.keyStatus());
      print(flags, s, () =>
        [
          `active data key: term ${s.activeTerm}, created ${new Date(s.activeCreatedAtMs).toISOString()}`,
          `live terms: ${s.terms.join(', ') || 'none'}; destroyed: ${s.destroyedTerms.join(', ') || 'none'}`,
          `root key generation ${s.rootGeneration}; unlock key generation ${s.unlockGeneration}; this manager's root key is wrapped by its ${s.protection === 'unlock-key' ? 'unlock key (autolock on)' : 'key file (autolock off)'}`,
          s.lastRewrapIndex === 0
            ? 'no rewrap yet'
            : `last rewrap at index ${s.lastRewrapIndex} under term ${s.lastRewrapTerm}`,
          `records sealed per term: ${s.recordsByTerm.map((r) => `term ${r.term}: ${r.records}`).join(', ') || 'none'}`,
          keyScheduleText(s.schedulePeriodMs, s.nextRotationAtMs),
        ].join('\n'),
      );
    });
  addClientOptions(key.command('schedule'))
    .description(
      'rotate the data key, then rewrap, every --every (1h to 365d; e.g. 30d), done by the leader; --off ends it',
    )
    .option(
      '--every <duration>',
      'how old the data key may get (e.g. 30d, 12h; at least 1h, at most 365d)',
      durationSeconds,
    )
    .option('--off', 'no scheduled rotation')
    .action(async (flags: ClientFlags & { every?: number; off?: boolean }) => {
      if ((flags.every === undefined) === (flags.off !== true))
        throw new InvalidArgumentError('give --every DURATION (e.g. --every 30d) or --off');
      const periodMs = flags.off === true ? null : flags.every! * 1000;
      const reply = await withClient(flags, (c) => c.keySchedule(periodMs));
      print(flags, reply, () => keyScheduleText(reply.periodMs, reply.nextRotationAtMs));
    });
  const simple = (name: string, op: 'rotate' | 'rewrap' | 'rotateRoot', description: string) =>
    addClientOptions(key.command(name))
      .description(description)
      .action(async (flags: ClientFlags) => {
        const reply = await withClient(flags, (c) => c.keyOp(op));
        print(flags, reply, () => `${printable(reply.detail)} (active term ${reply.activeTerm})`);
      });
  simple('rotate', 'rotate', 'a new data key: new writes are sealed under it');
  simple(
    'rewrap',
    'rewrap',
    're-encrypt everything under the active data key (every manager snapshots and drops its log)',
  );
  simple('rotate-root', 'rotateRoot', 'a new root key generation (wraps the data keys)');
  addClientOptions(key.command('destroy <term>'))
    .description('destroy a data key term for good (refused until a rewrap under a later term)')
    .action(async (term: string, flags: ClientFlags) => {
      const n = Number(term);
      if (!Number.isSafeInteger(n) || n <= 0)
        throw new InvalidArgumentError(
          'a data key is named by its term, a whole number above 0 (see coffer key status)',
        );
      const reply = await withClient(flags, (c) => c.keyOp('destroy', n));
      print(flags, reply, () => printable(reply.detail));
    });
  addClientOptions(key.command('rotate-recovery'))
    .description('a new recovery key (opens backups made from now on); printed once')
    .action(async (flags: ClientFlags) => {
      // Made here; only its public half goes to the cluster. Shown before it is sent.
      const { recoveryKey, publicKey } = generateRecoveryKey();
      showKeyFirst(flags, 'recovery key', recoveryKey);
      await withClient(flags, (c) => c.rotateRecovery(publicKey));
      print(
        flags,
        { recoveryKey },
        () =>
          'applied: backups made from now on open with this recovery key (older ones with the older key); store it offline',
      );
    });
  addClientOptions(key.command('rotate-unlock'))
    .description('a new unlock key for every manager (turns autolock on); printed once')
    .action(async (flags: ClientFlags) => rotateUnlock(flags, 'unlock key'));
  return key;
}

/** The data key's rotation schedule, as `coffer key status` and `coffer key schedule` print it. */
function keyScheduleText(periodMs: number, nextRotationAtMs: number): string {
  if (periodMs === 0) return 'scheduled rotation: off (coffer key schedule --every 30d)';
  const next = nextRotationAtMs <= Date.now() ? 'due now' : `next due ${new Date(nextRotationAtMs).toISOString()}`;
  return `scheduled rotation: every ${durationText(periodMs)}, then a rewrap; ${next}`;
}

/** A duration in ms in the largest unit that divides it whole (`30d`, `36h`, `90m`, `5s`, `1500ms`). */
function durationText(ms: number): string {
  for (const [unit, unitMs] of [
    ['d', 86_400_000],
    ['h', 3_600_000],
    ['m', 60_000],
    ['s', 1000],
  ] as const)
    if (ms % unitMs === 0) return `${ms / unitMs}${unit}`;
  return `${ms}ms`;
}

/**
 * Keys made here are shown before they are sent (text output): if the reply is lost after the
 * cluster applied the key, the operator still has it. JSON output prints them after success.
 */
function showKeyFirst(flags: ClientFlags, what: string, key: string): void {
  if (flags.output !== 'json')
    process.stdout.write(
      `${what}: ${key}\n(keep it now: it is shown once; it takes effect only if this command says "applied")\n`,
    );
}

async function rotateUnlock(flags: ClientFlags, what: string): Promise<void> {
  const unlockKey = generateUnlockKey();
  showKeyFirst(flags, what, unlockKey);
  const reply = await withClient(flags, (c) => c.rotateUnlock(unlockKey));
  print(
    flags,
    { unlockKey, detail: reply.detail },
    () => `applied: ${printable(reply.detail)}; a restarted manager needs this unlock key`,
  );
}

export function autolockCommand(): Command {
  const autolock = new Command('autolock').description('whether a restarted manager needs the unlock key');
  addClientOptions(autolock.command('on'))
    .description("wrap every manager's root key with a new unlock key, printed once (as coffer key rotate-unlock)")
    .action(async (flags: ClientFlags) => rotateUnlock(flags, 'autolock on; unlock key'));
  addClientOptions(autolock.command('off'))
    .description(
      'every manager wraps its root key with its key file again (made beside its data directory where missing)',
    )
    .action(async (flags: ClientFlags) => {
      const reply = await withClient(flags, (c) => c.keyOp('autolockOff'));
      print(flags, reply, () => printable(reply.detail));
    });
  return autolock;
}
