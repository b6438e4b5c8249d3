import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Snapshot } from '../raft/types.ts';
import { LevelStorage } from '../storage/level-storage.ts';
import { LevelStateStore } from '../kv/level-state-store.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';

/**
 * A manager's data directory: the one place that names what is in it, where, and with which
 * mode. Everything else asks a DataDir for a path; nothing joins names under a data directory
 * by hand. What the files hold belongs to their owners (named on the right).
 *
 * ```
 * <data dir>/            0700  made by Manager.init
 * ├── keys               0600  the key store: the root key wrapped by the KEK, the use
 * │                            reservations, this manager's sealed private keys (TLS key, CA
 * │                            key, audit key) (src/crypto/key-store.ts); replaced atomically
 * │                            through keys.tmp, which a crash may leave (removed at open)
 * ├── raft/              0700  the Raft hard state, log and newest snapshot, in LevelDB
 * │                            (src/storage/level-storage.ts); its LOCK file is the only lock:
 * │                            LevelDB's, held while a manager has the directory open
 * ├── tls/               0700
 * │   ├── ca.crt         0644  the cluster's CA certificate(s), PEM (trust roots)
 * │   └── node.crt       0644  this manager's certificate, a readable copy (the key store holds
 * │                            the one served, beside its key)
 * ├── audit/             0700  this manager's HMAC-chained audit log: audit.log, audit.head
 * │                            (0600; src/audit/audit-log.ts), and logs moved aside (*.old)
 * ├── unlock.sock              only while a locked manager waits for `coffer unlock`
 * └── node.json          0644  the manager's settings, nothing secret (src/server/node-config.ts);
 *                              written last by init, join and restore: it marks the directory
 *                              as a manager's (isManagerDataDir)
 * <data dir>.key         0600  the default key file, beside the directory, never inside it
 * <data dir>-admin/      0700  where init writes the admin client identity by default
 * ```
 *
 * Small files (node.json, the certificates) are written atomically: `<name>.tmp`, fsync,
 * rename, fsync of the directory.
 */
/** The names inside a data directory, relative to it (DataDir joins them; see the tree above). */
export const DATA_DIR_NAMES = {
  keyStore: 'keys',
  raft: 'raft',
  state: 'state',
  tls: 'tls',
  caCert: 'ca.crt',
  nodeCert: 'node.crt',
  audit: 'audit',
  unlockSocket: 'unlock.sock',
  nodeConfig: 'node.json',
} as const;

export class DataDir {
  static readonly DIR_MODE = 0o700;
  static readonly SECRET_MODE = 0o600;
  static readonly PUBLIC_MODE = 0o644;

  readonly root: string;
  /** The key store file (src/crypto/key-store.ts). */
  readonly keyStore: string;
  /** The LevelDB directory of the Raft storage. */
  readonly raft: string;
  /** The LevelDB directory of the applied state (src/kv/level-state-store.ts): sealed records only. */
  readonly state: string;
  readonly tls: string;
  readonly caCert: string;
  readonly nodeCert: string;
  /** The audit log's directory (audit.log, audit.head). */
  readonly audit: string;
  /** The unix socket a locked manager waits on for its unlock key. */
  readonly unlockSocket: string;
  /** The manager's settings (src/server/node-config.ts), written last. */
  readonly nodeConfig: string;
  /** The key file used unless one is named: beside the directory, not inside it. */
  readonly defaultKeyFile: string;
  /** Where init writes the admin client identity unless told otherwise. */
  readonly defaultAdminDir: string;

  constructor(root: string) {
    this.root = root;
    const names = DATA_DIR_NAMES;
    this.keyStore = join(root, names.keyStore);
    this.raft = join(root, names.raft);
    this.state = join(root, names.state);
    this.tls = join(root, names.tls);
    this.caCert = join(this.tls, names.caCert);
    this.nodeCert = join(this.tls, names.nodeCert);
    this.audit = join(root, names.audit);
    this.unlockSocket = join(root, names.unlockSocket);
    this.nodeConfig = join(root, names.nodeConfig);
    const bare = root.replace(/\/+$/, '');
    this.defaultKeyFile = `${bare}.key`;
    this.defaultAdminDir = `${bare}-admin`;
  }

  /** Whether init, join or restore finished here (node.json is the last file they write). */
  isManager(): boolean {
    return existsSync(this.nodeConfig);
  }

  /** Makes the directory (and its parents), owner-only; an existing one is left as it is. */
  async create(): Promise<void> {
    await mkdir(this.root, { recursive: true, mode: DataDir.DIR_MODE });
  }

  /** The Raft storage, its directory made owner-only if it is new. */
  async openStateStore(): Promise<LevelStateStore> {
    await mkdir(this.state, { recursive: true, mode: DataDir.DIR_MODE });
    return LevelStateStore.open(this.state);
  }

  async openRaftStorage(): Promise<LevelStorage> {
    await mkdir(this.raft, { recursive: true, mode: DataDir.DIR_MODE });
    return LevelStorage.open(this.raft);
  }

  /**
   * A restored manager's Raft storage: `snapshot` as its only content (no entries), and the hard
   * state at the snapshot (its term, no vote, committed up to its index). Refused if the storage
   * already holds anything: a restore never writes over a manager's log.
   */
  async writeRestoredRaft(snapshot: Snapshot): Promise<void> {
    const storage = await this.openRaftStorage();
    try {
      const stored = await storage.load();
      if (stored.snapshot !== null || stored.entries.length > 0 || stored.hardState.term !== 0) {
        throw new Error(`${this.raft} already holds Raft state: restore into a new data directory`);
      }
      const { index, term } = snapshot.metadata;
      await storage.save({ hardState: { term, vote: 0, commit: index }, entries: [], snapshot });
    } finally {
      await storage.close();
    }
  }

  /** Writes the CA certificate(s) and this manager's certificate (public; the directory is owner-only). */
  async writeTlsFiles(caCertPem: string, nodeCertPem: string): Promise<void> {
    await mkdir(this.tls, { recursive: true, mode: DataDir.DIR_MODE });
    await writeFileAtomic(this.caCert, caCertPem, DataDir.PUBLIC_MODE);
    await writeFileAtomic(this.nodeCert, nodeCertPem, DataDir.PUBLIC_MODE);
  }

  async readTlsFiles(): Promise<{ caCertPem: string; nodeCertPem: string }> {
    return { caCertPem: await readFile(this.caCert, 'utf8'), nodeCertPem: await readFile(this.nodeCert, 'utf8') };
  }
}

/**
 * Whether `root` is a manager's data directory (init or join finished there). What lets a
 * container's start command decide between joining and serving.
 */
export function isManagerDataDir(root: string): boolean {
  return new DataDir(root).isManager();
}

/** `<data dir>.key`: the key file used unless one is named. */
export function defaultKeyFile(root: string): string {
  return new DataDir(root).defaultKeyFile;
}
