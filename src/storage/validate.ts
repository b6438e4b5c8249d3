import { StorageError, type StorageUpdate } from './types.ts';

/** Rejects an update that breaks the Ready contract, before anything is written. */
export function validateUpdate(update: StorageUpdate): void {
  const { entries, snapshot } = update;
  for (let k = 1; k < entries.length; k++) {
    if (entries[k]!.index !== entries[k - 1]!.index + 1) {
      throw new StorageError('STORAGE_INVALID_UPDATE', `entries are not contiguous at index ${entries[k]!.index}`);
    }
  }
  const first = entries[0];
  if (snapshot !== null && first !== undefined && first.index !== snapshot.metadata.index + 1) {
    throw new StorageError(
      'STORAGE_INVALID_UPDATE',
      `entries after a snapshot at ${snapshot.metadata.index} must start at ${snapshot.metadata.index + 1}, not ${first.index}`,
    );
  }
}
