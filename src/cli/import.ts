/**
 * `coffer secret import`: secrets from JSON lines or a .env file, read line by line (never the
 * whole file), each line checked here first, then sent in batches of puts (Secrets.PutBatch: one
 * Raft command each, all or none), a few batches in flight. A batch the cluster refuses for one of
 * its items is sent again line by line, so the good lines go in and each bad one is reported with
 * the cluster's own message. A bad line is reported (its number and why, never its value) and
 * skipped; the good ones still go.
 */
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { status as grpcStatus } from '@grpc/grpc-js';
import { ClientError } from '../client/client.ts';
import {
  PUT_BATCH_BYTES_MAX,
  PUT_BATCH_ITEMS_MAX,
  SECRET_VALUE_BYTES_MAX,
  TTL_MS_MAX,
  VERSIONS_KEPT_MAX,
  putBatchItemBytes,
  secretNameProblem,
} from '../state/limits.ts';

export type ImportFormat = 'jsonl' | 'env';

/** A line (or, for a quoted .env value over several lines, lines) that makes a secret. */
export interface ImportEntry {
  readonly line: number;
  /** Lines it spans in the file. */
  readonly lines: number;
  readonly name: string;
  readonly value: Buffer;
  readonly ttlSeconds?: number;
  readonly versionsKept?: number;
}

/** A line refused before sending: why, and its name when one could be read (never its value). */
export interface BadLine {
  readonly line: number;
  readonly lines: number;
  readonly name: string | null;
  readonly reason: string;
}

/** A blank or comment line: nothing to send, counted for progress. */
export interface SkippedLine {
  readonly line: number;
  readonly lines: number;
  readonly skipped: true;
}

export type ParsedLine = ImportEntry | BadLine | SkippedLine;

export const isBad = (p: ParsedLine): p is BadLine => 'reason' in p;
export const isEntry = (p: ParsedLine): p is ImportEntry => 'value' in p;

/** The format a file name says (`.jsonl`, `.ndjson`; `.env`, `.env.*`, `*.env`), or null: sniff. */
export function formatFromName(path: string): ImportFormat | null {
  const base = path.split(/[\\/]/).pop() ?? '';
  if (/\.(jsonl|ndjson)$/i.test(base)) return 'jsonl';
  if (/^\.env(\..*)?$/i.test(base) || /\.env$/i.test(base)) return 'env';
  return null;
}

/** The format of a file whose name says none: JSON lines if the first line that is not blank starts with `{`. */
export function sniffFormat(firstLine: string): ImportFormat {
  return firstLine.trimStart().startsWith('{') ? 'jsonl' : 'env';
}

/** Why a prefix cannot go before names, or null. */
export function prefixProblem(prefix: string): string | null {
  if (prefix === '') return null;
  return secretNameProblem(`${prefix}x`) === null
    ? null
    : `--prefix ${JSON.stringify(prefix)} cannot start a secret name (segments of letters, digits, ".", "_" and "-" joined by "/")`;
}

const valueProblem = (value: Buffer): string | null =>
  value.byteLength > SECRET_VALUE_BYTES_MAX
    ? `the value has ${value.byteLength} bytes; a secret value has at most ${SECRET_VALUE_BYTES_MAX}`
    : null;

/** A UTF-16 surrogate without its pair: no UTF-8 for it (it would become U+FFFD silently). */
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2,3})?$/;
const BASE64URL = /^[A-Za-z0-9_-]*$/;
const JSON_FIELDS = new Set(['name', 'value', 'value_base64', 'ttl_seconds', 'versions_kept']);

/** An entry or why not, for a name and value read from line `line`. */
function entry(
  line: number,
  lines: number,
  name: string,
  value: Buffer,
  extra: { ttlSeconds?: number; versionsKept?: number } = {},
): ImportEntry | BadLine {
  const problem = secretNameProblem(name) ?? valueProblem(value);
  if (problem !== null) {
    value.fill(0);
    return { line, lines, name, reason: problem };
  }
  return { line, lines, name, value, ...extra };
}

/**
 * One JSON line: `{"name": "...", "value": "..."}` or `"value_base64"` instead of `"value"`;
 * optional `"ttl_seconds"` (0: no expiry) and `"versions_kept"` (0: the default). Blank lines
 * are skipped; nothing else is (no comments in JSON).
 */
export function parseJsonLine(text: string, line: number, prefix = ''): ParsedLine {
  if (text.trim() === '') return { line, lines: 1, skipped: true };
  const bad = (reason: string, name: string | null = null): BadLine => ({ line, lines: 1, name, reason });
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    // JSON.parse's message quotes the text, which holds the value: never shown.
    return bad('not valid JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    return bad('not a JSON object {"name": ..., "value": ...}');
  const record = parsed as Record<string, unknown>;
  const rawName = record['name'];
  if (typeof rawName !== 'string') return bad('no "name" (a string)');
  const name = prefix + rawName;
  const unknown = Object.keys(record).find((k) => !JSON_FIELDS.has(k));
  if (unknown !== undefined)
    return bad(
      `unknown field ${JSON.stringify(unknown.slice(0, 40))} (fields: name, value or value_base64, ttl_seconds, versions_kept)`,
      name,
    );
  const nameProblem = secretNameProblem(name);
  if (nameProblem !== null) return bad(nameProblem, name);
  const text64 = record['value_base64'];
  const plain = record['value'];
  if ((text64 === undefined) === (plain === undefined)) return bad('give "value" or "value_base64", one of them', name);
  let value: Buffer;
  if (plain !== undefined) {
    if (typeof plain !== 'string') return bad('"value" is a string (binary values go in "value_base64")', name);
    if (LONE_SURROGATE.test(plain)) return bad('"value" is not valid Unicode (use "value_base64")', name);
    value = Buffer.from(plain, 'utf8');
  } else {
    if (typeof text64 !== 'string' || !(BASE64.test(text64) || BASE64URL.test(text64)) || text64.length % 4 === 1)
      return bad('"value_base64" is not base64', name);
    value = Buffer.from(text64, 'base64');
  }
  const extra: { ttlSeconds?: number; versionsKept?: number } = {};
  const ttl = record['ttl_seconds'];
  if (ttl !== undefined) {
    if (!(Number.isSafeInteger(ttl) && (ttl as number) >= 0 && (ttl as number) * 1000 <= TTL_MS_MAX))
      return bad(`"ttl_seconds" is a whole number from 0 (no expiry) to ${TTL_MS_MAX / 1000}`, name);
    extra.ttlSeconds = ttl as number;
  }
  const kept = record['versions_kept'];
  if (kept !== undefined) {
    if (!(Number.isSafeInteger(kept) && (kept as number) >= 0 && (kept as number) <= VERSIONS_KEPT_MAX))
      return bad(`"versions_kept" is a whole number from 0 (the default) to ${VERSIONS_KEPT_MAX}`, name);
    extra.versionsKept = kept as number;
  }
  return entry(line, 1, name, value, extra);
}

/** `KEY=`, `export KEY=`, `KEY: ` (dotenv's keys: letters, digits, `_`, `.`, `-`); the rest of the line after. */
const ENV_LINE = /^\s*(?:export\s+)?([\w.-]+)(?:\s*=|:(?=\s|$))\s*(.*)$/;
const QUOTES = new Set(['"', "'", '`']);
/** What may follow a closing quote: spaces, then a comment. */
const AFTER_QUOTE = /^\s*(?:#.*)?$/;

/** The index of the quote that closes, from `from`; `\` before the quote keeps it open (and stays). */
function closingQuote(text: string, from: number, quote: string): number {
  for (let k = from; k < text.length; k++) {
    if (text[k] === '\\' && text[k + 1] === quote) k++;
    else if (text[k] === quote) return k;
  }
  return -1;
}

/**
 * A .env file, line by line, by dotenv's rules (dotenv 16's `parse`):
 * - `KEY=value`, `export KEY=value`, `KEY: value`; spaces around `=` and the value are trimmed;
 * - blank lines and lines starting with `#` are skipped;
 * - an unquoted value ends at the first `#` (an inline comment): quote a value that holds one;
 * - a value in '...', "..." or `...` is taken as it is inside, and may run over several lines
 *   (a PEM key); in "..." alone `\n` and `\r` become a new line and a carriage return, and no
 *   other escape is read (`\"` keeps the quote open and stays as `\"`, as in dotenv);
 * - a comment may follow a closing quote.
 * Unlike dotenv, which skips them silently, a line that is none of these is a bad line, as is
 * text after a closing quote and a quote never closed (the lines it swallowed are then read
 * again, as lines of their own, so one stray quote costs one line).
 */
export class EnvParser {
  readonly #prefix: string;
  #open: {
    line: number;
    name: string;
    quote: string;
    parts: string[];
    bytes: number;
    raw: Array<[string, number]>;
  } | null = null;

  constructor(prefix = '') {
    this.#prefix = prefix;
  }

  push(text: string, line: number): ParsedLine[] {
    const out: ParsedLine[] = [];
    this.#feed(text, line, out);
    return out;
  }

  /** At the end of the file: a quote still open is a bad line; the lines after it are read again. */
  end(): ParsedLine[] {
    const out: ParsedLine[] = [];
    while (this.#open !== null) this.#giveUp('the quote opened here is never closed', out);
    return out;
  }

  #giveUp(reason: string, out: ParsedLine[]): void {
    const open = this.#open!;
    this.#open = null;
    out.push({ line: open.line, lines: 1, name: open.name, reason });
    for (const [text, line] of open.raw) this.#feed(text, line, out);
  }

  #feed(text: string, line: number, out: ParsedLine[]): void {
    const open = this.#open;
    if (open !== null) {
      open.raw.push([text, line]);
      const close = closingQuote(text, 0, open.quote);
      if (close < 0) {
        open.parts.push(text);
        open.bytes += Buffer.byteLength(text) + 1;
        if (open.bytes > SECRET_VALUE_BYTES_MAX)
          this.#giveUp(`the quote opened here is not closed within ${SECRET_VALUE_BYTES_MAX} bytes`, out);
        return;
      }
      if (!AFTER_QUOTE.test(text.slice(close + 1))) {
        this.#giveUp('text after the closing quote (quote it all, or put a # before a comment)', out);
        return;
      }
      open.parts.push(text.slice(0, close));
      this.#open = null;
      out.push(this.#entry(open.line, line - open.line + 1, open.name, open.quote, open.parts.join('\n')));
      return;
    }
    const trimmed = text.trim();
    if (trimmed === '' || trimmed.startsWith('#')) {
      out.push({ line, lines: 1, skipped: true });
      return;
    }
    const match = ENV_LINE.exec(text);
    // No name shown: a line that is not KEY=value may be a value on its own.
    if (match === null) {
      out.push({ line, lines: 1, name: null, reason: 'not KEY=value, a comment or a blank line' });
      return;
    }
    const name = this.#prefix + match[1]!;
    const rest = match[2]!;
    const quote = rest[0] ?? '';
    if (!QUOTES.has(quote)) {
      const hash = rest.indexOf('#');
      out.push(this.#entry(line, 1, name, '', (hash < 0 ? rest : rest.slice(0, hash)).trim()));
      return;
    }
    const close = closingQuote(rest, 1, quote);
    if (close < 0) {
      this.#open = { line, name, quote, parts: [rest.slice(1)], bytes: Buffer.byteLength(rest), raw: [] };
      return;
    }
    if (!AFTER_QUOTE.test(rest.slice(close + 1))) {
      out.push({
        line,
        lines: 1,
        name,
        reason: 'text after the closing quote (quote it all, or put a # before a comment)',
      });
      return;
    }
    out.push(this.#entry(line, 1, name, quote, rest.slice(1, close)));
  }

  #entry(line: number, lines: number, name: string, quote: string, text: string): ImportEntry | BadLine {
    const value = quote === '"' ? text.replace(/\\n/g, '\n').replace(/\\r/g, '\r') : text;
    return entry(line, lines, name, Buffer.from(value, 'utf8'));
  }
}

/**
 * The lines of `input` parsed, as they are read (a byte-order mark and CRLF endings are fine).
 * `format` null: from the first line that is not blank.
 */
export async function* parseImport(
  input: Readable,
  options: { format: ImportFormat | null; prefix?: string },
): AsyncGenerator<ParsedLine> {
  const prefix = options.prefix ?? '';
  const reader = createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY });
  let format = options.format;
  let env: EnvParser | null = null;
  let line = 0;
  try {
    for await (let text of reader) {
      line++;
      if (line === 1 && text.startsWith('\ufeff')) text = text.slice(1);
      if (format === null) {
        if (text.trim() === '') {
          yield { line, lines: 1, skipped: true };
          continue;
        }
        format = sniffFormat(text);
      }
      if (format === 'jsonl') yield parseJsonLine(text, line, prefix);
      else {
        env ??= new EnvParser(prefix);
        yield* env.push(text, line);
      }
    }
    if (env !== null) yield* env.end();
  } finally {
    reader.close();
  }
}

/** A put as the client makes it: throws ClientError when the cluster refuses. */
export type PutFunction = (
  name: string,
  value: Buffer,
  options: { cas?: number; ttlSeconds?: number; versionsKept?: number },
) => Promise<unknown>;

/** A batch of puts as the client sends it (Secrets.PutBatch): all or none; throws ClientError when refused. */
export type PutBatchFunction = (
  items: ReadonlyArray<{ name: string; value: Buffer; cas?: number; ttlSeconds?: number; versionsKept?: number }>,
) => Promise<unknown>;

export interface ImportFailure {
  readonly line: number;
  readonly name: string | null;
  /** bad: refused here, never sent; refused: by the cluster. */
  readonly kind: 'bad' | 'refused';
  /** The gRPC status name, for a refusal. */
  readonly code: string | null;
  readonly reason: string;
}

export interface ImportSummary {
  /** Lines read. */
  lines: number;
  /** Lines (or multi-line entries) that passed the checks here. */
  valid: number;
  imported: number;
  /** With ifAbsent: names that already existed, left alone. */
  existing: number;
  bad: number;
  refused: number;
  /** Rate-limit and UNAVAILABLE retries made (of puts and of batches). */
  retries: number;
  /** Batches the cluster applied. */
  batches: number;
  /** Batches refused for one of their items (or not known to the cluster), then sent line by line. */
  batchesSplit: number;
  /** The first line not sent after the cluster stayed unavailable (null: it never did). */
  stoppedAtLine: number | null;
  failures: ImportFailure[];
  /** Failures beyond the first FAILURES_LISTED_MAX, counted but not listed. */
  failuresOmitted: number;
}

/** Batches in flight unless --batches says otherwise: a few keep the leader busy while one waits its fsync. */
export const IMPORT_BATCHES_IN_FLIGHT_DEFAULT = 4;

/** Failures kept for the summary: a file of a million bad lines must not fill memory. */
export const FAILURES_LISTED_MAX = 10_000;
/** Retries of a line whose put met UNAVAILABLE or DEADLINE_EXCEEDED (then the import stops), or ABORTED (then the line is refused). */
export const UNAVAILABLE_RETRIES = 4;
/** Retries of a line refused by a rate limit (RESOURCE_EXHAUSTED that says "retry in"). */
export const RATE_LIMIT_RETRIES = 20;
/** Bounds of one pause. */
const PAUSE_MIN_MS = 50;
const PAUSE_MAX_MS = 60_000;

/**
 * What a rate-limit refusal says to wait (ms, 0 if it does not say), or null if it is no rate
 * limit (a quota). From the error's reason and metadata (RATE_LIMITED, retryAfterMs); from its
 * message only when it has no reason (a manager older than reasons).
 */
export function rateLimitWaitHintMs(error: ClientError): number | null {
  if (error.reason === 'RATE_LIMITED') {
    const ms = Number(error.metadata['retryAfterMs'] ?? 0);
    return Number.isFinite(ms) && ms >= 0 ? ms : 0;
  }
  return error.reason === '' ? rateLimitHintMs(error.message) : null;
}

/** What a rate-limit refusal's message says to wait (ms, 0 if it does not say), or null if it is no rate limit (a quota). */
export function rateLimitHintMs(message: string): number | null {
  const hint = /retry in (\d+(?:\.\d+)?) ?(ms|s)\b/.exec(message);
  if (hint !== null) return Number(hint[1]) * (hint[2] === 's' ? 1000 : 1);
  return /requests\/s|per (second|minute)|\brate\b/i.test(message) ? 0 : null;
}

/**
 * How long a line waits before its retry number `attempt` (0 first) after a rate-limit refusal:
 * the time the refusal names, or more, doubling from 50 ms with each retry of the line (the
 * refusal names when one token is back, which every waiting line would race for); at most 60 s.
 */
export function rateLimitWaitMs(hintMs: number, attempt: number): number {
  return Math.min(PAUSE_MAX_MS, Math.max(hintMs, PAUSE_MIN_MS * 2 ** attempt));
}

/** A pause made 0 to 50% longer at random, so lines that waited together do not retry together. */
const jitter = (ms: number): number => Math.min(PAUSE_MAX_MS, Math.max(0, ms)) * (1 + Math.random() * 0.5);

export interface ImportOptions {
  /** Omitted with dryRun. */
  readonly put?: PutFunction;
  /** With it, lines go in batches (and line by line only when a batch is refused); without, as puts. */
  readonly putBatch?: PutBatchFunction;
  /** Single puts in flight (without putBatch; and while a refused batch is sent again line by line). */
  readonly concurrency: number;
  /** Batches in flight (IMPORT_BATCHES_IN_FLIGHT_DEFAULT). */
  readonly batchesInFlight?: number;
  /** Items per batch, 1 to PUT_BATCH_ITEMS_MAX (the default); 1 sends single puts, as without putBatch. */
  readonly batchItemsMax?: number;
  /** cas 0: only create; a name that exists is counted in `existing`, not as a failure. */
  readonly ifAbsent?: boolean;
  readonly dryRun?: boolean;
  readonly onFailure?: (failure: ImportFailure) => void;
  /** Lines done (read and, if sent, answered). */
  readonly onProgress?: (linesDone: number) => void;
  readonly sleep?: (ms: number) => Promise<void>;
}

/**
 * Sends the good lines as puts, at most `concurrency` at a time; lines of the same name go one
 * after the other in file order (the last is the current version). Every value is wiped once
 * its put is answered.
 */
export async function importSecrets(parsed: AsyncIterable<ParsedLine>, options: ImportOptions): Promise<ImportSummary> {
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const summary: ImportSummary = {
    lines: 0,
    valid: 0,
    imported: 0,
    existing: 0,
    bad: 0,
    refused: 0,
    retries: 0,
    batches: 0,
    batchesSplit: 0,
    stoppedAtLine: null,
    failures: [],
    failuresOmitted: 0,
  };
  let done = 0;
  const advance = (lines: number): void => {
    done += lines;
    options.onProgress?.(done);
  };
  const fail = (failure: ImportFailure): void => {
    if (failure.kind === 'bad') summary.bad++;
    else summary.refused++;
    if (summary.failures.length < FAILURES_LISTED_MAX) summary.failures.push(failure);
    else summary.failuresOmitted++;
    options.onFailure?.(failure);
  };
  /** Shared by every put: a rate limit pauses them all, not just the line it refused. */
  let pauseUntil = 0;
  /** Puts let in flight: the concurrency asked, halved by each rate-limit refusal, grown back by one per put stored. */
  let window = options.concurrency;
  let unavailable: string | null = null;

  /** The options of a line's put (or batch item): cas 0 with ifAbsent, its expiry and versions kept. */
  const putOptions = (entry: ImportEntry): { cas?: number; ttlSeconds?: number; versionsKept?: number } => ({
    ...(options.ifAbsent === true ? { cas: 0 } : {}),
    ...(entry.ttlSeconds === undefined ? {} : { ttlSeconds: entry.ttlSeconds }),
    ...(entry.versionsKept === undefined ? {} : { versionsKept: entry.versionsKept }),
  });

  /**
   * After a failed put or batch: how long to wait before sending it again, or null (not a
   * refusal worth retrying, or its retries are spent). UNAVAILABLE, a deadline and ABORTED (a
   * leader change dropped it, or left its outcome unknown: at worst one more version with the
   * same value) back off from 250 ms; a rate limit pauses every put for the wait the cluster
   * named, and `narrow` halves the caller's window.
   */
  const retryWaitMs = (
    error: unknown,
    tries: { unavailable: number; rate: number },
    narrow: () => void,
  ): number | null => {
    if (!(error instanceof ClientError)) return null;
    if (
      error.code === grpcStatus.UNAVAILABLE ||
      error.code === grpcStatus.DEADLINE_EXCEEDED ||
      error.code === grpcStatus.ABORTED
    )
      return tries.unavailable < UNAVAILABLE_RETRIES ? jitter(250 * 2 ** tries.unavailable++) : null;
    if (error.code !== grpcStatus.RESOURCE_EXHAUSTED) return null;
    const hintMs = rateLimitWaitHintMs(error);
    if (hintMs === null || tries.rate >= RATE_LIMIT_RETRIES) return null;
    pauseUntil = Math.max(pauseUntil, Date.now() + jitter(hintMs));
    narrow();
    return jitter(rateLimitWaitMs(hintMs, tries.rate++));
  };

  const send = async (entry: ImportEntry): Promise<void> => {
    const put = options.put!;
    const tries = { unavailable: 0, rate: 0 };
    try {
      for (;;) {
        const wait = pauseUntil - Date.now();
        if (wait > 0) await sleep(wait);
        try {
          await put(entry.name, entry.value, putOptions(entry));
          summary.imported++;
          if (window < options.concurrency) window++;
          return;
        } catch (error) {
          const code = error instanceof ClientError ? error.code : null;
          const message = error instanceof Error ? error.message : String(error);
          const retryMs = retryWaitMs(error, tries, () => (window = Math.max(1, Math.floor(window / 2))));
          if (retryMs !== null) {
            summary.retries++;
            await sleep(retryMs);
            continue;
          }
          // Unavailable through every retry: the import stops sending (a dropped put is only reported).
          if (code === grpcStatus.UNAVAILABLE || code === grpcStatus.DEADLINE_EXCEEDED) unavailable ??= message;
          // With --if-absent every put is cas 0: a compare-and-set refusal means the name exists.
          if (
            code === grpcStatus.FAILED_PRECONDITION &&
            options.ifAbsent === true &&
            ((error as ClientError).reason === 'CAS_MISMATCH' || (error as ClientError).reason === '')
          ) {
            summary.existing++;
            return;
          }
          fail({
            line: entry.line,
            name: entry.name,
            kind: 'refused',
            code: code === null ? null : (grpcStatus[code] ?? String(code)),
            reason: message,
          });
          return;
        }
      }
    } finally {
      entry.value.fill(0);
      advance(entry.lines);
    }
  };

  /**
   * The lines of a refused batch, one put each (each with its own retries and report); lines of
   * one name one after the other in file order, at most `window` puts in flight.
   */
  const sendOneByOne = async (entries: readonly ImportEntry[]): Promise<void> => {
    const chains = new Map<string, ImportEntry[]>();
    for (const entry of entries) {
      const chain = chains.get(entry.name);
      if (chain === undefined) chains.set(entry.name, [entry]);
      else chain.push(entry);
    }
    const queue = [...chains.values()];
    const worker = async (): Promise<void> => {
      for (let chain = queue.shift(); chain !== undefined; chain = queue.shift())
        for (const entry of chain) await send(entry);
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(window, queue.length)) }, worker));
  };

  const batchItemsMax = options.batchItemsMax ?? PUT_BATCH_ITEMS_MAX;
  if (!(Number.isSafeInteger(batchItemsMax) && batchItemsMax >= 1 && batchItemsMax <= PUT_BATCH_ITEMS_MAX))
    throw new TypeError(`batchItemsMax is 1 to ${PUT_BATCH_ITEMS_MAX}`);
  const batchesInFlight = options.batchesInFlight ?? IMPORT_BATCHES_IN_FLIGHT_DEFAULT;
  /** Whether lines go in batches: a cluster that does not know PutBatch (UNIMPLEMENTED) turns it off. */
  let batching = options.putBatch !== undefined && batchItemsMax > 1;
  /** Batches let in flight: as `window` for puts, halved by a rate-limit refusal, grown back by one per batch applied. */
  let batchWindow = batchesInFlight;

  /**
   * One batch: sent, and retried as a put is (rate limits, UNAVAILABLE, ABORTED). Refused for any
   * other reason (an item's name, rights, cas, a quota; a batch too large), its lines are sent
   * again one by one so the good ones go in and each bad one is reported with the cluster's
   * message. Every value is wiped once its line is answered.
   */
  const sendBatch = async (entries: readonly ImportEntry[]): Promise<void> => {
    const tries = { unavailable: 0, rate: 0 };
    const finish = (): void => {
      for (const entry of entries) {
        entry.value.fill(0);
        advance(entry.lines);
      }
    };
    for (;;) {
      const wait = pauseUntil - Date.now();
      if (wait > 0) await sleep(wait);
      try {
        await options.putBatch!(
          entries.map((entry) => ({ name: entry.name, value: entry.value, ...putOptions(entry) })),
        );
        summary.imported += entries.length;
        summary.batches++;
        if (batchWindow < batchesInFlight) batchWindow++;
        finish();
        return;
      } catch (error) {
        const code = error instanceof ClientError ? error.code : null;
        const message = error instanceof Error ? error.message : String(error);
        const retryMs = retryWaitMs(error, tries, () => (batchWindow = Math.max(1, Math.floor(batchWindow / 2))));
        if (retryMs !== null) {
          summary.retries++;
          await sleep(retryMs);
          continue;
        }
        if (code === grpcStatus.UNAVAILABLE || code === grpcStatus.DEADLINE_EXCEEDED) {
          // The cluster stayed unavailable: the import stops, and this batch's lines are reported as a put's would be.
          unavailable ??= message;
          for (const entry of entries)
            fail({
              line: entry.line,
              name: entry.name,
              kind: 'refused',
              code: grpcStatus[code] ?? null,
              reason: message,
            });
          finish();
          return;
        }
        // An older cluster: every batch from now on goes line by line.
        if (code === grpcStatus.UNIMPLEMENTED) batching = false;
        // Refused for one item (or dropped by leader changes every time): line by line, so good lines
        // are never lost; each put has its own retries and its own report.
        summary.batchesSplit++;
        await sendOneByOne(entries);
        return;
      }
    }
  };

  const inFlight = new Set<Promise<void>>();
  /** The last put or batch in flight holding each name: the next line of that name waits for it. */
  const lastOfName = new Map<string, Promise<void>>();
  /** Lines gathered for the next batch, and their bytes of names and values. */
  let pending: ImportEntry[] = [];
  let pendingBytes = 0;

  /** Starts `task` once the put or batch before it of each of `names` is answered, within the window. */
  const start = (names: readonly string[], task: () => Promise<void>): void => {
    const before = [...new Set(names)].flatMap((name) => {
      const last = lastOfName.get(name);
      return last === undefined ? [] : [last];
    });
    const running: Promise<void> = (before.length === 0 ? task() : Promise.all(before).then(task)).finally(() => {
      inFlight.delete(running);
      for (const name of names) if (lastOfName.get(name) === running) lastOfName.delete(name);
    });
    inFlight.add(running);
    for (const name of names) lastOfName.set(name, running);
  };

  /** Waits for room in the window; false if the import stopped (the cluster stayed unavailable). */
  const room = async (limit: () => number): Promise<boolean> => {
    while (inFlight.size >= limit() && unavailable === null) await Promise.race(inFlight);
    return unavailable === null;
  };

  /** Sends the gathered lines as a batch (or, with batching off, one by one). False if the import stopped. */
  const flush = async (): Promise<boolean> => {
    if (pending.length === 0) return unavailable === null;
    const entries = pending;
    pending = [];
    pendingBytes = 0;
    if (!(await room(() => batchWindow))) {
      summary.stoppedAtLine = entries[0]!.line;
      for (const entry of entries) entry.value.fill(0);
      return false;
    }
    // Batching may have been turned off (UNIMPLEMENTED) while these waited: then line by line.
    start(
      entries.map((entry) => entry.name),
      () => (batching ? sendBatch(entries) : sendOneByOne(entries)),
    );
    return true;
  };

  for await (const item of parsed) {
    summary.lines = Math.max(summary.lines, item.line + item.lines - 1);
    if ('skipped' in item) {
      advance(item.lines);
      continue;
    }
    if (isBad(item)) {
      fail({ line: item.line, name: item.name, kind: 'bad', code: null, reason: item.reason });
      advance(item.lines);
      continue;
    }
    summary.valid++;
    if (options.dryRun === true) {
      item.value.fill(0);
      advance(item.lines);
      continue;
    }
    if (batching) {
      const bytes = putBatchItemBytes(item.name, item.value);
      if (pending.length >= batchItemsMax || pendingBytes + bytes > PUT_BATCH_BYTES_MAX) {
        if (!(await flush())) {
          item.value.fill(0);
          break;
        }
      }
      pending.push(item);
      pendingBytes += bytes;
      continue;
    }
    if (!(await room(() => window))) {
      item.value.fill(0);
      summary.stoppedAtLine = item.line;
      break;
    }
    start([item.name], () => send(item));
  }
  if (pending.length > 0 && unavailable === null) await flush();
  else if (pending.length > 0) {
    summary.stoppedAtLine ??= pending[0]!.line;
    for (const entry of pending) entry.value.fill(0);
  }
  await Promise.all(inFlight);
  // Answers come in any order; the list reads in file order.
  summary.failures.sort((a, b) => a.line - b.line);
  return summary;
}
