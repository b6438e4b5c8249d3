/**
 * Where a manager's main thread spends its time, by part, from a V8 CPU profile (`node
 * --cpu-prof`): each sample is given to the innermost frame of its stack that belongs to a known
 * part (a sample in Node's stream code called by grpc-js is gRPC's), within a window of the
 * monotonic clock (CLOCK_MONOTONIC, which both V8's profile timestamps and process.hrtime read).
 */

/** The parts a profile is split into, in the order a table prints them. */
export const PARTS = [
  'gRPC and HTTP/2',
  'TLS',
  'protobuf',
  'msgpack',
  'crypto and sealing',
  'storage (LevelDB)',
  'Raft core',
  'replica loop',
  'apply (state)',
  'audit',
  'logging',
  'server handlers',
  'other Coffer code',
  'Node internals',
  'native, not attributed',
  'GC',
] as const;
export type Part = (typeof PARTS)[number];

/** The subset of V8's profile format read here. */
export interface CpuProfile {
  readonly nodes: ReadonlyArray<{
    readonly id: number;
    readonly callFrame: { readonly functionName: string; readonly url: string };
    readonly children?: readonly number[];
  }>;
  readonly startTime: number;
  readonly endTime: number;
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

/** Rules by URL, first match wins; a frame none matches is generic (its caller decides). */
const URL_RULES: ReadonlyArray<readonly [RegExp, Part]> = [
  [/\/node_modules\/@grpc\/grpc-js\/|^node:internal\/http2\/|^node:http2$/, 'gRPC and HTTP/2'],
  [/^node:_tls_|^node:tls$|^node:internal\/tls\//, 'TLS'],
  [/\/node_modules\/(protobufjs|@protobufjs|@grpc\/proto-loader)\//, 'protobuf'],
  [/\/node_modules\/msgpackr\/|\/(src|dist)\/codec\//, 'msgpack'],
  [/\/(src|dist)\/crypto\/|^node:internal\/crypto\/|^node:crypto$/, 'crypto and sealing'],
  [
    /\/node_modules\/(classic-level|abstract-level|level|level-transcoder|module-error|maybe-combine-errors)\/|\/(src|dist)\/(kv|storage)\//,
    'storage (LevelDB)',
  ],
  [/\/(src|dist)\/raft\//, 'Raft core'],
  [/\/(src|dist)\/(replica|manager)\//, 'replica loop'],
  [/\/(src|dist)\/(state|barrier)\//, 'apply (state)'],
  [/\/(src|dist)\/audit\//, 'audit'],
  [
    /\/node_modules\/(pino|pino-std-serializers|sonic-boom|fast-redact|quick-format-unescaped|thread-stream)\/|\/(src|dist)\/util\/logger/,
    'logging',
  ],
  [/\/(src|dist)\/(server|transport)\//, 'server handlers'],
  [/\/(src|dist)\//, 'other Coffer code'],
];

/** The part of one frame, or null when it is generic (Node's own streams, events, buffers; builtins). */
export function partOfFrame(frame: { readonly functionName: string; readonly url: string }): Part | null {
  for (const [pattern, part] of URL_RULES) if (pattern.test(frame.url)) return part;
  return null;
}

/** Milliseconds of the main thread by part within [fromUs, toUs) (monotonic microseconds), and idle apart. */
export interface PartTimes {
  readonly byPart: ReadonlyMap<Part, number>;
  readonly busyMs: number;
  readonly idleMs: number;
  /** The window the profile's samples covered (it may start after `fromUs` or end before `toUs`). */
  readonly coveredMs: number;
}

export function partTimes(profile: CpuProfile, fromUs: number, toUs: number): PartTimes {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const parent = new Map<number, number>();
  for (const node of profile.nodes) for (const child of node.children ?? []) parent.set(child, node.id);
  const partOfNode = new Map<number, Part | 'idle' | 'root'>();
  const resolve = (id: number): Part | 'idle' | 'root' => {
    const known = partOfNode.get(id);
    if (known !== undefined) return known;
    const node = byId.get(id);
    if (node === undefined) throw new Error(`the profile names node ${id}, which it does not hold`);
    const name = node.callFrame.functionName;
    let part: Part | 'idle' | 'root';
    if (name === '(garbage collector)') part = 'GC';
    else if (name === '(program)') part = 'native, not attributed';
    else if (name === '(idle)') part = 'idle';
    else if (name === '(root)') part = 'root';
    else {
      const own = partOfFrame(node.callFrame);
      if (own !== null) part = own;
      else {
        const up = parent.get(id);
        const inherited = up === undefined ? 'root' : resolve(up);
        part = inherited === 'root' || inherited === 'idle' ? 'Node internals' : inherited;
      }
    }
    partOfNode.set(id, part);
    return part;
  };
  const byPart = new Map<Part, number>();
  let busyUs = 0;
  let idleUs = 0;
  let first = Number.POSITIVE_INFINITY;
  let last = Number.NEGATIVE_INFINITY;
  // A sample's time is the gap to the next one (V8 records the delta before each sample).
  let at = profile.startTime;
  for (let k = 0; k < profile.samples.length; k++) {
    at += profile.timeDeltas[k]!;
    const next = k + 1 < profile.timeDeltas.length ? profile.timeDeltas[k + 1]! : 0;
    if (at < fromUs || at >= toUs) continue;
    first = Math.min(first, at);
    last = Math.max(last, at + next);
    const part = resolve(profile.samples[k]!);
    if (part === 'idle') {
      idleUs += next;
      continue;
    }
    // A sample at the root itself (rare): native work V8 could not place.
    const counted: Part = part === 'root' ? 'native, not attributed' : part;
    busyUs += next;
    byPart.set(counted, (byPart.get(counted) ?? 0) + next / 1000);
  }
  return {
    byPart,
    busyMs: busyUs / 1000,
    idleMs: idleUs / 1000,
    coveredMs: Number.isFinite(first) ? (last - first) / 1000 : 0,
  };
}

/** Now on the clock the profiles' timestamps use, in microseconds. */
export function monotonicMicros(): number {
  return Number(process.hrtime.bigint() / 1000n);
}
