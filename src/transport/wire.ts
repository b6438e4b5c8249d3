import { packr } from '../codec/msgpack.ts';
import type { ConfChangeType, Entry, Message, ReadRefusalReason, SnapshotMetadata } from '../raft/types.ts';

/**
 * Raft messages on the wire: msgpack arrays, one layout per message type. Decoding is the
 * gateway: every field is checked (types, ranges, sizes) before the core sees a message, and a
 * malformed one is a WireError, dropped and counted by the transport.
 */

/** A batch of messages in one frame (not counting snapshots, which travel in chunks). */
export const WIRE_BATCH_MESSAGES_MAX = 4096;
/** One context string (ReadIndex) at most this long. */
const CONTEXT_CHARS_MAX = 256;

const TYPES = [
  'append',
  'append-response',
  'vote',
  'pre-vote',
  'vote-response',
  'pre-vote-response',
  'heartbeat',
  'heartbeat-response',
  'snapshot',
  'timeout-now',
  'read-index',
  'read-index-response',
] as const;
const CONF_TYPES: readonly ConfChangeType[] = ['add-voter', 'add-learner', 'remove'];
const REFUSALS: readonly ReadRefusalReason[] = ['leader-not-ready', 'no-leader', 'leadership-lost', 'too-many-pending'];

export class WireError extends Error {
  override name = 'WireError';
  readonly code = 'WIRE_MALFORMED';
}

function encodeEntry(entry: Entry): unknown[] {
  return entry.kind === 'normal'
    ? [entry.term, entry.index, 0, entry.data]
    : [entry.term, entry.index, 1, CONF_TYPES.indexOf(entry.change.type), entry.change.nodeId];
}

function fields(message: Message): unknown[] {
  const base = [TYPES.indexOf(message.type), message.from, message.to, message.term];
  switch (message.type) {
    case 'append':
      return [...base, message.prevIndex, message.prevTerm, message.commit, message.entries.map(encodeEntry)];
    case 'append-response':
      return [...base, message.index, message.reject, message.hintIndex, message.hintTerm];
    case 'vote':
    case 'pre-vote':
      return [...base, message.lastIndex, message.lastTerm, message.transfer];
    case 'vote-response':
    case 'pre-vote-response':
      return [...base, message.reject];
    case 'heartbeat':
      return [...base, message.commit, message.readSeq];
    case 'heartbeat-response':
      return [...base, message.readSeq];
    case 'snapshot':
      throw new TypeError('snapshot messages travel as chunks (encodeSnapshotHeader)');
    case 'timeout-now':
      return base;
    case 'read-index':
      return [...base, message.context];
    case 'read-index-response':
      return [
        ...base,
        message.context,
        message.index,
        message.refusal === null ? -1 : REFUSALS.indexOf(message.refusal),
      ];
  }
}

export function encodeMessages(messages: readonly Message[]): Buffer {
  return packr.pack(messages.map(fields));
}

/** Decodes and validates a batch; throws WireError on the first bad field. */
export function decodeMessages(bytes: Uint8Array): Message[] {
  const value = unpack(bytes);
  if (!Array.isArray(value)) throw new WireError('a message batch is not a list');
  if (value.length > WIRE_BATCH_MESSAGES_MAX)
    throw new WireError(`a batch holds ${value.length} messages, more than ${WIRE_BATCH_MESSAGES_MAX}`);
  return value.map((item) => decodeMessage(item));
}

function unpack(bytes: Uint8Array): unknown {
  try {
    return packr.unpack(bytes);
  } catch (error) {
    throw new WireError('the frame is not msgpack', { cause: error });
  }
}

class Reader {
  readonly #values: unknown[];
  constructor(values: unknown[]) {
    this.#values = values;
  }
  count(n: number, what: string): void {
    if (this.#values.length !== n) throw new WireError(`a ${what} message has ${this.#values.length} fields, not ${n}`);
  }
  int(at: number, what: string): number {
    const v = this.#values[at];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
      throw new WireError(`${what} is not a non-negative integer`);
    return v;
  }
  id(at: number, what: string): number {
    const v = this.int(at, what);
    if (v === 0) throw new WireError(`${what} is 0`);
    return v;
  }
  bool(at: number, what: string): boolean {
    const v = this.#values[at];
    if (typeof v !== 'boolean') throw new WireError(`${what} is not a boolean`);
    return v;
  }
  text(at: number, what: string): string {
    const v = this.#values[at];
    if (typeof v !== 'string' || v.length > CONTEXT_CHARS_MAX)
      throw new WireError(`${what} is not a string of at most ${CONTEXT_CHARS_MAX} characters`);
    return v;
  }
  list(at: number, what: string): unknown[] {
    const v = this.#values[at];
    if (!Array.isArray(v)) throw new WireError(`${what} is not a list`);
    return v;
  }
  raw(at: number): unknown {
    return this.#values[at];
  }
}

function decodeEntry(value: unknown): Entry {
  if (!Array.isArray(value)) throw new WireError('an entry is not a list');
  const r = new Reader(value);
  const term = r.int(0, 'entry term');
  const index = r.id(1, 'entry index');
  if (value[2] === 0) {
    r.count(4, 'normal entry');
    const data = r.raw(3);
    if (!(data instanceof Uint8Array)) throw new WireError('entry data is not bytes');
    return { kind: 'normal', term, index, data };
  }
  if (value[2] === 1) {
    r.count(5, 'conf-change entry');
    const type = CONF_TYPES[r.int(3, 'conf change type')];
    if (type === undefined) throw new WireError('unknown conf change type');
    return { kind: 'conf-change', term, index, change: { type, nodeId: r.id(4, 'conf change node') } };
  }
  throw new WireError('unknown entry kind');
}

function decodeMessage(value: unknown): Message {
  if (!Array.isArray(value) || value.length < 4) throw new WireError('a message is not a list of at least 4 fields');
  const r = new Reader(value);
  const type = TYPES[r.int(0, 'message type')];
  if (type === undefined) throw new WireError('unknown message type');
  const base = { from: r.id(1, 'from'), to: r.id(2, 'to'), term: r.int(3, 'term') };
  switch (type) {
    case 'append': {
      r.count(8, type);
      const entries = r.list(7, 'entries').map(decodeEntry);
      const prevIndex = r.int(4, 'prevIndex');
      entries.forEach((entry, k) => {
        if (entry.index !== prevIndex + 1 + k)
          throw new WireError('append entries are not consecutive after prevIndex');
      });
      return { type, ...base, prevIndex, prevTerm: r.int(5, 'prevTerm'), commit: r.int(6, 'commit'), entries };
    }
    case 'append-response':
      r.count(8, type);
      return {
        type,
        ...base,
        index: r.int(4, 'index'),
        reject: r.bool(5, 'reject'),
        hintIndex: r.int(6, 'hintIndex'),
        hintTerm: r.int(7, 'hintTerm'),
      };
    case 'vote':
    case 'pre-vote':
      r.count(7, type);
      return {
        type,
        ...base,
        lastIndex: r.int(4, 'lastIndex'),
        lastTerm: r.int(5, 'lastTerm'),
        transfer: r.bool(6, 'transfer'),
      };
    case 'vote-response':
    case 'pre-vote-response':
      r.count(5, type);
      return { type, ...base, reject: r.bool(4, 'reject') };
    case 'heartbeat':
      r.count(6, type);
      return { type, ...base, commit: r.int(4, 'commit'), readSeq: r.int(5, 'readSeq') };
    case 'heartbeat-response':
      r.count(5, type);
      return { type, ...base, readSeq: r.int(4, 'readSeq') };
    case 'snapshot':
      throw new WireError('a snapshot message must arrive in chunks');
    case 'timeout-now':
      r.count(4, type);
      return { type, ...base };
    case 'read-index':
      r.count(5, type);
      return { type, ...base, context: r.text(4, 'context') };
    case 'read-index-response': {
      r.count(7, type);
      const code = r.raw(6);
      const refusal = code === -1 ? null : REFUSALS[typeof code === 'number' ? code : -2];
      if (refusal === undefined) throw new WireError('unknown read refusal');
      return { type, ...base, context: r.text(4, 'context'), index: r.int(5, 'index'), refusal };
    }
  }
}

/**
 * The snapshot message without its data: travels in the first chunk. `records`: the data is a
 * descriptor, and the state store's records follow it (an eighth field; a header of seven, from
 * a version before streamed snapshots, has none).
 */
export function encodeSnapshotHeader(message: Extract<Message, { type: 'snapshot' }>, records = false): Buffer {
  const m = message.snapshot.metadata;
  return packr.pack([
    message.from,
    message.to,
    message.term,
    m.index,
    m.term,
    m.confState.voters,
    m.confState.learners,
    ...(records ? [1] : []),
  ]);
}

export function decodeSnapshotHeader(bytes: Uint8Array): {
  from: number;
  to: number;
  term: number;
  metadata: SnapshotMetadata;
  records: boolean;
} {
  const value = unpack(bytes);
  if (!Array.isArray(value)) throw new WireError('a snapshot header is not a list');
  const r = new Reader(value);
  if (value.length !== 8) r.count(7, 'snapshot header');
  if (value.length === 8 && value[7] !== 1)
    throw new WireError('a snapshot header says records follow with a value other than 1');
  const ids = (at: number, what: string): number[] => r.list(at, what).map((v) => new Reader([v]).id(0, what));
  return {
    from: r.id(0, 'from'),
    to: r.id(1, 'to'),
    term: r.int(2, 'term'),
    metadata: {
      index: r.int(3, 'snapshot index'),
      term: r.int(4, 'snapshot term'),
      confState: { voters: ids(5, 'voters'), learners: ids(6, 'learners') },
    },
    records: value.length === 8,
  };
}
