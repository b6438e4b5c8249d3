import type { InnerStateMachine } from '../barrier/barrier.ts';
import { packr } from '../codec/msgpack.ts';
import { packLarge } from '../codec/pack-large.ts';
import { CryptoError } from '../crypto/errors.ts';
import type { RecordKeys } from '../crypto/record-seal.ts';
import { MemoryStateStore } from '../kv/memory-state-store.ts';
import type { StateStore } from '../kv/state-store.ts';
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

/** The version of the image `snapshot` writes: `[1, cluster image, secrets image, access image]`. */
const IMAGE_VERSION = 1;

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
  readonly #keys = new AttachedKeys();

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

  /** Empties the store: the replica restores the newest snapshot and replays the log after it. */
  async reset(): Promise<void> {
    await this.#records.replaceAll((async function* () {})());
  }

  recordsSealedUnder(term: number): number {
    return this.secrets.recordsSealedUnder(term);
  }

  /** Closes the state store (after the replica stopped). */
  async close(): Promise<void> {
    await this.#store.close();
  }

  /** Writes what the entries applied since the last commit changed, in one atomic batch. */
  async commit(): Promise<void> {
    if (this.#records.size > 0) await this.#records.commit();
  }

  /** The part whose commands' kinds start as `kind` does (`secret.put`: the secrets), or undefined. */
  partOf(kind: string): AnyStatePart | undefined {
    return this.#partsByPrefix.get(kind.slice(0, kind.indexOf('.') + 1) as PartPrefix);
  }

  apply(command: { readonly index: number; readonly kind: string; readonly data: Uint8Array }): AppliedResult {
    const part = this.partOf(command.kind);
    if (part === undefined) return refusal('INVALID', `unknown command kind ${command.kind.slice(0, 60)}`);
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
    if (part === this.secrets && actor !== null && this.access.decide(actor.name, 'sudo', QUOTAS_PATH).allowed)
      return this.secrets.apply(decoded.command as SecretCommand, actor, command.index, { quotaExempt: true });
    return part.apply(decoded.command, actor, command.index);
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
    if (version !== IMAGE_VERSION) throw new Error(`unknown state image version ${String(version)}`);
    const partImages = (image as unknown[]).slice(1);
    if (partImages.length < this.parts.length)
      throw new Error(
        `a state image of version ${IMAGE_VERSION} holds ${this.parts.length} parts, this one ${partImages.length}`,
      );
    for (const [k, part] of this.parts.entries()) await part.restore(partImages[k], index);
  }
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
