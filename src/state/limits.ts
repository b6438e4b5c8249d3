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

/**
 * A batch of puts (Secrets.PutBatch, `secret.put-batch`): at most 256 items, applied as one Raft
 * command, all or none. 256 is twice etcd's default transaction size (128 operations) and bounds
 * the work one entry makes at apply (two sealed records and a usage update per item).
 */
export const PUT_BATCH_ITEMS_MAX = 256;
/**
 * What a batch's command may add around its names and values before it stops fitting one Raft
 * entry (`entryBytesMax`, 1 MiB: src/raft/config.ts). Per item msgpack spends at most 68 bytes
 * (a map of five keys: 40 bytes of keys, string and bin headers of 3 and 5, cas and expiry of 9
 * each, versions kept of 2): 17 KiB for 256 items. Then the actor (an identity name of at most
 * 128 characters and a 64-character key), the op and time, the barrier's seal (term, nonce, tag,
 * the kind) and the payload frame, and Raft's 16 bytes per entry: under 1 KiB. 64 KiB leaves
 * more than twice that; test/state/put-batch.test.ts seals a worst-case batch and checks it fits.
 */
export const PUT_BATCH_ENVELOPE_BYTES_MAX = 64 * 1024;
/** The names and values of a batch together: 1 MiB less the envelope (960 KiB). */
export const PUT_BATCH_BYTES_MAX = 1024 * 1024 - PUT_BATCH_ENVELOPE_BYTES_MAX;
/** The per-item framing PUT_BATCH_ENVELOPE_BYTES_MAX allows for (see above). */
export const PUT_BATCH_ITEM_FRAMING_BYTES_MAX = 68;
// The arithmetic above, checked where it is made: 256 items' framing plus 4 KiB for the rest.
if (PUT_BATCH_ITEMS_MAX * PUT_BATCH_ITEM_FRAMING_BYTES_MAX + 4096 > PUT_BATCH_ENVELOPE_BYTES_MAX)
  throw new Error('PUT_BATCH_ENVELOPE_BYTES_MAX leaves no room for the framing of PUT_BATCH_ITEMS_MAX items');
// Every single put fits a batch alone: the import can always put a line that fits a Put into a batch.
if (SECRET_VALUE_BYTES_MAX + SECRET_NAME_BYTES_MAX > PUT_BATCH_BYTES_MAX)
  throw new Error('PUT_BATCH_BYTES_MAX is smaller than one put of the largest value and name');

/** The bytes a batch item counts against PUT_BATCH_BYTES_MAX: its name (UTF-8) and its value. */
export function putBatchItemBytes(name: string, value: Uint8Array): number {
  return Buffer.byteLength(name) + value.byteLength;
}

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
