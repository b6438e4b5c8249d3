import { readFile } from 'node:fs/promises';
import { DataDir } from '../manager/data-dir.ts';
import type { NodeId } from '../raft/types.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';

/**
 * A manager's own settings, in `<data dir>/node.json` (nothing secret). Where it and the other
 * files of a data directory are is src/manager/data-dir.ts's to say; this module says what
 * node.json holds.
 */
export interface NodeConfig {
  readonly format: 1;
  readonly nodeId: NodeId;
  readonly clusterId: string;
  /** Where the gRPC server binds (host:port). */
  readonly listen: string;
  /** Where other managers dial it (host:port); the listen address unless set. */
  readonly advertise: string;
  /**
   * Names its certificate carries besides the advertise host (`--san`; src/server/manager-hosts.ts),
   * named again at every renewal. Absent in data directories made before `--san`: none.
   */
  readonly extraHosts?: readonly string[];
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

/** Names of the private keys kept sealed in the key store. */
export const TLS_KEY_SECRET = 'tls-key';
/** The certificate of that key, kept beside it so a renewal replaces both in one atomic write. */
export const TLS_CERT_SECRET = 'tls-cert';
export const CA_KEY_SECRET = 'ca-key';
/** The key of this manager's audit log HMACs (32 bytes), made on its first start. */
export const AUDIT_KEY_SECRET = 'audit-hmac-key';

export async function readNodeConfig(dataDir: string): Promise<NodeConfig> {
  const path = new DataDir(dataDir).nodeConfig;
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    throw new Error(
      `${path} is missing: ${dataDir} is not a manager's data directory (run coffer init or coffer join first)`,
    );
  }
  const config = JSON.parse(text) as NodeConfig;
  if (config.format !== 1 || !Number.isSafeInteger(config.nodeId))
    throw new Error(`${path} is not a Coffer node configuration`);
  return config;
}

/** Replaces node.json atomically (readable by others: it holds nothing secret). */
export async function writeNodeConfig(dataDir: string, config: NodeConfig): Promise<void> {
  await writeFileAtomic(new DataDir(dataDir).nodeConfig, `${JSON.stringify(config, null, 2)}\n`, DataDir.PUBLIC_MODE);
}

/** Splits host:port (IPv6 in brackets), checking the port. */
export function splitHostPort(address: string): { host: string; port: number } {
  // A host name, an IPv4 address, or an IPv6 address in brackets: nothing that could carry control characters into a log.
  const match = /^(\[[0-9A-Fa-f:.%]+\]|[A-Za-z0-9._-]+):(\d{1,5})$/.exec(address);
  const port = Number(match?.[2]);
  if (match === null || port < 1 || port > 65535)
    throw new Error(
      `${JSON.stringify(address.slice(0, 300))} is not host:port (a host name, an IPv4 address or [an IPv6 address], then a port)`,
    );
  return { host: match[1]!.replace(/^\[|\]$/g, ''), port };
}

/** The host part of host:port (without IPv6 brackets). */
export function hostOf(address: string): string {
  const at = address.lastIndexOf(':');
  return address.slice(0, at).replace(/^\[|\]$/g, '');
}
