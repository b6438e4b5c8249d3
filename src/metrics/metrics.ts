import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { NodeId } from '../raft/types.ts';
import type { ReplicaObserver } from '../replica/replica.ts';

/** What the metrics read when scraped (a manager's live state). Null fields: not known (locked). */
export interface MetricsSource {
  raft(): { term: number; commit: number; applied: number; isLeader: boolean } | null;
  keyringTerm(): number;
  locked(): boolean;
  auditBroken(): boolean;
  /** What this manager adds to its host clock to read the cluster's time, ms (cluster-clock.ts). */
  clockOffsetMs(): number;
  /** Leases held, and those past their end (by LEASE_OVERDUE_MS) that the leader has not revoked yet. */
  /**
   * Leases held, and those past their end (by LEASE_OVERDUE_MS) that the leader has not revoked
   * yet; static roles whose rotation is pending or due for as long (their password is not served
   * while pending).
   */
  leases(): { held: number; overdue: number; rotationsOverdue: number };
  transport(): {
    messagesSent: number;
    messagesDropped: number;
    messagesReceived: number;
    reconnects: number;
    snapshotsSent: number;
  };
}

// Buckets from 0.1 ms to 10 s: fsyncs are sub-millisecond to tens of ms; a write under a fault
// can take seconds.
const LATENCY_BUCKETS_S = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/**
 * A manager's metrics in Prometheus text format (prom-client): Raft progress, latencies of each
 * step a write takes, RPCs by method and status code, audit and keyring state, and the process's
 * own (CPU, memory, event loop lag). Every name starts with `coffer_`; units are in the names.
 */
export class NodeMetrics implements ReplicaObserver {
  readonly registry = new Registry();
  #source: MetricsSource | null = null;
  readonly #leaderChanges: Counter;
  readonly #fsyncSeconds: Histogram;
  readonly #entriesPerSync: Histogram;
  readonly #proposalSeconds: Histogram;
  readonly #commitSeconds: Histogram;
  readonly #applySeconds: Histogram;
  readonly #readIndexSeconds: Histogram;
  readonly #rpcs: Counter<'method' | 'code'>;
  readonly #rpcSeconds: Histogram<'method'>;
  readonly #auditFailures: Counter;
  readonly #refusals: Counter<'reason'>;

  constructor(labels: { nodeId: NodeId; clusterId: string }) {
    this.registry.setDefaultLabels({ node_id: String(labels.nodeId), cluster_id: labels.clusterId });
    collectDefaultMetrics({ register: this.registry, prefix: 'coffer_' });
    const registers = [this.registry];
    // Gauges read the live state when scraped (collect runs on every scrape).
    const self = this;
    const live = (name: string, help: string, read: (s: MetricsSource) => number | null): void => {
      const g: Gauge = new Gauge({
        name,
        help,
        registers,
        collect() {
          const value = self.#source === null ? null : read(self.#source);
          if (value !== null) g.set(value);
        },
      });
    };
    live('coffer_raft_term', 'The Raft term this manager is in.', (s) => s.raft()?.term ?? null);
    live('coffer_raft_commit_index', 'The highest log index known to be committed.', (s) => s.raft()?.commit ?? null);
    live('coffer_raft_applied_index', 'The highest log index applied to the state.', (s) => s.raft()?.applied ?? null);
    live('coffer_raft_is_leader', '1 when this manager leads.', (s) => {
      const raft = s.raft();
      return raft === null ? null : raft.isLeader ? 1 : 0;
    });
    live('coffer_keyring_term', "The active data key's term (0 before the first key).", (s) => s.keyringTerm());
    live('coffer_locked', '1 while the manager waits for its unlock key.', (s) => (s.locked() ? 1 : 0));
    live('coffer_audit_broken', '1 while the audit log cannot be written (requests are refused).', (s) =>
      s.auditBroken() ? 1 : 0,
    );
    live(
      'coffer_clock_offset_seconds',
      "The cluster's time (the median of the members' clocks) minus this host's clock; far from 0, fix the host's NTP.",
      (s) => s.clockOffsetMs() / 1000,
    );
    live(
      'coffer_leases',
      'Leases of dynamic credentials held (pending, active or being revoked).',
      (s) => s.leases().held,
    );
    live(
      'coffer_leases_overdue',
      'Leases past their end by 30 s or more that are not revoked yet (their database cannot be reached, say).',
      (s) => s.leases().overdue,
    );
    live(
      'coffer_static_rotations_overdue',
      "Static database roles whose password rotation is pending or due for 30 s or more (their database cannot be reached, say; a pending one's password is not served).",
      (s) => s.leases().rotationsOverdue,
    );
    live('coffer_peer_messages_sent_total', 'Raft messages sent to peers.', (s) => s.transport().messagesSent);
    live(
      'coffer_peer_messages_received_total',
      'Raft messages received from peers.',
      (s) => s.transport().messagesReceived,
    );
    live(
      'coffer_peer_messages_dropped_total',
      'Raft messages dropped (a full queue or a broken link).',
      (s) => s.transport().messagesDropped,
    );
    live(
      'coffer_peer_reconnects_total',
      'Streams to peers opened again after a failure.',
      (s) => s.transport().reconnects,
    );
    live('coffer_peer_snapshots_sent_total', 'Snapshots sent to peers.', (s) => s.transport().snapshotsSent);
    this.#leaderChanges = new Counter({
      name: 'coffer_raft_leader_changes_total',
      help: 'Times the leader this manager knows changed.',
      registers,
    });
    this.#fsyncSeconds = new Histogram({
      name: 'coffer_storage_fsync_seconds',
      help: 'One synced write of the Raft log (entries and state).',
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.#entriesPerSync = new Histogram({
      name: 'coffer_storage_entries_per_sync',
      help: 'Entries in one synced write (group commit).',
      buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
      registers,
    });
    this.#proposalSeconds = new Histogram({
      name: 'coffer_raft_proposal_seconds',
      help: "From proposing here to the entry durably in this manager's log.",
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.#commitSeconds = new Histogram({
      name: 'coffer_raft_commit_seconds',
      help: 'From proposing here to the entry committed.',
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.#applySeconds = new Histogram({
      name: 'coffer_raft_apply_seconds',
      help: 'From proposing here to the entry applied (what the proposer waits).',
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.#readIndexSeconds = new Histogram({
      name: 'coffer_raft_read_index_seconds',
      help: 'A linearizable read: from asking to the state caught up with the read index.',
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.#rpcs = new Counter({
      name: 'coffer_rpc_requests_total',
      help: 'gRPC requests by method and status code.',
      labelNames: ['method', 'code'],
      registers,
    });
    this.#rpcSeconds = new Histogram({
      name: 'coffer_rpc_duration_seconds',
      help: 'gRPC request duration by method.',
      labelNames: ['method'],
      buckets: LATENCY_BUCKETS_S,
      registers,
    });
    this.#refusals = new Counter({
      name: 'coffer_rpc_refusals_total',
      help: 'Requests refused before or by authorization, by reason (unauthenticated, permission-denied, malformed, rate-limited).',
      labelNames: ['reason'],
      registers,
    });
    this.#auditFailures = new Counter({
      name: 'coffer_audit_failures_total',
      help: 'Audit records that could not be written (each failed its request).',
      registers,
    });
  }

  /** Where the live gauges read from; set once the manager runs. */
  bind(source: MetricsSource): void {
    this.#source = source;
  }

  persisted(seconds: number, entries: number): void {
    this.#fsyncSeconds.observe(seconds);
    if (entries > 0) this.#entriesPerSync.observe(entries);
  }

  proposed(seconds: number): void {
    this.#proposalSeconds.observe(seconds);
  }

  committed(seconds: number): void {
    this.#commitSeconds.observe(seconds);
  }

  applied(seconds: number): void {
    this.#applySeconds.observe(seconds);
  }

  readIndex(seconds: number): void {
    this.#readIndexSeconds.observe(seconds);
  }

  leaderChanged(_lead: NodeId): void {
    this.#leaderChanges.inc();
  }

  rpc(method: string, code: string, seconds: number): void {
    this.#rpcs.inc({ method, code });
    this.#rpcSeconds.observe({ method }, seconds);
  }

  /** A request refused for who sent it or how: no certificate, no permission, a malformed message, a rate limit. */
  refused(reason: 'unauthenticated' | 'permission-denied' | 'malformed' | 'rate-limited'): void {
    this.#refusals.inc({ reason });
  }

  auditFailed(): void {
    this.#auditFailures.inc();
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Serves GET /metrics on host:port (plain HTTP: metrics carry no secrets). */
  async serve(host: string, port: number): Promise<Server> {
    const server = createServer((request, response) => {
      if (request.method !== 'GET' || (request.url ?? '').split('?')[0] !== '/metrics') {
        response.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at GET /metrics\n');
        return;
      }
      this.text().then(
        (body) => response.writeHead(200, { 'content-type': this.registry.contentType }).end(body),
        (error: unknown) =>
          response
            .writeHead(500, { 'content-type': 'text/plain' })
            .end(`metrics failed: ${(error as Error).message}\n`),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    return server;
  }
}
