import { request } from 'node:https';

/** A discovery document or a JWKS is at most this many bytes: a larger answer is refused, not read. */
export const FETCHED_BYTES_MAX = 1024 * 1024;
/** Each fetch gives up after this long. */
export const FETCH_TIMEOUT_MS = 5000;
/** Tries of one fetch (a connection refused or reset, a 5xx) before it fails, a growing pause between. */
export const FETCH_TRIES_MAX = 3;
const RETRY_PAUSE_MS = 200;

export class FetchError extends Error {
  override name = 'FetchError';
}

/**
 * GETs an https:// URL, trusting `caPem` when given (the system's CAs otherwise): the status and
 * body. Bounded in time and size; transient failures are tried again. Redirects are not followed:
 * the keys that sign tokens come from where the configuration says.
 */
export async function httpsGet(
  url: string,
  caPem: string,
  signal?: AbortSignal,
): Promise<{ status: number; body: Buffer }> {
  if (!url.startsWith('https://')) throw new FetchError(`${url}: only https:// URLs are fetched`);
  let lastError: unknown = null;
  for (let attempt = 1; attempt <= FETCH_TRIES_MAX; attempt++) {
    if (signal?.aborted === true) throw new FetchError(`${url}: given up`);
    try {
      const answer = await getOnce(url, caPem, signal);
      if (answer.status < 500) return answer;
      lastError = new FetchError(`${url} answered HTTP ${answer.status}`);
    } catch (error) {
      lastError = error;
    }
    if (attempt < FETCH_TRIES_MAX) await new Promise((resolve) => setTimeout(resolve, RETRY_PAUSE_MS * attempt));
  }
  throw lastError instanceof FetchError
    ? lastError
    : new FetchError(`${url}: ${(lastError as Error | null)?.message ?? 'failed'}`);
}

function getOnce(url: string, caPem: string, signal?: AbortSignal): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    // A whole answer within the time, not only bytes now and then: an issuer that dribbles its
    // answer must not hold a login (or a fetch slot) for ever.
    const deadline = setTimeout(
      () => req.destroy(new FetchError(`${url}: no whole answer within ${FETCH_TIMEOUT_MS} ms`)),
      FETCH_TIMEOUT_MS,
    );
    const abort = (): void => void req.destroy(new FetchError(`${url}: given up`));
    signal?.addEventListener('abort', abort, { once: true });
    const settle =
      <T>(done: (value: T) => void) =>
      (value: T): void => {
        clearTimeout(deadline);
        signal?.removeEventListener('abort', abort);
        done(value);
      };
    resolve = settle(resolve);
    reject = settle(reject);
    const req = request(
      url,
      {
        method: 'GET',
        headers: { accept: 'application/json' },
        timeout: FETCH_TIMEOUT_MS,
        ...(caPem === '' ? {} : { ca: caPem }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        let bytes = 0;
        res.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes > FETCHED_BYTES_MAX) {
            req.destroy(new FetchError(`${url}: the answer is larger than ${FETCHED_BYTES_MAX} bytes`));
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new FetchError(`${url}: no answer within ${FETCH_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end();
  });
}

/** GETs a JSON document (an object) from an https:// URL. */
export async function httpsGetJson(url: string, caPem: string): Promise<Record<string, unknown>> {
  const { status, body } = await httpsGet(url, caPem);
  if (status !== 200) throw new FetchError(`${url} answered HTTP ${status}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    throw new FetchError(`${url} did not answer JSON`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new FetchError(`${url} did not answer a JSON object`);
  return parsed as Record<string, unknown>;
}
