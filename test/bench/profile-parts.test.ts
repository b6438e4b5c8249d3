import { test } from 'node:test';
import assert from 'node:assert/strict';
import { partOfFrame, partTimes, type CpuProfile } from '../../scripts/bench/profile-parts.ts';

const frame = (id: number, functionName: string, url: string, children: number[] = []) => ({
  id,
  callFrame: { functionName, url },
  children,
});

/**
 * root
 *  ├ (idle) 2        ├ (garbage collector) 3     ├ (program) 4
 *  └ onData (grpc-js) 5 ─ emit (node:events) 6 ─ handle (dist/server) 7 ─ seal (dist/crypto) 8
 *                                                                     └ write (node:internal/streams) 9
 */
const profile: CpuProfile = {
  nodes: [
    frame(1, '(root)', '', [2, 3, 4, 5]),
    frame(2, '(idle)', ''),
    frame(3, '(garbage collector)', ''),
    frame(4, '(program)', ''),
    frame(5, 'onData', 'file:///app/node_modules/@grpc/grpc-js/build/src/server.js', [6]),
    frame(6, 'emit', 'node:events', [7]),
    frame(7, 'handle', 'file:///app/dist/server/secrets-service.js', [8, 9]),
    frame(8, 'seal', 'file:///app/dist/crypto/record-seal.js'),
    frame(9, 'write', 'node:internal/streams/writable'),
  ],
  startTime: 1_000_000,
  endTime: 1_000_000 + 10 * 1000,
  // Ten samples 1 ms apart (V8 records the delta before each sample; a sample lasts until the next).
  samples: [2, 3, 4, 8, 9, 6, 5, 8, 2, 8],
  timeDeltas: [0, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000],
};

test('a frame belongs to the part its URL names; Node internals and builtins are generic', () => {
  assert.equal(
    partOfFrame({ functionName: 'x', url: 'file:///a/node_modules/@grpc/grpc-js/build/src/x.js' }),
    'gRPC and HTTP/2',
  );
  assert.equal(partOfFrame({ functionName: 'x', url: 'node:internal/http2/core' }), 'gRPC and HTTP/2');
  assert.equal(partOfFrame({ functionName: 'x', url: 'node:_tls_wrap' }), 'TLS');
  assert.equal(partOfFrame({ functionName: 'x', url: 'file:///a/node_modules/protobufjs/src/reader.js' }), 'protobuf');
  assert.equal(partOfFrame({ functionName: 'x', url: 'file:///a/node_modules/msgpackr/pack.js' }), 'msgpack');
  assert.equal(partOfFrame({ functionName: 'x', url: 'file:///a/dist/kv/level-state-store.js' }), 'storage (LevelDB)');
  assert.equal(partOfFrame({ functionName: 'x', url: 'file:///a/src/raft/raft.ts' }), 'Raft core');
  assert.equal(partOfFrame({ functionName: 'x', url: 'file:///a/dist/audit/audit-log.js' }), 'audit');
  assert.equal(partOfFrame({ functionName: 'x', url: 'file:///a/node_modules/pino/lib/proto.js' }), 'logging');
  assert.equal(partOfFrame({ functionName: 'x', url: 'file:///a/dist/cli/main.js' }), 'other Coffer code');
  assert.equal(partOfFrame({ functionName: 'emit', url: 'node:events' }), null);
  assert.equal(partOfFrame({ functionName: 'Buffer', url: '' }), null);
});

test("samples go to the innermost frame of a known part; generic frames take their caller's; idle is apart", () => {
  const all = partTimes(profile, 0, Number.MAX_SAFE_INTEGER);
  assert.equal(all.idleMs, 2, 'two idle samples');
  // The last sample has no next delta: it counts for nothing.
  assert.equal(all.busyMs, 7);
  assert.deepEqual(Object.fromEntries(all.byPart), {
    GC: 1,
    'native, not attributed': 1,
    'crypto and sealing': 2, // seal, twice (the third is the last sample)
    'server handlers': 1, // write (node:internal/streams) called by the server's handler
    'gRPC and HTTP/2': 2, // emit (generic) under grpc-js, and grpc-js itself
  });
});

test('a window keeps only the samples inside it', () => {
  // Samples at 1,000,000 + k * 1000 us: the window [1,003,000, 1,006,000) holds samples 3, 4 and 5.
  const cut = partTimes(profile, 1_003_000, 1_006_000);
  assert.deepEqual(Object.fromEntries(cut.byPart), {
    'crypto and sealing': 1,
    'server handlers': 1,
    'gRPC and HTTP/2': 1,
  });
  assert.equal(cut.idleMs, 0);
  assert.equal(cut.coveredMs, 3);
});
