import * as grpc from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  JOIN_TOKEN_TTL_MS_DEFAULT,
  JOIN_TOKEN_TTL_MS_MAX,
  MANAGER_CERT_VALIDITY_DAYS,
  caDigest,
  createCa,
  formatJoinToken,
  identityOf,
  issueCertificate,
  newLeafKey,
  joinTokenHash,
  newJoinToken,
  parseJoinToken,
  selfSignedCertificate,
} from '../crypto/pki.ts';
import { DataDir } from '../manager/data-dir.ts';
import { Manager } from '../manager/manager.ts';
import { generateRecoveryKey } from '../crypto/recovery-key.ts';
import type { NodeId } from '../raft/types.ts';
import { services } from '../transport/proto.ts';
import { MANAGER_CHANNEL_OPTIONS, policyChannelCredentials } from '../transport/tls.ts';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import { decodeMembers } from './peer-trust.ts';
import { ServiceError } from './errors.ts';
import { managerCertificateHosts, normalizeExtraHosts } from './manager-hosts.ts';
import { CA_KEY_SECRET, TLS_KEY_SECRET, splitHostPort, writeNodeConfig } from './node-config.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { ADMIN_IDENTITY, LEADER_ADDRESS_METADATA } from './rpc.ts';

export interface InitOptions {
  readonly dataDir: string;
  readonly listen: string;
  readonly advertise?: string;
  /** Names for the manager's certificate besides the advertise host (`--san`): DNS names or IPs. */
  readonly extraHosts?: readonly string[];
  readonly keyFile?: string;
  readonly autolock?: boolean;
  /** Where the admin client identity goes (ca.crt, admin.crt, admin.key); default `<data dir>-admin`. */
  readonly adminDir?: string;
  /** Lifetime of manager certificates, renewed automatically when a third of it is left. */
  readonly managerCertValidityDays?: number;
  /** Also write the join token here (mode 0600), for managers started by a script to read. */
  readonly tokenFile?: string;
  /**
   * Also write a client identity for health checks here (ca.crt, health.crt, health.key): a
   * certificate of the cluster CA listed in no policy, so it can ask for health and nothing else.
   */
  readonly healthDir?: string;
  /** Write the recovery key here (mode 600) instead of returning it (containers: not in their logs). */
  readonly recoveryKeyFile?: string;
  /** With autolock: use this unlock key instead of making one (it is then not returned). */
  readonly unlockKey?: string;
  /** How long the first join token works (default JOIN_TOKEN_TTL_MS_DEFAULT). */
  readonly joinTokenTtlMs?: number;
}

/** The client identity `initCluster` writes to `healthDir`: it may call Health, nothing else. */
export const HEALTH_IDENTITY = 'health';

export interface InitOutcome {
  readonly clusterId: string;
  readonly joinToken: string;
  readonly unlockKey: string | null;
  /** Opens backups when every manager is lost; shown once (or written to recoveryKeyFile). */
  readonly recoveryKey: string | null;
  readonly adminDir: string;
  readonly keyFile: string | null;
}

/**
 * `coffer init`: a new cluster of one manager (node 1). Makes the cluster id, the CA, this
 * manager's certificate, the root key (wrapped by a new key file, or an unlock key with
 * autolock), the admin client identity and the first manager join token. The CA key and the TLS
 * key are kept sealed in the key store; only their certificates are plain files.
 */
export async function initCluster(options: InitOptions): Promise<InitOutcome> {
  const advertise = options.advertise ?? options.listen;
  splitHostPort(options.listen);
  splitHostPort(advertise);
  const extraHosts = normalizeExtraHosts(options.extraHosts ?? []);
  const clusterId = randomUUID();
  const now = Date.now();
  const ca = createCa(clusterId, now);
  const validityDays = options.managerCertValidityDays ?? MANAGER_CERT_VALIDITY_DAYS;
  const joinTokenTtlMs = options.joinTokenTtlMs ?? JOIN_TOKEN_TTL_MS_DEFAULT;
  if (!(joinTokenTtlMs > 0 && joinTokenTtlMs <= JOIN_TOKEN_TTL_MS_MAX))
    throw new TypeError('the join token lifetime must be positive and at most 365 days');
  if (!(validityDays > 0)) throw new TypeError('the certificate lifetime must be a positive number of days');
  const node = issueCertificate(ca, {
    id: '1',
    role: 'manager',
    clusterId,
    nowMs: now,
    hosts: managerCertificateHosts(advertise, extraHosts),
    validityDays,
  });
  const dir = new DataDir(options.dataDir);
  const keyFile = options.autolock === true ? null : (options.keyFile ?? dir.defaultKeyFile);
  const init = await Manager.init(options.dataDir, {
    clusterId,
    ...(keyFile === null
      ? { autolock: true, ...(options.unlockKey === undefined ? {} : { unlockKey: options.unlockKey }) }
      : { keyFile }),
    secrets: new Map([
      [TLS_KEY_SECRET, Buffer.from(node.keyPem)],
      [CA_KEY_SECRET, Buffer.from(ca.keyPem)],
    ]),
  });
  const token = newJoinToken(ca.certPem);
  const recovery = generateRecoveryKey();
  if (options.recoveryKeyFile !== undefined)
    await writeFileAtomic(options.recoveryKeyFile, `${recovery.recoveryKey}\n`, 0o600);
  const admin = issueCertificate(ca, { id: ADMIN_IDENTITY, role: 'client', clusterId, nowMs: now });
  const adminDir = options.adminDir ?? dir.defaultAdminDir;
  await writeIdentity(adminDir, ca.certPem, ADMIN_IDENTITY, admin);
  if (options.healthDir !== undefined) {
    await writeIdentity(
      options.healthDir,
      ca.certPem,
      HEALTH_IDENTITY,
      issueCertificate(ca, { id: HEALTH_IDENTITY, role: 'client', clusterId, nowMs: now }),
    );
  }
  if (options.tokenFile !== undefined) await writeFileAtomic(options.tokenFile, `${formatJoinToken(token)}\n`, 0o600);
  await dir.writeTlsFiles(ca.certPem, node.certPem);
  // node.json last: once it exists the directory is a manager's and everything init writes is there.
  await writeNodeConfig(options.dataDir, {
    format: 1,
    nodeId: 1,
    clusterId,
    listen: options.listen,
    advertise,
    extraHosts,
    bootstrap: true,
    initialJoinTokenHash: joinTokenHash(token.secret).toString('hex'),
    initialJoinTokenExpiresAtMs: now + joinTokenTtlMs,
    initialAdmin: { key: identityOf(admin.certPem).spki, serial: identityOf(admin.certPem).serial },
    initialRecoveryPublicKey: recovery.publicKey.toString('hex'),
    peers: [],
    managerCertValidityDays: validityDays,
  });
  return {
    clusterId,
    joinToken: formatJoinToken(token),
    unlockKey: options.unlockKey === undefined ? init.unlockKey : null,
    recoveryKey: options.recoveryKeyFile === undefined ? recovery.recoveryKey : null,
    adminDir,
    keyFile,
  };
}

async function writeIdentity(
  dir: string,
  caPem: string,
  name: string,
  identity: { certPem: string; keyPem: string },
): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(join(dir, 'ca.crt'), caPem);
  await writeFileAtomic(join(dir, `${name}.crt`), identity.certPem);
  await writeFileAtomic(join(dir, `${name}.key`), identity.keyPem, 0o600);
}

export interface JoinOptions {
  readonly dataDir: string;
  readonly listen: string;
  readonly advertise?: string;
  /**
   * Names to ask for in the manager's certificate besides the advertise host (`--san`); the
   * leader checks them again, and the manager keeps them at every renewal.
   */
  readonly extraHosts?: readonly string[];
  /** Any manager of the cluster (host:port); a follower sends the joiner on to the leader. */
  readonly join: string;
  readonly token: string;
  readonly keyFile?: string;
  readonly deadlineMs?: number;
  /**
   * Keep trying this long while the cluster refuses for a passing reason that left nothing
   * behind: no manager reachable yet, no leader yet, another membership change in flight. A
   * container started beside the cluster's first manager needs this: start order is no promise.
   */
  readonly retryMs?: number;
  /** Told of each refusal that will be retried. */
  readonly onRetry?: (error: Error) => void;
}

/** How long to wait between join attempts while the cluster is not ready for one. */
export const JOIN_RETRY_INTERVAL_MS = 1000;

/**
 * `coffer join`: checks the CA a manager presents against the token's digest before trusting
 * anything, proves the token over TLS, and stores what it receives: a certificate for a key
 * made here, the root key (wrapped by a new key file) and the CA key. The leader has added this
 * manager as a learner; it is promoted to voter once it has caught up.
 */
export async function joinCluster(options: JoinOptions): Promise<{ nodeId: NodeId; clusterId: string }> {
  const retryUntil = Date.now() + (options.retryMs ?? 0);
  for (;;) {
    try {
      return await joinOnce(options);
    } catch (error) {
      if (!isPassingRefusal(error) || Date.now() + JOIN_RETRY_INTERVAL_MS > retryUntil) throw error;
      options.onRetry?.(error);
      await new Promise((resolve) => setTimeout(resolve, JOIN_RETRY_INTERVAL_MS));
    }
  }
}

/**
 * A refusal after which a new attempt is safe: nothing reached the log for this joiner (the
 * manager was unreachable, locked or without a leader), or only its address did and the learner
 * was not added (another membership change was still being applied). Never a timeout: the join
 * may have gone through.
 */
function isPassingRefusal(error: unknown): error is ServiceError {
  if (!(error instanceof ServiceError)) return false;
  return (
    error.status === grpc.status.UNAVAILABLE ||
    (error.status === grpc.status.FAILED_PRECONDITION && /is not applied yet/.test(error.message))
  );
}

async function joinOnce(options: JoinOptions): Promise<{ nodeId: NodeId; clusterId: string }> {
  const token = parseJoinToken(options.token);
  const advertise = options.advertise ?? options.listen;
  splitHostPort(options.listen);
  splitHostPort(advertise);
  const extraHosts = normalizeExtraHosts(options.extraHosts ?? []);
  const deadline = Date.now() + (options.deadlineMs ?? 30_000);
  const caPem = await fetchCaCertificate(options.join, deadline);
  if (caDigest(caPem) !== token.caDigest) {
    throw new ServiceError(
      grpc.status.PERMISSION_DENIED,
      `the manager at ${options.join} presents a CA certificate that does not match the join token: refusing to trust it (a wrong address, or someone in the middle)`,
    );
  }
  const key = newLeafKey();
  // The leader checks that the address this manager advertises answers with this key.
  const proof = await serveKeyProof(options.listen, key);
  try {
    let address = options.join;
    for (let hop = 0; ; hop++) {
      try {
        const response = await callJoin(
          address,
          caPem,
          { tokenSecret: token.secret, address: advertise, publicKeyPem: key.publicPem, extraHosts },
          deadline,
        );
        const members = decodeMembers(response.members);
        const dir = new DataDir(options.dataDir);
        await Manager.init(options.dataDir, {
          clusterId: response.clusterId,
          keyFile: options.keyFile ?? dir.defaultKeyFile,
          rootKey: response.rootKey,
          rootGen: response.rootGeneration,
          secrets: new Map([[TLS_KEY_SECRET, Buffer.from(key.privatePem)]]),
        });
        response.rootKey.fill(0);
        await dir.writeTlsFiles(caPem, response.certificatePem);
        await writeNodeConfig(options.dataDir, {
          format: 1,
          nodeId: response.nodeId,
          clusterId: response.clusterId,
          listen: options.listen,
          advertise,
          extraHosts,
          bootstrap: false,
          initialJoinTokenHash: null,
          initialAdmin: null,
          peers: members.map(([id, memberAddress, keys]) => [id, memberAddress, keys]),
          managerCertValidityDays: response.managerCertValidityDays,
        });
        return { nodeId: response.nodeId, clusterId: response.clusterId };
      } catch (error) {
        const redirect = error instanceof JoinRedirect ? error.address : null;
        if (redirect === null || hop >= 3) throw error;
        address = redirect;
      }
    }
  } finally {
    await new Promise((resolve) => proof.close(resolve));
  }
}

/**
 * While it joins, a manager answers TLS at its listen address with a self-signed certificate for
 * its new key, and nothing else: the leader dials the advertised address and checks the key.
 */
async function serveKeyProof(listen: string, key: { privatePem: string; publicPem: string }): Promise<TlsServer> {
  const { host, port } = splitHostPort(listen);
  const server = createTlsServer({ key: key.privatePem, cert: selfSignedCertificate(key, Date.now()) }, (socket) =>
    socket.end(),
  );
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        new ServiceError(
          grpc.status.FAILED_PRECONDITION,
          `cannot listen on ${listen} while joining (${error.code ?? error.message}): is another process using it?`,
        ),
      ),
    );
    server.listen(port, host, () => resolve());
  });
  return server;
}

class JoinRedirect extends Error {
  constructor(readonly address: string) {
    super(`redirected to ${address}`);
  }
}

/** Reads the CA certificate without trusting the server yet (it is checked against the token next). */
function fetchCaCertificate(address: string, deadline: number): Promise<string> {
  const { Join } = services();
  const client = new Join.Client(
    address,
    policyChannelCredentials(
      { caPem: null, certPem: null, keyPem: null },
      { rejectUnauthorized: false, checkServerIdentity: () => undefined },
    ),
    MANAGER_CHANNEL_OPTIONS,
  );
  return new Promise((resolve, reject) => {
    (
      client as unknown as {
        getCaCertificate(
          r: object,
          o: grpc.CallOptions,
          cb: (e: grpc.ServiceError | null, r?: { pem: string }) => void,
        ): void;
      }
    ).getCaCertificate({}, { deadline }, (error, response) => {
      client.close();
      if (error !== null) reject(new ServiceError(error.code, `cannot reach ${address} to join: ${error.details}`));
      else resolve(response!.pem);
    });
  });
}

interface JoinResponse {
  nodeId: number;
  clusterId: string;
  certificatePem: string;
  rootKey: Buffer;
  rootGeneration: number;
  members: Buffer;
  managerCertValidityDays: number;
}

/** The join call, on a channel that trusts only the pinned CA and a manager certificate of it. */
function callJoin(address: string, caPem: string, request: object, deadline: number): Promise<JoinResponse> {
  const { Join } = services();
  // The cluster id is not known yet: any manager certificate the pinned CA signed will do.
  const credentials = policyChannelCredentials(
    { caPem, certPem: null, keyPem: null },
    {
      checkServerIdentity: (_host, cert) => {
        try {
          return identityOf(cert.raw).role === 'manager'
            ? undefined
            : new Error('the server is not a manager of this cluster');
        } catch (error) {
          return error as Error;
        }
      },
    },
  );
  const client = new Join.Client(address, credentials, MANAGER_CHANNEL_OPTIONS);
  return new Promise((resolve, reject) => {
    (
      client as unknown as {
        joinCluster(r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: JoinResponse) => void): void;
      }
    ).joinCluster(request, { deadline }, (error, response) => {
      client.close();
      if (error === null) return resolve(response!);
      const redirect = error.metadata?.get(LEADER_ADDRESS_METADATA)[0];
      if (error.code === grpc.status.FAILED_PRECONDITION && typeof redirect === 'string')
        return reject(new JoinRedirect(redirect));
      reject(new ServiceError(error.code, `joining through ${address}: ${error.details}`));
    });
  });
}
