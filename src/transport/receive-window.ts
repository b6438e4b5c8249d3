import type { ServerHttp2Session } from 'node:http2';

/**
 * HTTP/2 receive windows for another manager's Raft stream. HTTP/2 starts every stream and every
 * connection with a 64 KiB window, and grpc-js's server has no option for it: a leader then
 * wrote a 1 MiB snapshot chunk in 16 steps, each waiting for the follower to send a window update
 * and for its own busy loop to take it. In the scale bench (100,000 secrets, 16 writes in flight)
 * the stream took about 5.5 s so, and about 2.3 s with a 1 MiB window (docs/design.md, "A new
 * manager's catch-up").
 *
 * Why 1 MiB and not more: the stream's work on the leader runs on the thread that serves writes,
 * so the faster it goes the more the writes wait. 4 MiB was no faster than 1 MiB there, and 256
 * KiB was a second slower for the same write latency.
 *
 * What a wider window costs: a manager may send this much that the receiver has not read yet. The
 * Raft stream pauses itself while its reader is behind (ChunkQueue), so a peer's session holds at
 * most about a connection window more; only authenticated managers' sessions are widened.
 */
export const PEER_STREAM_WINDOW_BYTES = 1024 * 1024;
/** The window of the whole connection (every stream on it together). */
export const PEER_SESSION_WINDOW_BYTES = 2 * 1024 * 1024;

/**
 * Widens the receive windows of the HTTP/2 session a server call arrived on; false if the call
 * does not show its session. grpc-js keeps a call's HTTP/2 stream on the innermost of its
 * intercepting calls, which its public API does not expose: this walks to it, and a grpc-js that
 * moved it is noticed by the test (test/transport), not in production (the stream still works,
 * only more slowly).
 */
export function widenReceiveWindows(call: object): boolean {
  const session = sessionOf(call);
  if (session === null) return false;
  try {
    if ((session.localSettings.initialWindowSize ?? 0) < PEER_STREAM_WINDOW_BYTES)
      session.settings({ initialWindowSize: PEER_STREAM_WINDOW_BYTES });
    if ((session.state.localWindowSize ?? 0) < PEER_SESSION_WINDOW_BYTES)
      session.setLocalWindowSize(PEER_SESSION_WINDOW_BYTES);
    return true;
  } catch {
    // A session closing meanwhile: nothing to widen.
    return false;
  }
}

const INTERCEPTOR_DEPTH_MAX = 16;

function sessionOf(call: object): ServerHttp2Session | null {
  let at: unknown = (call as { call?: unknown }).call;
  for (let depth = 0; depth < INTERCEPTOR_DEPTH_MAX && typeof at === 'object' && at !== null; depth++) {
    const stream = (at as { stream?: { session?: unknown } }).stream;
    const session = stream?.session as ServerHttp2Session | undefined;
    if (
      session !== undefined &&
      typeof session.settings === 'function' &&
      typeof session.setLocalWindowSize === 'function'
    )
      return session;
    at = (at as { nextCall?: unknown }).nextCall;
  }
  return null;
}
