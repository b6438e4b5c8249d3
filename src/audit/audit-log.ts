import { createHmac, timingSafeEqual } from 'node:crypto';
import { type Stats, constants, statSync } from 'node:fs';
import { type FileHandle, mkdir, open, readFile, rename, truncate } from 'node:fs/promises';
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
  /** The hash of the previous record (for the first: a value of the audit key and the node, see genesisHash). */
  readonly prev: string;
  /**
   * HMAC-SHA256 under the manager's audit key of `prev` (64 hex characters) followed by the
   * exact bytes of this record's line without its hash: the JSON of every other field. It is
   * the line's last field, so the line is `{...the fields...,"hash":"<64 hex>"}`.
   */
  readonly hash: string;
}

/**
 * A point of a manager's chain known from outside it (the cluster replicates each manager's
 * latest `anchor` through the Raft log): the log must reach record `seq`, and that record must
 * have this hash. What catches an older head copied back over a log cut down to it.
 */
export interface AuditAnchor {
  readonly seq: number;
  readonly hash: string;
}

export const AUDIT_FILE = 'audit.log';
export const AUDIT_HEAD_FILE = 'audit.head';
/** The audit key: 32 random bytes per manager, kept sealed in its key store. */
export const AUDIT_KEY_BYTES = 32;
/** The head is rewritten at most this often (it may lag the log by as much). */
export const HEAD_INTERVAL_MS = 100;

export class AuditError extends Error {
  override name = 'AuditError';
  readonly code = 'AUDIT_UNAVAILABLE';
}

function hmac(key: Uint8Array, ...parts: string[]): string {
  const h = createHmac('sha256', key);
  for (const part of parts) h.update(part, 'utf8');
  return h.digest('hex');
}

/** What the first record follows: bound to the key and the node, so no other chain starts the same way. */
export function genesisHash(key: Uint8Array, node: number): string {
  return hmac(key, `audit-genesis\n${node}`);
}

function recordHash(key: Uint8Array, prev: string, body: string): string {
  return hmac(key, prev, body);
}

function headMac(key: Uint8Array, body: string): string {
  return hmac(key, 'audit-head\n', body);
}

const HEX64 = /^[0-9a-f]{64}$/;

function sameHex(a: string, b: string): boolean {
  return a.length === b.length && timingSafeEqual(Buffer.from(a, 'latin1'), Buffer.from(b, 'latin1'));
}

/** `body` (a JSON object) with `"field":"hex"` appended as its last field. */
function withLast(body: string, field: string, hex: string): string {
  return `${body.slice(0, -1)},"${field}":"${hex}"}`;
}

/** The inverse of withLast: the exact body bytes and the hex, or null if the line does not end that way. */
function splitLast(line: string, field: string): { body: string; hex: string } | null {
  const tail = `,"${field}":"`;
  const end = line.length - 66; // 64 hex characters, then `"}`
  if (end - tail.length < 1 || !line.endsWith('"}') || line[0] !== '{') return null;
  const hex = line.slice(end, end + 64);
  if (!HEX64.test(hex) || line.slice(end - tail.length, end) !== tail) return null;
  return { body: `${line.slice(0, end - tail.length)}}`, hex };
}

/** The line of a record: its JSON without the hash, then the hash over exactly those bytes. */
function recordLine(key: Uint8Array, base: Omit<AuditRecord, 'hash'>): { line: string; hash: string } {
  const body = JSON.stringify({
    seq: base.seq,
    time: base.time,
    node: base.node,
    identity: base.identity,
    role: base.role,
    method: base.method,
    target: base.target,
    outcome: base.outcome,
    code: base.code,
    prev: base.prev,
  });
  const hash = recordHash(key, base.prev, body);
  return { line: withLast(body, 'hash', hash), hash };
}

interface Head {
  readonly seq: number;
  readonly hash: string;
  readonly node: number;
  /**
   * The log's length in bytes through record `seq` (its line's newline included): where a start
   * resumes checking the chain. Null in a head written before it was kept (the whole log is then
   * checked once, and the next head carries it).
   */
  readonly bytes: number | null;
}

/** The head's text: `{"seq":N,"hash":"<hex>","node":N,"bytes":N,"mac":"<hex>"}`, the MAC over the bytes before it. */
function headText(key: Uint8Array, head: Head & { readonly bytes: number }): string {
  const body = JSON.stringify({ seq: head.seq, hash: head.hash, node: head.node, bytes: head.bytes });
  return withLast(body, 'mac', headMac(key, body));
}

/** The head, if its MAC is this key's; otherwise what is wrong with it. */
function openHead(text: string, key: Uint8Array): Head | string {
  const split = splitLast(text, 'mac');
  if (split === null)
    return `${AUDIT_HEAD_FILE} is not a keyed head (its last field is not a MAC): it was rewritten or replaced`;
  if (!sameHex(headMac(key, split.body), split.hex))
    return `${AUDIT_HEAD_FILE} does not carry this manager's MAC: it was rewritten or forged (or the key given is not this manager's)`;
  let head: unknown;
  try {
    head = JSON.parse(split.body);
  } catch {
    return `${AUDIT_HEAD_FILE} is not JSON`;
  }
  const h = head as Partial<Head>;
  if (
    !Number.isSafeInteger(h.seq) ||
    h.seq! < 0 ||
    typeof h.hash !== 'string' ||
    !HEX64.test(h.hash) ||
    !Number.isSafeInteger(h.node) ||
    (h.bytes !== undefined && (!Number.isSafeInteger(h.bytes) || h.bytes! < 0))
  )
    return `${AUDIT_HEAD_FILE} has a field missing or of the wrong type`;
  return { seq: h.seq!, hash: h.hash, node: h.node!, bytes: h.bytes ?? null };
}

function isRecord(value: unknown): value is AuditRecord {
  const r = value as Record<string, unknown> | null;
  return (
    typeof r === 'object' &&
    r !== null &&
    Number.isSafeInteger(r['seq']) &&
    Number.isSafeInteger(r['node']) &&
    ['time', 'identity', 'role', 'method', 'target', 'outcome', 'code', 'prev', 'hash'].every(
      (k) => typeof r[k] === 'string',
    )
  );
}

const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A file's text, or null if it is missing. Strict UTF-8: a lenient decoding would map different
 * bytes to the same text, and the hashes must cover exactly what is on disk.
 */
async function readOrNull(path: string): Promise<string | null> {
  let bytes: Buffer;
  try {
    bytes = await readFile(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
  try {
    return UTF8.decode(bytes);
  } catch {
    throw new AuditError(`${path} is not UTF-8 text: it was altered`);
  }
}

/** Flags of the log's file: appended to, made if missing, every write durable before it returns. */
const APPEND_DURABLY = constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_DSYNC;

/** Which file a stat is of: its device and inode. */
const fileId = (stats: Stats): string => `${stats.dev}:${stats.ino}`;

/** Writes all of `bytes` at the end of a file opened for appending. */
async function writeAll(handle: FileHandle, bytes: Buffer): Promise<void> {
  for (let at = 0; at < bytes.length; ) at += (await handle.write(bytes, at, bytes.length - at)).bytesWritten;
}

/** Syncs a directory, so the files just made or renamed in it are durable. */
async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * A manager's audit log: JSON lines, each chained to the one before by an HMAC under the
 * manager's audit key, appended and fsynced in batches (group commit) before the requests they
 * describe are answered. If a batch cannot be written, its requests fail and the log refuses
 * further requests until it can write again (fail closed). `audit.head` holds the last sequence
 * number and hash under its own MAC, so a truncated log is told apart from a short one (a cut
 * within the last HEAD_INTERVAL_MS of records goes unseen, as does an older head put back over
 * a log cut down to it: an anchor kept outside the manager catches those).
 *
 * The log and its head are made together, so once a manager has an audit key a missing file is
 * tampering: `open` refuses it, as it refuses any log that does not verify (appending to it would
 * write a new head over the damage). Complete records are never removed, tampered or not.
 */
export class AuditLog {
  readonly dir: string;
  readonly #node: number;
  readonly #key: Buffer;
  #seq: number;
  #prev: string;
  #pending: PendingRecord[] = [];
  #flushing = false;
  #broken: Error | null = null;
  /** A failed batch could not be cut off the log: it must be, before anything more is appended. */
  #cutPending = false;
  /** The last record known durable: where the chain resumes after a failed batch. */
  #durable: { seq: number; hash: string };
  /** The log's length up to that record: a failed batch is cut back to it. */
  #durableBytes = 0;
  /**
   * The log, open for appending between batches (opening and closing it per batch cost about as
   * much as the write), and which file that is (device and inode): every batch checks that the
   * log's path still names it, so records never go on into a file moved away or removed.
   */
  #file: { readonly handle: FileHandle; readonly id: string } | null = null;
  /** The head: the sequence number it holds, when it was last written, and a write under way. */
  #headSeq = -1;
  #headWrittenMs = -Infinity;
  #headWriting: Promise<void> | null = null;
  #headTimer: NodeJS.Timeout | null = null;
  /** The last head write failed (cleared only by a head write that works). */
  #headBroken: Error | null = null;
  failures = 0;
  /** Writes made to the log (each durable on return; at most AUDIT_LINE_BYTES_MAX bytes each). */
  writes = 0;
  /** Files an `open` with `newLog` moved aside (their new names), for the manager to log. */
  readonly archived: readonly string[];

  private constructor(
    dir: string,
    node: number,
    key: Uint8Array,
    seq: number,
    prev: string,
    archived: readonly string[],
  ) {
    this.dir = dir;
    this.#node = node;
    this.#key = Buffer.from(key);
    this.#seq = seq;
    this.#prev = prev;
    this.#durable = { seq, hash: prev };
    this.archived = archived;
  }

  /**
   * Opens a manager's log with its audit key. It must verify, head and all (a missing log or head
   * is an AuditError, as is any broken record): the chain resumes from its last record (the head
   * may be up to HEAD_INTERVAL_MS behind after a crash), and a partial last line, left by a crash
   * mid-write, is cut off.
   *
   * With `newLog` (a manager's first start, when its audit key was just made; or an operator's
   * choice after a log was lost) whatever is in `dir` is moved aside, not removed, and a new log
   * and its head (record 0, the genesis hash) are made before this resolves.
   */
  static async open(dir: string, node: number, key: Uint8Array, options: { newLog?: boolean } = {}): Promise<AuditLog> {
    if (key.byteLength !== AUDIT_KEY_BYTES) throw new TypeError(`an audit key is ${AUDIT_KEY_BYTES} bytes`);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const path = join(dir, AUDIT_FILE);
    if (options.newLog === true) {
      const archived: string[] = [];
      const stamp = new Date().toISOString().replace(/[:.]/g, '-');
      for (const name of [AUDIT_FILE, AUDIT_HEAD_FILE]) {
        const aside = `${name}.${stamp}.old`;
        try {
          await rename(join(dir, name), join(dir, aside));
          archived.push(aside);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
        }
      }
      const file = await open(path, 'wx', 0o600);
      try {
        await file.datasync();
      } finally {
        await file.close();
      }
      const genesis = genesisHash(key, node);
      await writeHead(dir, key, { seq: 0, hash: genesis, node, bytes: 0 });
      await syncDir(dir);
      const log = new AuditLog(dir, node, key, 0, genesis, archived);
      log.#headSeq = 0;
      return log;
    }
    const report = await checkLog(dir, key, { fromHead: true });
    // A last line cut short by a crash is cut off; anything else wrong stops the start.
    if (!report.ok && !report.onlyTorn) {
      const where = report.firstBroken!.line === 0 ? '' : `at line ${report.firstBroken!.line}: `;
      throw new AuditError(
        `the audit log in ${dir} does not verify (${where}${report.firstBroken!.problem}); this manager will not add to it. Keep it as evidence; restore it from a copy, or start a new log beside it (coffer server --new-audit-log)`,
      );
    }
    if (report.onlyTorn) await truncate(path, report.completeBytes);
    const log = new AuditLog(dir, node, key, report.last.seq, report.last.hash, []);
    log.#durableBytes = report.completeBytes;
    log.#headSeq = report.headSeq;
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

  /** Settles, then closes the log's file (a manager's shutdown). Appends after this open it again. */
  async close(): Promise<void> {
    await this.settled();
    const file = this.#file;
    this.#file = null;
    await file?.handle.close();
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
    // The log's length through the durable record: moved with it, after each batch's write.
    const bytes = this.#durableBytes;
    this.#headWriting = writeHead(this.dir, this.#key, { seq, hash, node: this.#node, bytes })
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

  /**
   * The last durable record: what the cluster should replicate (every few seconds) as this
   * manager's anchor, and give back to `verify`. It is on disk (synced) when this returns it.
   */
  get anchor(): AuditAnchor {
    return { seq: this.#durable.seq, hash: this.#durable.hash };
  }

  /** Appends a record; resolves once it is durable; rejects with AuditError if it cannot be. */
  append(event: AuditEvent): Promise<AuditRecord> {
    const base = { ...event, seq: ++this.#seq, time: new Date().toISOString(), node: this.#node, prev: this.#prev };
    const { line, hash } = recordLine(this.#key, base);
    const record: AuditRecord = { ...base, hash };
    this.#prev = hash;
    return new Promise((resolve, reject) => {
      this.#pending.push({
        line: `${line}\n`,
        record,
        done: (error) => (error === null ? resolve(record) : reject(error)),
      });
      void this.#flush();
    });
  }

  /** The log's file, opened for appending if it is not open. */
  async #openFile(): Promise<{ readonly handle: FileHandle; readonly id: string }> {
    if (this.#file !== null) return this.#file;
    // O_DSYNC: a write returns once its bytes are durable, one trip to the thread pool per batch
    // where a write and then a datasync took two, each waiting its turn on a busy event loop.
    const handle = await open(join(this.dir, AUDIT_FILE), APPEND_DURABLY, 0o600);
    try {
      this.#file = { handle, id: fileId(await handle.stat()) };
      return this.#file;
    } catch (error) {
      await handle.close().catch(() => {});
      throw error;
    }
  }

  /**
   * The pending records to write next, oldest first: as many as fit in AUDIT_LINE_BYTES_MAX
   * bytes (at least one). A crash tears at most the write under way, so what it leaves without a
   * line end (part of a record, or blocks a file system filled with zeros) stays within the bound
   * a check and a start allow for a torn last line.
   */
  #nextBatch(): PendingRecord[] {
    let bytes = 0;
    let count = 0;
    while (count < this.#pending.length) {
      const lineBytes = Buffer.byteLength(this.#pending[count]!.line);
      if (count > 0 && bytes + lineBytes > AUDIT_LINE_BYTES_MAX) break;
      bytes += lineBytes;
      count++;
    }
    return this.#pending.splice(0, count);
  }

  async #flush(): Promise<void> {
    if (this.#flushing) return;
    this.#flushing = true;
    try {
      while (this.#pending.length > 0) {
        const batch = this.#nextBatch();
        const text = batch.map((b) => b.line).join('');
        try {
          // What a failed batch left must go first: records appended after it would follow a broken line.
          if (this.#cutPending) {
            await truncate(join(this.dir, AUDIT_FILE), this.#durableBytes);
            this.#cutPending = false;
          }
          const file = await this.#openFile();
          // Durable when written (the file is open with O_DSYNC).
          await writeAll(file.handle, Buffer.from(text, 'utf8'));
          // A batch written to a file the path no longer names (moved, removed, replaced) fails,
          // and the next batch opens what the path names. A synchronous stat: a lookup of a name
          // the kernel has cached, about 2 us, where the promise's round trip cost about 10.
          const named = statSync(join(this.dir, AUDIT_FILE), { throwIfNoEntry: false });
          if (named === undefined || fileId(named) !== file.id)
            throw Object.assign(new Error(`${AUDIT_FILE} was moved, removed or replaced while open`), {
              code: named === undefined ? 'ENOENT' : 'EMOVED',
            });
          this.writes++;
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
          // The chain continues from the last durable record; a partly written batch is cut off
          // the file it went to, which is then closed (the next batch opens what the path names).
          const file = this.#file;
          this.#file = null;
          const cut =
            file === null
              ? truncate(join(this.dir, AUDIT_FILE), this.#durableBytes)
              : file.handle.truncate(this.#durableBytes);
          await cut.then(
            () => (this.#cutPending = false),
            () => (this.#cutPending = true),
          );
          await file?.handle.close().catch(() => {});
          this.#seq = this.#durable.seq;
          this.#prev = this.#durable.hash;
          for (const item of [...batch, ...this.#pending])
            item.done(
              new AuditError(
                `the audit log in ${this.dir} cannot be written (${(error as NodeJS.ErrnoException).code ?? 'error'}); the request was refused`,
              ),
            );
          this.#pending = [];
        }
      }
    } finally {
      this.#flushing = false;
    }
  }

  /** The last `count` records, read back from the log's end (what is read grows with `count`, not with the log). */
  async tail(count: number): Promise<AuditRecord[]> {
    let handle: FileHandle;
    try {
      handle = await open(join(this.dir, AUDIT_FILE), 'r');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    try {
      let position = (await handle.stat()).size;
      // Back a chunk at a time until the chunks hold `count` complete lines and the line end
      // before them; a run without a line end longer than a record can be stops the read.
      const chunks: Buffer[] = [];
      let newlines = 0;
      let runBytes = 0;
      while (position > 0 && newlines <= count) {
        const from = Math.max(0, position - TAIL_CHUNK_BYTES);
        const buffer = Buffer.allocUnsafe(position - from);
        const { bytesRead } = await handle.read(buffer, 0, buffer.length, from);
        // A file cut meanwhile (a failed batch taken off) reads short: only what was read counts.
        const chunk = buffer.subarray(0, bytesRead);
        chunks.push(chunk);
        position = from;
        const scan = scanBackward(chunk, runBytes);
        newlines += scan.newlines;
        runBytes = scan.leadingRunBytes;
        if (scan.longestRunBytes > AUDIT_LINE_BYTES_MAX)
          throw new AuditError(
            `${join(this.dir, AUDIT_FILE)} has more than ${AUDIT_LINE_BYTES_MAX} bytes without a line end between byte ${position} and its end, where a record is at most that long: it was altered`,
          );
      }
      const bytes = Buffer.concat(chunks.reverse());
      // A first line read only in part (its start is further back) is left out, and so is a last
      // line still being written, before decoding: it may end inside a character.
      const first = position === 0 ? 0 : bytes.indexOf(10) + 1;
      const end = bytes.lastIndexOf(10) + 1;
      if (end <= first) return [];
      let text: string;
      try {
        text = UTF8.decode(bytes.subarray(first, end));
      } catch {
        throw new AuditError(`${join(this.dir, AUDIT_FILE)} is not UTF-8 text: it was altered`);
      }
      return text
        .split('\n')
        .filter((l) => l !== '')
        .slice(-count)
        .map((l) => JSON.parse(l) as AuditRecord);
    } finally {
      await handle.close();
    }
  }

  /**
   * Verifies this log as it is on disk, with its head and key, and against the cluster's anchor
   * if given. The head is read before the log (so the log read holds every record the head
   * names), and a last line still being written is left out.
   */
  async verify(anchor: AuditAnchor | null = null): Promise<VerifyReport> {
    try {
      const report = await checkLog(this.dir, this.#key, { anchor });
      // A last line still being written is not a fault of the log.
      if (report.onlyTorn) return { ok: true, records: report.records, firstBroken: null };
      return reportOf(report);
    } catch (error) {
      if (error instanceof AuditError)
        return { ok: false, records: 0, firstBroken: { line: 0, problem: error.message } };
      throw error;
    }
  }
}

/**
 * The line ends in `chunk` (read backwards through a file) and its runs without one: the run
 * before its first line end, joined to `followingRunBytes` if it has none, and the longest run,
 * the one that continues past its end (`followingRunBytes`, read before) included.
 */
export function scanBackward(
  chunk: Uint8Array,
  followingRunBytes: number,
): { newlines: number; leadingRunBytes: number; longestRunBytes: number } {
  const bytes = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  let newlines = 0;
  let longestRunBytes = 0;
  let segmentEnd = bytes.length;
  let following = followingRunBytes;
  // A negative offset would count from the end: the search stops at the chunk's first byte.
  for (let at = bytes.lastIndexOf(10); at !== -1; at = at === 0 ? -1 : bytes.lastIndexOf(10, at - 1)) {
    newlines++;
    longestRunBytes = Math.max(longestRunBytes, segmentEnd - at - 1 + following);
    following = 0;
    segmentEnd = at;
  }
  const leadingRunBytes = segmentEnd + following;
  return { newlines, leadingRunBytes, longestRunBytes: Math.max(longestRunBytes, leadingRunBytes) };
}

/** Replaces the head atomically (a crash leaves the old head or the new one, never an empty file). */
async function writeHead(dir: string, key: Uint8Array, head: Head & { readonly bytes: number }): Promise<void> {
  const temporary = join(dir, `${AUDIT_HEAD_FILE}.tmp`);
  const file = await open(temporary, 'w', 0o600);
  try {
    await file.writeFile(headText(key, head));
    await file.datasync();
  } finally {
    await file.close();
  }
  await rename(temporary, join(dir, AUDIT_HEAD_FILE));
}

export interface VerifyReport {
  readonly ok: boolean;
  readonly records: number;
  /** The first broken link: the line number (1-based; 0 for a problem of a whole file) and what is wrong there. */
  readonly firstBroken: { readonly line: number; readonly problem: string } | null;
}

/** A check's report, without where a manager would resume. */
function reportOf(check: LogCheck): VerifyReport {
  return { ok: check.ok, records: check.records, firstBroken: check.firstBroken };
}

/** A record appended and not yet durable: its line, and who waits for it. */
interface PendingRecord {
  readonly line: string;
  readonly record: AuditRecord;
  readonly done: (error: Error | null) => void;
}

/** The log's end is read back this many bytes at a time for its last records. */
const TAIL_CHUNK_BYTES = 64 * 1024;

/** The log is read this many bytes at a time when it is checked: memory stays bounded whatever its size. */
const READ_CHUNK_BYTES = 1024 * 1024;

/**
 * The longest line a record can make, with a wide margin: its fields are bounded (a target of at
 * most 512 characters, JSON-escaped at most 6 bytes each; names, methods, times and two hashes of
 * 64 hex digits), so a record's line stays under 8 KiB. A longer run of bytes without a line end
 * is not a record, nor a record torn by a crash (at most one record's bytes): the log was altered.
 * Readers stop there instead of holding the run in memory (a file of a gigabyte without a line end
 * would otherwise be read whole, and a start would have cut it off as a torn last line).
 */
export const AUDIT_LINE_BYTES_MAX = 64 * 1024;

/**
 * The complete lines of an open log from byte `from` on, a chunk at a time: each line's bytes
 * without its newline (a view valid until the next line is asked for) and the offset just past
 * its newline. A last line without its newline is not yielded. A run of more than
 * AUDIT_LINE_BYTES_MAX bytes without a newline ends the lines with `tooLong` (its start's offset as `end`).
 */
async function* linesOf(
  handle: FileHandle,
  from: number,
): AsyncGenerator<{ bytes: Buffer; end: number; tooLong?: true }> {
  const chunk = Buffer.allocUnsafe(READ_CHUNK_BYTES);
  let carry = Buffer.alloc(0);
  let position = from;
  for (;;) {
    const { bytesRead } = await handle.read(chunk, 0, READ_CHUNK_BYTES, position);
    if (bytesRead === 0) return;
    const data =
      carry.length === 0 ? chunk.subarray(0, bytesRead) : Buffer.concat([carry, chunk.subarray(0, bytesRead)]);
    const dataStart = position - carry.length;
    position += bytesRead;
    let lineStart = 0;
    for (let newline = data.indexOf(10); newline !== -1; newline = data.indexOf(10, lineStart)) {
      yield { bytes: data.subarray(lineStart, newline), end: dataStart + newline + 1 };
      lineStart = newline + 1;
    }
    // The start of a line still being read is kept (copied: the chunk is read into again).
    carry = Buffer.from(data.subarray(lineStart));
    if (carry.length > AUDIT_LINE_BYTES_MAX) {
      yield { bytes: carry.subarray(0, 0), end: dataStart + lineStart, tooLong: true };
      return;
    }
  }
}

/** A point of the chain: a record's sequence number and hash (record 0: the genesis hash). */
interface ChainPoint {
  readonly seq: number;
  readonly hash: string;
}

/**
 * Checks records one line at a time, each against the chain so far: its bytes are UTF-8, it is a
 * record whose hash is last, it follows the record before it, its sequence number is the next,
 * it names this manager, and its hash covers its exact bytes under the key. Notes the hashes of
 * the records the head and the anchor name as they go by.
 */
class ChainCheck {
  readonly #key: Uint8Array;
  readonly #node: number;
  #last: ChainPoint;
  headHash: string | null = null;
  anchorHash: string | null = null;

  constructor(
    key: Uint8Array,
    node: number,
    from: ChainPoint,
    readonly headSeq: number,
    readonly anchor: AuditAnchor | null,
  ) {
    this.#key = key;
    this.#node = node;
    this.#last = from;
    this.#note();
  }

  get last(): ChainPoint {
    return this.#last;
  }

  /** What is wrong with the next line, or null once it has joined the chain. */
  next(bytes: Buffer): string | null {
    let line: string;
    try {
      line = UTF8.decode(bytes);
    } catch {
      return 'not UTF-8 text: it was altered';
    }
    const split = splitLast(line, 'hash');
    let record: unknown;
    try {
      record = JSON.parse(line);
    } catch {
      return 'not a JSON record';
    }
    if (split === null || !isRecord(record))
      return 'not an audit record (a field is missing or of the wrong type, or the hash is not the last field)';
    const { seq, hash: prev } = this.#last;
    if (record.prev !== prev)
      return `it does not follow the record before it (a record was removed, inserted or reordered)`;
    if (record.seq !== seq + 1) return `sequence number ${record.seq} after ${seq}`;
    if (record.node !== this.#node) return `it names manager ${record.node}, but this is manager ${this.#node}'s log`;
    if (!sameHex(recordHash(this.#key, prev, split.body), split.hex))
      return "its contents were altered (the hash does not match its bytes under this manager's key)";
    this.#last = { seq: record.seq, hash: split.hex };
    this.#note();
    return null;
  }

  #note(): void {
    if (this.#last.seq === this.headSeq) this.headHash = this.#last.hash;
    if (this.#last.seq === this.anchor?.seq) this.anchorHash = this.#last.hash;
  }
}

/** What checking a log found, and where a manager resumes it. */
interface LogCheck extends VerifyReport {
  /** The log's length through its last complete line (a last line being written is beyond it). */
  readonly completeBytes: number;
  /** The log's last complete record. */
  readonly last: ChainPoint;
  readonly headSeq: number;
  /**
   * The only thing wrong is a last line without its newline (a crash while it was written, or a
   * batch being written as the log was read): `verify` of a live log and a start take the log
   * without it; an offline check reports it.
   */
  readonly onlyTorn: boolean;
}

/**
 * Checks the audit log in `dir` with its head under the manager's audit key, reading it a chunk
 * at a time: the head's MAC; each record (ChainCheck); that the log reaches the head and holds
 * the record it names; and, given the cluster's anchor, that it reaches the anchor and holds that
 * record too. The head is read before the log, so the log read holds every record the head names.
 *
 * `fromHead` (a manager's start) checks only the records from the head's on: that the record
 * ending where the head says is the one it names, and every record after it (at most about
 * HEAD_INTERVAL_MS of them). A start then takes the same time whatever the log's length; the
 * records before the head were checked as they were written and are checked whole by `verify`
 * (`coffer audit verify`). A head from before it kept the log's length gets the whole check.
 */
async function checkLog(
  dir: string,
  key: Uint8Array,
  options: { anchor?: AuditAnchor | null; fromHead?: boolean } = {},
): Promise<LogCheck> {
  const anchor = options.anchor ?? null;
  const nothing = { completeBytes: 0, last: { seq: 0, hash: '' }, headSeq: 0, onlyTorn: false };
  const fail = (line: number, records: number, problem: string): LogCheck => ({
    ok: false,
    records,
    firstBroken: { line, problem },
    ...nothing,
  });
  const headFile = await readOrNull(join(dir, AUDIT_HEAD_FILE));
  let handle: FileHandle;
  try {
    handle = await open(join(dir, AUDIT_FILE), 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    return fail(
      0,
      0,
      `${AUDIT_FILE} is missing: a manager's log is made with its head and never removed, so it was deleted`,
    );
  }
  try {
    if (headFile === null)
      return fail(
        0,
        0,
        `${AUDIT_HEAD_FILE} is missing: a manager's head is made with its log and only ever replaced, so it was deleted`,
      );
    const head = openHead(headFile, key);
    if (typeof head === 'string') return fail(0, 0, head);
    const genesis = { seq: 0, hash: genesisHash(key, head.node) };
    let from = { point: genesis, offset: 0 };
    if (options.fromHead === true && head.bytes !== null && head.seq > 0) {
      const size = (await handle.stat()).size;
      if (size < head.bytes)
        return fail(
          head.seq,
          0,
          `the log is ${size} bytes long, but the head's record ${head.seq} ends at byte ${head.bytes}: it was truncated`,
        );
      const problem = await headRecordProblem(handle, { ...head, bytes: head.bytes }, key);
      if (problem !== null) return fail(head.seq, 0, problem);
      from = { point: { seq: head.seq, hash: head.hash }, offset: head.bytes };
    }
    const chain = new ChainCheck(key, head.node, from.point, head.seq, anchor);
    let completeBytes = from.offset;
    let records = 0;
    for await (const { bytes, end, tooLong } of linesOf(handle, from.offset)) {
      if (tooLong === true)
        return fail(
          from.point.seq + records + 1,
          records,
          `more than ${AUDIT_LINE_BYTES_MAX} bytes from byte ${end} on without a line end, where a record is at most that long: the log was altered`,
        );
      const problem = chain.next(bytes);
      // A line's number is its record's sequence number, in a log that holds together up to it.
      if (problem !== null) return fail(from.point.seq + records + 1, records, problem);
      records++;
      completeBytes = end;
    }
    const { seq } = chain.last;
    // A last line without its newline is reported once the complete records have passed every check.
    const torn = (await handle.stat()).size > completeBytes;
    // The head is written after the log, so it may lag; a log shorter than it was cut.
    if (head.seq > seq)
      return fail(seq + 1, records, `the log ends at record ${seq}, but the head says ${head.seq}: it was truncated`);
    if (chain.headHash === null || !sameHex(chain.headHash, head.hash))
      return fail(head.seq, records, `record ${head.seq} is not the one the head names: the log was replaced`);
    if (anchor !== null) {
      if (anchor.seq > seq)
        return fail(
          seq + 1,
          records,
          `the log ends at record ${seq}, but the cluster's anchor is record ${anchor.seq}: it was truncated (and any head that agrees with it is an older one put back)`,
        );
      if (chain.anchorHash === null || !sameHex(chain.anchorHash, anchor.hash))
        return fail(
          anchor.seq,
          records,
          `record ${anchor.seq} is not the one the cluster's anchor names: the log was replaced or rewritten`,
        );
    }
    const done = { completeBytes, last: chain.last, headSeq: head.seq };
    if (torn)
      return {
        ...fail(
          seq + 1,
          records,
          'an incomplete last line: a crash while it was written (the manager cuts it off when it starts), or bytes appended to the log',
        ),
        ...done,
        onlyTorn: true,
      };
    return { ok: true, records, firstBroken: null, ...done, onlyTorn: false };
  } finally {
    await handle.close();
  }
}

/**
 * What is wrong with the record a head names, as the log holds it: the line that ends at the
 * head's byte count must be record `seq`, with the head's hash, and that hash must cover its
 * bytes under the key (its `prev` among them, so the record before it is bound too).
 */
async function headRecordProblem(
  handle: FileHandle,
  head: Head & { readonly bytes: number },
  key: Uint8Array,
): Promise<string | null> {
  const where = `the record the head names (${head.seq}, ending at byte ${head.bytes})`;
  if (head.bytes < 1) return `${where}: no record ends there, so the head is not this log's`;
  // Read back from the head's byte count until the newline before the record's line (or the log's start).
  let start = head.bytes - 1;
  let tail = Buffer.alloc(0);
  for (;;) {
    const from = Math.max(0, start - READ_CHUNK_BYTES);
    const chunk = Buffer.allocUnsafe(start - from);
    if (chunk.length > 0) await handle.read(chunk, 0, chunk.length, from);
    tail = Buffer.concat([chunk, tail]);
    const newline = chunk.lastIndexOf(10);
    if (newline !== -1 || from === 0) {
      const line = tail.subarray(newline + 1);
      const last = Buffer.alloc(1);
      await handle.read(last, 0, 1, head.bytes - 1);
      if (last[0] !== 10) return `${where}: the log has no line end there, so it was rewritten`;
      let text: string;
      try {
        text = UTF8.decode(line);
      } catch {
        return `${where} is not UTF-8 text: it was altered`;
      }
      const split = splitLast(text, 'hash');
      let record: unknown;
      try {
        record = JSON.parse(text);
      } catch {
        return `${where} is not a JSON record: the log was rewritten`;
      }
      if (split === null || !isRecord(record) || record.seq !== head.seq || record.node !== head.node)
        return `${where} is not there: the log was rewritten`;
      if (!sameHex(split.hex, head.hash))
        return `record ${head.seq} is not the one the head names: the log was replaced`;
      if (!sameHex(recordHash(key, record.prev, split.body), split.hex))
        return `${where}: its contents were altered (the hash does not match its bytes under this manager's key)`;
      return null;
    }
    start = from;
  }
}

/** Verifies the log in a directory, with its head, under the manager's audit key (and the cluster's anchor). */
export async function verifyAuditDir(
  dir: string,
  key: Uint8Array,
  anchor: AuditAnchor | null = null,
): Promise<VerifyReport> {
  try {
    return reportOf(await checkLog(dir, key, { anchor }));
  } catch (error) {
    if (error instanceof AuditError) return { ok: false, records: 0, firstBroken: { line: 0, problem: error.message } };
    throw error;
  }
}
