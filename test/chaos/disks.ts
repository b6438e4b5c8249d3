import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';

/** Why managers' data directories cannot be put on filesystems of their own here, or null. */
export function smallDisksUnavailableBecause(): string | null {
  if (process.platform !== 'linux') return 'not Linux';
  if (process.getuid?.() !== 0) return 'not root (mounting a tmpfs needs CAP_SYS_ADMIN)';
  return null;
}

/**
 * Each manager's data directory on a small tmpfs of its own, which the disk-full nemesis fills
 * and frees. Mounted before the managers start; unmounted (lazily, whatever still holds it) at
 * the end.
 */
export class ManagerDisks {
  readonly #mounted = new Set<string>();

  constructor(readonly sizeMiB = 256) {}

  /** Mounts a tmpfs at `dir` (made if missing). */
  mount(dir: string): void {
    mkdirSync(dir, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${this.sizeMiB}m,mode=700`, 'tmpfs', dir]);
    this.#mounted.add(dir);
  }

  has(dir: string): boolean {
    return this.#mounted.has(dir);
  }

  /** Writes a file in `dir` until its filesystem has no room left; returns the file's path. */
  fill(dir: string): string {
    const path = join(dir, 'chaos-filler');
    const fd = openSync(path, 'w');
    try {
      for (const size of [1 << 20, 4096, 1])
        for (;;) {
          try {
            writeSync(fd, Buffer.alloc(size, 1));
          } catch {
            break;
          }
        }
    } finally {
      closeSync(fd);
    }
    return path;
  }

  free(filler: string): void {
    try {
      unlinkSync(filler);
    } catch {
      // already gone
    }
  }

  unmountAll(): void {
    for (const dir of this.#mounted) {
      try {
        execFileSync('umount', ['-l', dir], { stdio: 'ignore' });
      } catch {
        // not mounted any more
      }
    }
    this.#mounted.clear();
  }
}
