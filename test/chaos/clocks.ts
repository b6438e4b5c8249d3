import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** libfaketime's multi-threaded build (Debian package libfaketime, pulled in by faketime), or null. */
export function fakeTimeLibrary(): string | null {
  for (const lib of ['/usr/lib', '/usr/lib64']) {
    if (!existsSync(lib)) continue;
    for (const dir of [lib, ...readdirSync(lib).map((d) => join(lib, d))]) {
      const candidate = join(dir, 'faketime', 'libfaketimeMT.so.1');
      if (existsSync(candidate)) return candidate;
    }
  }
  return null;
}

/**
 * Each manager's wall clock, offset at will: managers start with libfaketime preloaded, reading
 * their offset from a file of their own (re-read at most once a second). Only the wall clock
 * (Date.now, certificate checks) moves: monotonic clocks, which timers and Raft's ticks run on,
 * stay true (FAKETIME_DONT_FAKE_MONOTONIC).
 */
export class ManagerClocks {
  readonly #offsets = new Map<string, number>();

  constructor(
    readonly dir: string,
    readonly library: string,
  ) {}

  /** The environment a manager starts with; its clock starts true. */
  env(name: string): Record<string, string> {
    const file = this.#file(name);
    if (!this.#offsets.has(name)) this.set(name, 0);
    return {
      LD_PRELOAD: this.library,
      FAKETIME_TIMESTAMP_FILE: file,
      FAKETIME_DONT_FAKE_MONOTONIC: '1',
      FAKETIME_CACHE_DURATION: '1',
    };
  }

  /** Moves a manager's wall clock `offsetS` seconds from true (negative: behind). */
  set(name: string, offsetS: number): void {
    this.#offsets.set(name, offsetS);
    writeFileSync(this.#file(name), `${offsetS >= 0 ? '+' : ''}${Math.round(offsetS)}\n`);
  }

  offset(name: string): number {
    return this.#offsets.get(name) ?? 0;
  }

  /** Every clock true again. */
  reset(): void {
    for (const name of this.#offsets.keys()) this.set(name, 0);
  }

  #file(name: string): string {
    return join(this.dir, `clock-${name}`);
  }
}
