/**
 * Limits of the secret store (docs/design.md, "Limits"). Each is enforced with an error that says what
 * to fix, at the server edge and again when a command is applied.
 */
/** A secret value: at most 512 KiB (Swarm: 500 KB; Vault: 1 MiB per entry). */
export const SECRET_VALUE_BYTES_MAX = 512 * 1024;
/** A secret name: at most 256 bytes, segments of [A-Za-z0-9._-] joined by '/'. */
export const SECRET_NAME_BYTES_MAX = 256;
export const SECRET_NAME_PATTERN = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;
/** Versions kept per secret unless the secret says otherwise; older ones are wiped. */
export const VERSIONS_KEPT_DEFAULT = 10;
export const VERSIONS_KEPT_MAX = 100;
/** Labels: lower-case names; `current` and `previous` are kept by the store itself. */
export const LABEL_PATTERN = /^[a-z][a-z0-9_-]{0,31}$/;
export const USER_LABELS_MAX = 16;
export const RESERVED_LABELS = ['current', 'previous'] as const;
/** Expiry: at most ten years ahead. */
export const TTL_MS_MAX = 10 * 365 * 24 * 3600 * 1000;
/** Generated values: length and alphabets. */
export const GENERATE_LENGTH_MAX = 4096;
export const CHARSETS = {
  alphanumeric: 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789',
  hex: '0123456789abcdef',
  base64url: 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_',
  printable: 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&()*+,-./:;<=>?@[]^_{|}~',
} as const;
export type Charset = keyof typeof CHARSETS;
/** A page of names in a listing. */
export const LIST_PAGE_SIZE_MAX = 1000;
/**
 * Quotas per identity, enforced where commands apply (from replicated state only, so every
 * manager reaches the same verdict); the leader's own commands (expiry sweep) are not charged.
 * Changing one changes verdicts: every manager must run the same value.
 *
 * Secrets an identity created: at most 10,000. A name stays taken (and charged to its creator)
 * after delete and destroy, since a secret is never removed; the cost is its metadata, up to about
 * 100 version records and 16 labels each, so 10,000 secrets are tens of MiB of memory at worst.
 */
export const IDENTITY_SECRETS_MAX = 10_000;
/**
 * Bytes of secret values an identity holds: at most 256 MiB. Every stored version counts for the
 * identity that wrote it until it is wiped (destroyed, dropped by versions_kept, expired); a
 * deleted secret's versions still count. 256 MiB is 10,000 secrets of 10 versions (the default
 * kept) of 2.6 KiB, or 512 values of the largest size (512 KiB): far above what one service
 * needs, and half of the 512 MiB a follower accepts as a snapshot (SNAPSHOT_BYTES_MAX), so one
 * identity alone cannot make the state too large to send. It is no bound on the whole state:
 * several identities together can still pass it.
 */
export const IDENTITY_VALUE_BYTES_MAX = 256 * 1024 * 1024;

/** Why a secret name is not acceptable, or null. */
export function secretNameProblem(name: string): string | null {
  if (typeof name !== 'string' || name.length === 0) return 'a secret name is required';
  if (Buffer.byteLength(name) > SECRET_NAME_BYTES_MAX)
    return `a secret name has at most ${SECRET_NAME_BYTES_MAX} bytes`;
  if (!SECRET_NAME_PATTERN.test(name))
    return 'a secret name is segments of letters, digits, ".", "_" and "-" joined by "/"';
  // "." and ".." would read like paths to policies and people; they are not names.
  if (name.split('/').some((segment) => segment === '.' || segment === '..'))
    return 'a secret name has no "." or ".." segments';
  return null;
}

export function labelProblem(label: string): string | null {
  if (!LABEL_PATTERN.test(label))
    return `a label is a lower-case letter then up to 31 of [a-z0-9_-]; "${label.slice(0, 40)}" is not`;
  return null;
}

/** Bytes for a message: `512 KiB`, `1.5 MiB`, `800 bytes`. */
export function formatBytes(bytes: number): string {
  const units: Array<[number, string]> = [
    [1024 ** 3, 'GiB'],
    [1024 ** 2, 'MiB'],
    [1024, 'KiB'],
  ];
  for (const [size, unit] of units) {
    if (bytes >= size) return `${Math.floor((bytes / size) * 10) / 10} ${unit}`;
  }
  return `${bytes} bytes`;
}
