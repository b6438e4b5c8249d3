import * as grpc from '@grpc/grpc-js';
import { CLIENT_CERT_VALIDITY_DAYS, identityOf, signCertificate } from '../crypto/pki.ts';
import { IDENTITY_NAME_PATTERN, encodeAccessCommand, type AccessCommand } from '../store/access-state.ts';
import { POLICY_NAME_PATTERN, ROOT_POLICY, policyProblem, type Capability, type PolicyRule } from '../store/policy.ts';
import { services } from '../transport/proto.ts';
import { ServiceError, storeStatus } from './errors.ts';
import type { CofferNode } from './node.ts';
import { authorize, unary, type Call } from './rpc.ts';

/** Longest client certificate lifetime an issuer may ask for. */
export const CLIENT_CERT_VALIDITY_DAYS_MAX = 825;

type RuleMessage = { path: string; capabilities: string[]; deny: boolean };

function invalid(message: string): ServiceError {
  return new ServiceError(grpc.status.INVALID_ARGUMENT, message);
}

export function registerAccessServices(node: CofferNode): void {
  const { Policies, Identities, Audit } = services();
  const access = node.state.access;

  const write = async (command: AccessCommand): Promise<void> => {
    const result = await node.proposeCommand(encodeAccessCommand(command));
    if (!result.ok) throw new ServiceError('code' in result ? storeStatus(result.code) : grpc.status.FAILED_PRECONDITION, result.reason);
  };
  const policyReply = (name: string, rules: readonly PolicyRule[]) => ({ name, rules: rules.map((r) => ({ path: r.path, capabilities: [...r.capabilities], deny: r.deny })) });

  node.server.addService(Policies.service, {
    put: unary(node, 'Policies.Put', async (call: Call<{ name: string; rules: RuleMessage[] }>) => {
      const { name, rules } = call.request;
      if (!POLICY_NAME_PATTERN.test(name)) throw invalid('a policy name is a lower-case letter then up to 63 of [a-z0-9_-]');
      authorize(node, call, 'admin', `sys/policies/${name}`);
      const problem = policyProblem({ name, rules });
      if (problem !== null) throw invalid(`policy "${name}": ${problem}`);
      await write({ op: 'policy-put', name, rules: rules.map((r) => ({ path: r.path, capabilities: r.capabilities as Capability[], deny: r.deny })) });
      return {};
    }),
    get: unary(node, 'Policies.Get', async (call: Call<{ name: string }>) => {
      const { name } = call.request;
      if (!POLICY_NAME_PATTERN.test(name)) throw invalid('a policy name is a lower-case letter then up to 63 of [a-z0-9_-]');
      authorize(node, call, 'admin', `sys/policies/${name}`);
      await node.manager.linearizableRead();
      const policy = name === ROOT_POLICY.name ? ROOT_POLICY : access.policies.get(name);
      if (policy === undefined) throw new ServiceError(grpc.status.NOT_FOUND, `policy "${name}" does not exist`);
      return policyReply(policy.name, policy.rules);
    }),
    list: unary(node, 'Policies.List', async (call: Call<object>) => {
      authorize(node, call, 'admin', 'sys/policies');
      await node.manager.linearizableRead();
      return { policies: [ROOT_POLICY, ...[...access.policies.values()].sort((a, b) => a.name.localeCompare(b.name))].map((p) => policyReply(p.name, p.rules)) };
    }),
    remove: unary(node, 'Policies.Remove', async (call: Call<{ name: string }>) => {
      const { name } = call.request;
      if (name === ROOT_POLICY.name) throw invalid('the root policy is built in');
      authorize(node, call, 'admin', `sys/policies/${name}`);
      await write({ op: 'policy-remove', name });
      return {};
    }),
  });

  node.server.addService(Identities.service, {
    issue: unary(node, 'Identities.Issue', async (call: Call<{ name: string; policies: string[]; publicKeyPem: string; validityDays: number }>) => {
      const { name, policies, publicKeyPem, validityDays } = call.request;
      if (!IDENTITY_NAME_PATTERN.test(name)) throw invalid('an identity name is a letter or digit then up to 127 of [A-Za-z0-9._@-]');
      authorize(node, call, 'admin', `sys/identities/${name}`);
      // Granting a policy needs the right to administer it: no one hands out more than they hold.
      for (const policy of policies) authorize(node, call, 'admin', `sys/policies/${policy}`);
      for (const policy of policies) {
        if (policy !== ROOT_POLICY.name && !access.policies.has(policy)) throw new ServiceError(grpc.status.FAILED_PRECONDITION, `policy "${policy}" does not exist; put it first`);
      }
      if (validityDays > CLIENT_CERT_VALIDITY_DAYS_MAX) throw invalid(`validity_days is at most ${CLIENT_CERT_VALIDITY_DAYS_MAX}`);
      const nowMs = Date.now();
      const certificatePem = signCertificate(node.ca, publicKeyPem, { id: name, role: 'client', clusterId: node.config.clusterId, nowMs, validityDays: validityDays === 0 ? CLIENT_CERT_VALIDITY_DAYS : validityDays });
      const issued = identityOf(certificatePem);
      await write({ op: 'identity-issue', name, policies, serial: issued.serial, nowMs });
      node.log.info({ event: 'identity-issued', identity: name, serial: issued.serial }, `issued a certificate to identity ${name}`);
      return { certificatePem, caCertificatePem: node.tls.caPem, serial: issued.serial, notAfterMs: issued.notAfterMs };
    }),
    revoke: unary(node, 'Identities.Revoke', async (call: Call<{ name: string }>) => {
      const { name } = call.request;
      if (!IDENTITY_NAME_PATTERN.test(name)) throw invalid('an identity name is a letter or digit then up to 127 of [A-Za-z0-9._@-]');
      authorize(node, call, 'admin', `sys/identities/${name}`);
      await write({ op: 'identity-revoke', name });
      node.log.info({ event: 'identity-revoked', identity: name }, `revoked identity ${name}`);
      return {};
    }),
    list: unary(node, 'Identities.List', async (call: Call<object>) => {
      const caller = authorize(node, call, 'admin', 'sys/identities');
      await node.manager.linearizableRead();
      return {
        identities: [...access.identities.values()]
          .filter((i) => access.decide(caller.id, 'admin', `sys/identities/${i.name}`).allowed)
          .sort((a, b) => a.name.localeCompare(b.name))
          .map((i) => ({ name: i.name, policies: i.policies, certificates: i.serials.size, revoked: i.revoked, createdAtMs: i.createdAtMs })),
      };
    }),
  });

  node.server.addService(Audit.service, {
    tail: unary(node, 'Audit.Tail', async (call: Call<{ count: number }>) => {
      authorize(node, call, 'admin', 'sys/audit');
      const count = call.request.count === 0 ? 20 : Math.min(call.request.count, 10_000);
      return { records: await node.audit.tail(count) };
    }),
    verify: unary(node, 'Audit.Verify', async (call: Call<object>) => {
      authorize(node, call, 'admin', 'sys/audit');
      const report = await node.audit.verify();
      return { ok: report.ok, records: report.records, firstBrokenLine: report.firstBroken?.line ?? 0, problem: report.firstBroken?.problem ?? '' };
    }),
  });
}
