import type { NodeId } from './types.ts';

/**
 * Expected refusals of the Raft core. Each has a stable code the layers above map to their own
 * errors (e.g. gRPC status UNAVAILABLE for NOT_LEADER). Bugs are AssertionErrors, not these.
 */
export type RaftErrorCode =
  /** Proposals and conf changes go to the leader; `leader` says who that is (0 = unknown). */
  | 'NOT_LEADER'
  /** A leadership transfer is under way; retry after it finishes or times out. */
  | 'TRANSFER_IN_PROGRESS'
  /** The entry is larger than `entryBytesMax`. */
  | 'ENTRY_TOO_LARGE'
  /** Too many bytes are proposed but not yet committed (`uncommittedBytesMax`). */
  | 'PROPOSALS_BACKLOGGED'
  /** An earlier membership change is not yet applied. */
  | 'CONF_CHANGE_PENDING'
  /** The membership change makes no sense for the current membership. */
  | 'CONF_CHANGE_INVALID'
  /** A leadership transfer to a node that is not a voter, or to the leader itself. */
  | 'TRANSFER_INVALID'
  /** A snapshot or compaction index outside what the log allows. */
  | 'COMPACTION_INVALID';

export class RaftError extends Error {
  override name = 'RaftError';
  readonly code: RaftErrorCode;
  /** The leader as this node knows it when the error was raised (0 = unknown). */
  readonly leader: NodeId;

  constructor(code: RaftErrorCode, message: string, leader: NodeId = 0) {
    super(message);
    this.code = code;
    this.leader = leader;
  }
}
