import { rolePolicies } from './auth-config.ts';
import type { AccessCommand, AccessGuard, AccessState, Actor } from './access-state.ts';
import { ROOT_POLICY, decide, policyWithinRights, type Capability, type Policy } from './policy.ts';

/**
 * Who may change who may do what: nobody grants more than they hold. Checked where an access
 * command applies (from replicated state only, so every manager agrees, and a change of the
 * writer's own rights committed first wins), and at the request edge to fail fast.
 *
 * - A policy may be written (or removed) by whoever has `admin` on `sys/policies/NAME` and holds
 *   every capability of every rule of it, the new rules and the ones it replaces, on every path
 *   they cover (`policyWithinRights`): a delegated administrator cannot write `**`.
 * - An identity may be issued by whoever has `admin` on `sys/identities/NAME` and could have
 *   written each policy it binds; an existing identity is re-issued only on purpose (`reissue`)
 *   and only by one who could grant every policy it has now, and the same holds for revoking
 *   one, so a delegated administrator can neither take over nor lock out `admin`.
 * - An identity renews only its own certificate.
 */
export const accessGuard: AccessGuard = (state: AccessState, command: AccessCommand, actor: Actor): string | null => {
  const holder = state.policiesOf(actor.name);
  const may = (capability: Capability, path: string): string | null =>
    decide(holder, capability, path).allowed ? null : `identity "${actor.name}" may not ${capability} "${path}"`;
  /** Null if the actor could have written policy `name` as it is now (and so may hand it out). */
  const canGrant = (name: string): string | null => {
    const policy: Policy | undefined = name === ROOT_POLICY.name ? ROOT_POLICY : state.policies.get(name);
    if (policy === undefined) return `policy "${name}" does not exist`;
    const administer = may('admin', `sys/policies/${name}`);
    if (administer !== null) return `${administer}, so it may not hand out policy "${name}"`;
    const beyond = policyWithinRights(holder, policy.rules);
    return beyond === null ? null : `policy "${name}" grants more than identity "${actor.name}" holds: ${beyond}`;
  };
  const canGrantAll = (names: readonly string[]): string | null => {
    for (const name of names) {
      const refusal = canGrant(name);
      if (refusal !== null) return refusal;
    }
    return null;
  };
  /** What the role of a login identity (ROLE:SUBJECT) gives, or nothing for another name. */
  const loginRolePolicies = (name: string): string[] => {
    const at = name.indexOf(':');
    const role = at < 0 ? undefined : state.authRoles.get(name.slice(0, at));
    return role === undefined ? [] : rolePolicies(role);
  };
  /** Null if the actor may renew or revoke lease `id`: its owner, or `write` on sys/leases/DB/ROLE. */
  const leaseRefusal = (id: string): string | null => {
    const lease = state.leases.leases.get(id);
    if (lease === undefined) return null; // gone meanwhile: the command changes nothing for it
    if (lease.owner === actor.name) return null;
    return may('write', `sys/leases/${lease.db}/${lease.role}`);
  };
  switch (command.op) {
    case 'policy-put': {
      const existing = state.policies.get(command.name);
      return (
        may('admin', `sys/policies/${command.name}`) ??
        policyWithinRights(holder, command.rules) ??
        (existing === undefined ? null : policyWithinRights(holder, existing.rules))
      );
    }
    case 'policy-remove': {
      const existing = state.policies.get(command.name);
      return (
        may('admin', `sys/policies/${command.name}`) ??
        (existing === undefined ? null : policyWithinRights(holder, existing.rules))
      );
    }
    case 'identity-issue': {
      const record = state.identities.get(command.name);
      const current = record !== undefined && !record.revoked ? record.policies : [];
      return (
        may('admin', `sys/identities/${command.name}`) ??
        canGrantAll(command.policies) ??
        (command.reissue === true ? canGrantAll(current) : null)
      );
    }
    case 'identity-revoke': {
      // A login identity's role's policies count too: its record may not exist (yet, or any more).
      const record = state.identities.get(command.name);
      return (
        may('admin', `sys/identities/${command.name}`) ??
        canGrantAll([...loginRolePolicies(command.name), ...(record?.policies ?? [])])
      );
    }
    case 'identity-renew':
      return command.name === actor.name
        ? null
        : `identity "${actor.name}" may renew only its own certificate, not "${command.name}"'s`;
    case 'identity-forget': {
      const record = state.identities.get(command.name);
      return may('admin', `sys/identities/${command.name}`) ?? canGrantAll(record?.policies ?? []);
    }
    case 'identity-login':
    case 'identity-prune':
      // A manager makes a login once it checked the proof, and the leader prunes; no client names either.
      return 'logins are made and pruned by managers, not named by a client';
    case 'totp-enroll':
    case 'totp-remove': {
      // Whoever may set a subject's second factor may log in as it with its password: they must
      // be able to grant what its role gives (the identity's record may not exist yet, or any more).
      const record = state.identities.get(command.name);
      return (
        may('admin', `sys/identities/${command.name}`) ??
        canGrantAll([...loginRolePolicies(command.name), ...(record?.policies ?? [])])
      );
    }
    case 'db-configure':
    case 'db-remove':
      return may('admin', `sys/db/${command.name}`);
    // SQL templates run as the database's admin: whoever writes one holds the admin's power over
    // that database, so writing one needs `admin` on the database as well as on the role.
    case 'db-role-put':
      return (
        may('admin', `sys/db/${command.name.replace('/', '/roles/')}`) ?? may('admin', `sys/db/${command.dbRole.db}`)
      );
    case 'db-role-remove':
      return may('admin', `sys/db/${command.name.replace('/', '/roles/')}`);
    case 'static-role-put':
      return (
        may('admin', `sys/db/${command.name.replace('/', '/static-roles/')}`) ??
        (command.staticRole.rotationSql === '' ? null : may('admin', `sys/db/${command.staticRole.db}`))
      );
    case 'static-role-remove':
    case 'static-rotate-request':
      return may('admin', `sys/db/${command.name.replace('/', '/static-roles/')}`);
    case 'static-rotate-begin':
    case 'static-rotate-done':
      // The leader rotates; a client only asks for it (static-rotate-request).
      return 'rotations are begun and finished by the leader, not named by a client';
    case 'lease-open':
    case 'lease-activate':
    case 'lease-expire':
    case 'lease-revoked':
      // Managers make users and report them gone; no client names either.
      return 'leases are opened and closed by managers, not named by a client';
    case 'lease-renew':
      return leaseRefusal(command.name);
    case 'lease-revoke': {
      for (const id of command.ids) {
        const refusal = leaseRefusal(id);
        if (refusal !== null) return refusal;
      }
      return null;
    }
    case 'auth-method-put':
    case 'auth-method-remove': {
      // Who sets a method's keys or server decides who logs in under every role of that method:
      // they must be able to grant everything those roles give.
      const granted = [...state.authRoles.values()].filter((r) => r.method === command.name).flatMap(rolePolicies);
      return may('admin', `sys/auth/${command.name}`) ?? canGrantAll([...new Set(granted)]);
    }
    case 'auth-role-put': {
      // A role hands out its policies to whoever logs in: it is a grant like an identity's.
      const existing = state.authRoles.get(command.name);
      return (
        may('admin', `sys/auth/roles/${command.name}`) ??
        canGrantAll(rolePolicies(command.role)) ??
        (existing === undefined ? null : canGrantAll(rolePolicies(existing)))
      );
    }
    case 'auth-role-remove': {
      const existing = state.authRoles.get(command.name);
      return (
        may('admin', `sys/auth/roles/${command.name}`) ??
        (existing === undefined ? null : canGrantAll(rolePolicies(existing)))
      );
    }
  }
};
