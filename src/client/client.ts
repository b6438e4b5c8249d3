import * as grpc from '@grpc/grpc-js';
import { identityOf, type Identity } from '../crypto/pki.ts';
import { errorDetailsOf, type ErrorDetails, type ErrorMetadata } from '../transport/error-details.ts';
import { services } from '../transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, managerChannelCredentials } from '../transport/tls.ts';

export interface ClientOptions {
  /** Managers to talk to (host:port); the client fails over between them. */
  readonly addresses: readonly string[];
  readonly caPem: string;
  readonly certPem: string;
  readonly keyPem: string;
  /** Per call (default 10 s). */
  readonly deadlineMs?: number;
}

/** How long a client trusts the member list it learned before asking again. */
export const MEMBERS_REFRESH_MS = 60_000;
/** The longest a backup stream may take (a million secrets are most of a gigabyte). */
export const BACKUP_DEADLINE_MS = 60 * 60 * 1000;

type ServiceName =
  | 'Secrets'
  | 'Policies'
  | 'Identities'
  | 'Audit'
  | 'Cluster'
  | 'Keys'
  | 'Backup'
  | 'Auth'
  | 'Database'
  | 'Leases';

/**
 * The reasons a manager refuses a request with before it is ever proposed (docs/errors.md): a
 * write refused with one of them may go to another manager without the risk of a double write.
 */
const REFUSED_BEFORE_PROPOSING: ReadonlySet<string> = new Set([
  'NO_LEADER',
  'LEADER_ADDRESS_UNKNOWN',
  'MANAGER_LOCKED',
  'MANAGER_REMOVED',
]);

/** Errors after which a call may be sent to another manager without risking a double write. */
export function safeToRetry(error: grpc.ServiceError, idempotent: boolean): boolean {
  if (error.code !== grpc.status.UNAVAILABLE && error.code !== grpc.status.DEADLINE_EXCEEDED) return false;
  if (idempotent) return true;
  // A write is retried only when it certainly never reached a leader: by the manager's reason,
  // or by the message where there is none (no manager reached, or one older than reasons) or the
  // reason does not tell (the audit log refuses with one reason before a request runs and after).
  if (REFUSED_BEFORE_PROPOSING.has(errorDetailsOf(error.metadata)?.reason ?? '')) return true;
  return /No connection established|no leader is known|is locked|refused until it can/.test(error.details);
}

/** Whether a failed call reached no manager (a connection failure), rather than being a manager's answer. */
function reachedNoManager(error: grpc.ServiceError): boolean {
  return (
    error.code === grpc.status.UNAVAILABLE &&
    /No connection established|ECONNREFUSED|ECONNRESET|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|Failed to connect/.test(
      error.details,
    )
  );
}

/**
 * The error to report after trying managers in turn: a manager's own answer (say "no leader is
 * known" from the one manager still up) says more than the connection refused by the next one
 * tried, which is only the last; with no answer at all, every manager tried is named.
 */
export function failoverError(tried: ReadonlyArray<{ address: string; error: grpc.ServiceError }>): ClientError {
  const answered = tried.find((t) => !reachedNoManager(t.error));
  const unreached = tried.filter((t) => reachedNoManager(t.error));
  if (answered !== undefined) {
    const others =
      unreached.length === 0
        ? ''
        : ` (${unreached.length === 1 ? 'another manager' : `${unreached.length} other managers`} could not be reached: ${unreached.map((t) => t.address).join(', ')})`;
    return new ClientError(
      answered.error.code,
      `${answered.error.details || answered.error.message}${others}`,
      errorDetailsOf(answered.error.metadata),
    );
  }
  const last = tried[tried.length - 1]!.error;
  if (tried.length === 1) return ClientError.from(last);
  return new ClientError(
    last.code,
    `no manager could be reached (${tried.map((t) => t.address).join(', ')}): ${last.details || last.message}`,
    errorDetailsOf(last.metadata),
  );
}

/**
 * A failed call: its gRPC status, the manager's message (for people), and the manager's stable
 * `reason` with its `metadata` (for programs: branch on these, never on the message). The reason
 * list is docs/errors.md; `reason` is '' when no manager answered (a connection failure) or the
 * one that did sent none (a manager older than reasons).
 */
export class ClientError extends Error {
  override name = 'ClientError';
  readonly code: grpc.status;
  readonly reason: string;
  readonly metadata: ErrorMetadata;
  constructor(code: grpc.status, message: string, details: ErrorDetails | null = null) {
    super(message);
    this.code = code;
    this.reason = details?.reason ?? '';
    this.metadata = details?.metadata ?? {};
  }

  /** A manager's answer (or a connection failure), with the details its trailers carry. */
  static from(error: grpc.ServiceError): ClientError {
    return new ClientError(error.code, error.details || error.message, errorDetailsOf(error.metadata));
  }
}

/**
 * A typed client for a Coffer cluster over mutual TLS: it tries the managers in turn, sets a
 * deadline on every call, and retries on another manager only where that is safe (reads always;
 * writes only when they cannot have been applied).
 */
export class CofferClient {
  readonly #options: ClientOptions;
  readonly #credentials: grpc.ChannelCredentials;
  readonly #clients = new Map<string, grpc.Client>();
  /** The manager that answered last: tried first next time. */
  #preferred = 0;
  /** The members and removed managers, as a linearizable read told (null: not asked yet, or it failed). */
  #members: {
    readonly keys: ReadonlyMap<string, readonly string[]>;
    readonly removed: ReadonlySet<string>;
    readonly atMs: number;
  } | null = null;
  #membersAsked: Promise<void> | null = null;

  constructor(options: ClientOptions) {
    if (options.addresses.length === 0)
      throw new TypeError('at least one manager address is needed (COFFER_ADDR or --addr)');
    this.#options = options;
    const clusterId = identityOf(options.certPem).clusterId;
    this.#credentials = managerChannelCredentials(
      { caPem: options.caPem, certPem: options.certPem, keyPem: options.keyPem },
      { clusterId, check: (identity) => this.#checkManager(identity) },
    );
  }

  /**
   * A manager's certificate passes the CA and cluster checks; this refuses one the cluster removed
   * (its certificate stays valid until it expires) or one whose key is not the member's.
   */
  #checkManager(identity: Identity): string | null {
    const members = this.#members;
    if (members === null) return null;
    if (members.removed.has(identity.id)) return `manager ${identity.id} was removed from the cluster: refusing it`;
    const keys = members.keys.get(identity.id);
    if (keys !== undefined && keys.length > 0 && !keys.includes(identity.spki))
      return `manager ${identity.id}'s certificate holds a key the cluster does not know for it`;
    return null;
  }

  /**
   * Learns the members (Cluster.Members, a linearizable read, which a removed manager cannot make)
   * before the first call and every MEMBERS_REFRESH_MS. A failure leaves the CA checks alone in force.
   */
  async #knowMembers(): Promise<void> {
    if (this.#members !== null && Date.now() - this.#members.atMs < MEMBERS_REFRESH_MS) return;
    this.#membersAsked ??= this.#askMembers().finally(() => (this.#membersAsked = null));
    await this.#membersAsked;
  }

  async #askMembers(): Promise<void> {
    const addresses = this.#options.addresses;
    for (let attempt = 0; attempt < addresses.length; attempt++) {
      const at = (this.#preferred + attempt) % addresses.length;
      try {
        const reply = await this.#once<{ members: Array<{ nodeId: number; keys: string[] }>; removed: number[] }>(
          addresses[at]!,
          'Cluster',
          'members',
          {},
        );
        const before = this.#members;
        this.#members = {
          keys: new Map(reply.members.map((m) => [String(m.nodeId), m.keys])),
          removed: new Set(reply.removed.map(String)),
          atMs: Date.now(),
        };
        // Channels already open were checked against no list or an older one: they connect again.
        if (before === null || [...this.#members.removed].some((id) => !before.removed.has(id))) this.close();
        return;
      } catch {
        // Another manager may answer; with none, the next call tries again.
      }
    }
  }

  async call<Response>(service: ServiceName, method: string, request: object, idempotent: boolean): Promise<Response> {
    // A certificate that ended is refused by every manager's TLS with a bare UNAUTHENTICATED: say why here.
    const notAfterMs = identityOf(this.#options.certPem).notAfterMs;
    if (notAfterMs <= Date.now()) {
      const name = identityOf(this.#options.certPem).id;
      throw new ClientError(
        grpc.status.UNAUTHENTICATED,
        `the certificate of identity "${name}" ended at ${new Date(notAfterMs).toISOString()}: ${name.includes(':') ? 'log in again (coffer login)' : 'have it issued again (coffer identity issue --reissue)'}`,
        { reason: 'CERTIFICATE_EXPIRED', metadata: { notAfterMs: String(notAfterMs) } },
      );
    }
    await this.#knowMembers();
    const addresses = this.#options.addresses;
    const tried: Array<{ address: string; error: grpc.ServiceError }> = [];
    for (let attempt = 0; attempt < addresses.length; attempt++) {
      const at = (this.#preferred + attempt) % addresses.length;
      try {
        const response = await this.#once<Response>(addresses[at]!, service, method, request);
        this.#preferred = at;
        return response;
      } catch (error) {
        const failed = error as grpc.ServiceError;
        tried.push({ address: addresses[at]!, error: failed });
        // Not retried elsewhere: this answer is the outcome, whatever came before it.
        if (!safeToRetry(failed, idempotent)) {
          // A manager that let the deadline pass (paused, cut off, overloaded) or dropped the call
          // is not asked first next time: with it still preferred, every later call would wait
          // out its deadline there too, while the others serve.
          if (failed.code === grpc.status.DEADLINE_EXCEEDED || failed.code === grpc.status.UNAVAILABLE)
            this.#preferred = (at + 1) % addresses.length;
          throw ClientError.from(failed);
        }
      }
    }
    throw failoverError(tried);
  }

  #stub(address: string, service: ServiceName): grpc.Client {
    const key = `${address}/${service}`;
    let client = this.#clients.get(key);
    if (client === undefined) {
      client = new (services()[service].Client)(address, this.#credentials, MANAGER_CHANNEL_OPTIONS);
      this.#clients.set(key, client);
    }
    return client;
  }

  #once<Response>(address: string, service: ServiceName, method: string, request: object): Promise<Response> {
    const client = this.#stub(address, service);
    const stub = client as unknown as Record<
      string,
      (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: Response) => void) => void
    >;
    return new Promise((resolve, reject) => {
      stub[method]!.call(
        client,
        request,
        { deadline: Date.now() + (this.#options.deadlineMs ?? 10_000) },
        (error, response) => (error === null ? resolve(response!) : reject(error)),
      );
    });
  }

  // ---- secrets --------------------------------------------------------------------------------

  put(
    name: string,
    value: Uint8Array,
    options: { cas?: number; ttlSeconds?: number; versionsKept?: number } = {},
  ): Promise<{ version: number }> {
    return this.call(
      'Secrets',
      'put',
      {
        name,
        // A Buffer is sent as it is, not copied: the caller can then wipe the only copy it made.
        value: Buffer.isBuffer(value) ? value : Buffer.from(value),
        ...(options.cas === undefined ? {} : { cas: { version: options.cas } }),
        ttlSeconds: options.ttlSeconds ?? 0,
        versionsKept: options.versionsKept ?? 0,
      },
      false,
    );
  }

  /**
   * Many puts as one write, all or none (Secrets.PutBatch): at most PUT_BATCH_ITEMS_MAX items and
   * PUT_BATCH_BYTES_MAX bytes of names and values. Answers the version each item made, in order;
   * a refusal names the item (metadata `item`, from 1) and none of the batch is applied.
   */
  putBatch(
    items: ReadonlyArray<{
      name: string;
      value: Uint8Array;
      cas?: number;
      ttlSeconds?: number;
      versionsKept?: number;
    }>,
  ): Promise<{ versions: number[] }> {
    return this.call(
      'Secrets',
      'putBatch',
      {
        items: items.map((item) => ({
          name: item.name,
          // Buffers are sent as they are, not copied: the caller can then wipe the only copies it made.
          value: Buffer.isBuffer(item.value) ? item.value : Buffer.from(item.value),
          ...(item.cas === undefined ? {} : { cas: { version: item.cas } }),
          ttlSeconds: item.ttlSeconds ?? 0,
          versionsKept: item.versionsKept ?? 0,
        })),
      },
      false,
    );
  }

  get(
    name: string,
    options: { version?: number; label?: string; stale?: boolean } = {},
  ): Promise<{ value: Buffer; version: number; appliedIndex: number }> {
    return this.call(
      'Secrets',
      'get',
      { name, version: options.version ?? 0, label: options.label ?? '', stale: options.stale ?? false },
      true,
    );
  }

  list(
    prefix = '',
    options: { pageSize?: number; pageToken?: string; includeDeleted?: boolean; stale?: boolean } = {},
  ): Promise<{ secrets: SecretMetadataReply[]; nextPageToken: string }> {
    return this.call(
      'Secrets',
      'list',
      {
        prefix,
        pageSize: options.pageSize ?? 0,
        pageToken: options.pageToken ?? '',
        includeDeleted: options.includeDeleted ?? false,
        stale: options.stale ?? false,
      },
      true,
    );
  }

  versions(name: string): Promise<{
    secret: SecretMetadataReply;
    versions: Array<{
      version: number;
      createdAtMs: number;
      expireAtMs: number;
      destroyed: boolean;
      expired: boolean;
      labels: string[];
    }>;
  }> {
    return this.call('Secrets', 'versions', { name }, true);
  }

  delete(name: string): Promise<{ version: number }> {
    return this.call('Secrets', 'delete', { name }, false);
  }

  undelete(name: string): Promise<{ version: number }> {
    return this.call('Secrets', 'undelete', { name }, false);
  }

  destroy(name: string, versions: number[]): Promise<{ version: number }> {
    return this.call('Secrets', 'destroy', { name, versions }, false);
  }

  generate(
    name: string,
    options: { length: number; charset?: string; cas?: number; ttlSeconds?: number },
  ): Promise<{ version: number }> {
    return this.call(
      'Secrets',
      'generate',
      {
        name,
        length: options.length,
        charset: options.charset ?? '',
        ...(options.cas === undefined ? {} : { cas: { version: options.cas } }),
        ttlSeconds: options.ttlSeconds ?? 0,
      },
      false,
    );
  }

  label(name: string, label: string, version: number): Promise<{ version: number }> {
    return this.call('Secrets', 'label', { name, label, version }, false);
  }

  unlabel(name: string, label: string): Promise<{ version: number }> {
    return this.call('Secrets', 'unlabel', { name, label }, false);
  }

  // ---- policies, identities, audit, cluster ---------------------------------------------------

  putPolicy(name: string, rules: Array<{ path: string; capabilities: string[]; deny?: boolean }>): Promise<object> {
    return this.call('Policies', 'put', { name, rules: rules.map((r) => ({ ...r, deny: r.deny ?? false })) }, true);
  }

  getPolicy(
    name: string,
  ): Promise<{ name: string; rules: Array<{ path: string; capabilities: string[]; deny: boolean }> }> {
    return this.call('Policies', 'get', { name }, true);
  }

  listPolicies(): Promise<{
    policies: Array<{ name: string; rules: Array<{ path: string; capabilities: string[]; deny: boolean }> }>;
  }> {
    return this.call('Policies', 'list', {}, true);
  }

  removePolicy(name: string): Promise<object> {
    return this.call('Policies', 'remove', { name }, false);
  }

  /** `reissue`: the identity exists; replace its policies and add this key. */
  issueIdentity(
    name: string,
    policies: string[],
    publicKeyPem: string,
    validityDays = 0,
    options: { reissue?: boolean } = {},
  ): Promise<{ certificatePem: string; caCertificatePem: string; serial: string; notAfterMs: number }> {
    return this.call(
      'Identities',
      'issue',
      { name, policies, publicKeyPem, validityDays, reissue: options.reissue ?? false },
      false,
    );
  }

  /** A new certificate for this client's own identity, for a key made by the caller (after a CA rotation, or to change keys). */
  renewIdentity(
    publicKeyPem: string,
    validityDays = 0,
  ): Promise<{ certificatePem: string; caCertificatePem: string; serial: string; notAfterMs: number }> {
    return this.call('Identities', 'renew', { publicKeyPem, validityDays }, false);
  }

  revokeIdentity(name: string): Promise<object> {
    return this.call('Identities', 'revoke', { name }, true);
  }

  /** A revoked login identity is forgotten, so its subject may log in again. */
  forgetIdentity(name: string): Promise<object> {
    return this.call('Identities', 'forget', { name }, true);
  }

  // ---- logins: methods and roles -------------------------------------------------------------

  configureAuthMethod(config: AuthMethodSettings): Promise<AuthMethodSettings> {
    return this.call('Auth', 'configureMethod', config, true);
  }

  getAuthMethod(method: string): Promise<AuthMethodSettings> {
    return this.call('Auth', 'getMethod', { method }, true);
  }

  removeAuthMethod(method: string): Promise<object> {
    return this.call('Auth', 'removeMethod', { method }, true);
  }

  putAuthRole(role: AuthRoleSettings): Promise<AuthRoleSettings> {
    return this.call('Auth', 'putRole', role, true);
  }

  getAuthRole(name: string): Promise<AuthRoleSettings> {
    return this.call('Auth', 'getRole', { name }, true);
  }

  listAuthRoles(): Promise<{ roles: AuthRoleSettings[] }> {
    return this.call('Auth', 'listRoles', {}, true);
  }

  removeAuthRole(name: string): Promise<object> {
    return this.call('Auth', 'removeRole', { name }, true);
  }

  // ---- dynamic database credentials ---------------------------------------------------------

  /** The admin connection string is checked by the cluster before it is stored, and never shown again. */
  configureDatabase(name: string, url: string): Promise<{ name: string; urlRedacted: string }> {
    return this.call('Database', 'configure', { name, url }, true);
  }

  removeDatabase(name: string): Promise<object> {
    return this.call('Database', 'remove', { name }, true);
  }

  putDatabaseRole(role: DatabaseRoleSettings): Promise<DatabaseRoleSettings> {
    return this.call('Database', 'putRole', role, true);
  }

  removeDatabaseRole(db: string, role: string): Promise<object> {
    return this.call('Database', 'removeRole', { db, role }, true);
  }

  /** A new database user under a lease: the password is in this answer only. */
  getCredentials(
    db: string,
    role: string,
    ttlSeconds = 0,
  ): Promise<{ username: string; password: string; leaseId: string; ttlSeconds: number; expiresAtMs: number }> {
    return this.call('Database', 'getCredentials', { db, role, ttlSeconds }, false);
  }

  /** An existing user whose password the cluster rotates; the answer comes after its first rotation. */
  putStaticRole(role: StaticRoleSettings): Promise<StaticRoleReply> {
    return this.call('Database', 'putStaticRole', role, true);
  }

  getStaticRole(db: string, role: string): Promise<StaticRoleReply> {
    return this.call('Database', 'getStaticRole', { db, role }, true);
  }

  removeStaticRole(db: string, role: string): Promise<object> {
    return this.call('Database', 'removeStaticRole', { db, role }, true);
  }

  /** Rotates a static role's password now; `rotated` is false if it was not done within the wait. */
  rotateStaticRole(db: string, role: string): Promise<StaticRoleReply> {
    return this.call('Database', 'rotateStaticRole', { db, role }, true);
  }

  renewLease(leaseId: string, incrementSeconds = 0): Promise<LeaseReply> {
    return this.call('Leases', 'renew', { leaseId, incrementSeconds }, false);
  }

  /** Revokes one lease (`{ leaseId }`) or every lease under a prefix (`{ prefix }`). */
  revokeLeases(target: { leaseId: string } | { prefix: string }): Promise<{ leaseIds: string[]; revoked: boolean }> {
    return this.call('Leases', 'revoke', target, true);
  }

  listLeases(prefix = ''): Promise<{ leases: LeaseReply[] }> {
    return this.call('Leases', 'list', { prefix }, true);
  }

  /** A TOTP secret for a login identity: shown this once. */
  enrollTotp(identity: string): Promise<{ identity: string; secret: string; otpauthUri: string }> {
    return this.call('Auth', 'enrollTotp', { identity }, false);
  }

  removeTotp(identity: string): Promise<object> {
    return this.call('Auth', 'removeTotp', { identity }, true);
  }

  listIdentities(): Promise<{
    identities: Array<{
      name: string;
      policies: string[];
      certificates: number;
      revoked: boolean;
      createdAtMs: number;
    }>;
  }> {
    return this.call('Identities', 'list', {}, true);
  }

  auditTail(count: number): Promise<{ records: Array<Record<string, unknown>> }> {
    return this.call('Audit', 'tail', { count }, true);
  }

  /** Checks the manager's audit chain, against the anchor the cluster replicated for it (reported back). */
  auditVerify(): Promise<{
    ok: boolean;
    records: number;
    firstBrokenLine: number;
    problem: string;
    anchorSeq: number;
    anchorHash: string;
  }> {
    return this.call('Audit', 'verify', {}, true);
  }

  /** This manager's view of the cluster; `withStateDigest` also hashes the whole state (costly). */
  clusterStatus(options: { withStateDigest?: boolean } = {}): Promise<Record<string, unknown>> {
    return this.call('Cluster', 'status', { withStateDigest: options.withStateDigest ?? false }, true);
  }

  /** Hands leadership to a voter (0: the most caught-up one); resolves with the new leader. */
  transferLeader(nodeId = 0): Promise<{ leaderId: number }> {
    return this.call('Cluster', 'transferLeader', { nodeId }, true);
  }

  promote(nodeId: number, options: { force?: boolean } = {}): Promise<{ voters: number[]; learners: number[] }> {
    return this.call('Cluster', 'promote', { nodeId, force: options.force ?? false }, false);
  }

  demote(nodeId: number, options: { force?: boolean } = {}): Promise<{ voters: number[]; learners: number[] }> {
    return this.call('Cluster', 'demote', { nodeId, force: options.force ?? false }, false);
  }

  removeMember(nodeId: number, options: { force?: boolean } = {}): Promise<{ voters: number[]; learners: number[] }> {
    return this.call('Cluster', 'removeMember', { nodeId, force: options.force ?? false }, false);
  }

  /** A new join token: it works for `ttlSeconds` (0: 24 hours) and `uses` joins (0: any number). */
  rotateJoinToken(
    options: { ttlSeconds?: number; uses?: number } = {},
  ): Promise<{ token: string; expiresAtMs: number }> {
    return this.call(
      'Cluster',
      'rotateJoinToken',
      { ttlSeconds: options.ttlSeconds ?? 0, uses: options.uses ?? 0 },
      false,
    );
  }

  /** A new cluster CA, cross-signed by the active one; answers with every CA now trusted. */
  rotateCa(): Promise<{ generation: number; caCertificatesPem: string }> {
    return this.call('Cluster', 'rotateCa', {}, false);
  }

  /** Stops trusting the CA a rotation replaced (`force`: even if identities have no newer certificate). */
  retireCa(options: { force?: boolean } = {}): Promise<{ retiredGeneration: number; identitiesCutOff: string[] }> {
    return this.call('Cluster', 'retireCa', { force: options.force ?? false }, false);
  }

  /** The members and the keys their certificates hold, and the managers removed for good. */
  members(): Promise<{ members: Array<{ nodeId: number; address: string; keys: string[] }>; removed: number[] }> {
    return this.call('Cluster', 'members', {}, true);
  }

  // ---- keys -----------------------------------------------------------------------------------

  /** A keyring operation: rotate, rewrap, rotateRoot (no argument) or destroy (a term). */
  keyOp(
    op: 'rotate' | 'rewrap' | 'rotateRoot' | 'destroy' | 'autolockOff',
    term = 0,
  ): Promise<{ detail: string; activeTerm: number }> {
    return this.call('Keys', op, op === 'destroy' ? { term } : {}, false);
  }

  /** `unlockKey` becomes every manager's unlock key (autolock on). Keep it before calling. */
  rotateUnlock(unlockKey: string): Promise<{ detail: string }> {
    return this.call('Keys', 'rotateUnlock', { unlockKey }, false);
  }

  /**
   * The data key's scheduled rotation: every `periodMs` (1 hour to 365 days) the leader rotates
   * the data key and rewraps; null turns it off. Answers with the schedule as applied and when
   * the next rotation is due (0s when off).
   */
  keySchedule(periodMs: number | null): Promise<{ periodMs: number; nextRotationAtMs: number }> {
    return this.call('Keys', 'schedule', periodMs === null ? { off: true } : { periodMs }, true);
  }

  /** Backups made from now on open with the recovery key of this X25519 public key. */
  rotateRecovery(publicKey: Buffer): Promise<object> {
    return this.call('Keys', 'rotateRecovery', { publicKey }, false);
  }

  /** A consistent, encrypted backup of the whole cluster, as one buffer; `onProgress` hears each chunk. */
  /**
   * A backup, its bytes handed to `write` in order as they arrive (nothing is kept here: a backup
   * of a large state is never held whole). `total` is 0 while the size is not known.
   */
  saveBackup(
    write: (data: Buffer) => void,
    onProgress?: (received: number, total: number) => void,
  ): Promise<{ bytes: number; index: number }> {
    type Chunk = { data: Buffer; totalBytes: number; index: number };
    let bytes = 0;
    let index = 0;
    return this.stream<Chunk, { bytes: number; index: number }>(
      'Backup',
      'save',
      {},
      () => ({ bytes, index }),
      (chunk) => {
        write(chunk.data);
        bytes += chunk.data.byteLength;
        index = chunk.index;
        onProgress?.(bytes, chunk.totalBytes);
      },
      // A backup of a million secrets is most of a gigabyte: the stream may take minutes.
      { keep: false, deadlineMs: BACKUP_DEADLINE_MS },
    );
  }

  /** A server-streaming call on the managers in turn (only before any message arrived may it move on). */
  async stream<Message extends { data: Buffer }, Result>(
    service: ServiceName,
    method: string,
    request: object,
    collect: (messages: Message[]) => Result,
    onMessage?: (message: Message, receivedBytes: number) => void,
    options: { readonly keep?: boolean; readonly deadlineMs?: number } = {},
  ): Promise<Result> {
    // keep false: messages go to onMessage only (collect is handed none). deadlineMs: for the
    // whole stream (default the client's, at least a minute).
    const keep = options.keep !== false;
    await this.#knowMembers();
    const addresses = this.#options.addresses;
    const tried: Array<{ address: string; error: grpc.ServiceError }> = [];
    for (let attempt = 0; attempt < addresses.length; attempt++) {
      const at = (this.#preferred + attempt) % addresses.length;
      const messages: Message[] = [];
      let received = 0;
      try {
        await new Promise<void>((resolve, reject) => {
          const stub = this.#stub(addresses[at]!, service) as unknown as Record<
            string,
            (r: object, o: grpc.CallOptions) => grpc.ClientReadableStream<Message>
          >;
          const call = stub[method]!.call(this.#stub(addresses[at]!, service), request, {
            deadline: Date.now() + (options.deadlineMs ?? Math.max(60_000, this.#options.deadlineMs ?? 10_000)),
          });
          let failed = false;
          call.on('data', (message: Message) => {
            if (failed) return;
            try {
              onMessage?.(message, received);
            } catch (error) {
              // The caller could not take it (a backup's disk full): end the call, not the process.
              failed = true;
              call.cancel();
              reject(error);
              return;
            }
            received += message.data.byteLength;
            if (keep) messages.push(message);
          });
          call.on('error', reject);
          call.on('end', resolve);
        });
        this.#preferred = at;
        return collect(messages);
      } catch (error) {
        if (!(error instanceof Error && 'code' in error && typeof error.code === 'number')) throw error;
        const failed = error as grpc.ServiceError;
        tried.push({ address: addresses[at]!, error: failed });
        if (messages.length > 0 || received > 0 || !safeToRetry(failed, true)) throw ClientError.from(failed);
      }
    }
    throw failoverError(tried);
  }

  keyStatus(): Promise<{
    hasRecoveryKey: boolean;
    activeTerm: number;
    activeCreatedAtMs: number;
    terms: number[];
    destroyedTerms: number[];
    rootGeneration: number;
    unlockGeneration: number;
    protection: string;
    lastRewrapIndex: number;
    lastRewrapTerm: number;
    recordsByTerm: Array<{ term: number; records: number }>;
    /** The data key's rotation schedule, 0 when there is none (coffer key schedule). */
    schedulePeriodMs: number;
    /** When the next scheduled rotation is due, 0 without a schedule. */
    nextRotationAtMs: number;
  }> {
    return this.call('Keys', 'status', {}, true);
  }

  close(): void {
    for (const client of this.#clients.values()) client.close();
    this.#clients.clear();
  }
}

export interface SecretMetadataReply {
  name: string;
  currentVersion: number;
  versionsKept: number;
  deleted: boolean;
  createdAtMs: number;
  updatedAtMs: number;
  labels: Array<{ label: string; version: number }>;
}

/** A login method's settings, as Auth.ConfigureMethod takes them (fields of the other methods left out). */
export interface AuthMethodSettings {
  readonly method: 'jwt' | 'oidc' | 'ldap';
  readonly discoveryUrl?: string;
  readonly discoveryCaPem?: string;
  readonly staticJwks?: string;
  readonly boundIssuer?: string;
  readonly algorithms?: readonly string[];
  readonly clientId?: string;
  readonly url?: string;
  readonly startTls?: boolean;
  readonly caPem?: string;
  readonly userDnTemplate?: string;
  readonly groupBaseDn?: string;
  readonly groupFilter?: string;
  readonly groupNameAttribute?: string;
}

/** A login role, as Auth.PutRole takes it (empty and zero fields take their defaults). */
export interface AuthRoleSettings {
  readonly name: string;
  readonly method: 'jwt' | 'oidc' | 'ldap';
  readonly boundAudiences?: readonly string[];
  readonly boundSubject?: string;
  readonly boundClaims?: ReadonlyArray<{ claim: string; values: readonly string[] }>;
  readonly userClaim?: string;
  readonly groupsClaim?: string;
  readonly policies?: readonly string[];
  readonly groupPolicies?: ReadonlyArray<{ group: string; policies: readonly string[] }>;
  readonly ttlSeconds?: number;
  readonly maxTtlSeconds?: number;
  readonly totpRequired?: boolean;
}

/** A database role, as Database.PutRole takes it. */
export interface DatabaseRoleSettings {
  readonly db: string;
  readonly role: string;
  readonly creationSql: string;
  readonly revocationSql?: string;
  readonly renewSql?: string;
  readonly defaultTtlSeconds?: number;
  readonly maxTtlSeconds?: number;
}

export interface StaticRoleSettings {
  readonly db: string;
  readonly role: string;
  readonly username: string;
  readonly rotationSql?: string;
  readonly rotationPeriodSeconds: number;
}

export interface StaticRoleReply extends Required<StaticRoleSettings> {
  readonly lastRotatedAtMs: number;
  readonly nextRotationAtMs: number;
  readonly rotationInProgress: boolean;
  readonly rotated: boolean;
}

export interface LeaseReply {
  readonly leaseId: string;
  readonly db: string;
  readonly role: string;
  readonly username: string;
  readonly owner: string;
  readonly issuedAtMs: number;
  readonly expiresAtMs: number;
  readonly maxExpiresAtMs: number;
  readonly state: string;
}
