import * as grpc from '@grpc/grpc-js';
import { randomInt } from 'node:crypto';
import type { Server as HttpServer } from 'node:http';
import type { AuditLog } from '../audit/audit-log.ts';
import { KEY_ROTATION_INTERVAL_MS, Manager } from '../manager/manager.ts';
import { Proposer } from '../manager/proposer.ts';
import { NodeMetrics } from '../metrics/metrics.ts';
import type { ConfChange, NodeId } from '../raft/types.ts';
import { AppliedState, type AppliedResult } from '../state/applied-state.ts';
import { DataDir, defaultKeyFile } from '../manager/data-dir.ts';
import { rememberPeerCertificates } from '../transport/auth.ts';
import {
  DEFAULT_CONNECTION_LIMITS,
  type ConnectionGuardStats,
  type ConnectionLimits,
} from '../transport/connection-guard.ts';
import { listenGuarded, type GuardedListener } from '../transport/listener.ts';
import { PeerTransport } from '../transport/peer-transport.ts';
import type { TlsMaterial } from '../transport/tls.ts';
import { createLogger, type Logger } from '../util/logger.ts';
import { SeededRandom } from '../util/prng.ts';
import { AnonymousAudit } from './anonymous-audit.ts';
import { AuditAnchoring } from './audit-anchor.ts';
import { openManagerAuditLog } from './audit-key.ts';
import { ManagerCertificate } from './certificates.ts';
import { ClusterCa, type SigningCa } from './cluster-ca.ts';
import { type AppliedOk, type ServiceContext, type StateCommand, signingOrUnavailable } from './context.ts';
import { ServiceError } from './errors.ts';
import { HealthService } from './health.ts';
import { KeySchedule, type KeyScheduleStep } from './key-schedule.ts';
import { LeaderDuties } from './leader-duties.ts';
import { isDiskFull } from '../util/disk-full.ts';
import { DISK_FREE_RESUME_BYTES, watchDiskSpace } from './disk-space.ts';
import { ClockProbe } from './clock-probe.ts';
import type { RotationStep } from './db/static-rotation.ts';
import { StaticRoleBook } from '../state/static-roles.ts';
import { CLOCK_PROBE_INTERVAL_MS, ClusterClock } from './cluster-clock.ts';
import { normalizeExtraHosts } from './manager-hosts.ts';
import { GrpcLeaderLink } from './leader-link.ts';
import { runMemberOp, type MemberOp, type MemberOpResult } from './membership.ts';
import { READ_LEADER_WAIT_MS, readOnceLed } from './read-point.ts';
import {
  CA_KEY_SECRET,
  TLS_CERT_SECRET,
  TLS_KEY_SECRET,
  readNodeConfig,
  splitHostPort,
  writeNodeConfig,
  type NodeConfig,
} from './node-config.ts';
import { PeerTrust } from './peer-trust.ts';
import { IdentityRateLimiter } from './rate-limit.ts';
import { registerServices } from './services.ts';

export { CERT_RENEW_REMAINING_SHARE } from './certificates.ts';
export { AUDIT_ANCHOR_INTERVAL_MS } from './audit-anchor.ts';

const HOUSEKEEPING_INTERVAL_MS = 250;

export interface NodeOptions {
  readonly dataDir: string;
  /** Defaults to `<data dir>.key`, beside (not inside) the data directory. */
  readonly keyFile?: string;
  /** For an autolocked manager. */
  readonly unlockKey?: string;
  /** Where to bind, instead of the listen address written at init or join (a container's own). */
  readonly listen?: string;
  readonly logger?: Logger;
  readonly tickIntervalMs?: number;
  readonly snapshotEveryEntries?: number;
  readonly snapshotTailEntries?: number;
  readonly snapshotEveryBytes?: number;
  readonly snapshotTailBytesMax?: number;
  /** Per-identity limits at this manager's edge (rate-limit.ts defaults; 0: off). */
  readonly identityRequestsPerSecond?: number;
  readonly identityWriteBytesPerMinute?: number;
  /** Serve Prometheus metrics over HTTP at host:port (GET /metrics); off when absent. */
  readonly metricsListen?: string;
  /** Quorum loss: start a one-member cluster from this manager's data (the others are removed). */
  readonly forceNewCluster?: boolean;
  /** Limits on the connections the gRPC port holds (tests shorten them); see connection-guard.ts. */
  readonly connectionLimits?: Partial<ConnectionLimits>;
  /** Move a missing or broken audit log aside and start a new one (see openManagerAuditLog). */
  readonly newAuditLog?: boolean;
  /** How often the audit anchor is replicated (default AUDIT_ANCHOR_INTERVAL_MS; tests shorten it). */
  readonly auditAnchorIntervalMs?: number;
  /**
   * The manager cannot go on (its replica stopped on an error): logged at fatal first. The CLI
   * exits; a test may look. Without it the manager stays up, NOT_SERVING, refusing requests.
   */
  readonly onFatal?: (error: Error) => void;
  /** Tests only: where a static role's password rotation stops, standing for a crash at that step. */
  readonly rotationFailpoint?: (step: RotationStep) => Promise<void>;
  /** Tests only: where the data key's scheduled rotation stops, standing for a crash at that step. */
  readonly keyScheduleFailpoint?: (step: KeyScheduleStep) => Promise<void>;
  /**
   * Tests only: the cluster clock (a test moves the cluster's time with one of its own, rather
   * than waiting an hour for a scheduled rotation). Default: a ClusterClock of this host's clocks.
   */
  readonly clock?: ClusterClock;
  /**
   * The disk filled and this manager stopped on it (it stays up meanwhile, refusing requests with
   * DISK_FULL, health NOT_SERVING saying why); now DISK_FREE_RESUME_BYTES are free again and it
   * should be started again from disk: the CLI exits with EXIT_RESTART for its supervisor.
   */
  readonly onDiskSpaceBack?: () => void;
  /**
   * This manager learned it was removed from the cluster (a member refused it as removed, or it
   * applied its own removal); called once. The CLI exits unless told to wait; without it the
   * manager stays up, NOT_SERVING, refusing every request as removed.
   */
  readonly onRemoved?: () => void;
}

/**
 * A running manager process, composed: the Manager (data directory, barrier, replica), the write
 * path (Proposer, with a gRPC link to the leader), the gRPC server and its services (each given
 * a ServiceContext, never this class), the peer transport, this manager's certificate, and the
 * housekeeping timer that runs the duties: every manager's (health, certificate, audit anchor,
 * key use) and the leader's (leader-duties.ts).
 */
export class CofferNode {
  readonly config: NodeConfig;
  readonly manager: Manager<AppliedResult>;
  readonly state: AppliedState;
  readonly transport: PeerTransport;
  readonly server: grpc.Server;
  readonly log: Logger;
  readonly audit: AuditLog;
  readonly health: HealthService;
  /** Which managers may talk Raft to this one, with which keys. */
  readonly trust: PeerTrust;
  /** The cluster CAs: what this manager trusts, signs with and presents. */
  readonly cas: ClusterCa;
  readonly metrics: NodeMetrics;
  /** The one write path: seal here, propose here or on the leader. */
  readonly proposer: Proposer<AppliedResult>;
  /** What every service handler is given. */
  readonly context: ServiceContext;
  readonly #certificate: ManagerCertificate;
  readonly #leaderLink: GrpcLeaderLink;
  readonly #leaderDuties: LeaderDuties;
  readonly #anchoring: AuditAnchoring;
  readonly #options: NodeOptions;
  #removalReported = false;
  readonly #connectionLimits: ConnectionLimits;
  #housekeeping: NodeJS.Timeout | null = null;
  #clockProbing: NodeJS.Timeout | null = null;
  /** While the disk is full: watches for space to come back (disk-space.ts). */
  #diskWatch: { stop(): void } | null = null;
  /**
   * The cluster's wall-clock time: the median of the members' clocks (cluster-clock.ts). The
   * keyring stamps new data keys with it, so the key schedule judges their age by the same clock.
   */
  readonly clock: ClusterClock;
  #housekeepingBusy = false;
  #listener: GuardedListener | null = null;
  #metricsServer: HttpServer | null = null;
  boundPort = 0;

  private constructor(
    options: NodeOptions,
    config: NodeConfig,
    parts: {
      manager: Manager<AppliedResult>;
      state: AppliedState;
      transport: PeerTransport;
      trust: PeerTrust;
      cas: ClusterCa;
      clock: ClusterClock;
    },
    own: { certPem: string; keyPem: string },
    log: Logger,
    audit: AuditLog,
    metrics: NodeMetrics,
  ) {
    const { manager, state, transport, trust, cas, clock } = parts;
    this.#options = options;
    this.clock = clock;
    this.config = config;
    this.manager = manager;
    this.state = state;
    this.transport = transport;
    this.trust = trust;
    this.cas = cas;
    this.log = log;
    this.audit = audit;
    this.metrics = metrics;
    this.#connectionLimits = { ...DEFAULT_CONNECTION_LIMITS, ...options.connectionLimits };
    const propose = (command: StateCommand): Promise<AppliedOk> => this.propose(command);
    this.#certificate = new ManagerCertificate(
      {
        dataDir: options.dataDir,
        nodeId: config.nodeId,
        clusterId: config.clusterId,
        advertise: config.advertise,
        extraHosts: config.extraHosts ?? [],
        validityDays: config.managerCertValidityDays,
        cas,
        cluster: state.cluster,
        manager,
        propose,
        now: () => this.clock.now(),
        onRenewed: () => {
          transport.reconnectAll();
          trust.reset();
          this.#leaderLink.reset();
        },
        log,
      },
      own,
    );
    this.#leaderLink = new GrpcLeaderLink({
      clusterId: config.clusterId,
      tls: () => this.tls,
      addressOf: (id) => this.addressOf(id),
    });
    this.proposer = new Proposer<AppliedResult>({
      manager,
      leader: this.#leaderLink,
      // A refusal forwarded from the leader arrives as msgpack: its finer reason and metadata with it.
      refusalOf: (result) => (result.ok ? null : result),
      logger: log,
    });
    this.#leaderDuties = new LeaderDuties({
      config,
      state,
      cas,
      manager,
      propose,
      proposeConfChange: (change) => this.proposer.confChange(change),
      now: () => this.clock.now(),
      log,
      ...(options.rotationFailpoint === undefined ? {} : { rotationFailpoint: options.rotationFailpoint }),
      keySchedule: new KeySchedule({
        cluster: state.cluster,
        manager,
        keyOperation: (operation) => this.proposer.keyOperation(operation),
        now: () => this.clock.now(),
        log,
        ...(options.keyScheduleFailpoint === undefined ? {} : { failpoint: options.keyScheduleFailpoint }),
      }),
    });
    this.#anchoring = new AuditAnchoring({
      nodeId: config.nodeId,
      audit,
      cluster: state.cluster,
      hasLeader: () => (manager.raftStatus()?.lead ?? 0) !== 0,
      propose,
      ...(options.auditAnchorIntervalMs === undefined ? {} : { intervalMs: options.auditAnchorIntervalMs }),
      logReset: options.newAuditLog === true,
      log,
    });
    rememberPeerCertificates();
    // Channelz stays on for the server: grpc-js 1.14 tracks sessions for forceShutdown() only
    // when it is on, and with it off a stopped server left its connections open (a manager
    // stopped and started again in one process kept talking to the old one's sessions).
    this.server = new grpc.Server({
      'grpc.max_receive_message_length': 4 * 1024 * 1024,
      'grpc.max_connection_idle_ms': this.#connectionLimits.connectionIdleMs,
    });
    this.context = {
      nodeId: config.nodeId,
      clusterId: config.clusterId,
      state,
      audit,
      anonymousAudit: new AnonymousAudit((event) => audit.append(event)),
      rateLimit: new IdentityRateLimiter({
        ...(options.identityRequestsPerSecond === undefined
          ? {}
          : { requestsPerSecond: options.identityRequestsPerSecond }),
        ...(options.identityWriteBytesPerMinute === undefined
          ? {}
          : { writeBytesPerMinute: options.identityWriteBytesPerMinute }),
      }),
      trust,
      log,
      metrics,
      clock: this.clock,
      propose,
      proposeConfChange: (change) => this.proposer.confChange(change),
      readPoint: async (stale = false) =>
        stale
          ? (manager.status().raft?.applied ?? 0)
          : readOnceLed(() => manager.linearizableRead(), {
              waitable: () => manager.leaderSeenAgoMs() < READ_LEADER_WAIT_MS,
            }),
      replica: manager,
      pki: { signing: () => this.ca, trustPem: () => cas.trustPem(), activeCertPem: () => cas.activeCertPem() },
      addressOf: (id) => this.addressOf(id),
    };
    const memberOp = (op: MemberOp): Promise<MemberOpResult> =>
      runMemberOp(
        {
          replica: manager,
          state,
          propose,
          proposeConfChange: (change) => this.proposer.confChange(change),
          forwardMemberOp: (leader, forwarded) => this.#leaderLink.memberOp(leader, forwarded),
          forgetPeer: (id) => {
            transport.forget(id);
            transport.disconnect(id);
          },
        },
        op,
      );
    registerServices(this.server, {
      ctx: this.context,
      peer: {
        raftStream: transport.handleRaftStream,
        acceptForwarded: (payload) => this.proposer.acceptForwarded(payload),
        acceptConfChange: (change: ConfChange) => manager.proposeConfChange(change),
        runMemberOp: memberOp,
        members: () => trust.members(),
      },
      cluster: {
        runMemberOp: memberOp,
        certificatePem: () => this.#certificate.leafPem,
        snapshotsSent: () => transport.stats.snapshotsSent,
      },
      keys: this.proposer,
      manager,
      managerCertValidityDays: config.managerCertValidityDays,
    });
    this.health = new HealthService({
      server: this.server,
      clusterId: config.clusterId,
      facts: () => ({
        raft: manager.status().raft,
        removed: trust.selfRemoved(),
        auditBroken: audit.broken !== null,
        replicaFailed: manager.replicaFailure() !== null,
        diskFull: isDiskFull(manager.replicaFailure()) || isDiskFull(audit.broken) ? this.#options.dataDir : null,
      }),
      log,
      metrics,
    });
  }

  static async start(options: NodeOptions): Promise<CofferNode> {
    // No shared Buffer pool in a manager: Node carves small Buffers (a request's or a reply's
    // frames, a decoded value) out of shared 8 KiB slabs that any live neighbour keeps alive, so a
    // secret's bytes would outlive the request that needed them. Each buffer is its own, freed
    // with it (test/server/heap-residency.test.ts searches the live buffers).
    Buffer.poolSize = 0;
    let config = await readNodeConfig(options.dataDir);
    // Checked at start, not at the first renewal weeks later: an edited node.json that names
    // something no certificate may name stops the manager now, saying which name.
    config = { ...config, extraHosts: normalizeExtraHosts(config.extraHosts ?? []) };
    const log = options.logger ?? createLogger({ component: `manager-${config.nodeId}` });
    const state = new AppliedState({ store: await new DataDir(options.dataDir).openStateStore() });
    const metrics = new NodeMetrics({ nodeId: config.nodeId, clusterId: config.clusterId });
    const clock = options.clock ?? new ClusterClock();
    let node: CofferNode | null = null;
    const bootstrapPeers = new Map(config.peers.map(([id, address]) => [id, address]));
    const trust: PeerTrust = new PeerTrust({
      selfId: config.nodeId,
      clusterId: config.clusterId,
      cluster: state.cluster,
      confState: () => manager.raftStatus()?.confState ?? null,
      bootstrap: config.peers.map(([id, address, keys = []]) => [id, address, keys]),
      tls: () => node?.tls ?? null,
      logger: log.child({ component: 'peer-trust' }),
    });
    const transport: PeerTransport = new PeerTransport({
      selfId: config.nodeId,
      clusterId: config.clusterId,
      tls: () => node?.tls ?? null,
      addressOf: (peer) => state.cluster.addresses.get(peer) ?? bootstrapPeers.get(peer) ?? trust.vouchedAddress(peer),
      onMessage: (message) => manager.step(message),
      onUnreachable: (peer) => manager.reportUnreachable(peer),
      onReachable: (peer) => manager.reportReachable(peer),
      onSnapshotSent: (peer, ok) => manager.reportSnapshot(peer, ok),
      onSnapshot: (message, chunks) => manager.receiveSnapshot(message, chunks),
      admits: (peer, spki) => trust.admits(peer, spki),
      onRefused: (peer) => trust.askAbout(peer),
      onRemoved: (peer) => trust.noteRemovedBy(peer),
      keysOf: (peer) => trust.knownKeys(peer),
      logger: log.child({ component: 'transport' }),
    });
    const manager: Manager<AppliedResult> = await Manager.open<AppliedResult>({
      dataDir: options.dataDir,
      id: config.nodeId,
      keyFile: options.keyFile ?? defaultKeyFile(options.dataDir),
      peers: transport,
      inner: state,
      random: new SeededRandom(randomInt(2 ** 31)),
      // New data keys are stamped with the cluster's time, which the key schedule reads.
      nowMs: () => clock.now(),
      // With a schedule (coffer key schedule), it alone rotates by age, then rewraps (key-schedule.ts).
      keyRotationIntervalMs: () =>
        state.cluster.keySchedulePeriodMs === null ? KEY_ROTATION_INTERVAL_MS : Number.POSITIVE_INFINITY,
      ...(config.bootstrap ? { bootstrapVoters: [config.nodeId] } : {}),
      logger: log,
      ...(options.tickIntervalMs === undefined ? {} : { tickIntervalMs: options.tickIntervalMs }),
      ...(options.snapshotEveryEntries === undefined ? {} : { snapshotEveryEntries: options.snapshotEveryEntries }),
      ...(options.snapshotTailEntries === undefined ? {} : { snapshotTailEntries: options.snapshotTailEntries }),
      ...(options.snapshotEveryBytes === undefined ? {} : { snapshotEveryBytes: options.snapshotEveryBytes }),
      ...(options.snapshotTailBytesMax === undefined ? {} : { snapshotTailBytesMax: options.snapshotTailBytesMax }),
      observer: metrics,
      onReplicaFailure: (error) => {
        if (isDiskFull(error)) {
          log.error(
            { event: 'disk-full', dataDir: options.dataDir, reason: error.message },
            `the disk of ${options.dataDir} is full: this manager refuses every request (DISK_FULL) until ${DISK_FREE_RESUME_BYTES >> 20} MiB are free there, then starts again from what is on disk`,
          );
          if (node !== null && node.#diskWatch === null)
            node.#diskWatch = watchDiskSpace(options.dataDir, log, () => options.onDiskSpaceBack?.());
          return;
        }
        log.fatal(
          { event: 'replica-failed', reason: error.message, stack: error.stack },
          'the replica stopped on an error it cannot recover from: this manager refuses every request until it is restarted',
        );
        options.onFatal?.(error);
      },
      ...(options.forceNewCluster === true ? { forceNewCluster: true } : {}),
    }).catch(async (error: unknown) => {
      transport.close();
      trust.close();
      await state.close();
      throw error;
    });
    metrics.bind({
      raft: () => {
        const s = manager.raftStatus();
        return s === null
          ? null
          : { term: s.term, commit: s.commit, applied: s.applied, isLeader: s.role === 'leader' };
      },
      keyringTerm: () => manager.status().keys?.activeTerm ?? 0,
      locked: () => manager.locked,
      auditBroken: () => node?.audit.broken !== null && node?.audit.broken !== undefined,
      clockOffsetMs: () => node?.clock.offsetMs() ?? 0,
      leases: () => {
        const leases = state.access.leases.leases;
        const overdueBefore = (node?.clock.now() ?? Date.now()) - LEASE_OVERDUE_MS;
        let overdue = 0;
        for (const lease of leases.values()) if (lease.expiresAtMs < overdueBefore) overdue++;
        let rotationsOverdue = 0;
        for (const role of state.access.leases.statics.roles.values()) {
          // A role never rotated begins within a second (and is pending from then on).
          const since =
            role.pending?.startedAtMs ??
            (role.lastRotatedAtMs === 0 ? Number.POSITIVE_INFINITY : StaticRoleBook.nextRotationAtMs(role));
          if (since < overdueBefore) rotationsOverdue++;
        }
        return { held: leases.size, overdue, rotationsOverdue };
      },
      transport: () => transport.stats,
    });
    let metricsServer: HttpServer | null = null;
    try {
      if (options.metricsListen !== undefined) {
        const { host, port } = splitHostPort(options.metricsListen);
        metricsServer = await metrics.serve(host, port);
      }
      if (manager.locked) {
        if (options.unlockKey === undefined)
          throw new ServiceError(
            grpc.status.FAILED_PRECONDITION,
            'this manager is autolocked: give its unlock key (coffer server reads it from stdin)',
          );
        await manager.unlock(options.unlockKey);
      }
      if (manager.forcedOut().length > 0) {
        // Durable before anything is served: if this process stops before the new leader marks
        // them removed, the next start (without the flag) still does.
        config = {
          ...config,
          retiredMembers: [...new Set([...(config.retiredMembers ?? []), ...manager.forcedOut()])],
        };
        await writeNodeConfig(options.dataDir, config);
        log.warn(
          { event: 'forced-new-cluster', removed: manager.forcedOut() },
          `forced a new one-member cluster: managers ${manager.forcedOut().join(', ')} are removed; start this manager without --force-new-cluster from now on`,
        );
      }
      const started = await CofferNode.#serve(
        options,
        config,
        { manager, state, transport, trust, clock },
        log,
        metrics,
        (made) => (node = made),
      );
      started.#metricsServer = metricsServer;
      // Serving now: tell the other members this one is up, and they connect back at once rather
      // than at the end of their reconnect backoff (a restarted follower hears its leader sooner).
      transport.dial([...state.cluster.addresses.keys(), ...bootstrapPeers.keys()]);
      return started;
    } catch (error) {
      // Nothing may keep running after a failed start: no ticking replica, no dialling transport.
      metricsServer?.close();
      transport.close();
      (node as CofferNode | null)?.server.forceShutdown();
      trust.close();
      await manager.stop();
      await state.close();
      throw error;
    }
  }

  static async #serve(
    options: NodeOptions,
    config: NodeConfig,
    parts: {
      manager: Manager<AppliedResult>;
      state: AppliedState;
      transport: PeerTransport;
      trust: PeerTrust;
      clock: ClusterClock;
    },
    log: Logger,
    metrics: NodeMetrics,
    made: (node: CofferNode) => void,
  ): Promise<CofferNode> {
    const { manager, state } = parts;
    const files = await new DataDir(options.dataDir).readTlsFiles();
    const tlsKey = manager.localSecret(TLS_KEY_SECRET);
    if (tlsKey === undefined) throw new Error(`the key store of ${options.dataDir} lacks this manager's TLS key`);
    const certPem = manager.localSecret(TLS_CERT_SECRET)?.toString() ?? files.nodeCertPem;
    // The CA key is in the key store of the first manager only, until its first leader installs it in the replicated state.
    const cas = new ClusterCa(state.cluster, {
      certPem: firstPem(files.caCertPem),
      keyPem: manager.localSecret(CA_KEY_SECRET)?.toString() ?? null,
    });
    const audit = await openManagerAuditLog(
      manager,
      new DataDir(options.dataDir).audit,
      config.nodeId,
      log,
      options.newAuditLog === true,
    );
    const node = new CofferNode(
      options,
      config,
      { ...parts, cas },
      { certPem, keyPem: tlsKey.toString() },
      log,
      audit,
      metrics,
    );
    made(node);
    await node.#listen();
    node.#housekeeping = setInterval(() => void node.#housekeep(), HOUSEKEEPING_INTERVAL_MS);
    const clockProbe = new ClockProbe({
      clock: node.clock,
      selfId: config.nodeId,
      members: () => {
        const conf = manager.raftStatus()?.confState;
        return conf === undefined ? [] : [...conf.voters, ...conf.learners];
      },
      client: (member) => node.trust.peerClient(member),
      log,
    });
    node.#clockProbing = setInterval(() => clockProbe.round(), CLOCK_PROBE_INTERVAL_MS);
    const listen = options.listen ?? config.listen;
    log.info(
      { event: 'started', nodeId: config.nodeId, listen, port: node.boundPort },
      `manager ${config.nodeId} serving on ${listen}`,
    );
    return node;
  }

  get tls(): TlsMaterial {
    return this.#certificate.tls;
  }

  /** The CA to sign with now; refused while this manager has none (a joiner not yet caught up). */
  get ca(): SigningCa {
    return signingOrUnavailable(this.cas.signing());
  }

  /** Audit records of requests without a certificate: small, and rate-limited. */
  get anonymousAudit(): AnonymousAudit {
    return this.context.anonymousAudit;
  }

  /** Requests and bytes written per identity, at this manager (rpc.ts asks it). */
  get rateLimit(): IdentityRateLimiter {
    return this.context.rateLimit;
  }

  /**
   * A command of the applied state through the one write path; its result, or a
   * ProposalRefused (errors.ts gives it its status).
   */
  async propose(command: StateCommand): Promise<AppliedOk> {
    return (await this.proposer.command(command.kind, command.data)) as AppliedOk;
  }

  /** Serves the gRPC port through the connection guard (limits per source, in total, and on silent connections). */
  async #listen(): Promise<void> {
    this.#listener = await listenGuarded({
      server: this.server,
      credentials: this.#certificate.credentials.credentials,
      address: this.#options.listen ?? this.config.listen,
      limits: this.#connectionLimits,
      log: this.log.child({ component: 'listener' }),
    });
    this.boundPort = this.#listener.port;
  }

  /** The gRPC port's connections: held, authenticated, refused, evicted, timed out. */
  get connectionStats(): ConnectionGuardStats | null {
    return this.#listener?.stats ?? null;
  }

  /** Where a member listens, from the replicated state or what this manager learned when joining. */
  addressOf(id: NodeId): string | undefined {
    return (
      this.state.cluster.addresses.get(id) ??
      this.config.peers.find(([peer]) => peer === id)?.[1] ??
      this.trust.vouchedAddress(id)
    );
  }

  async #housekeep(): Promise<void> {
    if (this.#housekeepingBusy) return;
    this.#housekeepingBusy = true;
    try {
      this.health.update();
      this.trust.checkOutOfConfiguration();
      if (!this.#removalReported && this.trust.selfRemoved()) {
        this.#removalReported = true;
        this.#options.onRemoved?.();
      }
      await this.#certificate.followCas();
      await this.#certificate.recordOwnKey();
      await this.#certificate.maybeRenew();
      await this.#anchoring.maybeAnchor();
      const status = this.manager.raftStatus();
      if (status !== null && status.role !== 'leader' && this.manager.keyUsesNearLimit()) {
        this.log.warn(
          { event: 'key-uses-near-limit' },
          'this manager has nearly used up the active data key: asking the leader to rotate',
        );
        await this.proposer.keyOperation({ op: 'rotate' });
        return;
      }
      await this.#leaderDuties.run();
    } catch (error) {
      this.log.debug({ event: 'housekeeping-retry', err: error }, 'housekeeping will retry');
    } finally {
      this.#housekeepingBusy = false;
    }
  }

  async stop(): Promise<void> {
    if (this.#housekeeping !== null) clearInterval(this.#housekeeping);
    if (this.#clockProbing !== null) clearInterval(this.#clockProbing);
    this.#diskWatch?.stop();
    this.#metricsServer?.close();
    this.transport.close();
    this.trust.close();
    this.#leaderLink.reset();
    await this.#listener?.close();
    this.server.forceShutdown();
    this.context.anonymousAudit.flush();
    await this.audit.close();
    await this.manager.stop();
    await this.state.close();
  }
}

/** A lease this long past its end and not revoked counts as overdue (the metric coffer_leases_overdue). */
const LEASE_OVERDUE_MS = 30_000;

/** The first certificate of a PEM bundle. */
function firstPem(pem: string): string {
  const end = pem.indexOf('-----END CERTIFICATE-----');
  return end < 0 ? pem : `${pem.slice(0, end + '-----END CERTIFICATE-----'.length)}\n`;
}
