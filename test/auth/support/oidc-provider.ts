import { createHash, randomBytes } from 'node:crypto';
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer, request as httpsRequest, type Server } from 'node:https';
import {
  calculateJwkThumbprint,
  exportJWK,
  generateKeyPair,
  SignJWT,
  type CryptoKey,
  type JSONWebKeySet,
  type JWK,
  type JWTHeaderParameters,
  type JWTPayload,
} from 'jose';
import Provider, { type Account, type AdapterPayload, type ClientMetadata, type Configuration } from 'oidc-provider';
import { makeTlsMaterial } from './test-tls.ts';

/**
 * A real OpenID provider (oidc-provider 8) on https://127.0.0.1:PORT for tests, with a browser the
 * test drives: the server-side JWT/OIDC login is checked against real discovery documents, JWKS
 * and ID tokens, and `coffer login oidc` runs its authorization-code flow (PKCE, loopback
 * redirect) against a provider that enforces the protocol, not a mock that agrees with the CLI.
 */

export interface OidcUser {
  readonly sub: string;
  readonly email: string;
  readonly groups: readonly string[];
  readonly password: string;
}

export interface TestOidcProviderOptions {
  readonly users: readonly OidcUser[];
  /** The public native client (PKCE, loopback redirect) the CLI uses. Default 'coffer-cli'. */
  readonly publicClientId?: string;
  /**
   * More public native clients, registered like the first: an ID token's `aud` is the client that
   * asked for it, so these are the other audiences `idToken(sub, { audience })` can produce.
   */
  readonly extraClientIds?: readonly string[];
  /** Lifetime of the ID tokens the provider issues. Default 3600. */
  readonly idTokenTtlSeconds?: number;
}

export interface BrowseOptions {
  /** What the user answers on the consent page. Default 'approve'; 'deny' sends error=access_denied to the client. */
  readonly consent?: 'approve' | 'deny';
  /**
   * Whether to GET the final redirect URL (the client's loopback server). Default true; false stops
   * at it, for a client with no server listening (the harness's own idToken()).
   */
  readonly deliver?: boolean;
}

/** The redirect URI registered for every client: RFC 8252 7.3, any port is accepted at run time (see start()). */
export const LOOPBACK_REDIRECT_URI = 'http://127.0.0.1/callback';

/** Scopes a client asks for to get `email` and `groups` in its ID token. */
export const OIDC_SCOPES = 'openid email groups';

const SIGNING_ALG = 'RS256';
const REQUEST_TIMEOUT_MS = 10_000;
/** Pages and redirects one browse() follows at most: a loop between the provider's pages fails instead of hanging. */
const BROWSE_STEPS_MAX = 20;
const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

interface SigningKey {
  readonly kid: string;
  readonly privateJwk: JWK;
  readonly publicJwk: JWK;
  readonly privateKey: CryptoKey;
}

export class TestOidcProvider {
  readonly issuer: string;
  readonly discoveryUrl: string;
  readonly authorizationEndpoint: string;
  readonly tokenEndpoint: string;
  readonly jwksUri: string;
  /** The CA that signed the provider's HTTPS certificate (made for this run): trust it to reach the issuer. */
  readonly caPem: string;
  readonly publicClientId: string;

  readonly #server: Server;
  readonly #users: ReadonlyMap<string, OidcUser>;
  readonly #clientIds: readonly string[];
  readonly #idTokenTtlSeconds: number;
  /** Kept across rotateKeys(), which builds a new Provider: sessions, grants and codes survive a rotation. */
  readonly #store = new Map<string, { value: unknown; expiresAtMs: number }>();
  readonly #cookieKeys = [randomBytes(32).toString('base64url')];
  /** Newest first: oidc-provider signs with the first key that fits, and so does sign(). */
  #keys: SigningKey[] = [];
  #provider: Provider | null = null;
  #callback: ((req: IncomingMessage, res: ServerResponse) => void) | null = null;

  private constructor(server: Server, port: number, caPem: string, options: TestOidcProviderOptions) {
    this.#server = server;
    this.issuer = `https://127.0.0.1:${port}`;
    this.discoveryUrl = `${this.issuer}/.well-known/openid-configuration`;
    this.authorizationEndpoint = `${this.issuer}/auth`;
    this.tokenEndpoint = `${this.issuer}/token`;
    this.jwksUri = `${this.issuer}/jwks`;
    this.caPem = caPem;
    this.publicClientId = options.publicClientId ?? 'coffer-cli';
    this.#users = new Map(options.users.map((user) => [user.sub, user]));
    this.#clientIds = [this.publicClientId, ...(options.extraClientIds ?? [])];
    this.#idTokenTtlSeconds = options.idTokenTtlSeconds ?? 3600;
  }

  /**
   * Starts a provider on 127.0.0.1 (a free port) over HTTPS. Every client is public and native
   * with the redirect URI http://127.0.0.1/callback: oidc-provider accepts, for a native client,
   * an http loopback redirect URI that differs from a registered one only by its port (RFC 8252
   * 7.3), so a CLI's http://127.0.0.1:PORT/callback passes whatever PORT it bound. The host and
   * path must match: http://localhost:PORT/callback or another path is refused (error page).
   */
  static async start(options: TestOidcProviderOptions): Promise<TestOidcProvider> {
    const tls = await makeTlsMaterial('OIDC');
    // The issuer names the port, so the server listens before the provider exists; until then it answers 503.
    let harness: TestOidcProvider | null = null;
    const server = createServer({ key: tls.keyPem, cert: tls.certPem }, (req, res) => {
      if (harness === null) {
        res.statusCode = 503;
        res.end();
        return;
      }
      harness.#handle(req, res);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const port = (server.address() as { port: number }).port;
    const made = new TestOidcProvider(server, port, tls.caPem, options);
    try {
      made.#keys = [await newSigningKey()];
      made.#build();
    } catch (error) {
      await made.stop();
      throw error;
    }
    harness = made;
    return made;
  }

  /** The provider's signing keys as a public JWKS, newest first: what the jwks_uri serves and a static-keys configuration would hold. */
  publicJwks(): JSONWebKeySet {
    return { keys: this.#keys.map((key) => ({ ...key.publicJwk })) };
  }

  /** The kid the provider signs with now. */
  get currentKid(): string {
    return this.#keys[0]!.kid;
  }

  /**
   * Signs `claims` as they are (nothing added: refusal tests leave claims out) with the provider's
   * current private key, with the header the provider's own ID tokens have ({ alg: 'RS256', typ:
   * 'JWT', kid }); `header` overrides or adds parameters (a `kid` nobody serves, say).
   */
  async sign(claims: Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
    const key = this.#keys[0]!;
    // typ JWT as in the provider's own ID tokens.
    const protectedHeader = { alg: SIGNING_ALG, typ: 'JWT', kid: key.kid, ...header } as JWTHeaderParameters;
    return new SignJWT(claims as JWTPayload).setProtectedHeader(protectedHeader).sign(key.privateKey);
  }

  /** The claims an ID token from this provider carries for `sub` (iss, aud, sub, iat, exp, email, groups), to give sign() and then spoil one. */
  standardClaims(sub: string, options: { audience?: string; ttlSeconds?: number } = {}): Record<string, unknown> {
    const user = this.#user(sub);
    const nowSeconds = Math.floor(Date.now() / 1000);
    return {
      iss: this.issuer,
      aud: options.audience ?? this.publicClientId,
      sub,
      iat: nowSeconds,
      exp: nowSeconds + (options.ttlSeconds ?? this.#idTokenTtlSeconds),
      email: user.email,
      email_verified: true,
      groups: [...user.groups],
    };
  }

  /**
   * A real ID token for `sub`, through the provider's own authorization-code flow with PKCE: the
   * harness is the browser (logs in, consents) and the client (exchanges the code). `audience`
   * picks the client, hence the `aud`: publicClientId or one of extraClientIds.
   */
  async idToken(sub: string, options: { audience?: string } = {}): Promise<string> {
    const clientId = options.audience ?? this.publicClientId;
    if (!this.#clientIds.includes(clientId))
      throw new Error(`no client ${clientId} is registered: pass it in extraClientIds to get tokens for that audience`);
    const user = this.#user(sub);
    const pkce = newPkce();
    const state = randomBytes(16).toString('base64url');
    const authorizationUrl = this.authorizationUrl({
      clientId,
      redirectUri: LOOPBACK_REDIRECT_URI,
      codeChallenge: pkce.challenge,
      state,
      nonce: randomBytes(16).toString('base64url'),
    });
    const finalUrl = new URL(await this.browse(authorizationUrl, user, { deliver: false }));
    const code = finalUrl.searchParams.get('code');
    if (code === null || finalUrl.searchParams.get('state') !== state)
      throw new Error(`the provider did not return a code: ${finalUrl.href}`);
    const tokens = await this.exchangeCode({
      clientId,
      code,
      redirectUri: LOOPBACK_REDIRECT_URI,
      codeVerifier: pkce.verifier,
    });
    if (typeof tokens['id_token'] !== 'string') throw new Error('the token endpoint returned no id_token');
    return tokens['id_token'];
  }

  /** An authorization request URL for the code flow with PKCE (S256), as a CLI would open it. */
  authorizationUrl(request: {
    clientId?: string;
    redirectUri: string;
    codeChallenge: string;
    state: string;
    nonce?: string;
    scope?: string;
  }): string {
    const url = new URL(this.authorizationEndpoint);
    url.searchParams.set('client_id', request.clientId ?? this.publicClientId);
    url.searchParams.set('response_type', 'code');
    url.searchParams.set('redirect_uri', request.redirectUri);
    url.searchParams.set('scope', request.scope ?? OIDC_SCOPES);
    url.searchParams.set('state', request.state);
    url.searchParams.set('code_challenge', request.codeChallenge);
    url.searchParams.set('code_challenge_method', 'S256');
    if (request.nonce !== undefined) url.searchParams.set('nonce', request.nonce);
    return url.href;
  }

  /** Exchanges an authorization code at the token endpoint as a public client: the token response's JSON. */
  async exchangeCode(exchange: {
    clientId?: string;
    code: string;
    redirectUri: string;
    codeVerifier: string;
  }): Promise<Record<string, unknown>> {
    const body = new URLSearchParams({
      grant_type: 'authorization_code',
      client_id: exchange.clientId ?? this.publicClientId,
      code: exchange.code,
      redirect_uri: exchange.redirectUri,
      code_verifier: exchange.codeVerifier,
    }).toString();
    const answer = await this.#request('POST', new URL(this.tokenEndpoint), {
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body,
    });
    const parsed = JSON.parse(answer.body) as Record<string, unknown>;
    if (answer.status !== 200)
      throw new Error(
        `the token endpoint answered HTTP ${answer.status}: ${parsed['error']} ${parsed['error_description']}`,
      );
    return parsed;
  }

  /** GETs a JSON document from the provider (trusting caPem): discovery, JWKS. */
  async getJson(url: string): Promise<Record<string, unknown>> {
    const answer = await this.#request('GET', new URL(url), { headers: { accept: 'application/json' } });
    if (answer.status !== 200) throw new Error(`${url} answered HTTP ${answer.status}`);
    return JSON.parse(answer.body) as Record<string, unknown>;
  }

  /**
   * Plays a fresh browser (its own cookie jar, no session) for an authorization URL a client
   * opened: follows the provider's redirects, signs in as `user` on the login page, answers the
   * consent page, and when a redirect leaves the provider for an http loopback URL (the client's
   * redirect_uri) GETs it, so the client's loopback server receives the code (or the error), and
   * returns that URL. Throws when the provider refuses the login (wrong sub or password: it shows
   * the login page again), shows an error page (an unknown client, a redirect_uri not registered),
   * or redirects anywhere else. Errors the provider may send to the redirect_uri (PKCE missing,
   * access denied) are delivered there like a code: the returned URL carries `error`.
   */
  async browse(
    authorizationUrl: string,
    user: { sub: string; password: string },
    options: BrowseOptions = {},
  ): Promise<string> {
    const jar = new CookieJar();
    let method: 'GET' | 'POST' = 'GET';
    let url = new URL(authorizationUrl);
    let body: string | undefined;
    let loginSubmitted = false;
    for (let step = 0; step < BROWSE_STEPS_MAX; step++) {
      if (url.origin !== this.issuer) {
        if (url.protocol !== 'http:' || !LOOPBACK_HOSTS.has(url.hostname))
          throw new Error(`the provider redirected to ${url.href}, not to a loopback redirect_uri`);
        if (options.deliver !== false) await plainGet(url);
        return url.href;
      }
      const headers: Record<string, string> = { accept: 'text/html' };
      const cookie = jar.header(url.pathname);
      if (cookie !== '') headers['cookie'] = cookie;
      if (body !== undefined) headers['content-type'] = 'application/x-www-form-urlencoded';
      const answer = await this.#request(method, url, body === undefined ? { headers } : { headers, body });
      jar.store(answer.headers['set-cookie'] ?? []);
      const location = answer.headers['location'];
      if (answer.status >= 300 && answer.status < 400 && location !== undefined) {
        // The provider redirects with 302 and 303 only: both are followed by a GET, as a browser does.
        url = new URL(location, url);
        method = 'GET';
        body = undefined;
        continue;
      }
      const form = answer.status === 200 ? parseForm(answer.body) : null;
      if (form === null)
        throw new Error(`the provider answered HTTP ${answer.status} at ${url.pathname}: ${textOf(answer.body)}`);
      const fields = new URLSearchParams(form.hidden);
      switch (form.hidden['prompt']) {
        case 'login':
          if (loginSubmitted) throw new Error(`the provider refused the login of ${user.sub}: ${textOf(answer.body)}`);
          loginSubmitted = true;
          fields.set('login', user.sub);
          fields.set('password', user.password);
          break;
        case 'consent':
          fields.set('decision', options.consent ?? 'approve');
          break;
        default:
          throw new Error(`a form the browser does not know at ${url.pathname}: ${textOf(answer.body)}`);
      }
      method = 'POST';
      url = new URL(form.action, url);
      body = fields.toString();
    }
    throw new Error(`more than ${BROWSE_STEPS_MAX} pages and redirects from ${authorizationUrl}`);
  }

  /**
   * Adds a new signing key (a new kid) in front of the others: tokens are signed with it from now
   * on, and the JWKS serves it, the old keys after it unless `retireOld` (then a token signed with
   * an old key no longer verifies against the served JWKS). The provider is rebuilt around the
   * same storage: sessions, grants and codes survive.
   */
  async rotateKeys(options: { retireOld?: boolean } = {}): Promise<void> {
    const fresh = await newSigningKey();
    this.#keys = options.retireOld === true ? [fresh] : [fresh, ...this.#keys];
    this.#build();
  }

  /** Closes the server and every connection to it (keep-alive ones too). */
  async stop(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    await closed;
  }

  #user(sub: string): OidcUser {
    const user = this.#users.get(sub);
    if (user === undefined) throw new Error(`no user ${sub} in this provider`);
    return user;
  }

  #build(): void {
    const users = this.#users;
    const clients: ClientMetadata[] = this.#clientIds.map((clientId) => ({
      client_id: clientId,
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      redirect_uris: [LOOPBACK_REDIRECT_URI],
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
    }));
    const configuration: Configuration = {
      adapter: storeAdapter(this.#store),
      clients,
      jwks: { keys: this.#keys.map((key) => ({ ...key.privateJwk })) },
      async findAccount(_ctx, sub): Promise<Account | undefined> {
        const user = users.get(sub);
        if (user === undefined) return undefined;
        return {
          accountId: sub,
          claims: () => ({ sub, email: user.email, email_verified: true, groups: [...user.groups] }),
        };
      },
      claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
      // By default (OIDC Core 5.4) claims asked for by scope go only to the userinfo endpoint when
      // an access token is issued, as in the code flow; the ID token is what Coffer checks, so it
      // carries them.
      conformIdTokenClaims: false,
      cookies: { keys: this.#cookieKeys },
      // devInteractions would take any password; the harness's own pages check it (#interaction).
      features: { devInteractions: { enabled: false } },
      interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
      // Required for every client (public clients need it anyway in oidc-provider 8); only S256 exists.
      pkce: { required: () => true },
      // Numbers rather than the defaults: each default TTL function prints a "you SHOULD change it" notice when called.
      ttl: {
        AccessToken: 3600,
        AuthorizationCode: 60,
        IdToken: this.#idTokenTtlSeconds,
        RefreshToken: 24 * 3600,
        Interaction: 600,
        Session: 3600,
        Grant: 3600,
      },
      // The default error page prints a notice too; this one says the same in plain HTML.
      renderError(ctx, out) {
        ctx.type = 'html';
        ctx.body = `<!DOCTYPE html><html><body><h1>${escapeHtml(out.error)}</h1><p>${escapeHtml(
          String(out.error_description ?? ''),
        )}</p></body></html>`;
      },
    };
    this.#provider = new Provider(this.issuer, configuration);
    this.#callback = this.#provider.callback();
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const path = new URL(req.url ?? '/', this.issuer).pathname;
    const interaction = /^\/interaction\/([^/]+)$/.exec(path);
    if (interaction === null) {
      this.#callback!(req, res);
      return;
    }
    this.#interaction(req, res, interaction[1]!).catch((error: unknown) => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      sendHtml(res, 400, `<p class="error">${escapeHtml(error instanceof Error ? error.message : String(error))}</p>`);
    });
  }

  /**
   * The provider's login and consent pages (what `interactions.url` points at): GET shows the page
   * the interaction is at, POST takes the form. A wrong login shows the login page again with an
   * error, as a real provider does; nothing reaches the client.
   */
  async #interaction(req: IncomingMessage, res: ServerResponse, uid: string): Promise<void> {
    const provider = this.#provider!;
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) throw new Error('the interaction cookie is for another interaction');
    const action = `/interaction/${encodeURIComponent(uid)}`;
    if (req.method === 'GET') {
      if (details.prompt.name === 'login') return sendHtml(res, 200, loginPage(action, ''));
      if (details.prompt.name === 'consent') return sendHtml(res, 200, consentPage(action, details.prompt.details));
      throw new Error(`no page for the prompt ${details.prompt.name}`);
    }
    if (req.method !== 'POST') throw new Error(`${req.method} is not accepted here`);
    const form = new URLSearchParams(await readBody(req));
    const prompt = form.get('prompt');
    if (prompt !== details.prompt.name)
      throw new Error(`the form is for ${prompt}, the interaction is at ${details.prompt.name}`);
    if (prompt === 'login') {
      const user = this.#users.get(form.get('login') ?? '');
      if (user === undefined || !equalSecrets(user.password, form.get('password') ?? ''))
        return sendHtml(res, 200, loginPage(action, 'Wrong login or password.'));
      return provider.interactionFinished(
        req,
        res,
        { login: { accountId: user.sub } },
        { mergeWithLastSubmission: false },
      );
    }
    if (prompt === 'consent') {
      if (form.get('decision') !== 'approve')
        return provider.interactionFinished(
          req,
          res,
          { error: 'access_denied', error_description: 'the user denied the request' },
          { mergeWithLastSubmission: false },
        );
      const accountId = details.session?.accountId;
      const clientId = details.params['client_id'];
      if (accountId === undefined || typeof clientId !== 'string')
        throw new Error('consent without a session or client');
      const grant =
        (details.grantId === undefined ? undefined : await provider.Grant.find(details.grantId)) ??
        new provider.Grant({ accountId, clientId });
      const missing = details.prompt.details;
      if (missing.missingOIDCScope !== undefined) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims !== undefined) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {}))
        grant.addResourceScope(indicator, scopes.join(' '));
      const grantId = await grant.save();
      return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    }
    throw new Error(`no form for the prompt ${prompt}`);
  }

  /** One request to the provider, trusting its CA (global fetch has no per-request CA in Node 20). */
  #request(
    method: 'GET' | 'POST',
    url: URL,
    options: { headers: Record<string, string>; body?: string },
  ): Promise<{ status: number; headers: IncomingHttpHeaders; body: string }> {
    return new Promise((resolve, reject) => {
      // agent false: a connection per request, none left open in a shared pool when the server stops.
      const req = httpsRequest(
        url,
        { method, headers: options.headers, ca: this.caPem, agent: false, timeout: REQUEST_TIMEOUT_MS },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () =>
            resolve({
              status: res.statusCode ?? 0,
              headers: res.headers,
              body: Buffer.concat(chunks).toString('utf8'),
            }),
          );
          res.on('error', reject);
        },
      );
      req.on('timeout', () =>
        req.destroy(new Error(`${method} ${url.href}: no answer within ${REQUEST_TIMEOUT_MS} ms`)),
      );
      req.on('error', reject);
      req.end(options.body);
    });
  }
}

/** A PKCE verifier and its S256 challenge (RFC 7636). */
export function newPkce(): { verifier: string; challenge: string } {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
}

async function newSigningKey(): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(SIGNING_ALG, { extractable: true });
  const publicJwk = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(publicJwk);
  const labels = { kid, alg: SIGNING_ALG, use: 'sig' };
  return {
    kid,
    privateJwk: { ...(await exportJWK(privateKey)), ...labels },
    publicJwk: { ...publicJwk, ...labels },
    privateKey,
  };
}

/**
 * An adapter over the harness's own map instead of oidc-provider's in-memory one: that one is
 * shared by every provider in the process and prints a warning at each start, and this one
 * outlives a rotateKeys() rebuild.
 */
function storeAdapter(store: Map<string, { value: unknown; expiresAtMs: number }>) {
  const get = (key: string): unknown => {
    const entry = store.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAtMs <= Date.now()) {
      store.delete(key);
      return undefined;
    }
    return entry.value;
  };
  const set = (key: string, value: unknown, expiresIn: number | undefined): void => {
    store.set(key, {
      value,
      expiresAtMs: expiresIn === undefined ? Number.POSITIVE_INFINITY : Date.now() + expiresIn * 1000,
    });
  };
  return class StoreAdapter {
    constructor(readonly model: string) {}

    async upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
      const key = `${this.model}:${id}`;
      if (this.model === 'Session' && typeof payload.uid === 'string') set(`sessionUid:${payload.uid}`, id, expiresIn);
      if (typeof payload.userCode === 'string') set(`userCode:${payload.userCode}`, id, expiresIn);
      if (typeof payload.grantId === 'string') {
        // What revokeByGrantId must delete: every token of the grant.
        const grantKey = `grant:${payload.grantId}`;
        const members = (get(grantKey) as string[] | undefined) ?? [];
        set(grantKey, [...members, key], undefined);
      }
      set(key, payload, expiresIn);
    }

    async find(id: string): Promise<AdapterPayload | undefined> {
      return get(`${this.model}:${id}`) as AdapterPayload | undefined;
    }

    async findByUid(uid: string): Promise<AdapterPayload | undefined> {
      const id = get(`sessionUid:${uid}`);
      return typeof id === 'string' ? this.find(id) : undefined;
    }

    async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
      const id = get(`userCode:${userCode}`);
      return typeof id === 'string' ? this.find(id) : undefined;
    }

    async consume(id: string): Promise<void> {
      const payload = await this.find(id);
      if (payload !== undefined) payload.consumed = Math.floor(Date.now() / 1000);
    }

    async destroy(id: string): Promise<void> {
      store.delete(`${this.model}:${id}`);
    }

    async revokeByGrantId(grantId: string): Promise<void> {
      const grantKey = `grant:${grantId}`;
      for (const key of (get(grantKey) as string[] | undefined) ?? []) store.delete(key);
      store.delete(grantKey);
    }
  };
}

/** Cookies of one browser for the provider's origin, by name and path (the interaction cookies are path-scoped). */
class CookieJar {
  readonly #cookies = new Map<string, { name: string; value: string; path: string }>();

  store(setCookies: readonly string[]): void {
    for (const line of setCookies) {
      const [pair = '', ...attributes] = line.split(';').map((part) => part.trim());
      const eq = pair.indexOf('=');
      if (eq <= 0) continue;
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let path = '/';
      let expired = value === '';
      for (const attribute of attributes) {
        const [key = '', val = ''] = attribute.split('=', 2);
        const lower = key.toLowerCase();
        if (lower === 'path' && val !== '') path = val;
        else if (lower === 'expires' && Date.parse(val) <= Date.now()) expired = true;
        else if (lower === 'max-age' && Number(val) <= 0) expired = true;
      }
      const id = `${name}\u0000${path}`;
      if (expired) this.#cookies.delete(id);
      else this.#cookies.set(id, { name, value, path });
    }
  }

  /** The Cookie header for a request to `path`: the cookies whose path covers it, the most specific first (RFC 6265 5.4). */
  header(path: string): string {
    return [...this.#cookies.values()]
      .filter((c) => c.path === '/' || path === c.path || path.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`))
      .sort((a, b) => b.path.length - a.path.length)
      .map((c) => `${c.name}=${c.value}`)
      .join('; ');
  }
}

/** The first form of a page: its action and hidden inputs (what a browser submits without the user). */
function parseForm(html: string): { action: string; hidden: Record<string, string> } | null {
  const form = /<form\b([^>]*)>([\s\S]*?)<\/form>/i.exec(html);
  if (form === null) return null;
  const action = attributesOf(form[1]!)['action'];
  if (action === undefined) return null;
  const hidden: Record<string, string> = {};
  for (const input of form[2]!.matchAll(/<input\b([^>]*)>/gi)) {
    const attributes = attributesOf(input[1]!);
    if (attributes['type'] === 'hidden' && attributes['name'] !== undefined)
      hidden[attributes['name']] = attributes['value'] ?? '';
  }
  return { action, hidden };
}

function attributesOf(tag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const match of tag.matchAll(/([\w-]+)\s*=\s*"([^"]*)"/g)) out[match[1]!.toLowerCase()] = unescapeHtml(match[2]!);
  return out;
}

function loginPage(action: string, error: string): string {
  return `<h1>Sign in</h1>${error === '' ? '' : `<p class="error">${escapeHtml(error)}</p>`}
<form method="post" action="${escapeHtml(action)}">
  <input type="hidden" name="prompt" value="login">
  <input type="text" name="login" placeholder="login">
  <input type="password" name="password" placeholder="password">
  <button type="submit">Sign in</button>
</form>`;
}

function consentPage(action: string, details: { missingOIDCScope?: string[]; missingOIDCClaims?: string[] }): string {
  const asked = [...(details.missingOIDCScope ?? []), ...(details.missingOIDCClaims ?? [])];
  return `<h1>Authorize</h1><ul>${asked.map((item) => `<li>${escapeHtml(item)}</li>`).join('')}</ul>
<form method="post" action="${escapeHtml(action)}">
  <input type="hidden" name="prompt" value="consent">
  <button type="submit" name="decision" value="approve">Allow</button>
  <button type="submit" name="decision" value="deny">Deny</button>
</form>`;
}

function sendHtml(res: ServerResponse, status: number, body: string): void {
  res.statusCode = status;
  res.setHeader('content-type', 'text/html; charset=utf-8');
  res.setHeader('cache-control', 'no-store');
  res.end(`<!DOCTYPE html><html><body>${body}</body></html>`);
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function unescapeHtml(text: string): string {
  return text
    .replace(/&#(\d+);/g, (_, code: string) => String.fromCharCode(Number(code)))
    .replace(/&quot;/g, '"')
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');
}

/** A page's text, short, for an error message. */
function textOf(html: string): string {
  return unescapeHtml(html.replace(/<[^>]*>/g, ' '))
    .replace(/\s+/g, ' ')
    .trim()
    .slice(0, 300);
}

function equalSecrets(a: string, b: string): boolean {
  // Hashes first: the comparison takes the same time whatever the lengths (habit; nothing here is secret).
  return createHash('sha256').update(a).digest().equals(createHash('sha256').update(b).digest());
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

/** The browser's last step: GET the client's loopback redirect URL (plain http, no cookies) and read the answer. */
function plainGet(url: URL): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: 'GET', agent: false, timeout: REQUEST_TIMEOUT_MS }, (res) => {
      res.resume();
      res.on('end', () => resolve());
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url.href}: no answer within ${REQUEST_TIMEOUT_MS} ms`)));
    req.on('error', (error) => reject(new Error(`GET ${url.href} (the client's redirect_uri): ${error.message}`)));
    req.end();
  });
}
