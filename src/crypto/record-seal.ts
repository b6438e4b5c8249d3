import { createCipheriv, createDecipheriv, createHmac, hkdfSync } from 'node:crypto';
import { KEY_BYTES, NONCE_BYTES, TAG_BYTES } from './aead.ts';
import { CryptoError } from './errors.ts';

/**
 * Sealing of the applied state's records at rest (src/state on a StateStore), and the keyed tags
 * that stand for secret names in record keys.
 *
 * Every manager stores every record, so sealing must not spend a term's random-nonce budget per
 * manager (src/crypto/keyring.ts, KEY_USES_MAX). Records are therefore sealed
 * deterministically: under a per-term records key derived from the term's data key (HKDF, so the
 * data key itself is never used with these nonces), with the nonce made of the log index of the
 * entry that wrote the record and a counter of seals within that entry. Applying is
 * deterministic, so every manager seals the same plaintext at the same (term, index, counter)
 * into the same bytes: no nonce is ever used for two different messages, and the managers'
 * stores are byte for byte equal (the state digest compares them).
 *
 * The associated data is the record's key (which holds the name's tags and the version), so a
 * record moved to another key, another secret or another version does not open.
 *
 * Sealed record: `format (1) | term (4, BE) | nonce (12) | ciphertext | tag (16)`.
 */
export const RECORD_FORMAT = 1;
const HEADER_BYTES = 1 + 4;
/** Bytes of one segment's tag in a name key (128 bits: collisions need 2^64 names under one parent). */
export const NAME_TAG_BYTES = 16;

/** The keys records are sealed under: a per-term records key, and the cluster's name index key. */
export interface RecordKeys {
  /** The term new records are sealed under (0: none yet). */
  readonly activeTerm: number;
  /** The records key of `term`; throws CryptoError if the term is unknown or destroyed. */
  recordsKey(term: number): Buffer;
  /** The key of the name tags (constant for the cluster's life). */
  readonly indexKey: Buffer;
}

/** The records key of a term: HKDF-SHA256 of its data key, bound to the cluster. */
export function deriveRecordsKey(dataKey: Uint8Array, clusterId: string, term: number): Buffer {
  return Buffer.from(hkdfSync('sha256', dataKey, Buffer.alloc(0), `coffer/1|records|${clusterId}|${term}`, KEY_BYTES));
}

/** The name index key: HKDF-SHA256 of the first term's data key, derived once and kept when that term is destroyed. */
export function deriveIndexKey(dataKey: Uint8Array, clusterId: string): Buffer {
  return Buffer.from(hkdfSync('sha256', dataKey, Buffer.alloc(0), `coffer/1|name-index|${clusterId}`, KEY_BYTES));
}

/** Where a seal happens: the log index of the entry being applied, and the seals made in it before. */
export interface SealPosition {
  readonly index: number;
  readonly seq: number;
}

export function sealRecord(
  keys: RecordKeys,
  recordKey: Uint8Array,
  plaintext: Uint8Array,
  at: SealPosition,
  term = keys.activeTerm,
): Buffer {
  if (!(Number.isSafeInteger(at.index) && at.index >= 0 && Number.isInteger(at.seq) && at.seq >= 0 && at.seq < 2 ** 32))
    throw new TypeError(`a record seal needs a log index and a counter below 2^32: got ${at.index}/${at.seq}`);
  const key = keys.recordsKey(term);
  const header = Buffer.allocUnsafe(HEADER_BYTES + NONCE_BYTES);
  header[0] = RECORD_FORMAT;
  header.writeUInt32BE(term, 1);
  const nonce = header.subarray(HEADER_BYTES);
  nonce.writeBigUInt64BE(BigInt(at.index), 0);
  nonce.writeUInt32BE(at.seq, 8);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(recordKey);
  const body = cipher.update(plaintext);
  const final = cipher.final();
  return Buffer.concat([header, body, final, cipher.getAuthTag()]);
}

/** The term a sealed record was sealed under (for rewrap and destroy bookkeeping). */
export function recordTerm(sealed: Uint8Array): number {
  checkShape(sealed, 'a record');
  return Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength).readUInt32BE(1);
}

/** Opens a sealed record; throws CryptoError (DECRYPT_FAILED when altered, moved or under another key). */
export function openRecord(keys: RecordKeys, recordKey: Uint8Array, sealed: Uint8Array, what: string): Buffer {
  checkShape(sealed, what);
  const bytes = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
  const term = bytes.readUInt32BE(1);
  const key = keys.recordsKey(term);
  const nonce = bytes.subarray(HEADER_BYTES, HEADER_BYTES + NONCE_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce);
  decipher.setAAD(recordKey);
  decipher.setAuthTag(bytes.subarray(bytes.byteLength - TAG_BYTES));
  try {
    return Buffer.concat([
      decipher.update(bytes.subarray(HEADER_BYTES + NONCE_BYTES, bytes.byteLength - TAG_BYTES)),
      decipher.final(),
    ]);
  } catch (error) {
    throw new CryptoError('DECRYPT_FAILED', `${what}: authentication failed (altered, moved, or another key)`, {
      cause: error,
    });
  }
}

function checkShape(sealed: Uint8Array, what: string): void {
  if (sealed.byteLength < HEADER_BYTES + NONCE_BYTES + TAG_BYTES)
    throw new CryptoError(
      'ENVELOPE_MALFORMED',
      `${what}: ${sealed.byteLength} bytes is too short to be a sealed record`,
    );
  if (sealed[0] !== RECORD_FORMAT)
    throw new CryptoError('ENVELOPE_MALFORMED', `${what}: unknown record format ${sealed[0]}`);
}

/**
 * The key of a secret name in the store: one tag per segment, each an HMAC of the whole path up
 * to and including that segment, so names under one parent share their parent's tags (a prefix
 * list is a key range) and the same segment under two parents has two unrelated tags.
 *
 * What it reveals to someone holding the disk but not the keys: how many segments each name has,
 * which names share a parent, and equal names across the store's history; not the segments'
 * text or length.
 */
export function nameKey(indexKey: Uint8Array, name: string): Buffer {
  let cache = nameKeyCaches.get(indexKey);
  if (cache === undefined) {
    cache = new Map();
    nameKeyCaches.set(indexKey, cache);
  }
  const cached = cache.get(name);
  // A copy: a caller may wipe or change what it is given; the cache keeps its own.
  if (cached !== undefined) return Buffer.from(cached);
  const computed = computeNameKey(indexKey, name);
  if (cache.size >= NAME_KEY_CACHE_NAMES) cache.delete(cache.keys().next().value!);
  cache.set(name, Buffer.from(computed));
  return computed;
}

/**
 * Name keys computed lately, per index key (a rotated index key has its own, and the cache of
 * one no longer held goes with it): a write computes its name's key where it is authorized and
 * again where it applies, one HMAC per segment each time (about 15 us a write on the leader,
 * `npm run bench -- profile`). At most this many names per index key, the oldest dropped first.
 * Names are not secret (the audit log keeps them readable); the cache holds no value.
 */
export const NAME_KEY_CACHE_NAMES = 4096;
const nameKeyCaches = new WeakMap<Uint8Array, Map<string, Buffer>>();

/**
 * The chains of parents computed lately, per index key: a name's key is its parent's chain and one
 * HMAC more, so a new name under a known parent (a load of `app/...`, a new version's first write)
 * costs one HMAC, not one per segment (each about 10-20 us: a new MAC context per call). At most
 * this many parents per index key, the oldest dropped first. Parents' names are not secret either.
 */
export const NAME_PARENT_CHAINS_CACHED = 1024;
const parentChainCaches = new WeakMap<Uint8Array, Map<string, NameChain>>();

/** A path's chain: the full digest of its last segment (the next segment's HMAC input) and its tags. */
interface NameChain {
  readonly digest: Buffer;
  readonly tags: Buffer;
}
const CHAIN_ROOT: NameChain = { digest: Buffer.from('coffer/1|name'), tags: Buffer.alloc(0) };

function computeNameKey(indexKey: Uint8Array, name: string): Buffer {
  let parents = parentChainCaches.get(indexKey);
  if (parents === undefined) {
    parents = new Map();
    parentChainCaches.set(indexKey, parents);
  }
  return chainOf(indexKey, name, parents, false).tags;
}

/**
 * The chain of `path` (split at every '/', empty segments included): each segment's tag is an
 * HMAC of the previous full digest and the segment. Parents are taken from, and kept in, `parents`.
 */
function chainOf(indexKey: Uint8Array, path: string, parents: Map<string, NameChain>, keep: boolean): NameChain {
  const kept = keep ? parents.get(path) : undefined;
  if (kept !== undefined) return kept;
  const slash = path.lastIndexOf('/');
  const parent = slash < 0 ? CHAIN_ROOT : chainOf(indexKey, path.slice(0, slash), parents, true);
  const digest = createHmac('sha256', indexKey)
    .update(parent.digest)
    .update(path.slice(slash + 1))
    .digest();
  const tags = Buffer.allocUnsafe(parent.tags.byteLength + NAME_TAG_BYTES);
  parent.tags.copy(tags, 0);
  digest.copy(tags, parent.tags.byteLength, 0, NAME_TAG_BYTES);
  const chain = { digest, tags };
  if (keep) {
    if (parents.size >= NAME_PARENT_CHAINS_CACHED) parents.delete(parents.keys().next().value!);
    parents.set(path, chain);
  }
  return chain;
}

/** The key of a name prefix made of whole segments (`a/b/` → the tags of `a` and `a/b`); '' → empty. */
export function segmentsKey(indexKey: Uint8Array, wholeSegments: string): Buffer {
  if (wholeSegments === '') return Buffer.alloc(0);
  return nameKey(indexKey, wholeSegments);
}

/** A keyed tag of any other string that stands in a key (an identity's name in the quota records). */
export function keyedTag(indexKey: Uint8Array, domain: string, text: string): Buffer {
  return createHmac('sha256', indexKey).update(`coffer/1|${domain}|`).update(text).digest().subarray(0, NAME_TAG_BYTES);
}
