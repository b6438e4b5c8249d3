import { randomUUID } from 'node:crypto';
import { Barrier, type BarrierResult, type InnerStateMachine } from '../barrier/barrier.ts';
import { CryptoError } from '../crypto/errors.ts';
import { KeyStore } from '../crypto/key-store.ts';
import { KEY_USES_MAX } from '../crypto/keyring.ts';
import { adoptOrCreateKeyFile, generateRootKey, kekFromUnlockKey, readKeyFile } from '../crypto/root-key.ts';
import { generateUnlockKey, parseUnlockKey, unlockKeyKek } from '../crypto/unlock-key.ts';
import type { RaftConfigInput } from '../raft/config.ts';
import type { BasicStatus, ConfChange, Message, NodeId, SnapshotMessage, Status } from '../raft/types.ts';
import { Replica, type PeerSender, type ReplicaObserver, type SnapshotChunks } from '../replica/replica.ts';
import type { LevelStorage } from '../storage/level-storage.ts';
import { createLogger, type Logger } from '../util/logger.ts';
import type { Random } from '../util/prng.ts';
import { DataDir } from './data-dir.ts';
import { ManagerError } from './errors.ts';
import { KeyStoreLocalKeys } from './local-keys.ts';

export const TICK_INTERVAL_MS = 100;
/** Scheduled keyring rotation: a new data key every 30 days. */
export const KEY_ROTATION_INTERVAL_MS = 30 * 24 * 3600 * 1000;

export interface ManagerOptions<Result> {
  readonly dataDir: string;
  readonly id: NodeId;
  /** The key file that wraps the root key (when autolock is off); keep it outside the data directory. */
  readonly keyFile?: string;
  readonly peers: PeerSender;
  readonly inner: InnerStateMachine<Result>;
  readonly random: Random;
  /** Founding voters, for a brand-new cluster only. */
  readonly bootstrapVoters?: readonly NodeId[];
  readonly logger?: Logger;
  readonly tickIntervalMs?: number;
  /**
   * How old the active data key may get before the leader rotates it (default
   * KEY_ROTATION_INTERVAL_MS); a function is asked each time (a schedule the replicated state
   * holds). Infinity: never by age (a key near its use limit is still rotated).
   */
  readonly keyRotationIntervalMs?: number | (() => number);
  readonly nowMs?: () => number;
  readonly raft?: Partial<Omit<RaftConfigInput, 'id' | 'random'>>;
  readonly snapshotEveryEntries?: number;
  readonly snapshotTailEntries?: number;
  /** Bytes bounds of the log in memory (Replica: SNAPSHOT_EVERY_BYTES, SNAPSHOT_TAIL_BYTES_MAX). */
  readonly snapshotEveryBytes?: number;
  readonly snapshotTailBytesMax?: number;
  /** Timings of the replica's work (metrics). */
  readonly observer?: ReplicaObserver;
  /** The replica's Ready loop failed and stopped it (ReplicaOptions.onFailure). */
  readonly onReplicaFailure?: (error: Error) => void;
  /** Start a one-member cluster from this data directory (quorum loss). */
  readonly forceNewCluster?: boolean;
}

export interface InitResult {
  readonly clusterId: string;
  /** With autolock: the unlock key, shown once to the operator and stored nowhere. */
  readonly unlockKey: string | null;
}

/** A keyring operation as an operator asks for it (rotate-unlock carries the new unlock key, made by the caller). */
export type KeyOperation =
  | { op: 'rotate' }
  | { op: 'rewrap' }
  | { op: 'destroy'; term: number }
  | { op: 'rotate-root' }
  | { op: 'rotate-unlock'; unlockKey: string }
  | { op: 'autolock-off' };

interface Running<Result> {
  readonly replica: Replica<BarrierResult<Result>>;
  readonly barrier: Barrier<Result>;
  readonly storage: LevelStorage;
  readonly local: KeyStoreLocalKeys;
  readonly timer: NodeJS.Timeout;
}

/**
 * One manager: its data directory (the Raft log in LevelDB, the key store), the encryption
 * barrier and the replica, driven by a clock. A manager whose root key is protected by an unlock
 * key starts locked: it serves nothing and takes no part in elections until `unlock`.
 */
export class Manager<Result> {
  readonly id: NodeId;
  readonly clusterId: string;
  readonly #options: ManagerOptions<Result>;
  readonly #store: KeyStore;
  readonly #log: Logger;
  #running: Running<Result> | null = null;
  #startedFrom: { index: number; fromStore: boolean; fallback: string | null } | null = null;

  /**
   * Where the replica started: from the state store at its index (nothing replayed up to it), or
   * from the newest snapshot (and why the store could not serve, if it had an image). Null while locked.
   */
  startedFrom(): { index: number; fromStore: boolean; fallback: string | null } | null {
    return this.#startedFrom;
  }
  #stopped = false;
  #rotationInFlight = false;
  #messagesDroppedLocked = 0;
  #lastLeader = 0;
  /** When a leader was last known here, or this manager started if none since (performance.now()). */
  #leaderSeenAtMs = performance.now();
  #localSecrets = new Map<string, Buffer>();
  #unlockPublished = false;

  private constructor(options: ManagerOptions<Result>, store: KeyStore) {
    this.id = options.id;
    this.clusterId = store.clusterId;
    this.#options = options;
    this.#store = store;
    this.#log = options.logger ?? createLogger({ component: 'manager' });
  }

  /**
   * Creates a data directory's key store: a new root key, wrapped by the key file at `keyFile`
   * (used as it is if it exists, e.g. a Docker secret; created otherwise) or, with autolock, by a
   * new unlock key that is returned.
   */
  static async init(
    dataDir: string,
    options: {
      clusterId?: string;
      keyFile?: string;
      autolock?: boolean;
      /** With autolock: this unlock key (e.g. from a Docker secret) instead of a new one. */
      unlockKey?: string;
      /** A restored manager's: the unlock generation of the backup's state (so it keeps its own key). */
      unlockGen?: number;
      /** A joining manager's: the cluster's root key (generation `rootGen`), received from the leader. */
      rootKey?: Buffer;
      rootGen?: number;
      /** Private keys to keep sealed under the KEK (TLS key, CA key). */
      secrets?: ReadonlyMap<string, Buffer>;
    },
  ): Promise<InitResult> {
    const dir = new DataDir(dataDir);
    await dir.create();
    if (await KeyStore.exists(dir.keyStore))
      throw new ManagerError(
        'ALREADY_INITIALIZED',
        `${dataDir} already holds a manager's keys; use it as it is, or choose an empty directory`,
      );
    const clusterId = options.clusterId ?? randomUUID();
    const rootKey = options.rootKey ?? generateRootKey();
    const rootGen = options.rootGen ?? 1;
    let unlockKey: string | null = null;
    let kek: Buffer;
    try {
      if (options.autolock === true) {
        unlockKey = options.unlockKey ?? generateUnlockKey();
        kek = kekFromUnlockKey(unlockKey, clusterId);
        const store = await KeyStore.create(dir.keyStore, {
          clusterId,
          rootKey,
          rootGen,
          kek,
          protection: 'unlock-key',
          unlockGen: options.unlockGen ?? 0,
        });
        store.unlock(kek);
        if (options.secrets !== undefined) await store.setSecrets(options.secrets);
        store.forget();
      } else {
        if (options.keyFile === undefined) throw new TypeError('a key file path is needed when autolock is off');
        kek = adoptOrCreateKeyFile(options.keyFile).kek;
        const store = await KeyStore.create(dir.keyStore, {
          clusterId,
          rootKey,
          rootGen,
          kek,
          protection: 'key-file',
          unlockGen: options.unlockGen ?? 0,
        });
        store.unlock(kek);
        if (options.secrets !== undefined) await store.setSecrets(options.secrets);
        store.forget();
      }
      kek.fill(0);
      return { clusterId, unlockKey };
    } finally {
      if (options.rootKey === undefined) rootKey.fill(0);
    }
  }

  /** Opens a manager's data directory; it starts at once with a key file, or stays locked. */
  static async open<Result>(options: ManagerOptions<Result>): Promise<Manager<Result>> {
    const dir = new DataDir(options.dataDir);
    await KeyStore.tidy(dir.keyStore);
    const store = await KeyStore.read(dir.keyStore);
    const manager = new Manager(options, store);
    if (store.protection === 'key-file') {
      if (options.keyFile === undefined)
        throw new CryptoError(
          'KEY_FILE_INVALID',
          `the root key of ${options.dataDir} is wrapped by a key file; pass its path`,
        );
      const kek = readKeyFile(options.keyFile);
      await manager.#start(store.unlock(kek));
    } else {
      manager.#log.info({ event: 'locked' }, 'manager is locked: unlock it with the unlock key');
    }
    return manager;
  }

  get locked(): boolean {
    return this.#running === null;
  }

  /**
   * Unlocks a locked manager. A malformed key (a typo) is refused before any decryption; a
   * well-formed wrong key is refused with UNLOCK_KEY_WRONG; neither changes anything.
   */
  async unlock(unlockKey: string): Promise<void> {
    if (this.#running !== null) throw new ManagerError('ALREADY_UNLOCKED', 'the manager is already unlocked');
    const kek = unlockKeyKek(parseUnlockKey(unlockKey), this.clusterId);
    try {
      const root = this.#store.unlock(kek);
      await this.#start(root);
    } finally {
      kek.fill(0);
    }
    this.#log.info({ event: 'unlocked' }, 'manager unlocked');
  }

  async #start(rootKey: Buffer): Promise<void> {
    const options = this.#options;
    const local = new KeyStoreLocalKeys(this.#store, options.keyFile ?? null);
    const barrier = new Barrier<Result>({ clusterId: this.clusterId, rootKey, local, inner: options.inner });
    const storage = await new DataDir(options.dataDir).openRaftStorage();
    let replica: Replica<BarrierResult<Result>>;
    try {
      // A state on disk says how far it is; what it lacks is rebuilt from the snapshot and the log.
      await options.inner.reset?.();
      replica = await Replica.start({
        id: options.id,
        storage,
        stateMachine: barrier,
        peers: options.peers,
        random: options.random,
        ...(options.bootstrapVoters === undefined ? {} : { bootstrapVoters: options.bootstrapVoters }),
        ...(options.raft === undefined ? {} : { raft: options.raft }),
        ...(options.snapshotEveryEntries === undefined ? {} : { snapshotEveryEntries: options.snapshotEveryEntries }),
        ...(options.snapshotTailEntries === undefined ? {} : { snapshotTailEntries: options.snapshotTailEntries }),
        ...(options.snapshotEveryBytes === undefined ? {} : { snapshotEveryBytes: options.snapshotEveryBytes }),
        ...(options.snapshotTailBytesMax === undefined ? {} : { snapshotTailBytesMax: options.snapshotTailBytesMax }),
        ...(options.observer === undefined ? {} : { observer: options.observer }),
        ...(options.onReplicaFailure === undefined ? {} : { onFailure: options.onReplicaFailure }),
        ...(options.forceNewCluster === true ? { forceNewCluster: true } : {}),
      });
      const from = replica.startedFrom;
      this.#startedFrom = { ...from, fallback: barrier.restoreStoredFailure };
      this.#log.info(
        {
          event: 'state-restored',
          index: from.index,
          fromStore: from.fromStore,
          fallback: barrier.restoreStoredFailure,
        },
        from.fromStore
          ? `the state store holds index ${from.index}: nothing up to it is replayed`
          : `restored the newest snapshot (index ${from.index}) and replays the log after it`,
      );
      // A crash may have left the key store behind the stored snapshot's root generation.
      await replica.settled();
      await barrier.adoptLocally();
      this.#localSecrets = this.#store.openSecrets();
    } catch (error) {
      await storage.close();
      local.forget();
      throw error;
    }
    const timer = setInterval(() => this.#onTick(), options.tickIntervalMs ?? TICK_INTERVAL_MS);
    this.#running = { replica, barrier, storage, local, timer };
    this.#leaderSeenAtMs = performance.now();
  }

  #onTick(): void {
    const running = this.#running;
    if (running === null || this.#stopped) return;
    running.replica.tick();
    const { lead, term } = running.replica.raw.basicStatus();
    if (lead !== 0) this.#leaderSeenAtMs = performance.now();
    if (lead !== this.#lastLeader) {
      this.#lastLeader = lead;
      this.#log.info(
        { event: 'leader-changed', leader: lead, term },
        lead === 0 ? 'no leader known' : `manager ${lead} leads in term ${term}`,
      );
    }
    this.#maybeRotate(running);
    this.#maybePublishUnlockKey(running);
  }

  /**
   * A cluster made with autolock has an unlock key that only the first manager's key store knows.
   * Its first leader puts that key's KEK in the log (sealed under the root key), so managers
   * that join later are autolocked with the same unlock key.
   */
  #maybePublishUnlockKey(running: Running<Result>): void {
    if (
      this.#unlockPublished ||
      running.replica.raw.basicStatus().role !== 'leader' ||
      running.barrier.status().activeTerm === 0
    )
      return;
    // A newer replicated generation is adopted first (rotate-unlock or autolock-off in flight).
    if (running.barrier.status().unlockGen !== this.#store.unlockGen) return;
    const replicated = running.barrier.unlockKek();
    let payload: Buffer | null = null;
    if (this.#store.protection === 'unlock-key') {
      const ours = running.local.kek;
      // The cluster's first unlock key (made by init), or a restored manager's own new one.
      if (replicated === null || !replicated.equals(ours)) payload = running.barrier.rotateUnlockPayload(ours);
    } else if (replicated !== null) {
      // A manager restored without autolock from an autolocked backup: the cluster follows it.
      payload = running.barrier.autolockOffPayload();
    }
    replicated?.fill(0);
    this.#unlockPublished = true;
    if (payload === null) return;
    running.replica.propose(payload).catch(() => {
      this.#unlockPublished = false;
    });
  }

  /** The cluster's current root key, for a manager being admitted (sent over mutual TLS only). */
  rootKeyForJoiner(): { key: Buffer; gen: number } {
    return this.#need().barrier.currentRootKey();
  }

  /** This manager's private keys (TLS key, CA key), opened at unlock. */
  localSecret(name: string): Buffer | undefined {
    return this.#localSecrets.get(name);
  }

  /** Stores (or replaces) private keys, sealed under the KEK, in one atomic write. */
  async setLocalSecrets(entries: ReadonlyMap<string, Buffer>): Promise<void> {
    this.#need();
    await this.#store.setSecrets(entries);
    for (const [name, value] of entries) this.#localSecrets.set(name, Buffer.from(value));
  }

  /** Scheduled rotation, by the leader: a keyring without a term, an old key, or one near its use limit. */
  #maybeRotate(running: Running<Result>): void {
    if (this.#rotationInFlight || running.replica.raw.basicStatus().role !== 'leader') return;
    const nowMs = this.#now();
    const interval = this.#options.keyRotationIntervalMs ?? KEY_ROTATION_INTERVAL_MS;
    if (!running.barrier.needsRotation(nowMs, typeof interval === 'function' ? interval() : interval)) return;
    this.#rotationInFlight = true;
    running.replica
      .propose(running.barrier.rotatePayload(nowMs))
      .then((result) =>
        this.#log.info(
          { event: 'keyring-rotated', outcome: result.type === 'key-op' ? result.detail : result.type },
          'scheduled keyring rotation',
        ),
      )
      .catch((error: unknown) =>
        this.#log.warn(
          { event: 'keyring-rotation-failed', err: error },
          'scheduled keyring rotation did not commit; it will be retried',
        ),
      )
      .finally(() => {
        this.#rotationInFlight = false;
      });
  }

  /** A message from a peer (the transport calls this). A locked manager drops it: it takes no part. */
  step(message: Message): void {
    if (this.#running === null) {
      this.#messagesDroppedLocked++;
      return;
    }
    this.#running.replica.step(message);
  }

  /**
   * A snapshot whose records a leader streams (the transport calls this): the records are written
   * aside, then the replica sees the snapshot. A locked manager drains and drops them.
   */
  receiveSnapshot(message: SnapshotMessage, chunks: AsyncIterable<Uint8Array>): void {
    const running = this.#running;
    const startMs = performance.now();
    const received =
      running === null
        ? (async () => {
            this.#messagesDroppedLocked++;
            for await (const _ of chunks);
          })()
        : running.replica.receiveSnapshot(message, chunks);
    received.then(
      () =>
        this.#log.info(
          {
            event: 'snapshot-received',
            from: message.from,
            index: message.snapshot.metadata.index,
            ms: Math.round(performance.now() - startMs),
          },
          'received a streamed snapshot',
        ),
      (error: unknown) =>
        this.#log.warn(
          { event: 'snapshot-receive-failed', from: message.from, index: message.snapshot.metadata.index, err: error },
          'a snapshot from the leader was not taken; it will be sent again',
        ),
    );
  }

  reportReachable(peer: NodeId): void {
    this.#running?.replica.reportReachable(peer);
  }

  reportUnreachable(peer: NodeId): void {
    this.#running?.replica.reportUnreachable(peer);
  }

  reportSnapshot(peer: NodeId, ok: boolean): void {
    this.#running?.replica.reportSnapshot(peer, ok);
  }

  /**
   * What a streamed backup needs, taken in one turn so the records are exactly the state at
   * `index`: the sealed descriptor and the record chunks of that moment (read them to the end, or
   * close them), the root key that opens the descriptor, and, when this manager is autolocked, its
   * unlock KEK. Null when the state keeps no records apart from its image (then: backupMaterial).
   */
  async backupStream(): Promise<{
    descriptor: Uint8Array;
    chunks: SnapshotChunks;
    index: number;
    term: number;
    rootKey: Buffer;
    rootGen: number;
    unlockKek: Buffer | null;
  } | null> {
    const running = this.#need();
    // The descriptor's seal counts against the active term's reserved uses, as a snapshot's does.
    await running.barrier.beforeSnapshotStream();
    const term = running.replica.raw.basicStatus().term;
    const stream = running.barrier.snapshotStream();
    if (stream === null) return null;
    const root = running.barrier.currentRootKey();
    const unlockKek = this.#store.protection === 'unlock-key' ? Buffer.from(this.#store.kek) : null;
    return {
      descriptor: stream.data,
      chunks: stream.records,
      index: running.barrier.appliedIndex,
      term,
      rootKey: root.key,
      rootGen: root.gen,
      unlockKek,
    };
  }

  /**
   * What a backup needs, taken in one synchronous step so the image is exactly the state at
   * `index`: the sealed image, the root key that opens it, and, when this manager is autolocked,
   * its unlock KEK (so the unlock key opens the backup too).
   */
  async backupMaterial(): Promise<{
    image: Buffer;
    index: number;
    term: number;
    rootKey: Buffer;
    rootGen: number;
    unlockKek: Buffer | null;
  }> {
    const running = this.#need();
    // The status and the image's reads begin in the same turn: the image is of the applied index.
    const status = running.replica.raw.basicStatus();
    const image = Buffer.from(await running.barrier.image());
    const root = running.barrier.currentRootKey();
    const unlockKek = this.#store.protection === 'unlock-key' ? Buffer.from(this.#store.kek) : null;
    return { image, index: status.applied, term: status.term, rootKey: root.key, rootGen: root.gen, unlockKek };
  }

  /** Members removed by a force-new-cluster start, to be marked removed in the replicated state. */
  forcedOut(): readonly NodeId[] {
    return this.#running?.replica.forcedOut ?? [];
  }

  /** Why this manager's replica stopped on its own, if it did (it then refuses every request). */
  replicaFailure(): Error | null {
    return this.#running?.replica.failure ?? null;
  }

  raftStatus(): Status | null {
    return this.#running?.replica.raw.status() ?? null;
  }

  /**
   * True when this manager has used the active key nearly up to its limit (KEY_USES_MAX): the
   * leader does not see other managers' counts, so a follower asks for the rotation itself.
   */
  keyUsesNearLimit(): boolean {
    const keys = this.#running?.barrier.status();
    return keys !== undefined && keys.activeTerm > 0 && keys.usesOfActiveTerm >= KEY_USES_MAX * 0.9;
  }

  /** Proposes a membership change (on the leader); resolves once applied here. */
  async proposeConfChange(change: ConfChange): Promise<void> {
    await this.#need().replica.proposeConfChange(change);
  }

  /** Proposes an already sealed payload (forwarded from another manager); the leader's result. */
  proposePayload(payload: Uint8Array): Promise<BarrierResult<Result>> {
    return this.#need().replica.propose(payload);
  }

  /** Seals a command for proposing here or on the leader. */
  sealCommand(kind: string, plaintext: Uint8Array): Promise<Buffer> {
    return this.#need().barrier.sealCommand(kind, plaintext);
  }

  transferLeadership(to: NodeId): void {
    this.#need().replica.transferLeadership(to);
  }

  status(): {
    locked: boolean;
    raft: BasicStatus | null;
    keys: ReturnType<Barrier<Result>['status']> | null;
    keyStore: { rootGen: number; unlockGen: number; protection: string };
    /** Raft messages that reached this manager while it was locked, and were dropped. */
    messagesDroppedWhileLocked: number;
  } {
    const running = this.#running;
    return {
      locked: running === null,
      messagesDroppedWhileLocked: this.#messagesDroppedLocked,
      raft: running?.replica.raw.basicStatus() ?? null,
      keys: running?.barrier.status() ?? null,
      keyStore: { rootGen: this.#store.rootGen, unlockGen: this.#store.unlockGen, protection: this.#store.protection },
    };
  }

  /**
   * Milliseconds since this manager last knew a leader (checked each tick), or since it started
   * if it has known none since: a manager cut off from the majority for long is told apart from
   * one that is starting or whose cluster is electing.
   */
  leaderSeenAgoMs(): number {
    return performance.now() - this.#leaderSeenAtMs;
  }

  /** Resolves once this manager has applied every write committed before the call. */
  linearizableRead(): Promise<number> {
    return this.#need().replica.linearizableRead();
  }

  /**
   * A keyring operation sealed for proposing here or on the leader (a follower forwards it). With
   * rotate-unlock, `unlockKey` is the new key (made by the caller, shown to the operator once).
   */
  keyOpPayload(op: KeyOperation): Buffer {
    const barrier = this.#need().barrier;
    switch (op.op) {
      case 'rotate':
        return barrier.rotatePayload(this.#now());
      case 'rewrap':
        return barrier.rewrapPayload();
      case 'destroy':
        return barrier.destroyPayload(op.term);
      case 'rotate-root':
        return barrier.rotateRootPayload();
      case 'autolock-off':
        return barrier.autolockOffPayload();
      case 'rotate-unlock': {
        const kek = kekFromUnlockKey(op.unlockKey, this.clusterId);
        try {
          return barrier.rotateUnlockPayload(kek);
        } finally {
          kek.fill(0);
        }
      }
    }
  }

  async stop(): Promise<void> {
    if (this.#stopped) return;
    this.#stopped = true;
    const running = this.#running;
    if (running === null) return;
    clearInterval(running.timer);
    await running.replica.stop();
    await running.storage.close();
    running.local.forget();
  }

  #need(): Running<Result> {
    if (this.#stopped) throw new ManagerError('MANAGER_STOPPED', 'the manager is stopped');
    if (this.#running === null)
      throw new ManagerError('MANAGER_LOCKED', 'the manager is locked; unlock it with the unlock key (coffer unlock)');
    return this.#running;
  }

  #now(): number {
    return (this.#options.nowMs ?? Date.now)();
  }
}
