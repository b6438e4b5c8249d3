import type { FetchImplementation, JWTPayload, JWTVerifyGetKey } from 'jose';
import type { JwtMethodConfig } from '../../state/auth-config.ts';
import { refuse, ServiceError } from '../errors.ts';
import { FETCH_TIMEOUT_MS, FetchError, httpsGet, httpsGetJson } from './https-get.ts';

type Jose = typeof import('jose');
let joseLoaded: Jose | null = null;
/** jose, loaded at the first login that needs it: a manager that never verifies a JWT starts without it. */
async function loadJose(): Promise<Jose> {
  joseLoaded ??= await import('jose');
  return joseLoaded;
}

/** Seconds of clock difference allowed on `exp` and `nbf` (the issuer's clock and the cluster's). */
export const TOKEN_LEEWAY_SECONDS = 60;
/** A fetched key set is used this long before it is fetched again. */
export const JWKS_CACHE_MS = 10 * 60_000;
/** After a fetch, an unknown key id waits this long before it may cause another (an attacker's random kid cannot flood the issuer). */
export const JWKS_REFETCH_COOLDOWN_MS = 10_000;
/** After a failed discovery, logins are refused with the same error this long before another fetch. */
export const DISCOVERY_RETRY_AFTER_MS = 5_000;
/** A discovery document is fetched again after this long. */
export const DISCOVERY_CACHE_MS = 60 * 60_000;

interface KeySource {
  /** The configuration as applied: each apply makes a new object (on every manager), so a method configured again, even the same way, is fetched again. */
  readonly config: JwtMethodConfig;
  readonly issuer: string;
  readonly getKey: JWTVerifyGetKey;
  readonly fetchedAtMs: number;
}

/**
 * Checks JSON Web Tokens for the jwt and oidc methods, with jose: the keys come from the method's
 * static JWKS, or from its issuer (discovery document, then JWKS; cached, fetched again on an
 * unknown key id after a cool-down, each fetch bounded in time and size and tried a few times).
 * Every refusal says what was wrong, as a ServiceError with a stable reason.
 */
export class JwtVerifier {
  readonly #sources = new Map<string, KeySource>();
  readonly #pending = new Map<string, { config: JwtMethodConfig; promise: Promise<KeySource> }>();
  readonly #failures = new Map<string, { config: JwtMethodConfig; error: ServiceError; atMs: number }>();
  readonly #monotonicMs: () => number;

  constructor(monotonicMs: () => number = () => performance.now()) {
    this.#monotonicMs = monotonicMs;
  }

  /**
   * The token's claims if it is signed by the method's issuer with an accepted algorithm, is for
   * one of `audiences`, and is valid at `nowMs` (the cluster's time). Throws a ServiceError.
   */
  async verify(
    config: JwtMethodConfig,
    audiences: readonly string[],
    token: string,
    nowMs: number,
  ): Promise<JWTPayload> {
    if (token === '' || token.length > 16 * 1024 || token.split('.').length !== 3)
      throw refuse('TOKEN_INVALID', 'the token is not a signed JWT (three base64url parts, at most 16 KiB)', {
        field: 'jwt',
      });
    const jose = await loadJose();
    const source = await this.#source(config, jose);
    try {
      const { payload } = await jose.jwtVerify(token, source.getKey, {
        issuer: source.issuer,
        audience: [...audiences],
        algorithms: [...config.algorithms],
        currentDate: new Date(nowMs),
        clockTolerance: TOKEN_LEEWAY_SECONDS,
        requiredClaims: ['exp'],
      });
      return payload;
    } catch (error) {
      throw tokenRefusal(error, jose);
    }
  }

  async #source(config: JwtMethodConfig, jose: Jose): Promise<KeySource> {
    const known = this.#sources.get(config.method);
    if (
      known !== undefined &&
      known.config === config &&
      (config.discoveryUrl === '' || this.#monotonicMs() - known.fetchedAtMs < DISCOVERY_CACHE_MS)
    )
      return known;
    if (config.discoveryUrl === '') {
      const source = staticSource(config, jose);
      this.#sources.set(config.method, source);
      return source;
    }
    // One discovery at a time per method; after a failure, logins get the same refusal for a
    // few seconds instead of each starting a fetch of its own (an issuer that is down).
    const failed = this.#failures.get(config.method);
    if (
      failed !== undefined &&
      failed.config === config &&
      this.#monotonicMs() - failed.atMs < DISCOVERY_RETRY_AFTER_MS
    )
      throw failed.error;
    const pending = this.#pending.get(config.method);
    if (pending !== undefined && pending.config === config) return pending.promise;
    const promise = this.#discover(config, jose).then(
      (source) => {
        this.#sources.set(config.method, source);
        this.#failures.delete(config.method);
        return source;
      },
      (error: unknown) => {
        if (error instanceof ServiceError)
          this.#failures.set(config.method, { config, error, atMs: this.#monotonicMs() });
        throw error;
      },
    );
    this.#pending.set(config.method, { config, promise });
    try {
      return await promise;
    } finally {
      if (this.#pending.get(config.method)?.promise === promise) this.#pending.delete(config.method);
    }
  }

  async #discover(config: JwtMethodConfig, jose: Jose): Promise<KeySource> {
    let document: Record<string, unknown>;
    try {
      document = await httpsGetJson(config.discoveryUrl, config.discoveryCaPem);
    } catch (error) {
      throw unreachable(error);
    }
    const issuer = document['issuer'];
    const jwksUri = document['jwks_uri'];
    if (typeof issuer !== 'string' || typeof jwksUri !== 'string' || !jwksUri.startsWith('https://'))
      throw refuse(
        'ISSUER_UNREACHABLE',
        `the discovery document at ${config.discoveryUrl} names no issuer or no https:// jwks_uri`,
      );
    if (config.boundIssuer !== '' && issuer !== config.boundIssuer)
      throw refuse(
        'ISSUER_UNREACHABLE',
        `the discovery document names issuer ${JSON.stringify(issuer.slice(0, 200))}, not the configured ${config.boundIssuer}`,
      );
    const fetchWithCa: FetchImplementation = async (url, options) => {
      const { status, body } = await httpsGet(url, config.discoveryCaPem, options.signal);
      // Anything but the keys is the issuer's trouble, not a bad token.
      if (status !== 200) throw new FetchError(`${url} answered HTTP ${status}`);
      return new Response(new Uint8Array(body), { status, headers: { 'content-type': 'application/json' } });
    };
    let jwksUrl: URL;
    try {
      jwksUrl = new URL(jwksUri);
    } catch {
      throw refuse('ISSUER_UNREACHABLE', `the discovery document's jwks_uri is not a URL`);
    }
    const getKey = jose.createRemoteJWKSet(jwksUrl, {
      cacheMaxAge: JWKS_CACHE_MS,
      cooldownDuration: JWKS_REFETCH_COOLDOWN_MS,
      timeoutDuration: FETCH_TIMEOUT_MS,
      [jose.customFetch]: fetchWithCa,
    });
    return { config, issuer, getKey, fetchedAtMs: this.#monotonicMs() };
  }
}

function staticSource(config: JwtMethodConfig, jose: Jose): KeySource {
  const jwks = JSON.parse(config.staticJwks) as Parameters<Jose['createLocalJWKSet']>[0];
  return { config, issuer: config.boundIssuer, getKey: jose.createLocalJWKSet(jwks), fetchedAtMs: 0 };
}

function unreachable(error: unknown): ServiceError {
  const why = error instanceof FetchError ? error.message : (error as Error).message;
  return refuse('ISSUER_UNREACHABLE', `the issuer's keys could not be fetched: ${why.slice(0, 300)}; retry`);
}

/** A jose error as the refusal a client reads. */
function tokenRefusal(error: unknown, { errors }: Jose): ServiceError {
  if (error instanceof errors.JWTExpired)
    return refuse('TOKEN_EXPIRED', 'the token expired: get a new one from its issuer', { field: 'jwt' });
  if (error instanceof errors.JWTClaimValidationFailed) {
    switch (error.claim) {
      case 'nbf':
      case 'iat':
        return refuse('TOKEN_NOT_YET_VALID', `the token is not valid yet (${error.claim} is in the future)`, {
          field: 'jwt',
        });
      case 'iss':
        return refuse('TOKEN_ISSUER_MISMATCH', "the token's issuer (iss) is not the configured issuer", {
          field: 'jwt',
        });
      case 'aud':
        return refuse('TOKEN_AUDIENCE_MISMATCH', "the token's audience (aud) is not one this role accepts", {
          field: 'jwt',
        });
      default:
        return refuse('TOKEN_INVALID', `the token's ${error.claim} claim is missing or invalid`, { field: 'jwt' });
    }
  }
  if (error instanceof errors.JOSEAlgNotAllowed)
    return refuse('TOKEN_ALGORITHM_REFUSED', "the token's signature algorithm is not one this method accepts", {
      field: 'jwt',
    });
  if (error instanceof errors.JWSSignatureVerificationFailed)
    return refuse('TOKEN_SIGNATURE_INVALID', "the token's signature does not verify with the issuer's key", {
      field: 'jwt',
    });
  if (error instanceof errors.JWKSNoMatchingKey || error instanceof errors.JWKSMultipleMatchingKeys)
    return refuse(
      'TOKEN_KEY_UNKNOWN',
      "no key of the issuer matches the token's key id and algorithm (a key the issuer does not publish, or one for another algorithm; if the issuer has just rotated its keys, retry in 10 s)",
      { field: 'jwt' },
    );
  // The issuer's key set could not be had (a timeout, not JSON, not a key set): not the token's fault.
  if (
    error instanceof errors.JWKSTimeout ||
    error instanceof errors.JWKSInvalid ||
    error instanceof FetchError ||
    (error instanceof errors.JOSEError && /JSON Web Key Set/.test(error.message))
  )
    return unreachable(error);
  if (error instanceof errors.JOSEError)
    return refuse('TOKEN_INVALID', `the token is not a valid signed JWT (${error.code})`, { field: 'jwt' });
  return unreachable(error);
}
