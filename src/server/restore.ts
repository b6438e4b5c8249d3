import { randomInt } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { openBackup } from '../backup/backup-file.ts';
import { readBackupFile, type StreamedBackupFile } from '../backup/backup-stream.ts';
import { Barrier, type LocalKeys } from '../barrier/barrier.ts';
import { MANAGER_CERT_VALIDITY_DAYS, issueCertificate } from '../crypto/pki.ts';
import { DataDir } from '../manager/data-dir.ts';
import { Manager } from '../manager/manager.ts';
import type { NodeId } from '../raft/types.ts';
import { AppliedState, type AppliedResult } from '../state/applied-state.ts';
import { managerCertificateHosts, normalizeExtraHosts } from './manager-hosts.ts';
import { CA_KEY_SECRET, TLS_KEY_SECRET, splitHostPort, writeNodeConfig } from './node-config.ts';

export interface RestoreOptions {
  /** The backup file's path (format 1 or 2). */
  readonly file: string;
  /** Bytes of records read of how many (a format-2 backup's). */
  readonly onProgress?: (done: number, total: number) => void;
  readonly key: { readonly recoveryKey: string } | { readonly unlockKey: string };
  readonly dataDir: string;
  readonly listen: string;
  readonly advertise?: string;
  /** Names for the new manager's certificate besides the advertise host (`--san`). */
  readonly extraHosts?: readonly string[];
  readonly keyFile?: string;
  readonly autolock?: boolean;
}

export interface RestoreOutcome {
  readonly clusterId: string;
  readonly nodeId: NodeId;
  /** The log index the backup was taken at. */
  readonly index: number;
  readonly secrets: number;
  readonly createdAtMs: number;
  /** With --autolock: the new manager's unlock key, shown once. */
  readonly unlockKey: string | null;
  readonly keyFile: string | null;
}

/** The key record a restore needs to open the image once (nothing is written through it). */
function readOnlyLocalKeys(rootGen: number): LocalKeys {
  return {
    rootGen,
    unlockGen: 0,
    usesReserved: () => 0,
    reserveUses: () => Promise.resolve(),
    rewrap: () => Promise.resolve(),
  };
}

/**
 * `coffer snapshot restore`: a new one-manager cluster from a backup. The backup is opened with
 * the recovery key or the unlock key and its state decrypted once to check it; then a data
 * directory is written: a key store holding the root key (wrapped by a key file, or a new unlock
 * key), a certificate for a new manager from the cluster's own CA (so existing client identities
 * keep working), and the Raft storage with the backup as its snapshot and this manager as the
 * only voter. The backup's managers are retired: marked removed once the new manager leads.
 */
export async function restoreBackup(options: RestoreOptions): Promise<RestoreOutcome> {
  const advertise = options.advertise ?? options.listen;
  splitHostPort(options.listen);
  splitHostPort(advertise);
  // Checked before the backup is read, which can take minutes: a wrong name fails at once.
  normalizeExtraHosts(options.extraHosts ?? []);
  const dir = new DataDir(options.dataDir);
  if (dir.isManager()) throw new Error(`${options.dataDir} already holds a manager: restore into a new directory`);
  const { backup, handle } = await readBackupFile(options.file);
  try {
    if (backup.format === 1) {
      const opened = openBackup(backup.bytes, options.key);
      try {
        const state = new AppliedState();
        const barrier = new Barrier({
          clusterId: opened.clusterId,
          rootKey: Buffer.from(opened.rootKey),
          local: readOnlyLocalKeys(opened.rootGen),
          inner: state,
        });
        await barrier.restore(opened.image, opened.index);
        return await writeRestored(dir, options, advertise, { ...opened, state, barrier, snapshotData: opened.image });
      } finally {
        opened.rootKey.fill(0);
      }
    }
    return await restoreStreamed(dir, backup, options, advertise);
  } finally {
    await handle.close();
  }
}

/**
 * A backup of format 2: checked through (checksums and MAC), then its records are written into
 * the new manager's state store as a follower writes a streamed snapshot's, aside until the
 * trailer has been checked again, then switched to; the descriptor becomes the Raft snapshot
 * beside them. A backup that fails its checks leaves no state store behind.
 */
async function restoreStreamed(
  dir: DataDir,
  backup: StreamedBackupFile,
  options: RestoreOptions,
  advertise: string,
): Promise<RestoreOutcome> {
  const { header } = backup;
  const { rootKey, caKeyPem } = backup.openKeys(options.key);
  // Read through once to check it first (a damaged or altered file is refused by what is wrong
  // with it, before a record is written), then again to write it (checked again: the file could
  // change in between). Progress counts both reads.
  const span = backup.recordsSpan;
  let read = 0;
  const onBytes = (bytes: number): void => {
    read += bytes;
    options.onProgress?.(read, 2 * span);
  };
  try {
    for await (const _ of backup.chunks(rootKey, onBytes));
  } catch (error) {
    rootKey.fill(0);
    throw error;
  }
  const hadState = existsSync(dir.state);
  const store = await dir.openStateStore();
  let done = false;
  try {
    const state = new AppliedState({ store });
    const barrier = new Barrier({
      clusterId: header.clusterId,
      rootKey: Buffer.from(rootKey),
      local: readOnlyLocalKeys(header.rootGen),
      inner: state,
    });
    await state.reset();
    await barrier.prepareSnapshot(header.index, backup.chunks(rootKey, onBytes));
    await barrier.installSnapshot(header.index);
    await barrier.restore(backup.descriptor, header.index);
    const outcome = await writeRestored(dir, options, advertise, {
      clusterId: header.clusterId,
      index: header.index,
      term: header.term,
      rootGen: header.rootGen,
      createdAtMs: header.createdAtMs,
      caCertPem: header.caCertPem,
      rootKey,
      caKeyPem,
      state,
      barrier,
      snapshotData: backup.descriptor,
    });
    done = true;
    return outcome;
  } finally {
    rootKey.fill(0);
    await store.close();
    if (!done && !hadState) rmSync(dir.state, { recursive: true, force: true });
  }
}

/** The rest of a restore, the same for both formats: a new manager's keys, certificate, Raft storage and config. */
async function writeRestored(
  dir: DataDir,
  options: RestoreOptions,
  advertise: string,
  opened: {
    clusterId: string;
    index: number;
    term: number;
    rootGen: number;
    createdAtMs: number;
    caCertPem: string;
    rootKey: Buffer;
    caKeyPem: string;
    state: AppliedState;
    barrier: Barrier<AppliedResult>;
    snapshotData: Uint8Array;
  },
): Promise<RestoreOutcome> {
  const { state, barrier } = opened;
  const extraHosts = normalizeExtraHosts(options.extraHosts ?? []);
  const retired = [...new Set([...state.cluster.addresses.keys()])].filter((id) => !state.cluster.removed.has(id));
  const taken = new Set<NodeId>([...state.cluster.addresses.keys(), ...state.cluster.removed]);
  let nodeId = 0;
  while (nodeId === 0 || taken.has(nodeId)) nodeId = 2 + randomInt(2 ** 31 - 2);
  const ca = { certPem: opened.caCertPem, keyPem: opened.caKeyPem };
  const node = issueCertificate(ca, {
    id: String(nodeId),
    role: 'manager',
    clusterId: opened.clusterId,
    nowMs: Date.now(),
    hosts: managerCertificateHosts(advertise, extraHosts),
    validityDays: MANAGER_CERT_VALIDITY_DAYS,
  });
  const keyFile = options.autolock === true ? null : (options.keyFile ?? dir.defaultKeyFile);
  const init = await Manager.init(options.dataDir, {
    clusterId: opened.clusterId,
    ...(keyFile === null ? { autolock: true } : { keyFile }),
    rootKey: opened.rootKey,
    rootGen: opened.rootGen,
    // At the backup's unlock generation: this manager keeps the protection chosen here, and once
    // it leads, the cluster follows it (its new unlock key, or autolock off).
    unlockGen: barrier.status().unlockGen,
    secrets: new Map([
      [TLS_KEY_SECRET, Buffer.from(node.keyPem)],
      [CA_KEY_SECRET, Buffer.from(opened.caKeyPem)],
    ]),
  });
  await dir.writeRestoredRaft({
    metadata: { index: opened.index, term: opened.term, confState: { voters: [nodeId], learners: [] } },
    data: opened.snapshotData,
  });
  await dir.writeTlsFiles(opened.caCertPem, node.certPem);
  await writeNodeConfig(options.dataDir, {
    format: 1,
    nodeId,
    clusterId: opened.clusterId,
    listen: options.listen,
    advertise,
    extraHosts,
    bootstrap: false,
    initialJoinTokenHash: null,
    initialAdmin: null,
    retiredMembers: retired,
    peers: [],
    managerCertValidityDays: MANAGER_CERT_VALIDITY_DAYS,
  });
  return {
    clusterId: opened.clusterId,
    nodeId,
    index: opened.index,
    secrets: await state.secrets.count(),
    createdAtMs: opened.createdAtMs,
    unlockKey: init.unlockKey,
    keyFile,
  };
}
