/**
 * Logins, as the replicated state holds them: how each method checks a proof (an issuer's keys,
 * an LDAP server), and the roles that turn a checked subject into an identity with policies for a
 * while. The checks themselves run where a login arrives (src/server/auth/); what is here is data,
 * and the rules of its form, checked when it is written and again when it applies.
 */
import { POLICY_NAME_PATTERN } from './policy.ts';

export const AUTH_METHODS = ['jwt', 'oidc', 'ldap'] as const;
export type AuthMethod = (typeof AUTH_METHODS)[number];

/** The JSON Web Signature algorithms a JWT or OIDC method may accept (never `none`, never HMAC). */
export const JWT_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA'];

/** A token or LDAP method's configuration. One per method. */
export interface JwtMethodConfig {
  readonly method: 'jwt' | 'oidc';
  /** The issuer's discovery document (`.../.well-known/openid-configuration`), or '' with static keys. */
  readonly discoveryUrl: string;
  /** CA certificates (PEM) to trust for the discovery and JWKS fetches, else the system's. */
  readonly discoveryCaPem: string;
  /** A JWKS (JSON text) to verify with instead of fetching, for clusters that cannot reach the issuer. */
  readonly staticJwks: string;
  /** `iss` every token must carry ('' = the discovery document's issuer; required with static keys). */
  readonly boundIssuer: string;
  /** Signature algorithms accepted (default RS256 and ES256). */
  readonly algorithms: readonly string[];
  /** The OIDC method: the client id the CLI uses for the code flow (and the ID token's audience). */
  readonly clientId: string;
}

export interface LdapMethodConfig {
  readonly method: 'ldap';
  /** `ldaps://host:port`, or `ldap://host:port` with StartTLS (plain LDAP is refused: passwords cross it). */
  readonly url: string;
  readonly startTls: boolean;
  /** CA certificates (PEM) to trust for the server's certificate, else the system's. */
  readonly caPem: string;
  /** The user's DN, `{{username}}` standing for the escaped name: `uid={{username}},ou=people,dc=example,dc=com`. */
  readonly userDnTemplate: string;
  /** Where groups are searched (after binding as the user): '' reads no groups. */
  readonly groupBaseDn: string;
  /** The search filter, `{{dn}}` standing for the user's DN: default `(member={{dn}})`. */
  readonly groupFilter: string;
  /** The attribute that names a group (default `cn`). */
  readonly groupNameAttribute: string;
}

export type AuthMethodConfig = JwtMethodConfig | LdapMethodConfig;

/** A claim a role requires: the subject's value for it (or one of its values, for a list) must be one of these. */
export interface BoundClaim {
  readonly claim: string;
  readonly values: readonly string[];
}

/** Policies granted to the members of a group (a token's groups claim, or an LDAP group). */
export interface GroupPolicies {
  readonly group: string;
  readonly policies: readonly string[];
}

export interface AuthRole {
  readonly name: string;
  readonly method: AuthMethod;
  /** jwt and oidc: the token's `aud` must hold one of these (at least one is required). */
  readonly boundAudiences: readonly string[];
  /** A glob (`*` matches any run of characters) the subject must match; '' allows any. */
  readonly boundSubject: string;
  readonly boundClaims: readonly BoundClaim[];
  /** The claim that names the subject (default `sub`; `email` for people). LDAP: the username. */
  readonly userClaim: string;
  /** jwt and oidc: the claim that lists the subject's groups ('' = none). LDAP reads groups from the server. */
  readonly groupsClaim: string;
  /** Policies every login of this role gets. */
  readonly policies: readonly string[];
  /** More policies for members of these groups. */
  readonly groupPolicies: readonly GroupPolicies[];
  /** Certificate lifetime by default, and at most. */
  readonly ttlSeconds: number;
  readonly maxTtlSeconds: number;
  /** A login must also give a current TOTP code of the subject's enrolment. */
  readonly totpRequired: boolean;
  /**
   * Set where the role is created (kept when it is changed): a login records it, and its
   * certificates stop working when the role is removed, even if a role of that name comes back.
   */
  readonly generation: number;
}

export const AUTH_ROLE_NAME_PATTERN = /^[a-z][a-z0-9_-]{0,63}$/;
/** What a login identity is called: `ROLE:SUBJECT` (a name issued by hand has no `:`). */
export const LOGIN_IDENTITY_PATTERN = /^[a-z][a-z0-9_-]{0,63}:[A-Za-z0-9._@:/+=-]{1,255}$/;
export const LOGIN_SUBJECT_PATTERN = /^[A-Za-z0-9._@:/+=-]{1,255}$/;
export const AUTH_ROLES_MAX = 1024;
export const AUTH_ROLE_POLICIES_MAX = 32;
export const AUTH_ROLE_GROUPS_MAX = 256;
export const AUTH_ROLE_BOUND_MAX = 64;
export const AUTH_TEXT_CHARS_MAX = 1024;
/** A static JWKS or a CA bundle, at most (characters). */
export const AUTH_PEM_OR_JWKS_CHARS_MAX = 64 * 1024;
/** Default certificate lifetime of a login, and the longest any role may grant. */
export const LOGIN_TTL_SECONDS_DEFAULT = 3600;
export const LOGIN_TTL_SECONDS_MAX = 30 * 24 * 3600;
/** The shortest certificate a login gets (a job of a few seconds; TLS and clocks need some slack). */
export const LOGIN_TTL_SECONDS_MIN = 10;
/** Policies one login identity holds at most (the identity limit: IDENTITY_POLICIES_MAX in access-state.ts). */
export const IDENTITY_POLICIES_MAX_FOR_LOGIN = 32;
/** Keys kept per login identity (pods of one service account log in as one subject): beyond it the oldest stops working. */
export const LOGIN_KEYS_MAX = 64;

/** The login identity of a subject under a role. */
export function loginIdentityName(role: string, subject: string): string {
  return `${role}:${subject}`;
}

/** Whether `subject` matches `glob`, where `*` matches any run of characters (possibly empty). */
export function subjectMatches(glob: string, subject: string): boolean {
  if (glob === '') return true;
  const parts = glob.split('*');
  if (parts.length === 1) return glob === subject;
  const first = parts[0]!;
  const last = parts[parts.length - 1]!;
  if (!subject.startsWith(first) || subject.length < first.length + last.length || !subject.endsWith(last))
    return false;
  let at = first.length;
  const end = subject.length - last.length;
  for (const middle of parts.slice(1, -1)) {
    const found = subject.indexOf(middle, at);
    if (found < 0 || found + middle.length > end) return false;
    at = found + middle.length;
  }
  return true;
}

const text = (value: unknown, max = AUTH_TEXT_CHARS_MAX): value is string =>
  typeof value === 'string' && value.length <= max;
const texts = (value: unknown, max: number): value is string[] =>
  Array.isArray(value) && value.length <= max && value.every((v) => text(v));

/** What is wrong with a method's configuration, or null. */
export function authMethodProblem(config: Record<string, unknown>): string | null {
  const method = config['method'];
  if (!(AUTH_METHODS as readonly unknown[]).includes(method)) return `the method is one of ${AUTH_METHODS.join(', ')}`;
  if (method === 'ldap') {
    const { url, startTls, caPem, userDnTemplate, groupBaseDn, groupFilter, groupNameAttribute } = config;
    if (!text(url) || !/^ldaps?:\/\/[^\s/]+\/?$/.test(url)) return 'url: an ldaps://host:port or ldap://host:port URL';
    if (typeof startTls !== 'boolean') return 'start_tls is true or false';
    if (url.startsWith('ldap://') && !startTls)
      return 'url: plain ldap:// sends passwords in the clear; use ldaps:// or StartTLS (--start-tls)';
    if (!text(caPem, AUTH_PEM_OR_JWKS_CHARS_MAX)) return `ca_pem: at most ${AUTH_PEM_OR_JWKS_CHARS_MAX} characters`;
    if (!text(userDnTemplate) || !userDnTemplate.includes('{{username}}'))
      return 'user_dn_template: a DN with {{username}} in it, e.g. uid={{username}},ou=people,dc=example,dc=com';
    if (!text(groupBaseDn) || !text(groupFilter) || !text(groupNameAttribute)) return 'group settings: text';
    if (groupFilter !== '' && !groupFilter.includes('{{dn}}') && !groupFilter.includes('{{username}}'))
      return 'group_filter: a filter with {{dn}} or {{username}} in it, e.g. (member={{dn}})';
    return null;
  }
  const { discoveryUrl, discoveryCaPem, staticJwks, boundIssuer, algorithms, clientId } = config;
  if (!text(discoveryUrl) || !text(staticJwks, AUTH_PEM_OR_JWKS_CHARS_MAX) || !text(boundIssuer))
    return 'discovery_url, static_jwks and bound_issuer are text';
  if ((discoveryUrl === '') === (staticJwks === ''))
    return 'give either a discovery URL (--discovery-url) or static keys (--static-keys), not both';
  if (discoveryUrl !== '' && !/^https:\/\/[^\s]+$/.test(discoveryUrl))
    return 'discovery_url: an https:// URL (the keys that sign tokens must not come over plain HTTP)';
  if (staticJwks !== '') {
    const problem = jwksProblem(staticJwks);
    if (problem !== null) return `static_jwks: ${problem}`;
    if (boundIssuer === '') return 'bound_issuer: required with static keys (no discovery document names the issuer)';
  }
  if (!text(discoveryCaPem, AUTH_PEM_OR_JWKS_CHARS_MAX))
    return `discovery_ca_pem: at most ${AUTH_PEM_OR_JWKS_CHARS_MAX} characters`;
  if (!texts(algorithms, JWT_ALGORITHMS.length) || algorithms.length === 0)
    return `algorithms: some of ${JWT_ALGORITHMS.join(', ')}`;
  for (const algorithm of algorithms)
    if (!JWT_ALGORITHMS.includes(algorithm))
      return `algorithms: ${JSON.stringify(algorithm.slice(0, 20))} is not accepted (one of ${JWT_ALGORITHMS.join(', ')}; never none or HMAC)`;
  if (!text(clientId)) return 'client_id is text';
  if (method === 'oidc' && clientId === '') return 'client_id: the OIDC method needs the client id people log in with';
  return null;
}

/** What is wrong with a JWKS's text, or null: JSON with a `keys` list of public keys. */
export function jwksProblem(jwks: string): string | null {
  let parsed: unknown;
  try {
    parsed = JSON.parse(jwks);
  } catch {
    return 'not JSON';
  }
  const keys = (parsed as { keys?: unknown }).keys;
  if (!Array.isArray(keys) || keys.length === 0) return 'a JSON Web Key Set: {"keys": [...]} with at least one key';
  for (const key of keys as Array<Record<string, unknown>>) {
    if (typeof key !== 'object' || key === null || typeof key['kty'] !== 'string') return 'every key has a kty';
    if ('d' in key) return 'a key holds private material (d): give public keys only';
  }
  return null;
}

/** What is wrong with a role (as written, without its generation), or null. */
export function authRoleProblem(role: Record<string, unknown>): string | null {
  const { name, method, boundAudiences, boundSubject, boundClaims, userClaim, groupsClaim } = role;
  const { policies, groupPolicies, ttlSeconds, maxTtlSeconds, totpRequired } = role;
  if (!text(name) || !AUTH_ROLE_NAME_PATTERN.test(name))
    return 'a role name is a lower-case letter then up to 63 of [a-z0-9_-]';
  if (!(AUTH_METHODS as readonly unknown[]).includes(method)) return `the method is one of ${AUTH_METHODS.join(', ')}`;
  if (!texts(boundAudiences, AUTH_ROLE_BOUND_MAX)) return `bound audiences: at most ${AUTH_ROLE_BOUND_MAX}`;
  if (method !== 'ldap' && boundAudiences.length === 0)
    return 'a jwt or oidc role needs a bound audience (--bound-audience): a token made for another service must not log in here';
  if (!text(boundSubject)) return 'bound_subject is text';
  if (!Array.isArray(boundClaims) || boundClaims.length > AUTH_ROLE_BOUND_MAX)
    return `bound claims: at most ${AUTH_ROLE_BOUND_MAX}`;
  for (const bound of boundClaims as Array<Partial<BoundClaim>>)
    if (
      !text(bound?.claim) ||
      bound.claim === '' ||
      !texts(bound.values, AUTH_ROLE_BOUND_MAX) ||
      bound.values.length === 0
    )
      return 'a bound claim names the claim and at least one value (claim=value[,value])';
  if (!text(userClaim) || userClaim === '') return 'user_claim: the claim that names the subject (e.g. sub, email)';
  if (!text(groupsClaim)) return 'groups_claim is text';
  const policyNames: unknown[] = [];
  if (!Array.isArray(policies) || policies.length > AUTH_ROLE_POLICIES_MAX)
    return `a role grants at most ${AUTH_ROLE_POLICIES_MAX} policies`;
  policyNames.push(...policies);
  if (!Array.isArray(groupPolicies) || groupPolicies.length > AUTH_ROLE_GROUPS_MAX)
    return `a role maps at most ${AUTH_ROLE_GROUPS_MAX} groups`;
  for (const mapping of groupPolicies as Array<Partial<GroupPolicies>>) {
    if (!text(mapping?.group) || mapping.group === '') return 'a group mapping names its group';
    if (
      !Array.isArray(mapping.policies) ||
      mapping.policies.length === 0 ||
      mapping.policies.length > AUTH_ROLE_POLICIES_MAX
    )
      return `group ${JSON.stringify(mapping.group.slice(0, 64))}: 1 to ${AUTH_ROLE_POLICIES_MAX} policies`;
    policyNames.push(...mapping.policies);
  }
  if (policyNames.length === 0) return 'a role grants at least one policy (--policy, or --group-policy GROUP=POLICY)';
  for (const policy of policyNames)
    if (typeof policy !== 'string' || !POLICY_NAME_PATTERN.test(policy))
      return `policy ${JSON.stringify(String(policy).slice(0, 64))}: a lower-case letter then up to 63 of [a-z0-9_-]`;
  if (!Number.isSafeInteger(ttlSeconds) || !Number.isSafeInteger(maxTtlSeconds))
    return 'ttl and max_ttl are whole seconds';
  const ttl = ttlSeconds as number;
  const max = maxTtlSeconds as number;
  if (ttl < LOGIN_TTL_SECONDS_MIN || max < ttl || max > LOGIN_TTL_SECONDS_MAX)
    return `ttl is at least ${LOGIN_TTL_SECONDS_MIN} s, max_ttl at least ttl and at most ${LOGIN_TTL_SECONDS_MAX} s (30 days)`;
  if (typeof totpRequired !== 'boolean') return 'totp_required is true or false';
  return null;
}

/** Every policy a role may grant (its own and its groups'), once each. */
export function rolePolicies(role: Pick<AuthRole, 'policies' | 'groupPolicies'>): string[] {
  return [...new Set([...role.policies, ...role.groupPolicies.flatMap((g) => g.policies)])];
}
