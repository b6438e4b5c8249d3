export { RawNode, COMMITTED_ENTRIES_BYTES_MAX } from './raw-node.ts';
export { RaftError, type RaftErrorCode } from './errors.ts';
export { RAFT_CONFIG_DEFAULTS, resolveRaftConfig, type RaftConfig, type RaftConfigInput } from './config.ts';
export * from './types.ts';
