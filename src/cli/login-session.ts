import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ClientError } from '../client/client.ts';
import { login, type LoginResult } from '../client/login.ts';

/** A certificate is renewed once this share of its life has passed (an hour's at 40 minutes). */
export const RENEW_AT_FRACTION = 2 / 3;
/** After failed renewals, tries come 1 s, 2 s, 4 s ... apart, at most this far. */
export const RENEW_RETRY_MS = 30_000;
/** Refusals a renewal does not try again after: the role, the subject or the method changed. */
const PERMANENT_REFUSALS: ReadonlySet<string> = new Set([
  'ROLE_NOT_FOUND',
  'AUTH_METHOD_NOT_CONFIGURED',
  'LOGIN_NOT_BOUND',
  'IDENTITY_REVOKED',
  'TOKEN_AUDIENCE_MISMATCH',
  'TOKEN_ISSUER_MISMATCH',
]);

/**
 * A workload's login that stays fresh: logs in with a token read from a file (read again at each
 * login: Kubernetes rotates projected service-account tokens in place), writes the key,
 * certificate and CA to `dir` (each file replaced atomically, the key mode 600) with a client.env,
 * and logs in again before the certificate ends, for as long as it runs.
 */
export class LoginSession {
  readonly #options: LoginSessionOptions;
  #current: LoginResult;
  #timer: NodeJS.Timeout | null = null;
  #stopped = false;
  #failures = 0;
  /** When the current certificate ends, by this machine's clock. */
  #endsAtMs: number;

  private constructor(options: LoginSessionOptions, first: LoginResult, startedMs: number) {
    this.#options = options;
    this.#current = first;
    this.#endsAtMs = startedMs + first.ttlSeconds * 1000;
  }

  static async start(options: LoginSessionOptions): Promise<LoginSession> {
    const startedMs = Date.now();
    const session = new LoginSession(options, await loginWith(options), startedMs);
    session.#write();
    session.#schedule(session.#renewDelayMs());
    return session;
  }

  /** The variables a client (or a child process) finds its identity with. */
  get env(): Record<string, string> {
    return {
      COFFER_ADDR: this.#options.addresses.join(','),
      COFFER_CA: join(this.#options.dir, 'ca.crt'),
      COFFER_CERT: join(this.#options.dir, 'client.crt'),
      COFFER_KEY: join(this.#options.dir, 'client.key'),
    };
  }

  get current(): LoginResult {
    return this.#current;
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** From now (the reply just arrived), by this machine's clock: two thirds of the life granted. */
  #renewDelayMs(): number {
    return Math.max(1_000, Math.floor(this.#current.ttlSeconds * 1000 * RENEW_AT_FRACTION));
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void this.#renew(), delayMs);
    this.#timer.unref();
  }

  async #renew(): Promise<void> {
    const startedMs = Date.now();
    try {
      this.#current = await loginWith(this.#options);
      this.#failures = 0;
      this.#endsAtMs = startedMs + this.#current.ttlSeconds * 1000;
      if (this.#stopped) return;
      this.#write();
      this.#options.onRenewed?.(this.#current);
      this.#schedule(this.#renewDelayMs());
    } catch (error) {
      const leftMs = this.#endsAtMs - Date.now();
      const reason = error instanceof ClientError ? error.reason : '';
      // Trying again cannot help these: the role, the subject or the method changed.
      const permanent = PERMANENT_REFUSALS.has(reason);
      this.#options.onError?.(error as Error, leftMs, permanent);
      if (permanent) return;
      // Growing pauses (1 s, 2 s, 4 s ... at most RENEW_RETRY_MS), so a refusal does not become a
      // flood that trips the per-address limit for everyone behind this address.
      this.#failures++;
      this.#schedule(Math.min(RENEW_RETRY_MS, 1_000 * 2 ** (this.#failures - 1)));
    }
  }

  #write(): void {
    const dir = this.#options.dir;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const replace = (name: string, text: string, mode: number): void => {
      const temporary = join(dir, `.${name}.new`);
      writeFileSync(temporary, text, { mode });
      renameSync(temporary, join(dir, name));
    };
    // The key first: a reader that sees the new certificate finds its key already there.
    replace('client.key', this.#current.keyPem, 0o600);
    replace('client.crt', this.#current.certificatePem, 0o644);
    replace('ca.crt', this.#current.caCertificatePem, 0o644);
    replace(
      'client.env',
      `${Object.entries(this.env)
        .map(([k, v]) => `${k}=${v}`)
        .join('\n')}\n`,
      0o644,
    );
  }
}

export interface LoginSessionOptions {
  readonly addresses: readonly string[];
  readonly caPem: string;
  readonly role: string;
  readonly tokenFile: string;
  readonly dir: string;
  readonly ttlSeconds?: number;
  readonly onRenewed?: (result: LoginResult) => void;
  /** A renewal failed; unless `permanent`, it is tried again (the certificate has `leftMs` left). */
  readonly onError?: (error: Error, leftMs: number, permanent: boolean) => void;
}

function loginWith(options: LoginSessionOptions): Promise<LoginResult> {
  let jwt: string;
  try {
    jwt = readFileSync(options.tokenFile, 'utf8').trim();
  } catch (error) {
    throw new Error(
      `cannot read the token file ${options.tokenFile}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`,
    );
  }
  return login(
    { addresses: options.addresses, caPem: options.caPem },
    { role: options.role, jwt, ...(options.ttlSeconds === undefined ? {} : { ttlSeconds: options.ttlSeconds }) },
  );
}
