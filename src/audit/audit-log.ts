import { createHash } from 'node:crypto';
import { mkdir, open, readFile, rename, truncate } from 'node:fs/promises';
import { join } from 'node:path';

/** One audited request. No secret values: names, identities, outcomes only. */
export interface AuditEvent {
  readonly identity: string;
  readonly role: string;
  readonly method: string;
  /** The secret name or sys/ path the request was about ('' when none). */
  readonly target: string;
  readonly outcome: 'allowed' | 'denied' | 'failed';
  /** The gRPC status name of the reply. */
  readonly code: string;
}

export interface AuditRecord extends AuditEvent {
  readonly seq: number;
  readonly time: string;
  readonly node: number;
  /** Hash of the previous record (64 zeros for the first). */
  readonly prev: string;
  /** SHA-256 over `prev` and this record's other fields, in a fixed order. */
  readonly hash: string;
}

export const AUDIT_FILE = 'audit.log';
export const AUDIT_HEAD_FILE = 'audit.head';
const GENESIS = '0'.repeat(64);
/** The head is rewritten at most this often (it may lag the log by as much). */
export const HEAD_INTERVAL_MS = 100;

export class AuditError extends Error {
  override name = 'AuditError';
  readonly code = 'AUDIT_UNAVAILABLE';
}

function recordHash(r: Omit<AuditRecord, 'hash'>): string {
  const fields = [r.seq, r.time, r.node, r.identity, r.role, r.method, r.target, r.outcome, r.code];
  return createHash('sha256').update(r.prev).update(JSON.stringify(fields)).digest('hex');
}

/**
 * A manager's audit log: JSON lines, each hash-chained to the one before, appended and fsynced
 * in batches (group commit) before the requests they describe are answered. If a batch cannot
 * be written, its requests fail and the log refuses further requests until it can write again
 * (fail closed). `audit.head` holds the last sequence number and hash, so a truncated log is
 * told apart from a short one (a cut within the last HEAD_INTERVAL_MS of records goes unseen).
 */
export class AuditLog {
  readonly dir: string;
  readonly #node: number;
  #seq: number;
  #prev: string;
  #pending: Array<{ line: string; record: AuditRecord; done: (error: Error | null) => void }> = [];
  #flushing = false;
  #broken: Error | null = null;
  /** The last record known durable: where the chain resumes after a failed batch. */
  #durable: { seq: number; hash: string };
  /** The log's length up to that record: a failed batch is cut back to it. */
  #durableBytes = 0;
  /** The head: the sequence number it holds, when it was last written, and a write under way. */
  #headSeq = -1;
  #headWrittenMs = -Infinity;
  #headWriting: Promise<void> | null = null;
  #headTimer: NodeJS.Timeout | null = null;
  /** The last head write failed (cleared only by a head write that works). */
  #headBroken: Error | null = null;
  failures = 0;

  private constructor(dir: string, node: number, seq: number, prev: string) {
    this.dir = dir;
    this.#node = node;
    this.#seq = seq;
    this.#prev = prev;
    this.#durable = { seq, hash: prev };
  }

  /**
   * Opens (or starts) a log. The chain resumes from the last complete record in the file (the
   * head may be up to HEAD_INTERVAL_MS behind after a crash); a partial last line, left
   * by a crash mid-write, is cut off. Complete records are never removed, tampered or not.
   */
  static async open(dir: string, node: number): Promise<AuditLog> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const path = join(dir, AUDIT_FILE);
    const text = await readFile(path, 'utf8').catch(() => '');
    const complete = text.endsWith('\n') || text === '' ? text : text.slice(0, text.lastIndexOf('\n') + 1);
    if (complete.length !== text.length) await truncate(path, Buffer.byteLength(complete));
    const lines = complete.split('\n').filter((l) => l !== '');
    let seq = 0;
    let prev = GENESIS;
    const last = lines[lines.length - 1];
    if (last !== undefined) {
      const record = JSON.parse(last) as AuditRecord;
      seq = record.seq;
      prev = record.hash;
    } else {
      const head = await readHead(dir).catch(() => null);
      seq = head?.seq ?? 0;
      prev = head?.hash ?? GENESIS;
    }
    const log = new AuditLog(dir, node, seq, prev);
    log.#durableBytes = Buffer.byteLength(complete);
    return log;
  }

  /** Resolves once every record appended so far is written, and the head once tried (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.#flushing || this.#pending.length > 0) await new Promise((resolve) => setTimeout(resolve, 1));
    if (this.#headWriting !== null) await this.#headWriting;
    if (this.#headTimer !== null) {
      clearTimeout(this.#headTimer);
      this.#headTimer = null;
      this.#writeHead();
    }
    if (this.#headWriting !== null) await this.#headWriting;
  }

  /**
   * The head follows the log off the requests' path, and at most every HEAD_INTERVAL_MS (each
   * write is a synced file and a rename: once per batch it cost as much as the log itself). It
   * may lag the log by that much; open() resumes from the log. If it cannot be written, requests
   * are refused (a log batch that succeeds meanwhile does not lift that) and it is tried again
   * every HEAD_INTERVAL_MS until it can.
   */
  #headDue(): void {
    if (this.#headTimer !== null || this.#headWriting !== null) return;
    const waitMs = Math.max(0, this.#headWrittenMs + HEAD_INTERVAL_MS - performance.now());
    this.#headTimer = setTimeout(() => {
      this.#headTimer = null;
      this.#writeHead();
    }, waitMs);
    // It never holds the process open: shutdown writes the head through settled().
    this.#headTimer.unref();
  }

  #writeHead(): void {
    const { seq, hash } = this.#durable;
    if (seq === this.#headSeq) return;
    this.#headWrittenMs = performance.now();
    this.#headWriting = writeHead(this.dir, seq, hash)
      .then(() => {
        this.#headSeq = seq;
        this.#headBroken = null;
      })
      .catch((error: unknown) => {
        this.#headBroken = error as Error;
      })
      .finally(() => {
        this.#headWriting = null;
        if (this.#durable.seq !== this.#headSeq) this.#headDue();
      });
  }

  /** Whether the last write of the log, or of its head, failed (requests are refused until one succeeds). */
  get broken(): Error | null {
    return this.#broken ?? this.#headBroken;
  }

  /** Appends a record; resolves once it is durable; rejects with AuditError if it cannot be. */
  append(event: AuditEvent): Promise<AuditRecord> {
    const base = { ...event, seq: ++this.#seq, time: new Date().toISOString(), node: this.#node, prev: this.#prev };
    const record: AuditRecord = { ...base, hash: recordHash(base) };
    this.#prev = record.hash;
    return new Promise((resolve, reject) => {
      this.#pending.push({ line: `${JSON.stringify(record)}\n`, record, done: (error) => (error === null ? resolve(record) : reject(error)) });
      void this.#flush();
    });
  }

  async #flush(): Promise<void> {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      while (this.#pending.length > 0) {
        const batch = this.#pending;
        this.#pending = [];
        const text = batch.map((b) => b.line).join('');
        try {
          const file = await open(join(this.dir, AUDIT_FILE), 'a', 0o600);
          try {
            await file.writeFile(text);
            await file.datasync();
          } finally {
            await file.close();
          }
          const last = batch[batch.length - 1]!.record;
          this.#durableBytes += Buffer.byteLength(text);
          this.#durable = { seq: last.seq, hash: last.hash };
          // The records are durable: their requests may be answered now; the head follows.
          this.#broken = null;
          for (const item of batch) item.done(null);
          this.#headDue();
        } catch (error) {
          this.failures += batch.length;
          this.#broken = error as Error;
          // The chain continues from the last durable record; a partly written batch is cut off.
          await truncate(join(this.dir, AUDIT_FILE), this.#durableBytes).catch(() => undefined);
          this.#seq = this.#durable.seq;
          this.#prev = this.#durable.hash;
          for (const item of [...batch, ...this.#pending]) item.done(new AuditError(`the audit log in ${this.dir} cannot be written (${(error as NodeJS.ErrnoException).code ?? 'error'}); the request was refused`));
          this.#pending = [];
        }
      }
    } finally {
      this.#flushing = false;
    }
  }

  /** The last `count` records. */
  async tail(count: number): Promise<AuditRecord[]> {
    const text = await readFile(join(this.dir, AUDIT_FILE), 'utf8').catch(() => '');
    return text.split('\n').filter((l) => l !== '').slice(-count).map((l) => JSON.parse(l) as AuditRecord);
  }
}

async function readHead(dir: string): Promise<{ seq: number; hash: string } | null> {
  try {
    const head = JSON.parse(await readFile(join(dir, AUDIT_HEAD_FILE), 'utf8')) as { seq: number; hash: string };
    return head;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}

/** Replaces the head atomically (a crash leaves the old head or the new one, never an empty file). */
async function writeHead(dir: string, seq: number, hash: string): Promise<void> {
  const temporary = join(dir, `${AUDIT_HEAD_FILE}.tmp`);
  const file = await open(temporary, 'w', 0o600);
  try {
    await file.writeFile(JSON.stringify({ seq, hash }));
    await file.datasync();
  } finally {
    await file.close();
  }
  await rename(temporary, join(dir, AUDIT_HEAD_FILE));
}

export interface VerifyReport {
  readonly ok: boolean;
  readonly records: number;
  /** The first broken link: the line number (1-based) and what is wrong there. */
  readonly firstBroken: { readonly line: number; readonly problem: string } | null;
}

/**
 * Checks the chain of an audit log: each record's hash, its link to the one before, consecutive
 * sequence numbers; and, given the head, that nothing was cut off the end.
 */
export function verifyAuditLog(text: string, head: { seq: number; hash: string } | null): VerifyReport {
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  let prev = GENESIS;
  let seq = 0;
  for (const [k, line] of lines.entries()) {
    const broken = (problem: string): VerifyReport => ({ ok: false, records: k, firstBroken: { line: k + 1, problem } });
    let record: AuditRecord;
    try {
      record = JSON.parse(line) as AuditRecord;
    } catch {
      return broken('not a JSON record');
    }
    if (record.prev !== prev) return broken(`it does not follow the record before it (a record was removed, inserted or reordered)`);
    if (record.seq !== seq + 1) return broken(`sequence number ${record.seq} after ${seq}`);
    const { hash, ...rest } = record;
    if (recordHash(rest) !== hash) return broken('its contents were altered (the hash does not match)');
    prev = hash;
    seq = record.seq;
  }
  // The head is written after the log, so it may lag; a log shorter than it was cut.
  if (head !== null && head.seq > seq) {
    return { ok: false, records: lines.length, firstBroken: { line: lines.length + 1, problem: `the log ends at record ${seq}, but the head says ${head.seq}: it was truncated` } };
  }
  return { ok: true, records: lines.length, firstBroken: null };
}

/** Verifies the log in a directory, with its head. */
export async function verifyAuditDir(dir: string): Promise<VerifyReport> {
  const text = await readFile(join(dir, AUDIT_FILE), 'utf8').catch(() => '');
  return verifyAuditLog(text, await readHead(dir));
}
