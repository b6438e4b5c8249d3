import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command } from 'commander';
import { verifyAuditDir } from '../audit/audit-log.ts';
import { newLeafKey } from '../crypto/pki.ts';
import { addClientOptions, clientFrom, print, type ClientFlags } from './client-config.ts';

type Rule = { path: string; capabilities: string[]; deny?: boolean };

export function policyCommands(): Command {
  const policy = new Command('policy').description('manage policies (rules of path globs and capabilities)');
  addClientOptions(policy.command('put <name>'))
    .description('create or replace a policy from a JSON file: [{"path": "app/**", "capabilities": ["read"], "deny": false}, ...]')
    .requiredOption('--file <file>', 'the rules, as JSON (- for stdin)')
    .action(async (name: string, flags: ClientFlags & { file: string }) => {
      const text = readFileSync(flags.file === '-' ? 0 : flags.file, 'utf8');
      let rules: Rule[];
      try {
        rules = JSON.parse(text) as Rule[];
      } catch {
        throw new Error(`${flags.file} is not JSON: it should hold a list of rules`);
      }
      const client = clientFrom(flags, process.env);
      try {
        print(flags, await client.putPolicy(name, rules), () => `policy ${name}: ${rules.length} rule(s)`);
      } finally {
        client.close();
      }
    });
  addClientOptions(policy.command('get <name>')).action(async (name: string, flags: ClientFlags) => {
    const client = clientFrom(flags, process.env);
    try {
      const reply = await client.getPolicy(name);
      print(flags, reply, () => JSON.stringify(reply.rules, null, 2));
    } finally {
      client.close();
    }
  });
  addClientOptions(policy.command('ls')).action(async (flags: ClientFlags) => {
    const client = clientFrom(flags, process.env);
    try {
      const reply = await client.listPolicies();
      print(flags, reply.policies, () => reply.policies.map((p) => `${p.name}\t${p.rules.length} rule(s)`).join('\n'));
    } finally {
      client.close();
    }
  });
  addClientOptions(policy.command('rm <name>')).action(async (name: string, flags: ClientFlags) => {
    const client = clientFrom(flags, process.env);
    try {
      print(flags, await client.removePolicy(name), () => `policy ${name} removed`);
    } finally {
      client.close();
    }
  });
  return policy;
}

export function identityCommands(): Command {
  const identity = new Command('identity').description('client identities: certificates bound to policies');
  addClientOptions(identity.command('issue <name>'))
    .description('make a key here and have the cluster certify it; writes ca.crt, NAME.crt, NAME.key and client.env to --out')
    .option('--policy <policy>', 'a policy to bind (repeatable)', (value: string, all: string[]) => [...all, value], [] as string[])
    .requiredOption('--out <dir>', 'where to write the identity')
    .option('--validity-days <days>', 'certificate lifetime (default 365)', (v) => Number(v))
    .action(async (name: string, flags: ClientFlags & { policy: string[]; out: string; validityDays?: number }) => {
      const key = newLeafKey();
      const client = clientFrom(flags, process.env);
      try {
        const issued = await client.issueIdentity(name, flags.policy, key.publicPem, flags.validityDays ?? 0);
        mkdirSync(flags.out, { recursive: true, mode: 0o700 });
        writeFileSync(join(flags.out, 'ca.crt'), issued.caCertificatePem);
        writeFileSync(join(flags.out, `${name}.crt`), issued.certificatePem);
        writeFileSync(join(flags.out, `${name}.key`), key.privatePem, { mode: 0o600 });
        const addr = flags.addr ?? process.env['COFFER_ADDR'] ?? '';
        writeFileSync(join(flags.out, 'client.env'), `COFFER_ADDR=${addr}\nCOFFER_CA=${join(flags.out, 'ca.crt')}\nCOFFER_CERT=${join(flags.out, `${name}.crt`)}\nCOFFER_KEY=${join(flags.out, `${name}.key`)}\n`);
        print(flags, { name, serial: issued.serial, notAfterMs: issued.notAfterMs, dir: flags.out }, () => `identity ${name} issued (serial ${issued.serial}, until ${new Date(issued.notAfterMs).toISOString()}) in ${flags.out}`);
      } finally {
        client.close();
      }
    });
  addClientOptions(identity.command('revoke <name>'))
    .description('refuse every certificate of this identity, on every manager')
    .action(async (name: string, flags: ClientFlags) => {
      const client = clientFrom(flags, process.env);
      try {
        print(flags, await client.revokeIdentity(name), () => `identity ${name} revoked`);
      } finally {
        client.close();
      }
    });
  addClientOptions(identity.command('ls')).action(async (flags: ClientFlags) => {
    const client = clientFrom(flags, process.env);
    try {
      const reply = await client.listIdentities();
      print(flags, reply.identities, () => reply.identities.map((i) => `${i.name}\t${i.policies.join(',') || '-'}\t${i.revoked ? 'revoked' : `${i.certificates} certificate(s)`}`).join('\n'));
    } finally {
      client.close();
    }
  });
  return identity;
}

export function auditCommands(): Command {
  const audit = new Command('audit').description('the audit log of a manager');
  addClientOptions(audit.command('tail'))
    .option('-n, --count <n>', 'records', (v) => Number(v), 20)
    .action(async (flags: ClientFlags & { count: number }) => {
      const client = clientFrom(flags, process.env);
      try {
        const reply = await client.auditTail(flags.count);
        print(flags, reply.records, () => reply.records.map((r) => `${String(r['time'])}\t${String(r['identity'])}\t${String(r['method'])}\t${String(r['target'])}\t${String(r['outcome'])}\t${String(r['code'])}`).join('\n'));
      } finally {
        client.close();
      }
    });
  addClientOptions(audit.command('verify'))
    .description('check the hash chain: of the manager asked, or of a copied audit directory with --dir')
    .option('--dir <dir>', 'a directory holding audit.log and audit.head (checked here, offline)')
    .action(async (flags: ClientFlags & { dir?: string }) => {
      let report: { ok: boolean; records: number; line: number; problem: string };
      if (flags.dir !== undefined) {
        const r = await verifyAuditDir(flags.dir);
        report = { ok: r.ok, records: r.records, line: r.firstBroken?.line ?? 0, problem: r.firstBroken?.problem ?? '' };
      } else {
        const client = clientFrom(flags, process.env);
        try {
          const r = await client.auditVerify();
          report = { ok: r.ok, records: r.records, line: r.firstBrokenLine, problem: r.problem };
        } finally {
          client.close();
        }
      }
      print(flags, report, () => (report.ok ? `audit log intact: ${report.records} records` : `audit log broken at line ${report.line}: ${report.problem}`));
      if (!report.ok) process.exitCode = 3;
    });
  return audit;
}

export function clusterCommands(): Command {
  const cluster = new Command('cluster').description('the cluster, as a manager sees it');
  addClientOptions(cluster.command('status')).action(async (flags: ClientFlags) => {
    const client = clientFrom(flags, process.env);
    try {
      const s = await client.clusterStatus();
      print(flags, s, () => Object.entries(s).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join('\n'));
    } finally {
      client.close();
    }
  });
  return cluster;
}
