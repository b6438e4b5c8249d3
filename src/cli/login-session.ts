import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { login, type LoginResult } from '../client/login.ts';

/** A certificate is renewed once this share of its life has passed (an hour's at 40 minutes). */
export const RENEW_AT_FRACTION = 2 / 3;
/** After a failed renewal, the next try comes this long after (at most; never past the end). */
export const RENEW_RETRY_MS = 5_000;

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

  private constructor(options: LoginSessionOptions, first: LoginResult) {
    this.#options = options;
    this.#current = first;
  }

  static async start(options: LoginSessionOptions): Promise<LoginSession> {
    const session = new LoginSession(options, await loginWith(options));
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

  #renewDelayMs(): number {
    const issuedAtMs = Date.now();
    const lifeMs = Math.max(0, this.#current.notAfterMs - issuedAtMs);
    return Math.max(1_000, Math.floor(lifeMs * RENEW_AT_FRACTION));
  }

  #schedule(delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void this.#renew(), delayMs);
    this.#timer.unref();
  }

  async #renew(): Promise<void> {
    try {
      this.#current = await loginWith(this.#options);
      if (this.#stopped) return;
      this.#write();
      this.#options.onRenewed?.(this.#current);
      this.#schedule(this.#renewDelayMs());
    } catch (error) {
      const leftMs = this.#current.notAfterMs - Date.now();
      this.#options.onError?.(error as Error, leftMs);
      this.#schedule(Math.max(1_000, Math.min(RENEW_RETRY_MS, leftMs / 2)));
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
  /** A renewal failed; it is tried again while the certificate lasts (`leftMs`). */
  readonly onError?: (error: Error, leftMs: number) => void;
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
