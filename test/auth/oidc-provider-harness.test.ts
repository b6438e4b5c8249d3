import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { get } from 'node:https';
import { after, before, describe, it } from 'node:test';
import { createLocalJWKSet, decodeProtectedHeader, errors, jwtVerify } from 'jose';
import { newPkce, type OidcUser, TestOidcProvider } from './support/oidc-provider.ts';

// The harness is what later tests of the JWT/OIDC login and of `coffer login oidc` stand on: if
// it passed tokens a real provider would not issue, those tests would prove nothing. So this
// checks it against the protocol: HTTPS with its own CA, discovery, JWKS, a real code flow with
// PKCE through a loopback redirect on a port chosen at run time, refusals, key rotation.

const ALICE: OidcUser = { sub: 'alice', email: 'alice@example.test', groups: ['ops', 'dev'], password: 'alice-pw' };
const BOB: OidcUser = { sub: 'bob', email: 'bob@example.test', groups: [], password: 'bob-pw' };
const TIMEOUT = { timeout: 60_000 };

/** A client's loopback redirect server (what the CLI runs): records what the browser brought to /callback. */
async function loopbackServer(): Promise<{ server: Server; redirectUri: string; hits: URLSearchParams[] }> {
  const hits: URLSearchParams[] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    if (url.pathname === '/callback') hits.push(url.searchParams);
    res.end('you may close this window');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return { server, redirectUri: `http://127.0.0.1:${port}/callback`, hits };
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

/** A GET with the system's CAs only. */
function getWithoutCa(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    get(url, { agent: false }, (res) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    }).on('error', reject);
  });
}

describe('TestOidcProvider', TIMEOUT, () => {
  let op: TestOidcProvider;
  before(async () => {
    op = await TestOidcProvider.start({ users: [ALICE, BOB], extraClientIds: ['other-audience'] });
  });
  after(async () => {
    await op?.stop();
  });

  it('serves its discovery document over HTTPS under its own CA, with its issuer', TIMEOUT, async () => {
    assert.match(op.issuer, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(op.discoveryUrl, `${op.issuer}/.well-known/openid-configuration`);
    const discovery = await op.getJson(op.discoveryUrl);
    assert.equal(discovery['issuer'], op.issuer);
    assert.equal(discovery['jwks_uri'], op.jwksUri);
    assert.equal(discovery['authorization_endpoint'], op.authorizationEndpoint);
    assert.equal(discovery['token_endpoint'], op.tokenEndpoint);
    assert.deepEqual(discovery['code_challenge_methods_supported'], ['S256']);
    for (const scope of ['openid', 'email', 'groups'])
      assert.ok((discovery['scopes_supported'] as string[]).includes(scope), scope);
    // Not trusted without the CA: the certificate really is the harness's own.
    await assert.rejects(getWithoutCa(op.discoveryUrl), /self[- ]signed|unable to (get|verify)/i);
  });

  it('serves publicJwks() at its jwks_uri', TIMEOUT, async () => {
    const served = await op.getJson(op.jwksUri);
    const kids = (served['keys'] as { kid: string }[]).map((k) => k.kid);
    assert.deepEqual(
      kids,
      op.publicJwks().keys.map((k) => k.kid),
    );
    assert.ok(op.publicJwks().keys.every((k) => k.d === undefined && k.kty === 'RSA'));
  });

  it(
    'idToken() gives a real ID token with email and groups, for the public client or another audience',
    TIMEOUT,
    async () => {
      const token = await op.idToken('alice');
      const { payload, protectedHeader } = await jwtVerify(token, createLocalJWKSet(op.publicJwks()), {
        issuer: op.issuer,
        audience: 'coffer-cli',
        algorithms: ['RS256'],
      });
      assert.equal(payload.sub, 'alice');
      assert.equal(payload['email'], 'alice@example.test');
      assert.deepEqual(payload['groups'], ['ops', 'dev']);
      assert.equal(typeof payload.exp, 'number');
      assert.equal(protectedHeader.kid, op.currentKid);

      const other = await op.idToken('bob', { audience: 'other-audience' });
      const verified = await jwtVerify(other, createLocalJWKSet(op.publicJwks()), {
        issuer: op.issuer,
        audience: 'other-audience',
      });
      assert.equal(verified.payload.sub, 'bob');
      assert.deepEqual(verified.payload['groups'], []);
      await assert.rejects(op.idToken('alice', { audience: 'unregistered' }), /no client unregistered/);
    },
  );

  it(
    'sign() signs any claims with the provider key; expired and wrong-audience tokens are refused',
    TIMEOUT,
    async () => {
      const jwks = createLocalJWKSet(op.publicJwks());
      const good = await op.sign(op.standardClaims('alice'));
      // The same header as the provider's own tokens, so a verifier cannot tell them apart by it.
      assert.deepEqual(decodeProtectedHeader(good), decodeProtectedHeader(await op.idToken('alice')));
      const { payload } = await jwtVerify(good, jwks, { issuer: op.issuer, audience: 'coffer-cli' });
      assert.deepEqual(payload['groups'], ['ops', 'dev']);

      const expired = await op.sign({ ...op.standardClaims('alice'), exp: Math.floor(Date.now() / 1000) - 600 });
      await assert.rejects(jwtVerify(expired, jwks, { issuer: op.issuer }), errors.JWTExpired);
      const wrongAudience = await op.sign(op.standardClaims('alice', { audience: 'someone-else' }));
      await assert.rejects(
        jwtVerify(wrongAudience, jwks, { issuer: op.issuer, audience: 'coffer-cli' }),
        errors.JWTClaimValidationFailed,
      );
      const bare = await op.sign({ sub: 'alice' });
      await assert.rejects(jwtVerify(bare, jwks, { requiredClaims: ['exp'] }), errors.JWTClaimValidationFailed);
      const unknownKid = await op.sign(op.standardClaims('alice'), { kid: 'nobody' });
      await assert.rejects(jwtVerify(unknownKid, jwks), errors.JWKSNoMatchingKey);
    },
  );

  it(
    'a client doing the code flow with PKCE through a loopback redirect on its own port gets a code and an ID token',
    TIMEOUT,
    async () => {
      const client = await loopbackServer();
      try {
        const pkce = newPkce();
        const url = op.authorizationUrl({
          redirectUri: client.redirectUri,
          codeChallenge: pkce.challenge,
          state: 'state-1',
          nonce: 'nonce-1',
        });
        const final = await op.browse(url, ALICE);
        assert.ok(final.startsWith(`${client.redirectUri}?`), final);
        assert.equal(client.hits.length, 1);
        const hit = client.hits[0]!;
        assert.equal(hit.get('state'), 'state-1');
        assert.equal(hit.get('iss'), op.issuer);
        const code = hit.get('code');
        assert.ok(code !== null && code !== '');

        // The code needs the verifier: without the right one the token endpoint refuses it.
        await assert.rejects(
          op.exchangeCode({ code, redirectUri: client.redirectUri, codeVerifier: newPkce().verifier }),
          /invalid_grant/,
        );
        // A refused exchange spends the code (a code is good once), so get another.
        const again = newPkce();
        await op.browse(
          op.authorizationUrl({
            redirectUri: client.redirectUri,
            codeChallenge: again.challenge,
            state: 'state-2',
            nonce: 'nonce-2',
          }),
          ALICE,
        );
        const code2 = client.hits[1]!.get('code')!;
        const tokens = await op.exchangeCode({
          code: code2,
          redirectUri: client.redirectUri,
          codeVerifier: again.verifier,
        });
        assert.equal(typeof tokens['access_token'], 'string');
        const { payload } = await jwtVerify(tokens['id_token'] as string, createLocalJWKSet(op.publicJwks()), {
          issuer: op.issuer,
          audience: op.publicClientId,
        });
        assert.equal(payload.sub, 'alice');
        assert.equal(payload['nonce'], 'nonce-2');
        assert.equal(payload['email'], 'alice@example.test');
        assert.deepEqual(payload['groups'], ['ops', 'dev']);
      } finally {
        await closeServer(client.server);
      }
    },
  );

  it(
    'refuses a wrong password (nothing reaches the client), and delivers a denial or a missing PKCE as an error',
    TIMEOUT,
    async () => {
      const client = await loopbackServer();
      try {
        const pkce = newPkce();
        const url = op.authorizationUrl({ redirectUri: client.redirectUri, codeChallenge: pkce.challenge, state: 's' });
        await assert.rejects(op.browse(url, { sub: 'alice', password: 'wrong' }), /refused the login of alice/);
        await assert.rejects(op.browse(url, { sub: 'mallory', password: 'x' }), /refused the login of mallory/);
        assert.equal(client.hits.length, 0);

        const denied = new URL(await op.browse(url, ALICE, { consent: 'deny' }));
        assert.equal(denied.searchParams.get('error'), 'access_denied');
        assert.equal(client.hits[0]?.get('error'), 'access_denied');

        const noPkce = new URL(url);
        noPkce.searchParams.delete('code_challenge');
        noPkce.searchParams.delete('code_challenge_method');
        const refused = new URL(await op.browse(noPkce.href, ALICE));
        assert.equal(refused.searchParams.get('error'), 'invalid_request');
        assert.equal(refused.searchParams.get('code'), null);

        // A redirect_uri on another path is not registered: the provider shows an error page, the browser throws.
        const otherPath = new URL(url);
        otherPath.searchParams.set('redirect_uri', client.redirectUri.replace('/callback', '/elsewhere'));
        await assert.rejects(op.browse(otherPath.href, ALICE), /HTTP 400.*redirect_uri/);
        // Only the port may vary (RFC 8252 7.3): localhost is another host than the registered 127.0.0.1.
        const localhost = new URL(url);
        localhost.searchParams.set('redirect_uri', client.redirectUri.replace('127.0.0.1', 'localhost'));
        await assert.rejects(op.browse(localhost.href, ALICE), /HTTP 400.*redirect_uri/);
      } finally {
        await closeServer(client.server);
      }
    },
  );
});

describe('TestOidcProvider.rotateKeys', TIMEOUT, () => {
  it('signs with a new kid served in the JWKS, keeps the old key until it is retired', TIMEOUT, async () => {
    const op = await TestOidcProvider.start({ users: [ALICE], idTokenTtlSeconds: 120 });
    try {
      const oldKid = op.currentKid;
      const oldJwks = op.publicJwks();
      const before = await op.idToken('alice');
      assert.equal(decodeProtectedHeader(before).kid, oldKid);
      const beforePayload = (await jwtVerify(before, createLocalJWKSet(oldJwks))).payload;
      assert.equal(beforePayload.exp! - beforePayload.iat!, 120);

      await op.rotateKeys();
      const newKid = op.currentKid;
      assert.notEqual(newKid, oldKid);
      const after = await op.idToken('alice');
      assert.equal(decodeProtectedHeader(after).kid, newKid);
      assert.equal(decodeProtectedHeader(await op.sign(op.standardClaims('alice'))).kid, newKid);
      const served = ((await op.getJson(op.jwksUri))['keys'] as { kid: string }[]).map((k) => k.kid);
      assert.deepEqual(served, [newKid, oldKid]);
      // A verifier holding the old key set does not know the new kid (what must trigger a JWKS refresh) ...
      await assert.rejects(jwtVerify(after, createLocalJWKSet(oldJwks)), errors.JWKSNoMatchingKey);
      // ... and the new key set verifies both.
      await jwtVerify(after, createLocalJWKSet(op.publicJwks()), { issuer: op.issuer, audience: 'coffer-cli' });
      await jwtVerify(before, createLocalJWKSet(op.publicJwks()), { issuer: op.issuer, audience: 'coffer-cli' });

      await op.rotateKeys({ retireOld: true });
      assert.deepEqual(
        op.publicJwks().keys.map((k) => k.kid),
        [op.currentKid],
      );
      await assert.rejects(jwtVerify(before, createLocalJWKSet(op.publicJwks())), errors.JWKSNoMatchingKey);
      await jwtVerify(await op.idToken('alice'), createLocalJWKSet(op.publicJwks()), { issuer: op.issuer });
    } finally {
      await op.stop();
    }
  });
});
