/**
 * Request payloads for the fuzzer: random bytes, messages built field by field from a method's
 * request type (plausible values, so requests reach deep into handlers, or hostile ones), and
 * mutations of serialized messages. Every choice is drawn from the SeededRandom given, so one
 * seed gives the same payloads again (key material and clock-relative values aside).
 */
import type { SeededRandom } from '../../src/util/prng.ts';
import { CAPABILITIES } from '../../src/state/policy.ts';

/** The server's limit on a received message ('grpc.max_receive_message_length' in node.ts). */
export const MAX_RECEIVE_BYTES = 4 * 1024 * 1024;

/** A field of a message type, as proto-loader describes it (DescriptorProto JSON, camelCase names). */
export interface FieldDescriptor {
  readonly name: string;
  readonly number: number;
  readonly label: string;
  readonly type: string;
  readonly typeName: string;
}

export interface MessageDescriptor {
  readonly name: string;
  readonly field: readonly FieldDescriptor[];
}

/** Finds a message type named by a field (`typeName`), or null when it is out of reach. */
export type ResolveType = (typeName: string) => MessageDescriptor | null;

/** What the running cluster offers to make requests plausible: names that exist, a real key, ids. */
export interface Hints {
  readonly secretNames: readonly string[];
  readonly policyNames: readonly string[];
  readonly identityNames: readonly string[];
  readonly publicKeyPem: string;
  readonly nodeIds: readonly number[];
  readonly addresses: readonly string[];
  readonly tokenSecret: Buffer;
}

/** What a method's payloads are made from. */
export interface PayloadTarget {
  /** Full service name, e.g. coffer.v1.Secrets. */
  readonly service: string;
  readonly requestType: MessageDescriptor | null;
  readonly resolve: ResolveType;
  readonly requestSerialize: (value: object) => Buffer;
}

export type PayloadKind = 'random' | 'valid' | 'hostile' | 'mutated' | 'huge';

export interface Payload {
  readonly kind: PayloadKind;
  /** What was done to make it (mutations, for a failure report). */
  readonly how: string;
  readonly bytes: Buffer;
}

// ---------------------------------------------------------------------------------------------
// Random primitives

export function pick<T>(rng: SeededRandom, items: readonly T[]): T {
  return items[rng.int(items.length)]!;
}

export function chance(rng: SeededRandom, p: number): boolean {
  return rng.float() < p;
}

/** An integer in [lo, hi]. */
export function between(rng: SeededRandom, lo: number, hi: number): number {
  return lo + rng.int(hi - lo + 1);
}

export function randomBytes(rng: SeededRandom, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let k = 0;
  for (; k + 4 <= length; k += 4) out.writeUInt32LE(Math.floor(rng.float() * 0x1_0000_0000), k);
  for (; k < length; k++) out[k] = rng.int(256);
  return out;
}

/** Lengths for random bytes: often empty or tiny, sometimes up to 64 KiB, rarely at the 4 MiB limit. */
function randomLength(rng: SeededRandom): number {
  const roll = rng.float();
  if (roll < 0.1) return 0;
  if (roll < 0.45) return between(rng, 1, 16);
  if (roll < 0.8) return between(rng, 17, 1024);
  return between(rng, 1025, 64 * 1024);
}

/** A protobuf varint (unsigned, up to 64 bits). */
export function varint(value: bigint): Buffer {
  const out: number[] = [];
  let v = BigInt.asUintN(64, value);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) byte |= 0x80;
    out.push(byte);
  } while (v !== 0n);
  return Buffer.from(out);
}

function tag(field: number, wireType: number): Buffer {
  return varint((BigInt(field) << 3n) | BigInt(wireType & 7));
}

// ---------------------------------------------------------------------------------------------
// Values

const HOSTILE_STRINGS: readonly string[] = [
  '',
  '\u0000',
  'a\u0000b',
  '\u001b[2J\u001b[31mred\u001b[0m',
  '\u001b]0;title\u0007',
  '\r\nX-Injected: 1',
  '\n{"level":60,"msg":"forged log line"}',
  '__proto__',
  'constructor',
  'prototype',
  'toString',
  'hasOwnProperty',
  'valueOf',
  '__proto__/constructor',
  'a/../b',
  '../../etc/passwd',
  'fuzz/../sys/cluster',
  'fuzz/./a',
  './a',
  'a//b',
  '/a',
  'a/',
  '.',
  '..',
  '*',
  '**',
  'fuzz/**',
  'sys/cluster',
  'sys/policies/root',
  'sys/identities/admin',
  'root',
  'admin',
  '%s%s%s%n',
  // biome-ignore lint/suspicious/noTemplateCurlyInString: a log-injection payload, literally
  '${jndi:ldap://127.0.0.1/a}',
  "' OR '1'='1' --",
  '\u202egnp.exe',
  '\ufeffbom',
  '\ud800',
  '\udfff\ud800',
  '🔑/🔒',
  'fuzz/é',
  'İ',
  '-1',
  'NaN',
  'Infinity',
  '{"a":1}',
  'CFRTKN-1-' + '0'.repeat(64) + '-' + 'A'.repeat(32),
  '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n',
  '127.0.0.1:0',
  '[::1]:65536',
  'host:port:extra',
];

function hostileString(rng: SeededRandom): string {
  const roll = rng.float();
  if (roll < 0.55) return pick(rng, HOSTILE_STRINGS);
  if (roll < 0.65) {
    // Control characters and escapes mixed with name characters.
    let s = '';
    for (let k = between(rng, 1, 40); k > 0; k--)
      s += chance(rng, 0.3)
        ? String.fromCharCode(rng.int(32))
        : pick(rng, ['a', '/', '.', '-', '\u007f', '\u009b', '\u001b[']);
    return s;
  }
  if (roll < 0.72) {
    // Arbitrary code units, unpaired surrogates included.
    let s = '';
    for (let k = between(rng, 1, 30); k > 0; k--) s += String.fromCharCode(rng.int(0x10000));
    return s;
  }
  if (roll < 0.8) return 'a/'.repeat(between(rng, 100, 2000)) + 'b'; // deep paths
  if (roll < 0.9)
    return pick(rng, ['A', 'a/', '*', '\u001b', 'é']).repeat(
      pick(rng, [63, 64, 65, 127, 128, 129, 255, 256, 257, 300, 4096, 4097]),
    );
  if (roll < 0.97) return 'x'.repeat(between(rng, 10_000, 70_000));
  // Past 64 KiB: a server that quotes one in a status exceeds HTTP/2's header list limit.
  if (roll < 0.995) return 'z'.repeat(between(rng, 70_000, 300_000));
  return 'y'.repeat(between(rng, 1_000_000, 1_500_000)); // rare: a megabyte of name
}

const HOSTILE_INT64: readonly number[] = [
  0,
  -1,
  1,
  2 ** 31 - 1,
  2 ** 31,
  -(2 ** 31),
  2 ** 32 - 1,
  2 ** 32,
  2 ** 53 - 1,
  2 ** 53,
  2 ** 63,
  -(2 ** 63),
  2 ** 64 - 1,
  -(2 ** 53),
  1e300,
  Date.UTC(9999, 0),
  -8.64e15,
];
const HOSTILE_INT32: readonly number[] = [
  0,
  -1,
  1,
  2 ** 31 - 1,
  2 ** 31,
  -(2 ** 31),
  2 ** 32 - 1,
  2 ** 32,
  2 ** 53,
  65535,
  65536,
];
const HOSTILE_DOUBLE: readonly number[] = [Number.NaN, Infinity, -Infinity, -0, 1e308, 5e-324, -1, 0, 1e9, 365.5];

function isInt64(type: string): boolean {
  return ['TYPE_INT64', 'TYPE_UINT64', 'TYPE_SINT64', 'TYPE_FIXED64', 'TYPE_SFIXED64'].includes(type);
}

function isInteger(type: string): boolean {
  return (
    isInt64(type) ||
    ['TYPE_INT32', 'TYPE_UINT32', 'TYPE_SINT32', 'TYPE_FIXED32', 'TYPE_SFIXED32', 'TYPE_ENUM'].includes(type)
  );
}

/** Plausible strings by field name (and service, where one name means different things). */
function plausibleString(rng: SeededRandom, field: string, service: string, hints: Hints): string {
  switch (field) {
    case 'name':
      if (service.endsWith('.Policies')) return pick(rng, hints.policyNames);
      if (service.endsWith('.Identities')) return pick(rng, hints.identityNames);
      return pick(rng, hints.secretNames);
    case 'label':
      return pick(rng, ['', 'prod', 'stable', 'current', 'previous', 'v2', 'x']);
    case 'charset':
      return pick(rng, ['', 'hex', 'alphanumeric', 'base64url', 'printable', 'emoji']);
    case 'prefix':
    case 'pageToken':
      return pick(rng, ['', 'fuzz', 'fuzz/', 'fuzz/b', 'app', ...hints.secretNames]);
    case 'path':
      return pick(rng, [
        'fuzz/**',
        'fuzz/*',
        'fuzz/b/*',
        'app/db',
        '**',
        'sys/cluster',
        'sys/policies/*',
        'sys/identities/**',
      ]);
    case 'capabilities':
      return pick(rng, CAPABILITIES);
    case 'policies':
      return pick(rng, hints.policyNames);
    case 'publicKeyPem':
      return chance(rng, 0.8)
        ? hints.publicKeyPem
        : hints.publicKeyPem.slice(0, between(rng, 0, hints.publicKeyPem.length));
    case 'address':
      return pick(rng, [...hints.addresses, '127.0.0.1:1', 'localhost:0', 'no-port']);
    case 'service':
      return pick(rng, ['', 'coffer.v1.Secrets', 'grpc.health.v1.Health', 'nope']);
    case 'listServices':
      return '*';
    case 'fileContainingSymbol':
    case 'allExtensionNumbersOfType':
      return pick(rng, [
        'coffer.v1.Secrets',
        'coffer.v1.PutSecretRequest',
        'coffer.v1.Peer',
        'grpc.health.v1.Health',
        'nope.Nope',
      ]);
    case 'fileByFilename':
      return pick(rng, ['coffer/v1/api.proto', 'coffer/v1/peer.proto', 'coffer.v1.proto', 'nope.proto']);
    default: {
      const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789-_';
      let s = '';
      for (let k = between(rng, 0, 12); k > 0; k--) s += alphabet[rng.int(alphabet.length)];
      return s;
    }
  }
}

/**
 * The time plausible expiries are drawn around, taken once: a plausible expiry must be near the
 * cluster's clock, and read per payload it made a seed's payloads differ from one millisecond to
 * the next (a seed must give the same payloads again; found once PutBatch's items drew expiries).
 * A run of hours draws more expiries in the past: refused, and still payloads.
 */
const PLAUSIBLE_NOW_MS = Date.now();

function plausibleNumber(rng: SeededRandom, field: string, hints: Hints): number {
  switch (field) {
    case 'version':
      return chance(rng, 0.4) ? 0 : between(rng, 1, 5);
    case 'versions':
    case 'term':
      return between(rng, 0, 5);
    case 'ttlSeconds':
      return chance(rng, 0.8) ? 0 : between(rng, 1, 3600);
    case 'expireAtMs':
      return chance(rng, 0.8) ? 0 : PLAUSIBLE_NOW_MS + between(rng, -60_000, 3_600_000);
    case 'versionsKept':
      return between(rng, 0, 12);
    case 'length':
      return between(rng, 0, 64);
    case 'pageSize':
      return between(rng, 0, 10);
    case 'count':
      return between(rng, 0, 50);
    case 'nodeId':
      return pick(rng, [0, 1, 4_294_967_000, ...hints.nodeIds]);
    case 'uses':
      return between(rng, 0, 3);
    case 'validityDays':
      return pick(rng, [0, 1, 30, 825, 826]);
    default:
      return between(rng, 0, 10);
  }
}

function plausibleBytes(rng: SeededRandom, field: string, hints: Hints): Buffer {
  switch (field) {
    case 'value':
      return randomBytes(rng, chance(rng, 0.97) ? between(rng, 0, 256) : between(rng, 512 * 1024 - 8, 512 * 1024 + 8));
    case 'tokenSecret':
      return chance(rng, 0.3) ? hints.tokenSecret : randomBytes(rng, pick(rng, [0, 24, 32]));
    case 'publicKey':
      return randomBytes(rng, chance(rng, 0.8) ? 32 : between(rng, 0, 64));
    default:
      return randomBytes(rng, between(rng, 0, 64));
  }
}

function hostileBytes(rng: SeededRandom): Buffer {
  const length = pick(rng, [0, 1, 23, 24, 25, 31, 32, 33, 63, 64, 65, 4096, 65_536]);
  const fill = rng.int(4);
  if (fill === 0) return Buffer.alloc(length, 0);
  if (fill === 1) return Buffer.alloc(length, 0xff);
  // msgpack-looking starts: a map, an array, an extension, a huge str32 length.
  if (fill === 2 && length >= 5)
    return Buffer.concat([
      Buffer.from(
        pick(rng, [
          [0xdf, 0xff, 0xff, 0xff, 0xff],
          [0xdd, 0x7f, 0xff, 0xff, 0xff],
          [0xc7, 0xff, 0x00],
          [0xdb, 0xff, 0xff, 0xff, 0xf0],
          [0x93, 0xa3, 0x61, 0x64, 0x64],
        ]),
      ),
      randomBytes(rng, length - 5),
    ]);
  return randomBytes(rng, length);
}

function fieldValue(
  rng: SeededRandom,
  field: FieldDescriptor,
  target: PayloadTarget,
  hints: Hints,
  hostile: boolean,
  depth: number,
): unknown {
  const bad = hostile && chance(rng, 0.4);
  if (field.type === 'TYPE_MESSAGE' || field.type === 'TYPE_GROUP') {
    const nested = target.resolve(field.typeName);
    // Optional parts (a CAS condition) are left out half the time, so plain requests are common.
    if (nested === null || depth >= 4 || (field.label !== 'LABEL_REPEATED' && chance(rng, 0.5))) return undefined;
    return randomMessage(rng, nested, target, hints, hostile, depth + 1);
  }
  if (field.type === 'TYPE_STRING')
    return bad ? hostileString(rng) : plausibleString(rng, field.name, target.service, hints);
  if (field.type === 'TYPE_BYTES') return bad ? hostileBytes(rng) : plausibleBytes(rng, field.name, hints);
  if (field.type === 'TYPE_BOOL') return chance(rng, 0.5);
  if (field.type === 'TYPE_DOUBLE' || field.type === 'TYPE_FLOAT')
    return bad ? pick(rng, HOSTILE_DOUBLE) : between(rng, 0, 400);
  if (isInteger(field.type)) {
    if (!bad) return plausibleNumber(rng, field.name, hints);
    return pick(rng, isInt64(field.type) ? HOSTILE_INT64 : HOSTILE_INT32);
  }
  return undefined;
}

/** A message of `type` as a plain object for requestSerialize; fields left out now and then. */
export function randomMessage(
  rng: SeededRandom,
  type: MessageDescriptor,
  target: PayloadTarget,
  hints: Hints,
  hostile: boolean,
  depth = 0,
): Record<string, unknown> {
  const message: Record<string, unknown> = {};
  for (const field of type.field) {
    if (chance(rng, 0.15)) continue;
    if (field.label === 'LABEL_REPEATED') {
      const count = hostile && chance(rng, 0.2) ? pick(rng, [33, 257, 1000, 1000, 20_000]) : between(rng, 0, 3);
      const values: unknown[] = [];
      // Long lists repeat a few plausible (small) values: the length is what is hostile, and a
      // list of 20,000 hostile 70 KB strings would be more than a gigabyte to encode.
      const distinct = Math.min(count, 8);
      for (let k = 0; k < distinct; k++)
        values.push(fieldValue(rng, field, target, hints, hostile && count <= 8, depth));
      const filled = values.filter((v) => v !== undefined);
      message[field.name] =
        filled.length === 0 ? [] : Array.from({ length: count }, (_, k) => filled[k % filled.length]);
    } else {
      const value = fieldValue(rng, field, target, hints, hostile, depth);
      if (value !== undefined) message[field.name] = value;
    }
  }
  return message;
}

// ---------------------------------------------------------------------------------------------
// Mutations of serialized messages

const HUGE_LENGTHS: readonly bigint[] = [
  0x7fff_ffffn,
  0x8000_0000n,
  0xffff_ffffn,
  1n << 53n,
  (1n << 63n) - 1n,
  (1n << 64n) - 1n,
  4n * 1024n * 1024n,
  1000n,
];

type Mutation = (rng: SeededRandom, bytes: Buffer) => Buffer;

const MUTATIONS: ReadonlyArray<readonly [string, Mutation]> = [
  [
    'flip-bits',
    (rng, b) => {
      if (b.length === 0) return Buffer.from([rng.int(256)]);
      const out = Buffer.from(b);
      for (let k = between(rng, 1, 8); k > 0; k--) {
        const at = rng.int(out.length);
        out[at] = out[at]! ^ (1 << rng.int(8));
      }
      return out;
    },
  ],
  ['truncate', (rng, b) => b.subarray(0, b.length === 0 ? 0 : rng.int(b.length))],
  [
    'duplicate',
    (rng, b) => (chance(rng, 0.5) ? Buffer.concat([b, b]) : insertAt(rng, b, b.subarray(rng.int(b.length + 1)))),
  ],
  [
    'huge-length',
    (rng, b) =>
      insertAt(
        rng,
        b,
        Buffer.concat([
          tag(between(rng, 1, 20), 2),
          varint(pick(rng, HUGE_LENGTHS)),
          randomBytes(rng, between(rng, 0, 8)),
        ]),
      ),
  ],
  [
    'wrong-wire-type',
    (rng, b) => {
      // Rewrites the wire type of the first tag, or of a byte that may be one.
      if (b.length === 0) return tag(between(rng, 1, 20), rng.int(8));
      const out = Buffer.from(b);
      const at = chance(rng, 0.5) ? 0 : rng.int(out.length);
      out[at] = (out[at]! & 0xf8) | rng.int(8);
      return out;
    },
  ],
  [
    'overlong-varint',
    (rng, b) =>
      insertAt(
        rng,
        b,
        Buffer.concat([tag(between(rng, 1, 20), 0), Buffer.alloc(between(rng, 10, 12), 0xff), Buffer.from([0x01])]),
      ),
  ],
  [
    'unknown-field',
    (rng, b) => {
      const field = pick(rng, [between(rng, 1, 20), between(rng, 100, 1000), 2 ** 29 - 1, 19_000]);
      const wireType = pick(rng, [0, 1, 2, 5]);
      const body =
        wireType === 0
          ? varint(BigInt(rng.int(2 ** 31)))
          : wireType === 1
            ? randomBytes(rng, 8)
            : wireType === 5
              ? randomBytes(rng, 4)
              : (() => {
                  const data = randomBytes(rng, between(rng, 0, 32));
                  return Buffer.concat([varint(BigInt(data.length)), data]);
                })();
      return insertAt(rng, b, Buffer.concat([tag(field, wireType), body]));
    },
  ],
  ['unbalanced-group', (rng, b) => insertAt(rng, b, tag(between(rng, 1, 20), chance(rng, 0.5) ? 3 : 4))],
  ['field-zero', (rng, b) => insertAt(rng, b, Buffer.from([pick(rng, [0x00, 0x02, 0x05]), ...randomBytes(rng, 2)]))],
  ['insert-random', (rng, b) => insertAt(rng, b, randomBytes(rng, between(rng, 1, 16)))],
  [
    'splice-random',
    (rng, b) => {
      if (b.length === 0) return randomBytes(rng, 4);
      const from = rng.int(b.length);
      const to = Math.min(b.length, from + between(rng, 1, 16));
      return Buffer.concat([b.subarray(0, from), randomBytes(rng, to - from), b.subarray(to)]);
    },
  ],
];

function insertAt(rng: SeededRandom, bytes: Buffer, inserted: Buffer): Buffer {
  const at = rng.int(bytes.length + 1);
  return Buffer.concat([bytes.subarray(0, at), inserted, bytes.subarray(at)]);
}

export function mutate(rng: SeededRandom, bytes: Buffer): { bytes: Buffer; how: string[] } {
  const how: string[] = [];
  let out = bytes;
  for (let k = between(rng, 1, 3); k > 0; k--) {
    const [name, mutation] = pick(rng, MUTATIONS);
    how.push(name);
    out = mutation(rng, out);
  }
  return { bytes: out, how };
}

// ---------------------------------------------------------------------------------------------
// Payloads

function serialized(rng: SeededRandom, target: PayloadTarget, hints: Hints, hostile: boolean): Buffer | null {
  if (target.requestType === null) return null;
  const message = randomMessage(rng, target.requestType, target, hints, hostile);
  try {
    const bytes = target.requestSerialize(message);
    return bytes.length <= 2 * MAX_RECEIVE_BYTES ? bytes : null;
  } catch {
    return null; // a value the encoder refuses: the caller falls back to random bytes
  }
}

/**
 * One request message for a method. Mostly small; rarely (about one in 300) a payload at the
 * server's 4 MiB limit, just under or just over it, so runs stay fast.
 */
export function makePayload(rng: SeededRandom, target: PayloadTarget, hints: Hints): Payload {
  const roll = rng.float();
  if (roll < 0.003) {
    const length = between(rng, MAX_RECEIVE_BYTES - 2048, MAX_RECEIVE_BYTES + 2048);
    return {
      kind: 'huge',
      how: `random bytes, ${length} (limit ${MAX_RECEIVE_BYTES})`,
      bytes: randomBytes(rng, length),
    };
  }
  if (roll < 0.15) {
    const length = randomLength(rng);
    return { kind: 'random', how: `random bytes, ${length}`, bytes: randomBytes(rng, length) };
  }
  if (roll < 0.45) {
    const bytes = serialized(rng, target, hints, false);
    if (bytes !== null) return { kind: 'valid', how: 'a plausible message', bytes };
  } else if (roll < 0.72) {
    const bytes = serialized(rng, target, hints, true);
    if (bytes !== null) return { kind: 'hostile', how: 'a message with hostile values', bytes };
  } else {
    const base = serialized(rng, target, hints, chance(rng, 0.3));
    if (base !== null) {
      const { bytes, how } = mutate(rng, base);
      return { kind: 'mutated', how: `a message of ${base.length} bytes, mutated: ${how.join(', ')}`, bytes };
    }
  }
  const length = randomLength(rng);
  return {
    kind: 'random',
    how: `random bytes, ${length} (the message could not be made)`,
    bytes: randomBytes(rng, length),
  };
}
