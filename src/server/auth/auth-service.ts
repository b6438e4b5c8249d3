import type * as grpc from '@grpc/grpc-js';
import { CryptoError } from '../../crypto/errors.ts';
import { identityOf, publicKeyOfRequest, signCertificate } from '../../crypto/pki.ts';
import { encodeAccessCommand } from '../../state/access-state.ts';
import { accessGuard } from '../../state/access-guard.ts';
import {
  AUTH_METHODS,
  AUTH_ROLE_NAME_PATTERN,
  LOGIN_IDENTITY_PATTERN,
  LOGIN_TTL_SECONDS_DEFAULT,
  LOGIN_TTL_SECONDS_MIN,
  authMethodProblem,
  authRoleProblem,
  loginIdentityName,
  type AuthMethod,
  type AuthMethodConfig,
  type AuthRole,
  type JwtMethodConfig,
} from '../../state/auth-config.ts';
import type { ServiceContext } from '../context.ts';
import { refuse, ServiceError } from '../errors.ts';
import { FailedAttempts, sourceHost } from '../failed-attempts.ts';
import { generateSecret, generateURI, verify as verifyTotp } from 'otplib';
import { authorize, noteTarget, unary, type Call } from '../rpc.ts';
import { JwtVerifier } from './jwt-verifier.ts';
import { ldapLogin } from './ldap-verifier.ts';
import { bindingRefusal, claimStrings, loginPolicies, subjectOf, type ProvenSubject } from './role-binding.ts';

interface LoginRequest {
  role: string;
  csrPem: string;
  jwt: string;
  username: string;
  password: string;
  totpCode: string;
  ttlSeconds: number;
}

type MethodMessage = Record<string, unknown> & { method: string };
type RoleMessage = {
  name: string;
  method: string;
  boundAudiences: string[];
  boundSubject: string;
  boundClaims: Array<{ claim: string; values: string[] }>;
  userClaim: string;
  groupsClaim: string;
  policies: string[];
  groupPolicies: Array<{ group: string; policies: string[] }>;
  ttlSeconds: number;
  maxTtlSeconds: number;
  totpRequired: boolean;
};

/**
 * Failed logins (a refused proof) a source address may make in a minute on one manager: enough for
 * people who mistype, and for many workloads behind one address; a password or a TOTP code cannot
 * be guessed at network speed.
 */
export const LOGIN_FAILURES_PER_SOURCE_MAX = 30;

/** Wrong TOTP codes one login identity may give in a minute on one manager (from any address). */
export const TOTP_FAILURES_PER_IDENTITY_MAX = 5;

/** RFC 6238's defaults, which every authenticator app takes: SHA-1, 6 digits, 30 s. */
export const TOTP_PERIOD_SECONDS = 30;

const ROLE_NAME_RULE = 'a role name is a lower-case letter then up to 63 of [a-z0-9_-]';

/**
 * The Auth service: logins (a proof checked against a role, exchanged for a short-lived client
 * certificate) and the methods and roles that decide them. A login is proposed as a replicated
 * `identity-login` by the manager that checked the proof, so every manager knows the new key at
 * the same index, and a role removed, or the subject revoked, stops it everywhere at once.
 */
export function authService(ctx: ServiceContext): grpc.UntypedServiceImplementation {
  const access = ctx.state.access;
  const verifier = new JwtVerifier();
  // Failed logins per source address: a password or a TOTP code cannot be guessed at network speed.
  const failures = new FailedAttempts(undefined, 'logins', LOGIN_FAILURES_PER_SOURCE_MAX);
  const totpFailures = new FailedAttempts(undefined, 'TOTP codes of', TOTP_FAILURES_PER_IDENTITY_MAX);

  const write = async (command: Parameters<typeof encodeAccessCommand>[0], caller: { id: string; spki: string }) => {
    const refusal = accessGuard(access, command, { name: caller.id, key: caller.spki });
    if (refusal !== null) throw refuse('GRANT_NOT_HELD', refusal);
    await ctx.propose(encodeAccessCommand(command, { name: caller.id, key: caller.spki }));
  };

  /** Who the proof says the caller is, for this role; throws a refusal that says what was wrong. */
  const prove = async (role: AuthRole, config: AuthMethodConfig, request: LoginRequest): Promise<ProvenSubject> => {
    if (config.method === 'ldap') {
      const { groups } = await ldapLogin(config, request.username, request.password);
      // LDAP and Active Directory match names without regard to case: so does the identity, or
      // ALICE would be another subject than a revoked alice.
      const username = request.username.toLowerCase();
      return { sub: username, subject: username, claims: { groups }, groups };
    }
    const payload = await verifier.verify(config, role.boundAudiences, request.jwt, ctx.clock.now());
    const claims = payload as Record<string, unknown>;
    return {
      sub: typeof payload.sub === 'string' ? payload.sub : '',
      subject: subjectOf(role, claims),
      claims,
      groups: role.groupsClaim === '' ? [] : claimStrings(claims[role.groupsClaim]),
    };
  };

  /** The time step of a good TOTP code of `name`'s enrolment, not used before; else a refusal. */
  const checkTotp = async (name: string, code: string): Promise<number> => {
    const enrolment = access.totp.get(name);
    if (enrolment === undefined)
      throw refuse(
        'TOTP_REQUIRED',
        `this role requires a TOTP code, and identity ${name} has none enrolled: an administrator enrols it (coffer auth totp enroll ${name})`,
      );
    if (code === '')
      throw refuse('TOTP_REQUIRED', 'this role requires a TOTP code: give the current one (--totp-code)');
    // Codes are guessed per subject too (from many addresses, with one stolen password).
    const waiting = totpFailures.refusal(name);
    if (waiting !== null) throw refuse('RATE_LIMITED', waiting);
    const succeeded = totpFailures.attempt(name);
    if (!/^\d{6}$/.test(code)) throw refuse('TOTP_INVALID', 'a TOTP code is 6 digits', { field: 'totp_code' });
    const result = await verifyTotp({
      secret: enrolment.secret,
      token: code,
      epoch: Math.floor(ctx.clock.now() / 1000),
      // A code of the step before or after is taken too (clocks of phones drift).
      epochTolerance: TOTP_PERIOD_SECONDS,
      afterTimeStep: enrolment.lastTimeStep,
    }).catch(() => ({ valid: false as const }));
    if (!result.valid || !('timeStep' in result))
      throw refuse('TOTP_INVALID', 'the TOTP code is wrong, too old, or was used already: wait for the next one');
    succeeded();
    return (result as { timeStep: number }).timeStep;
  };

  const login = async (call: Call<LoginRequest>) => {
    const request = call.request;
    const source = sourceHost(call.getPeer());
    const waiting = failures.refusal(source);
    if (waiting !== null) throw refuse('RATE_LIMITED', waiting);
    // Counted as a failure until it succeeds: logins sent all at once cannot all pass the check.
    const succeeded = failures.attempt(source);
    if (!AUTH_ROLE_NAME_PATTERN.test(request.role))
      throw refuse('INVALID_ARGUMENT', `role: ${ROLE_NAME_RULE}`, { field: 'role' });
    if (request.csrPem === '')
      throw refuse('INVALID_ARGUMENT', 'csr_pem: a PKCS #10 certification request for your key is required', {
        field: 'csr_pem',
      });
    await ctx.readPoint();
    const role = access.authRoles.get(request.role);
    if (role === undefined) throw refuse('ROLE_NOT_FOUND', `login role "${request.role}" does not exist`);
    const config = access.authMethods.get(role.method);
    if (config === undefined)
      throw refuse(
        'AUTH_METHOD_NOT_CONFIGURED',
        `role "${role.name}" logs in with the ${role.method} method, which is not configured (coffer auth ${role.method} configure)`,
      );
    if (config.method === 'ldap' ? request.username === '' : request.jwt === '')
      throw refuse(
        'INVALID_ARGUMENT',
        config.method === 'ldap' ? 'username and password are required by an ldap role' : 'jwt: the token is required',
        { field: config.method === 'ldap' ? 'username' : 'jwt' },
      );
    let publicKeyPem: string;
    try {
      publicKeyPem = publicKeyOfRequest(request.csrPem);
    } catch (error) {
      if (error instanceof CryptoError)
        throw refuse('INVALID_ARGUMENT', `csr_pem: ${error.message}`, { field: 'csr_pem' });
      throw error;
    }
    let proven: ProvenSubject;
    try {
      proven = await prove(role, config, request);
      const refusal = bindingRefusal(role, proven);
      if (refusal !== null) throw refusal;
    } catch (error) {
      // An issuer or LDAP server that cannot be reached is not the caller's failure.
      if (
        error instanceof ServiceError &&
        (error.reason === 'ISSUER_UNREACHABLE' || error.reason === 'LDAP_UNREACHABLE')
      )
        succeeded();
      throw error;
    }
    const name = loginIdentityName(role.name, proven.subject);
    // The audit record of a login names the identity it made (the subject), whatever the outcome from here.
    noteTarget(call, `sys/auth/roles/${role.name} as ${name}`);
    let totpStep = 0;
    if (role.totpRequired) {
      totpStep = await checkTotp(name, request.totpCode);
    }
    succeeded();
    const policies = loginPolicies(role, proven.groups);
    const ttlSeconds =
      request.ttlSeconds === 0
        ? role.ttlSeconds
        : Math.min(Math.max(request.ttlSeconds, LOGIN_TTL_SECONDS_MIN), role.maxTtlSeconds);
    const nowMs = ctx.clock.now();
    const notAfterMs = nowMs + ttlSeconds * 1000;
    const ca = ctx.pki.signing();
    const certificatePem = signCertificate(ca, publicKeyPem, {
      id: name,
      role: 'client',
      clusterId: ctx.clusterId,
      nowMs,
      validityDays: ttlSeconds / 86_400,
      notAfterMs,
    });
    const issued = identityOf(certificatePem);
    await ctx.propose(
      encodeAccessCommand({
        op: 'identity-login',
        name,
        role: role.name,
        generation: role.generation,
        subject: proven.subject,
        policies,
        key: issued.spki,
        serial: issued.serial,
        caGen: ca.gen,
        nowMs,
        notAfterMs,
        totpStep,
      }),
    );
    ctx.log.info(
      { event: 'login', role: role.name, identity: name, serial: issued.serial, ttlSeconds },
      `identity ${name} logged in with role ${role.name}`,
    );
    return {
      certificatePem,
      caCertificatePem: ctx.pki.trustPem(),
      identity: name,
      policies,
      serial: issued.serial,
      notAfterMs: issued.notAfterMs,
      ttlSeconds,
    };
  };

  return {
    login: unary(ctx, 'Auth.Login', login, { anonymous: true }),
    enrollTotp: unary(ctx, 'Auth.EnrollTotp', async (call: Call<{ identity: string }>) => {
      const name = call.request.identity;
      if (!LOGIN_IDENTITY_PATTERN.test(name))
        throw refuse('INVALID_NAME', 'a TOTP enrolment is for a login identity, ROLE:SUBJECT', { field: 'identity' });
      const caller = authorize(ctx, call, 'admin', `sys/identities/${name}`);
      // 160 random bits (RFC 4226's recommendation), made here and replicated sealed.
      const secret = generateSecret({ length: 20 });
      await write({ op: 'totp-enroll', name, secret, nowMs: ctx.clock.now() }, caller);
      ctx.log.info({ event: 'totp-enrolled', identity: name }, `enrolled a TOTP secret for ${name}`);
      return {
        identity: name,
        secret,
        otpauthUri: generateURI({
          issuer: `Coffer ${ctx.clusterId}`,
          label: name,
          secret,
          period: TOTP_PERIOD_SECONDS,
        }),
      };
    }),
    removeTotp: unary(ctx, 'Auth.RemoveTotp', async (call: Call<{ identity: string }>) => {
      const name = call.request.identity;
      if (!LOGIN_IDENTITY_PATTERN.test(name))
        throw refuse('INVALID_NAME', 'a TOTP enrolment is for a login identity, ROLE:SUBJECT', { field: 'identity' });
      const caller = authorize(ctx, call, 'admin', `sys/identities/${name}`);
      await write({ op: 'totp-remove', name }, caller);
      return {};
    }),
    configureMethod: unary(ctx, 'Auth.ConfigureMethod', async (call: Call<MethodMessage>) => {
      const method = call.request.method;
      if (!(AUTH_METHODS as readonly string[]).includes(method))
        throw refuse('INVALID_ARGUMENT', `method: one of ${AUTH_METHODS.join(', ')}`, { field: 'method' });
      const caller = authorize(ctx, call, 'admin', `sys/auth/${method}`);
      const config = methodConfigOf(call.request);
      const problem = authMethodProblem(config as unknown as Record<string, unknown>);
      if (problem !== null) throw refuse('INVALID_ARGUMENT', `the ${method} method: ${problem}`);
      await write({ op: 'auth-method-put', name: method as AuthMethod, config }, caller);
      ctx.log.info({ event: 'auth-method-configured', method }, `the ${method} login method was configured`);
      return methodMessage(config);
    }),
    getMethod: unary(ctx, 'Auth.GetMethod', async (call: Call<{ method: string }>) => {
      const method = call.request.method;
      if (!(AUTH_METHODS as readonly string[]).includes(method))
        throw refuse('INVALID_ARGUMENT', `method: one of ${AUTH_METHODS.join(', ')}`, { field: 'method' });
      authorize(ctx, call, 'admin', `sys/auth/${method}`);
      await ctx.readPoint();
      const config = access.authMethods.get(method as AuthMethod);
      if (config === undefined)
        throw refuse('AUTH_METHOD_NOT_CONFIGURED', `the ${method} login method is not configured`);
      return methodMessage(config);
    }),
    removeMethod: unary(ctx, 'Auth.RemoveMethod', async (call: Call<{ method: string }>) => {
      const method = call.request.method;
      if (!(AUTH_METHODS as readonly string[]).includes(method))
        throw refuse('INVALID_ARGUMENT', `method: one of ${AUTH_METHODS.join(', ')}`, { field: 'method' });
      const caller = authorize(ctx, call, 'admin', `sys/auth/${method}`);
      await write({ op: 'auth-method-remove', name: method as AuthMethod }, caller);
      return {};
    }),
    putRole: unary(ctx, 'Auth.PutRole', async (call: Call<RoleMessage>) => {
      const name = call.request.name;
      if (!AUTH_ROLE_NAME_PATTERN.test(name)) throw refuse('INVALID_NAME', ROLE_NAME_RULE, { field: 'name' });
      const caller = authorize(ctx, call, 'admin', `sys/auth/roles/${name}`);
      const role = roleOf(call.request);
      const problem = authRoleProblem(role as unknown as Record<string, unknown>);
      if (problem !== null) throw refuse('INVALID_ARGUMENT', `role "${name}": ${problem}`);
      for (const policy of new Set([...role.policies, ...role.groupPolicies.flatMap((g) => g.policies)]))
        if (policy !== 'root' && !access.policies.has(policy))
          throw refuse('UNKNOWN_POLICY', `policy "${policy}" does not exist; put it first`, { policy });
      await write({ op: 'auth-role-put', name, role }, caller);
      ctx.log.info({ event: 'auth-role-put', role: name }, `login role ${name} was written`);
      return roleMessage({ ...role, generation: 0 });
    }),
    getRole: unary(ctx, 'Auth.GetRole', async (call: Call<{ name: string }>) => {
      const name = call.request.name;
      if (!AUTH_ROLE_NAME_PATTERN.test(name)) throw refuse('INVALID_NAME', ROLE_NAME_RULE, { field: 'name' });
      authorize(ctx, call, 'admin', `sys/auth/roles/${name}`);
      await ctx.readPoint();
      const role = access.authRoles.get(name);
      if (role === undefined) throw refuse('ROLE_NOT_FOUND', `login role "${name}" does not exist`);
      return roleMessage(role);
    }),
    listRoles: unary(ctx, 'Auth.ListRoles', async (call: Call<object>) => {
      const caller = authorize(ctx, call, 'admin', 'sys/auth/roles');
      await ctx.readPoint();
      return {
        roles: [...access.authRoles.values()]
          .filter((r) => access.decide(caller.id, 'admin', `sys/auth/roles/${r.name}`).allowed)
          .sort((a, b) => a.name.localeCompare(b.name))
          .map(roleMessage),
      };
    }),
    removeRole: unary(ctx, 'Auth.RemoveRole', async (call: Call<{ name: string }>) => {
      const name = call.request.name;
      if (!AUTH_ROLE_NAME_PATTERN.test(name)) throw refuse('INVALID_NAME', ROLE_NAME_RULE, { field: 'name' });
      const caller = authorize(ctx, call, 'admin', `sys/auth/roles/${name}`);
      await write({ op: 'auth-role-remove', name }, caller);
      ctx.log.warn(
        { event: 'auth-role-removed', role: name },
        `login role ${name} was removed: every certificate its logins got stops working`,
      );
      return {};
    }),
  };
}

/** A method's configuration from its message, defaults filled in. */
function methodConfigOf(m: MethodMessage): AuthMethodConfig {
  const text = (key: string): string => (typeof m[key] === 'string' ? (m[key] as string) : '');
  if (m.method === 'ldap')
    return {
      method: 'ldap',
      url: text('url'),
      startTls: m['startTls'] === true,
      caPem: text('caPem'),
      userDnTemplate: text('userDnTemplate'),
      groupBaseDn: text('groupBaseDn'),
      groupFilter: text('groupFilter') === '' ? '(member={{dn}})' : text('groupFilter'),
      groupNameAttribute: text('groupNameAttribute') === '' ? 'cn' : text('groupNameAttribute'),
    };
  const algorithms = Array.isArray(m['algorithms']) ? (m['algorithms'] as string[]) : [];
  return {
    method: m.method as JwtMethodConfig['method'],
    discoveryUrl: text('discoveryUrl'),
    discoveryCaPem: text('discoveryCaPem'),
    staticJwks: text('staticJwks'),
    boundIssuer: text('boundIssuer'),
    algorithms: algorithms.length === 0 ? ['RS256', 'ES256'] : algorithms,
    clientId: text('clientId'),
  };
}

function methodMessage(config: AuthMethodConfig): Record<string, unknown> {
  return { ...config };
}

function roleOf(m: RoleMessage): Omit<AuthRole, 'generation'> {
  const ttlSeconds = m.ttlSeconds === 0 ? LOGIN_TTL_SECONDS_DEFAULT : m.ttlSeconds;
  return {
    name: m.name,
    method: m.method as AuthMethod,
    boundAudiences: m.boundAudiences,
    boundSubject: m.boundSubject,
    boundClaims: m.boundClaims.map((b) => ({ claim: b.claim, values: b.values })),
    userClaim: m.userClaim === '' ? 'sub' : m.userClaim,
    groupsClaim: m.groupsClaim,
    policies: m.policies,
    groupPolicies: m.groupPolicies.map((g) => ({ group: g.group, policies: g.policies })),
    ttlSeconds,
    maxTtlSeconds: m.maxTtlSeconds === 0 ? ttlSeconds : m.maxTtlSeconds,
    totpRequired: m.totpRequired,
  };
}

function roleMessage(role: AuthRole): RoleMessage {
  const { generation: _generation, ...rest } = role;
  return {
    ...rest,
    boundAudiences: [...role.boundAudiences],
    boundClaims: role.boundClaims.map((b) => ({ claim: b.claim, values: [...b.values] })),
    policies: [...role.policies],
    groupPolicies: role.groupPolicies.map((g) => ({ group: g.group, policies: [...g.policies] })),
  };
}
