import { randomBytes } from 'node:crypto';
import { packr } from '../codec/msgpack.ts';
import { KEY_BYTES, NONCE_BYTES, TAG_BYTES, open, seal } from './aead.ts';
import { CryptoError } from './errors.ts';
import { deriveIndexKey, deriveRecordsKey, type RecordKeys } from './record-seal.ts';

/**
 * Uses of one data key by one manager before the keyring must rotate. Nonces are random 96-bit
 * values (several managers encrypt under the same key at once, so a counter would need per-manager
 * prefixes and persisted state). NIST SP 800-38D bounds random-nonce GCM at 2^32 messages per key;
 * with at most 8 managers each stopping at 2^29, the cluster stays under that bound.
 */
export const KEY_USES_MAX = 2 ** 29;
const TERM_BYTES = 4;

interface KeyringTerm {
  readonly term: number;
  readonly key: Buffer;
  readonly createdAtMs: number;
  destroyed: boolean;
}

/**
 * Data encryption keys with term numbers. The newest term encrypts; older terms only decrypt,
 * until a rewrap moves their data and they are destroyed. Sealed data is
 * `term (4 bytes, BE) | nonce (12) | ciphertext | tag (16)`, with associated data that binds
 * the cluster id, the kind of data and the term, so no ciphertext can be replayed as another.
 */
export class Keyring implements RecordKeys {
  readonly clusterId: string;
  readonly #terms = new Map<number, KeyringTerm>();
  #activeTerm = 0;
  /** The name index key (src/crypto/record-seal.ts): derived from term 1 when it is added, kept after it is destroyed. */
  #indexKey: Buffer | null = null;
  /** Records keys derived so far, by term (dropped when the term is destroyed). */
  readonly #recordsKeys = new Map<number, Buffer>();
  /** Encryptions by this process under each term (not replicated; see KEY_USES_MAX). */
  readonly #uses = new Map<number, number>();

  private constructor(clusterId: string) {
    this.clusterId = clusterId;
  }

  static create(clusterId: string, nowMs: number): Keyring {
    const keyring = new Keyring(clusterId);
    keyring.addTerm(1, randomBytes(KEY_BYTES), nowMs);
    return keyring;
  }

  /** A keyring without terms: a new cluster's, until its first rotation is applied from the log. */
  static empty(clusterId: string): Keyring {
    return new Keyring(clusterId);
  }

  get activeTerm(): number {
    return this.#activeTerm;
  }

  /** The terms that still exist, oldest first. */
  terms(): Array<{ term: number; createdAtMs: number; destroyed: boolean }> {
    return [...this.#terms.values()].map(({ term, createdAtMs, destroyed }) => ({ term, createdAtMs, destroyed }));
  }

  /** A new data key for the next term (made by the manager that proposes the rotation). */
  static newKey(): Buffer {
    return randomBytes(KEY_BYTES);
  }

  /** Adds the next term, which becomes the active one (applied from the replicated log). */
  addTerm(term: number, key: Uint8Array, createdAtMs: number): void {
    if (term !== this.#activeTerm + 1)
      throw new TypeError(`keyring term ${term} does not follow the active term ${this.#activeTerm}`);
    if (key.byteLength !== KEY_BYTES) throw new TypeError(`a data key has ${KEY_BYTES} bytes`);
    this.#terms.set(term, { term, key: Buffer.from(key), createdAtMs, destroyed: false });
    this.#activeTerm = term;
    if (term === 1) this.#indexKey = deriveIndexKey(key, this.clusterId);
  }

  /** The key the name tags of the applied state's records are made with (RecordKeys). */
  get indexKey(): Buffer {
    if (this.#indexKey === null)
      throw new CryptoError(
        'KEYRING_EMPTY',
        'the keyring has no key yet: the cluster applies its first keyring term once it has a leader; retry',
      );
    return this.#indexKey;
  }

  /** The key records are sealed under in `term` (RecordKeys): derived from the term's data key, never the data key itself. */
  recordsKey(term: number): Buffer {
    const cached = this.#recordsKeys.get(term);
    if (cached !== undefined) return cached;
    const entry = this.#terms.get(term);
    if (entry === undefined)
      throw new CryptoError(
        'KEY_TERM_UNKNOWN',
        `a record was sealed under keyring term ${term}, which this keyring never had`,
      );
    if (entry.destroyed)
      throw new CryptoError(
        'KEY_TERM_DESTROYED',
        `a record was sealed under keyring term ${term}, which was destroyed`,
      );
    const key = deriveRecordsKey(entry.key, this.clusterId, term);
    this.#recordsKeys.set(term, key);
    return key;
  }

  /** Forgets an old term's key for good: its data can no longer be read (key revocation). */
  destroyTerm(term: number): void {
    const entry = this.#terms.get(term);
    if (entry === undefined) throw new TypeError(`keyring term ${term} does not exist`);
    if (term === this.#activeTerm) throw new TypeError(`keyring term ${term} is active; rotate before destroying it`);
    entry.key.fill(0);
    entry.destroyed = true;
    this.#recordsKeys.get(term)?.fill(0);
    this.#recordsKeys.delete(term);
  }

  encrypt(kind: string, plaintext: Uint8Array): Buffer {
    return this.encryptUnder(this.#activeTerm, kind, plaintext);
  }

  /**
   * Encrypts under `term`, which need not be the active one any more (a snapshot built in the
   * background is sealed under the term that was active at its point); refused if destroyed.
   */
  encryptUnder(term: number, kind: string, plaintext: Uint8Array): Buffer {
    const entry = this.#terms.get(term);
    if (entry === undefined)
      throw new CryptoError(
        'KEYRING_EMPTY',
        'the keyring has no key yet: the cluster applies its first keyring term once it has a leader; retry',
      );
    if (entry.destroyed)
      throw new CryptoError('KEY_TERM_DESTROYED', `keyring term ${term} was destroyed; nothing is sealed under it`);
    const uses = this.#uses.get(term) ?? 0;
    if (uses >= KEY_USES_MAX) {
      throw new CryptoError(
        'KEY_USES_EXHAUSTED',
        `keyring term ${term} has encrypted ${uses} times on this manager; rotate the keyring`,
      );
    }
    this.#uses.set(term, uses + 1);
    const header = Buffer.allocUnsafe(TERM_BYTES);
    header.writeUInt32BE(term, 0);
    return Buffer.concat([header, seal(entry.key, plaintext, this.#associatedData(kind, term))]);
  }

  decrypt(kind: string, sealed: Uint8Array): Buffer {
    const term = Keyring.termOf(sealed);
    const entry = this.#terms.get(term);
    if (entry === undefined)
      throw new CryptoError(
        'KEY_TERM_UNKNOWN',
        `${kind} was sealed under keyring term ${term}, which this keyring never had`,
      );
    if (entry.destroyed)
      throw new CryptoError('KEY_TERM_DESTROYED', `${kind} was sealed under keyring term ${term}, which was destroyed`);
    return open(entry.key, sealed.subarray(TERM_BYTES), this.#associatedData(kind, term), kind);
  }

  /** The keyring term some sealed data was made under (for rewrap bookkeeping). */
  static termOf(sealed: Uint8Array): number {
    if (sealed.byteLength < TERM_BYTES + NONCE_BYTES + TAG_BYTES)
      throw new CryptoError('ENVELOPE_MALFORMED', 'sealed data is too short');
    return Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength).readUInt32BE(0);
  }

  usesOfActiveTerm(): number {
    return this.usesOf(this.#activeTerm);
  }

  usesOf(term: number): number {
    return this.#uses.get(term) ?? 0;
  }

  /**
   * Counts `uses` encryptions under `term` as already made: a restarted manager resumes from the
   * uses it had reserved on disk, so restarts cannot reset the count (see KEY_USES_MAX).
   */
  assumeUses(term: number, uses: number): void {
    if (uses > this.usesOf(term)) this.#uses.set(term, uses);
  }

  /** True when there is no key yet, or the active key is older than `intervalMs` or near its use limit. */
  needsRotation(nowMs: number, intervalMs: number): boolean {
    const active = this.#terms.get(this.#activeTerm);
    if (active === undefined) return true;
    return nowMs - active.createdAtMs >= intervalMs || this.usesOfActiveTerm() >= KEY_USES_MAX * 0.9;
  }

  /** When the active term was created (0 without one). */
  get activeCreatedAtMs(): number {
    return this.#terms.get(this.#activeTerm)?.createdAtMs ?? 0;
  }

  #associatedData(kind: string, term: number): Buffer {
    return Buffer.from(`coffer/1|${this.clusterId}|${kind}|${term}`, 'utf8');
  }

  /** The keyring sealed under a root key (of generation `rootGen`): the only form in which it is ever stored. */
  wrap(rootKey: Uint8Array, rootGen = 1): Buffer {
    const body = packr.pack([
      this.clusterId,
      this.#activeTerm,
      [...this.#terms.values()].map((t) => [t.term, t.destroyed ? null : t.key, t.createdAtMs]),
      this.#indexKey,
    ]);
    return seal(rootKey, body, keyringAd(this.clusterId, rootGen));
  }

  static unwrap(rootKey: Uint8Array, clusterId: string, sealed: Uint8Array, rootGen = 1): Keyring {
    const body = open(rootKey, sealed, keyringAd(clusterId, rootGen), 'the keyring');
    const [storedClusterId, activeTerm, terms, indexKey] = packr.unpack(body) as [
      string,
      number,
      Array<[number, Uint8Array | null, number]>,
      Uint8Array | null | undefined,
    ];
    const keyring = new Keyring(storedClusterId);
    for (const [term, key, createdAtMs] of terms) {
      keyring.#terms.set(term, {
        term,
        key: key === null ? Buffer.alloc(KEY_BYTES) : Buffer.from(key),
        createdAtMs,
        destroyed: key === null,
      });
    }
    keyring.#activeTerm = activeTerm;
    if (indexKey instanceof Uint8Array) keyring.#indexKey = Buffer.from(indexKey);
    else {
      // A keyring wrapped before the index key existed: derive it from term 1 if that is still held.
      const first = keyring.#terms.get(1);
      if (first !== undefined && !first.destroyed) keyring.#indexKey = deriveIndexKey(first.key, storedClusterId);
    }
    return keyring;
  }
}

function keyringAd(clusterId: string, rootGen: number): Buffer {
  return Buffer.from(`coffer/1|keyring|${clusterId}|${rootGen}`, 'utf8');
}

/**
 * A new data key as it travels in the log: sealed under the root key of generation `rootGen`,
 * bound to the cluster, the keyring term it will be and that generation.
 */
export function wrapDataKey(
  rootKey: Uint8Array,
  clusterId: string,
  term: number,
  rootGen: number,
  key: Uint8Array,
): Buffer {
  return seal(rootKey, key, dataKeyAd(clusterId, term, rootGen));
}

export function unwrapDataKey(
  rootKey: Uint8Array,
  clusterId: string,
  term: number,
  rootGen: number,
  wrapped: Uint8Array,
): Buffer {
  return open(rootKey, wrapped, dataKeyAd(clusterId, term, rootGen), `the data key of keyring term ${term}`);
}

function dataKeyAd(clusterId: string, term: number, rootGen: number): Buffer {
  return Buffer.from(`coffer/1|data-key|${clusterId}|${term}|${rootGen}`, 'utf8');
}
