import type { Random } from '../util/prng.ts';
import type { NodeId } from './types.ts';

/**
 * Settings of one Raft node. Time is counted in ticks (calls to `tick()`); the IO layer decides
 * how long a tick is (100 ms: docs/design.md, "Time"). Every queue and batch has a named maximum.
 */
export interface RaftConfig {
  readonly id: NodeId;
  /** Ticks without hearing from a leader before a follower campaigns; randomized to [t, 2t). */
  readonly electionTimeoutTicks: number;
  /** Ticks between a leader's heartbeats. Must be smaller than the election timeout. */
  readonly heartbeatIntervalTicks: number;
  /**
   * After the IO layer reports that the connection to the leader broke, a follower campaigns
   * within [1, this] ticks instead of a full election timeout (fast failover): the voters that
   * lost the leader go a tick apart, lowest id first, so their campaigns do not split the vote.
   */
  readonly leaderLostCampaignTicksMax: number;
  /** Run a pre-vote round before a real election, so a node that cannot win does not bump terms. */
  readonly preVote: boolean;
  /** A leader steps down if it has not heard from a quorum within an election timeout. */
  readonly checkQuorum: boolean;
  /** Bytes of entries in one append message (at least one entry is always sent). */
  readonly appendBytesMax: number;
  /** Append messages in flight to one follower in the replicate state. */
  readonly inflightAppendsMax: number;
  /** Largest single entry a leader accepts. */
  readonly entryBytesMax: number;
  /** Bytes proposed but not yet committed, beyond which proposals are refused. */
  readonly uncommittedBytesMax: number;
  /** Reads waiting for quorum confirmation on a leader, beyond which reads are refused. */
  readonly pendingReadsMax: number;
  /** Source of election jitter. Injected so a seed reproduces a run. */
  readonly random: Random;
}

export type RaftConfigInput = Pick<RaftConfig, 'id' | 'random'> & Partial<RaftConfig>;

export const RAFT_CONFIG_DEFAULTS = {
  electionTimeoutTicks: 10,
  heartbeatIntervalTicks: 1,
  leaderLostCampaignTicksMax: 4,
  preVote: true,
  checkQuorum: true,
  appendBytesMax: 1024 * 1024,
  inflightAppendsMax: 256,
  entryBytesMax: 1024 * 1024,
  uncommittedBytesMax: 64 * 1024 * 1024,
  pendingReadsMax: 4096,
} as const;

/** Fills defaults and rejects settings that cannot work, naming the setting and the fix. */
export function resolveRaftConfig(input: RaftConfigInput): RaftConfig {
  const config: RaftConfig = { ...RAFT_CONFIG_DEFAULTS, ...input };
  const positive = (name: keyof RaftConfig): void => {
    const value = config[name];
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
      throw new TypeError(`Raft config ${name} must be a positive integer: got ${String(value)}`);
    }
  };
  positive('id');
  positive('electionTimeoutTicks');
  positive('heartbeatIntervalTicks');
  positive('appendBytesMax');
  positive('inflightAppendsMax');
  positive('entryBytesMax');
  positive('uncommittedBytesMax');
  positive('pendingReadsMax');
  if (!Number.isSafeInteger(config.leaderLostCampaignTicksMax) || config.leaderLostCampaignTicksMax < 0) {
    throw new TypeError(
      `Raft config leaderLostCampaignTicksMax must be a non-negative integer: got ${config.leaderLostCampaignTicksMax}`,
    );
  }
  if (config.heartbeatIntervalTicks >= config.electionTimeoutTicks) {
    throw new TypeError(
      `Raft config heartbeatIntervalTicks (${config.heartbeatIntervalTicks}) must be smaller than ` +
        `electionTimeoutTicks (${config.electionTimeoutTicks}), or followers time out between heartbeats`,
    );
  }
  if (config.leaderLostCampaignTicksMax >= config.electionTimeoutTicks) {
    throw new TypeError(
      `Raft config leaderLostCampaignTicksMax (${config.leaderLostCampaignTicksMax}) must be smaller than ` +
        `electionTimeoutTicks (${config.electionTimeoutTicks})`,
    );
  }
  if (config.entryBytesMax > config.uncommittedBytesMax) {
    throw new TypeError('Raft config entryBytesMax must not exceed uncommittedBytesMax');
  }
  return config;
}
