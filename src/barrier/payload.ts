import { packr } from '../codec/msgpack.ts';

/**
 * What a normal Raft entry carries, as `[1, type, ...]` in msgpack:
 * - `command`: an application command, sealed whole by the keyring; only its kind is in the clear
 *   (it is bound into the associated data, so a ciphertext cannot be replayed as another kind);
 * - `key`: a keyring operation. New key material in it is sealed under the root key.
 */
export type EntryPayload =
  | { readonly type: 'command'; readonly kind: string; readonly sealed: Uint8Array }
  | { readonly type: 'key'; readonly op: KeyOp };

export type KeyOp =
  /** Adds keyring term `term` (must follow the active one); the data key is sealed under root key generation `rootGen`. */
  | {
      readonly op: 'rotate';
      readonly term: number;
      readonly rootGen: number;
      readonly wrappedKey: Uint8Array;
      readonly createdAtMs: number;
    }
  /** Every manager snapshots at this index under the active term and drops its log up to it. */
  | { readonly op: 'rewrap' }
  /** Forgets an old term's key on every manager (allowed once a rewrap has moved all its data). */
  | { readonly op: 'destroy'; readonly term: number }
  /** Root key generation `gen`, sealed under generation `gen - 1`. */
  | { readonly op: 'rotate-root'; readonly gen: number; readonly wrappedRoot: Uint8Array }
  /** Unlock key generation `gen`: its KEK, sealed under root key generation `rootGen`. */
  | { readonly op: 'rotate-unlock'; readonly gen: number; readonly rootGen: number; readonly wrappedKek: Uint8Array }
  /** Unlock key generation `gen` is "none": every manager wraps its root key with its key file again. */
  | { readonly op: 'autolock-off'; readonly gen: number };

/** Command kinds: short names such as `secret.put`. */
export const COMMAND_KIND_PATTERN = /^[a-z][a-z0-9.-]{0,63}$/;

export class PayloadError extends Error {
  override name = 'PayloadError';
  readonly code = 'PAYLOAD_MALFORMED';
}

/**
 * The bytes of a log entry, in a buffer of their own. msgpackr packs into one shared buffer and
 * returns a view of it; that buffer grows to the size of the largest thing packed (a state image
 * for a snapshot: 25 MB at 50,000 secrets), and an entry held in the Raft log kept a whole one
 * alive. With 100,000 secrets a manager held 292 MB of such buffers for 25 MB of values.
 */
export function encodePayload(payload: EntryPayload): Buffer {
  return Buffer.from(packPayload(payload));
}

function packPayload(payload: EntryPayload): Buffer {
  if (payload.type === 'command') return packr.pack([1, 'c', payload.kind, payload.sealed]);
  const op = payload.op;
  switch (op.op) {
    case 'rotate':
      return packr.pack([1, 'k', op.op, op.term, op.rootGen, op.wrappedKey, op.createdAtMs]);
    case 'rewrap':
      return packr.pack([1, 'k', op.op]);
    case 'destroy':
      return packr.pack([1, 'k', op.op, op.term]);
    case 'rotate-root':
      return packr.pack([1, 'k', op.op, op.gen, op.wrappedRoot]);
    case 'rotate-unlock':
      return packr.pack([1, 'k', op.op, op.gen, op.rootGen, op.wrappedKek]);
    case 'autolock-off':
      return packr.pack([1, 'k', op.op, op.gen]);
  }
}

/** Decodes and checks every field; anything else is a PayloadError. */
export function decodePayload(bytes: Uint8Array): EntryPayload {
  let value: unknown;
  try {
    value = packr.unpack(bytes);
  } catch (error) {
    throw new PayloadError('the entry is not a msgpack payload', { cause: error });
  }
  if (!Array.isArray(value) || value[0] !== 1) throw new PayloadError('the entry has an unknown payload layout');
  const fields = value as unknown[];
  const int = (at: number): number => {
    const n = fields[at];
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0)
      throw new PayloadError(`field ${at} is not a non-negative integer`);
    return n;
  };
  const bytesAt = (at: number): Uint8Array => {
    const b = fields[at];
    if (!(b instanceof Uint8Array)) throw new PayloadError(`field ${at} is not bytes`);
    return b;
  };
  const arity = (n: number): void => {
    if (fields.length !== n)
      throw new PayloadError(`a ${String(fields[2] ?? fields[1])} payload has ${n} fields, not ${fields.length}`);
  };
  if (fields[1] === 'c') {
    arity(4);
    const kind = fields[2];
    if (typeof kind !== 'string' || !COMMAND_KIND_PATTERN.test(kind))
      throw new PayloadError('the command kind is malformed');
    return { type: 'command', kind, sealed: bytesAt(3) };
  }
  if (fields[1] !== 'k') throw new PayloadError('the entry has an unknown payload type');
  switch (fields[2]) {
    case 'rotate':
      arity(7);
      return {
        type: 'key',
        op: { op: 'rotate', term: int(3), rootGen: int(4), wrappedKey: bytesAt(5), createdAtMs: int(6) },
      };
    case 'rewrap':
      arity(3);
      return { type: 'key', op: { op: 'rewrap' } };
    case 'destroy':
      arity(4);
      return { type: 'key', op: { op: 'destroy', term: int(3) } };
    case 'rotate-root':
      arity(5);
      return { type: 'key', op: { op: 'rotate-root', gen: int(3), wrappedRoot: bytesAt(4) } };
    case 'rotate-unlock':
      arity(6);
      return { type: 'key', op: { op: 'rotate-unlock', gen: int(3), rootGen: int(4), wrappedKek: bytesAt(5) } };
    case 'autolock-off':
      arity(4);
      return { type: 'key', op: { op: 'autolock-off', gen: int(3) } };
    default:
      throw new PayloadError('the entry names an unknown keyring operation');
  }
}
