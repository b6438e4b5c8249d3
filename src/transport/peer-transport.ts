import * as grpc from '@grpc/grpc-js';
import type { Message, NodeId, SnapshotMessage } from '../raft/types.ts';
import type { Logger } from '../util/logger.ts';
import { callerIdentity } from './auth.ts';
import { widenReceiveWindows } from './receive-window.ts';
import { services, type RaftFrame } from './proto.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials, type TlsMaterial } from './tls.ts';
import { WireError, decodeMessages, decodeSnapshotHeader, encodeMessages, encodeSnapshotHeader } from './wire.ts';

/** A snapshot's records as chunks to send (the replica's SnapshotChunks): read to the end, or closed. */
export interface SnapshotChunks extends AsyncIterable<Uint8Array> {
  close(): Promise<void>;
}

/** Messages waiting per peer; beyond this a slow or dead peer costs drops, not memory. */
export const PEER_QUEUE_MESSAGES_MAX = 8192;
/** Bytes of entry data in one frame (gRPC's default message limit is 4 MiB). */
export const FRAME_ENTRY_BYTES_MAX = 2 * 1024 * 1024;
/** Snapshot data per chunk. */
export const SNAPSHOT_CHUNK_BYTES = 1024 * 1024;
/** Largest snapshot a manager accepts (it is assembled in memory). */
export const SNAPSHOT_BYTES_MAX = 512 * 1024 * 1024;
const RECONNECT_DELAY_MS_MIN = 50;
const RECONNECT_DELAY_MS_MAX = 2000;
/**
 * A stream the peer has not accepted (its handler sends headers at once) this long after it was
 * opened is given up and dialled again on a new connection. A short chaos run ended with a
 * follower whose stream to the leader was opened during a fault and never reached the leader's
 * handler, while grpc-js reported nothing: its connection's pings were answered, the call never
 * failed, and every answer the follower wrote for the rest of the run went nowhere, so it was
 * never caught up. Five election timeouts: a link held up by a bad network still accepts its
 * stream well within it.
 */
export const PEER_STREAM_ACCEPT_TIMEOUT_MS = 5000;

export interface PeerTransportOptions {
  readonly selfId: NodeId;
  readonly clusterId: string;
  /**
   * This manager's certificate and key; null while it is still starting (its Raft loop may run,
   * and want to send, before its TLS material is loaded): links then wait and retry.
   */
  readonly tls: () => TlsMaterial | null;
  /** Where a peer listens (host:port), from the replicated membership. */
  readonly addressOf: (peer: NodeId) => string | undefined;
  /** A validated message for this manager. */
  readonly onMessage: (message: Message) => void;
  /** The stream to `peer` broke: the core starts fast failover if it was the leader. */
  readonly onUnreachable: (peer: NodeId) => void;
  /** A peer's stream was accepted (it is up, perhaps just restarted). */
  readonly onReachable?: (peer: NodeId) => void;
  readonly onSnapshotSent: (peer: NodeId, ok: boolean) => void;
  /**
   * A snapshot whose records follow its descriptor: `chunks` yields them as they arrive (read them
   * to the end; the stream is paused while too many wait) and fails if the stream breaks first.
   * Without this option such a snapshot is refused as malformed.
   */
  readonly onSnapshot?: (message: SnapshotMessage, chunks: AsyncIterable<Uint8Array>) => void;
  /**
   * Null if `peer`, with a certificate holding key `spki`, may talk Raft to this manager (a
   * member now, with a key the cluster records for it); else why not. Asked when a stream opens
   * and on every frame, so a removal or a new key takes effect on open streams too.
   */
  readonly admits: (peer: NodeId, spki: string) => string | null;
  /** A stream was refused for who sent it: the server may ask its members about that manager. */
  readonly onRefused?: (peer: NodeId) => void;
  /**
   * `peer` refused this manager's stream because this manager was removed from the cluster (its
   * applied state says so). A removed manager often never applies its own removal: the leader
   * stops replicating to it once the change applies, so this is how it learns.
   */
  readonly onRemoved?: (peer: NodeId) => void;
  /** The keys a peer's certificate may hold (empty: not known), checked when dialling it. */
  readonly keysOf?: (peer: NodeId) => readonly string[];
  readonly logger: Logger;
  readonly random?: () => number;
  /** PEER_STREAM_ACCEPT_TIMEOUT_MS unless set (a test shortens it). */
  readonly streamAcceptTimeoutMs?: number;
}

export interface PeerTransportStats {
  framesSent: number;
  messagesSent: number;
  messagesDropped: number;
  messagesReceived: number;
  malformedDropped: number;
  refusedStreams: number;
  /** Inbound streams whose HTTP/2 receive windows were widened (see receive-window.ts). */
  windowsWidened: number;
  reconnects: number;
  snapshotsSent: number;
  /** Bytes of state store records streamed after snapshot descriptors. */
  snapshotRecordBytesSent: number;
}

/** What a manager answers a removed manager's Raft stream; the removed one recognizes it (onRemoved). */
export function removedDetails(id: NodeId): string {
  return `manager ${id} was removed from the cluster`;
}

/**
 * Raft messages between managers over mutual-TLS gRPC: one long-lived client stream to each peer,
 * carrying batches (a busy leader does not pay one RPC per message); snapshots in chunks; a
 * bounded queue per peer; reconnects with jittered exponential backoff; a broken stream is
 * reported to the core. What arrives is validated (wire.ts) and must come from the manager named
 * in the caller's certificate.
 */
export class PeerTransport {
  readonly stats: PeerTransportStats = {
    framesSent: 0,
    messagesSent: 0,
    messagesDropped: 0,
    messagesReceived: 0,
    malformedDropped: 0,
    refusedStreams: 0,
    windowsWidened: 0,
    reconnects: 0,
    snapshotsSent: 0,
    snapshotRecordBytesSent: 0,
  };
  readonly #options: PeerTransportOptions;
  readonly #links = new Map<NodeId, PeerLink>();
  #closed = false;

  constructor(options: PeerTransportOptions) {
    this.#options = options;
  }

  /** Queues a snapshot whose records stream after its descriptor (closed unread if the link drops it). */
  sendSnapshot(message: SnapshotMessage, records: SnapshotChunks): void {
    if (this.#closed) {
      void records.close();
      return;
    }
    let link = this.#links.get(message.to);
    if (link === undefined) {
      link = new PeerLink(message.to, this.#options, this.stats);
      this.#links.set(message.to, link);
    }
    link.enqueue(message, records);
    link.flush();
  }

  /** Queues every message first, then flushes each link once: a Ready's messages to a peer share a frame. */
  send(messages: readonly Message[]): void {
    if (this.#closed) return;
    const touched = new Set<PeerLink>();
    for (const message of messages) {
      let link = this.#links.get(message.to);
      if (link === undefined) {
        link = new PeerLink(message.to, this.#options, this.stats);
        this.#links.set(message.to, link);
      }
      link.enqueue(message);
      touched.add(link);
    }
    for (const link of touched) link.flush();
  }

  /**
   * Opens the stream to each peer now, without waiting for a message to send (a manager that just
   * started): the peer sees its inbound stream and dials back at once (see `handleRaftStream`), so
   * a restarted follower hears its leader's next heartbeat instead of waiting out the leader's
   * reconnect backoff.
   */
  dial(peers: readonly NodeId[]): void {
    if (this.#closed) return;
    for (const peer of peers) {
      if (peer === this.#options.selfId) continue;
      let link = this.#links.get(peer);
      if (link === undefined) {
        link = new PeerLink(peer, this.#options, this.stats);
        this.#links.set(peer, link);
      }
      link.wake();
    }
  }

  /** After a certificate renewal or a membership change: reconnect with fresh credentials. */
  reconnectAll(): void {
    for (const link of this.#links.values()) link.reset();
  }

  /** Forgets a removed peer's link. */
  forget(peer: NodeId): void {
    this.#links.get(peer)?.close();
    this.#links.delete(peer);
  }

  close(): void {
    this.#closed = true;
    for (const link of this.#links.values()) link.close();
    this.#links.clear();
  }

  /** Inbound streams accepted so far (numbers them in debug logs). */
  #inboundStreams = 0;
  /** Open inbound streams by peer: at most one each, cut when the peer is removed. */
  readonly #inbound = new Map<NodeId, (error: { code: grpc.status; details: string } | null) => void>();

  /** Ends a peer's inbound stream (its removal was applied). */
  disconnect(peer: NodeId): void {
    this.#inbound.get(peer)?.({
      code: grpc.status.PERMISSION_DENIED,
      details: removedDetails(peer),
    });
  }

  /** The server side of Peer.Raft. */
  readonly handleRaftStream = (
    call: grpc.ServerReadableStream<RaftFrame, object>,
    callback: grpc.sendUnaryData<object>,
  ): void => {
    const options = this.#options;
    const identity = callerIdentity(call, options.clusterId);
    let snapshot: {
      header: ReturnType<typeof decodeSnapshotHeader>;
      parts: Buffer[];
      received: number;
      total: number;
    } | null = null;
    /** The records of a snapshot being received after its descriptor. */
    let records: ChunkQueue | null = null;
    const abandonRecords = (reason: string): void => {
      records?.fail(new WireError(reason));
      records = null;
    };
    let finished = false;
    let stream = 0;
    let framesReceived = 0;
    const finish = (error: { code: grpc.status; details: string } | null): void => {
      if (finished) return;
      finished = true;
      if (stream !== 0)
        options.logger.debug(
          {
            event: 'peer-stream-in-ended',
            peer,
            stream,
            framesReceived,
            code: error === null ? 'OK' : grpc.status[error.code],
          },
          'an inbound Raft stream ended',
        );
      // Ended here (replaced by the peer's new stream, refused, or the peer removed): a snapshot
      // whose records were coming on it is failed now, not when grpc-js closes the call. A
      // receive that never ended would hold every later snapshot, and their paused streams the
      // peer's heartbeats and votes.
      abandonRecords("the stream ended before the snapshot's records did");
      if (this.#inbound.get(peer) === finish) this.#inbound.delete(peer);
      callback(error, error === null ? {} : undefined);
    };
    const refuse = (code: grpc.status, details: string): void => {
      this.stats.refusedStreams++;
      options.logger.warn(
        { event: 'peer-stream-refused', code: grpc.status[code], reason: details },
        'refused a Raft stream',
      );
      finish({ code, details });
    };
    const peer = identity === null ? 0 : Number(identity.id);
    if (identity === null)
      return refuse(grpc.status.UNAUTHENTICATED, 'a manager certificate of this cluster is required');
    if (identity.role !== 'manager')
      return refuse(grpc.status.PERMISSION_DENIED, 'Peer.Raft is for managers; this is a client certificate');
    if (!Number.isSafeInteger(peer) || peer <= 0)
      return refuse(grpc.status.PERMISSION_DENIED, 'the certificate names no manager id');
    const refusal = options.admits(peer, identity.spki);
    if (refusal !== null) {
      options.onRefused?.(peer);
      return refuse(grpc.status.PERMISSION_DENIED, refusal);
    }
    // One stream per peer: a reconnecting peer replaces its old stream.
    stream = ++this.#inboundStreams;
    options.logger.debug(
      { event: 'peer-stream-in', peer, stream, replacing: this.#inbound.has(peer) },
      'accepted an inbound Raft stream',
    );
    this.#inbound.get(peer)?.(null);
    this.#inbound.set(peer, finish);
    // The peer is up (again): the link to it retries now instead of at the end of its backoff,
    // and a leader heartbeats it at once (a restarted follower then knows its leader).
    this.#links.get(peer)?.wake();
    options.onReachable?.(peer);
    // Snapshot chunks of 1 MiB would otherwise cross in 64 KiB windows, each waiting a round trip.
    if (widenReceiveWindows(call)) this.stats.windowsWidened++;
    // Headers now tell the caller its stream was accepted (its backoff starts over).
    call.sendMetadata(new grpc.Metadata());
    const checkSender = (message: Message): void => {
      if (message.from !== peer || message.to !== options.selfId)
        throw new WireError(
          `a message from ${message.from} to ${message.to} arrived on manager ${peer}'s stream to ${options.selfId}`,
        );
      this.stats.messagesReceived++;
    };
    const deliver = (message: Message): void => {
      checkSender(message);
      options.onMessage(message);
    };
    call.on('data', (frame: RaftFrame) => {
      if (finished) return;
      framesReceived++;
      // Checked on every frame: a removal applied, a key retired, or a certificate expired, ends the stream.
      const refusal = options.admits(peer, identity.spki);
      if (refusal !== null) return refuse(grpc.status.PERMISSION_DENIED, refusal);
      if (Date.now() > identity.notAfterMs)
        return refuse(grpc.status.UNAUTHENTICATED, `manager ${peer}'s certificate expired`);
      try {
        if (frame.body === 'messages' && frame.messages !== undefined) {
          for (const message of decodeMessages(frame.messages)) deliver(message);
        } else if (frame.body === 'snapshotChunk' && frame.snapshotChunk !== undefined) {
          const chunk = frame.snapshotChunk;
          if (chunk.offset === 0) {
            abandonRecords('another snapshot began before the records of the one before ended');
            if (chunk.totalBytes > SNAPSHOT_BYTES_MAX)
              throw new WireError(`a snapshot of ${chunk.totalBytes} bytes is larger than ${SNAPSHOT_BYTES_MAX}`);
            snapshot = { header: decodeSnapshotHeader(chunk.header), parts: [], received: 0, total: chunk.totalBytes };
          }
          if (
            snapshot === null ||
            chunk.offset !== snapshot.received ||
            chunk.totalBytes !== snapshot.total ||
            snapshot.received + chunk.data.byteLength > snapshot.total
          ) {
            snapshot = null;
            throw new WireError('a snapshot chunk does not follow the previous one');
          }
          // Memory grows with what arrives, not with what a header announces.
          snapshot.parts.push(chunk.data);
          snapshot.received += chunk.data.byteLength;
          if (snapshot.received === snapshot.total) {
            const { header, parts } = snapshot;
            snapshot = null;
            const message: SnapshotMessage = {
              type: 'snapshot',
              from: header.from,
              to: header.to,
              term: header.term,
              snapshot: { metadata: header.metadata, data: Buffer.concat(parts) },
            };
            if (!header.records) deliver(message);
            else {
              const onSnapshot = options.onSnapshot;
              if (onSnapshot === undefined)
                throw new WireError('a snapshot with streamed records came to a manager that takes none');
              checkSender(message);
              // Flow control: the stream pauses while the receiver has too many chunks waiting.
              records = new ChunkQueue(
                () => call.pause(),
                () => call.resume(),
              );
              onSnapshot(message, records);
            }
          }
        } else if (frame.body === 'snapshotRecords' && frame.snapshotRecords !== undefined) {
          const part = frame.snapshotRecords;
          if (records === null) throw new WireError('snapshot records came without a snapshot before them');
          if (part.data.byteLength > 0) records.push(part.data);
          if (part.last) {
            records.end();
            records = null;
          }
        } else {
          throw new WireError('an empty frame');
        }
      } catch (error) {
        if (!(error instanceof WireError)) throw error;
        abandonRecords(`a malformed frame interrupted the snapshot's records: ${error.message}`);
        this.stats.malformedDropped++;
        options.logger.warn(
          { event: 'peer-message-malformed', peer, reason: error.message },
          'dropped a malformed message',
        );
      }
    });
    const ended = (): void => {
      abandonRecords("the stream ended before the snapshot's records did");
      finish(null);
    };
    call.on('end', ended);
    call.on('error', ended);
    call.on('close', ended);
  };
}

/** Chunks a receiver waits for beyond this pause the stream (flow control): about 8 MiB. */
export const SNAPSHOT_CHUNKS_BUFFERED_MAX = 8;

/**
 * Chunks from a stream to one reader, in order: `push` as frames come, `end` after the last,
 * `fail` if the stream breaks; the stream is paused while more than SNAPSHOT_CHUNKS_BUFFERED_MAX
 * wait, and resumed as the reader takes them.
 */
class ChunkQueue implements AsyncIterable<Uint8Array> {
  readonly #pause: () => void;
  readonly #resume: () => void;
  readonly #chunks: Uint8Array[] = [];
  #paused = false;
  #done = false;
  #error: Error | null = null;
  #wake: (() => void) | null = null;
  #taken = false;

  constructor(pause: () => void, resume: () => void) {
    this.#pause = pause;
    this.#resume = resume;
  }

  push(chunk: Uint8Array): void {
    if (this.#done) return;
    this.#chunks.push(chunk);
    if (!this.#paused && this.#chunks.length > SNAPSHOT_CHUNKS_BUFFERED_MAX) {
      this.#paused = true;
      this.#pause();
    }
    this.#signal();
  }

  end(): void {
    this.#done = true;
    this.#signal();
  }

  fail(error: Error): void {
    if (this.#done) return;
    this.#done = true;
    this.#error = error;
    this.#chunks.length = 0;
    this.#release();
    this.#signal();
  }

  #signal(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  #release(): void {
    if (this.#paused) {
      this.#paused = false;
      this.#resume();
    }
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Uint8Array> {
    if (this.#taken) throw new TypeError('the chunks of a snapshot are read once');
    this.#taken = true;
    try {
      for (;;) {
        if (this.#error !== null) throw this.#error;
        const chunk = this.#chunks.shift();
        if (chunk !== undefined) {
          if (this.#chunks.length <= SNAPSHOT_CHUNKS_BUFFERED_MAX / 2) this.#release();
          yield chunk;
          continue;
        }
        if (this.#done) return;
        await new Promise<void>((resolve) => {
          this.#wake = resolve;
        });
      }
    } finally {
      // A reader that stops early: what still comes is dropped, and the stream flows again.
      this.#done = true;
      this.#chunks.length = 0;
      this.#release();
    }
  }
}

type QueueItem =
  | { readonly kind: 'message'; readonly message: Message }
  | { readonly kind: 'snapshot'; readonly message: SnapshotMessage; readonly records: SnapshotChunks | null };

/** The outgoing half to one peer. */
class PeerLink {
  readonly #peer: NodeId;
  readonly #options: PeerTransportOptions;
  readonly #stats: PeerTransportStats;
  #queue: QueueItem[] = [];
  #client: grpc.Client | null = null;
  #call: grpc.ClientWritableStream<RaftFrame> | null = null;
  #flushing = false;
  #delayMs = RECONNECT_DELAY_MS_MIN;
  #retryTimer: NodeJS.Timeout | null = null;
  #closed = false;
  /** Ends a write that waits for 'drain' (set while one does). */
  #wakeWriter: (() => void) | null = null;
  /** Streams opened to the peer so far (numbers them in debug logs). */
  #streams = 0;
  /** Streams in a row the peer did not accept in time (see PEER_STREAM_ACCEPT_TIMEOUT_MS). */
  #notAccepted = 0;
  /** The call a wait for 'drain' was last logged for (once per stream, not per chunk). */
  #drainLoggedFor: object | null = null;

  constructor(peer: NodeId, options: PeerTransportOptions, stats: PeerTransportStats) {
    this.#peer = peer;
    this.#options = options;
    this.#stats = stats;
  }

  enqueue(message: Message, records: SnapshotChunks | null = null): void {
    if (this.#queue.length >= PEER_QUEUE_MESSAGES_MAX) {
      this.#stats.messagesDropped++;
      if (message.type === 'snapshot') this.#options.onSnapshotSent(this.#peer, false);
      void records?.close();
      return;
    }
    this.#queue.push(
      message.type === 'snapshot' ? { kind: 'snapshot', message, records } : { kind: 'message', message },
    );
  }

  flush(): void {
    void this.#flush();
  }

  /** The peer is reachable (it dialled in, or this manager just started): connect now, backoff reset. */
  wake(): void {
    if (this.#closed) return;
    this.#options.logger.debug(
      { event: 'peer-wake', peer: this.#peer, hadCall: this.#call !== null, retrying: this.#retryTimer !== null },
      'waking the link to a peer',
    );
    if (this.#retryTimer !== null) {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
      this.#stats.reconnects++;
    }
    this.#delayMs = RECONNECT_DELAY_MS_MIN;
    if (this.#call === null) {
      // A channel that failed waits out its own backoff before it dials again: take a new one.
      this.#client?.close();
      this.#client = null;
      this.#open();
    }
    void this.#flush();
  }

  #open(): grpc.ClientWritableStream<RaftFrame> | null {
    if (this.#call !== null) return this.#call;
    if (this.#retryTimer !== null) return null;
    const address = this.#options.addressOf(this.#peer);
    if (address === undefined) {
      this.#fail('no address is known for it');
      return null;
    }
    if (this.#client === null) {
      const tls = this.#options.tls();
      if (tls === null) {
        this.#fail('this manager is still starting (its TLS material is not loaded yet)');
        return null;
      }
      const { Peer } = services();
      const keysOf = this.#options.keysOf;
      const expect = {
        clusterId: this.#options.clusterId,
        nodeId: String(this.#peer),
        ...(keysOf === undefined ? {} : { keys: () => keysOf(this.#peer) }),
      };
      this.#client = new Peer.Client(address, managerChannelCredentials(tls, expect), {
        ...MANAGER_CHANNEL_OPTIONS,
        'grpc.keepalive_time_ms': 2000,
        'grpc.keepalive_timeout_ms': 1000,
        'grpc.keepalive_permit_without_calls': 1,
        'grpc.max_send_message_length': 4 * 1024 * 1024,
        // The link paces its own retries (jittered, 50 ms to 2 s, and at once when the peer dials
        // in); grpc-js's own channel backoff (1 s, growing to minutes) would add to them: a peer
        // back from a restart was refused for another second or more.
        'grpc.initial_reconnect_backoff_ms': RECONNECT_DELAY_MS_MIN,
        'grpc.max_reconnect_backoff_ms': RECONNECT_DELAY_MS_MAX,
      });
    }
    let acceptTimer: NodeJS.Timeout | undefined;
    const call = (
      this.#client as unknown as {
        raft(callback: (error: grpc.ServiceError | null) => void): grpc.ClientWritableStream<RaftFrame>;
      }
    ).raft((error) => {
      clearTimeout(acceptTimer);
      if (error?.code === grpc.status.PERMISSION_DENIED && error.details === removedDetails(this.#options.selfId))
        this.#options.onRemoved?.(this.#peer);
      if (this.#call === call)
        this.#broken(
          error === null ? 'the peer ended the stream' : `${grpc.status[error.code] ?? error.code}: ${error.details}`,
        );
    });
    call.on('error', () => undefined); // reported through the callback above
    const stream = ++this.#streams;
    this.#options.logger.debug({ event: 'peer-stream-open', peer: this.#peer, stream }, 'opening a Raft stream');
    // The server sends headers once it has accepted the stream: only then does the backoff reset.
    // Each stream in a row that was not accepted waits twice as long as the one before (at most
    // 8 times the timeout), so a link whose connecting alone takes longer still gets through.
    const acceptTimeoutMs =
      (this.#options.streamAcceptTimeoutMs ?? PEER_STREAM_ACCEPT_TIMEOUT_MS) * 2 ** Math.min(this.#notAccepted, 3);
    const giveUp = (): void => {
      if (this.#call !== call) return;
      this.#notAccepted++;
      this.#options.logger.warn(
        { event: 'peer-stream-not-accepted', peer: this.#peer, stream, waitedMs: acceptTimeoutMs },
        `manager ${this.#peer} did not accept the Raft stream within ${acceptTimeoutMs} ms; dialling it again on a new connection`,
      );
      // The channel that carried it goes too: the next stream is dialled on a new connection.
      const client = this.#client;
      this.#client = null;
      this.#broken(`the stream was not accepted within ${acceptTimeoutMs} ms`);
      call.cancel();
      client?.close();
    };
    // Checked after the I/O already waiting: a loop that was blocked (or a process stopped) past
    // the timeout runs its timers first, and the headers may be in the socket.
    acceptTimer = setTimeout(() => setImmediate(giveUp), acceptTimeoutMs);
    acceptTimer.unref();
    call.on('metadata', () => {
      clearTimeout(acceptTimer);
      if (this.#call !== call) return;
      this.#notAccepted = 0;
      this.#delayMs = RECONNECT_DELAY_MS_MIN;
      this.#options.logger.debug(
        { event: 'peer-stream-accepted', peer: this.#peer, stream },
        'a Raft stream was accepted',
      );
    });
    this.#call = call;
    return call;
  }

  async #flush(): Promise<void> {
    if (this.#flushing || this.#closed) return;
    this.#flushing = true;
    try {
      while (this.#queue.length > 0 && !this.#closed) {
        const call = this.#open();
        if (call === null) return;
        const first = this.#queue[0]!;
        if (first.kind === 'snapshot') {
          this.#queue.shift();
          let ok = false;
          try {
            ok = await this.#sendSnapshot(call, first.message, first.records);
          } catch (error) {
            // The records could not be read (the store failed): the follower is sent one again later.
            this.#options.logger.warn(
              { event: 'snapshot-send-failed', peer: this.#peer, reason: (error as Error).message },
              'a snapshot could not be sent',
            );
            this.reset();
          } finally {
            await first.records?.close();
          }
          this.#options.onSnapshotSent(this.#peer, ok);
          continue;
        }
        await this.#sendMessages(call);
      }
    } finally {
      this.#flushing = false;
    }
  }

  /** Sends the messages at the head of the queue (up to a snapshot) in one frame. */
  async #sendMessages(call: grpc.ClientWritableStream<RaftFrame>): Promise<boolean> {
    const batch: Message[] = [];
    let bytes = 0;
    while (this.#queue.length > 0 && this.#queue[0]!.kind === 'message' && batch.length < 4096) {
      const message = this.#queue[0]!.message;
      const size =
        message.type === 'append'
          ? message.entries.reduce((n, e) => n + 32 + (e.kind === 'normal' ? e.data.byteLength : 0), 64)
          : 64;
      if (batch.length > 0 && bytes + size > FRAME_ENTRY_BYTES_MAX) break;
      this.#queue.shift();
      batch.push(message);
      bytes += size;
    }
    if (batch.length === 0) return true;
    const written = await this.#write(call, { messages: encodeMessages(batch) });
    this.#stats.framesSent++;
    this.#stats.messagesSent += batch.length;
    return written;
  }

  async #sendSnapshot(
    call: grpc.ClientWritableStream<RaftFrame>,
    message: SnapshotMessage,
    records: SnapshotChunks | null,
  ): Promise<boolean> {
    this.#options.logger.debug(
      {
        event: 'snapshot-sending',
        peer: this.#peer,
        index: message.snapshot.metadata.index,
        records: records !== null,
      },
      'sending a snapshot',
    );
    const header = encodeSnapshotHeader(message, records !== null);
    const data = message.snapshot.data;
    const total = data.byteLength;
    let offset = 0;
    do {
      const part = data.subarray(offset, offset + SNAPSHOT_CHUNK_BYTES);
      const written = await this.#write(call, {
        snapshotChunk: {
          header: offset === 0 ? header : Buffer.alloc(0),
          offset,
          totalBytes: total,
          data: Buffer.from(part.buffer, part.byteOffset, part.byteLength),
        },
      });
      if (!written) return false;
      offset += part.byteLength;
    } while (offset < total);
    let recordBytes = 0;
    if (records !== null) {
      // Written as the store's view is read: the stream's flow control paces the reads, and the
      // messages queued meanwhile (heartbeats) go between chunks, so the follower keeps its leader.
      for await (const chunk of records) {
        const data = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
        if (!(await this.#write(call, { snapshotRecords: { data, last: false } }))) return false;
        recordBytes += chunk.byteLength;
        if (!(await this.#sendMessages(call))) return false;
      }
      if (!(await this.#write(call, { snapshotRecords: { data: Buffer.alloc(0), last: true } }))) return false;
    }
    this.#stats.snapshotsSent++;
    this.#stats.snapshotRecordBytesSent += recordBytes;
    this.#options.logger.info(
      {
        event: 'snapshot-sent',
        peer: this.#peer,
        bytes: total,
        recordBytes,
        index: message.snapshot.metadata.index,
      },
      'sent a snapshot',
    );
    return true;
  }

  /**
   * Writes a frame, waiting for the stream to drain when its buffer is full. The wait also ends
   * when the stream breaks or is reset (grpc-js does not always emit 'close' for a failed call).
   */
  #write(call: grpc.ClientWritableStream<RaftFrame>, frame: RaftFrame): Promise<boolean> {
    return new Promise((resolve) => {
      if (this.#call !== call) return resolve(false);
      const flushed = call.write(frame);
      if (flushed) return resolve(true);
      if (this.#drainLoggedFor !== call) {
        this.#drainLoggedFor = call;
        this.#options.logger.debug(
          { event: 'peer-stream-full', peer: this.#peer },
          'waiting for a Raft stream to drain (logged once per stream)',
        );
      }
      const done = (): void => {
        call.off('drain', done);
        call.off('close', done);
        if (this.#wakeWriter === done) this.#wakeWriter = null;
        resolve(this.#call === call);
      };
      this.#wakeWriter = done;
      call.on('drain', done);
      call.on('close', done);
    });
  }

  #broken(reason: string): void {
    this.#call = null;
    this.#wakeWriter?.();
    this.#options.logger.debug({ event: 'peer-stream-broken', peer: this.#peer, reason }, 'the stream to a peer broke');
    this.#fail(reason);
  }

  /** Drops what is queued (Raft retransmits), tells the core, and retries later. */
  #fail(reason: string): void {
    for (const item of this.#queue) {
      this.#stats.messagesDropped++;
      if (item.kind === 'snapshot') {
        void item.records?.close();
        this.#options.onSnapshotSent(this.#peer, false);
      }
    }
    this.#queue = [];
    this.#options.onUnreachable(this.#peer);
    if (this.#closed || this.#retryTimer !== null) return;
    const jitter = 0.5 + (this.#options.random ?? Math.random)();
    const delay = Math.min(RECONNECT_DELAY_MS_MAX, this.#delayMs) * jitter;
    this.#delayMs = Math.min(RECONNECT_DELAY_MS_MAX, this.#delayMs * 2);
    this.#options.logger.debug(
      { event: 'peer-unreachable', peer: this.#peer, reason, retryMs: Math.round(delay) },
      'peer unreachable',
    );
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#stats.reconnects++;
      void this.#flush();
    }, delay);
  }

  /** New credentials or address: the next message opens a new connection. */
  reset(): void {
    const call = this.#call;
    this.#options.logger.debug(
      {
        event: 'peer-stream-reset',
        peer: this.#peer,
        hadCall: call !== null,
        flushing: this.#flushing,
        queued: this.#queue.length,
      },
      'resetting the link to a peer',
    );
    this.#call = null;
    this.#wakeWriter?.();
    call?.end();
    this.#client?.close();
    this.#client = null;
  }

  close(): void {
    this.#closed = true;
    if (this.#retryTimer !== null) clearTimeout(this.#retryTimer);
    this.reset();
    for (const item of this.#queue) if (item.kind === 'snapshot') void item.records?.close();
    this.#queue = [];
  }
}
