import * as grpc from '@grpc/grpc-js';
import { encodeBackup } from '../backup/backup-file.ts';
import { ServiceError } from './errors.ts';
import type { Manager } from '../manager/manager.ts';
import type { AppliedResult } from '../state/applied-state.ts';
import type { ServiceContext } from './context.ts';
import { authorize, serverStream, type Call } from './rpc.ts';

/** Backups are streamed in chunks of this size. */
export const BACKUP_CHUNK_BYTES = 1024 * 1024;

/**
 * Backup.Save: a linearizable read first (the backup holds every write acknowledged before the
 * request), then the state image, sealed as a snapshot is, with its root key wrapped for the
 * recovery key (and the unlock key on an autolocked manager).
 */
export function backupService(
  ctx: ServiceContext,
  manager: Pick<Manager<AppliedResult>, 'backupMaterial'>,
): grpc.UntypedServiceImplementation {
  return {
    save: serverStream(ctx, 'Backup.Save', async (call: Call<object>) => {
      authorize(ctx, call, 'sudo', 'sys/backup');
      if (ctx.replica.locked) throw new ServiceError(grpc.status.UNAVAILABLE, 'this manager is locked');
      await ctx.readPoint();
      const material = await manager.backupMaterial();
      const ca = ctx.pki.signing();
      const recoveryPublicKey = ctx.state.cluster.recoveryPublicKey;
      if (recoveryPublicKey === null && material.unlockKek === null) {
        throw new ServiceError(
          grpc.status.FAILED_PRECONDITION,
          'nothing could open this backup: the cluster has no recovery key and this manager is not autolocked; make one with coffer key rotate-recovery',
        );
      }
      let file: Buffer;
      try {
        file = encodeBackup(
          {
            clusterId: ctx.clusterId,
            createdAtMs: Date.now(),
            index: material.index,
            term: material.term,
            rootGen: material.rootGen,
            image: material.image,
            caCertPem: ca.certPem,
          },
          { rootKey: material.rootKey, caKeyPem: ca.keyPem, recoveryPublicKey, unlockKek: material.unlockKek },
        );
      } finally {
        material.rootKey.fill(0);
        material.unlockKek?.fill(0);
      }
      ctx.log.info({ event: 'backup', index: material.index, bytes: file.byteLength }, 'backup made');
      const chunks: Array<{ data: Buffer; totalBytes: number; index: number }> = [];
      for (let offset = 0; offset < file.byteLength; offset += BACKUP_CHUNK_BYTES) {
        chunks.push({
          data: file.subarray(offset, offset + BACKUP_CHUNK_BYTES),
          totalBytes: file.byteLength,
          index: material.index,
        });
      }
      return chunks;
    }),
  };
}
