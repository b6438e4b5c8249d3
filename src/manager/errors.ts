export type ManagerErrorCode =
  /** The manager is locked (autolock): unlock it with the unlock key first. */
  | 'MANAGER_LOCKED'
  | 'ALREADY_UNLOCKED'
  | 'ALREADY_INITIALIZED'
  | 'MANAGER_STOPPED'
  /** This manager does not lead and knows no leader to forward a proposal to. */
  | 'NO_LEADER';

export class ManagerError extends Error {
  override name = 'ManagerError';
  readonly code: ManagerErrorCode;

  constructor(code: ManagerErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
  }
}

/** Where a proposal was refused: by the state machine, by the barrier, or a keyring operation that changed nothing. */
export type RefusalSource = 'state' | 'barrier' | 'key-op';

/**
 * A proposal the leader answered with a refusal (Proposer reads every outcome in one place).
 * `code` is the refusing layer's own: a state machine's refusal code, a barrier payload code, or
 * NOT_CHANGED / NOT_APPLIED. A state machine's refusal may name a finer `reasonCode` and
 * `metadata` (facts for programs, never a secret's value), which the server sends on.
 */
export class ProposalRefused extends Error {
  override name = 'ProposalRefused';
  readonly source: RefusalSource;
  readonly code: string;
  readonly reasonCode: string | undefined;
  readonly metadata: Readonly<Record<string, string>> | undefined;

  constructor(
    source: RefusalSource,
    code: string,
    message: string,
    detail: { reasonCode?: string; metadata?: Readonly<Record<string, string>> } = {},
  ) {
    super(message);
    this.source = source;
    this.code = code;
    this.reasonCode = detail.reasonCode;
    this.metadata = detail.metadata;
  }
}
