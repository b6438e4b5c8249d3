import { spawn } from 'node:child_process';
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { request } from 'node:https';
import type { decodeJwt } from 'jose';
import { FETCH_TIMEOUT_MS, FETCHED_BYTES_MAX, httpsGetJson } from '../server/auth/https-get.ts';

/**
 * The OAuth 2.0 authorization-code flow with PKCE for a native app (RFC 8252) that `coffer login
 * oidc` runs: the user signs in at the OpenID provider in a browser, the provider redirects the
 * browser to a server this process runs on 127.0.0.1 with a code, and the code (with the PKCE
 * verifier only this process knows) is exchanged for an ID token. The cluster checks the token's
 * signature, issuer and audience; the nonce, checked here, binds the token to this flow.
 */

/** Scopes asked for by default: the ID token then carries `email` and `groups`, what a people role maps. */
export const OIDC_DEFAULT_SCOPE = 'openid email groups';
/** How long the browser has, by default, to come back with a code. */
export const OIDC_DEFAULT_TIMEOUT_MS = 300_000;
/** The loopback redirect's path (registered at the provider as http://127.0.0.1/callback, any port: RFC 8252 7.3). */
export const CALLBACK_PATH = '/callback';

export interface OidcFlowOptions {
  /** The provider's issuer (https://...): its discovery document must name exactly this issuer. */
  readonly issuer: string;
  /** The public client the flow runs as (no secret: a native app cannot keep one). */
  readonly clientId: string;
  /** CA certificates to trust for the provider's HTTPS ('' = the system's). */
  readonly issuerCaPem: string;
  /** Space-separated; default OIDC_DEFAULT_SCOPE. */
  readonly scope?: string;
  /** How long to wait for the browser to come back to the loopback server; default OIDC_DEFAULT_TIMEOUT_MS. */
  readonly timeoutMs?: number;
  /** Also try to open a browser (xdg-open, open); the URL is told either way. */
  readonly openBrowser: boolean;
  /** Where the user is told what to do (the CLI's stderr; stdout may be JSON). */
  readonly tell: (line: string) => void;
}

/** What the flow needs from the provider's discovery document. */
interface ProviderEndpoints {
  readonly authorizationEndpoint: string;
  readonly tokenEndpoint: string;
  /** The provider says it sends `iss` in its authorization responses (RFC 9207): then one without it is refused. */
  readonly sendsIss: boolean;
}

/** Runs the flow and returns the ID token. Never logs the code, the verifier or the token. */
export async function oidcCodeFlow(options: OidcFlowOptions): Promise<string> {
  const endpoints = await discover(options.issuer, options.issuerCaPem);
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const state = randomBytes(24).toString('base64url');
  const nonce = randomBytes(24).toString('base64url');
  const loopback = await startLoopback();
  let code: string;
  const redirectUri = `http://127.0.0.1:${loopback.port}${CALLBACK_PATH}`;
  try {
    const url = new URL(endpoints.authorizationEndpoint);
    url.searchParams.set('response_type', 'code');
    url.searchParams.set('client_id', options.clientId);
    url.searchParams.set('redirect_uri', redirectUri);
    url.searchParams.set('scope', options.scope ?? OIDC_DEFAULT_SCOPE);
    url.searchParams.set('state', state);
    url.searchParams.set('nonce', nonce);
    url.searchParams.set('code_challenge', challenge);
    url.searchParams.set('code_challenge_method', 'S256');
    options.tell(`open this URL in your browser: ${url.href}`);
    if (options.openBrowser) openInBrowser(url.href, options.tell);
    code = await loopback.code(
      { state, issuer: options.issuer, sendsIss: endpoints.sendsIss },
      options.timeoutMs ?? OIDC_DEFAULT_TIMEOUT_MS,
    );
  } finally {
    loopback.close();
  }
  const tokens = await postForm(endpoints.tokenEndpoint, options.issuerCaPem, {
    grant_type: 'authorization_code',
    code,
    redirect_uri: redirectUri,
    client_id: options.clientId,
    code_verifier: verifier,
  });
  const idToken = tokens['id_token'];
  if (typeof idToken !== 'string' || idToken === '')
    throw new Error('the token endpoint answered no id_token: is the openid scope asked for (--scope)?');
  // jose is loaded here, not when the CLI starts (every command, `coffer server` included, loads this file).
  const { decodeJwt } = await import('jose');
  checkIdToken(decodeJwt, idToken, { nonce, issuer: options.issuer, clientId: options.clientId });
  return idToken;
}

/**
 * The provider's discovery document, from ISSUER/.well-known/openid-configuration (OIDC Discovery
 * 4: a trailing / of the issuer dropped first). Its issuer must be the one given, exactly: a
 * document that names another is another provider's, and its tokens would be refused anyway.
 */
async function discover(issuer: string, caPem: string): Promise<ProviderEndpoints> {
  if (!issuer.startsWith('https://')) throw new Error(`--issuer: ${issuer} is not an https:// URL`);
  const url = `${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
  let document: Record<string, unknown>;
  try {
    document = await httpsGetJson(url, caPem);
  } catch (error) {
    throw new Error(
      `the OpenID provider's discovery document could not be read: ${(error as Error).message}${
        caPem === '' ? ' (a provider under a private CA needs --issuer-ca)' : ''
      }`,
    );
  }
  if (document['issuer'] !== issuer)
    throw new Error(
      `the discovery document at ${url} names issuer ${JSON.stringify(String(document['issuer']).slice(0, 200))}, not ${issuer}: pass --issuer exactly as the provider names itself`,
    );
  const authorizationEndpoint = document['authorization_endpoint'];
  const tokenEndpoint = document['token_endpoint'];
  // https only: the browser is sent to the one, the code and the verifier are posted to the other.
  if (typeof authorizationEndpoint !== 'string' || !authorizationEndpoint.startsWith('https://'))
    throw new Error(`the discovery document at ${url} names no https:// authorization_endpoint`);
  if (typeof tokenEndpoint !== 'string' || !tokenEndpoint.startsWith('https://'))
    throw new Error(`the discovery document at ${url} names no https:// token_endpoint`);
  const methods = document['code_challenge_methods_supported'];
  if (Array.isArray(methods) && !methods.includes('S256'))
    throw new Error(`the provider at ${issuer} does not support PKCE with S256 (code_challenge_methods_supported)`);
  return {
    authorizationEndpoint,
    tokenEndpoint,
    sendsIss: document['authorization_response_iss_parameter_supported'] === true,
  };
}

interface Loopback {
  readonly port: number;
  /** The code of the first callback that carries this flow's state; rejects on an error there or the timeout. */
  code(expect: { state: string; issuer: string; sendsIss: boolean }, timeoutMs: number): Promise<string>;
  close(): void;
}

/**
 * The redirect target: an http server on 127.0.0.1, port chosen by the system (RFC 8252 7.3: the
 * provider accepts any port of a loopback redirect URI). Only 127.0.0.1, not localhost, which
 * may resolve to ::1 or, misconfigured, elsewhere.
 */
async function startLoopback(): Promise<Loopback> {
  let onCallback: ((req: IncomingMessage, res: ServerResponse) => void) | null = null;
  const server: Server = createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://127.0.0.1').pathname;
    if (req.method !== 'GET' || path !== CALLBACK_PATH || onCallback === null) {
      // A favicon, a scan of the port: nothing this flow waits for.
      page(res, 404, 'Not found', 'This is not a page of the Coffer login.');
      return;
    }
    onCallback(req, res);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as { port: number }).port;
  return {
    port,
    code(expect, timeoutMs) {
      return new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => {
          onCallback = null;
          reject(
            new Error(
              `the browser did not come back with a login within ${Math.round(timeoutMs / 1000)} s: finish signing in at the provider, or run the login again (--timeout gives more time)`,
            ),
          );
        }, timeoutMs);
        onCallback = (req, res) => {
          // The answer is this flow's: no other callback is taken, and the flow goes on once the
          // browser has its page (the server's connections are cut when the flow closes it).
          const done = (outcome: { code: string } | { error: Error }): void => {
            clearTimeout(timer);
            onCallback = null;
            res.once('close', () => {
              if ('code' in outcome) resolve(outcome.code);
              else reject(outcome.error);
            });
          };
          const params = new URL(req.url ?? '/', 'http://127.0.0.1').searchParams;
          const got = params.get('state');
          // Not the answer to this flow's request (a stale tab, a forged link): refused, and the wait goes on.
          if (got === null || !equalStrings(got, expect.state)) {
            page(res, 400, 'Login not accepted', 'This answer is not for the login this command is waiting for.');
            return;
          }
          // RFC 9207: an answer from another provider (a mix-up) is refused, and so is one without iss from a provider that sends it.
          const iss = params.get('iss');
          if ((iss !== null && iss !== expect.issuer) || (iss === null && expect.sendsIss)) {
            page(res, 400, 'Login failed', 'The answer does not come from the expected provider.');
            done({
              error: new Error(
                iss === null
                  ? 'the authorization response has no iss, which this provider sends (RFC 9207): refused'
                  : `the authorization response comes from issuer ${JSON.stringify(iss.slice(0, 200))}, not ${expect.issuer}: refused`,
              ),
            });
            return;
          }
          const error = params.get('error');
          if (error !== null) {
            const description = params.get('error_description');
            const why = `${error.slice(0, 100)}${description === null ? '' : ` (${description.slice(0, 300)})`}`;
            page(res, 400, 'Login failed', `The provider answered: ${why}. You may close this window.`);
            done({
              error: new Error(
                error === 'access_denied'
                  ? `access was denied at the provider: ${why}`
                  : `the provider refused the login: ${why}`,
              ),
            });
            return;
          }
          const code = params.get('code');
          if (code === null || code === '') {
            page(res, 400, 'Login failed', 'The provider sent no code.');
            done({ error: new Error('the authorization response has neither a code nor an error') });
            return;
          }
          page(res, 200, 'Logged in', 'Coffer has your login. You may close this window.');
          done({ code });
        };
      });
    },
    close() {
      onCallback = null;
      // The browser's keep-alive connection would hold the process open.
      server.close();
      server.closeAllConnections();
    },
  };
}

/** A failure the token request names itself (its time or size bound), told as it is. */
class TokenRequestError extends Error {
  override name = 'TokenRequestError';
}

/** POSTs a form (application/x-www-form-urlencoded) and reads the JSON answer: the token request, as a public client. */
function postForm(url: string, caPem: string, form: Record<string, string>): Promise<Record<string, unknown>> {
  const body = new URLSearchParams(form).toString();
  // Not tried again: a code is good once, a second try could only be refused.
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          'content-length': Buffer.byteLength(body),
          accept: 'application/json',
        },
        timeout: FETCH_TIMEOUT_MS,
        agent: false,
        ...(caPem === '' ? {} : { ca: caPem }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        let bytes = 0;
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes > FETCHED_BYTES_MAX)
            req.destroy(new TokenRequestError(`the token endpoint's answer is larger than ${FETCHED_BYTES_MAX} bytes`));
          else chunks.push(chunk);
        });
        res.on('error', reject);
        res.on('end', () => {
          let parsed: unknown;
          try {
            parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            reject(new Error(`the token endpoint answered HTTP ${res.statusCode} without JSON`));
            return;
          }
          if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
            reject(new Error(`the token endpoint answered HTTP ${res.statusCode} without a JSON object`));
            return;
          }
          const answer = parsed as Record<string, unknown>;
          if (res.statusCode !== 200 || answer['error'] !== undefined) {
            const description = answer['error_description'];
            reject(
              new Error(
                `the token endpoint refused the code (HTTP ${res.statusCode}): ${String(answer['error'] ?? 'no error given').slice(0, 100)}${
                  typeof description === 'string' ? ` (${description.slice(0, 300)})` : ''
                }`,
              ),
            );
            return;
          }
          resolve(answer);
        });
      },
    );
    req.on('timeout', () =>
      req.destroy(new TokenRequestError(`the token endpoint did not answer within ${FETCH_TIMEOUT_MS} ms`)),
    );
    req.on('error', (error) =>
      reject(error instanceof TokenRequestError ? error : new Error(`the token request failed: ${error.message}`)),
    );
    req.end(body);
  });
}

/**
 * The ID token's nonce must be this flow's: a token from another flow (injected through a stolen
 * code) is refused here. Its signature, issuer, audience and lifetime are the cluster's to check,
 * with the provider's keys; the issuer and audience are read here too, to say early what is wrong.
 */
function checkIdToken(
  decode: typeof decodeJwt,
  idToken: string,
  expect: { nonce: string; issuer: string; clientId: string },
): void {
  let claims: ReturnType<typeof decodeJwt>;
  try {
    claims = decode(idToken);
  } catch {
    throw new Error('the provider answered an id_token that is not a JWT');
  }
  if (typeof claims.nonce !== 'string' || !equalStrings(claims.nonce, expect.nonce))
    throw new Error("the ID token's nonce is not this login's: refused (a token from another login)");
  if (claims.iss !== expect.issuer) throw new Error(`the ID token's issuer is not ${expect.issuer}: refused`);
  const audiences = typeof claims.aud === 'string' ? [claims.aud] : (claims.aud ?? []);
  if (!audiences.includes(expect.clientId))
    throw new Error(`the ID token is not for the client ${expect.clientId} (its aud): refused`);
}

/** Best effort: the URL was told already, so a missing opener or a headless machine only gets a note. */
function openInBrowser(url: string, tell: (line: string) => void): void {
  const opener = process.platform === 'darwin' ? 'open' : 'xdg-open';
  try {
    const child = spawn(opener, [url], { stdio: 'ignore', detached: true });
    child.on('error', () => tell(`could not start ${opener}: open the URL yourself`));
    child.unref();
  } catch {
    tell(`could not start ${opener}: open the URL yourself`);
  }
}

function page(res: ServerResponse, status: number, title: string, text: string): void {
  res.statusCode = status;
  res.setHeader('content-type', 'text/html; charset=utf-8');
  res.setHeader('cache-control', 'no-store');
  // The page must not send the code on anywhere (a Referer from a link): it has none, and says so.
  res.setHeader('referrer-policy', 'no-referrer');
  res.end(
    `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Coffer: ${escapeHtml(title)}</title></head><body><h1>${escapeHtml(
      title,
    )}</h1><p>${escapeHtml(text)}</p></body></html>`,
  );
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Compares without leaking, through timing, how much of a random value an attacker got right. */
function equalStrings(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}
