import { existsSync } from 'node:fs';
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { NodeId } from '../raft/types.ts';

/** A manager's own settings, in `<data dir>/node.json` (nothing secret). */
export interface NodeConfig {
  readonly format: 1;
  readonly nodeId: NodeId;
  readonly clusterId: string;
  /** Where the gRPC server binds (host:port). */
  readonly listen: string;
  /** Where other managers dial it (host:port); the listen address unless set. */
  readonly advertise: string;
  /** The cluster's first manager: bootstraps a one-voter cluster on its first start. */
  readonly bootstrap: boolean;
  /** The join token made at init (its hash), installed by the first leader. */
  readonly initialJoinTokenHash: string | null;
  /** When that token stops working (null: made before tokens expired). */
  readonly initialJoinTokenExpiresAtMs?: number | null;
  /** The admin identity's certificate made at init (its public key's SPKI digest and serial), registered by the first leader. */
  readonly initialAdmin: { readonly key: string; readonly serial: string } | null;
  /** The recovery key made at init (its public half, hex), installed by the first leader. */
  readonly initialRecoveryPublicKey?: string | null;
  /** Members of the cluster a backup came from (or a forced new cluster left), marked removed by the first leader. */
  readonly retiredMembers?: readonly NodeId[];
  /**
   * Members known when this manager joined, until it has the replicated list: [id, address] and,
   * from joins since members are bound to keys, the keys their certificates may hold.
   */
  readonly peers: ReadonlyArray<readonly [NodeId, string, ReadonlyArray<readonly [string, number]>?]>;
  /** Lifetime of manager certificates (90 days unless set at init). */
  readonly managerCertValidityDays: number;
}

export const NODE_CONFIG_FILE = 'node.json';
export const TLS_DIR = 'tls';
/** The manager's audit log (audit.log, audit.head). */
export const AUDIT_DIR = 'audit';
export const CA_CERT_FILE = 'ca.crt';
export const NODE_CERT_FILE = 'node.crt';
/** Names of the private keys kept sealed in the key store. */
export const TLS_KEY_SECRET = 'tls-key';
/** The certificate of that key, kept beside it so a renewal replaces both in one atomic write. */
export const TLS_CERT_SECRET = 'tls-cert';
export const CA_KEY_SECRET = 'ca-key';
/** The key of this manager's audit log HMACs (32 bytes), made on its first start. */
export const AUDIT_KEY_SECRET = 'audit-hmac-key';

/**
 * Whether `dataDir` is a manager's (init or join finished there: node.json is the last file they
 * write). What lets a container's start command decide between joining and serving.
 */
export function isManagerDataDir(dataDir: string): boolean {
  return existsSync(join(dataDir, NODE_CONFIG_FILE));
}

export async function readNodeConfig(dataDir: string): Promise<NodeConfig> {
  const path = join(dataDir, NODE_CONFIG_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new Error(`${path} is missing: ${dataDir} is not a manager's data directory (run coffer init or coffer join first)`);
  }
  const config = JSON.parse(text) as NodeConfig;
  if (config.format !== 1 || !Number.isSafeInteger(config.nodeId)) throw new Error(`${path} is not a Coffer node configuration`);
  return config;
}

/** Writes a small file atomically: temporary file, fsync, rename. */
export async function writeFileAtomic(path: string, content: string | Buffer, mode = 0o644): Promise<void> {
  const temporary = `${path}.tmp`;
  const file = await open(temporary, 'w', mode);
  try {
    await file.writeFile(content);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporary, path);
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

export async function writeNodeConfig(dataDir: string, config: NodeConfig): Promise<void> {
  await writeFileAtomic(join(dataDir, NODE_CONFIG_FILE), `${JSON.stringify(config, null, 2)}\n`);
}

export async function writeTlsFiles(dataDir: string, caCertPem: string, nodeCertPem: string): Promise<void> {
  const dir = join(dataDir, TLS_DIR);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(join(dir, CA_CERT_FILE), caCertPem);
  await writeFileAtomic(join(dir, NODE_CERT_FILE), nodeCertPem);
}

export async function readTlsFiles(dataDir: string): Promise<{ caCertPem: string; nodeCertPem: string }> {
  const dir = join(dataDir, TLS_DIR);
  return { caCertPem: await readFile(join(dir, CA_CERT_FILE), 'utf8'), nodeCertPem: await readFile(join(dir, NODE_CERT_FILE), 'utf8') };
}

/** Splits host:port (IPv6 in brackets), checking the port. */
export function splitHostPort(address: string): { host: string; port: number } {
  // A host name, an IPv4 address, or an IPv6 address in brackets: nothing that could carry control characters into a log.
  const match = /^(\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9._-]+):(\d{1,5})$/.exec(address);
  const port = Number(match?.[2]);
  if (match === null || port < 1 || port > 65535) throw new Error(`${JSON.stringify(address.slice(0, 300))} is not host:port (a host name, an IPv4 address or [an IPv6 address], then a port)`);
  return { host: match[1]!.replace(/^\[|\]$/g, ''), port };
}

/** The host part of host:port (without IPv6 brackets). */
export function hostOf(address: string): string {
  const at = address.lastIndexOf(':');
  return address.slice(0, at).replace(/^\[|\]$/g, '');
}
