import type { AuditLog } from '../audit/audit-log.ts';
import { ProposalRefused } from '../manager/errors.ts';
import { ClusterState } from '../state/cluster-state.ts';
import type { Logger } from '../util/logger.ts';
import type { StateCommand } from './context.ts';

/** How often a manager replicates its audit log's last durable record (its anchor), if it moved. */
export const AUDIT_ANCHOR_INTERVAL_MS = 10_000;

export interface AuditAnchoringOptions {
  readonly nodeId: number;
  readonly audit: AuditLog;
  readonly cluster: ClusterState;
  /** Whether a leader is known (nothing is proposed without one). */
  hasLeader(): boolean;
  propose(command: StateCommand): Promise<unknown>;
  readonly intervalMs?: number;
  /** Started with a new audit log: its first anchor says so (anchors otherwise only move forward). */
  readonly logReset: boolean;
  readonly log: Logger;
}

/**
 * Replicates this manager's audit anchor (its log's last durable record) when it moved, at most
 * every AUDIT_ANCHOR_INTERVAL_MS: whoever can rewrite this manager's audit directory cannot then
 * cut or replace records written before it without `coffer audit verify` noticing.
 */
export class AuditAnchoring {
  readonly #o: AuditAnchoringOptions;
  #anchoredAtMs = -Infinity;
  #logReset: boolean;

  constructor(options: AuditAnchoringOptions) {
    this.#o = options;
    this.#logReset = options.logReset;
  }

  async maybeAnchor(): Promise<void> {
    const now = Date.now();
    if (now - this.#anchoredAtMs < (this.#o.intervalMs ?? AUDIT_ANCHOR_INTERVAL_MS) || !this.#o.hasLeader()) return;
    const anchor = this.#o.audit.anchor;
    const known = this.#o.cluster.auditAnchors.get(this.#o.nodeId);
    if (!this.#logReset && known !== undefined && known.seq >= anchor.seq) return;
    this.#anchoredAtMs = now;
    try {
      await this.#o.propose(
        ClusterState.encode({
          kind: 'cluster.audit-anchor',
          id: this.#o.nodeId,
          seq: anchor.seq,
          hash: anchor.hash,
          reset: this.#logReset,
        }),
      );
      this.#logReset = false;
    } catch (error) {
      if (!(error instanceof ProposalRefused)) throw error;
      this.#o.log.error(
        { event: 'audit-anchor-refused', err: error },
        `the cluster refused this manager's audit anchor: ${(error as Error).message}`,
      );
    }
  }
}
