import { randomInt } from 'node:crypto';
import { openBackup } from '../backup/backup-file.ts';
import { Barrier, type LocalKeys } from '../barrier/barrier.ts';
import { MANAGER_CERT_VALIDITY_DAYS, issueCertificate } from '../crypto/pki.ts';
import { DataDir } from '../manager/data-dir.ts';
import { Manager } from '../manager/manager.ts';
import type { NodeId } from '../raft/types.ts';
import { AppliedState } from '../state/applied-state.ts';
import { CA_KEY_SECRET, TLS_KEY_SECRET, hostOf, splitHostPort, writeNodeConfig } from './node-config.ts';

export interface RestoreOptions {
  readonly file: Buffer;
  readonly key: { readonly recoveryKey: string } | { readonly unlockKey: string };
  readonly dataDir: string;
  readonly listen: string;
  readonly advertise?: string;
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
  const dir = new DataDir(options.dataDir);
  if (dir.isManager()) throw new Error(`${options.dataDir} already holds a manager: restore into a new directory`);
  const opened = openBackup(options.file, options.key);
  try {
    const state = new AppliedState();
    const barrier = new Barrier({
      clusterId: opened.clusterId,
      rootKey: Buffer.from(opened.rootKey),
      local: readOnlyLocalKeys(opened.rootGen),
      inner: state,
    });
    await barrier.restore(opened.image, opened.index);
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
      hosts: [hostOf(advertise)],
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
      data: opened.image,
    });
    await dir.writeTlsFiles(opened.caCertPem, node.certPem);
    await writeNodeConfig(options.dataDir, {
      format: 1,
      nodeId,
      clusterId: opened.clusterId,
      listen: options.listen,
      advertise,
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
  } finally {
    opened.rootKey.fill(0);
  }
}
