import { packr } from './msgpack.ts';
import type { ConfChangeType, ConfState, Entry, HardState, SnapshotMetadata } from '../raft/types.ts';
import { CorruptRecordError } from './errors.ts';
import { frame, unframe } from './frame.ts';

/**
 * msgpackr encodings of what the Raft core persists, as compact arrays. Decoding validates every
 * field, so what comes back from disk is as trustworthy as what the transport lets through.
 */

const CONF_CHANGE_TYPES: readonly ConfChangeType[] = ['add-voter', 'add-learner', 'remove'];

export function encodeEntry(entry: Entry): Buffer {
  const body =
    entry.kind === 'normal'
      ? [entry.term, entry.index, 0, entry.data]
      : [entry.term, entry.index, 1, CONF_CHANGE_TYPES.indexOf(entry.change.type), entry.change.nodeId];
  return frame(packr.pack(body));
}

export function decodeEntry(value: Uint8Array, record: string): Entry {
  const body = decodeArray(value, record);
  const term = index(body[0], record, 'term');
  const at = index(body[1], record, 'index');
  if (body[2] === 0) {
    const data = body[3];
    if (!(data instanceof Uint8Array)) throw new CorruptRecordError(record, 'entry data is not bytes');
    return { kind: 'normal', term, index: at, data };
  }
  if (body[2] === 1) {
    const type = CONF_CHANGE_TYPES[index(body[3], record, 'conf change type')];
    if (type === undefined) throw new CorruptRecordError(record, `unknown conf change type ${String(body[3])}`);
    const nodeId = index(body[4], record, 'node id');
    return { kind: 'conf-change', term, index: at, change: { type, nodeId } };
  }
  throw new CorruptRecordError(record, `unknown entry kind ${String(body[2])}`);
}

export function encodeHardState(state: HardState): Buffer {
  return frame(packr.pack([state.term, state.vote, state.commit]));
}

export function decodeHardState(value: Uint8Array, record: string): HardState {
  const body = decodeArray(value, record);
  return {
    term: index(body[0], record, 'term'),
    vote: index(body[1], record, 'vote'),
    commit: index(body[2], record, 'commit'),
  };
}

/** Snapshot metadata, with how many data chunks follow it and their total size. */
export interface StoredSnapshotMetadata {
  readonly metadata: SnapshotMetadata;
  readonly chunks: number;
  readonly bytes: number;
}

export function encodeSnapshotMetadata(stored: StoredSnapshotMetadata): Buffer {
  const { metadata } = stored;
  return frame(
    packr.pack([
      metadata.index,
      metadata.term,
      metadata.confState.voters,
      metadata.confState.learners,
      stored.chunks,
      stored.bytes,
    ]),
  );
}

export function decodeSnapshotMetadata(value: Uint8Array, record: string): StoredSnapshotMetadata {
  const body = decodeArray(value, record);
  const confState: ConfState = { voters: ids(body[2], record, 'voters'), learners: ids(body[3], record, 'learners') };
  return {
    metadata: { index: index(body[0], record, 'index'), term: index(body[1], record, 'term'), confState },
    chunks: index(body[4], record, 'chunk count'),
    bytes: index(body[5], record, 'byte count'),
  };
}

function decodeArray(value: Uint8Array, record: string): unknown[] {
  const payload = unframe(value, record);
  let body: unknown;
  try {
    body = packr.unpack(payload);
  } catch (error) {
    throw new CorruptRecordError(record, 'it does not decode', { cause: error });
  }
  if (!Array.isArray(body)) throw new CorruptRecordError(record, 'it is not an array');
  return body;
}

function index(value: unknown, record: string, field: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new CorruptRecordError(record, `${field} is not a non-negative integer: ${String(value)}`);
  }
  return value;
}

function ids(value: unknown, record: string, field: string): number[] {
  if (!Array.isArray(value)) throw new CorruptRecordError(record, `${field} is not a list`);
  return value.map((v) => index(v, record, field));
}
