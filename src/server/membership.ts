import { packr } from '../codec/msgpack.ts';
import { ClusterState } from '../state/cluster-state.ts';
import type { ConfChange, NodeId, Status } from '../raft/types.ts';
import { refuse } from './errors.ts';
import type { Manager } from '../manager/manager.ts';
import type { AppliedResult, AppliedState } from '../state/applied-state.ts';
import type { StateCommand } from './context.ts';

/** An operator's membership operation. The leader runs it; other managers forward it there. */
export interface MemberOp {
  readonly op: 'promote' | 'demote' | 'remove' | 'transfer';
  /** 0 with `transfer`: the most caught-up voter. */
  readonly nodeId: NodeId;
  /** Skip the quorum check of demote and remove. */
  readonly force: boolean;
}

export interface MemberOpResult {
  readonly leaderId: NodeId;
  readonly voters: readonly NodeId[];
  readonly learners: readonly NodeId[];
}

/** What a membership operation uses: the replica, the write path, the way to the leader, the transport. */
export interface MembershipDeps {
  readonly replica: Pick<Manager<AppliedResult>, 'raftStatus' | 'transferLeadership'>;
  readonly state: AppliedState;
  propose(command: StateCommand): Promise<unknown>;
  proposeConfChange(change: ConfChange): Promise<void>;
  /** Runs `op` on `leader` (Peer.Propose). */
  forwardMemberOp(leader: NodeId, op: MemberOp): Promise<MemberOpResult>;
  /** Stops talking to a removed manager. */
  forgetPeer(id: NodeId): void;
}

const OPS: ReadonlyArray<MemberOp['op']> = ['promote', 'demote', 'remove', 'transfer'];

/** How long a leadership transfer may take before the operator hears it failed. */
export const TRANSFER_WAIT_MS = 5000;

export function encodeMemberOp(op: MemberOp): Buffer {
  return packr.pack(op);
}

export function decodeMemberOp(data: Buffer): MemberOp {
  let value: Partial<MemberOp> | null;
  try {
    value = packr.unpack(data) as Partial<MemberOp> | null;
  } catch {
    value = null;
  }
  if (
    value === null ||
    typeof value !== 'object' ||
    !OPS.includes(value.op as MemberOp['op']) ||
    !Number.isSafeInteger(value.nodeId) ||
    (value.nodeId as number) < 0 ||
    typeof value.force !== 'boolean'
  ) {
    throw refuse('INVALID_ARGUMENT', 'malformed membership operation');
  }
  return { op: value.op as MemberOp['op'], nodeId: value.nodeId as number, force: value.force };
}

export function encodeMemberOpResult(result: MemberOpResult): Buffer {
  return packr.pack(result);
}

export function decodeMemberOpResult(data: Buffer): MemberOpResult {
  return packr.unpack(data) as MemberOpResult;
}

/**
 * Runs a membership operation where it must run: on the leader. Other managers forward it; a
 * leader asked to demote or remove itself hands leadership over first and forwards the operation
 * to its successor. Demoting or removing a voter is refused when the voters left would not
 * include a quorum of healthy managers (heard from within the last two election timeouts),
 * unless forced: the cluster must not lose its quorum to an operator's typo.
 */
export async function runMemberOp(deps: MembershipDeps, op: MemberOp): Promise<MemberOpResult> {
  const status = statusOf(deps);
  if (status.role !== 'leader') {
    if (status.lead === 0) throw refuse('NO_LEADER', 'no leader is known; retry once one is elected');
    return deps.forwardMemberOp(status.lead, op);
  }
  const { voters, learners } = status.confState;
  const isVoter = voters.includes(op.nodeId);
  const isLearner = learners.includes(op.nodeId);
  const cluster = deps.state.cluster;
  if (
    op.op === 'remove' &&
    !isVoter &&
    !isLearner &&
    cluster.addresses.has(op.nodeId) &&
    !cluster.removed.has(op.nodeId)
  ) {
    // A removal that left the membership but failed before marking the manager removed: finish it.
    await deps.propose(ClusterState.encode({ kind: 'cluster.removed', id: op.nodeId }));
    return resultOf(statusOf(deps));
  }
  if (op.op !== 'transfer' && !isVoter && !isLearner)
    throw refuse('MEMBER_NOT_FOUND', `manager ${op.nodeId} is not a member of this cluster`, {
      nodeId: String(op.nodeId),
    });

  if (op.op === 'transfer') {
    await transferLeadership(deps, status, op.nodeId);
    return resultOf(statusOf(deps));
  }
  if ((op.op === 'demote' || op.op === 'remove') && op.nodeId === status.id) {
    // The leader leaves the voters: it hands over first, so no election is needed. The quorum is
    // checked here, where the progress of every voter is known, before anything moves.
    checkQuorumAfterLosing(status, op.nodeId, op.force);
    const successor = await transferLeadership(deps, status, 0);
    // Checked above; the successor has only just started hearing from the others.
    return deps.forwardMemberOp(successor, { ...op, force: true });
  }
  if (op.op === 'promote') {
    if (isVoter) throw refuse('ALREADY_VOTER', `manager ${op.nodeId} is already a voter`);
    const match = status.progress?.get(op.nodeId)?.match ?? 0;
    if (match < status.commit && !op.force) {
      throw refuse(
        'LEARNER_BEHIND',
        `manager ${op.nodeId} is ${status.commit - match} entries behind the commit index; promote it once it has caught up (or with --force)`,
        { entriesBehind: String(status.commit - match) },
      );
    }
    await deps.propose(ClusterState.encode({ kind: 'cluster.hold-learner', id: op.nodeId, held: false }));
    await deps.proposeConfChange({ type: 'add-voter', nodeId: op.nodeId });
    return resultOf(statusOf(deps));
  }
  if (isVoter) checkQuorumAfterLosing(status, op.nodeId, op.force);
  if (op.op === 'demote') {
    if (isLearner) throw refuse('ALREADY_LEARNER', `manager ${op.nodeId} is already a learner`);
    await deps.propose(ClusterState.encode({ kind: 'cluster.hold-learner', id: op.nodeId, held: true }));
    await deps.proposeConfChange({ type: 'add-learner', nodeId: op.nodeId });
    return resultOf(statusOf(deps));
  }
  // Out of the membership first, then marked removed (its certificate refused from then on): if
  // the mark fails, the manager is no longer counted in the quorum, and a repeated remove
  // finishes the job (above). The other order could leave a refused manager counted as a voter.
  await deps.proposeConfChange({ type: 'remove', nodeId: op.nodeId });
  await deps.propose(ClusterState.encode({ kind: 'cluster.removed', id: op.nodeId }));
  deps.forgetPeer(op.nodeId);
  return resultOf(statusOf(deps));
}

function statusOf(deps: MembershipDeps): Status {
  const status = deps.replica.raftStatus();
  if (status === null) throw refuse('MANAGER_LOCKED', 'this manager is locked');
  return status;
}

function resultOf(status: Status): MemberOpResult {
  return { leaderId: status.lead, voters: status.confState.voters, learners: status.confState.learners };
}

/** True when the leader heard from `id` within the last two election timeouts (itself: always). */
export function isHealthy(status: Status, id: NodeId): boolean {
  return id === status.id || status.progress?.get(id)?.recentActive === true;
}

function checkQuorumAfterLosing(status: Status, leaving: NodeId, force: boolean): void {
  const remaining = status.confState.voters.filter((id) => id !== leaving);
  if (remaining.length === 0) throw refuse('LAST_VOTER', `manager ${leaving} is the last voter`);
  const healthy = remaining.filter((id) => isHealthy(status, id));
  const needed = Math.floor(remaining.length / 2) + 1;
  if (healthy.length < needed && !force) {
    throw refuse(
      'QUORUM_AT_RISK',
      `without manager ${leaving} the ${remaining.length} voters left need ${needed} healthy to keep a quorum, and only ${healthy.length} (${healthy.join(', ')}) are; ` +
        'bring the others back first, or use --force if they are gone for good',
      { votersNeeded: String(needed), votersHealthy: String(healthy.length) },
    );
  }
}

/**
 * Hands leadership to `to` (0: the healthy voter with the most entries) and waits until it leads.
 * Returns the new leader.
 */
async function transferLeadership(deps: MembershipDeps, status: Status, to: NodeId): Promise<NodeId> {
  let target = to;
  if (target === 0) {
    const candidates = status.confState.voters.filter((id) => id !== status.id && isHealthy(status, id));
    candidates.sort((a, b) => (status.progress?.get(b)?.match ?? 0) - (status.progress?.get(a)?.match ?? 0));
    if (candidates.length === 0) throw refuse('NO_TRANSFER_TARGET', 'no other healthy voter can take over leadership');
    target = candidates[0]!;
  }
  if (target === status.id) return target;
  if (!status.confState.voters.includes(target))
    throw refuse('NOT_A_VOTER', `manager ${target} is not a voter; only voters can lead`);
  deps.replica.transferLeadership(target);
  const deadline = Date.now() + TRANSFER_WAIT_MS;
  while (Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 20));
    const now = deps.replica.raftStatus();
    if (now !== null && now.role !== 'leader' && now.lead === target) return target;
  }
  throw refuse(
    'TRANSFER_TIMEOUT',
    `leadership did not move to manager ${target} within ${TRANSFER_WAIT_MS} ms: it may be behind or unreachable; this manager still leads`,
  );
}
