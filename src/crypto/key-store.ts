import { open as openFile, readFile, rename, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { packr } from '../codec/msgpack.ts';
import { frame, unframe } from '../codec/frame.ts';
import { CorruptRecordError } from '../codec/errors.ts';
import { reached } from '../util/crash-points.ts';
import { open, seal } from './aead.ts';
import { CryptoError } from './errors.ts';
import { unwrapRootKey, wrapRootKey } from './root-key.ts';

/** How a manager's copy of the root key is protected at rest. */
export type KeyProtection = 'key-file' | 'unlock-key';

/** Encryptions reserved on disk at a time; a restart forfeits at most this many uses of a key. */
export const KEY_USES_RESERVATION_BLOCK = 2 ** 16;

interface KeyStoreRecord {
  readonly clusterId: string;
  readonly protection: KeyProtection;
  /** Generation of the root key wrapped here (root-key rotation makes a new one). */
  readonly rootGen: number;
  readonly wrappedRoot: Uint8Array;
  /** Generation of the unlock key the root key is wrapped by (0 with a key file). */
  readonly unlockGen: number;
  /** Encryptions reserved per keyring term: `[term, uses]`. */
  readonly usesReserved: ReadonlyArray<readonly [number, number]>;
  /** This manager's private keys (TLS key, CA key), each sealed under the KEK: `[name, sealed]`. */
  readonly secrets: ReadonlyArray<readonly [string, Uint8Array]>;
}

/**
 * A manager's local, unreplicated key record, in one file (`<data dir>/keys`, named by
 * src/manager/data-dir.ts; `path` here is that file, and its directory is fsynced on each
 * replace): the root key wrapped by the
 * KEK (key file or unlock key), and the encryptions it has reserved per keyring term. It is
 * replaced atomically (write a temporary file, fsync, rename, fsync the directory), so a crash
 * leaves either the old record or the new one.
 */
export class KeyStore {
  /** The key store file. */
  readonly path: string;
  #record: KeyStoreRecord;
  /** Writes run one at a time, each from the record the previous one left. */
  #writing: Promise<void> = Promise.resolve();
  /** The KEK that opens the record, once `unlock` has checked it; replaced by a rewrap. */
  #kek: Buffer | null = null;

  private constructor(path: string, record: KeyStoreRecord) {
    this.path = path;
    this.#record = record;
  }

  static async exists(path: string): Promise<boolean> {
    try {
      await readFile(path);
      return true;
    } catch {
      return false;
    }
  }

  static async create(
    path: string,
    options: {
      clusterId: string;
      rootKey: Uint8Array;
      kek: Uint8Array;
      protection: KeyProtection;
      unlockGen?: number;
      rootGen?: number;
    },
  ): Promise<KeyStore> {
    const record: KeyStoreRecord = {
      clusterId: options.clusterId,
      protection: options.protection,
      rootGen: options.rootGen ?? 1,
      wrappedRoot: wrapRootKey(options.kek, options.rootKey, options.clusterId),
      unlockGen: options.unlockGen ?? 0,
      usesReserved: [],
      secrets: [],
    };
    const store = new KeyStore(path, record);
    await store.#write(() => record, 'create');
    return store;
  }

  static async read(path: string): Promise<KeyStore> {
    let bytes: Buffer;
    try {
      bytes = await readFile(path);
    } catch (error) {
      throw new CryptoError(
        'KEY_STORE_MISSING',
        `${path} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'}); is ${dirname(path)} a manager's data directory?`,
        { cause: error },
      );
    }
    let record: KeyStoreRecord;
    try {
      record = decodeRecord(unframe(bytes, `the key store ${path}`));
    } catch (error) {
      if (error instanceof CorruptRecordError)
        throw new CryptoError(
          'KEY_STORE_CORRUPT',
          `${error.message}; restore it from a backup or rejoin this manager`,
          { cause: error },
        );
      throw error;
    }
    return new KeyStore(path, record);
  }

  get clusterId(): string {
    return this.#record.clusterId;
  }

  get protection(): KeyProtection {
    return this.#record.protection;
  }

  get rootGen(): number {
    return this.#record.rootGen;
  }

  get unlockGen(): number {
    return this.#record.unlockGen;
  }

  /** The root key, unwrapped with the KEK; a wrong KEK gets a clear error and changes nothing. */
  openRoot(kek: Uint8Array): Buffer {
    return unwrapRootKey(
      kek,
      this.#record.wrappedRoot,
      this.clusterId,
      this.protection === 'unlock-key' ? 'unlock key' : 'key file',
    );
  }

  /** Checks the KEK by opening the root key, and keeps it for sealing and rewrapping. */
  unlock(kek: Uint8Array): Buffer {
    const root = this.openRoot(kek);
    this.#kek?.fill(0);
    this.#kek = Buffer.from(kek);
    return root;
  }

  /** The KEK given to `unlock` (or installed by the last rewrap). */
  get kek(): Buffer {
    if (this.#kek === null) throw new TypeError('the key store is not unlocked');
    return this.#kek;
  }

  /** Zeroes the KEK held in memory. */
  forget(): void {
    this.#kek?.fill(0);
    this.#kek = null;
  }

  /** This manager's private keys, opened with the KEK. */
  openSecrets(kek: Uint8Array = this.kek): Map<string, Buffer> {
    return new Map(
      this.#record.secrets.map(([name, sealed]) => [
        name,
        open(kek, sealed, secretAd(this.clusterId, name), `the local secret ${name}`),
      ]),
    );
  }

  /**
   * Stores (or replaces) private keys, all in one atomic write, sealed under the KEK current when
   * the write runs (a rewrap queued before it has then already moved to its new KEK).
   */
  async setSecrets(entries: ReadonlyMap<string, Uint8Array>): Promise<void> {
    await this.#write((current) => {
      const kek = this.kek;
      const kept = current.secrets.filter(([n]) => !entries.has(n));
      const added = [...entries].map(
        ([name, value]) => [name, seal(kek, value, secretAd(this.clusterId, name))] as const,
      );
      return { ...current, secrets: [...kept, ...added] };
    }, 'secret');
  }

  /**
   * Rewraps: a newer root key generation, and/or a new KEK (unlock-key rotation, autolock on;
   * null keeps the current one). The local secrets move to the new KEK in the same atomic write.
   */
  async rewrap(options: {
    rootGen: number;
    rootKey: Uint8Array;
    kek: Uint8Array | null;
    protection: KeyProtection;
    unlockGen: number;
  }): Promise<void> {
    if (options.rootGen < this.rootGen)
      throw new TypeError(`root key generation ${options.rootGen} is older than the stored ${this.rootGen}`);
    let next: Buffer | null = null;
    await this.#write(
      (current) => {
        const old = this.kek;
        next = Buffer.from(options.kek ?? old);
        const kek = next;
        return {
          ...current,
          secrets: current.secrets.map(
            ([name, sealed]) =>
              [
                name,
                seal(
                  kek,
                  open(old, sealed, secretAd(this.clusterId, name), `the local secret ${name}`),
                  secretAd(this.clusterId, name),
                ),
              ] as const,
          ),
          rootGen: options.rootGen,
          wrappedRoot: wrapRootKey(kek, options.rootKey, this.clusterId),
          protection: options.protection,
          unlockGen: options.unlockGen,
        };
      },
      'rewrap',
      () => {
        this.#kek?.fill(0);
        this.#kek = next;
      },
    );
  }

  usesReserved(term: number): number {
    return this.#record.usesReserved.find(([t]) => t === term)?.[1] ?? 0;
  }

  allUsesReserved(): ReadonlyArray<readonly [number, number]> {
    return this.#record.usesReserved;
  }

  /** Records that up to `uses` encryptions under `term` may be made; durable before it resolves. */
  async reserveUses(term: number, uses: number, liveTerms: readonly number[]): Promise<void> {
    await this.#write((current) => {
      const kept = current.usesReserved.filter(([t]) => t !== term && liveTerms.includes(t));
      return { ...current, usesReserved: [...kept, [term, Math.max(uses, this.usesReserved(term))]] };
    }, 'reserve');
  }

  #write(change: (current: KeyStoreRecord) => KeyStoreRecord, step: string, after?: () => void): Promise<void> {
    const run = this.#writing.then(async () => {
      await this.#replace(change(this.#record), step);
      after?.();
    });
    this.#writing = run.catch(() => undefined);
    return run;
  }

  async #replace(record: KeyStoreRecord, step: string): Promise<void> {
    const path = this.path;
    const temporary = `${path}.tmp`;
    const bytes = frame(packr.pack(encodeRecord(record)));
    const file = await openFile(temporary, 'w', 0o600);
    try {
      await file.writeFile(bytes);
      await file.sync();
    } finally {
      await file.close();
    }
    reached(`key-store:${step}:temporary-written`);
    await rename(temporary, path);
    reached(`key-store:${step}:renamed`);
    const dir = await openFile(dirname(path), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    this.#record = record;
  }

  /** Removes a temporary file a crash left behind (the record itself is whole either way). */
  static async tidy(path: string): Promise<void> {
    await unlink(`${path}.tmp`).catch(() => undefined);
  }
}

function secretAd(clusterId: string, name: string): Buffer {
  return Buffer.from(`coffer/1|local-secret|${clusterId}|${name}`, 'utf8');
}

function encodeRecord(record: KeyStoreRecord): unknown[] {
  return [
    1,
    record.clusterId,
    record.protection,
    record.rootGen,
    record.wrappedRoot,
    record.unlockGen,
    record.usesReserved,
    record.secrets,
  ];
}

function decodeRecord(payload: Buffer): KeyStoreRecord {
  const value: unknown = packr.unpack(payload);
  if (!Array.isArray(value) || value[0] !== 1 || value.length !== 8)
    throw new CorruptRecordError('the key store', 'unknown layout');
  const [, clusterId, protection, rootGen, wrappedRoot, unlockGen, usesReserved, secrets] = value as unknown[];
  const ok =
    typeof clusterId === 'string' &&
    (protection === 'key-file' || protection === 'unlock-key') &&
    Number.isSafeInteger(rootGen) &&
    (rootGen as number) >= 1 &&
    wrappedRoot instanceof Uint8Array &&
    Number.isSafeInteger(unlockGen) &&
    Array.isArray(usesReserved) &&
    usesReserved.every(
      (pair) => Array.isArray(pair) && pair.length === 2 && pair.every((n) => Number.isSafeInteger(n)),
    ) &&
    Array.isArray(secrets) &&
    secrets.every(
      (pair) =>
        Array.isArray(pair) && pair.length === 2 && typeof pair[0] === 'string' && pair[1] instanceof Uint8Array,
    );
  if (!ok) throw new CorruptRecordError('the key store', 'a field has the wrong type');
  return {
    clusterId: clusterId as string,
    protection: protection as KeyProtection,
    rootGen: rootGen as number,
    wrappedRoot: wrappedRoot as Uint8Array,
    unlockGen: unlockGen as number,
    usesReserved: usesReserved as Array<[number, number]>,
    secrets: secrets as Array<[string, Uint8Array]>,
  };
}
