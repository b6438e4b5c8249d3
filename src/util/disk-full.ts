/**
 * Whether an error, or an error it was caused by, says the disk is full: ENOSPC or EDQUOT from
 * Node (or named in a message, as the audit log's errors do), or LevelDB's "No space left on
 * device" / "Disk quota exceeded" inside an IO error.
 */
export function isDiskFull(error: unknown): boolean {
  for (let e: unknown = error, depth = 0; e !== undefined && e !== null && depth < 8; depth++) {
    const code = (e as { code?: unknown }).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') return true;
    const message = (e as { message?: unknown }).message;
    if (
      typeof message === 'string' &&
      /No space left on device|Disk quota exceeded|\bENOSPC\b|\bEDQUOT\b/.test(message)
    )
      return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}
