import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { generate } from 'otplib';
import { ClientError, CofferClient } from '../../src/client/client.ts';
import { login, type LoginProof, type LoginResult } from '../../src/client/login.ts';
import { createLogger } from '../../src/util/logger.ts';
import { coffer, eventually } from '../processes/processes.ts';
import { InProcessCluster } from '../server/in-process-cluster.ts';
import { Slapd } from './support/slapd.ts';

// The ldap method against a real OpenLDAP (slapd, started here on loopback): a person's username
// and password checked by binding as them over TLS, their groups read and mapped to policies; and
// the TOTP second factor a role can require.

const PASSWORDS = { alice: 'alice-Secret-1', bob: 'bob-Secret-2', carol: 'carol-Secret-3' };
let slapd: Slapd;
let cluster: InProcessCluster;
let admin: CofferClient;
let dir: string;
let logs = '';

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'coffer-ldap-'));
  slapd = await Slapd.start(join(dir, 'slapd'), {
    users: [
      { uid: 'alice', password: PASSWORDS.alice, groups: ['devs', 'ops'] },
      { uid: 'bob', password: PASSWORDS.bob, groups: ['devs'] },
      { uid: 'carol', password: PASSWORDS.carol, groups: ['sales'] },
    ],
  });
  // Every manager logs at debug into one buffer: no password may reach it.
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logs += chunk.toString();
      done();
    },
  });
  cluster = await InProcessCluster.start(3, {
    logger: createLogger({ level: 'debug', format: 'json', destination: sink }),
  });
  await cluster.servesReads(0);
  admin = cluster.adminClient();
  await admin.configureAuthMethod({
    method: 'ldap',
    url: slapd.ldapsUrl,
    caPem: slapd.caPem,
    userDnTemplate: `uid={{username}},${slapd.usersDn}`,
    groupBaseDn: slapd.groupsDn,
  });
  await admin.putPolicy('dev-read', [{ path: 'dev/**', capabilities: ['read'] }]);
  await admin.putPolicy('ops-read', [{ path: 'ops/**', capabilities: ['read'] }]);
  await admin.put('dev/db', Buffer.from('dev-password'));
  await admin.put('ops/db', Buffer.from('ops-password'));
  await admin.putAuthRole({
    name: 'staff',
    method: 'ldap',
    boundClaims: [{ claim: 'groups', values: ['devs', 'ops'] }],
    policies: ['dev-read'],
    groupPolicies: [{ group: 'ops', policies: ['ops-read'] }],
    ttlSeconds: 3600,
  });
});

after(async () => {
  admin?.close();
  await cluster?.stop();
  await slapd?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const caPem = (): string => readFileSync(join(cluster.adminDir, 'ca.crt'), 'utf8');
const loginAs = (proof: LoginProof): Promise<LoginResult> =>
  login({ addresses: cluster.addresses, caPem: caPem() }, proof);

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

async function reads(result: LoginResult, name: string): Promise<string> {
  const client = new CofferClient({
    addresses: cluster.addresses,
    caPem: result.caCertificatePem,
    certPem: result.certificatePem,
    keyPem: result.keyPem,
  });
  try {
    const got = await eventually('the login to be applied', 10_000, async () =>
      client.get(name).then(
        (reply) => Buffer.from(reply.value).toString(),
        (e: unknown) => ((e as ClientError).reason === 'POLICY_DENIED' ? (e as ClientError) : undefined),
      ),
    );
    if (got instanceof ClientError) throw got;
    return got;
  } finally {
    client.close();
  }
}

test('a person logs in with their LDAP password; their groups decide their policies', { timeout: 60_000 }, async () => {
  const alice = await loginAs({ role: 'staff', username: 'alice', password: PASSWORDS.alice });
  assert.equal(alice.identity, 'staff:alice');
  assert.deepEqual([...alice.policies].sort(), ['dev-read', 'ops-read']);
  assert.equal(await reads(alice, 'ops/db'), 'ops-password');
  const bob = await loginAs({ role: 'staff', username: 'bob', password: PASSWORDS.bob });
  assert.deepEqual(bob.policies, ['dev-read']);
  assert.equal(await reads(bob, 'dev/db'), 'dev-password');
  await refused(reads(bob, 'ops/db'), 'POLICY_DENIED', grpc.status.PERMISSION_DENIED);
  // Leaving a group takes effect at the next login.
  await slapd.setGroups('alice', ['devs']);
  try {
    const again = await loginAs({ role: 'staff', username: 'alice', password: PASSWORDS.alice });
    assert.deepEqual(again.policies, ['dev-read']);
  } finally {
    await slapd.setGroups('alice', ['devs', 'ops']);
  }
});

test('wrong, unknown, empty and crafted credentials are refused; a user outside the bound groups too', {
  timeout: 60_000,
}, async () => {
  const wrong = await refused(
    loginAs({ role: 'staff', username: 'alice', password: 'not-her-password' }),
    'LDAP_CREDENTIALS_INVALID',
    grpc.status.UNAUTHENTICATED,
  );
  // An unknown user gets the very same answer: no one learns which names exist.
  const unknown = await refused(
    loginAs({ role: 'staff', username: 'mallory', password: 'whatever' }),
    'LDAP_CREDENTIALS_INVALID',
    grpc.status.UNAUTHENTICATED,
  );
  assert.equal(unknown.message, wrong.message);
  // An empty password would be an "unauthenticated bind" that proves nothing.
  await refused(
    loginAs({ role: 'staff', username: 'alice', password: '' }),
    'INVALID_ARGUMENT',
    grpc.status.INVALID_ARGUMENT,
  );
  // A name that would change the DN or the group filter is refused before anything is sent.
  for (const username of ['alice,ou=people', 'alice)(uid=*', '*', 'alice\u0000'])
    await refused(
      loginAs({ role: 'staff', username, password: PASSWORDS.alice }),
      'INVALID_ARGUMENT',
      grpc.status.INVALID_ARGUMENT,
    );
  await refused(
    loginAs({ role: 'staff', username: 'carol', password: PASSWORDS.carol }),
    'LOGIN_NOT_BOUND',
    grpc.status.PERMISSION_DENIED,
  );
  // A person removed from the directory cannot log in any more.
  await slapd.removeUser('carol');
  await refused(
    loginAs({ role: 'staff', username: 'carol', password: PASSWORDS.carol }),
    'LDAP_CREDENTIALS_INVALID',
    grpc.status.UNAUTHENTICATED,
  );
  assert.match(logs, /"event":"login"/, 'the managers’ logs were captured');
  assert.doesNotMatch(logs, /Secret-\d|not-her-password/, 'no password in the managers’ logs');
});

test('StartTLS works; plain LDAP is refused at configuration; an LDAP server under another CA is not trusted', {
  timeout: 60_000,
}, async () => {
  const base = {
    method: 'ldap' as const,
    userDnTemplate: `uid={{username}},${slapd.usersDn}`,
    groupBaseDn: slapd.groupsDn,
  };
  const plain = await admin.configureAuthMethod({ ...base, url: slapd.ldapUrl, caPem: slapd.caPem }).then(
    () => assert.fail('plain ldap:// was accepted'),
    (e: unknown) => e as ClientError,
  );
  assert.equal(plain.reason, 'INVALID_ARGUMENT');
  assert.match(plain.message, /in the clear/);
  try {
    await admin.configureAuthMethod({ ...base, url: slapd.ldapUrl, startTls: true, caPem: slapd.caPem });
    const bob = await loginAs({ role: 'staff', username: 'bob', password: PASSWORDS.bob });
    assert.equal(bob.identity, 'staff:bob');
    // Without the LDAP server's CA, its certificate is not trusted: nothing is sent to it.
    await admin.configureAuthMethod({ ...base, url: slapd.ldapsUrl });
    await refused(
      loginAs({ role: 'staff', username: 'bob', password: PASSWORDS.bob }),
      'LDAP_UNREACHABLE',
      grpc.status.UNAVAILABLE,
    );
  } finally {
    await admin.configureAuthMethod({ ...base, url: slapd.ldapsUrl, caPem: slapd.caPem });
  }
});

test('a role that requires TOTP: enrol, then each code works once', { timeout: 60_000 }, async () => {
  await admin.putAuthRole({
    name: 'admins',
    method: 'ldap',
    policies: ['ops-read'],
    totpRequired: true,
    ttlSeconds: 600,
  });
  const proof = { role: 'admins', username: 'alice', password: PASSWORDS.alice };
  await refused(loginAs(proof), 'TOTP_REQUIRED', grpc.status.UNAUTHENTICATED);
  const enrolled = await admin.enrollTotp('admins:alice');
  assert.match(enrolled.otpauthUri, /^otpauth:\/\/totp\/.*secret=[A-Z2-7]+/);
  await refused(loginAs(proof), 'TOTP_REQUIRED', grpc.status.UNAUTHENTICATED);
  const code = await generate({ secret: enrolled.secret, epoch: Math.floor(Date.now() / 1000) });
  const wrong = code === '000000' ? '111111' : '000000';
  await refused(loginAs({ ...proof, totpCode: wrong }), 'TOTP_INVALID', grpc.status.UNAUTHENTICATED);
  // A code from an hour ago.
  const stale = await generate({ secret: enrolled.secret, epoch: Math.floor(Date.now() / 1000) - 3600 });
  if (stale !== code)
    await refused(loginAs({ ...proof, totpCode: stale }), 'TOTP_INVALID', grpc.status.UNAUTHENTICATED);
  const alice = await loginAs({ ...proof, totpCode: code });
  assert.equal(alice.identity, 'admins:alice');
  assert.equal(await reads(alice, 'ops/db'), 'ops-password');
  // The same code again, at any manager: refused (the step it was used at is replicated).
  for (const address of cluster.addresses) {
    const again = await login({ addresses: [address], caPem: caPem() }, { ...proof, totpCode: code }).then(
      () => assert.fail(`the code was taken twice (at ${address})`),
      (e: unknown) => e as ClientError,
    );
    assert.ok(['TOTP_INVALID', 'TOTP_REUSED'].includes(again.reason), again.message);
  }
  assert.doesNotMatch(logs, new RegExp(enrolled.secret), 'the TOTP secret is not logged');
  await admin.removeTotp('admins:alice');
  await refused(loginAs({ ...proof, totpCode: code }), 'TOTP_REQUIRED', grpc.status.UNAUTHENTICATED);
  // Guessing: after 5 wrong codes in a minute, even the right one is refused for that subject.
  const bob = { role: 'admins', username: 'bob', password: PASSWORDS.bob };
  const again = await admin.enrollTotp('admins:bob');
  const first = cluster.addresses.slice(0, 1);
  for (let k = 0; k < 5; k++)
    await refused(
      login({ addresses: first, caPem: caPem() }, { ...bob, totpCode: String(100000 + k) }),
      'TOTP_INVALID',
      grpc.status.UNAUTHENTICATED,
    );
  const right = await generate({ secret: again.secret, epoch: Math.floor(Date.now() / 1000) });
  const locked = await refused(
    login({ addresses: first, caPem: caPem() }, { ...bob, totpCode: right }),
    'RATE_LIMITED',
    grpc.status.RESOURCE_EXHAUSTED,
  );
  assert.match(locked.message, /too many failed TOTP codes of admins:bob/);
});

test('coffer login ldap reads the password from stdin, never from the command line', { timeout: 60_000 }, async () => {
  const out = join(dir, 'bob');
  const env = { COFFER_ADDR: cluster.addresses.join(','), COFFER_CA: join(cluster.adminDir, 'ca.crt') };
  const done = await coffer(
    ['login', 'ldap', '--role', 'staff', '--username', 'bob', '--out', out],
    `${PASSWORDS.bob}\n`,
    env,
  );
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stdout, /logged in as staff:bob/);
  assert.doesNotMatch(done.stdout + done.stderr, /Secret-2/);
  const help = await coffer(['login', 'ldap', '--help'], '', env);
  assert.doesNotMatch(help.stdout, /--password/, 'there is no password flag');
  const bad = await coffer(
    ['login', 'ldap', '--role', 'staff', '--username', 'bob', '--out', join(dir, 'x')],
    'nope\n',
    env,
  );
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /refused this username and password/);
});
