import { readFileSync } from 'node:fs';
import { Command, InvalidArgumentError } from 'commander';
import type { AuthMethodSettings, AuthRoleSettings } from '../client/client.ts';
import { login, type LoginProof } from '../client/login.ts';
import { oidcCodeFlow } from './oidc-flow.ts';
import { withClient, writeIdentityDir } from './admin-commands.ts';
import { print } from './client-config.ts';
import { addClientOptions, outputOption, type ClientFlags } from './client-flags.ts';
import { printable } from './printable.ts';
import { readSecretLine } from './secret-input.ts';
import { durationSeconds } from './secret-commands.ts';

const repeatable = (value: string, all: string[]): string[] => [...all, value];

function readFileFor(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    throw new Error(`cannot read the ${what} file ${path}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** `claim=value[,value...]`, as --bound-claim takes it. */
function boundClaim(text: string): { claim: string; values: string[] } {
  const at = text.indexOf('=');
  if (at <= 0 || at === text.length - 1) throw new InvalidArgumentError('a bound claim is CLAIM=VALUE[,VALUE...]');
  return { claim: text.slice(0, at), values: text.slice(at + 1).split(',') };
}

/** `group=policy[,policy...]`, as --group-policy takes it. */
function groupPolicies(text: string): { group: string; policies: string[] } {
  const at = text.lastIndexOf('=');
  if (at <= 0 || at === text.length - 1) throw new InvalidArgumentError('a group mapping is GROUP=POLICY[,POLICY...]');
  return { group: text.slice(0, at), policies: text.slice(at + 1).split(',') };
}

function methodText(m: AuthMethodSettings): string {
  return Object.entries(m)
    .filter(
      ([key, value]) =>
        value !== '' &&
        value !== false &&
        !(Array.isArray(value) && value.length === 0) &&
        !key.endsWith('Pem') &&
        key !== 'staticJwks',
    )
    .map(([key, value]) => `${key}\t${printable(Array.isArray(value) ? value.join(',') : String(value))}`)
    .join('\n');
}

function roleText(r: AuthRoleSettings): string {
  const lines = [
    ['name', r.name],
    ['method', r.method],
    ['bound audiences', (r.boundAudiences ?? []).join(',')],
    ['bound subject', r.boundSubject ?? ''],
    ['bound claims', (r.boundClaims ?? []).map((b) => `${b.claim}=${b.values.join(',')}`).join(' ')],
    ['user claim', r.userClaim ?? ''],
    ['groups claim', r.groupsClaim ?? ''],
    ['policies', (r.policies ?? []).join(',')],
    ['group policies', (r.groupPolicies ?? []).map((g) => `${g.group}=${g.policies.join(',')}`).join(' ')],
    ['ttl', `${r.ttlSeconds ?? 0}s`],
    ['max ttl', `${r.maxTtlSeconds ?? 0}s`],
    ['totp', r.totpRequired === true ? 'required' : 'no'],
  ];
  return lines
    .filter(([, v]) => v !== '')
    .map(([k, v]) => `${k}\t${printable(v!)}`)
    .join('\n');
}

/** `coffer auth`: login methods (jwt, oidc, ldap) and the roles logins are checked against. */
export function authCommands(): Command {
  const auth = new Command('auth').description('login methods and roles: how people and workloads get a certificate');

  const jwt = auth
    .command('jwt')
    .description('tokens signed by an issuer (Kubernetes, CI, any OIDC issuer) for workloads');
  addClientOptions(jwt.command('configure'))
    .description("where the issuer's keys come from: its discovery document, or a JWKS file")
    .option('--discovery-url <url>', 'https://.../.well-known/openid-configuration')
    .option('--discovery-ca <file>', 'CA certificates to trust for the discovery and key fetches')
    .option('--static-keys <file>', 'a JWKS file of public keys, for clusters that cannot reach the issuer')
    .option('--bound-issuer <iss>', 'the iss every token carries (required with --static-keys)')
    .option(
      '--algorithm <alg>',
      'a signature algorithm to accept (repeatable; default RS256 and ES256)',
      repeatable,
      [],
    )
    .action(async (flags: ClientFlags & JwtFlags) => configureJwt('jwt', flags));
  const oidc = auth.command('oidc').description('people logging in through an OpenID provider (coffer login oidc)');
  addClientOptions(oidc.command('configure'))
    .description('the OpenID provider people log in with, and the client id the CLI uses')
    .requiredOption('--discovery-url <url>', 'https://.../.well-known/openid-configuration')
    .requiredOption('--client-id <id>', 'the OIDC client the CLI runs the code flow as (a public client)')
    .option('--discovery-ca <file>', 'CA certificates to trust for the discovery and key fetches')
    .option('--bound-issuer <iss>', "the iss every token carries (default: the discovery document's)")
    .option(
      '--algorithm <alg>',
      'a signature algorithm to accept (repeatable; default RS256 and ES256)',
      repeatable,
      [],
    )
    .action(async (flags: ClientFlags & JwtFlags) => configureJwt('oidc', flags));
  const ldap = auth.command('ldap').description('LDAP or Active Directory usernames and passwords');
  addClientOptions(ldap.command('configure'))
    .description('the LDAP server to bind to as the user, and where its groups are')
    .requiredOption('--url <url>', 'ldaps://host:port, or ldap://host:port with --start-tls')
    .option('--start-tls', 'upgrade an ldap:// connection with StartTLS before the bind')
    .option('--ldap-ca <file>', "CA certificates to trust for the LDAP server's certificate")
    .requiredOption('--user-dn <template>', 'the user DN, e.g. uid={{username}},ou=people,dc=example,dc=com')
    .option('--group-base-dn <dn>', 'where to search for the user’s groups (none read without it)', '')
    .option('--group-filter <filter>', 'the group search filter ({{dn}}: the user DN)', '(member={{dn}})')
    .option('--group-attribute <attr>', 'the attribute that names a group', 'cn')
    .action(async (flags: ClientFlags & LdapFlags) => {
      const settings: AuthMethodSettings = {
        method: 'ldap',
        url: flags.url,
        startTls: flags.startTls === true,
        caPem: flags.ldapCa === undefined ? '' : readFileFor(flags.ldapCa, 'LDAP CA'),
        userDnTemplate: flags.userDn,
        groupBaseDn: flags.groupBaseDn,
        groupFilter: flags.groupFilter,
        groupNameAttribute: flags.groupAttribute,
      };
      const reply = await withClient(flags, (c) => c.configureAuthMethod(settings));
      print(flags, reply, () => `the ldap login method is configured\n${methodText(reply)}`);
    });
  for (const [name, command] of [
    ['jwt', jwt],
    ['oidc', oidc],
    ['ldap', ldap],
  ] as const) {
    addClientOptions(command.command('show'))
      .description(`the ${name} method's configuration`)
      .action(async (flags: ClientFlags) => {
        const reply = await withClient(flags, (c) => c.getAuthMethod(name));
        print(flags, reply, () => methodText(reply));
      });
    addClientOptions(command.command('remove'))
      .description(`remove the ${name} method: its roles cannot log in until it is configured again`)
      .action(async (flags: ClientFlags) => {
        print(flags, await withClient(flags, (c) => c.removeAuthMethod(name)), () => `the ${name} method was removed`);
      });
  }

  const totp = auth.command('totp').description('a second factor for roles that require one (--totp)');
  addClientOptions(totp.command('enroll <identity>'))
    .description('make a TOTP secret for a login identity (ROLE:SUBJECT); its otpauth URI is shown this once')
    .action(async (identity: string, flags: ClientFlags) => {
      const reply = await withClient(flags, (c) => c.enrollTotp(identity));
      print(
        flags,
        reply,
        () =>
          `TOTP enrolled for ${printable(reply.identity)}; add it to an authenticator app (shown once):\n${reply.otpauthUri}`,
      );
    });
  addClientOptions(totp.command('remove <identity>'))
    .description("remove a login identity's TOTP enrolment (a role that requires one refuses it until enrolled again)")
    .action(async (identity: string, flags: ClientFlags) => {
      print(
        flags,
        await withClient(flags, (c) => c.removeTotp(identity)),
        () => `TOTP of ${printable(identity)} removed`,
      );
    });

  const role = auth
    .command('role')
    .description('roles: which subjects of a method log in, with which policies, for how long');
  addClientOptions(role.command('put <name>'))
    .description('write a role (a new one, or replace one: its logins go on)')
    .requiredOption('--method <method>', 'jwt, oidc or ldap')
    .option(
      '--bound-audience <aud>',
      "a token's aud must hold one of these (repeatable; required for jwt and oidc)",
      repeatable,
      [],
    )
    .option('--bound-subject <glob>', "the token's sub (LDAP: the username) must match; * matches any run")
    .option(
      '--bound-claim <claim=values>',
      'CLAIM=V1,V2: the claim must hold one of these (repeatable)',
      (v: string, all: ReturnType<typeof boundClaim>[]) => [...all, boundClaim(v)],
      [],
    )
    .option('--user-claim <claim>', 'the claim naming the subject (default sub; email for people)')
    .option('--groups-claim <claim>', "the claim listing a token's groups (e.g. groups)")
    .option('--policy <policy>', 'a policy every login gets (repeatable)', repeatable, [])
    .option(
      '--group-policy <group=policies>',
      'GROUP=P1,P2: more policies for a group (repeatable)',
      (v: string, all: ReturnType<typeof groupPolicies>[]) => [...all, groupPolicies(v)],
      [],
    )
    .option('--ttl <duration>', 'certificate lifetime (default 1h)', durationSeconds)
    .option('--max-ttl <duration>', 'the longest a login may ask for (default: --ttl)', durationSeconds)
    .option('--totp', 'a login also needs a TOTP code of the subject (enrolled with coffer auth totp enroll)')
    .action(async (name: string, flags: ClientFlags & RoleFlags) => {
      if (!['jwt', 'oidc', 'ldap'].includes(flags.method))
        throw new InvalidArgumentError('--method is jwt, oidc or ldap');
      const settings: AuthRoleSettings = {
        name,
        method: flags.method as AuthRoleSettings['method'],
        boundAudiences: flags.boundAudience,
        boundSubject: flags.boundSubject ?? '',
        boundClaims: flags.boundClaim,
        userClaim: flags.userClaim ?? '',
        groupsClaim: flags.groupsClaim ?? '',
        policies: flags.policy,
        groupPolicies: flags.groupPolicy,
        ttlSeconds: flags.ttl ?? 0,
        maxTtlSeconds: flags.maxTtl ?? 0,
        totpRequired: flags.totp === true,
      };
      const reply = await withClient(flags, (c) => c.putAuthRole(settings));
      print(flags, reply, () => `role ${printable(name)} written\n${roleText(reply)}`);
    });
  addClientOptions(role.command('get <name>'))
    .description("a role's settings")
    .action(async (name: string, flags: ClientFlags) => {
      const reply = await withClient(flags, (c) => c.getAuthRole(name));
      print(flags, reply, () => roleText(reply));
    });
  addClientOptions(role.command('ls'))
    .description('the roles you administer')
    .action(async (flags: ClientFlags) => {
      const reply = await withClient(flags, (c) => c.listAuthRoles());
      print(flags, reply.roles, () =>
        reply.roles
          .map((r) => `${printable(r.name)}\t${r.method}\t${(r.policies ?? []).map(printable).join(',') || '-'}`)
          .join('\n'),
      );
    });
  addClientOptions(role.command('rm <name>'))
    .description('remove a role: every certificate its logins got stops working, on every manager at once')
    .action(async (name: string, flags: ClientFlags) => {
      print(flags, await withClient(flags, (c) => c.removeAuthRole(name)), () => `role ${printable(name)} removed`);
    });
  return auth;
}

interface JwtFlags {
  discoveryUrl?: string;
  discoveryCa?: string;
  staticKeys?: string;
  boundIssuer?: string;
  algorithm: string[];
  clientId?: string;
}
interface LdapFlags {
  url: string;
  startTls?: boolean;
  ldapCa?: string;
  userDn: string;
  groupBaseDn: string;
  groupFilter: string;
  groupAttribute: string;
}
interface RoleFlags {
  method: string;
  boundAudience: string[];
  boundSubject?: string;
  boundClaim: Array<{ claim: string; values: string[] }>;
  userClaim?: string;
  groupsClaim?: string;
  policy: string[];
  groupPolicy: Array<{ group: string; policies: string[] }>;
  ttl?: number;
  maxTtl?: number;
  totp?: boolean;
}

async function configureJwt(method: 'jwt' | 'oidc', flags: ClientFlags & JwtFlags): Promise<void> {
  const settings: AuthMethodSettings = {
    method,
    discoveryUrl: flags.discoveryUrl ?? '',
    discoveryCaPem: flags.discoveryCa === undefined ? '' : readFileFor(flags.discoveryCa, 'discovery CA'),
    staticJwks: flags.staticKeys === undefined ? '' : readFileFor(flags.staticKeys, 'JWKS'),
    boundIssuer: flags.boundIssuer ?? '',
    algorithms: flags.algorithm,
    clientId: flags.clientId ?? '',
  };
  const reply = await withClient(flags, (c) => c.configureAuthMethod(settings));
  print(flags, reply, () => `the ${method} login method is configured\n${methodText(reply)}`);
}

interface LoginFlags {
  addr?: string;
  ca?: string;
  out: string;
  role: string;
  ttl?: number;
  output: string;
}

/** Where to log in: managers' addresses and the cluster CA, from flags or COFFER_ADDR and COFFER_CA. */
function loginTarget(flags: LoginFlags): { addresses: string[]; caPem: string; addr: string } {
  const addr = flags.addr ?? process.env['COFFER_ADDR'] ?? '';
  const ca = flags.ca ?? process.env['COFFER_CA'] ?? '';
  if (addr === '') throw new Error('addr is not set: pass --addr or set COFFER_ADDR');
  if (ca === '') throw new Error('ca is not set: pass --ca (the cluster CA certificate) or set COFFER_CA');
  return {
    addresses: addr
      .split(',')
      .map((a) => a.trim())
      .filter((a) => a !== ''),
    caPem: readFileFor(ca, 'CA certificate'),
    addr,
  };
}

/** Logs in and writes DIR/client.env, the key (mode 600) and the certificate. */
export async function loginAndWrite(flags: LoginFlags, proof: LoginProof): Promise<void> {
  const target = loginTarget(flags);
  const result = await login(target, { ...proof, ...(flags.ttl === undefined ? {} : { ttlSeconds: flags.ttl }) });
  // The identity's files are named for it; ROLE:SUBJECT holds characters file names should not.
  const fileName = result.identity.replace(/[^A-Za-z0-9._@-]/g, '_');
  writeIdentityDir(flags.out, fileName, result, result.keyPem, target.addr);
  print(
    flags as ClientFlags,
    { identity: result.identity, policies: result.policies, notAfterMs: result.notAfterMs, dir: flags.out },
    () =>
      `logged in as ${printable(result.identity)} (policies ${result.policies.map(printable).join(',') || '-'}) until ${new Date(result.notAfterMs).toISOString()}; source ${printable(flags.out)}/client.env`,
  );
}

function addLoginOptions(command: Command): Command {
  return command
    .requiredOption('--role <name>', 'the role to log in with')
    .requiredOption('--out <dir>', 'where to write client.env, the key and the certificate')
    .option('--ttl <duration>', "a shorter certificate than the role's", durationSeconds)
    .option('--totp-code <code>', 'the current TOTP code, when the role requires one')
    .option('--addr <host:port,...>', 'managers to log in at (default: $COFFER_ADDR)')
    .option('--ca <file>', 'the cluster CA certificate (default: $COFFER_CA)')
    .addOption(outputOption());
}

/** `coffer login`: exchange a proof of identity for a short-lived certificate. */
export function loginCommands(): Command {
  const loginCommand = new Command('login').description(
    'log in with an identity you have: get a short-lived certificate',
  );
  addLoginOptions(loginCommand.command('jwt'))
    .description('log in with a token from a file (a Kubernetes service-account token, a CI OIDC token)')
    .requiredOption('--token-file <file>', 'the token (read at once; a projected token is re-read at each login)')
    .action(async (flags: LoginFlags & { tokenFile: string; totpCode?: string }) => {
      const jwt = readFileFor(flags.tokenFile, 'token').trim();
      await loginAndWrite(flags, {
        role: flags.role,
        jwt,
        ...(flags.totpCode === undefined ? {} : { totpCode: flags.totpCode }),
      });
    });
  addLoginOptions(loginCommand.command('ldap'))
    .description('log in with an LDAP or Active Directory username; the password is read from the terminal or stdin')
    .requiredOption('--username <name>', 'your LDAP username')
    .action(async (flags: LoginFlags & { username: string; totpCode?: string }) => {
      const password = await readSecretLine('password: ', 'the password');
      await loginAndWrite(flags, {
        role: flags.role,
        username: flags.username,
        password,
        ...(flags.totpCode === undefined ? {} : { totpCode: flags.totpCode }),
      });
    });
  addLoginOptions(loginCommand.command('oidc'))
    .description(
      'log in as a person through an OpenID provider: sign in in a browser (authorization code with PKCE, loopback redirect)',
    )
    .requiredOption('--issuer <url>', "the provider's issuer, https://... exactly as it names itself")
    .requiredOption(
      '--client-id <id>',
      'the public client registered for the CLI (the one coffer auth oidc configure was given)',
    )
    .option('--issuer-ca <file>', "CA certificates to trust for the provider's HTTPS (default: the system's)")
    .option('--scope <scopes>', "the scopes to ask for, space-separated (default 'openid email groups')")
    .option('--open', 'also open the URL in a browser (xdg-open or open); it is printed either way')
    .option('--timeout <duration>', 'how long to wait for the browser to come back (default 300s)', durationSeconds)
    .action(
      async (
        flags: LoginFlags & {
          issuer: string;
          clientId: string;
          issuerCa?: string;
          scope?: string;
          open?: boolean;
          timeout?: number;
          totpCode?: string;
        },
      ) => {
        if (flags.timeout === 0) throw new InvalidArgumentError('--timeout: give the browser some time (e.g. 5m)');
        // Where to log in is checked before the browser is sent anywhere, not after the user signed in.
        loginTarget(flags);
        const idToken = await oidcCodeFlow({
          issuer: flags.issuer,
          clientId: flags.clientId,
          issuerCaPem: flags.issuerCa === undefined ? '' : readFileFor(flags.issuerCa, 'issuer CA'),
          ...(flags.scope === undefined ? {} : { scope: flags.scope }),
          ...(flags.timeout === undefined ? {} : { timeoutMs: flags.timeout * 1000 }),
          openBrowser: flags.open === true,
          tell: (line) => process.stderr.write(`${line}\n`),
        });
        await loginAndWrite(flags, {
          role: flags.role,
          jwt: idToken,
          ...(flags.totpCode === undefined ? {} : { totpCode: flags.totpCode }),
        });
      },
    );
  return loginCommand;
}
