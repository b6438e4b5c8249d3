import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { decodeProtectedHeader } from 'jose';
import { ClientError, type CofferClient } from '../../src/client/client.ts';
import { login, type LoginResult } from '../../src/client/login.ts';
import { JWKS_REFETCH_COOLDOWN_MS } from '../../src/server/auth/jwt-verifier.ts';
import { coffer, eventually } from '../processes/processes.ts';
import { InProcessCluster } from '../server/in-process-cluster.ts';
import { type OidcUser, TestOidcProvider } from './support/oidc-provider.ts';

// `coffer login oidc` against a real OpenID provider (oidc-provider, through the test harness that
// plays the browser) and three managers in this process: the code flow with PKCE through the CLI's
// loopback server, what the user sees when the login fails in the browser, and the managers'
// side of ID tokens from a real provider (key rotation, audience, an unreachable issuer).

const ALICE: OidcUser = { sub: 'alice', email: 'alice@example.test', groups: ['devs'], password: 'alice-pw' };
const BOB: OidcUser = { sub: 'bob', email: 'bob@example.test', groups: [], password: 'bob-pw' };
const TIMEOUT = { timeout: 120_000 };
const CLI = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
/** The longest a CLI run may take to print its URL or to exit once it has its answer (a loaded 2-core machine). */
const CLI_STEP_MS = 60_000;

let provider: TestOidcProvider;
let cluster: InProcessCluster;
let admin: CofferClient;
let dir: string;
let issuerCaFile: string;
let env: Record<string, string>;
/** Every CLI this file starts, killed by PID in after() if one still runs. */
const children = new Set<ChildProcessWithoutNullStreams>();

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'coffer-oidc-'));
  provider = await TestOidcProvider.start({ users: [ALICE, BOB] });
  issuerCaFile = join(dir, 'issuer-ca.pem');
  writeFileSync(issuerCaFile, provider.caPem);
  cluster = await InProcessCluster.start(3);
  await cluster.servesReads(0);
  admin = cluster.adminClient();
  env = { COFFER_ADDR: cluster.addresses.join(','), COFFER_CA: join(cluster.adminDir, 'ca.crt') };
  await admin.configureAuthMethod({
    method: 'oidc',
    discoveryUrl: provider.discoveryUrl,
    discoveryCaPem: provider.caPem,
    clientId: provider.publicClientId,
  });
  await admin.putPolicy('people-base', [{ path: 'common/**', capabilities: ['read'] }]);
  await admin.putPolicy('devs-read', [{ path: 'dev/**', capabilities: ['read'] }]);
  await admin.put('common/motd', Buffer.from('hello'));
  await admin.put('dev/db', Buffer.from('dev-password'));
  await admin.putAuthRole({
    name: 'people',
    method: 'oidc',
    boundAudiences: [provider.publicClientId],
    userClaim: 'email',
    groupsClaim: 'groups',
    policies: ['people-base'],
    groupPolicies: [{ group: 'devs', policies: ['devs-read'] }],
    ttlSeconds: 600,
  });
}, TIMEOUT);

after(async () => {
  for (const child of children)
    if (child.exitCode === null && child.signalCode === null) process.kill(child.pid!, 'SIGKILL');
  admin?.close();
  await cluster?.stop();
  await provider?.stop();
  rmSync(dir, { recursive: true, force: true });
});

const caPem = (): string => readFileSync(join(cluster.adminDir, 'ca.crt'), 'utf8');

interface CliRun {
  readonly child: ChildProcessWithoutNullStreams;
  /** The authorization URL the CLI told the user to open. */
  readonly url: Promise<string>;
  readonly exit: Promise<{ code: number | null; stdout: string; stderr: string }>;
}

/**
 * `coffer login oidc ...` started in the background, as a user runs it: its stderr is read while it
 * runs, for the URL it says to open (coffer() in processes.ts only returns once the CLI exits).
 */
function startLogin(args: readonly string[]): CliRun {
  const child = spawn(
    process.execPath,
    [
      '--import',
      'tsx',
      CLI,
      'login',
      'oidc',
      '--role',
      'people',
      '--issuer',
      provider.issuer,
      '--client-id',
      provider.publicClientId,
      '--issuer-ca',
      issuerCaFile,
      ...args,
    ],
    { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] },
  );
  children.add(child);
  child.stdin.end();
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  const exit = new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
    child.on('close', (code) => resolve({ code, stdout, stderr })),
  );
  const url = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`the CLI printed no URL within ${CLI_STEP_MS} ms: ${stderr}`)),
      CLI_STEP_MS,
    );
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      const found = /open this URL in your browser: (\S+)\n/.exec(stderr);
      if (found !== null) {
        clearTimeout(timer);
        resolve(found[1]!);
      }
    });
    void exit.then(({ code }) => {
      clearTimeout(timer);
      reject(new Error(`the CLI exited (${code}) before printing a URL: ${stderr}`));
    });
  });
  // A run that never prints a URL (it failed first) must not leave an unhandled rejection behind.
  url.catch(() => undefined);
  return { child, url, exit };
}

/** The CLI's exit, bounded: a CLI that hangs fails the test instead of stalling it. */
function exited(run: CliRun): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    run.exit,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`the CLI did not exit within ${CLI_STEP_MS} ms`)), CLI_STEP_MS);
    }),
  ]).finally(() => clearTimeout(timer));
}

function killRun(run: CliRun): void {
  if (run.child.exitCode === null && run.child.signalCode === null) process.kill(run.child.pid!, 'SIGKILL');
}

/** A GET to the CLI's loopback server (as a stray tab or another page would send): status and body. */
function loopbackGet(url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false, timeout: 10_000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer`)));
    req.on('error', reject);
    req.end();
  });
}

const loginWith = (jwt: string, addresses = cluster.addresses): Promise<LoginResult> =>
  login({ addresses, caPem: caPem() }, { role: 'people', jwt });

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

test(
  'coffer login oidc: the code flow with PKCE through the browser gives a certificate for the email, with the group policies',
  TIMEOUT,
  async () => {
    const out = join(dir, 'alice');
    const run = startLogin(['--out', out, '--output', 'json']);
    try {
      const url = new URL(await run.url);
      assert.equal(url.origin + url.pathname, provider.authorizationEndpoint);
      const params = url.searchParams;
      assert.equal(params.get('response_type'), 'code');
      assert.equal(params.get('client_id'), provider.publicClientId);
      assert.equal(params.get('scope'), 'openid email groups');
      assert.equal(params.get('code_challenge_method'), 'S256');
      assert.match(params.get('code_challenge') ?? '', /^[A-Za-z0-9_-]{43}$/);
      assert.match(params.get('state') ?? '', /^[A-Za-z0-9_-]{16,}$/);
      assert.match(params.get('nonce') ?? '', /^[A-Za-z0-9_-]{16,}$/);
      const redirect = new URL(params.get('redirect_uri') ?? '');
      assert.equal(redirect.protocol, 'http:');
      assert.equal(redirect.hostname, '127.0.0.1');
      assert.equal(redirect.pathname, '/callback');
      // A callback that is not this flow's answer (another state) is refused, and the CLI waits on.
      const stray = await loopbackGet(`${redirect.href}?code=forged&state=not-the-flows`);
      assert.equal(stray.status, 400);
      assert.equal((await loopbackGet(`${redirect.origin}/favicon.ico`)).status, 404);

      const delivered = new URL(await provider.browse(url.href, ALICE));
      const code = delivered.searchParams.get('code');
      assert.ok(code !== null && code !== '', 'the browser brought a code to the CLI');
      const done = await exited(run);
      assert.equal(done.code, 0, done.stderr);
      // Neither the code nor a token is ever printed.
      for (const text of [done.stdout, done.stderr]) {
        assert.ok(!text.includes(code), 'the authorization code is not printed');
        assert.doesNotMatch(text, /eyJ/, 'no token is printed');
      }
      const reply = JSON.parse(done.stdout) as { identity: string; policies: string[] };
      assert.equal(reply.identity, 'people:alice@example.test');
      assert.deepEqual([...reply.policies].sort(), ['devs-read', 'people-base']);
      const clientEnv = Object.fromEntries(
        readFileSync(join(out, 'client.env'), 'utf8')
          .trim()
          .split('\n')
          .map((line) => line.split('=', 2) as [string, string]),
      );
      const read = await eventually('the CLI to read with the login', 20_000, async () => {
        const got = await coffer(['secret', 'get', 'dev/db'], '', clientEnv);
        return got.code === 0 ? got : undefined;
      });
      assert.equal(read.stdout.trim(), 'dev-password');
    } finally {
      killRun(run);
    }
  },
);

test(
  'a wrong password in the browser: nothing comes back, and the CLI gives up at --timeout saying so',
  TIMEOUT,
  async () => {
    const run = startLogin(['--out', join(dir, 'wrong-password'), '--timeout', '5s']);
    try {
      const url = await run.url;
      await assert.rejects(provider.browse(url, { sub: 'alice', password: 'not-her-password' }), /refused the login/);
      const done = await exited(run);
      assert.notEqual(done.code, 0);
      assert.match(done.stderr, /the browser did not come back with a login within 5 s/);
      assert.match(done.stderr, /--timeout/);
    } finally {
      killRun(run);
    }
  },
);

test('consent denied in the browser: the CLI exits at once saying access was denied', TIMEOUT, async () => {
  const run = startLogin(['--out', join(dir, 'denied')]);
  try {
    const url = await run.url;
    const delivered = new URL(await provider.browse(url, BOB, { consent: 'deny' }));
    assert.equal(delivered.searchParams.get('error'), 'access_denied');
    const done = await exited(run);
    assert.notEqual(done.code, 0);
    assert.match(done.stderr, /access was denied/);
    assert.match(done.stderr, /the user denied the request/);
  } finally {
    killRun(run);
  }
});

test(
  "the managers check the real provider's ID tokens: groups, a key rotation, a wrong audience",
  TIMEOUT,
  async () => {
    const alice = await loginWith(await provider.idToken('alice'));
    assert.equal(alice.identity, 'people:alice@example.test');
    assert.deepEqual([...alice.policies].sort(), ['devs-read', 'people-base']);
    const bob = await loginWith(await provider.idToken('bob'));
    assert.equal(bob.identity, 'people:bob@example.test');
    assert.deepEqual(bob.policies, ['people-base']);
    const keysSeenByMs = Date.now();

    const oldKid = provider.currentKid;
    await provider.rotateKeys();
    const rotated = await provider.idToken('alice');
    assert.equal(decodeProtectedHeader(rotated).kid, provider.currentKid);
    assert.notEqual(provider.currentKid, oldKid);
    // The manager fetched the keys at the latest for the logins above; an unknown kid fetches them
    // again only after a cool-down from that fetch (a random kid must not make it hammer the issuer).
    // Its cache lasts minutes, so this login passes only by that fetch for the unknown kid.
    const wait = keysSeenByMs + JWKS_REFETCH_COOLDOWN_MS + 500 - Date.now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    const again = await loginWith(rotated);
    assert.equal(again.identity, 'people:alice@example.test');

    const otherAudience = await provider.sign(provider.standardClaims('alice', { audience: 'another-client' }));
    await refused(loginWith(otherAudience), 'TOKEN_AUDIENCE_MISMATCH', grpc.status.UNAUTHENTICATED);
  },
);

// Last: it stops the provider.
test('an issuer that cannot be reached: the managers refuse ISSUER_UNREACHABLE, the CLI says so', TIMEOUT, async () => {
  const token = await provider.sign(provider.standardClaims('alice'));
  await provider.stop();
  // Keys are cached: a configuration change makes every manager read the issuer afresh (the same
  // issuer named explicitly now, so the configuration differs on every manager, not only on the
  // one that took the call).
  await admin.configureAuthMethod({
    method: 'oidc',
    discoveryUrl: provider.discoveryUrl,
    discoveryCaPem: provider.caPem,
    clientId: provider.publicClientId,
    boundIssuer: provider.issuer,
  });
  for (const address of cluster.addresses) {
    const error = await refused(loginWith(token, [address]), 'ISSUER_UNREACHABLE', grpc.status.UNAVAILABLE);
    assert.doesNotMatch(error.message, /eyJ/);
  }
  const run = startLogin(['--out', join(dir, 'unreachable')]);
  let cli: Awaited<CliRun['exit']>;
  try {
    cli = await exited(run);
  } finally {
    killRun(run);
  }
  assert.notEqual(cli.code, 0);
  assert.match(cli.stderr, /discovery document could not be read/);
  assert.doesNotMatch(cli.stderr, /open this URL/);
});
