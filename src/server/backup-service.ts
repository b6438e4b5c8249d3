import * as grpc from '@grpc/grpc-js';
import { encodeBackup } from '../backup/backup-file.ts';
import { services } from '../transport/proto.ts';
import { ServiceError } from './errors.ts';
import type { CofferNode } from './node.ts';
import { authorize, serverStream, type Call } from './rpc.ts';

/** Backups are streamed in chunks of this size. */
export const BACKUP_CHUNK_BYTES = 1024 * 1024;

/**
 * Backup.Save: a linearizable read first (the backup holds every write acknowledged before the
 * request), then the state image, sealed as a snapshot is, with its root key wrapped for the
 * recovery key (and the unlock key on an autolocked manager).
 */
export function registerBackupService(node: CofferNode): void {
  const { Backup } = services();
  node.server.addService(Backup.service, {
    save: serverStream(node, 'Backup.Save', async (call: Call<object>) => {
      authorize(node, call, 'sudo', 'sys/backup');
      if (node.manager.locked) throw new ServiceError(grpc.status.UNAVAILABLE, 'this manager is locked');
      await node.manager.linearizableRead();
      const material = node.manager.backupMaterial();
      const ca = node.ca;
      const recoveryPublicKey = node.state.cluster.recoveryPublicKey;
      if (recoveryPublicKey === null && material.unlockKek === null) {
        throw new ServiceError(grpc.status.FAILED_PRECONDITION, 'nothing could open this backup: the cluster has no recovery key and this manager is not autolocked; make one with coffer key rotate-recovery');
      }
      let file: Buffer;
      try {
        file = encodeBackup(
          { clusterId: node.config.clusterId, createdAtMs: Date.now(), index: material.index, term: material.term, rootGen: material.rootGen, image: material.image, caCertPem: ca.certPem },
          { rootKey: material.rootKey, caKeyPem: ca.keyPem, recoveryPublicKey, unlockKek: material.unlockKek },
        );
      } finally {
        material.rootKey.fill(0);
        material.unlockKek?.fill(0);
      }
      node.log.info({ event: 'backup', index: material.index, bytes: file.byteLength }, 'backup made');
      const chunks: Array<{ data: Buffer; totalBytes: number; index: number }> = [];
      for (let offset = 0; offset < file.byteLength; offset += BACKUP_CHUNK_BYTES) {
        chunks.push({ data: file.subarray(offset, offset + BACKUP_CHUNK_BYTES), totalBytes: file.byteLength, index: material.index });
      }
      return chunks;
    }),
  });
}
