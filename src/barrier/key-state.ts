import { packr } from '../codec/msgpack.ts';
import { CorruptRecordError } from '../codec/errors.ts';
import { Keyring } from '../crypto/keyring.ts';
import { unwrapRootLink } from '../crypto/root-key.ts';
import { assert } from '../util/assert.ts';

/** The latest unlock key generation, as replicated: its KEK sealed under a root key generation. */
export interface UnlockRecord {
  readonly gen: number;
  readonly rootGen: number;
  readonly wrappedKek: Uint8Array;
}

/**
 * The replicated key state every manager holds identically at the same applied index: the
 * keyring, the root key generations (each link sealed under its predecessor), the latest unlock
 * KEK, and the bookkeeping that decides when an old term may be destroyed.
 */
export class KeyState {
  readonly clusterId: string;
  keyring: Keyring;
  /** Unwrapped root keys this process knows, by generation (from the local one forward). */
  readonly roots = new Map<number, Buffer>();
  rootGen: number;
  /** `[gen, root key gen sealed under gen - 1]` for every generation after the first. */
  chain: Array<readonly [number, Uint8Array]> = [];
  unlock: UnlockRecord | null = null;
  /** The highest applied index of a command sealed under each term. */
  readonly sealedMaxIndex = new Map<number, number>();
  /** The last rewrap: every manager snapshotted at `index` under `term` and dropped its log up to it. */
  lastRewrap: { readonly index: number; readonly term: number } | null = null;

  constructor(clusterId: string, localRootGen: number, localRoot: Buffer) {
    this.clusterId = clusterId;
    this.keyring = Keyring.empty(clusterId);
    this.roots.set(localRootGen, localRoot);
    this.rootGen = localRootGen;
  }

  get rootKey(): Buffer {
    const key = this.roots.get(this.rootGen);
    assert(key !== undefined, () => `root key generation ${this.rootGen} is not known`);
    return key;
  }

  /** Learns root generation `gen` from its link (sealed under `gen - 1`). */
  followLink(gen: number, wrapped: Uint8Array): void {
    if (this.roots.has(gen)) return;
    const previous = this.roots.get(gen - 1);
    if (previous === undefined)
      throw new CorruptRecordError(
        'the key state',
        `root key generation ${gen} follows ${gen - 1}, which this manager does not hold`,
      );
    this.roots.set(gen, unwrapRootLink(previous, wrapped, this.clusterId, gen));
  }
}

/** `[1, rootGen, chain, keyring sealed under that root, unlock, sealedMaxIndex, lastRewrap]`. */
export function encodeKeyState(state: KeyState): Buffer {
  return packr.pack([
    1,
    state.rootGen,
    state.chain,
    state.keyring.wrap(state.rootKey, state.rootGen),
    state.unlock === null ? null : [state.unlock.gen, state.unlock.rootGen, state.unlock.wrappedKek],
    [...state.sealedMaxIndex],
    state.lastRewrap === null ? null : [state.lastRewrap.index, state.lastRewrap.term],
  ]);
}

/** Replaces `state`'s replicated part with an encoded one, following root links as needed. */
export function decodeKeyStateInto(state: KeyState, bytes: Uint8Array): void {
  const value: unknown = packr.unpack(bytes);
  const fail = (what: string): never => {
    throw new CorruptRecordError("the snapshot's key state", what);
  };
  if (!Array.isArray(value) || value[0] !== 1 || value.length !== 7) fail('unknown layout');
  const [, rootGen, chain, wrappedKeyring, unlock, sealedMax, lastRewrap] = value as unknown[];
  if (!Number.isSafeInteger(rootGen) || (rootGen as number) < 1) fail('root generation');
  if (!Array.isArray(chain) || !(wrappedKeyring instanceof Uint8Array) || !Array.isArray(sealedMax))
    fail('field types');
  const known = Math.max(...state.roots.keys());
  if ((rootGen as number) < known)
    fail(`it is sealed under root key generation ${String(rootGen)}, older than this manager's ${known}`);
  for (const link of chain as unknown[]) {
    if (!Array.isArray(link) || !Number.isSafeInteger(link[0]) || !(link[1] instanceof Uint8Array)) fail('a root link');
    const [gen, wrapped] = link as [number, Uint8Array];
    if (gen > known && gen <= (rootGen as number)) state.followLink(gen, wrapped);
  }
  const root = state.roots.get(rootGen as number);
  if (root === undefined) fail(`no root link reaches generation ${String(rootGen)}`);
  state.keyring = Keyring.unwrap(root!, state.clusterId, wrappedKeyring as Uint8Array, rootGen as number);
  state.rootGen = rootGen as number;
  state.chain = (chain as Array<[number, Uint8Array]>).map(([gen, wrapped]) => [gen, wrapped] as const);
  if (unlock === null) state.unlock = null;
  else {
    if (!Array.isArray(unlock) || unlock.length !== 3 || !(unlock[2] instanceof Uint8Array)) fail('the unlock record');
    const [gen, unlockRootGen, wrappedKek] = unlock as [number, number, Uint8Array];
    state.unlock = { gen, rootGen: unlockRootGen, wrappedKek };
  }
  state.sealedMaxIndex.clear();
  for (const pair of sealedMax as unknown[]) {
    if (!Array.isArray(pair) || pair.length !== 2) fail('sealed index bookkeeping');
    state.sealedMaxIndex.set((pair as number[])[0]!, (pair as number[])[1]!);
  }
  if (lastRewrap === null) state.lastRewrap = null;
  else {
    if (!Array.isArray(lastRewrap) || lastRewrap.length !== 2) fail('the last rewrap');
    state.lastRewrap = { index: (lastRewrap as number[])[0]!, term: (lastRewrap as number[])[1]! };
  }
}

/**
 * The marks that change with every command, kept beside the stored image so it need not be sealed
 * again per batch: `[1, [[term, last index sealed under it], ...]]`. Not secret: indexes and terms.
 */
export function encodeMarks(state: KeyState): Uint8Array {
  return packr.pack([1, [...state.sealedMaxIndex]]);
}

export function decodeMarksInto(state: KeyState, bytes: Uint8Array): void {
  const value: unknown = packr.unpack(bytes);
  if (!Array.isArray(value) || value[0] !== 1 || !Array.isArray(value[1]))
    throw new CorruptRecordError("the state store's key marks", 'unknown layout');
  const marks = new Map<number, number>();
  for (const pair of value[1] as unknown[]) {
    if (!Array.isArray(pair) || !Number.isSafeInteger(pair[0]) || !Number.isSafeInteger(pair[1]))
      throw new CorruptRecordError("the state store's key marks", 'a mark');
    marks.set(pair[0] as number, pair[1] as number);
  }
  state.sealedMaxIndex.clear();
  for (const [term, index] of marks) state.sealedMaxIndex.set(term, index);
}
