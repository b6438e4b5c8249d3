import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { SignJWT, exportJWK, generateKeyPair, importJWK, type CryptoKey, type JWTPayload } from 'jose';
import { ClientError, CofferClient } from '../../src/client/client.ts';
import { login, type LoginResult } from '../../src/client/login.ts';
import { certificationRequest, newLeafKey } from '../../src/crypto/pki.ts';
import { AdminClient, coffer, eventually } from '../processes/processes.ts';
import { InProcessCluster } from '../server/in-process-cluster.ts';

// The jwt method with static keys, against three managers in this process: a workload's token
// (a Kubernetes or CI token) exchanged for a short-lived certificate, and every way a token,
// a role or a request can be wrong.

const ISSUER = 'https://issuer.example.test';
let cluster: InProcessCluster;
let admin: CofferClient;
let dir: string;
let signingKey: CryptoKey;
let otherKey: CryptoKey;
const KID = 'key-1';

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'coffer-jwt-'));
  cluster = await InProcessCluster.start(3);
  await cluster.servesReads(0);
  admin = cluster.adminClient();
  const pair = await generateKeyPair('RS256', { extractable: true });
  signingKey = pair.privateKey;
  otherKey = (await generateKeyPair('RS256')).privateKey;
  const jwk = { ...(await exportJWK(pair.publicKey)), kid: KID, alg: 'RS256', use: 'sig' };
  await admin.configureAuthMethod({ method: 'jwt', staticJwks: JSON.stringify({ keys: [jwk] }), boundIssuer: ISSUER });
  await admin.putPolicy('app-read', [{ path: 'app/**', capabilities: ['read'] }]);
  await admin.putPolicy('ops-read', [{ path: 'ops/**', capabilities: ['read'] }]);
  await admin.put('app/db', Buffer.from('app-password'));
  await admin.put('ops/db', Buffer.from('ops-password'));
  await admin.putAuthRole({
    name: 'ci',
    method: 'jwt',
    boundAudiences: ['coffer'],
    boundSubject: 'repo:acme/*',
    boundClaims: [{ claim: 'ref', values: ['refs/heads/main', 'refs/tags/*'] }],
    groupsClaim: 'groups',
    policies: ['app-read'],
    groupPolicies: [{ group: 'ops', policies: ['ops-read'] }],
    ttlSeconds: 600,
    maxTtlSeconds: 1200,
  });
});

after(async () => {
  admin?.close();
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const nowS = (): number => Math.floor(Date.now() / 1000);

/** A token as an issuer makes it; `claims` override or remove (undefined) the usual ones. */
function token(
  claims: Record<string, unknown> = {},
  options: { key?: CryptoKey; alg?: string; kid?: string } = {},
): Promise<string> {
  const payload: Record<string, unknown> = {
    iss: ISSUER,
    aud: 'coffer',
    sub: 'repo:acme/app',
    ref: 'refs/heads/main',
    iat: nowS(),
    exp: nowS() + 300,
    ...claims,
  };
  for (const [k, v] of Object.entries(payload)) if (v === undefined) delete payload[k];
  return new SignJWT(payload as JWTPayload)
    .setProtectedHeader({ alg: options.alg ?? 'RS256', kid: options.kid ?? KID })
    .sign(options.key ?? signingKey);
}

const caPem = (): string => readFileSync(join(cluster.adminDir, 'ca.crt'), 'utf8');
const loginAt = (jwt: string, extra: { role?: string; ttlSeconds?: number } = {}): Promise<LoginResult> =>
  login({ addresses: cluster.addresses, caPem: caPem() }, { role: extra.role ?? 'ci', jwt, ...extra });

function clientOf(result: LoginResult, addresses = cluster.addresses): CofferClient {
  return new CofferClient({
    addresses,
    caPem: result.caCertificatePem,
    certPem: result.certificatePem,
    keyPem: result.keyPem,
  });
}

async function refused(promise: Promise<unknown>, reason: string, code: grpc.status): Promise<ClientError> {
  const error = await promise.then(
    () => assert.fail(`expected ${reason}`),
    (e: unknown) => e,
  );
  assert.ok(error instanceof ClientError, String(error));
  assert.equal(error.reason, reason, error.message);
  assert.equal(error.code, code, `${grpc.status[error.code]}: ${error.message}`);
  return error;
}

test('a workload logs in with its token and reads what the role grants, on every manager, for the role ttl', {
  timeout: 60_000,
}, async () => {
  const before = Date.now();
  const result = await loginAt(await token({ groups: ['ops', 'other'] }));
  assert.equal(result.identity, 'ci:repo:acme/app');
  assert.deepEqual([...result.policies].sort(), ['app-read', 'ops-read']);
  // The role's ttl, not a year.
  assert.ok(Math.abs(result.notAfterMs - (before + 600_000)) < 5_000, `ends ${result.notAfterMs - before} ms on`);
  for (const address of cluster.addresses) {
    const client = clientOf(result, [address]);
    try {
      const got = await eventually('the login to be applied here', 10_000, async () =>
        client.get('app/db').catch(() => undefined),
      );
      assert.equal(Buffer.from(got.value).toString(), 'app-password');
      assert.equal(Buffer.from((await client.get('ops/db')).value).toString(), 'ops-password');
    } finally {
      client.close();
    }
  }
  // Without the ops group, no ops policy; a longer ttl than the maximum is capped.
  const plain = await loginAt(await token({ sub: 'repo:acme/web' }), { ttlSeconds: 99_999 });
  assert.deepEqual(plain.policies, ['app-read']);
  assert.ok(plain.notAfterMs - Date.now() <= 1_200_000 + 5_000, 'capped at the role max ttl');
  const client = clientOf(plain);
  try {
    await refused(client.get('ops/db'), 'POLICY_DENIED', grpc.status.PERMISSION_DENIED);
  } finally {
    client.close();
  }
  // The login is audited with the identity it made.
  const records = (await admin.auditTail(200)).records;
  assert.ok(
    records.some((r) => r['method'] === 'Auth.Login' && String(r['target']).includes('as ci:repo:acme/web')),
    'a login audit record names the identity',
  );
});

test('every bad token is refused with its reason, and nothing is issued', { timeout: 60_000 }, async () => {
  const cases: Array<[string, () => Promise<string>, string, grpc.status]> = [
    [
      'signed by another key',
      () => token({}, { key: otherKey }),
      'TOKEN_SIGNATURE_INVALID',
      grpc.status.UNAUTHENTICATED,
    ],
    [
      'an unknown key id',
      () => token({}, { key: otherKey, kid: 'nope' }),
      'TOKEN_KEY_UNKNOWN',
      grpc.status.UNAUTHENTICATED,
    ],
    ['expired', () => token({ exp: nowS() - 120, iat: nowS() - 600 }), 'TOKEN_EXPIRED', grpc.status.UNAUTHENTICATED],
    ['not yet valid', () => token({ nbf: nowS() + 600 }), 'TOKEN_NOT_YET_VALID', grpc.status.UNAUTHENTICATED],
    ['no exp', () => token({ exp: undefined }), 'TOKEN_INVALID', grpc.status.UNAUTHENTICATED],
    [
      'another issuer',
      () => token({ iss: 'https://evil.example' }),
      'TOKEN_ISSUER_MISMATCH',
      grpc.status.UNAUTHENTICATED,
    ],
    ['another audience', () => token({ aud: 'vault' }), 'TOKEN_AUDIENCE_MISMATCH', grpc.status.UNAUTHENTICATED],
    [
      'a subject the role does not bind',
      () => token({ sub: 'repo:evil/app' }),
      'LOGIN_NOT_BOUND',
      grpc.status.PERMISSION_DENIED,
    ],
    ['a bound claim missing', () => token({ ref: undefined }), 'LOGIN_NOT_BOUND', grpc.status.PERMISSION_DENIED],
    [
      'a bound claim with another value',
      () => token({ ref: 'refs/heads/dev' }),
      'LOGIN_NOT_BOUND',
      grpc.status.PERMISSION_DENIED,
    ],
    [
      'alg none',
      async () => {
        const header = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
        const body = Buffer.from(
          JSON.stringify({
            iss: ISSUER,
            aud: 'coffer',
            sub: 'repo:acme/app',
            ref: 'refs/heads/main',
            exp: nowS() + 300,
          }),
        ).toString('base64url');
        return `${header}.${body}.`;
      },
      'TOKEN_ALGORITHM_REFUSED',
      grpc.status.UNAUTHENTICATED,
    ],
    [
      // The classic: HS256 with the issuer's public key as the HMAC secret.
      'HS256 keyed with the public key',
      async () => {
        const jwks = JSON.parse((await admin.getAuthMethod('jwt')).staticJwks ?? '{}') as { keys: object[] };
        const secret = new TextEncoder().encode(JSON.stringify(jwks.keys[0]));
        return new SignJWT({
          iss: ISSUER,
          aud: 'coffer',
          sub: 'repo:acme/app',
          ref: 'refs/heads/main',
          exp: nowS() + 300,
        })
          .setProtectedHeader({ alg: 'HS256', kid: KID })
          .sign(secret);
      },
      'TOKEN_ALGORITHM_REFUSED',
      grpc.status.UNAUTHENTICATED,
    ],
    ['not a JWT', async () => 'hello', 'TOKEN_INVALID', grpc.status.UNAUTHENTICATED],
  ];
  const identitiesBefore = (await admin.listIdentities()).identities.length;
  for (const [what, make, reason, code] of cases) {
    const error = await refused(loginAt(await make()), reason, code).catch((e: unknown) => {
      throw new Error(`${what}: ${(e as Error).message}`);
    });
    assert.doesNotMatch(error.message, /eyJ/, `${what}: the message does not echo the token`);
  }
  assert.equal((await admin.listIdentities()).identities.length, identitiesBefore, 'no identity was made');
  await refused(loginAt(await token(), { role: 'nope' }), 'ROLE_NOT_FOUND', grpc.status.NOT_FOUND);
  // An algorithm the method accepts but the key does not allow (its JWK says RS256): no key matches.
  const method = await admin.getAuthMethod('jwt');
  await admin.configureAuthMethod({ ...method, algorithms: ['RS256', 'PS256'] });
  try {
    // The same RSA key, used for PS256 (WebCrypto binds a key object to one algorithm).
    const samePsKey = (await importJWK(await exportJWK(signingKey), 'PS256')) as CryptoKey;
    await refused(
      loginAt(await token({}, { alg: 'PS256', key: samePsKey })),
      'TOKEN_KEY_UNKNOWN',
      grpc.status.UNAUTHENTICATED,
    );
  } finally {
    await admin.configureAuthMethod(method);
  }
});

test('a certification request must be signed by the key it names', { timeout: 30_000 }, async () => {
  const mine = newLeafKey();
  const theirs = newLeafKey();
  // A request naming another's public key, signed with mine: the signature does not verify.
  const forged = certificationRequest({ privatePem: mine.privatePem, publicPem: theirs.publicPem }, 'x');
  const anonymous = new AdminClient('', cluster.clusterId, { caPem: caPem(), certPem: '', keyPem: '' });
  const call = anonymous.call(cluster.addresses[0]!, 'Auth', 'login', {
    role: 'ci',
    csrPem: forged,
    jwt: await token(),
  });
  const error = (await call.then(
    () => assert.fail('a forged request was accepted'),
    (e: unknown) => e,
  )) as grpc.ServiceError;
  assert.equal(error.code, grpc.status.INVALID_ARGUMENT, error.details);
  assert.match(error.details, /csr_pem: .*not signed by the key it names/);
});

test('removing the role stops its certificates everywhere; a role of the same name put again does not revive them', {
  timeout: 60_000,
}, async () => {
  await admin.putAuthRole({
    name: 'temp',
    method: 'jwt',
    boundAudiences: ['coffer'],
    policies: ['app-read'],
    ttlSeconds: 600,
  });
  const result = await loginAt(await token({ sub: 'job-1' }), { role: 'temp' });
  const client = clientOf(result);
  try {
    await eventually('the login to work', 10_000, async () => client.get('app/db').catch(() => undefined));
    await admin.removeAuthRole('temp');
    for (const address of cluster.addresses) {
      const one = clientOf(result, [address]);
      try {
        await eventually(`manager ${address} to refuse the removed role`, 10_000, async () =>
          one.get('app/db').then(
            () => undefined,
            (e: unknown) => ((e as ClientError).reason === 'ROLE_REVOKED' ? true : undefined),
          ),
        );
      } finally {
        one.close();
      }
    }
    await admin.putAuthRole({
      name: 'temp',
      method: 'jwt',
      boundAudiences: ['coffer'],
      policies: ['app-read'],
      ttlSeconds: 600,
    });
    await refused(client.get('app/db'), 'ROLE_REVOKED', grpc.status.PERMISSION_DENIED);
    // A new login under the new role works.
    const again = clientOf(await loginAt(await token({ sub: 'job-1' }), { role: 'temp' }));
    try {
      await eventually('the new login to work', 10_000, async () => again.get('app/db').catch(() => undefined));
    } finally {
      again.close();
    }
  } finally {
    client.close();
  }
});

test('a revoked subject cannot log in again until it is forgotten', { timeout: 60_000 }, async () => {
  const first = await loginAt(await token({ sub: 'repo:acme/revoked' }));
  await admin.revokeIdentity(first.identity);
  const client = clientOf(first);
  try {
    await refused(client.get('app/db'), 'IDENTITY_REVOKED', grpc.status.PERMISSION_DENIED);
  } finally {
    client.close();
  }
  await refused(loginAt(await token({ sub: 'repo:acme/revoked' })), 'IDENTITY_REVOKED', grpc.status.PERMISSION_DENIED);
  await admin.forgetIdentity(first.identity);
  const again = clientOf(await loginAt(await token({ sub: 'repo:acme/revoked' })));
  try {
    await eventually('the new login to work', 10_000, async () => again.get('app/db').catch(() => undefined));
  } finally {
    again.close();
  }
});

test('a login certificate that ends is refused on a connection opened before, saying to log in again', {
  timeout: 60_000,
}, async () => {
  await admin.putAuthRole({
    name: 'brief',
    method: 'jwt',
    boundAudiences: ['coffer'],
    policies: ['app-read'],
    ttlSeconds: 10,
  });
  const result = await loginAt(await token({ sub: 'job-brief' }), { role: 'brief' });
  assert.ok(result.notAfterMs - Date.now() <= 10_500);
  // A raw stub keeps its connection open and does not check the certificate's end itself.
  const raw = new AdminClient('', cluster.clusterId, {
    caPem: result.caCertificatePem,
    certPem: result.certificatePem,
    keyPem: result.keyPem,
  });
  const address = cluster.addresses[0]!;
  await eventually('the login to work', 10_000, async () =>
    raw.call(address, 'Secrets', 'get', { name: 'app/db' }).catch(() => undefined),
  );
  const error = await eventually('the certificate to end', 20_000, async () =>
    raw.call(address, 'Secrets', 'get', { name: 'app/db' }).then(
      () => undefined,
      (e: unknown) => e as grpc.ServiceError,
    ),
  );
  assert.equal(error.code, grpc.status.UNAUTHENTICATED, error.details);
  assert.match(error.details, /ended at .*log in again/);
  // The client library says so before it dials.
  const client = clientOf(result);
  try {
    const local = await refused(client.get('app/db'), 'CERTIFICATE_EXPIRED', grpc.status.UNAUTHENTICATED);
    assert.match(local.message, /log in again/);
  } finally {
    client.close();
  }
});

test('coffer auth jwt configure and coffer auth role put (the scripts contract), then coffer login jwt writes client.env, the key (0600) and the certificate, which the CLI then uses', {
  timeout: 60_000,
}, async () => {
  const env = { COFFER_ADDR: cluster.addresses.join(','), COFFER_CA: join(cluster.adminDir, 'ca.crt') };
  const adminEnv = {
    ...env,
    COFFER_CERT: join(cluster.adminDir, 'admin.crt'),
    COFFER_KEY: join(cluster.adminDir, 'admin.key'),
  };
  const jwksFile = join(dir, 'jwks.json');
  writeFileSync(jwksFile, (await admin.getAuthMethod('jwt')).staticJwks ?? '');
  const configured = await coffer(
    ['auth', 'jwt', 'configure', '--static-keys', jwksFile, '--bound-issuer', ISSUER, '--output', 'json'],
    '',
    adminEnv,
  );
  assert.equal(configured.code, 0, configured.stderr);
  const put = await coffer(
    [
      'auth',
      'role',
      'put',
      'cli',
      '--method',
      'jwt',
      '--bound-audience',
      'coffer',
      '--bound-subject',
      'repo:acme/*',
      '--policy',
      'app-read',
      '--ttl',
      '1h',
    ],
    '',
    adminEnv,
  );
  assert.equal(put.code, 0, put.stderr);
  const shown = await coffer(['auth', 'role', 'get', 'cli', '--output', 'json'], '', adminEnv);
  assert.equal((JSON.parse(shown.stdout) as { ttlSeconds: number }).ttlSeconds, 3600);
  const tokenFile = join(dir, 'token');
  writeFileSync(tokenFile, `${await token({ sub: 'repo:acme/cli' })}\n`, { mode: 0o600 });
  const out = join(dir, 'login');
  const done = await coffer(
    ['login', 'jwt', '--role', 'cli', '--token-file', tokenFile, '--out', out, '--output', 'json'],
    '',
    env,
  );
  assert.equal(done.code, 0, done.stderr);
  const reply = JSON.parse(done.stdout) as { identity: string; policies: string[] };
  assert.equal(reply.identity, 'cli:repo:acme/cli');
  const clientEnv = Object.fromEntries(
    readFileSync(join(out, 'client.env'), 'utf8')
      .trim()
      .split('\n')
      .map((line) => line.split('=', 2) as [string, string]),
  );
  assert.deepEqual(Object.keys(clientEnv).sort(), ['COFFER_ADDR', 'COFFER_CA', 'COFFER_CERT', 'COFFER_KEY']);
  assert.equal(statSync(clientEnv['COFFER_KEY']!).mode & 0o777, 0o600);
  const read = await eventually('the CLI to read with the login', 10_000, async () => {
    const got = await coffer(['secret', 'get', 'app/db'], '', clientEnv);
    return got.code === 0 ? got : undefined;
  });
  assert.equal(read.stdout.trim(), 'app-password');
  // A bad token: a clear error, exit status 1, nothing written.
  writeFileSync(tokenFile, await token({ aud: 'other' }));
  const bad = await coffer(
    ['login', 'jwt', '--role', 'ci', '--token-file', tokenFile, '--out', join(dir, 'bad')],
    '',
    env,
  );
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /audience/);
});

test('coffer run --login-role logs in, hands the child its secrets and a login it keeps fresh until the child exits', {
  timeout: 90_000,
}, async () => {
  await admin.putAuthRole({
    name: 'runner',
    method: 'jwt',
    boundAudiences: ['coffer'],
    policies: ['app-read'],
    ttlSeconds: 10,
  });
  const tokenFile = join(dir, 'run-token');
  writeFileSync(tokenFile, await token({ sub: 'repo:acme/job' }), { mode: 0o600 });
  const loginDir = join(dir, 'run-login');
  const env = { COFFER_ADDR: cluster.addresses.join(','), COFFER_CA: join(cluster.adminDir, 'ca.crt') };
  // The child copies its certificate at the start and after the first certificate's 10 s are
  // nearly over; a renewal (at two thirds) must have replaced it by then.
  const script = `cp "$COFFER_CERT" "${dir}/first.crt"; sleep 8.5; cp "$COFFER_CERT" "${dir}/last.crt"; printf '%s' "$APP_DB"`;
  const run = await coffer(
    [
      'run',
      '--login-role',
      'runner',
      '--login-token-file',
      tokenFile,
      '--login-dir',
      loginDir,
      '--env',
      'APP_DB=app/db',
      '--',
      'sh',
      '-c',
      script,
    ],
    '',
    env,
  );
  assert.equal(run.code, 0, run.stderr);
  assert.equal(run.stdout, 'app-password');
  const first = readFileSync(join(dir, 'first.crt'), 'utf8');
  const last = readFileSync(join(dir, 'last.crt'), 'utf8');
  assert.notEqual(last, first, 'the certificate was renewed while the child ran');
  assert.equal(statSync(join(loginDir, 'client.key')).mode & 0o777, 0o600);
  // The renewed login works (the key beside it is its key).
  const renewed = new CofferClient({
    addresses: cluster.addresses,
    caPem: readFileSync(join(loginDir, 'ca.crt'), 'utf8'),
    certPem: readFileSync(join(loginDir, 'client.crt'), 'utf8'),
    keyPem: readFileSync(join(loginDir, 'client.key'), 'utf8'),
  });
  try {
    assert.equal(Buffer.from((await renewed.get('app/db')).value).toString(), 'app-password');
  } finally {
    renewed.close();
  }
});
