import { randomBytes } from 'node:crypto';
import { AUDIT_KEY_BYTES, AuditLog } from '../audit/audit-log.ts';
import { KeyStore } from '../crypto/key-store.ts';
import { DataDir } from '../manager/data-dir.ts';
import { kekFromUnlockKey, readKeyFile } from '../crypto/root-key.ts';
import type { Logger } from '../util/logger.ts';
import { AUDIT_KEY_SECRET } from './node-config.ts';

/** What of a Manager this needs: its local secrets, sealed in its key store. */
interface LocalSecrets {
  localSecret(name: string): Buffer | undefined;
  setLocalSecrets(entries: ReadonlyMap<string, Buffer>): Promise<void>;
}

/**
 * Opens a manager's audit log under its audit key. On the manager's first start (no key yet,
 * also after an upgrade from unkeyed logs) a key is made and a new log begins, whatever was
 * there moved aside; the log is made before the key is stored, so a crash in between only
 * repeats this. Once the key exists, a missing or broken log stops the start (AuditError),
 * unless `newLog` (the operator's `coffer server --new-audit-log`) moves it aside for a new one.
 */
export async function openManagerAuditLog(
  manager: LocalSecrets,
  dir: string,
  nodeId: number,
  log: Logger,
  newLog = false,
): Promise<AuditLog> {
  const stored = manager.localSecret(AUDIT_KEY_SECRET);
  const key = stored ?? randomBytes(AUDIT_KEY_BYTES);
  const audit = await AuditLog.open(dir, nodeId, key, { newLog: newLog || stored === undefined });
  if (stored === undefined) await manager.setLocalSecrets(new Map([[AUDIT_KEY_SECRET, key]]));
  if (audit.archived.length > 0) {
    log.warn(
      { event: 'audit-log-archived', dir, files: audit.archived },
      `a new audit log was started; what was there is kept in ${dir} as ${audit.archived.join(', ')} (${stored === undefined ? "it was not under this manager's audit key" : 'as asked'})`,
    );
  }
  return audit;
}

/**
 * A manager's audit key, read from its key store without starting it (nothing is written): for
 * `coffer audit verify --data`. The key store is opened with the key file, or, for an autolocked
 * manager, the unlock key (asked for only then).
 */
export async function readAuditKey(
  dataDir: string,
  opener: { keyFile: string; unlockKey: () => Promise<string> },
): Promise<Buffer> {
  const store = await KeyStore.read(new DataDir(dataDir).keyStore);
  const kek =
    store.protection === 'key-file'
      ? readKeyFile(opener.keyFile)
      : kekFromUnlockKey(await opener.unlockKey(), store.clusterId);
  try {
    store.openRoot(kek).fill(0); // a wrong key file or unlock key is told apart here, clearly
    const secrets = store.openSecrets(kek);
    const key = secrets.get(AUDIT_KEY_SECRET);
    for (const [name, value] of secrets) if (name !== AUDIT_KEY_SECRET) value.fill(0);
    if (key === undefined)
      throw new Error(
        `the key store of ${dataDir} holds no audit key: this manager has not started since it was made (or upgraded), so it has no keyed audit log yet`,
      );
    return key;
  } finally {
    kek.fill(0);
  }
}
