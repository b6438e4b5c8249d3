import * as grpc from '@grpc/grpc-js';
import { randomInt } from 'node:crypto';
import { Packr } from 'msgpackr';
import { packr } from '../codec/msgpack.ts';
import type { BarrierResult } from '../barrier/barrier.ts';
import { ClusterState } from '../state/cluster-state.ts';
import { identityOf, issuedBy, newLeafKey, signCertificate } from '../crypto/pki.ts';
import { ClusterCa, type SigningCa } from './cluster-ca.ts';
import { PeerTrust } from './peer-trust.ts';
import { Manager } from '../manager/manager.ts';
import type { ConfChange, NodeId } from '../raft/types.ts';
import { AppliedState, type AppliedResult } from '../state/applied-state.ts';
import { encodeSecretCommand } from '../state/secret-store.ts';
import { encodeAccessCommand } from '../state/access-state.ts';
import { ROOT_POLICY } from '../state/policy.ts';
import { ADMIN_IDENTITY } from './rpc.ts';
import type { AuditLog } from '../audit/audit-log.ts';
import { openManagerAuditLog } from './audit-key.ts';
import { defaultKeyFile } from '../manager/data-dir.ts';
import { join } from 'node:path';
import { PeerTransport } from '../transport/peer-transport.ts';
import { services } from '../transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, RenewableServerCredentials, managerChannelCredentials, type TlsMaterial } from '../transport/tls.ts';
import { rememberPeerCertificates } from '../transport/auth.ts';
import { DEFAULT_CONNECTION_LIMITS, type ConnectionGuardStats, type ConnectionLimits } from '../transport/connection-guard.ts';
import { listenGuarded, type GuardedListener } from '../transport/listener.ts';
import { createLogger, type Logger } from '../util/logger.ts';
import { SeededRandom } from '../util/prng.ts';
import { ServiceError } from './errors.ts';
import { TRANSFER_WAIT_MS, decodeMemberOpResult, encodeMemberOp, type MemberOp, type MemberOpResult } from './membership.ts';
import { AUDIT_DIR, CA_KEY_SECRET, TLS_CERT_SECRET, TLS_KEY_SECRET, hostOf, readNodeConfig, splitHostPort, readTlsFiles, writeNodeConfig, writeTlsFiles, type NodeConfig } from './node-config.ts';
import { AnonymousAudit } from './anonymous-audit.ts';
import { HealthService } from './health.ts';
import { IdentityRateLimiter } from './rate-limit.ts';
import { registerServices } from './services.ts';
import { NodeMetrics } from '../metrics/metrics.ts';
import type { Server as HttpServer } from 'node:http';


/** Renew a manager certificate once less than this share of its lifetime is left. */
export const CERT_RENEW_REMAINING_SHARE = 1 / 3;
const HOUSEKEEPING_INTERVAL_MS = 250;
/** How often a manager replicates its audit log's last durable record (its anchor), if it moved. */
export const AUDIT_ANCHOR_INTERVAL_MS = 10_000;

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
}

// The key file's default place is the data directory's layout (src/manager/data-dir.ts); still exported here for old importers.
export { defaultKeyFile };

/**
 * A running manager process: the Manager (data directory, barrier, replica), the gRPC server
 * (peers, joiners, clients), the peer transport, and the housekeeping a leader does (its own
 * address and the join token in the replicated state, promoting caught-up learners) and every
 * manager does (renewing its certificate before it expires).
 */
export class CofferNode {
  readonly config: NodeConfig;
  readonly manager: Manager<AppliedResult>;
  readonly state: AppliedState;
  readonly transport: PeerTransport;
  readonly server: grpc.Server;
  readonly log: Logger;
  readonly audit: AuditLog;
  /** Audit records of requests without a certificate: small, and rate-limited. */
  readonly anonymousAudit: AnonymousAudit;
  readonly health: HealthService;
  /** Which managers may talk Raft to this one, with which keys. */
  readonly trust: PeerTrust;
  /** The cluster CAs: what this manager trusts, signs with and presents. */
  readonly cas: ClusterCa;
  /** Requests and bytes written per identity, at this manager (rpc.ts asks it). */
  readonly rateLimit: IdentityRateLimiter;
  readonly #credentials: RenewableServerCredentials;
  readonly #options: NodeOptions;
  /** This manager's own certificate and key; `#tls` adds the trusted CAs and the chain to present. */
  #leafPem: string;
  readonly #keyPem: { current: string };
  #tls: TlsMaterial;
  #housekeeping: NodeJS.Timeout | null = null;
  #housekeepingBusy = false;
  #anchoredAtMs = -Infinity;
  /** Started with a new audit log: its first anchor says so (anchors otherwise only move forward). */
  #auditLogReset: boolean;
  #peerClients = new Map<NodeId, grpc.Client>();
  boundPort = 0;
  #listener: GuardedListener | null = null;
  readonly #connectionLimits: ConnectionLimits;
  readonly metrics: NodeMetrics;
  #metricsServer: HttpServer | null = null;

  private constructor(
    options: NodeOptions,
    config: NodeConfig,
    parts: { manager: Manager<AppliedResult>; state: AppliedState; transport: PeerTransport; trust: PeerTrust; cas: ClusterCa },
    own: { certPem: string; keyPem: string },
    log: Logger,
    audit: AuditLog,
    metrics: NodeMetrics,
  ) {
    const { manager, state, transport } = parts;
    this.trust = parts.trust;
    this.cas = parts.cas;
    this.#options = options;
    this.rateLimit = new IdentityRateLimiter({ ...(options.identityRequestsPerSecond === undefined ? {} : { requestsPerSecond: options.identityRequestsPerSecond }), ...(options.identityWriteBytesPerMinute === undefined ? {} : { writeBytesPerMinute: options.identityWriteBytesPerMinute }) });
    this.metrics = metrics;
    this.audit = audit;
    this.anonymousAudit = new AnonymousAudit((event) => audit.append(event));
    this.config = config;
    this.manager = manager;
    this.state = state;
    this.transport = transport;
    this.#leafPem = own.certPem;
    this.#keyPem = { current: own.keyPem };
    this.#tls = this.#material();
    this.log = log;
    this.#connectionLimits = { ...DEFAULT_CONNECTION_LIMITS, ...options.connectionLimits };
    this.#auditLogReset = options.newAuditLog === true;
    this.#credentials = new RenewableServerCredentials(this.#tls);
    rememberPeerCertificates();
    // Channelz stays on for the server: grpc-js 1.14 tracks sessions for forceShutdown() only
    // when it is on, and with it off a stopped server left its connections open (a manager
    // stopped and started again in one process kept talking to the old one's sessions).
    this.server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024, 'grpc.max_connection_idle_ms': this.#connectionLimits.connectionIdleMs });
    registerServices(this);
    this.health = new HealthService(this);
  }

  static async start(options: NodeOptions): Promise<CofferNode> {
    let config = await readNodeConfig(options.dataDir);
    const log = options.logger ?? createLogger({ component: `manager-${config.nodeId}` });
    const state = new AppliedState();
    const metrics = new NodeMetrics({ nodeId: config.nodeId, clusterId: config.clusterId });
    let node: CofferNode | null = null;
    const bootstrapPeers = new Map(config.peers.map(([id, address]) => [id, address]));
    const trust: PeerTrust = new PeerTrust({
      selfId: config.nodeId,
      clusterId: config.clusterId,
      cluster: state.cluster,
      confState: () => manager.raftStatus()?.confState ?? null,
      bootstrap: config.peers.map(([id, address, keys = []]) => [id, address, keys]),
      tls: () => node!.tls,
      logger: log.child({ component: 'peer-trust' }),
    });
    const transport: PeerTransport = new PeerTransport({
      selfId: config.nodeId,
      clusterId: config.clusterId,
      tls: () => node!.tls,
      addressOf: (peer) => state.cluster.addresses.get(peer) ?? bootstrapPeers.get(peer) ?? trust.vouchedAddress(peer),
      onMessage: (message) => manager.step(message),
      onUnreachable: (peer) => manager.reportUnreachable(peer),
      onSnapshotSent: (peer, ok) => manager.reportSnapshot(peer, ok),
      admits: (peer, spki) => trust.admits(peer, spki),
      onRefused: (peer) => trust.askAbout(peer),
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
      ...(config.bootstrap ? { bootstrapVoters: [config.nodeId] } : {}),
      logger: log,
      ...(options.tickIntervalMs === undefined ? {} : { tickIntervalMs: options.tickIntervalMs }),
      ...(options.snapshotEveryEntries === undefined ? {} : { snapshotEveryEntries: options.snapshotEveryEntries }),
      ...(options.snapshotTailEntries === undefined ? {} : { snapshotTailEntries: options.snapshotTailEntries }),
      ...(options.snapshotEveryBytes === undefined ? {} : { snapshotEveryBytes: options.snapshotEveryBytes }),
      ...(options.snapshotTailBytesMax === undefined ? {} : { snapshotTailBytesMax: options.snapshotTailBytesMax }),
      observer: metrics,
      ...(options.forceNewCluster === true ? { forceNewCluster: true } : {}),
    });
    metrics.bind({
      raft: () => {
        const s = manager.raftStatus();
        return s === null ? null : { term: s.term, commit: s.commit, applied: s.applied, isLeader: s.role === 'leader' };
      },
      keyringTerm: () => manager.status().keys?.activeTerm ?? 0,
      locked: () => manager.locked,
      auditBroken: () => node?.audit.broken !== null && node?.audit.broken !== undefined,
      transport: () => transport.stats,
    });
    let metricsServer: HttpServer | null = null;
    try {
      if (options.metricsListen !== undefined) {
        const { host, port } = splitHostPort(options.metricsListen);
        metricsServer = await metrics.serve(host, port);
      }
      if (manager.locked) {
        if (options.unlockKey === undefined) throw new ServiceError(grpc.status.FAILED_PRECONDITION, 'this manager is autolocked: give its unlock key (coffer server reads it from stdin)');
        await manager.unlock(options.unlockKey);
      }
      if (manager.forcedOut().length > 0) {
        // Durable before anything is served: if this process stops before the new leader marks
        // them removed, the next start (without the flag) still does.
        config = { ...config, retiredMembers: [...new Set([...(config.retiredMembers ?? []), ...manager.forcedOut()])] };
        await writeNodeConfig(options.dataDir, config);
        log.warn({ event: 'forced-new-cluster', removed: manager.forcedOut() }, `forced a new one-member cluster: managers ${manager.forcedOut().join(', ')} are removed; start this manager without --force-new-cluster from now on`);
      }
      const started = await CofferNode.#serve(options, config, { manager, state, transport, trust }, log, metrics, (made) => (node = made));
      started.#metricsServer = metricsServer;
      return started;
    } catch (error) {
      // Nothing may keep running after a failed start: no ticking replica, no dialling transport.
      metricsServer?.close();
      transport.close();
      (node as CofferNode | null)?.server.forceShutdown();
      trust.close();
      await manager.stop();
      throw error;
    }
  }

  static async #serve(
    options: NodeOptions,
    config: NodeConfig,
    parts: { manager: Manager<AppliedResult>; state: AppliedState; transport: PeerTransport; trust: PeerTrust },
    log: Logger,
    metrics: NodeMetrics,
    made: (node: CofferNode) => void,
  ): Promise<CofferNode> {
    const { manager, state } = parts;
    const files = await readTlsFiles(options.dataDir);
    const tlsKey = manager.localSecret(TLS_KEY_SECRET);
    if (tlsKey === undefined) throw new Error(`the key store of ${options.dataDir} lacks this manager's TLS key`);
    const certPem = manager.localSecret(TLS_CERT_SECRET)?.toString() ?? files.nodeCertPem;
    // The CA key is in the key store of the first manager only, until its first leader installs it in the replicated state.
    const cas = new ClusterCa(state.cluster, { certPem: firstPem(files.caCertPem), keyPem: manager.localSecret(CA_KEY_SECRET)?.toString() ?? null });
    const audit = await openManagerAuditLog(manager, join(options.dataDir, AUDIT_DIR), config.nodeId, log, options.newAuditLog === true);
    const node = new CofferNode(options, config, { ...parts, cas }, { certPem, keyPem: tlsKey.toString() }, log, audit, metrics);
    made(node);
    await node.#listen();
    node.#housekeeping = setInterval(() => void node.#housekeep(), HOUSEKEEPING_INTERVAL_MS);
    const listen = options.listen ?? config.listen;
    log.info({ event: 'started', nodeId: config.nodeId, listen, port: node.boundPort }, `manager ${config.nodeId} serving on ${listen}`);
    return node;
  }

  get tls(): TlsMaterial {
    return this.#tls;
  }

  /** The CA to sign with now; refused while this manager has none (a joiner not yet caught up). */
  get ca(): SigningCa {
    const ca = this.cas.signing();
    if (ca === null) throw new ServiceError(grpc.status.UNAVAILABLE, 'this manager has not received the cluster CA yet; retry on another manager');
    return ca;
  }

  /** This manager's TLS material: the CAs it trusts now, its certificate with the chain to present, its key. */
  #material(): TlsMaterial {
    return { caPem: this.cas.trustPem(), certPem: this.cas.chainPem(this.#leafPem), keyPem: this.#keyPem.current };
  }

  /** Follows the replicated CAs: a rotation or retirement changes what this manager trusts and presents. */
  async #followCas(): Promise<void> {
    const material = this.#material();
    if (material.caPem === this.#tls.caPem && material.certPem === this.#tls.certPem) return;
    this.#tls = material;
    this.#credentials.update(material);
    await writeTlsFiles(this.#options.dataDir, material.caPem, this.#leafPem);
    this.log.info({ event: 'trust-changed', cas: this.state.cluster.cas.map((c) => c.gen) }, 'the cluster CAs changed: this manager trusts and presents the new set');
  }

  /** Serves the gRPC port through the connection guard (limits per source, in total, and on silent connections). */
  async #listen(): Promise<void> {
    this.#listener = await listenGuarded({ server: this.server, credentials: this.#credentials.credentials, address: this.#options.listen ?? this.config.listen, limits: this.#connectionLimits, log: this.log.child({ component: 'listener' }) });
    this.boundPort = this.#listener.port;
  }

  /** The gRPC port's connections: held, authenticated, refused, evicted, timed out. */
  get connectionStats(): ConnectionGuardStats | null {
    return this.#listener?.stats ?? null;
  }

  /** Where a member listens, from the replicated state or what this manager learned when joining. */
  addressOf(id: NodeId): string | undefined {
    return this.state.cluster.addresses.get(id) ?? this.config.peers.find(([peer]) => peer === id)?.[1] ?? this.trust.vouchedAddress(id);
  }

  async #housekeep(): Promise<void> {
    if (this.#housekeepingBusy) return;
    this.#housekeepingBusy = true;
    try {
      this.health.update();
      await this.#followCas();
      await this.#maybeRecordOwnKey();
      await this.#maybeRenewCertificate();
      await this.#maybeAnchorAudit();
      const status = this.manager.raftStatus();
      if (status !== null && status.role !== 'leader' && this.manager.keyUsesNearLimit()) {
        this.log.warn({ event: 'key-uses-near-limit' }, 'this manager has nearly used up the active data key: asking the leader to rotate');
        await this.proposeSealed(this.manager.rotationPayload());
        return;
      }
      if (status === null || status.role !== 'leader' || (this.manager.status().keys?.activeTerm ?? 0) === 0) return;
      const cluster = this.state.cluster;
      // The CA made at init moves into the replicated state, where rotations happen.
      const install = this.cas.toInstall();
      if (install !== null) await this.proposeCommand(ClusterState.encode({ kind: 'cluster.ca-install', certPem: install.certPem, keyPem: install.keyPem }));
      // After a forced new cluster or a restore, the old members' certificates are refused from now on.
      for (const id of [...this.manager.forcedOut(), ...(this.config.retiredMembers ?? [])]) {
        if (!cluster.removed.has(id)) await this.proposeCommand(ClusterState.encode({ kind: 'cluster.removed', id }));
      }
      if (cluster.addresses.get(this.config.nodeId) !== this.config.advertise) {
        await this.proposeCommand(ClusterState.encode({ kind: 'cluster.member', id: this.config.nodeId, address: this.config.advertise }));
      }
      if (cluster.recoveryPublicKey === null && (this.config.initialRecoveryPublicKey ?? null) !== null) {
        await this.proposeCommand(ClusterState.encode({ kind: 'cluster.recovery-key', publicKey: Buffer.from(this.config.initialRecoveryPublicKey!, 'hex') }));
      }
      if (cluster.joinTokenHash === null && this.config.initialJoinTokenHash !== null) {
        await this.proposeCommand(ClusterState.encode({ kind: 'cluster.join-token', hash: Buffer.from(this.config.initialJoinTokenHash, 'hex'), expiresAtMs: this.config.initialJoinTokenExpiresAtMs ?? null, uses: null }));
      }
      const admin = this.config.initialAdmin ?? null;
      if (admin !== null && !this.state.access.identities.has(ADMIN_IDENTITY)) {
        await this.proposeCommand(encodeAccessCommand({ op: 'identity-issue', name: ADMIN_IDENTITY, policies: [ROOT_POLICY.name], key: admin.key, serial: admin.serial, caGen: 1, nowMs: Date.now() }));
      }
      await this.#maybePromote();
      // Expiry: the leader wipes what expired, through the log (the time is in the command).
      const nextExpiryMs = this.state.secrets.nextExpiryMs();
      if (nextExpiryMs !== null && nextExpiryMs <= Date.now()) await this.proposeCommand(encodeSecretCommand({ op: 'expire', nowMs: Date.now() }));
    } catch (error) {
      this.log.debug({ event: 'housekeeping-retry', err: error }, 'housekeeping will retry');
    } finally {
      this.#housekeepingBusy = false;
    }
  }

  /** Promotes a learner to voter once it has every committed entry (one change at a time). */
  async #maybePromote(): Promise<void> {
    const status = this.manager.raftStatus();
    if (status === null || status.progress === null) return;
    for (const learner of status.confState.learners) {
      if (this.state.cluster.heldLearners.has(learner)) continue; // demoted by an operator
      const progress = status.progress.get(learner);
      if (progress !== undefined && progress.match >= status.commit) {
        this.log.info({ event: 'promote', nodeId: learner }, `manager ${learner} caught up: promoting it to voter`);
        await this.manager.proposeConfChange({ type: 'add-voter', nodeId: learner });
        return;
      }
    }
  }

  /**
   * A new key and certificate when a third of the lifetime is left, or when the cluster moved to
   * a new CA. The new key is recorded in the replicated state first (peers admit both while the
   * switch happens), then stored with its certificate in one atomic key-store write, then used.
   */
  async #maybeRenewCertificate(): Promise<void> {
    const signing = this.cas.signing();
    if (signing === null) return;
    const identity = identityOf(this.#leafPem);
    const now = Date.now();
    const lifetime = identity.notAfterMs - identity.notBeforeMs;
    const expiring = identity.notAfterMs - now <= lifetime * CERT_RENEW_REMAINING_SHARE;
    const underOldCa = this.state.cluster.cas.length > 0 && !issuedBy(this.#leafPem, signing.certPem);
    if (!expiring && !underOldCa) return;
    if ((this.manager.raftStatus()?.lead ?? 0) === 0) return;
    const key = newLeafKey();
    const certPem = signCertificate(signing, key.publicPem, {
      id: String(this.config.nodeId),
      role: 'manager',
      clusterId: this.config.clusterId,
      nowMs: now,
      hosts: [hostOf(this.config.advertise)],
      validityDays: this.config.managerCertValidityDays,
    });
    const renewed = identityOf(certPem);
    const recorded = await this.proposeCommand(ClusterState.encode({ kind: 'cluster.member-key', id: this.config.nodeId, key: { key: renewed.spki, caGen: signing.gen } }));
    if (!recorded.ok) throw new Error(`the new key could not be recorded: ${recorded.reason}`);
    // Key and certificate in one atomic write; node.crt is a readable copy, not what starts the server.
    await this.manager.setLocalSecrets(new Map([[TLS_KEY_SECRET, Buffer.from(key.privatePem)], [TLS_CERT_SECRET, Buffer.from(certPem)]]));
    await writeTlsFiles(this.#options.dataDir, this.cas.trustPem(), certPem);
    this.#leafPem = certPem;
    this.#keyPem.current = key.privatePem;
    this.#tls = this.#material();
    this.#credentials.update(this.#tls);
    this.transport.reconnectAll();
    this.trust.reset();
    for (const client of this.#peerClients.values()) client.close();
    this.#peerClients.clear();
    this.log.info({ event: 'certificate-renewed', serial: renewed.serial, caGeneration: signing.gen, notAfter: new Date(renewed.notAfterMs).toISOString() }, 'renewed this manager\'s certificate');
  }

  /**
   * Replicates this manager's audit anchor (its log's last durable record) when it moved, at most
   * every AUDIT_ANCHOR_INTERVAL_MS: whoever can rewrite this manager's audit directory cannot then
   * cut or replace records written before it without `coffer audit verify` noticing.
   */
  async #maybeAnchorAudit(): Promise<void> {
    const now = Date.now();
    if (now - this.#anchoredAtMs < (this.#options.auditAnchorIntervalMs ?? AUDIT_ANCHOR_INTERVAL_MS) || (this.manager.raftStatus()?.lead ?? 0) === 0) return;
    const anchor = this.audit.anchor;
    const known = this.state.cluster.auditAnchors.get(this.config.nodeId);
    if (!this.#auditLogReset && known !== undefined && known.seq >= anchor.seq) return;
    this.#anchoredAtMs = now;
    const result = await this.proposeCommand(ClusterState.encode({ kind: 'cluster.audit-anchor', id: this.config.nodeId, seq: anchor.seq, hash: anchor.hash, reset: this.#auditLogReset }));
    if (result.ok) this.#auditLogReset = false;
    else this.log.error({ event: 'audit-anchor-refused', reason: result.reason }, `the cluster refused this manager's audit anchor: ${result.reason}`);
  }

  /** This manager's own key in the replicated state (the first manager's, a restored one's), so peers admit it. */
  async #maybeRecordOwnKey(): Promise<void> {
    const status = this.manager.raftStatus();
    if (status === null || status.lead === 0) return;
    const spki = identityOf(this.#leafPem).spki;
    if ((this.state.cluster.memberKeys.get(this.config.nodeId) ?? []).some((k) => k.key === spki)) return;
    const caGen = this.cas.generationOf(this.#leafPem);
    if (caGen === null) return;
    await this.proposeCommand(ClusterState.encode({ kind: 'cluster.member-key', id: this.config.nodeId, key: { key: spki, caGen } }));
  }

  /**
   * Seals a command here and proposes it on the leader (here, or forwarded over Peer.Propose);
   * resolves once it is committed and applied on the leader.
   */
  async proposeCommand(command: { kind: string; data: Buffer }): Promise<AppliedResult> {
    const payload = await this.manager.sealCommand(command.kind, command.data);
    const result = await this.proposeSealed(payload);
    if (result.type === 'applied') return result.result;
    if (result.type === 'refused') throw new ServiceError(grpc.status.FAILED_PRECONDITION, result.message);
    throw new ServiceError(grpc.status.INTERNAL, 'the command was not applied as a command');
  }

  async proposeSealed(payload: Buffer): Promise<BarrierResult<AppliedResult>> {
    const status = this.manager.raftStatus();
    if (status === null) throw new ServiceError(grpc.status.UNAVAILABLE, 'this manager is locked');
    if (status.role === 'leader') return this.manager.proposePayload(payload);
    const answer = await this.#forward(status.lead, { payload });
    return packr.unpack(answer) as BarrierResult<AppliedResult>;
  }

  async proposeConfChange(change: ConfChange): Promise<void> {
    const status = this.manager.raftStatus();
    if (status === null) throw new ServiceError(grpc.status.UNAVAILABLE, 'this manager is locked');
    if (status.role === 'leader') return this.manager.proposeConfChange(change);
    await this.#forward(status.lead, { confChange: packr.pack([change.type, change.nodeId]) });
  }

  /** Sends an operator's membership operation to the leader, which runs it. */
  async forwardMemberOp(leader: NodeId, op: MemberOp): Promise<MemberOpResult> {
    return decodeMemberOpResult(await this.#forward(leader, { memberOp: encodeMemberOp(op) }));
  }

  #forward(leader: NodeId, body: { payload?: Buffer; confChange?: Buffer; memberOp?: Buffer }): Promise<Buffer> {
    if (leader === 0) return Promise.reject(new ServiceError(grpc.status.UNAVAILABLE, 'no leader is known; retry once one is elected'));
    let client = this.#peerClients.get(leader);
    if (client === undefined) {
      const address = this.addressOf(leader);
      if (address === undefined) return Promise.reject(new ServiceError(grpc.status.UNAVAILABLE, `the leader ${leader} has no known address yet; retry`));
      const { Peer } = services();
      client = new Peer.Client(address, managerChannelCredentials(this.#tls, { clusterId: this.config.clusterId, nodeId: String(leader) }), MANAGER_CHANNEL_OPTIONS);
      this.#peerClients.set(leader, client);
    }
    return new Promise((resolve, reject) => {
      (client as unknown as { propose(request: object, options: grpc.CallOptions, cb: (error: grpc.ServiceError | null, response?: { result: Buffer }) => void): void }).propose(
        body,
        { deadline: Date.now() + (body.memberOp === undefined ? 10_000 : 3 * TRANSFER_WAIT_MS) },
        (error, response) => {
          if (error !== null) reject(new ServiceError(error.code === grpc.status.PERMISSION_DENIED ? grpc.status.INTERNAL : error.code, `forwarding to the leader ${leader}: ${error.details}`));
          else resolve(response!.result);
        },
      );
    });
  }

  async stop(): Promise<void> {
    if (this.#housekeeping !== null) clearInterval(this.#housekeeping);
    this.#metricsServer?.close();
    this.transport.close();
    this.trust.close();
    for (const client of this.#peerClients.values()) client.close();
    await this.#listener?.close();
    this.server.forceShutdown();
    this.anonymousAudit.flush();
    await this.audit.settled();
    await this.manager.stop();
  }
}



/** The first certificate of a PEM bundle. */
function firstPem(pem: string): string {
  const end = pem.indexOf('-----END CERTIFICATE-----');
  return end < 0 ? pem : `${pem.slice(0, end + '-----END CERTIFICATE-----'.length)}\n`;
}
