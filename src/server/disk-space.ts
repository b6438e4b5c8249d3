import { statfsSync } from 'node:fs';
import type { Logger } from '../util/logger.ts';

/** A manager stopped on a full disk starts again once this much is free in its data directory. */
export const DISK_FREE_RESUME_BYTES = 16 * 1024 * 1024;
/** How often the free space is checked meanwhile. */
export const DISK_CHECK_INTERVAL_MS = 2000;

/** Bytes free for this process in the filesystem holding `dir`, or null if it cannot be read. */
export function freeBytes(dir: string): number | null {
  try {
    const s = statfsSync(dir);
    return s.bavail * s.bsize;
  } catch {
    return null;
  }
}

/**
 * After a manager stopped on a full disk: checks the free space every DISK_CHECK_INTERVAL_MS and
 * calls `spaceBack` once, when DISK_FREE_RESUME_BYTES are free, logging what it sees.
 */
export function watchDiskSpace(dir: string, log: Logger, spaceBack: () => void): { stop(): void } {
  const timer = setInterval(() => {
    const free = freeBytes(dir);
    if (free === null || free < DISK_FREE_RESUME_BYTES) return;
    clearInterval(timer);
    log.info(
      { event: 'disk-space-back', dataDir: dir, freeBytes: free },
      `${free >> 20} MiB are free in ${dir} again: starting again from what is on disk`,
    );
    spaceBack();
  }, DISK_CHECK_INTERVAL_MS);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
