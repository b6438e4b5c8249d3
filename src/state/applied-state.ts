import { assert } from '../util/assert.ts';
import type { InnerStateMachine } from '../barrier/barrier.ts';
import { packr } from '../codec/msgpack.ts';
import { packLarge } from '../codec/pack-large.ts';
import { CryptoError } from '../crypto/errors.ts';
import type { RecordKeys } from '../crypto/record-seal.ts';
import { MemoryStateStore } from '../kv/memory-state-store.ts';
import {
  StateStoreError,
  isPage,
  type RecordStream,
  type PreparedContent,
  type StateRecord,
  type StateStore,
  type StateWrite,
} from '../kv/state-store.ts';
import { WriteSet } from '../kv/write-set.ts';
import { AccessState, type AccessApplied, type AccessResult } from './access-state.ts';
import { accessGuard } from './access-guard.ts';
import { ClusterState, type ClusterApplied, type ClusterResult } from './cluster-state.ts';
import {
  SecretStore,
  type IdentityQuotas,
  type SecretApplied,
  type SecretCommand,
  type SecretResult,
} from './secret-store.ts';
import { refusal, type PartPrefix, type StatePart } from './state-part.ts';

/** What applying a command returns: the part's own success shape, or a refusal (the same shape from every part). */
export type AppliedResult = ClusterResult | SecretResult | AccessResult;

/** Any part of the applied state, whatever its commands (what AppliedState's table holds). */
export type AnyStatePart = StatePart<unknown, ClusterApplied | SecretApplied | AccessApplied>;

/** Who holds `sudo` on this path is counted by the quotas of src/state/limits.ts, not limited by them. */
export const QUOTAS_PATH = 'sys/quotas';

/**
 * The state store's record of the last index whose effects it holds (outside the parts' prefixes):
 * every entry up to it, those the barrier kept (key operations) and those that changed nothing
 * included, once the barrier commits with its applied index.
 */
const APPLIED_KEY = Buffer.from([0x00, 0x61]);
/**
 * The barrier's image of everything but the secrets (its key state, the cluster and access parts)
 * as of APPLIED_KEY's index, written in the same batches (`commit`): a restart starts from it and
 * the store, replaying nothing they hold. Sealed as a snapshot is.
 */
const IMAGE_KEY = Buffer.from([0x00, 0x69]);
/** The barrier's marks that change with every command (the last index sealed under each key term), unsealed. */
const MARKS_KEY = Buffer.from([0x00, 0x6d]);

/** What the barrier commits beside the applier's writes (see `commit`). */
export interface SideRecords {
  /** The replica's applied index: every entry up to it is applied (the store's record moves to it). */
  readonly appliedIndex?: number;
  /** A new image of the small parts and key state, or null/absent: the stored one still holds. */
  readonly image?: Uint8Array | null;
  readonly marks?: Uint8Array;
}

/** The version of the whole image `snapshot` writes: `[1, cluster image, secrets image, access image]`. */
const IMAGE_VERSION = 1;
/**
 * The version of the image `descriptor` writes: `[2, cluster image, null, access image]`: the
 * secrets are the state store's records at (or after) the snapshot's index, on this manager's
 * disk or streamed beside the descriptor (`snapshotPages`).
 */
const DESCRIPTOR_VERSION = 2;

/**
 * What a manager replicates behind the barrier: cluster facts, secrets and who may do what, in
 * one image. Each part implements the StatePart contract; this class routes each command to the
 * part its kind's prefix names, and has a command that names a client authorized (by its part,
 * against the access part: certificates and policies) before it applies.
 */
export class AppliedState implements InnerStateMachine<AppliedResult> {
  readonly access = new AccessState(accessGuard);
  // Identities' keys certified by a retired CA go with it, at the same index.
  readonly cluster = new ClusterState({ onCaRetired: (gen) => this.access.retireCaGeneration(gen) });
  readonly secrets: SecretStore;
  /** The parts, in the order of their images in the state image (do not reorder: backups would not restore). */
  readonly parts: readonly AnyStatePart[];
  readonly #partsByPrefix: Map<string, AnyStatePart>;
  /** The applier's writes over the state store: committed after each batch of entries (`commit`). */
  readonly #records: WriteSet;
  readonly #store: StateStore;
  /** The store held the secrets part's effects of every entry up to this index when the replica started. */
  #storedThrough = 0;
  /** The last secrets command applied, and the last one whose effects were committed. */
  #appliedThrough = 0;
  #committedThrough = 0;
  readonly #keys = new AttachedKeys();
  #smallPartsChanged = false;
  #batchedChanges = 0;
  /** Records a leader streamed for a snapshot at `index`, written aside until Raft accepts it. */
  #prepared: { readonly index: number; readonly content: PreparedContent } | null = null;

  /**
   * `store`: where the secrets live (LevelDB on a manager; in memory by default, for tests and
   * tools). `keys`: what their records are sealed under; the barrier attaches its keyring
   * (`attachKeys`) when there is none here.
   */
  constructor(options: { store?: StateStore; keys?: RecordKeys; quotas?: IdentityQuotas } = {}) {
    this.#store = options.store ?? new MemoryStateStore();
    this.#records = new WriteSet(this.#store);
    if (options.keys !== undefined) this.#keys.attach(options.keys);
    this.secrets = new SecretStore({ ...options.quotas, records: this.#records, keys: this.#keys });
    this.parts = [this.cluster, this.secrets, this.access];
    this.#partsByPrefix = new Map(this.parts.map((part) => [part.prefix, part]));
  }

  /** The keys the records are sealed under (the barrier's keyring, which it replaces on a snapshot install). */
  attachKeys(keys: RecordKeys): void {
    this.#keys.attach(keys);
  }

  /**
   * Before the replica starts: the index of the last command whose effects the store holds (it
   * is written in the same batch as them). The replica restores the newest snapshot and replays
   * the log after it; the store's part of every entry up to that index is already there, so it is
   * neither restored again from an older snapshot nor applied twice. A store without the record
   * (an older version's, or empty) is emptied and rebuilt from the snapshot and the log.
   */
  async reset(): Promise<void> {
    const stored = await this.#store.get(APPLIED_KEY);
    if (stored === undefined) {
      await this.#records.replaceAll((async function* () {})());
      this.#storedThrough = 0;
    } else {
      assert(
        stored.byteLength === 8,
        () => `the applied index record of the state store has ${stored.byteLength} bytes`,
      );
      this.#storedThrough = Number(Buffer.from(stored).readBigUInt64BE(0));
    }
    this.#committedThrough = this.#storedThrough;
    this.#appliedThrough = this.#storedThrough;
    this.stats.skippedOnStart = 0;
  }

  /**
   * `skippedOnStart`: commands of the secrets part replayed at start but already in the store (not
   * applied again). `snapshotsInstalled`: snapshots whose records were streamed in and installed.
   */
  readonly stats = { skippedOnStart: 0, snapshotsInstalled: 0 };

  recordsSealedUnder(term: number): number {
    return this.secrets.recordsSealedUnder(term);
  }

  /** Closes the state store (after the replica stopped). */
  async close(): Promise<void> {
    await this.#store.close();
  }

  /**
   * Writes what the entries applied since the last commit changed, and the index of the last of
   * them, in one atomic batch (not fsynced: the entries are in the fsynced Raft log, and a store
   * that lost its tail replays it), with the barrier's side records (see SideRecords). Says whether
   * the side records were written: not while a restart replays entries below what the store held.
   */
  async commit(side: SideRecords = {}): Promise<boolean> {
    const through = Math.max(this.#appliedThrough, side.appliedIndex ?? 0);
    // A restart's replay below what the store held (the fallback path) writes no image: the one
    // stored is the state at the stored index, and an image of an earlier index would claim it.
    // Judged by the replica's applied index, where the small parts are: the secrets' own index
    // starts at what the store held (their replay is skipped), so it is never below it.
    const current = (side.appliedIndex ?? through) >= this.#committedThrough;
    const extra: StateWrite[] = [
      { type: 'put', key: APPLIED_KEY, value: u64(Math.max(through, this.#committedThrough)) },
    ];
    if (current && side.image !== undefined && side.image !== null)
      extra.push({ type: 'put', key: IMAGE_KEY, value: side.image });
    if (current && side.marks !== undefined) extra.push({ type: 'put', key: MARKS_KEY, value: side.marks });
    if (this.#records.size === 0 && through <= this.#committedThrough && extra.length === 1) return current;
    await this.#records.commit(extra);
    this.#committedThrough = Math.max(this.#committedThrough, through);
    this.#appliedThrough = this.#committedThrough;
    if (current && side.image !== undefined && side.image !== null) this.#smallPartsChanged = false;
    return current;
  }

  /**
   * Whether a command of the small parts (cluster, access) applied since the last commit that
   * stored an image: the barrier then stores a new image with the next commit.
   */
  /** Changes applied beyond one per command since this process started: a batch of n puts adds n - 1 (see StateMachine.batchedChanges). */
  get batchedChanges(): number {
    return this.#batchedChanges;
  }

  /** Bytes of changes applied and not yet committed. */
  get pendingBytes(): number {
    return this.#records.bytes;
  }

  get smallPartsChanged(): boolean {
    return this.#smallPartsChanged;
  }

  /**
   * What the last commits left for a restart to start from: the index the store holds, and the
   * barrier's image and marks as of it (null: none stored, an older version's store, or a store
   * just installed from a leader's snapshot).
   */
  async storedImage(): Promise<{ index: number; image: Uint8Array; marks: Uint8Array | undefined } | null> {
    const image = await this.#store.get(IMAGE_KEY);
    if (image === undefined || this.#committedThrough === 0) return null;
    return { index: this.#committedThrough, image, marks: await this.#store.get(MARKS_KEY) };
  }

  /** Rewrites the store's files so records deleted or replaced leave the disk (after a key is destroyed). */
  async reclaim(): Promise<void> {
    await this.#store.reclaim?.();
  }

  /** The part whose commands' kinds start as `kind` does (`secret.put`: the secrets), or undefined. */
  partOf(kind: string): AnyStatePart | undefined {
    return this.#partsByPrefix.get(kind.slice(0, kind.indexOf('.') + 1) as PartPrefix);
  }

  apply(command: { readonly index: number; readonly kind: string; readonly data: Uint8Array }): AppliedResult {
    const part = this.partOf(command.kind);
    if (part === undefined) return refusal('INVALID', `unknown command kind ${command.kind.slice(0, 60)}`);
    if (part !== this.secrets) this.#smallPartsChanged = true;
    if (part === this.secrets) {
      // Replayed at start, and already in the store: its effects are there (nobody waits for it).
      if (command.index <= this.#storedThrough) {
        this.stats.skippedOnStart++;
        return { ok: true, version: 0 };
      }
      this.#appliedThrough = command.index;
    }
    const decoded = part.decode(command.kind, command.data);
    if (!decoded.ok) return decoded;
    const { actor } = decoded;
    if (actor !== null) {
      // A client's command is authorized again where it applies: the manager that took it may
      // have been behind (a revocation or a policy change already committed), and every manager
      // must reach the same verdict, so the check reads only replicated state.
      const refused = part.authorize(decoded.command, actor, this.access);
      if (refused !== null) return refused;
    }
    // Quotas bound what a client can take; an identity that may change them (`sudo` on
    // `sys/quotas`: root) is counted, not limited (it could issue itself more identities anyway).
    // A batch of puts authorizes its items as they apply, so the secrets part gets the authority too.
    if (part === this.secrets) {
      const secretCommand = decoded.command as SecretCommand;
      if (secretCommand.op === 'put-batch') this.#batchedChanges += Math.max(0, secretCommand.items.length - 1);
      return this.secrets.apply(secretCommand, actor, command.index, {
        quotaExempt: actor !== null && this.access.decide(actor.name, 'sudo', QUOTAS_PATH).allowed,
        authority: this.access,
      });
    }
    return part.apply(decoded.command, actor, command.index);
  }

  /**
   * The snapshot a replica keeps and sends: the small parts' images, and a mark that the secrets
   * are the store's records, taken now, synchronously (no record is read). Kept on this manager,
   * it stands for the store it sits beside, which holds this index or a later one (the replica
   * syncs the store before it saves a snapshot: `sync`). Sent to another manager, it goes with
   * `snapshotPages()` taken in the same turn.
   */
  descriptor(): Uint8Array {
    const images = this.parts.map((part) => {
      if (part === this.secrets) return null;
      const image = part.snapshot();
      assert(!(image instanceof Promise), () => `the ${part.prefix} part's image is not at hand`);
      return image;
    });
    return packr.pack([DESCRIPTOR_VERSION, ...images]);
  }

  /**
   * The secrets' records as of now (the same moment as a `descriptor()` taken in this turn): what
   * a snapshot streams to another manager beside its descriptor.
   */
  snapshotPages(): AsyncIterableIterator<readonly StateRecord[]> {
    return this.secrets.recordPages();
  }

  /**
   * Writes the records a leader streams for its snapshot at `index` aside (the store keeps
   * serving); `installSnapshot(index)` switches to them once Raft accepts the snapshot. Records
   * not of the secrets part are refused, and the applied index is written with them.
   */
  async prepareSnapshot(index: number, records: RecordStream): Promise<void> {
    const previous = this.#prepared;
    this.#prepared = null;
    await previous?.content.discard();
    // Checked a page at a time, as they come: one step per page, not per record.
    async function* checked(): AsyncGenerator<StateRecord | readonly StateRecord[]> {
      for await (const item of records) {
        for (const record of isPage(item) ? item : [item])
          if (!SecretStore.holdsKey(record.key))
            throw new StateStoreError('a streamed snapshot holds a record that is not one of the secrets');
        yield item;
      }
      yield { key: APPLIED_KEY, value: u64(index) };
    }
    const content = await this.#store.prepare(checked());
    // A newer snapshot may have been prepared meanwhile: the store refused this one then.
    this.#prepared = { index, content };
  }

  /**
   * Raft accepted the snapshot at `index` (before its descriptor is persisted): switches the store
   * to the records prepared for it (true), or says there are none (false: the snapshot is a whole
   * image, restored by `restore`). A crash after the switch leaves a store ahead of the Raft
   * storage: the replay skips the secrets part up to it, and the leader sends the snapshot again.
   */
  async installSnapshot(index: number): Promise<boolean> {
    const prepared = this.#prepared;
    this.#prepared = null;
    if (prepared === null) return false;
    if (prepared.index !== index) {
      await prepared.content.discard();
      return false;
    }
    await this.commit();
    await this.#records.install(prepared.content);
    this.#storedThrough = index;
    this.#appliedThrough = index;
    this.#committedThrough = index;
    this.stats.snapshotsInstalled++;
    return true;
  }

  /** Drops the records prepared for the snapshot at `index`, if they are still aside (Raft did not take it). */
  async discardSnapshot(index: number): Promise<void> {
    const prepared = this.#prepared;
    if (prepared === null || prepared.index !== index) return;
    this.#prepared = null;
    await prepared.content.discard();
  }

  /**
   * Commits what is applied and makes the store durable through it (a synced write): before a
   * snapshot that stands for the store is saved and the log behind it compacted. `appliedIndex`
   * is the replica's: every entry up to it is applied, those that reached no part (a key
   * operation, a membership change, a new leader's empty entry) included, so the store's record
   * moves to it and a descriptor at any point up to it finds the store far enough.
   */
  async sync(appliedIndex: number): Promise<void> {
    await this.commit();
    // A restart's replay may still be behind what the store held when it began.
    this.#committedThrough = Math.max(this.#committedThrough, appliedIndex);
    this.#appliedThrough = Math.max(this.#appliedThrough, appliedIndex);
    await this.#store.write([{ type: 'put', key: APPLIED_KEY, value: u64(this.#committedThrough) }], {
      sync: true,
    });
  }

  async snapshot(): Promise<Uint8Array> {
    // Every part's image is begun in this turn of the event loop, so all are of the same index
    // (a part on the store reads a point-in-time view).
    const images = await Promise.all(this.parts.map((part) => part.snapshot()));
    return packLarge(packr, [IMAGE_VERSION, ...images]);
  }

  async restore(data: Uint8Array, index = 0): Promise<void> {
    const image: unknown = packr.unpack(data);
    const version: unknown = Array.isArray(image) ? image[0] : undefined;
    if (version === DESCRIPTOR_VERSION) return this.#restoreDescriptor(image as unknown[], index);
    if (version !== IMAGE_VERSION) throw new Error(`unknown state image version ${String(version)}`);
    const partImages = (image as unknown[]).slice(1);
    if (partImages.length < this.parts.length)
      throw new Error(
        `a state image of version ${IMAGE_VERSION} holds ${this.parts.length} parts, this one ${partImages.length}`,
      );
    for (const [k, part] of this.parts.entries()) {
      // The store already holds this snapshot's secrets or later ones (a restart): keep them.
      if (part === this.secrets && this.#storedThrough > 0 && index <= this.#storedThrough) continue;
      await part.restore(partImages[k], index);
      if (part === this.secrets) {
        // After the switch: a crash between leaves a store without the record, rebuilt at start.
        await this.#store.write([{ type: 'put', key: APPLIED_KEY, value: u64(index) }]);
        this.#appliedThrough = index;
        this.#committedThrough = index;
      }
    }
  }

  /** A descriptor's small parts; the secrets must already be in the store (on disk, or installed from a stream). */
  async #restoreDescriptor(image: unknown[], index: number): Promise<void> {
    if (image.length !== this.parts.length + 1)
      throw new Error(`a state descriptor holds ${image.length - 1} parts, this version ${this.parts.length}`);
    if (index > this.#committedThrough)
      throw new Error(
        `the snapshot at index ${index} stands for the state store's records, but the store in this data directory holds only index ${this.#committedThrough}: it was lost or replaced. Remove this manager's data directory and join it again (coffer cluster join), or restore a backup`,
      );
    for (const [k, part] of this.parts.entries()) if (part !== this.secrets) await part.restore(image[k + 1], index);
  }
}

function u64(n: number): Buffer {
  const record = Buffer.alloc(8);
  record.writeBigUInt64BE(BigInt(n), 0);
  return record;
}

/** RecordKeys that forward to keys attached later (the barrier's keyring), with a clear error before. */
class AttachedKeys implements RecordKeys {
  #keys: RecordKeys | null = null;

  attach(keys: RecordKeys): void {
    this.#keys = keys;
  }

  get #attached(): RecordKeys {
    if (this.#keys === null)
      throw new CryptoError('KEYRING_EMPTY', 'the applied state has no keys to seal its records with yet');
    return this.#keys;
  }

  get activeTerm(): number {
    return this.#attached.activeTerm;
  }

  get indexKey(): Buffer {
    return this.#attached.indexKey;
  }

  recordsKey(term: number): Buffer {
    return this.#attached.recordsKey(term);
  }
}
