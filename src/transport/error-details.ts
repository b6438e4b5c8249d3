import * as grpc from '@grpc/grpc-js';

/**
 * Structured error details, as gRPC carries them (AIP-193): the trailer `grpc-status-details-bin`
 * holds an encoded google.rpc.Status whose details hold one google.rpc.ErrorInfo (reason, domain
 * "coffer.dev", metadata), so any gRPC library decodes it with the standard protos
 * (proto/google/rpc/). The reason is also sent alone, in the ASCII trailer `coffer-error-reason`,
 * for clients without those protos. The few messages involved are encoded here by hand (the
 * protobuf wire format); a test decodes them with protobufjs from the .proto files.
 */

/** ErrorInfo.domain of every error Coffer sends. */
export const ERROR_DOMAIN = 'coffer.dev';
/** The standard trailer of an encoded google.rpc.Status. */
export const STATUS_DETAILS_TRAILER = 'grpc-status-details-bin';
/** The reason alone, as ASCII. */
export const ERROR_REASON_TRAILER = 'coffer-error-reason';
export const ERROR_INFO_TYPE_URL = 'type.googleapis.com/google.rpc.ErrorInfo';

/** A reason: UPPER_SNAKE, stable, what clients branch on. */
export const ERROR_REASON_PATTERN = /^[A-Z][A-Z0-9_]{0,62}[A-Z0-9]$/;
/** A metadata key: lowerCamelCase (AIP-193). */
export const ERROR_METADATA_KEY_PATTERN = /^[a-z][a-zA-Z0-9]{0,63}$/;
export const ERROR_METADATA_ENTRIES_MAX = 16;
/** Longer metadata values and messages are cut: trailers share the 8 KiB a client accepts with the rest. */
export const ERROR_METADATA_VALUE_CHARS_MAX = 512;
export const ERROR_DETAILS_MESSAGE_CHARS_MAX = 1024;
/** Larger details are not decoded (a hostile or broken peer). */
export const STATUS_DETAILS_BYTES_MAX = 16 * 1024;

export type ErrorMetadata = Readonly<Record<string, string>>;

/** What a client reads of an error besides its status and message. */
export interface ErrorDetails {
  readonly reason: string;
  readonly metadata: ErrorMetadata;
}

// --- encoding ------------------------------------------------------------------------------------

function varint(n: number): Buffer {
  const bytes: number[] = [];
  let v = n;
  while (v >= 0x80) {
    bytes.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  bytes.push(v);
  return Buffer.from(bytes);
}

function lengthDelimited(field: number, bytes: Buffer): Buffer {
  return Buffer.concat([varint((field << 3) | 2), varint(bytes.byteLength), bytes]);
}

const text = (field: number, value: string): Buffer => lengthDelimited(field, Buffer.from(value, 'utf8'));

function cut(value: string, max: number): string {
  return value.length <= max ? value : `${value.slice(0, max - 3)}...`;
}

/** google.rpc.Status { code, message, details: [Any(ErrorInfo { reason, domain, metadata })] }. */
export function encodeStatusDetails(code: grpc.status, message: string, details: ErrorDetails): Buffer {
  if (!ERROR_REASON_PATTERN.test(details.reason))
    throw new TypeError(`an error reason is UPPER_SNAKE: ${JSON.stringify(details.reason)}`);
  const entries = Object.entries(details.metadata);
  if (entries.length > ERROR_METADATA_ENTRIES_MAX)
    throw new TypeError(`more than ${ERROR_METADATA_ENTRIES_MAX} metadata entries`);
  const info = Buffer.concat([
    text(1, details.reason),
    text(2, ERROR_DOMAIN),
    ...entries.map(([key, value]) => {
      if (!ERROR_METADATA_KEY_PATTERN.test(key)) throw new TypeError(`an error metadata key is lowerCamelCase: ${key}`);
      return lengthDelimited(3, Buffer.concat([text(1, key), text(2, cut(value, ERROR_METADATA_VALUE_CHARS_MAX))]));
    }),
  ]);
  const any = Buffer.concat([text(1, ERROR_INFO_TYPE_URL), lengthDelimited(2, info)]);
  return Buffer.concat([
    code === 0 ? Buffer.alloc(0) : Buffer.concat([varint(1 << 3), varint(code)]),
    text(2, cut(message, ERROR_DETAILS_MESSAGE_CHARS_MAX)),
    lengthDelimited(3, any),
  ]);
}

/** The trailers of a refusal: the encoded Status and the plain reason (added to `into`, if given). */
export function errorTrailers(
  code: grpc.status,
  message: string,
  details: ErrorDetails,
  into: grpc.Metadata = new grpc.Metadata(),
): grpc.Metadata {
  into.set(STATUS_DETAILS_TRAILER, encodeStatusDetails(code, message, details));
  into.set(ERROR_REASON_TRAILER, details.reason);
  return into;
}

// --- decoding ------------------------------------------------------------------------------------

type Field = { readonly field: number; readonly value: number | Buffer };

/** The fields of one message (unknown ones included, groups refused); throws on malformed bytes. */
function fieldsOf(bytes: Buffer): Field[] {
  const out: Field[] = [];
  let at = 0;
  const readVarint = (): number => {
    let value = 0;
    for (let shift = 0, k = 0; k < 10; k++, shift += 7) {
      if (at >= bytes.byteLength) throw new RangeError('truncated varint');
      const byte = bytes[at++]!;
      value += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return value;
    }
    throw new RangeError('varint too long');
  };
  while (at < bytes.byteLength) {
    const key = readVarint();
    const field = Math.floor(key / 8);
    switch (key % 8) {
      case 0:
        out.push({ field, value: readVarint() });
        break;
      case 1:
        at += 8;
        break;
      case 2: {
        const length = readVarint();
        if (at + length > bytes.byteLength) throw new RangeError('truncated field');
        out.push({ field, value: bytes.subarray(at, at + length) });
        at += length;
        break;
      }
      case 5:
        at += 4;
        break;
      default:
        throw new RangeError(`wire type ${key % 8}`);
    }
    if (at > bytes.byteLength) throw new RangeError('truncated field');
  }
  return out;
}

const bytesOf = (fields: Field[], n: number): Buffer[] =>
  fields.filter((f) => f.field === n && Buffer.isBuffer(f.value)).map((f) => f.value as Buffer);
const textOf = (fields: Field[], n: number): string => bytesOf(fields, n).at(-1)?.toString('utf8') ?? '';

/**
 * The ErrorInfo of domain coffer.dev in an encoded google.rpc.Status, or null (none, another
 * domain, malformed, or too large).
 */
export function decodeStatusDetails(bytes: Buffer): ErrorDetails | null {
  if (bytes.byteLength > STATUS_DETAILS_BYTES_MAX) return null;
  try {
    for (const any of bytesOf(fieldsOf(bytes), 3)) {
      const anyFields = fieldsOf(any);
      if (textOf(anyFields, 1) !== ERROR_INFO_TYPE_URL) continue;
      const info = fieldsOf(bytesOf(anyFields, 2).at(-1) ?? Buffer.alloc(0));
      if (textOf(info, 2) !== ERROR_DOMAIN) continue;
      const reason = textOf(info, 1);
      if (!ERROR_REASON_PATTERN.test(reason)) return null;
      const metadata: Record<string, string> = {};
      for (const entry of bytesOf(info, 3).slice(0, ERROR_METADATA_ENTRIES_MAX)) {
        const entryFields = fieldsOf(entry);
        const key = textOf(entryFields, 1);
        if (ERROR_METADATA_KEY_PATTERN.test(key)) metadata[key] = textOf(entryFields, 2);
      }
      return { reason, metadata };
    }
    return null;
  } catch {
    return null;
  }
}

/**
 * The details of a failed call from its trailers: the ErrorInfo if there is one, else the plain
 * reason trailer with no metadata, else null (a manager too old to send them, or no manager's
 * answer at all: a connection failure).
 */
export function errorDetailsOf(trailers: grpc.Metadata | undefined): ErrorDetails | null {
  if (trailers === undefined) return null;
  const encoded = trailers.get(STATUS_DETAILS_TRAILER)[0];
  if (Buffer.isBuffer(encoded)) {
    const details = decodeStatusDetails(encoded);
    if (details !== null) return details;
  }
  const reason = trailers.get(ERROR_REASON_TRAILER)[0];
  return typeof reason === 'string' && ERROR_REASON_PATTERN.test(reason) ? { reason, metadata: {} } : null;
}
