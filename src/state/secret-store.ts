import { packr } from '../codec/msgpack.ts';
import {
  keyedTag,
  nameKey,
  openRecord,
  recordTerm,
  sealRecord,
  segmentsKey,
  type RecordKeys,
} from '../crypto/record-seal.ts';
import { prefixEnd, type KeyRange, type RecordStream, type StateRecord } from '../kv/state-store.ts';
import { assert } from '../util/assert.ts';
import { actorOf, type Actor } from './access-state.ts';
import {
  RefusalError,
  certificateRefusal,
  refusal,
  refusedAs,
  type Authority,
  type DecodedCommand,
  type EncodedCommand,
  type Refusal,
  type StatePart,
} from './state-part.ts';
import { STATIC_SECRET_NAME_PATTERN } from './static-roles.ts';
import {
  IDENTITY_SECRETS_MAX,
  IDENTITY_VALUE_BYTES_MAX,
  LABEL_PATTERN,
  PUT_BATCH_BYTES_MAX,
  PUT_BATCH_ITEMS_MAX,
  RESERVED_LABELS,
  SECRET_VALUE_BYTES_MAX,
  TTL_MS_MAX,
  USER_LABELS_MAX,
  VERSIONS_KEPT_DEFAULT,
  VERSIONS_KEPT_MAX,
  formatBytes,
  labelProblem,
  putBatchItemBytes,
  secretNameProblem,
} from './limits.ts';
import type { Capability } from './policy.ts';

/** What a secret command returns when it applies: the version it wrote or left current (for the sweep: how many it wiped). */
export interface SecretApplied {
  readonly ok: true;
  readonly version: number;
  /** For a batch of puts: the version each item made, in the batch's order (`version` is the last). */
  readonly versions?: readonly number[];
}
export type SecretResult = SecretApplied | Refusal;

/** One put of a batch: a put without its own time (the batch has one). */
export interface PutBatchItem {
  readonly name: string;
  readonly value: Uint8Array;
  readonly cas: number | null;
  readonly expireAtMs: number | null;
  readonly versionsKept: number | null;
}

/** Commands, as proposed. Times come from the proposer, so applying them is deterministic. */
export type SecretCommand =
  | {
      readonly op: 'put';
      readonly name: string;
      readonly value: Uint8Array;
      readonly cas: number | null;
      readonly expireAtMs: number | null;
      readonly versionsKept: number | null;
      readonly nowMs: number;
    }
  /**
   * Puts applied in order as one command, all or none: an item refused (its rights, its cas, a
   * quota) leaves no trace of the batch. At most PUT_BATCH_ITEMS_MAX items and
   * PUT_BATCH_BYTES_MAX bytes of names and values, so the command fits one Raft entry.
   */
  | { readonly op: 'put-batch'; readonly items: readonly PutBatchItem[]; readonly nowMs: number }
  | { readonly op: 'delete'; readonly name: string }
  | { readonly op: 'undelete'; readonly name: string }
  | { readonly op: 'destroy'; readonly name: string; readonly versions: readonly number[] }
  | { readonly op: 'label'; readonly name: string; readonly label: string; readonly version: number }
  | { readonly op: 'unlabel'; readonly name: string; readonly label: string }
  /** The leader's sweep: the versions it found expired by `nowMs` (each checked again where it applies). */
  | { readonly op: 'expire'; readonly nowMs: number; readonly targets: ReadonlyArray<readonly [string, number]> }
  /** The leader's background re-seal: records under terms older than `belowTerm`, sealed again under the active term. */
  | { readonly op: 'reseal'; readonly belowTerm: number; readonly keys: readonly Uint8Array[] };

export interface VersionMetadata {
  readonly version: number;
  readonly createdAtMs: number;
  readonly expireAtMs: number | null;
  readonly destroyed: boolean;
  readonly expired: boolean;
  readonly labels: readonly string[];
}

export interface SecretMetadata {
  readonly name: string;
  readonly currentVersion: number;
  /** The highest version ever written (a compare-and-set names it). */
  readonly lastVersion: number;
  readonly versionsKept: number;
  readonly deleted: boolean;
  readonly createdAtMs: number;
  readonly updatedAtMs: number;
  readonly labels: ReadonlyArray<readonly [string, number]>;
}

/** A version as its secret's record keeps it (the value is a record of its own). */
interface VersionRecord {
  readonly version: number;
  readonly createdAtMs: number;
  readonly expireAtMs: number | null;
  /** The value was wiped: destroyed, or expired if `expired`. */
  wiped: boolean;
  expired: boolean;
  /** The identity charged for the value while it is kept (null: the leader's own). */
  readonly writer: string | null;
  /** The value's size (what the writer is charged). */
  readonly valueBytes: number;
  /**
   * The keyring term its value record is sealed under, so a wipe moves the count of records per
   * term without reading the record (a read of a version written thousands of puts ago misses
   * LevelDB's memtable and cost about 20 us of every put that drops one). Null: not known (a
   * record written before versions kept it; read when wiped).
   */
  valueTerm: number | null;
}

/** A secret's record, as decoded from its sealed metadata record. */
interface SecretRecord {
  readonly name: string;
  readonly key: Buffer;
  /** Kept versions, oldest first. */
  versions: VersionRecord[];
  lastVersion: number;
  readonly labels: Map<string, number>;
  deleted: boolean;
  versionsKept: number;
  readonly createdAtMs: number;
  updatedAtMs: number;
  /** The identity charged for the secret (null: the leader's own). */
  readonly creator: string | null;
  /**
   * The keyring term its stored metadata record is sealed under (null: none stored yet): a save
   * moves the count of records per term without reading that record again (a miss in LevelDB
   * costs about 15 us, and a batch of puts saves hundreds of new secrets).
   */
  sealedTerm: number | null;
  /**
   * The newest version's value, sealed as its own record would be (same key as associated data,
   * so it opens only as that version of this secret), kept inside the secret's record when it
   * has at most INLINE_VALUE_BYTES_MAX bytes: a secret with one version is one record, and reading
   * the current version is one LevelDB read. A newer version moves it out to its own record,
   * bytes unchanged. Null: every kept value is a record of its own.
   */
  inline: { readonly version: number; sealed: Buffer } | null;
}

/**
 * Largest value kept inside its secret's record (a larger one is always a record of its own, so
 * listing and metadata reads do not open large values' ciphertext along with the metadata).
 */
export const INLINE_VALUE_BYTES_MAX = 4096;

/** What an identity is charged for (IDENTITY_SECRETS_MAX, IDENTITY_VALUE_BYTES_MAX). */
export interface IdentityUsage {
  readonly secrets: number;
  readonly valueBytes: number;
}

/** The quotas per identity a store enforces; the defaults are the limits of limits.ts (tests set smaller ones). */
export interface IdentityQuotas {
  readonly identitySecretsMax?: number;
  readonly identityValueBytesMax?: number;
}

/** Who asked for a command: checked again against the replicated policies when it is applied. */
export type { Actor };

/** Encodes a command for the log (`kind` is `secret.<op>`), with the client that asked for it. */
export function encodeSecretCommand(command: SecretCommand, actor: Actor | null = null): EncodedCommand {
  return { kind: `secret.${command.op}`, data: packr.pack(actor === null ? command : { ...command, actor }) };
}

/** Decodes a command and its actor (null for the leader's own commands, such as the expiry sweep). */
function decodeSecretCommand(kind: string, data: Uint8Array): DecodedCommand<SecretCommand> | Refusal {
  let value: unknown;
  try {
    value = packr.unpack(data);
  } catch {
    return refusal('INVALID', `the ${kind.slice(0, 60)} command does not decode`);
  }
  const command = checkedSecretCommand(kind, value);
  if (typeof command === 'string') return refusal('INVALID', command);
  const actor = actorOf((value as Record<string, unknown>)['actor']);
  if (typeof actor === 'string') return refusal('INVALID', actor);
  return { ok: true, command, actor };
}

/** Expired versions one sweep command wipes at most (the leader proposes more sweeps for the rest). */
export const EXPIRY_SWEEP_VERSIONS_MAX = 1_000;

/**
 * The secrets part's records in the state store. Every key starts with `s`; the second byte is
 * the record's kind. `nameKey` is the name's keyed tags (src/crypto/record-seal.ts), never its text.
 *   s m <nameKey>                         sealed metadata: name, versions, labels, flags, and the
 *                                         newest value (sealed again) if it is small: see `inline`
 *   s v <nameKey> <version u32>           sealed value of one version (any other kept version)
 *   s x <expireAtMs u64> <nameKey> <ver>  expiry index (empty value): what the sweep wipes next
 *   s u <identity tag>                    quota usage of one identity: secrets, value bytes (6 bytes each)
 *   s t <term u32>                        how many records are sealed under a keyring term (6 bytes)
 */
const PART_PREFIX = Buffer.from('s');
const META = Buffer.from('sm');
const VALUE = Buffer.from('sv');
const EXPIRY = Buffer.from('sx');
const USAGE = Buffer.from('su');
const TERM_COUNT = Buffer.from('st');
const termCountKey = (term: number): Buffer => {
  const key = Buffer.allocUnsafe(TERM_COUNT.length + 4);
  TERM_COUNT.copy(key, 0);
  key.writeUInt32BE(term, TERM_COUNT.length);
  return key;
};

/**
 * Secrets' records a store keeps opened (the ones read or written lately), each with the sealed
 * bytes it was opened from: a put reads its secret's record on every manager, and opening and
 * decoding it cost about as much as sealing the new one. A kept record serves only while the
 * store holds those very bytes (any change, rollback or install shows as other bytes: a new seal
 * has a new nonce). Names and metadata, never a value's plaintext (a value inside is ciphertext).
 */
export const OPENED_SECRETS_CACHED = 4096;

/** How a caller uses a secret's record it loads (see #loadKey). */
type RecordUse = 'read' | 'write';

/** Usage record keys a store keeps made (one per identity that wrote lately); beyond, it starts over. */
const USAGE_KEYS_CACHED = 1024;
/** Records one re-seal command names at most (the leader proposes batches until none is left). */
export const RESEAL_RECORDS_MAX = 256;
const EMPTY = Buffer.alloc(0);

const metaKey = (nk: Uint8Array): Buffer => Buffer.concat([META, nk]);
function valueKey(nk: Uint8Array, version: number): Buffer {
  const key = Buffer.allocUnsafe(VALUE.length + nk.byteLength + 4);
  VALUE.copy(key, 0);
  key.set(nk, VALUE.length);
  key.writeUInt32BE(version, VALUE.length + nk.byteLength);
  return key;
}
function expiryKey(expireAtMs: number, nk: Uint8Array, version: number): Buffer {
  const key = Buffer.allocUnsafe(EXPIRY.length + 8 + nk.byteLength + 4);
  EXPIRY.copy(key, 0);
  key.writeBigUInt64BE(BigInt(expireAtMs), EXPIRY.length);
  key.set(nk, EXPIRY.length + 8);
  key.writeUInt32BE(version, key.length - 4);
  return key;
}

/** The applied state's records as the secrets part reads and writes them (src/kv/write-set.ts). */
export interface SecretRecords {
  get(key: Uint8Array): Uint8Array | undefined;
  put(key: Uint8Array, value: Uint8Array): void;
  del(key: Uint8Array): void;
  /** Opens a savepoint: the writes after it are undone together (`rollback`) or kept (`release`). */
  savepoint(): void;
  rollback(): void;
  release(): void;
  range(range: KeyRange): AsyncIterableIterator<StateRecord>;
  pages(range: KeyRange): AsyncIterableIterator<readonly StateRecord[]>;
  replaceAll(records: RecordStream): Promise<void>;
}

export interface SecretStoreOptions extends IdentityQuotas {
  /** The applier's write set over the state store. */
  readonly records: SecretRecords;
  /** The keys records are sealed under (the barrier's keyring). */
  readonly keys: RecordKeys;
}

/**
 * The secrets: versions, labels, soft delete, destruction, expiry, in the state store (LevelDB on
 * a manager) and never in the heap: each secret is a sealed metadata record and one sealed record
 * per kept value, under keys made of the name's keyed tags. A value is opened only to answer a
 * read, into a buffer the caller wipes.
 *
 * Applying is deterministic (every manager ends with the same records, byte for byte: sealing is
 * deterministic per log index, see src/crypto/record-seal.ts); refusals are results, not
 * exceptions, and a refused command writes nothing. Reads take the reader's clock only to hide
 * versions past their expiry before the leader's sweep wipes them.
 */
export class SecretStore implements StatePart<SecretCommand, SecretApplied> {
  readonly prefix = 'secret.';
  readonly #records: SecretRecords;
  readonly #keys: RecordKeys;
  readonly #identitySecretsMax: number;
  readonly #identityValueBytesMax: number;
  /** The log index of the command being applied, and the seals made for it so far (the nonce). */
  #index = 0;
  /** The record requiredCapabilities read for a put, for the apply of that same command object. */
  #loadedForCommand: { readonly command: SecretCommand; readonly secret: SecretRecord | undefined } | null = null;
  #seq = 0;
  readonly #usageKeys = new Map<string, Buffer>();
  /** The command being applied's changes to the counts of records per term, by term. */
  readonly #termDeltas = new Map<number, number>();
  /** Secrets' records opened lately, by name key (latin1), oldest first: OPENED_SECRETS_CACHED. */
  readonly #opened = new Map<string, { readonly sealed: Uint8Array; readonly secret: SecretRecord }>();
  #usageKeysUnder: Buffer | null = null;

  constructor(options: SecretStoreOptions) {
    this.#records = options.records;
    this.#keys = options.keys;
    this.#identitySecretsMax = options.identitySecretsMax ?? IDENTITY_SECRETS_MAX;
    this.#identityValueBytesMax = options.identityValueBytesMax ?? IDENTITY_VALUE_BYTES_MAX;
  }

  encode(command: SecretCommand, actor: Actor | null): EncodedCommand {
    return encodeSecretCommand(command, actor);
  }

  decode(kind: string, data: Uint8Array): DecodedCommand<SecretCommand> | Refusal {
    return decodeSecretCommand(kind, data);
  }

  /**
   * A client's command is authorized again where it applies: the manager that took it may have
   * been behind (a revocation or a policy change already committed), and every manager must reach
   * the same verdict, so the check reads only replicated state: the actor's certificate, then the
   * capabilities the command needs on its secret (requiredCapabilities), each allowed by its policies.
   */
  authorize(command: SecretCommand, actor: Actor, authority: Authority): Refusal | null {
    // A batch's items are authorized one by one as they apply (`apply`, with the authority), each
    // against the state the items before it left: the verdict single puts in a row would get.
    // Here, the certificate, once for the batch.
    if (command.op === 'put-batch') return certificateRefusal(authority, actor, 'write');
    const needed = this.requiredCapabilities(command);
    // The expiry sweep needs no right (it wipes only what expired), so nobody's certificate is checked.
    if (needed === null) return null;
    const revoked = certificateRefusal(authority, actor, 'write');
    if (revoked !== null) return revoked;
    return capabilitiesRefusal(authority, actor, needed.name, needed.capabilities);
  }

  /** What `identity` is charged for now. */
  usage(identity: string): IdentityUsage {
    const stored = this.#records.get(this.#usageKey(identity));
    if (stored === undefined) return { secrets: 0, valueBytes: 0 };
    const bytes = Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength);
    return { secrets: bytes.readUIntBE(0, 6), valueBytes: bytes.readUIntBE(6, 6) };
  }

  /**
   * The capabilities a command needs on its secret, given the state it will apply to: `write` for
   * puts and labels, `delete` for delete, undelete and destroy, and `delete` too for a put that
   * would wipe kept versions by lowering the versions kept, or bring back a deleted secret.
   */
  requiredCapabilities(command: SecretCommand): { name: string; capabilities: Array<'write' | 'delete'> } | null {
    if (command.op === 'expire' || command.op === 'reseal') return null;
    // Each item is authorized as it applies (authorize, apply); the batch as a whole needs no one capability.
    if (command.op === 'put-batch') return null;
    if (command.op === 'delete' || command.op === 'undelete' || command.op === 'destroy')
      return { name: command.name, capabilities: ['delete'] };
    if (command.op !== 'put') return { name: command.name, capabilities: ['write'] };
    const secret = this.#load(command.name, 'write');
    this.#loadedForCommand = { command, secret };
    return { name: command.name, capabilities: putCapabilities(secret, command.versionsKept) };
  }

  /**
   * For the server edge, which refuses early what would surely be refused where it applies: the
   * capabilities a put of `name` needs on this manager's state now, and why it would pass a quota
   * of `writer` (null: exempt). The verdict that counts is the apply's.
   */
  putEdgeCheck(
    writer: string | null,
    command: Extract<SecretCommand, { op: 'put' }>,
  ): { capabilities: Array<'write' | 'delete'>; quota: Refusal | null } {
    const secret = this.#load(command.name, 'read');
    return {
      capabilities: putCapabilities(secret, command.versionsKept),
      quota: writer === null ? null : this.#quotaProblem(writer, secret, command),
    };
  }

  /**
   * Applies a command at log index `index` (the records it writes are sealed with it); a put by
   * `actor` is charged to it, within its quotas (null: nobody). No authorization: see `authorize`.
   */
  apply(
    command: SecretCommand,
    actor: Actor | null = null,
    index = this.#index + 1,
    options: { readonly quotaExempt?: boolean; readonly authority?: Authority } = {},
  ): SecretResult {
    assert(index > this.#index || index === this.#index, () => `secret command at index ${index} after ${this.#index}`);
    if (index !== this.#index) this.#seq = 0;
    this.#index = index;
    // What requiredCapabilities read for this very command (the same object, checked just before
    // it applies, nothing written between): read once, not twice. Taken here whatever the command.
    const loaded = this.#loadedForCommand;
    this.#loadedForCommand = null;
    let result: SecretResult;
    try {
      result = this.#applyCommand(command, actor, options, loaded);
    } catch (error) {
      this.#termDeltas.clear();
      throw error;
    }
    this.#writeTermCounts();
    return result;
  }

  #applyCommand(
    command: SecretCommand,
    actor: Actor | null,
    options: { readonly quotaExempt?: boolean; readonly authority?: Authority },
    loaded: { readonly command: SecretCommand; readonly secret: SecretRecord | undefined } | null,
  ): SecretResult {
    switch (command.op) {
      case 'put':
        return this.#put(
          command,
          actor?.name ?? null,
          options.quotaExempt === true,
          loaded?.command === command ? loaded : null,
        );
      case 'put-batch':
        return this.#putBatch(command, actor, options.quotaExempt === true, options.authority ?? null);
      case 'delete':
      case 'undelete': {
        const secret = this.#load(command.name, 'write');
        if (secret === undefined) return refusedAs('SECRET_NOT_FOUND', `secret "${command.name}" does not exist`);
        secret.deleted = command.op === 'delete';
        this.#save(secret);
        return { ok: true, version: secret.lastVersion };
      }
      case 'destroy': {
        const secret = this.#load(command.name, 'write');
        if (secret === undefined) return refusedAs('SECRET_NOT_FOUND', `secret "${command.name}" does not exist`);
        for (const n of command.versions) {
          if (!secret.versions.some((v) => v.version === n))
            return refusedAs('VERSION_NOT_FOUND', `secret "${command.name}" has no version ${n}`, {
              version: String(n),
            });
        }
        for (const v of secret.versions) if (command.versions.includes(v.version)) this.#wipe(secret, v);
        this.#save(secret);
        return { ok: true, version: secret.lastVersion };
      }
      case 'label': {
        const secret = this.#load(command.name, 'write');
        if (secret === undefined) return refusedAs('SECRET_NOT_FOUND', `secret "${command.name}" does not exist`);
        const version = secret.versions.find((v) => v.version === command.version);
        if (version === undefined)
          return refusedAs('VERSION_NOT_FOUND', `secret "${command.name}" has no version ${command.version}`, {
            version: String(command.version),
          });
        if (version.wiped)
          return refusal('DESTROYED', `secret "${command.name}": version ${command.version} was destroyed`);
        const userLabels = [...secret.labels.keys()].filter((l) => !isReservedLabel(l));
        if (
          !secret.labels.has(command.label) &&
          !isReservedLabel(command.label) &&
          userLabels.length >= USER_LABELS_MAX
        ) {
          return refusedAs('TOO_MANY_LABELS', `secret "${command.name}" already has ${USER_LABELS_MAX} labels`, {
            limit: String(USER_LABELS_MAX),
          });
        }
        secret.labels.set(command.label, command.version);
        this.#save(secret);
        return { ok: true, version: command.version };
      }
      case 'unlabel': {
        const secret = this.#load(command.name, 'write');
        if (secret === undefined) return refusedAs('SECRET_NOT_FOUND', `secret "${command.name}" does not exist`);
        if (isReservedLabel(command.label))
          return refusal('INVALID', `the label "${command.label}" is kept by the store; move it instead`);
        if (!secret.labels.delete(command.label))
          return refusedAs('LABEL_NOT_FOUND', `secret "${command.name}" has no label "${command.label}"`, {
            label: command.label,
          });
        this.#save(secret);
        return { ok: true, version: secret.lastVersion };
      }
      case 'reseal': {
        // Records the leader found under older terms, sealed again under the active one (a record
        // changed since, or already under a newer term, is left as it is).
        let resealed = 0;
        for (const key of command.keys) {
          const sealed = this.#records.get(key);
          if (sealed === undefined || recordTerm(sealed) >= command.belowTerm) continue;
          if (recordTerm(sealed) >= this.#keys.activeTerm) continue;
          if (key[1] === META[1]) {
            // Its value inside, if any, is sealed under the same term (see #save), and moves with it.
            const nk = Buffer.from(key.subarray(META.length));
            this.#save(this.#decodeMeta(nk, key, sealed));
          } else {
            const plaintext = openRecord(this.#keys, key, sealed, 'a record being re-sealed');
            const term = recordTerm(this.#putSealed(key, plaintext));
            plaintext.fill(0);
            this.#valueResealed(key, term);
          }
          resealed++;
        }
        return { ok: true, version: resealed };
      }
      case 'expire': {
        // The leader named what it found expired (expiryTargets); each is checked here against the
        // sweep's time, so every manager wipes the same versions whatever its own clock says.
        let wiped = 0;
        for (const [name, number] of command.targets) {
          const secret = this.#load(name, 'write');
          const version = secret?.versions.find((v) => v.version === number);
          if (secret === undefined || version === undefined || version.wiped) continue;
          if (version.expireAtMs === null || version.expireAtMs > command.nowMs) continue;
          this.#wipe(secret, version);
          version.expired = true;
          this.#save(secret);
          wiped++;
        }
        return { ok: true, version: wiped };
      }
    }
  }

  #put(
    command: Extract<SecretCommand, { op: 'put' }>,
    writer: string | null,
    quotaExempt: boolean,
    loaded: { readonly secret: SecretRecord | undefined; readonly nk?: Buffer } | null,
  ): SecretResult {
    let secret = loaded === null ? this.#load(command.name, 'write') : loaded.secret;
    const current = secret === undefined || secret.deleted ? 0 : (secret.labels.get('current') ?? 0);
    if (command.cas !== null && command.cas !== (secret?.lastVersion ?? 0)) {
      // The version it is at is no secret from one who may write it (and so read its metadata).
      return refusedAs(
        'CAS_MISMATCH',
        command.cas === 0
          ? `secret "${command.name}" already exists (version ${secret?.lastVersion})`
          : `secret "${command.name}" is at version ${secret?.lastVersion ?? 0}, not ${command.cas}`,
        { currentVersion: String(secret?.lastVersion ?? 0), expectedVersion: String(command.cas) },
      );
    }
    if (writer !== null && !quotaExempt) {
      const problem = this.#quotaProblem(writer, secret, command);
      if (problem !== null) return problem;
    }
    if (secret === undefined) {
      secret = {
        name: command.name,
        key: loaded?.nk ?? nameKey(this.#keys.indexKey, command.name),
        versions: [],
        lastVersion: 0,
        labels: new Map(),
        deleted: false,
        versionsKept: VERSIONS_KEPT_DEFAULT,
        createdAtMs: command.nowMs,
        updatedAtMs: command.nowMs,
        creator: writer,
        sealedTerm: null,
        inline: null,
      };
      this.#charge(writer, 1, 0);
    }
    if (command.versionsKept !== null) secret.versionsKept = command.versionsKept;
    const version = secret.lastVersion + 1;
    const key = valueKey(secret.key, version);
    // A new version's number was never used (versions only go up; lastVersion outlives wipes): no record is there.
    let valueTerm: number;
    let inlined: Buffer | null = null;
    if (command.value.byteLength <= INLINE_VALUE_BYTES_MAX) {
      inlined = this.#sealCounted(key, command.value);
      valueTerm = recordTerm(inlined);
    } else valueTerm = recordTerm(this.#putSealed(key, command.value, null));
    if (command.expireAtMs !== null) this.#records.put(expiryKey(command.expireAtMs, secret.key, version), EMPTY);
    secret.versions.push({
      version,
      createdAtMs: command.nowMs,
      expireAtMs: command.expireAtMs,
      wiped: false,
      expired: false,
      writer,
      valueBytes: command.value.byteLength,
      valueTerm,
    });
    this.#charge(writer, 0, command.value.byteLength);
    secret.lastVersion = version;
    secret.deleted = false;
    secret.updatedAtMs = command.nowMs;
    if (current !== 0) secret.labels.set('previous', current);
    secret.labels.set('current', version);
    // Keep the newest `versionsKept`; older ones are wiped and forgotten, with their labels.
    const oldest = version - secret.versionsKept;
    for (const old of secret.versions) {
      if (old.version > oldest) continue;
      this.#wipe(secret, old);
      for (const [label, at] of secret.labels) if (at === old.version) secret.labels.delete(label);
    }
    secret.versions = secret.versions.filter((v) => v.version > oldest);
    // The value that was inside, if still kept, moves out to its own record (the same bytes: it
    // was sealed for that record's key), and the new one takes its place.
    if (secret.inline !== null) this.#records.put(valueKey(secret.key, secret.inline.version), secret.inline.sealed);
    secret.inline = inlined === null ? null : { version, sealed: inlined };
    this.#save(secret);
    return { ok: true, version };
  }

  /**
   * A batch: each item authorized (if it has an actor) and put in order, inside a savepoint of the
   * write set; the first item refused rolls back every write of the batch (records, usage
   * counters, counts of records per term) and is the batch's result, naming the item. The seal
   * counter is not rolled back: a refused batch's seals are dropped, and its nonces never reused.
   */
  #putBatch(
    command: Extract<SecretCommand, { op: 'put-batch' }>,
    actor: Actor | null,
    quotaExempt: boolean,
    authority: Authority | null,
  ): SecretResult {
    assert(
      actor === null || authority !== null,
      "a client's batch of puts applies with the authority to check its items",
    );
    const versions: number[] = [];
    this.#records.savepoint();
    let released = false;
    try {
      for (let k = 0; k < command.items.length; k++) {
        const item = command.items[k]!;
        const put: Extract<SecretCommand, { op: 'put' }> = { op: 'put', ...item, nowMs: command.nowMs };
        // The name's key is made once for the item (an HMAC per segment): to load, and to create.
        const nk = nameKey(this.#keys.indexKey, item.name);
        const secret = this.#loadKey(nk, 'write');
        const refused =
          actor === null
            ? null
            : capabilitiesRefusal(authority!, actor, item.name, putCapabilities(secret, item.versionsKept));
        const result = refused ?? this.#put(put, actor?.name ?? null, quotaExempt, { secret, nk });
        if (!result.ok) return batchItemRefusal(result, k, command.items.length, item.name);
        versions.push(result.version);
      }
      this.#records.release();
      released = true;
    } finally {
      if (!released) {
        this.#records.rollback();
        // The batch's changes to the counts go with its records.
        this.#termDeltas.clear();
      }
    }
    return { ok: true, version: versions[versions.length - 1]!, versions };
  }

  /**
   * The same check against this manager's state, for the server edge to refuse early (before a
   * doomed put takes a log entry); the verdict that counts is the one where the command applies.
   */
  putQuotaProblem(writer: string, command: Extract<SecretCommand, { op: 'put' }>): Refusal | null {
    return this.#quotaProblem(writer, this.#load(command.name, 'read'), command);
  }

  /**
   * Why a put by `writer` would take it past a quota (QUOTA_EXCEEDED, naming the quota and its
   * limit), or null. A new secret counts once for its
   * creator; the value's bytes count for the writer, less what the versions it drops (versions
   * kept) held for the same writer, so a put that frees as much as it adds always passes.
   */
  #quotaProblem(
    writer: string,
    secret: SecretRecord | undefined,
    command: Extract<SecretCommand, { op: 'put' }>,
  ): Refusal | null {
    const usage = this.usage(writer);
    if (secret === undefined && usage.secrets >= this.#identitySecretsMax) {
      return refusedAs(
        'QUOTA_EXCEEDED',
        `identity "${writer}" has created ${usage.secrets} secrets, the most one identity may (IDENTITY_SECRETS_MAX); write new versions of its secrets instead (a name stays taken after delete and destroy)`,
        { quota: 'IDENTITY_SECRETS_MAX', limit: String(this.#identitySecretsMax) },
      );
    }
    let freed = 0;
    if (secret !== undefined) {
      const oldest = secret.lastVersion + 1 - (command.versionsKept ?? secret.versionsKept);
      for (const v of secret.versions)
        if (v.version <= oldest && v.writer === writer && !v.wiped) freed += v.valueBytes;
    }
    const after = usage.valueBytes - freed + command.value.byteLength;
    if (after > this.#identityValueBytesMax && after > usage.valueBytes) {
      return refusedAs(
        'QUOTA_EXCEEDED',
        `identity "${writer}" holds ${formatBytes(usage.valueBytes)} of secret values; this value of ${formatBytes(command.value.byteLength)} would take it past ${formatBytes(this.#identityValueBytesMax)}, the most one identity may (IDENTITY_VALUE_BYTES_MAX); destroy old versions or lower versions_kept`,
        { quota: 'IDENTITY_VALUE_BYTES_MAX', limit: String(this.#identityValueBytesMax) },
      );
    }
    return null;
  }

  /**
   * The key of an identity's usage record. Kept per identity (a put reads and writes it up to four
   * times; its tag is an HMAC): for the index key it was made under, at most USAGE_KEYS_CACHED.
   */
  #usageKey(identity: string): Buffer {
    const indexKey = this.#keys.indexKey;
    if (this.#usageKeysUnder !== indexKey || this.#usageKeys.size >= USAGE_KEYS_CACHED) {
      this.#usageKeys.clear();
      this.#usageKeysUnder = indexKey;
    }
    let key = this.#usageKeys.get(identity);
    if (key === undefined) {
      key = Buffer.concat([USAGE, keyedTag(indexKey, 'identity', identity)]);
      this.#usageKeys.set(identity, key);
    }
    return key;
  }

  #charge(identity: string | null, secrets: number, valueBytes: number): void {
    if (identity === null) return;
    const usage = this.usage(identity);
    const after: [number, number] = [usage.secrets + secrets, usage.valueBytes + valueBytes];
    assert(after[0] >= 0 && after[1] >= 0, () => `the usage of an identity went below zero: ${after.join(', ')}`);
    if (after[0] === 0 && after[1] === 0) this.#records.del(this.#usageKey(identity));
    else this.#records.put(this.#usageKey(identity), encodeUsage(after[0], after[1]));
  }

  /** Deletes a version's value record (disks hold only its ciphertext, and LevelDB compacts it away) and uncharges its writer. */
  #wipe(secret: SecretRecord, version: VersionRecord): void {
    if (version.wiped) return;
    this.#charge(version.writer, 0, -version.valueBytes);
    if (secret.inline?.version === version.version) {
      this.#countTerm(recordTerm(secret.inline.sealed), -1);
      secret.inline = null;
    } else this.#delSealed(valueKey(secret.key, version.version), version.valueTerm);
    if (version.expireAtMs !== null) this.#records.del(expiryKey(version.expireAtMs, secret.key, version.version));
    version.wiped = true;
  }

  /**
   * Seals `plaintext` as the record at `key` under the active term, keeping the count of records
   * per term; returns the sealed bytes. `oldTerm`: the term of the record it replaces, if the
   * caller knows it (null: there is none), else it is read.
   */
  #putSealed(key: Uint8Array, plaintext: Uint8Array, oldTerm?: number | null): Buffer {
    if (oldTerm === undefined) {
      const old = this.#records.get(key);
      oldTerm = old === undefined ? null : recordTerm(old);
    }
    if (oldTerm !== null) this.#countTerm(oldTerm, -1);
    const sealed = this.#sealCounted(key, plaintext);
    this.#records.put(key, sealed);
    return sealed;
  }

  /** Seals `plaintext` for the record at `key` under the active term, and counts it there (where it is kept is the caller's). */
  #sealCounted(key: Uint8Array, plaintext: Uint8Array): Buffer {
    const sealed = this.#seal(key, plaintext);
    this.#countTerm(recordTerm(sealed), 1);
    return sealed;
  }

  /** Deletes the sealed record at `key`; `term`: the term it is sealed under, if the caller knows it (else it is read). */
  #delSealed(key: Uint8Array, term: number | null = null): void {
    if (term === null) {
      const old = this.#records.get(key);
      if (old === undefined) return;
      term = recordTerm(old);
    }
    this.#countTerm(term, -1);
    this.#records.del(key);
  }

  /** Counts a record more (1) or less (-1) under `term`: written when the command ends (#writeTermCounts). */
  #countTerm(term: number, delta: number): void {
    this.#termDeltas.set(term, (this.#termDeltas.get(term) ?? 0) + delta);
  }

  /**
   * Writes the command's changes to the counts of records per term, once per term: a put seals
   * its value and its secret's record and drops the record it replaces and the oldest value, so
   * under one term its changes add up to nothing, and four reads and writes of the count became
   * none (about 8% of a put's apply in a `--cpu-prof` of an in-process run).
   */
  #writeTermCounts(): void {
    for (const [term, delta] of this.#termDeltas) {
      if (delta === 0) continue;
      const key = termCountKey(term);
      const stored = this.#records.get(key);
      const count = (stored === undefined ? 0 : Buffer.from(stored).readUIntBE(0, 6)) + delta;
      assert(count >= 0, () => `the count of records sealed under keyring term ${term} went below zero`);
      if (count === 0) this.#records.del(key);
      else {
        const value = Buffer.alloc(6);
        value.writeUIntBE(count, 0, 6);
        this.#records.put(key, value);
      }
    }
    this.#termDeltas.clear();
  }

  /**
   * How many records are sealed under `term` (a term is destroyed only at 0: see the barrier's
   * destroy, and `resealCommand`).
   */
  recordsSealedUnder(term: number): number {
    const stored = this.#records.get(termCountKey(term));
    return stored === undefined ? 0 : Buffer.from(stored).readUIntBE(0, 6);
  }

  /** Terms that still seal records, with their counts, oldest first. */
  async termsInUse(): Promise<Array<{ term: number; records: number }>> {
    const out: Array<{ term: number; records: number }> = [];
    for await (const record of this.#records.range({ gte: TERM_COUNT, lt: prefixEnd(TERM_COUNT)! }))
      out.push({
        term: Buffer.from(record.key).readUInt32BE(TERM_COUNT.length),
        records: Buffer.from(record.value).readUIntBE(0, 6),
      });
    return out;
  }

  /**
   * A re-seal of up to `limit` records sealed under terms older than `belowTerm`, found from
   * `after` on (a key; the leader keeps the cursor between batches), or null if none is left.
   */
  async resealCommand(
    belowTerm: number,
    after: Uint8Array | null,
    limit = RESEAL_RECORDS_MAX,
  ): Promise<{ command: Extract<SecretCommand, { op: 'reseal' }>; last: Uint8Array } | null> {
    const keys: Uint8Array[] = [];
    for (const kind of [META, VALUE]) {
      const gte = after !== null && Buffer.compare(after, kind) > 0 ? Buffer.concat([after, Buffer.of(0)]) : kind;
      for await (const record of this.#records.range({ gte, lt: prefixEnd(kind)! })) {
        if (recordTerm(record.value) >= belowTerm) continue;
        keys.push(Buffer.from(record.key));
        if (keys.length >= limit) break;
      }
      if (keys.length >= limit) break;
    }
    if (keys.length === 0) return null;
    return { command: { op: 'reseal', belowTerm, keys }, last: keys[keys.length - 1]! };
  }

  /** A value record now sealed under `term`: its secret's record says so (a wipe trusts it). */
  #valueResealed(key: Uint8Array, term: number): void {
    const nk = Buffer.from(key.subarray(VALUE.length, key.byteLength - 4));
    const number = Buffer.from(key.buffer, key.byteOffset, key.byteLength).readUInt32BE(key.byteLength - 4);
    const secret = this.#loadKey(nk, 'write');
    const version = secret?.versions.find((v) => v.version === number && !v.wiped);
    assert(version !== undefined, "a stored value record belongs to a kept version of its secret's record");
    version.valueTerm = term;
    this.#save(secret!);
  }

  #seal(key: Uint8Array, plaintext: Uint8Array): Buffer {
    return sealRecord(this.#keys, key, plaintext, { index: this.#index, seq: this.#seq++ });
  }

  #save(secret: SecretRecord): void {
    const inline = secret.inline;
    const active = this.#keys.activeTerm;
    if (inline !== null && recordTerm(inline.sealed) !== active) {
      // A value inside is kept under the term its secret's record is sealed under, so a re-seal
      // finds it by that record's term alone (resealCommand reads no record's content).
      const key = valueKey(secret.key, inline.version);
      const plaintext = openRecord(this.#keys, key, inline.sealed, 'a secret value being re-sealed');
      this.#countTerm(recordTerm(inline.sealed), -1);
      inline.sealed = this.#sealCounted(key, plaintext);
      plaintext.fill(0);
      const version = secret.versions.find((v) => v.version === inline.version);
      assert(version !== undefined && !version.wiped, "a secret's inline value is one of its kept versions");
      version.valueTerm = active;
    }
    const key = metaKey(secret.key);
    const existed = secret.sealedTerm !== null;
    const sealed = this.#putSealed(key, this.#encodeMeta(secret), secret.sealedTerm);
    secret.sealedTerm = recordTerm(sealed);
    // Kept as it is (no caller changes a record after saving it), unless it is a new secret's: a
    // load of many new secrets would only churn the records kept (a run of 20,000 new secrets
    // spent 15-25% more CPU keeping them, in the young generation's copies), and a secret written
    // twice is kept from its second write on.
    if (existed) this.#keepOpened(secret.key.toString('latin1'), sealed, secret);
  }

  #encodeMeta(secret: SecretRecord): Buffer {
    return packr.pack([
      secret.name,
      secret.lastVersion,
      [...secret.labels],
      secret.deleted,
      secret.versionsKept,
      secret.createdAtMs,
      secret.updatedAtMs,
      secret.creator,
      secret.versions.map((v) => [
        v.version,
        v.createdAtMs,
        v.expireAtMs,
        v.wiped,
        v.expired,
        v.writer,
        v.valueBytes,
        v.valueTerm,
      ]),
      secret.inline === null ? null : [secret.inline.version, secret.inline.sealed],
    ]);
  }

  /** A secret's record, opened (throws CryptoError if the record was altered or moved). */
  #load(name: string, use: RecordUse): SecretRecord | undefined {
    return this.#loadKey(nameKey(this.#keys.indexKey, name), use);
  }

  /**
   * The secret's record, opened, or undefined. `write`: the caller changes it and saves it (or
   * drops it): it is the caller's own, taken out of the records kept opened (#save keeps it
   * again). `read`: the caller only reads it, and may be given the very object kept.
   */
  #loadKey(nk: Buffer, use: RecordUse): SecretRecord | undefined {
    const key = metaKey(nk);
    const sealed = this.#records.get(key);
    if (sealed === undefined) return undefined;
    const k = nk.toString('latin1');
    const kept = this.#opened.get(k);
    if (kept !== undefined && Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength).equals(kept.sealed)) {
      if (use === 'write') this.#opened.delete(k);
      return kept.secret;
    }
    const secret = this.#decodeMeta(nk, key, sealed);
    if (use === 'read') this.#keepOpened(k, sealed, secret);
    return secret;
  }

  /** Keeps `secret` as opened from `sealed`; nobody changes it while it is kept (see #loadKey). */
  #keepOpened(k: string, sealed: Uint8Array, secret: SecretRecord): void {
    this.#opened.delete(k);
    if (this.#opened.size >= OPENED_SECRETS_CACHED) this.#opened.delete(this.#opened.keys().next().value!);
    this.#opened.set(k, { sealed, secret });
  }

  #decodeMeta(nk: Buffer, key: Uint8Array, sealed: Uint8Array): SecretRecord {
    const [name, lastVersion, labels, deleted, versionsKept, createdAtMs, updatedAtMs, creator, versions, inline] =
      packr.unpack(openRecord(this.#keys, key, sealed, "a secret's record")) as [
        string,
        number,
        Array<[string, number]>,
        boolean,
        number,
        number,
        number,
        string | null,
        Array<[number, number, number | null, boolean, boolean, string | null, number, (number | null)?]>,
        // Absent in a record written before values were kept inside.
        ([number, Uint8Array] | null)?,
      ];
    return {
      name,
      key: nk,
      lastVersion,
      labels: new Map(labels),
      deleted,
      versionsKept,
      createdAtMs,
      updatedAtMs,
      creator,
      sealedTerm: recordTerm(sealed),
      inline: inline == null ? null : { version: inline[0], sealed: Buffer.from(inline[1]) },
      versions: versions.map(([version, created, expireAtMs, wiped, expired, writer, valueBytes, valueTerm]) => ({
        version,
        createdAtMs: created,
        expireAtMs,
        wiped,
        expired,
        writer,
        valueBytes,
        valueTerm: valueTerm ?? null,
      })),
    };
  }

  /**
   * A version's value: by number, by label, or the current one. Throws RefusalError. The value is
   * opened into a buffer of its own: the caller wipes it (fill(0)) once the reply is written.
   */
  read(
    name: string,
    selector: { version?: number; label?: string },
    nowMs: number,
  ): { value: Buffer; version: number } {
    const secret = this.#load(name, 'read');
    if (secret === undefined) throw RefusalError.as('SECRET_NOT_FOUND', `secret "${name}" does not exist`);
    if (secret.deleted) throw new RefusalError('DELETED', `secret "${name}" is deleted; undelete it to read it`);
    let number = selector.version;
    if (number === undefined) {
      const label = selector.label ?? 'current';
      number = secret.labels.get(label);
      if (number === undefined)
        throw RefusalError.as('LABEL_NOT_FOUND', `secret "${name}" has no label "${label}"`, { label });
    }
    const version = secret.versions.find((v) => v.version === number);
    if (version === undefined) {
      throw RefusalError.as(
        'VERSION_NOT_FOUND',
        number > secret.lastVersion || number < 1
          ? `secret "${name}" has no version ${number}`
          : `secret "${name}": version ${number} is no longer kept (the last ${secret.versionsKept} are)`,
        { version: String(number) },
      );
    }
    if (version.expired || (version.expireAtMs !== null && version.expireAtMs <= nowMs))
      throw new RefusalError('EXPIRED', `secret "${name}": version ${number} expired`);
    if (version.wiped) throw new RefusalError('DESTROYED', `secret "${name}": version ${number} was destroyed`);
    const key = valueKey(secret.key, number);
    const sealed = secret.inline?.version === number ? secret.inline.sealed : this.#records.get(key);
    assert(sealed !== undefined, () => `the value record of a kept version (${number}) is missing`);
    return { value: openRecord(this.#keys, key, sealed, 'a secret value'), version: number };
  }

  metadata(name: string): SecretMetadata {
    const secret = this.#load(name, 'read');
    if (secret === undefined) throw RefusalError.as('SECRET_NOT_FOUND', `secret "${name}" does not exist`);
    return metadataOf(secret);
  }

  versions(name: string, nowMs: number): VersionMetadata[] {
    const secret = this.#load(name, 'read');
    if (secret === undefined) throw RefusalError.as('SECRET_NOT_FOUND', `secret "${name}" does not exist`);
    return secret.versions.map((v) => ({
      version: v.version,
      createdAtMs: v.createdAtMs,
      expireAtMs: v.expireAtMs,
      destroyed: v.wiped && !v.expired,
      expired: v.expired || (v.expireAtMs !== null && v.expireAtMs <= nowMs),
      labels: [...secret.labels].filter(([, at]) => at === v.version).map(([label]) => label),
    }));
  }

  /**
   * Names under a prefix, after `after` (the page token), at most `limit`. The order is the
   * store's key order (the names' keyed tags), stable but not alphabetical: the store does not
   * know the names' order. Cost: the records under the prefix's last whole segment are read.
   */
  async list(
    prefix: string,
    after: string,
    limit: number,
    includeDeleted: boolean,
    visible: (name: string) => boolean = () => true,
  ): Promise<{ secrets: SecretMetadata[]; next: string }> {
    const slash = prefix.lastIndexOf('/');
    const base = Buffer.concat([META, segmentsKey(this.#keys.indexKey, slash < 0 ? '' : prefix.slice(0, slash))]);
    const lt = prefixEnd(base);
    const start =
      after === '' || secretNameProblem(after) !== null
        ? base
        : Buffer.concat([metaKey(nameKey(this.#keys.indexKey, after)), Buffer.of(0)]);
    const gte = Buffer.compare(start, base) > 0 ? start : base;
    const page: SecretMetadata[] = [];
    for await (const record of this.#records.range(lt === undefined ? { gte } : { gte, lt })) {
      const nk = Buffer.from(record.key.subarray(META.length));
      const secret = this.#decodeMeta(nk, record.key, record.value);
      if (!secret.name.startsWith(prefix) || (secret.deleted && !includeDeleted) || !visible(secret.name)) continue;
      if (page.length === limit) return { secrets: page, next: page[page.length - 1]!.name };
      page.push(metadataOf(secret));
    }
    return { secrets: page, next: '' };
  }

  /** The earliest expiry still to wipe (for the leader's sweep), or null. */
  async nextExpiryMs(): Promise<number | null> {
    for await (const record of this.#records.range({ gte: EXPIRY, lt: prefixEnd(EXPIRY)!, limit: 1 }))
      return Number(Buffer.from(record.key).readBigUInt64BE(EXPIRY.length));
    return null;
  }

  /** A sweep of versions expired by `nowMs` (at most EXPIRY_SWEEP_VERSIONS_MAX), or null if none is due. */
  async expiryCommand(nowMs: number): Promise<Extract<SecretCommand, { op: 'expire' }> | null> {
    const lt = expiryKey(nowMs + 1, Buffer.alloc(0), 0).subarray(0, EXPIRY.length + 8);
    const targets: Array<[string, number]> = [];
    for await (const record of this.#records.range({ gte: EXPIRY, lt, limit: EXPIRY_SWEEP_VERSIONS_MAX })) {
      const key = Buffer.from(record.key);
      const nk = key.subarray(EXPIRY.length + 8, key.length - 4);
      const secret = this.#loadKey(Buffer.from(nk), 'read');
      if (secret !== undefined) targets.push([secret.name, key.readUInt32BE(key.length - 4)]);
    }
    return targets.length === 0 ? null : { op: 'expire', nowMs, targets };
  }

  /** How many secrets there are (reads every metadata key: for reports, not for requests). */
  async count(): Promise<number> {
    let n = 0;
    for await (const _ of this.#records.range({ gte: META, lt: prefixEnd(META)! })) n++;
    return n;
  }

  /**
   * Every record of the part as stored (sealed), in key order, as of this call (a point-in-time
   * read: later applies do not show through): what a snapshot streams to another manager.
   */
  records(): AsyncIterableIterator<StateRecord> {
    return this.#records.range({ gte: PART_PREFIX, lt: prefixEnd(PART_PREFIX)! });
  }

  /** The same records a page at a time (what a snapshot streams). */
  recordPages(): AsyncIterableIterator<readonly StateRecord[]> {
    return this.#records.pages({ gte: PART_PREFIX, lt: prefixEnd(PART_PREFIX)! });
  }

  /** Whether a record streamed from another manager may be one of this part's (its key says so). */
  static holdsKey(key: Uint8Array): boolean {
    return key.byteLength > PART_PREFIX.byteLength && key[0] === PART_PREFIX[0];
  }

  /** The image: every record of the part, in key order, as stored (sealed): equal states give equal images. */
  async snapshot(): Promise<unknown> {
    const records: Array<[Uint8Array, Uint8Array]> = [];
    for await (const record of this.#records.range({ gte: PART_PREFIX, lt: prefixEnd(PART_PREFIX)! }))
      records.push([record.key, record.value]);
    return records;
  }

  /**
   * Replaces the store's content with an image's records (checked to be records of this part), of
   * the state at log index `index`. An image of the version before the state store (rows of
   * plaintext secrets) is converted: its records sealed at `index`, as every manager does alike.
   */
  async restore(image: unknown, index: number): Promise<void> {
    if (!Array.isArray(image)) throw new TypeError('the secrets image is not a list of records');
    this.#index = index;
    this.#seq = 0;
    const rows = image as unknown[];
    const records =
      rows.length > 0 && Array.isArray(rows[0]) && typeof rows[0][0] === 'string'
        ? this.#convertRows(rows as V1Row[])
        : checkedRecords(rows);
    await this.#records.replaceAll(
      (async function* () {
        for (const [key, value] of records) yield { key, value };
      })(),
    );
  }

  /** The records of an image of rows (before the state store), sealed here at the restore's index. */
  #convertRows(rows: readonly V1Row[]): Array<[Uint8Array, Uint8Array]> {
    const out = new Map<string, [Uint8Array, Uint8Array]>();
    const usage = new Map<string, [number, number]>();
    const charge = (identity: unknown, secrets: number, bytes: number): void => {
      if (typeof identity !== 'string') return;
      const u = usage.get(identity) ?? [0, 0];
      usage.set(identity, [u[0] + secrets, u[1] + bytes]);
    };
    const put = (key: Buffer, value: Uint8Array): void => {
      out.set(key.toString('latin1'), [key, value]);
    };
    for (const [
      name,
      versions,
      lastVersion,
      labels,
      deleted,
      versionsKept,
      createdAtMs,
      updatedAtMs,
      creator,
    ] of rows) {
      if (secretNameProblem(name) !== null) throw new TypeError('the secrets image holds a bad name');
      const nk = nameKey(this.#keys.indexKey, name);
      charge(creator, 1, 0);
      const secret: SecretRecord = {
        name,
        key: nk,
        versions: [],
        lastVersion,
        labels: new Map(labels),
        deleted,
        versionsKept,
        createdAtMs,
        updatedAtMs,
        creator: typeof creator === 'string' ? creator : null,
        sealedTerm: null,
        inline: null,
      };
      for (const [version, value, created, expireAtMs, expired, writer] of [...versions].sort((a, b) => a[0] - b[0])) {
        secret.versions.push({
          version,
          createdAtMs: created,
          expireAtMs,
          wiped: value === null,
          expired,
          writer: typeof writer === 'string' ? writer : null,
          valueBytes: value?.byteLength ?? 0,
          valueTerm: value === null ? null : this.#keys.activeTerm,
        });
        if (value === null) continue;
        charge(writer, 0, value.byteLength);
        const key = valueKey(nk, version);
        const sealed = this.#seal(key, value);
        assert(recordTerm(sealed) === this.#keys.activeTerm, 'an imported value is sealed under the active term');
        put(key, sealed);
        if (expireAtMs !== null) put(expiryKey(expireAtMs, nk, version), EMPTY);
      }
      const key = metaKey(nk);
      put(key, this.#seal(key, this.#encodeMeta(secret)));
    }
    for (const [identity, counts] of usage) put(this.#usageKey(identity), encodeUsage(counts[0], counts[1]));
    const sealed = [...out.keys()].filter((k) => k.startsWith('sm') || k.startsWith('sv')).length;
    if (sealed > 0) {
      const count = Buffer.alloc(6);
      count.writeUIntBE(sealed, 0, 6);
      put(termCountKey(this.#keys.activeTerm), count);
    }
    return [...out.values()].sort(([a], [b]) => Buffer.compare(a, b));
  }
}

/** A secret as an image before the state store held it: `[name, versions, lastVersion, labels, deleted, versionsKept, created, updated, creator?]`. */
type V1Row = [
  string,
  Array<[number, Uint8Array | null, number, number | null, boolean, unknown?]>,
  number,
  Array<[string, number]>,
  boolean,
  number,
  number,
  number,
  unknown?,
];

/** A usage record: secrets created and value bytes held, 6 bytes each (big-endian). */
function encodeUsage(secrets: number, valueBytes: number): Buffer {
  const value = Buffer.alloc(12);
  value.writeUIntBE(secrets, 0, 6);
  value.writeUIntBE(valueBytes, 6, 6);
  return value;
}

function checkedRecords(rows: readonly unknown[]): Array<[Uint8Array, Uint8Array]> {
  for (const record of rows) {
    if (
      !Array.isArray(record) ||
      record.length !== 2 ||
      !(record[0] instanceof Uint8Array) ||
      !(record[1] instanceof Uint8Array) ||
      record[0][0] !== PART_PREFIX[0]
    )
      throw new TypeError('the secrets image holds a record that is not one of this part');
  }
  return rows as Array<[Uint8Array, Uint8Array]>;
}

function isReservedLabel(label: string): boolean {
  return (RESERVED_LABELS as readonly string[]).includes(label);
}

function metadataOf(secret: SecretRecord): SecretMetadata {
  return {
    name: secret.name,
    currentVersion: secret.labels.get('current') ?? 0,
    lastVersion: secret.lastVersion,
    versionsKept: secret.versionsKept,
    deleted: secret.deleted,
    createdAtMs: secret.createdAtMs,
    updatedAtMs: secret.updatedAtMs,
    labels: [...secret.labels],
  };
}

/** The capabilities a put needs on a secret as it is: `delete` too when it would wipe kept versions or bring the secret back. */
function putCapabilities(secret: SecretRecord | undefined, versionsKept: number | null): Array<'write' | 'delete'> {
  const wipes = secret !== undefined && versionsKept !== null && versionsKept < secret.versions.length;
  return wipes || secret?.deleted === true ? ['write', 'delete'] : ['write'];
}

/** The refusal of the first capability the actor's policies do not allow on `name`, or null. */
function capabilitiesRefusal(
  authority: Authority,
  actor: Actor,
  name: string,
  capabilities: readonly Capability[],
): Refusal | null {
  // A static database role's password: only its rotation writes it (a client's value, or a
  // label moved, would have readers use a password the database does not accept).
  if (capabilities.includes('write') && STATIC_SECRET_NAME_PATTERN.test(name))
    return refusedAs(
      'NAME_RESERVED',
      `"${name}" holds a static database role's password: only its rotation writes it (coffer db rotate)`,
      { path: name },
    );
  for (const capability of capabilities) {
    if (!authority.decide(actor.name, capability, name).allowed)
      return refusedAs('POLICY_DENIED', `identity "${actor.name}" may not ${capability} "${name}"`, {
        capability,
        path: name,
      });
  }
  return null;
}

/** An item's refusal as the batch's: the same code and reason code, the item named (from 1) in the message and metadata. */
function batchItemRefusal(refused: Refusal, k: number, count: number, name: string): Refusal {
  return {
    ...refused,
    reason: `item ${k + 1} of ${count} ("${name}"): ${refused.reason}; no item of the batch was applied`,
    metadata: { ...refused.metadata, item: String(k + 1) },
  };
}

/** A batch item, checked as a put is; or why not. */
function checkedBatchItem(value: unknown, nowMs: number): PutBatchItem | string {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return 'a batch item is a record';
  const c = value as Record<string, unknown>;
  const extra = Object.keys(c).find((k) => !BATCH_ITEM_FIELDS.has(k));
  if (extra !== undefined) return `a batch item has no field ${JSON.stringify(extra.slice(0, 40))}`;
  const checked = checkedSecretCommand('secret.put', { ...c, op: 'put', nowMs });
  if (typeof checked === 'string') return checked;
  if (checked.op !== 'put') return 'a batch item is a put';
  const { name, value: v, cas, expireAtMs, versionsKept } = checked;
  return { name, value: v, cas, expireAtMs, versionsKept };
}
const BATCH_ITEM_FIELDS: ReadonlySet<string> = new Set(['name', 'value', 'cas', 'expireAtMs', 'versionsKept']);

/** A decoded command, checked field by field, or why it is not one. */
function checkedSecretCommand(kind: string, value: unknown): SecretCommand | string {
  if (typeof value !== 'object' || value === null) return `the ${kind} command is not a record`;
  const c = value as Record<string, unknown>;
  if (kind !== `secret.${String(c['op'])}`) return `the ${kind} command names another operation`;
  const int = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);
  if (c['op'] === 'expire') {
    if (!int(c['nowMs'])) return 'an expiry sweep needs a time';
    const targets = c['targets'];
    if (
      !Array.isArray(targets) ||
      targets.length > EXPIRY_SWEEP_VERSIONS_MAX ||
      !targets.every(
        (t) =>
          Array.isArray(t) &&
          t.length === 2 &&
          typeof t[0] === 'string' &&
          secretNameProblem(t[0]) === null &&
          int(t[1]) &&
          t[1] > 0,
      )
    )
      return `an expiry sweep names at most ${EXPIRY_SWEEP_VERSIONS_MAX} versions as [name, version]`;
    return { op: 'expire', nowMs: c['nowMs'], targets: targets as Array<[string, number]> };
  }
  if (c['op'] === 'reseal') {
    const { belowTerm, keys } = c;
    if (!(int(belowTerm) && belowTerm > 0)) return 'a re-seal needs a term';
    if (
      !Array.isArray(keys) ||
      keys.length > RESEAL_RECORDS_MAX ||
      !keys.every(
        (k) =>
          k instanceof Uint8Array && k.byteLength > 2 && (k[1] === META[1] || k[1] === VALUE[1]) && k[0] === META[0],
      )
    )
      return `a re-seal names at most ${RESEAL_RECORDS_MAX} keys of sealed records`;
    return { op: 'reseal', belowTerm, keys };
  }
  if (c['op'] === 'put-batch') {
    const { items, nowMs } = c;
    if (!int(nowMs)) return 'a batch of puts needs a time';
    if (!Array.isArray(items) || items.length === 0 || items.length > PUT_BATCH_ITEMS_MAX)
      return `a batch of puts has 1 to ${PUT_BATCH_ITEMS_MAX} items`;
    const checked: PutBatchItem[] = [];
    let bytes = 0;
    for (let k = 0; k < items.length; k++) {
      const item = checkedBatchItem(items[k], nowMs);
      if (typeof item === 'string') return `item ${k + 1} of the batch: ${item}`;
      bytes += putBatchItemBytes(item.name, item.value);
      checked.push(item);
    }
    if (bytes > PUT_BATCH_BYTES_MAX)
      return `a batch of puts has at most ${PUT_BATCH_BYTES_MAX} bytes of names and values`;
    return { op: 'put-batch', items: checked, nowMs };
  }
  const name = c['name'];
  if (typeof name !== 'string') return 'a secret command needs a name';
  const nameProblem = secretNameProblem(name);
  if (nameProblem !== null) return nameProblem;
  switch (c['op']) {
    case 'put': {
      const { value: v, cas, expireAtMs, versionsKept, nowMs } = c;
      if (!(v instanceof Uint8Array)) return 'a put needs a value';
      if (v.byteLength > SECRET_VALUE_BYTES_MAX) return `a secret value has at most ${SECRET_VALUE_BYTES_MAX} bytes`;
      if (!int(nowMs)) return 'a put needs a time';
      if (cas !== null && !(int(cas) && cas >= 0)) return 'cas is a version number (0: create only)';
      if (expireAtMs !== null && !(int(expireAtMs) && expireAtMs <= nowMs + TTL_MS_MAX))
        return 'an expiry is at most ten years ahead';
      if (versionsKept !== null && !(int(versionsKept) && versionsKept >= 1 && versionsKept <= VERSIONS_KEPT_MAX))
        return `versions kept is between 1 and ${VERSIONS_KEPT_MAX}`;
      return { op: 'put', name, value: v, cas, expireAtMs, versionsKept, nowMs };
    }
    case 'delete':
    case 'undelete':
      return { op: c['op'], name };
    case 'destroy': {
      const versions = c['versions'];
      if (!Array.isArray(versions) || versions.length === 0 || !versions.every((n) => int(n) && n > 0))
        return 'destroy needs version numbers';
      return { op: 'destroy', name, versions };
    }
    case 'label':
    case 'unlabel': {
      const label = c['label'];
      if (typeof label !== 'string' || !LABEL_PATTERN.test(label)) return labelProblem(String(label)) ?? 'bad label';
      if (c['op'] === 'unlabel') return { op: 'unlabel', name, label };
      const version = c['version'];
      if (!(int(version) && version > 0)) return 'a label needs a version';
      return { op: 'label', name, label, version };
    }
    default:
      return `unknown secret operation ${String(c['op'])}`;
  }
}
