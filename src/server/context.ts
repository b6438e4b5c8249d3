import type { AuditLog } from '../audit/audit-log.ts';
import type { Manager } from '../manager/manager.ts';
import type { NodeMetrics } from '../metrics/metrics.ts';
import type { ConfChange, NodeId } from '../raft/types.ts';
import type { AppliedResult, AppliedState } from '../state/applied-state.ts';
import type { Logger } from '../util/logger.ts';
import type { AnonymousAudit } from './anonymous-audit.ts';
import type { SigningCa } from './cluster-ca.ts';
import { refuse } from './errors.ts';
import type { PeerTrust } from './peer-trust.ts';
import type { IdentityRateLimiter } from './rate-limit.ts';

/**
 * What the request edge (rpc.ts) needs for every call: who this manager is, the applied state to
 * authorize against, the audit logs, the rate limits, the log and the metrics, and which managers
 * are members (for Raft-only methods).
 */
export interface RequestContext {
  readonly nodeId: NodeId;
  readonly clusterId: string;
  readonly state: AppliedState;
  readonly audit: AuditLog;
  /** Audit records of requests without a certificate: small, and rate-limited. */
  readonly anonymousAudit: AnonymousAudit;
  readonly rateLimit: IdentityRateLimiter;
  readonly trust: PeerTrust;
  readonly log: Logger;
  readonly metrics: NodeMetrics;
  /**
   * The cluster's wall-clock time (cluster-clock.ts): what every decision by wall time reads
   * (TTL stamps and expiry, token and certificate validity), never the host's clock alone.
   */
  readonly clock: { now(): number; offsetMs(): number };
}

/** A command of the applied state as the state encodes it (`SecretStore.encode...`, `ClusterState.encode`). */
export interface StateCommand {
  readonly kind: string;
  readonly data: Buffer;
}

/** A result of the applied state that is not a refusal (refusals are thrown as ProposalRefused). */
export type AppliedOk = Extract<AppliedResult, { ok: true }>;

/**
 * What a service handler may use: the request edge, plus the one write path and the read point.
 * Services get this, never the node: they cannot reach the transport, the timers or the
 * composition, and a test can give them a context of its own.
 */
export interface ServiceContext extends RequestContext {
  /**
   * Seals `command` here and has the leader apply it (proposed here, or forwarded): its result, or
   * a ProposalRefused that errors.ts turns into the right status.
   */
  propose(command: StateCommand): Promise<AppliedOk>;
  /** A membership change through the leader. */
  proposeConfChange(change: ConfChange): Promise<void>;
  /**
   * Waits until this manager has applied every write committed before the call (a linearizable
   * read), or, when `stale`, returns at once with what it has.
   */
  readPoint(stale?: boolean): Promise<number>;
  /** The replica as handlers read it: Raft status, keyring status, locked or not. */
  readonly replica: Pick<Manager<AppliedResult>, 'raftStatus' | 'status' | 'locked'>;
  /** The CAs: which to sign with (UNAVAILABLE while this manager has none), what it trusts. */
  readonly pki: ServicePki;
  /** Where a member listens, as far as this manager knows. */
  addressOf(id: NodeId): string | undefined;
}

export interface ServicePki {
  signing(): SigningCa;
  /** Every CA trusted now (PEM), the active one first. */
  trustPem(): string;
  /** The active CA's certificate (what a join token pins). */
  activeCertPem(): string;
}

/** The signing CA, or UNAVAILABLE: a manager that joined has the CA once it has the replicated state. */
export function signingOrUnavailable(signing: SigningCa | null): SigningCa {
  if (signing === null)
    throw refuse('CA_NOT_READY', 'this manager has not received the cluster CA yet; retry on another manager');
  return signing;
}
