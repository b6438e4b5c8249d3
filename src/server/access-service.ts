import type * as grpc from '@grpc/grpc-js';
import {
  CLIENT_CERT_VALIDITY_DAYS,
  identityOf,
  signCertificate,
  type IssueOptions,
  type KeyAndCertificate,
} from '../crypto/pki.ts';
import { AuditError } from '../audit/audit-log.ts';
import { CryptoError } from '../crypto/errors.ts';
import {
  IDENTITY_NAME_PATTERN,
  IDENTITY_POLICIES_MAX,
  encodeAccessCommand,
  type AccessCommand,
} from '../state/access-state.ts';
import { accessGuard } from '../state/access-guard.ts';
import { LOGIN_IDENTITY_PATTERN } from '../state/auth-config.ts';
import {
  POLICY_NAME_PATTERN,
  ROOT_POLICY,
  normalizePolicyRules,
  policyProblem,
  type Capability,
  type PolicyRule,
} from '../state/policy.ts';
import { refuse, type ServiceError } from './errors.ts';
import type { ServiceContext } from './context.ts';
import { authenticateClient, authorize, noteTarget, unary, type Call } from './rpc.ts';
import type { Identity } from '../crypto/pki.ts';

/** Records one Audit.Tail may ask for, and the bytes of them it answers with (the newest that fit). */
export const AUDIT_TAIL_RECORDS_MAX = 10_000;
export const AUDIT_TAIL_BYTES_MAX = 2 * 1024 * 1024;

/** Longest client certificate lifetime an issuer may ask for. */
export const CLIENT_CERT_VALIDITY_DAYS_MAX = 825;

type RuleMessage = { path: string; capabilities: string[]; deny: boolean };

/** Signs a client's public key; a key Coffer does not take (pki.ts, publicKeyProblem) is the caller's mistake. */
function sign(ca: KeyAndCertificate, publicKeyPem: string, options: IssueOptions): string {
  try {
    return signCertificate(ca, publicKeyPem, options);
  } catch (error) {
    if (error instanceof CryptoError) throw invalid(`public_key_pem: ${error.message}`, { field: 'public_key_pem' });
    throw error;
  }
}

/** An audit record's time in milliseconds since the epoch (0 if the line holds no valid time). */
export function timeMsOf(time: unknown): number {
  const ms = typeof time === 'string' ? Date.parse(time) : Number.NaN;
  return Number.isSafeInteger(ms) ? ms : 0;
}

function invalid(message: string, metadata: Readonly<Record<string, string>> = {}): ServiceError {
  return refuse('INVALID_ARGUMENT', message, metadata);
}

const POLICY_NAME_RULE = 'a policy name is a lower-case letter then up to 63 of [a-z0-9_-]';
const IDENTITY_NAME_RULE =
  'an identity name is a letter or digit then up to 127 of [A-Za-z0-9._@-] (a login identity: ROLE:SUBJECT)';

/** The Policies, Identities and Audit services (coffer.v1): who may do what, and the record of it. */
export function accessServices(ctx: ServiceContext): {
  policies: grpc.UntypedServiceImplementation;
  identities: grpc.UntypedServiceImplementation;
  audit: grpc.UntypedServiceImplementation;
} {
  const access = ctx.state.access;

  /** Proposes as the caller: the change is checked again where it applies, against the state then. */
  const write = async (command: AccessCommand, caller: Identity): Promise<void> => {
    // Refused here if it surely would be where it applies (same rule, this manager's state).
    const refusal = accessGuard(access, command, { name: caller.id, key: caller.spki });
    if (refusal !== null) throw refuse('GRANT_NOT_HELD', refusal);
    await ctx.propose(encodeAccessCommand(command, { name: caller.id, key: caller.spki }));
  };
  const policyReply = (name: string, rules: readonly PolicyRule[]) => ({
    name,
    rules: rules.map((r) => ({ path: r.path, capabilities: [...r.capabilities], deny: r.deny })),
  });

  const policies: grpc.UntypedServiceImplementation = {
    put: unary(ctx, 'Policies.Put', async (call: Call<{ name: string; rules: RuleMessage[] }>) => {
      const { name, rules } = call.request;
      if (!POLICY_NAME_PATTERN.test(name)) throw refuse('INVALID_NAME', POLICY_NAME_RULE, { field: 'name' });
      const caller = authorize(ctx, call, 'admin', `sys/policies/${name}`);
      const problem = policyProblem({ name, rules });
      if (problem !== null) throw refuse('INVALID_POLICY', `policy "${name}": ${problem}`);
      // Stored in normal form (redundant ** collapsed): what Policies.Get shows is what ranks.
      await write(
        {
          op: 'policy-put',
          name,
          rules: normalizePolicyRules(
            rules.map((r) => ({ path: r.path, capabilities: r.capabilities as Capability[], deny: r.deny })),
          ),
        },
        caller,
      );
      return {};
    }),
    get: unary(ctx, 'Policies.Get', async (call: Call<{ name: string }>) => {
      const { name } = call.request;
      if (!POLICY_NAME_PATTERN.test(name)) throw refuse('INVALID_NAME', POLICY_NAME_RULE, { field: 'name' });
      authorize(ctx, call, 'admin', `sys/policies/${name}`);
      await ctx.readPoint();
      const policy = name === ROOT_POLICY.name ? ROOT_POLICY : access.policies.get(name);
      if (policy === undefined) throw refuse('POLICY_NOT_FOUND', `policy "${name}" does not exist`);
      return policyReply(policy.name, policy.rules);
    }),
    list: unary(ctx, 'Policies.List', async (call: Call<object>) => {
      authorize(ctx, call, 'admin', 'sys/policies');
      await ctx.readPoint();
      return {
        policies: [ROOT_POLICY, ...[...access.policies.values()].sort((a, b) => a.name.localeCompare(b.name))].map(
          (p) => policyReply(p.name, p.rules),
        ),
      };
    }),
    remove: unary(ctx, 'Policies.Remove', async (call: Call<{ name: string }>) => {
      const { name } = call.request;
      if (!POLICY_NAME_PATTERN.test(name)) throw refuse('INVALID_NAME', POLICY_NAME_RULE, { field: 'name' });
      if (name === ROOT_POLICY.name) throw invalid('the root policy is built in', { field: 'name' });
      const caller = authorize(ctx, call, 'admin', `sys/policies/${name}`);
      await write({ op: 'policy-remove', name }, caller);
      return {};
    }),
  };

  const identities: grpc.UntypedServiceImplementation = {
    issue: unary(
      ctx,
      'Identities.Issue',
      async (
        call: Call<{ name: string; policies: string[]; publicKeyPem: string; validityDays: number; reissue?: boolean }>,
      ) => {
        const { name, policies, publicKeyPem, validityDays } = call.request;
        if (!IDENTITY_NAME_PATTERN.test(name)) throw refuse('INVALID_NAME', IDENTITY_NAME_RULE, { field: 'name' });
        if (policies.length > IDENTITY_POLICIES_MAX)
          throw invalid(`an identity has at most ${IDENTITY_POLICIES_MAX} policies`, {
            field: 'policies',
            limit: String(IDENTITY_POLICIES_MAX),
          });
        for (const policy of policies)
          if (!POLICY_NAME_PATTERN.test(policy))
            throw refuse(
              'INVALID_NAME',
              `policy name ${JSON.stringify(policy.slice(0, 64))}: a lower-case letter then up to 63 of [a-z0-9_-]`,
              { field: 'policies' },
            );
        const caller = authorize(ctx, call, 'admin', `sys/identities/${name}`);
        // Granting a policy needs the right to administer it: no one hands out more than they hold.
        for (const policy of policies) authorize(ctx, call, 'admin', `sys/policies/${policy}`);
        for (const policy of policies) {
          if (policy !== ROOT_POLICY.name && !access.policies.has(policy))
            throw refuse('UNKNOWN_POLICY', `policy "${policy}" does not exist; put it first`, { policy });
        }
        if (validityDays > CLIENT_CERT_VALIDITY_DAYS_MAX)
          throw invalid(`validity_days is at most ${CLIENT_CERT_VALIDITY_DAYS_MAX}`, {
            field: 'validity_days',
            limit: String(CLIENT_CERT_VALIDITY_DAYS_MAX),
          });
        const nowMs = ctx.clock.now();
        const ca = ctx.pki.signing();
        const certificatePem = sign(ca, publicKeyPem, {
          id: name,
          role: 'client',
          clusterId: ctx.clusterId,
          nowMs,
          validityDays: validityDays === 0 ? CLIENT_CERT_VALIDITY_DAYS : validityDays,
        });
        const issued = identityOf(certificatePem);
        await write(
          {
            op: 'identity-issue',
            name,
            policies,
            key: issued.spki,
            serial: issued.serial,
            caGen: ca.gen,
            nowMs,
            ...(call.request.reissue === true ? { reissue: true } : {}),
          },
          caller,
        );
        ctx.log.info(
          { event: 'identity-issued', identity: name, serial: issued.serial, reissue: call.request.reissue === true },
          `issued a certificate to identity ${name}`,
        );
        return {
          certificatePem,
          caCertificatePem: ctx.pki.trustPem(),
          serial: issued.serial,
          notAfterMs: issued.notAfterMs,
        };
      },
    ),
    renew: unary(ctx, 'Identities.Renew', async (call: Call<{ publicKeyPem: string; validityDays: number }>) => {
      const caller = authenticateClient(ctx, call);
      const { publicKeyPem, validityDays } = call.request;
      if (validityDays > CLIENT_CERT_VALIDITY_DAYS_MAX)
        throw invalid(`validity_days is at most ${CLIENT_CERT_VALIDITY_DAYS_MAX}`, {
          field: 'validity_days',
          limit: String(CLIENT_CERT_VALIDITY_DAYS_MAX),
        });
      noteTarget(call, `sys/identities/${caller.id}`);
      const nowMs = ctx.clock.now();
      const ca = ctx.pki.signing();
      const certificatePem = sign(ca, publicKeyPem, {
        id: caller.id,
        role: 'client',
        clusterId: ctx.clusterId,
        nowMs,
        validityDays: validityDays === 0 ? CLIENT_CERT_VALIDITY_DAYS : validityDays,
      });
      const issued = identityOf(certificatePem);
      await write(
        { op: 'identity-renew', name: caller.id, key: issued.spki, serial: issued.serial, caGen: ca.gen, nowMs },
        caller,
      );
      ctx.log.info(
        { event: 'identity-renewed', identity: caller.id, serial: issued.serial },
        `renewed the certificate of identity ${caller.id}`,
      );
      return {
        certificatePem,
        caCertificatePem: ctx.pki.trustPem(),
        serial: issued.serial,
        notAfterMs: issued.notAfterMs,
      };
    }),
    revoke: unary(ctx, 'Identities.Revoke', async (call: Call<{ name: string }>) => {
      const { name } = call.request;
      if (!IDENTITY_NAME_PATTERN.test(name) && !LOGIN_IDENTITY_PATTERN.test(name))
        throw refuse('INVALID_NAME', IDENTITY_NAME_RULE, { field: 'name' });
      const caller = authorize(ctx, call, 'admin', `sys/identities/${name}`);
      await write({ op: 'identity-revoke', name }, caller);
      ctx.log.info({ event: 'identity-revoked', identity: name }, `revoked identity ${name}`);
      return {};
    }),
    forget: unary(ctx, 'Identities.Forget', async (call: Call<{ name: string }>) => {
      const { name } = call.request;
      if (!LOGIN_IDENTITY_PATTERN.test(name))
        throw refuse(
          'INVALID_NAME',
          'a login identity is ROLE:SUBJECT (identities issued by hand are issued again instead)',
          {
            field: 'name',
          },
        );
      const caller = authorize(ctx, call, 'admin', `sys/identities/${name}`);
      await write({ op: 'identity-forget', name }, caller);
      ctx.log.info({ event: 'identity-forgotten', identity: name }, `forgot login identity ${name}`);
      return {};
    }),
    list: unary(ctx, 'Identities.List', async (call: Call<object>) => {
      const caller = authorize(ctx, call, 'admin', 'sys/identities');
      await ctx.readPoint();
      return {
        identities: [...access.identities.values()]
          .filter((i) => access.decide(caller.id, 'admin', `sys/identities/${i.name}`).allowed)
          .sort((a, b) => a.name.localeCompare(b.name))
          .map((i) => ({
            name: i.name,
            policies: i.policies,
            // Certificates that still work: a login's end after an hour or so.
            certificates: i.keys.filter((k) => k.notAfterMs === 0 || k.notAfterMs > ctx.clock.now()).length,
            role: i.role ?? '',
            revoked: i.revoked,
            createdAtMs: i.createdAtMs,
          })),
      };
    }),
  };

  const audit: grpc.UntypedServiceImplementation = {
    tail: unary(ctx, 'Audit.Tail', async (call: Call<{ count: number }>) => {
      authorize(ctx, call, 'admin', 'sys/audit');
      const count = call.request.count === 0 ? 20 : Math.min(call.request.count, AUDIT_TAIL_RECORDS_MAX);
      const records = await ctx.audit.tail(count).catch((error: unknown) => {
        if (error instanceof AuditError)
          throw refuse('AUDIT_LOG_ALTERED', `${error.message}; coffer audit verify on this manager says where`);
        throw error;
      });
      // The newest records that fit in one reply (a client takes 4 MiB by default).
      let bytes = 0;
      let first = records.length;
      while (first > 0 && bytes + JSON.stringify(records[first - 1]).length <= AUDIT_TAIL_BYTES_MAX)
        bytes += JSON.stringify(records[--first]).length;
      // time_ms: the record's time as every other time of the API (milliseconds), beside the
      // string the hash chain covers.
      return { records: records.slice(first).map((r) => ({ ...r, timeMs: timeMsOf(r.time) })) };
    }),
    verify: unary(ctx, 'Audit.Verify', async (call: Call<object>) => {
      authorize(ctx, call, 'admin', 'sys/audit');
      const anchor = ctx.state.cluster.auditAnchors.get(ctx.nodeId) ?? null;
      const report = await ctx.audit.verify(anchor);
      return {
        ok: report.ok,
        records: report.records,
        firstBrokenLine: report.firstBroken?.line ?? 0,
        problem: report.firstBroken?.problem ?? '',
        anchorSeq: anchor?.seq ?? 0,
        anchorHash: anchor?.hash ?? '',
      };
    }),
  };
  return { policies, identities, audit };
}
