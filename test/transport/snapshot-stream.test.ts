import { test } from 'node:test';
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import type * as grpc from '@grpc/grpc-js';
import { createCa, issueCertificate } from '../../src/crypto/pki.ts';
import type { RaftFrame } from '../../src/transport/proto.ts';
import { PeerTransport, SNAPSHOT_CHUNKS_BUFFERED_MAX } from '../../src/transport/peer-transport.ts';
import { encodeSnapshotHeader } from '../../src/transport/wire.ts';
import type { SnapshotMessage } from '../../src/raft/types.ts';
import { createLogger } from '../../src/util/logger.ts';

/**
 * The receiving end of Peer.Raft, driven frame by frame through stand-ins for grpc-js's server
 * call (what a peer's certificate, its frames and its stream's end look like to the handler).
 * A peer that reconnects replaces its stream, and the handler ends the old call itself: a
 * snapshot whose records were coming on it is failed then and there, not when grpc-js gets round
 * to closing that call (it does, a moment later, in the cases tried; the handler does not depend
 * on it). A receive that never ended would hold every later snapshot from being read, and their
 * paused streams every message of that peer, heartbeats and votes included.
 */

const CLUSTER = 'snapshot-stream';
const ca = createCa(CLUSTER, Date.now());
const peerCert = issueCertificate(ca, { id: '7', role: 'manager', clusterId: CLUSTER, nowMs: Date.now() });
const peerDer = new X509Certificate(peerCert.certPem);

class StandInCall extends EventEmitter {
  paused = false;
  pause(): void {
    this.paused = true;
  }
  resume(): void {
    this.paused = false;
  }
  sendMetadata(): void {}
  getAuthContext(): { sslPeerCertificate: { raw: Buffer; fingerprint256: string } } {
    return { sslPeerCertificate: { raw: peerDer.raw, fingerprint256: peerDer.fingerprint256 } };
  }
  frame(frame: RaftFrame): void {
    this.emit('data', frame);
  }
}

const snapshot: SnapshotMessage = {
  type: 'snapshot',
  from: 7,
  to: 1,
  term: 3,
  snapshot: {
    metadata: { index: 40, term: 3, confState: { voters: [1, 7], learners: [] } },
    data: Buffer.from('descriptor'),
  },
};

/** The frames that open a snapshot with streamed records: its descriptor, whole in one chunk. */
function descriptorFrame(message: SnapshotMessage): RaftFrame {
  const data = Buffer.from(message.snapshot.data);
  return {
    body: 'snapshotChunk',
    snapshotChunk: { header: encodeSnapshotHeader(message, true), offset: 0, totalBytes: data.byteLength, data },
  } as RaftFrame;
}

function recordsFrame(bytes: number, last = false): RaftFrame {
  return { body: 'snapshotRecords', snapshotRecords: { data: Buffer.alloc(bytes, 1), last } } as RaftFrame;
}

function receiver(onSnapshot: (message: SnapshotMessage, chunks: AsyncIterable<Uint8Array>) => void): PeerTransport {
  return new PeerTransport({
    selfId: 1,
    clusterId: CLUSTER,
    tls: () => null,
    addressOf: () => undefined,
    onMessage: () => {},
    onUnreachable: () => {},
    onSnapshotSent: () => {},
    onSnapshot,
    admits: () => null,
    logger: createLogger({ level: 'silent' }),
  });
}

/** Reads a snapshot's records as an install does: how it ended (the bytes read, or the error). */
async function readAll(chunks: AsyncIterable<Uint8Array>): Promise<string> {
  let bytes = 0;
  try {
    for await (const chunk of chunks) bytes += chunk.byteLength;
    return `ended after ${bytes} bytes`;
  } catch (error) {
    return `failed after ${bytes} bytes: ${(error as Error).message}`;
  }
}

const within = <T>(ms: number, promise: Promise<T>): Promise<T | 'still waiting'> =>
  Promise.race([promise, new Promise<'still waiting'>((resolve) => setTimeout(() => resolve('still waiting'), ms))]);

test("a peer's stream replaced mid-snapshot fails that snapshot's records, so its install ends", async () => {
  const outcomes: Promise<string>[] = [];
  const transport = receiver((_message, chunks) => outcomes.push(readAll(chunks)));
  try {
    const first = new StandInCall();
    transport.handleRaftStream(first as unknown as grpc.ServerReadableStream<RaftFrame, object>, () => {});
    first.frame(descriptorFrame(snapshot));
    first.frame(recordsFrame(1000));
    assert.equal(outcomes.length, 1, 'the snapshot reached the manager');
    // The peer reconnects (a reset connection): its new stream replaces the old one.
    const second = new StandInCall();
    transport.handleRaftStream(second as unknown as grpc.ServerReadableStream<RaftFrame, object>, () => {});
    const outcome = await within(2000, outcomes[0]!);
    assert.match(String(outcome), /^failed after \d+ bytes: the stream ended/, 'the first snapshot ends, failed');
    // The new stream carries a whole snapshot, read to its end.
    second.frame(descriptorFrame(snapshot));
    second.frame(recordsFrame(500));
    second.frame(recordsFrame(0, true));
    assert.equal(await within(2000, outcomes[1]!), 'ended after 500 bytes');
  } finally {
    transport.close();
  }
});

test('a snapshot stream paused for a slow reader flows again when the stream ends under it', async () => {
  const outcomes: Promise<string>[] = [];
  let chunksOf: AsyncIterable<Uint8Array> | null = null;
  const transport = receiver((_message, chunks) => {
    chunksOf = chunks;
  });
  try {
    const call = new StandInCall();
    transport.handleRaftStream(call as unknown as grpc.ServerReadableStream<RaftFrame, object>, () => {});
    call.frame(descriptorFrame(snapshot));
    for (let k = 0; k <= SNAPSHOT_CHUNKS_BUFFERED_MAX; k++) call.frame(recordsFrame(10));
    assert.equal(call.paused, true, 'more chunks waiting than the bound pause the stream');
    outcomes.push(readAll(chunksOf!));
    call.emit('close');
    assert.match(String(await within(2000, outcomes[0]!)), /^failed after \d+ bytes: /);
    assert.equal(call.paused, false, 'the stream was resumed');
  } finally {
    transport.close();
  }
});
