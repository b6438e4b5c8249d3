import type * as grpc from '@grpc/grpc-js';
import { encodeBackup } from '../backup/backup-file.ts';
import { encodeBackupStream } from '../backup/backup-stream.ts';
import { refuse, type ServiceError } from './errors.ts';
import type { Manager } from '../manager/manager.ts';
import type { AppliedResult } from '../state/applied-state.ts';
import type { ServiceContext } from './context.ts';
import { authorize, serverStream, type Call } from './rpc.ts';

/** Backups are streamed in chunks of this size. */
export const BACKUP_CHUNK_BYTES = 1024 * 1024;

/**
 * Backup.Save: a linearizable read first (the backup holds every write acknowledged before the
 * request), then the state, sealed as a snapshot is, with its root key wrapped for the recovery
 * key (and the unlock key on an autolocked manager). A state on disk is streamed as a snapshot to
 * another manager is (format 2, src/backup/backup-stream.ts): its records are read from a
 * point-in-time view as the client takes them, never held whole. A state kept in memory goes as
 * one image (format 1).
 */
export function backupService(
  ctx: ServiceContext,
  manager: Pick<Manager<AppliedResult>, 'backupMaterial' | 'backupStream'>,
): grpc.UntypedServiceImplementation {
  return {
    save: serverStream(ctx, 'Backup.Save', async (call: Call<object>) => {
      authorize(ctx, call, 'sudo', 'sys/backup');
      if (ctx.replica.locked) throw refuse('MANAGER_LOCKED', 'this manager is locked');
      await ctx.readPoint();
      const ca = ctx.pki.signing();
      const recoveryPublicKey = ctx.state.cluster.recoveryPublicKey;
      const unopenable = (unlockKek: Buffer | null): ServiceError | null =>
        recoveryPublicKey === null && unlockKek === null
          ? refuse(
              'NO_RECOVERY_KEY',
              'nothing could open this backup: the cluster has no recovery key and this manager is not autolocked; make one with coffer key rotate-recovery',
            )
          : null;
      const streamed = await manager.backupStream();
      if (streamed !== null) {
        const refusal = unopenable(streamed.unlockKek);
        if (refusal !== null) {
          streamed.rootKey.fill(0);
          streamed.unlockKek?.fill(0);
          await streamed.chunks.close();
          throw refusal;
        }
        return streamedBackup(ctx, streamed, { caCertPem: ca.certPem, caKeyPem: ca.keyPem, recoveryPublicKey });
      }
      const material = await manager.backupMaterial();
      const refusal = unopenable(material.unlockKek);
      if (refusal !== null) {
        material.rootKey.fill(0);
        material.unlockKek?.fill(0);
        throw refusal;
      }
      let file: Buffer;
      try {
        file = encodeBackup(
          {
            clusterId: ctx.clusterId,
            createdAtMs: ctx.clock.now(),
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

type Streamed = NonNullable<Awaited<ReturnType<Manager<AppliedResult>['backupStream']>>>;

/**
 * The pieces of a streamed backup as messages (total_bytes 0: the size is known only at the
 * end). The root key and the unlock KEK are wiped, and the records' view closed, when the stream
 * ends, fails or is dropped by the client.
 */
async function* streamedBackup(
  ctx: ServiceContext,
  material: Streamed,
  keys: { caCertPem: string; caKeyPem: string; recoveryPublicKey: Buffer | null },
): AsyncGenerator<{ data: Buffer; totalBytes: number; index: number }> {
  let bytes = 0;
  try {
    const pieces = encodeBackupStream(
      {
        clusterId: ctx.clusterId,
        createdAtMs: ctx.clock.now(),
        index: material.index,
        term: material.term,
        rootGen: material.rootGen,
        descriptor: material.descriptor,
        caCertPem: keys.caCertPem,
        chunks: material.chunks,
      },
      {
        rootKey: material.rootKey,
        caKeyPem: keys.caKeyPem,
        recoveryPublicKey: keys.recoveryPublicKey,
        unlockKek: material.unlockKek,
      },
    );
    for await (const piece of pieces) {
      // Pieces are a record chunk each (about 1 MiB); the header may be larger than a message
      // should be only with a huge descriptor: split anything above the chunk size.
      for (let offset = 0; offset < piece.byteLength; offset += BACKUP_CHUNK_BYTES) {
        const data = piece.subarray(offset, offset + BACKUP_CHUNK_BYTES);
        bytes += data.byteLength;
        yield { data, totalBytes: 0, index: material.index };
      }
    }
    ctx.log.info({ event: 'backup', index: material.index, bytes, streamed: true }, 'backup made');
  } finally {
    material.rootKey.fill(0);
    material.unlockKek?.fill(0);
    await material.chunks.close();
  }
}
