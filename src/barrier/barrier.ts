import { packr } from '../codec/msgpack.ts';
import { packLarge } from '../codec/pack-large.ts';
import { CryptoError } from '../crypto/errors.ts';
import { Keyring, unwrapDataKey, wrapDataKey } from '../crypto/keyring.ts';
import { generateRootKey, unwrapRootLink, unwrapUnlockKek, wrapRootLink, wrapUnlockKek } from '../crypto/root-key.ts';
import { KEY_USES_RESERVATION_BLOCK } from '../crypto/key-store.ts';
import type { RecordKeys } from '../crypto/record-seal.ts';
import type { Entry } from '../raft/types.ts';
import type { SnapshotChunks, SnapshotRequest, StateMachine } from '../replica/replica.ts';
import { AssertionError, assert } from '../util/assert.ts';
import { reached } from '../util/crash-points.ts';
import { KeyState, decodeKeyStateInto, decodeMarksInto, encodeKeyState, encodeMarks } from './key-state.ts';
import { decodeRecordChunks, encodeRecordChunks } from '../kv/record-chunks.ts';
import type { RecordStream, StateRecord } from '../kv/state-store.ts';
import {
  COMMAND_KIND_PATTERN,
  PayloadError,
  decodePayload,
  encodePayload,
  type EntryPayload,
  type KeyOp,
} from './payload.ts';

/** The application state behind the barrier: it sees commands and snapshot images in plaintext. */
export interface InnerStateMachine<Result> {
  apply(command: { readonly index: number; readonly kind: string; readonly data: Buffer }): Result;
  snapshot(): Uint8Array | Promise<Uint8Array>;
  /** Replaces the state with an image of the state at log index `index`. */
  restore(data: Uint8Array, index: number): void | Promise<void>;
  /**
   * Makes what the entries applied so far changed durable in the state's own store (after each
   * batch), with the barrier's side records: its applied index, and its image (key state and the
   * small parts, when either changed) and marks, so a restart starts from the store. Says whether
   * the image was stored (not during a restart's replay below what the store already held).
   */
  commit?(side?: { appliedIndex: number; image: Uint8Array | null; marks?: Uint8Array }): Promise<boolean>;
  /** Whether the part of the state the barrier's image holds changed since the image was stored. */
  readonly smallPartsChanged?: boolean;
  /** Bytes of changes applied and not yet committed (held in memory until `commit`). */
  readonly pendingBytes?: number;
  /** See StateMachine.batchedChanges (src/replica/replica.ts). */
  readonly batchedChanges?: number;
  /** The barrier's image and marks the store holds, and the index they and the store are at. */
  storedImage?(): Promise<{ index: number; image: Uint8Array; marks: Uint8Array | undefined } | null>;
  /** Rewrites the store's files so deleted records leave the disk. */
  reclaim?(): Promise<void>;
  /** The keys a state on disk seals its records under: the barrier's keyring, whichever it holds now. */
  attachKeys?(keys: RecordKeys): void;
  /**
   * Before the replica starts: a state on disk finds how far an earlier run took it (or forgets
   * what it cannot vouch for); the replica then restores the newest snapshot and replays the log
   * after it, and the state applies each entry's effects once.
   */
  reset?(): Promise<void>;
  /** How many of its stored records are sealed under a keyring term (a term in use is not destroyed). */
  recordsSealedUnder?(term: number): number;
  /**
   * A state on disk: its snapshot without its records, taken now (see AppliedState.descriptor),
   * and the records as of the same moment, to stream to another manager beside it.
   */
  descriptor?(): Uint8Array;
  snapshotPages?(): AsyncIterableIterator<readonly StateRecord[]>;
  /** Writes the records a leader streams for its snapshot at `index` aside, until `installSnapshot`. */
  prepareSnapshot?(index: number, records: RecordStream): Promise<void>;
  /** Switches to the records prepared for the snapshot at `index`, if there are (true). */
  installSnapshot?(index: number): Promise<boolean>;
  /** Drops the records prepared for the snapshot at `index`, if they are still aside. */
  discardSnapshot?(index: number): Promise<void>;
  /**
   * Makes the state's store durable through every entry applied, up to `appliedIndex` (entries the
   * barrier kept, such as key operations, included): before a snapshot standing for it is saved.
   */
  sync?(appliedIndex: number): Promise<void>;
}

/** The manager's own key record, as the barrier needs it (src/crypto/key-store.ts behind it). */
export interface LocalKeys {
  readonly rootGen: number;
  readonly unlockGen: number;
  usesReserved(term: number): number;
  reserveUses(term: number, uses: number, liveTerms: readonly number[]): Promise<void>;
  /**
   * Rewraps the local root key: a newer generation, and/or a new KEK (an unlock key's), or, with
   * `autolockOff`, the manager's own key file again.
   */
  rewrap(options: {
    rootGen: number;
    rootKey: Buffer;
    unlockGen: number;
    unlockKek: Buffer | null;
    autolockOff?: boolean;
  }): Promise<void>;
}

export type BarrierResult<Result> =
  | { readonly type: 'applied'; readonly result: Result }
  | { readonly type: 'key-op'; readonly op: KeyOp['op']; readonly changed: boolean; readonly detail: string }
  | { readonly type: 'refused'; readonly code: string; readonly message: string }
  /** Entries without a payload: a new leader's empty entry, membership changes. */
  | { readonly type: 'none' };

/**
 * Bytes of applied changes (keys and sealed records) the inner state may hold in memory when
 * `afterApply` is asked to defer its write: a put of a 256-B value counts about 520, so about 500
 * puts. Past this, it writes at once.
 */
export const STATE_PENDING_BYTES_MAX = 256 * 1024;

/** Encryptions a snapshot may make between two reservations (see `sealCommand`). */
const USES_SLACK = 64;

/**
 * The encryption barrier between the Raft log and the application state (after Vault's). What
 * crosses it into the log or a snapshot is sealed by the keyring; keyring operations are entries
 * too, so every manager rotates, rewraps and destroys keys at the same index. Apply is
 * deterministic: a command sealed under a destroyed term is refused the same way everywhere.
 */
export class Barrier<Result> implements StateMachine<BarrierResult<Result>> {
  readonly #inner: InnerStateMachine<Result>;
  readonly #local: LocalKeys;
  readonly #keys: KeyState;
  #innerPristine = true;
  #snapshotRequest: SnapshotRequest | null = null;
  /** Root generation of the newest snapshot this manager made or installed, once durable. */
  #durableRootGen: number;
  #snapshotRootGen = 0;
  #reserving: Promise<void> = Promise.resolve();
  /** The last entry applied (every kind), and whether the stored image is older than the key state or small parts. */
  #appliedIndex = 0;
  #imageStale = true;
  #marksChanged = true;
  #adopting: Promise<void> = Promise.resolve();

  constructor(options: { clusterId: string; rootKey: Buffer; local: LocalKeys; inner: InnerStateMachine<Result> }) {
    this.#inner = options.inner;
    this.#local = options.local;
    this.#keys = new KeyState(options.clusterId, options.local.rootGen, options.rootKey);
    this.#durableRootGen = options.local.rootGen;
    const keyState = this.#keys;
    this.#inner.attachKeys?.({
      get activeTerm() {
        return keyState.keyring.activeTerm;
      },
      get indexKey() {
        return keyState.keyring.indexKey;
      },
      recordsKey: (term) => keyState.keyring.recordsKey(term),
    });
  }

  get clusterId(): string {
    return this.#keys.clusterId;
  }

  status(): {
    activeTerm: number;
    activeCreatedAtMs: number;
    terms: ReturnType<Keyring['terms']>;
    rootGen: number;
    unlockGen: number;
    lastRewrap: { index: number; term: number } | null;
    usesOfActiveTerm: number;
  } {
    const keyring = this.#keys.keyring;
    return {
      activeTerm: keyring.activeTerm,
      activeCreatedAtMs: keyring.activeCreatedAtMs,
      terms: keyring.terms(),
      rootGen: this.#keys.rootGen,
      unlockGen: this.#keys.unlock?.gen ?? 0,
      lastRewrap: this.#keys.lastRewrap,
      usesOfActiveTerm: keyring.usesOfActiveTerm(),
    };
  }

  /** The current root key and its generation: what a newly admitted manager receives. */
  /** The index of the last entry applied (the state, its side records and its snapshots are of it). */
  get appliedIndex(): number {
    return this.#appliedIndex;
  }

  currentRootKey(): { key: Buffer; gen: number } {
    return { key: Buffer.from(this.#keys.rootKey), gen: this.#keys.rootGen };
  }

  needsRotation(nowMs: number, intervalMs: number): boolean {
    return this.#keys.keyring.needsRotation(nowMs, intervalMs);
  }

  // ---- proposing side: what a manager puts in the log -------------------------------------

  /** An application command, sealed under the active term, ready to propose. */
  async sealCommand(kind: string, plaintext: Uint8Array): Promise<Buffer> {
    if (!COMMAND_KIND_PATTERN.test(kind))
      throw new TypeError(`command kind "${kind}" does not match ${String(COMMAND_KIND_PATTERN)}`);
    // Reserving takes a write; meanwhile a rotation may make another term active: check again.
    for (let attempt = 0; ; attempt++) {
      const keyring = this.#keys.keyring;
      const term = keyring.activeTerm;
      if (term === 0 || keyring.usesOf(term) + 1 + USES_SLACK <= this.#local.usesReserved(term)) {
        return encodePayload({ type: 'command', kind, sealed: keyring.encrypt(commandKind(kind), plaintext) });
      }
      assert(
        attempt < 8,
        () =>
          `uses of keyring term ${term} could not be reserved (reserved ${this.#local.usesReserved(term)}, used ${keyring.usesOf(term)})`,
      );
      await this.#reserveUses(term);
    }
  }

  rotatePayload(nowMs: number): Buffer {
    const term = this.#keys.keyring.activeTerm + 1;
    const key = Keyring.newKey();
    try {
      return encodePayload({
        type: 'key',
        op: {
          op: 'rotate',
          term,
          rootGen: this.#keys.rootGen,
          wrappedKey: wrapDataKey(this.#keys.rootKey, this.clusterId, term, this.#keys.rootGen, key),
          createdAtMs: nowMs,
        },
      });
    } finally {
      key.fill(0);
    }
  }

  rewrapPayload(): Buffer {
    return encodePayload({ type: 'key', op: { op: 'rewrap' } });
  }

  destroyPayload(term: number): Buffer {
    return encodePayload({ type: 'key', op: { op: 'destroy', term } });
  }

  rotateRootPayload(): Buffer {
    const gen = this.#keys.rootGen + 1;
    const next = generateRootKey();
    try {
      return encodePayload({
        type: 'key',
        op: { op: 'rotate-root', gen, wrappedRoot: wrapRootLink(this.#keys.rootKey, next, this.clusterId, gen) },
      });
    } finally {
      next.fill(0);
    }
  }

  /** The replicated unlock KEK (a copy), or null when autolock is off. */
  unlockKek(): Buffer | null {
    const unlock = this.#keys.unlock;
    if (unlock === null || unlock.wrappedKek.byteLength === 0) return null;
    return unwrapUnlockKek(
      this.#keys.roots.get(unlock.rootGen)!,
      unlock.wrappedKek,
      this.clusterId,
      unlock.gen,
      unlock.rootGen,
    );
  }

  /** Autolock off: the next unlock generation is "none" (managers go back to their key files). */
  autolockOffPayload(): Buffer {
    return encodePayload({ type: 'key', op: { op: 'autolock-off', gen: (this.#keys.unlock?.gen ?? 0) + 1 } });
  }

  rotateUnlockPayload(unlockKek: Uint8Array): Buffer {
    const gen = (this.#keys.unlock?.gen ?? 0) + 1;
    const rootGen = this.#keys.rootGen;
    return encodePayload({
      type: 'key',
      op: {
        op: 'rotate-unlock',
        gen,
        rootGen,
        wrappedKek: wrapUnlockKek(this.#keys.rootKey, unlockKek, this.clusterId, gen, rootGen),
      },
    });
  }

  // ---- the state machine ---------------------------------------------------------------

  get batchedChanges(): number {
    return this.#inner.batchedChanges ?? 0;
  }

  apply(entry: Entry): BarrierResult<Result> {
    this.#appliedIndex = entry.index;
    if (entry.kind !== 'normal' || entry.data.byteLength === 0) return { type: 'none' };
    let payload: EntryPayload;
    try {
      payload = decodePayload(entry.data);
    } catch (error) {
      if (error instanceof PayloadError)
        return { type: 'refused', code: error.code, message: `entry ${entry.index}: ${error.message}` };
      throw error;
    }
    if (payload.type === 'key') {
      this.#imageStale = true;
      this.#marksChanged = true;
      try {
        return this.#applyKeyOp(entry.index, payload.op);
      } catch (error) {
        // Deterministic refusal (e.g. key material that does not open): every manager refuses alike.
        if (error instanceof AssertionError || !(error instanceof Error)) throw error;
        return {
          type: 'refused',
          code: 'KEY_OP_REFUSED',
          message: `the ${payload.op.op} at index ${entry.index} was refused: ${error.message}`,
        };
      }
    }
    let plaintext: Buffer;
    try {
      plaintext = this.#keys.keyring.decrypt(commandKind(payload.kind), payload.sealed);
    } catch (error) {
      if (error instanceof CryptoError)
        return {
          type: 'refused',
          code: error.code,
          message: `the ${payload.kind} command at index ${entry.index} cannot be opened: ${error.message}`,
        };
      throw error;
    }
    this.#keys.sealedMaxIndex.set(Keyring.termOf(payload.sealed), entry.index);
    this.#marksChanged = true;
    this.#innerPristine = false;
    try {
      return {
        type: 'applied',
        result: this.#inner.apply({ index: entry.index, kind: payload.kind, data: plaintext }),
      };
    } catch (error) {
      // A command the state cannot apply (malformed data) must not stop every manager, then stop
      // it again at each replay: it is refused, the same way everywhere. Broken invariants still stop.
      if (error instanceof AssertionError || !(error instanceof Error)) throw error;
      return {
        type: 'refused',
        code: 'COMMAND_MALFORMED',
        message: `the ${payload.kind} command at index ${entry.index} cannot be applied: ${error.message}`,
      };
    }
  }

  #applyKeyOp(index: number, op: KeyOp): BarrierResult<Result> {
    const keys = this.#keys;
    const keyring = keys.keyring;
    const unchanged = (detail: string): BarrierResult<Result> => ({
      type: 'key-op',
      op: op.op,
      changed: false,
      detail,
    });
    const refused = (message: string): BarrierResult<Result> => ({ type: 'refused', code: 'KEY_OP_REFUSED', message });
    switch (op.op) {
      case 'rotate': {
        if (op.term !== keyring.activeTerm + 1)
          return unchanged(
            `keyring term ${op.term} was proposed after term ${op.term - 1}, but term ${keyring.activeTerm} is active; propose again`,
          );
        if (op.rootGen !== keys.rootGen)
          return unchanged(
            `the new key was sealed under root generation ${op.rootGen}, but ${keys.rootGen} is current; propose again`,
          );
        const key = unwrapDataKey(keys.rootKey, this.clusterId, op.term, op.rootGen, op.wrappedKey);
        keyring.addTerm(op.term, key, op.createdAtMs);
        key.fill(0);
        keyring.assumeUses(op.term, this.#local.usesReserved(op.term));
        reached('rotate:applied');
        return {
          type: 'key-op',
          op: op.op,
          changed: true,
          detail: `keyring term ${op.term} is active from index ${index}`,
        };
      }
      case 'rewrap': {
        if (keyring.activeTerm === 0) return refused('the keyring has no term yet; nothing to rewrap');
        keys.lastRewrap = { index, term: keyring.activeTerm };
        this.#requestSnapshot('rewrap', false);
        reached('rewrap:applied');
        return {
          type: 'key-op',
          op: op.op,
          changed: true,
          detail: `everything up to index ${index} is rewrapped under keyring term ${keyring.activeTerm}`,
        };
      }
      case 'destroy': {
        const known = keyring.terms().find((t) => t.term === op.term);
        if (known === undefined) return refused(`keyring term ${op.term} does not exist`);
        if (known.destroyed) return unchanged(`keyring term ${op.term} is already destroyed`);
        if (op.term >= keyring.activeTerm)
          return refused(`keyring term ${op.term} is the active term; rotate, then rewrap, before destroying it`);
        const rewrap = keys.lastRewrap;
        const sealedMax = keys.sealedMaxIndex.get(op.term) ?? 0;
        if (rewrap === null || rewrap.term <= op.term || sealedMax > rewrap.index) {
          return refused(
            `data sealed under keyring term ${op.term} may still be stored (last sealed at index ${sealedMax}, last rewrap ${rewrap === null ? 'never' : `at index ${rewrap.index} under term ${rewrap.term}`}); rewrap first`,
          );
        }
        const stillSealed = this.#inner.recordsSealedUnder?.(op.term) ?? 0;
        if (stillSealed > 0)
          return refused(
            `${stillSealed} records of the applied state are still sealed under keyring term ${op.term}; the leader re-seals them in the background after a rewrap; retry once none is left`,
          );
        keyring.destroyTerm(op.term);
        keys.sealedMaxIndex.delete(op.term);
        this.#requestSnapshot('destroy', true);
        reached('destroy:applied');
        return { type: 'key-op', op: op.op, changed: true, detail: `keyring term ${op.term} is destroyed` };
      }
      case 'rotate-root': {
        if (op.gen !== keys.rootGen + 1)
          return unchanged(
            `root generation ${op.gen} was proposed after ${op.gen - 1}, but ${keys.rootGen} is current; propose again`,
          );
        const next = unwrapRootLink(keys.rootKey, op.wrappedRoot, this.clusterId, op.gen);
        if (keys.unlock !== null && keys.unlock.wrappedKek.byteLength > 0) {
          // Keep the unlock KEK openable by the current root generation alone.
          const kek = unwrapUnlockKek(
            keys.roots.get(keys.unlock.rootGen)!,
            keys.unlock.wrappedKek,
            this.clusterId,
            keys.unlock.gen,
            keys.unlock.rootGen,
          );
          keys.unlock = {
            gen: keys.unlock.gen,
            rootGen: op.gen,
            wrappedKek: wrapUnlockKek(next, kek, this.clusterId, keys.unlock.gen, op.gen),
          };
          kek.fill(0);
        }
        keys.roots.set(op.gen, next);
        keys.chain.push([op.gen, op.wrappedRoot]);
        keys.rootGen = op.gen;
        this.#requestSnapshot('rotate-root', false);
        reached('rotate-root:applied');
        return { type: 'key-op', op: op.op, changed: true, detail: `root key generation ${op.gen} is current` };
      }
      case 'rotate-unlock': {
        const current = keys.unlock?.gen ?? 0;
        if (op.gen !== current + 1)
          return unchanged(
            `unlock key generation ${op.gen} was proposed after ${op.gen - 1}, but ${current} is current; propose again`,
          );
        if (op.rootGen !== keys.rootGen)
          return unchanged(
            `the unlock key was sealed under root generation ${op.rootGen}, but ${keys.rootGen} is current; propose again`,
          );
        unwrapUnlockKek(keys.rootKey, op.wrappedKek, this.clusterId, op.gen, op.rootGen).fill(0); // proves it opens
        keys.unlock = { gen: op.gen, rootGen: op.rootGen, wrappedKek: op.wrappedKek };
        reached('rotate-unlock:applied');
        return { type: 'key-op', op: op.op, changed: true, detail: `unlock key generation ${op.gen} is current` };
      }
      case 'autolock-off': {
        const current = keys.unlock;
        if (current === null || current.wrappedKek.byteLength === 0) return unchanged('autolock is already off');
        if (op.gen !== current.gen + 1)
          return unchanged(
            `autolock-off was proposed as unlock generation ${op.gen}, but ${current.gen} is current; propose again`,
          );
        keys.unlock = { gen: op.gen, rootGen: keys.rootGen, wrappedKek: new Uint8Array(0) };
        return {
          type: 'key-op',
          op: op.op,
          changed: true,
          detail: `autolock is off (unlock generation ${op.gen}): every manager wraps its root key with its key file`,
        };
      }
    }
  }

  snapshot(): Uint8Array | Promise<Uint8Array> {
    // The root generation the image's key state is sealed under, taken with it (the replica may
    // apply a root rotation while the image is read).
    const rootGen = this.#keys.rootGen;
    const descriptor = this.#sealedDescriptor();
    if (descriptor !== null) {
      this.#snapshotRootGen = rootGen;
      return descriptor;
    }
    return this.image().then((image) => {
      this.#snapshotRootGen = rootGen;
      return image;
    });
  }

  /**
   * A state on disk's descriptor, sealed as an image is (key state, then the descriptor under the
   * active term), taken now; null if the inner state has none (a whole image is made instead) or
   * the keyring has no term yet.
   */
  #sealedDescriptor(): Uint8Array | null {
    const inner = this.#inner;
    const keyring = this.#keys.keyring;
    const term = keyring.activeTerm;
    if (inner.descriptor === undefined || term === 0) return null;
    const keyState = encodeKeyState(this.#keys);
    return packr.pack([1, keyState, keyring.encryptUnder(term, 'snapshot', inner.descriptor())]);
  }

  /**
   * A snapshot to send to another manager, as of now: the sealed descriptor, and the inner
   * state's records of the same moment as chunks (the store's own sealed bytes: no plaintext);
   * null when the inner state has no records apart (the snapshot's data is then the whole image).
   */
  snapshotStream(): { readonly data: Uint8Array; readonly records: SnapshotChunks } | null {
    const snapshotPages = this.#inner.snapshotPages;
    const data = this.#sealedDescriptor();
    if (data === null || snapshotPages === undefined) return null;
    const records = snapshotPages.call(this.#inner);
    const chunks = encodeRecordChunks(records);
    return {
      data,
      records: {
        [Symbol.asyncIterator]: () => chunks,
        // Not read to the end (a send that failed or never began): the records' view is closed.
        close: async () => {
          await chunks.return(undefined);
          await records.return?.();
        },
      },
    };
  }

  /** Before a snapshot is sealed to send: its seal counts against the active term's reserved uses. */
  async beforeSnapshotStream(): Promise<void> {
    const term = this.#keys.keyring.activeTerm;
    if (term !== 0 && this.#keys.keyring.usesOf(term) + 1 + USES_SLACK > this.#local.usesReserved(term))
      await this.#reserveUses(term);
  }

  /** Writes the record chunks a leader streams for its snapshot at `index` aside (checked as they come). */
  async prepareSnapshot(index: number, chunks: AsyncIterable<Uint8Array>): Promise<void> {
    if (this.#inner.prepareSnapshot === undefined)
      throw new PayloadError('this manager keeps no records apart from its snapshots; a streamed one is refused');
    await this.#inner.prepareSnapshot(index, decodeRecordChunks(chunks));
  }

  /** Raft accepted the snapshot at `index`: its streamed records, if any, become the state's store. */
  async installSnapshot(index: number): Promise<void> {
    await this.#inner.installSnapshot?.(index);
  }

  /** Raft did not take the snapshot at `index`: its streamed records, if still aside, are dropped. */
  async discardSnapshot(index: number): Promise<void> {
    await this.#inner.discardSnapshot?.(index);
  }

  /**
   * Whether the inner state holds applied changes not yet committed. The side records (the
   * applied index, the marks, the image) go with the next commit of changes, or a snapshot's
   * sync: alone they would only save a restart the replay of entries that changed nothing.
   */
  get statePending(): boolean {
    return this.#inner.commit !== undefined && (this.#inner.pendingBytes ?? 0) > 0;
  }

  /** Commits what `afterApply` left in memory (not synced: the log holds it). */
  async writeState(): Promise<void> {
    await this.#commitInner();
  }

  /** Makes the inner state's store durable through every entry applied, up to `appliedIndex`. */
  async syncState(appliedIndex: number): Promise<void> {
    await this.#commitInner();
    await this.#inner.sync?.(appliedIndex);
  }

  /** Rewrites the inner state's store so deleted records (a destroyed term's) leave the disk. */
  async reclaimState(): Promise<void> {
    await this.#inner.reclaim?.();
  }

  /**
   * Commits the inner state's writes with the barrier's side records: the applied index, the
   * marks, and a new image when the key state or the small parts changed since the last one (or
   * none is stored yet). The image is sealed as a snapshot is, under the active term.
   */
  async #commitInner(): Promise<void> {
    const inner = this.#inner;
    if (inner.commit === undefined) return;
    let image: Uint8Array | null = null;
    if (inner.storedImage !== undefined && (this.#imageStale || inner.smallPartsChanged === true)) {
      await this.beforeSnapshotStream();
      image = this.#sealedDescriptor();
    }
    const marks = this.#marksChanged || image !== null ? encodeMarks(this.#keys) : undefined;
    const written = await inner.commit({
      appliedIndex: this.#appliedIndex,
      image,
      ...(marks === undefined ? {} : { marks }),
    });
    if (written === true) {
      if (image !== null) this.#imageStale = false;
      this.#marksChanged = false;
    }
  }

  /**
   * At start, before the replica restores its newest snapshot: the state as the store last held
   * it (the barrier's image, the marks, and the store's records), if the store holds an image at
   * `atLeast` or later that this manager's root key opens. Returns its index, or null: the replica
   * then restores the snapshot and replays the log as before (an older store, a root key that
   * moved on, an image that does not open).
   */
  async restoreStored(atLeast: number): Promise<number | null> {
    const stored = (await this.#inner.storedImage?.()) ?? null;
    if (stored === null || stored.index < atLeast) return null;
    // Everything is opened and checked on a key state of its own first: a failure then leaves
    // this barrier untouched for the snapshot and the log to rebuild.
    let keyStateBytes: Uint8Array;
    let descriptor: Buffer;
    try {
      const image = unpackImage(stored.image, 'the stored image');
      if (image.sealed === null) throw new PayloadError('the stored image holds no state');
      keyStateBytes = image.keyState;
      const trial = new KeyState(this.#keys.clusterId, this.#keys.rootGen, this.#keys.rootKey);
      decodeKeyStateInto(trial, keyStateBytes);
      if (stored.marks !== undefined) decodeMarksInto(trial, stored.marks);
      descriptor = trial.keyring.decrypt('snapshot', image.sealed);
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      this.restoreStoredFailure = (error as Error).message;
      return null;
    }
    // It opens: from here a failure is a fault to stop on, not a reason to fall back.
    decodeKeyStateInto(this.#keys, keyStateBytes);
    if (stored.marks !== undefined) decodeMarksInto(this.#keys, stored.marks);
    for (const { term } of this.#keys.keyring.terms())
      this.#keys.keyring.assumeUses(term, this.#local.usesReserved(term));
    await this.#inner.restore(descriptor, stored.index);
    // Not a durable snapshot: the local root key does not move on for it (#durableRootGen stays).
    this.#innerPristine = false;
    this.#appliedIndex = stored.index;
    this.#imageStale = false;
    return stored.index;
  }

  /** Why the last `restoreStored` fell back to the snapshot (null: it did not). */
  restoreStoredFailure: string | null = null;

  /**
   * The state as of the last applied entry, sealed as a snapshot is (keyring wrapped by the root
   * key, state under the active data key), without marking it as a snapshot of this manager's:
   * what a backup holds.
   */
  async image(): Promise<Uint8Array> {
    // Everything of one index, taken in this turn: the key state, the keyring and its active term,
    // and the inner image's reads (a point-in-time view). The replica may apply more entries
    // while the inner image is read; the image is then sealed under the term that was active here,
    // which the key state taken here holds.
    const keyState = encodeKeyState(this.#keys);
    const keyring = this.#keys.keyring;
    const term = keyring.activeTerm;
    if (term === 0) {
      assert(this.#innerPristine, 'the inner state changed before the keyring had a term');
      return packLarge(packr, [1, keyState, null]);
    }
    const plain = await this.#inner.snapshot();
    return packLarge(packr, [1, keyState, keyring.encryptUnder(term, 'snapshot', plain)]);
  }

  async restore(data: Uint8Array, index: number): Promise<void> {
    this.#appliedIndex = index;
    this.#imageStale = true;
    const heldBefore = new Set(
      this.#keys.keyring
        .terms()
        .filter((t) => !t.destroyed)
        .map((t) => t.term),
    );
    const image = unpackImage(data, 'the snapshot');
    decodeKeyStateInto(this.#keys, image.keyState);
    for (const { term } of this.#keys.keyring.terms())
      this.#keys.keyring.assumeUses(term, this.#local.usesReserved(term));
    const inner = image.sealed;
    if (inner !== null) {
      await this.#inner.restore(this.#keys.keyring.decrypt('snapshot', inner), index);
      this.#innerPristine = false;
    }
    // Only durable snapshots are restored: the one loaded at start, or one a leader sent (persisted first).
    this.#durableRootGen = this.#keys.rootGen;
    // A leader's snapshot may bring the destruction of a term this manager still held: its old
    // records (log, previous snapshot) go, and leave LevelDB's files, as after a local destroy.
    if (this.#keys.keyring.terms().some((t) => t.destroyed && heldBefore.has(t.term)))
      this.#requestSnapshot('destroyed-by-snapshot', true);
  }

  /**
   * Local effects of what was just applied; then, whether the replica must snapshot now. The
   * inner state's changes are committed with them, unless `deferState` lets them wait in memory
   * (nothing is answered after them, and they stay under STATE_PENDING_BYTES_MAX): the log holds
   * those entries, and the applied index is written in the same batch as their changes, later.
   */
  async afterApply(options: { readonly deferState?: boolean } = {}): Promise<SnapshotRequest | null> {
    const mayWait =
      options.deferState === true &&
      !this.answersWaitForAfterApply() &&
      (this.#inner.pendingBytes ?? Number.POSITIVE_INFINITY) < STATE_PENDING_BYTES_MAX;
    if (!mayWait) await this.#commitInner();
    await this.adoptLocally();
    const request = this.#snapshotRequest;
    this.#snapshotRequest = null;
    return request;
  }

  /** A snapshot this barrier made is durable: the local root key may move to its generation. */
  async snapshotDurable(): Promise<void> {
    this.#durableRootGen = Math.max(this.#durableRootGen, this.#snapshotRootGen);
    reached('snapshot:durable');
    await this.adoptLocally();
    // The snapshot's own encryption counts against the key too: keep the reservation ahead of it.
    const term = this.#keys.keyring.activeTerm;
    if (term !== 0 && this.#keys.keyring.usesOf(term) + USES_SLACK > this.#local.usesReserved(term))
      await this.#reserveUses(term);
  }

  /**
   * Brings the local key record up to the replicated state: a new unlock key at once; a new root
   * generation only once a snapshot sealed under it is durable (before that, the old generation
   * is what opens this manager's stored snapshot, and the log's links lead on from it).
   */
  adoptLocally(): Promise<void> {
    // One at a time: two concurrent rewraps would each start from the same old record.
    const run = this.#adopting.then(() => this.#adopt());
    this.#adopting = run.catch(() => undefined);
    return run;
  }

  /**
   * Whether answers to the entries just applied wait for `afterApply`: a snapshot was asked for
   * (a rewrap, a destroy: durable before they are answered), or this manager's key record is to
   * be rewrapped. The inner state's records need not be written first: the log holds them.
   */
  answersWaitForAfterApply(): boolean {
    return this.#snapshotRequest !== null || this.#adoption() !== null;
  }

  /** What `#adopt` would do now (null: nothing). */
  #adoption(): { readonly targetRootGen: number; readonly unlockDue: boolean } | null {
    const local = this.#local;
    const unlock = this.#keys.unlock;
    const targetRootGen = Math.max(local.rootGen, Math.min(this.#durableRootGen, this.#keys.rootGen));
    const unlockDue = unlock !== null && unlock.gen > local.unlockGen;
    return !unlockDue && targetRootGen === local.rootGen ? null : { targetRootGen, unlockDue };
  }

  async #adopt(): Promise<void> {
    const keys = this.#keys;
    const local = this.#local;
    const unlock = keys.unlock;
    const adoption = this.#adoption();
    if (adoption === null) return;
    const targetRootGen = adoption.targetRootGen;
    const unlockDue = unlock !== null && adoption.unlockDue;
    const rootKey = keys.roots.get(targetRootGen);
    assert(rootKey !== undefined, () => `root generation ${targetRootGen} is not known`);
    let kek: Buffer | null = null;
    const autolockOff = unlockDue && unlock.wrappedKek.byteLength === 0;
    if (unlockDue && !autolockOff)
      kek = unwrapUnlockKek(
        keys.roots.get(unlock.rootGen)!,
        unlock.wrappedKek,
        this.clusterId,
        unlock.gen,
        unlock.rootGen,
      );
    try {
      await local.rewrap({
        rootGen: targetRootGen,
        rootKey,
        unlockGen: unlockDue ? unlock.gen : local.unlockGen,
        unlockKek: kek,
        autolockOff,
      });
    } finally {
      kek?.fill(0);
    }
  }

  #requestSnapshot(reason: string, reclaimDisk: boolean): void {
    this.#snapshotRequest = {
      reason,
      compactAll: true,
      reclaimDisk: reclaimDisk || (this.#snapshotRequest?.reclaimDisk ?? false),
    };
  }

  async #reserveUses(term: number): Promise<void> {
    const next = this.#reserving.then(async () => {
      const keyring = this.#keys.keyring;
      if (keyring.usesOf(term) + 1 + USES_SLACK <= this.#local.usesReserved(term)) return;
      const live = keyring
        .terms()
        .filter((t) => !t.destroyed)
        .map((t) => t.term);
      await this.#local.reserveUses(
        term,
        Math.max(this.#local.usesReserved(term), keyring.usesOf(term)) + KEY_USES_RESERVATION_BLOCK,
        live,
      );
    });
    this.#reserving = next.catch(() => undefined);
    await next;
  }
}

function commandKind(kind: string): string {
  return `command:${kind}`;
}

/**
 * An image as `snapshot`/`image` write it: `[1, key state, inner state sealed under a data key, or
 * null before the keyring's first term]`; a snapshot and the image stored beside the state share it.
 */
function unpackImage(bytes: Uint8Array, what: string): { keyState: Uint8Array; sealed: Uint8Array | null } {
  const value: unknown = packr.unpack(bytes);
  if (
    !Array.isArray(value) ||
    value[0] !== 1 ||
    value.length !== 3 ||
    !(value[1] instanceof Uint8Array) ||
    !(value[2] === null || value[2] instanceof Uint8Array)
  )
    throw new PayloadError(`${what} has an unknown layout`);
  return { keyState: value[1], sealed: value[2] };
}
