import {
  IDENTITY_POLICIES_MAX_FOR_LOGIN,
  LOGIN_SUBJECT_PATTERN,
  subjectMatches,
  type AuthRole,
} from '../../state/auth-config.ts';
import { refuse, type ServiceError } from '../errors.ts';

/** Who a method proved the caller to be: claims (a token's; LDAP's username and groups), the subject, its groups. */
export interface ProvenSubject {
  /** What the role's bound subject is matched against: a token's `sub`, an LDAP username. */
  readonly sub: string;
  /** The role's user claim's value: the SUBJECT of the identity ROLE:SUBJECT. */
  readonly subject: string;
  readonly claims: Readonly<Record<string, unknown>>;
  readonly groups: readonly string[];
}

/** The strings a claim holds: itself if a string, its strings if a list, else none. */
export function claimStrings(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.filter((v): v is string => typeof v === 'string');
  return [];
}

/**
 * The subject a token names for a role: the user claim's value, which must be a name Coffer can
 * certify. Throws LOGIN_NOT_BOUND naming the claim.
 */
export function subjectOf(role: AuthRole, claims: Readonly<Record<string, unknown>>): string {
  const value = claims[role.userClaim];
  if (typeof value !== 'string' || !LOGIN_SUBJECT_PATTERN.test(value))
    throw refuse(
      'LOGIN_NOT_BOUND',
      `the token's ${role.userClaim} claim (the role's user claim) is missing or not 1 to 255 of [A-Za-z0-9._@:/+=-]`,
      { claim: role.userClaim },
    );
  // An address the provider has not verified is only what someone typed: it must not become
  // somebody's identity (OpenID Connect Core 5.1, email_verified).
  if (role.userClaim === 'email' && claims['email_verified'] !== true)
    throw refuse('LOGIN_NOT_BOUND', "the token's email is not verified by its issuer (email_verified is not true)", {
      claim: 'email_verified',
    });
  return value;
}

/** Null if the role admits the proven subject (bound subject, bound claims), else why not. */
export function bindingRefusal(role: AuthRole, proven: ProvenSubject): ServiceError | null {
  if (!subjectMatches(role.boundSubject, proven.sub))
    return refuse(
      'LOGIN_NOT_BOUND',
      `role "${role.name}" does not admit this subject (bound subject ${role.boundSubject})`,
      {
        claim: 'sub',
      },
    );
  for (const bound of role.boundClaims) {
    const held =
      bound.claim === 'groups' && role.method === 'ldap'
        ? [...proven.groups]
        : claimStrings(proven.claims[bound.claim]);
    if (!held.some((value) => bound.values.some((glob) => subjectMatches(glob, value))))
      return refuse(
        'LOGIN_NOT_BOUND',
        `role "${role.name}" requires claim ${bound.claim} to hold one of ${bound.values.join(', ')}`,
        { claim: bound.claim },
      );
  }
  return null;
}

/** The policies a login gets: the role's, and those of each of the subject's groups the role maps. */
export function loginPolicies(role: AuthRole, groups: readonly string[]): string[] {
  const held = new Set(groups);
  const policies = new Set(role.policies);
  for (const mapping of role.groupPolicies)
    if (held.has(mapping.group)) for (const p of mapping.policies) policies.add(p);
  // Never a silent cut: which policies went would be arbitrary.
  if (policies.size > IDENTITY_POLICIES_MAX_FOR_LOGIN)
    throw refuse(
      'LOGIN_NOT_BOUND',
      `this login would hold ${policies.size} policies, over the ${IDENTITY_POLICIES_MAX_FOR_LOGIN} an identity may: the role's group mappings need narrowing`,
      { limit: String(IDENTITY_POLICIES_MAX_FOR_LOGIN) },
    );
  return [...policies];
}
