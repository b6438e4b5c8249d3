import { Packr } from 'msgpackr';

const packr = new Packr({ useRecords: false, moreTypes: false });

/** Secret names: segments of [A-Za-z0-9._-] joined by '/', at most 256 bytes (DESIGN.md, Limits). */
export const SECRET_NAME_BYTES_MAX = 256;
export const SECRET_NAME_PATTERN = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;
/** A secret value: at most 512 KiB. */
export const SECRET_VALUE_BYTES_MAX = 512 * 1024;

export type StoreResult = { readonly ok: true; readonly version: number } | { readonly ok: false; readonly reason: string };

export interface SecretVersion {
  readonly version: number;
  readonly value: Buffer;
  readonly index: number;
}

/** Why a name is not acceptable, or null. */
export function secretNameProblem(name: string): string | null {
  if (Buffer.byteLength(name) > SECRET_NAME_BYTES_MAX) return `a secret name has at most ${SECRET_NAME_BYTES_MAX} bytes`;
  if (!SECRET_NAME_PATTERN.test(name)) return 'a secret name is segments of letters, digits, ".", "_" and "-" joined by "/"';
  return null;
}

/**
 * The secrets (the beginning of the secret service's state machine): each name holds its latest
 * version. Deterministic: every manager applies the same commands to the same result.
 */
export class SecretStore {
  readonly #secrets = new Map<string, SecretVersion>();

  static encodePut(name: string, value: Uint8Array): { kind: string; data: Buffer } {
    return { kind: 'secret.put', data: packr.pack([name, value]) };
  }

  apply(index: number, kind: string, data: Buffer): StoreResult {
    if (kind !== 'secret.put') return { ok: false, reason: `unknown secret command ${kind}` };
    const fields: unknown = packr.unpack(data);
    if (!Array.isArray(fields) || typeof fields[0] !== 'string' || !(fields[1] instanceof Uint8Array)) return { ok: false, reason: 'a put needs a name and a value' };
    const [name, value] = fields as [string, Uint8Array];
    const problem = secretNameProblem(name);
    if (problem !== null) return { ok: false, reason: problem };
    if (value.byteLength > SECRET_VALUE_BYTES_MAX) return { ok: false, reason: `a secret value has at most ${SECRET_VALUE_BYTES_MAX} bytes` };
    const version = (this.#secrets.get(name)?.version ?? 0) + 1;
    this.#secrets.set(name, { version, value: Buffer.from(value), index });
    return { ok: true, version };
  }

  get(name: string): SecretVersion | undefined {
    return this.#secrets.get(name);
  }

  get size(): number {
    return this.#secrets.size;
  }

  snapshot(): unknown {
    return [...this.#secrets].map(([name, v]) => [name, v.version, v.value, v.index]);
  }

  restore(image: unknown): void {
    this.#secrets.clear();
    for (const [name, version, value, index] of image as Array<[string, number, Uint8Array, number]>) {
      this.#secrets.set(name, { version, value: Buffer.from(value), index });
    }
  }
}

/** The msgpack settings of state images. */
export { packr as statePackr };
