import * as grpc from '@grpc/grpc-js';
import { CryptoError } from '../crypto/errors.ts';
import { ManagerError, ProposalRefused } from '../manager/errors.ts';
import { RaftError } from '../raft/errors.ts';
import { ReplicaError } from '../replica/replica.ts';
import { REFUSAL_REASON_CODES, RefusalError, type RefusalCode, type RefusalReason } from '../state/state-part.ts';
import {
  ERROR_METADATA_ENTRIES_MAX,
  ERROR_METADATA_KEY_PATTERN,
  ERROR_REASON_PATTERN,
  type ErrorMetadata,
} from '../transport/error-details.ts';

/**
 * The reasons the server names itself (`refuse`), each with the one status it comes with. The
 * state machine's refusals, the Raft core's, the replica's, the manager's and the crypto layer's
 * carry their own stable codes, which become reasons as they are (`toStatus`). docs/errors.md
 * lists them all; clients branch on them, never on the message.
 */
export const SERVICE_REASONS = {
  // Who is asking.
  UNAUTHENTICATED: grpc.status.UNAUTHENTICATED,
  WRONG_ROLE: grpc.status.PERMISSION_DENIED,
  IDENTITY_UNKNOWN: grpc.status.PERMISSION_DENIED,
  IDENTITY_REVOKED: grpc.status.PERMISSION_DENIED,
  CERTIFICATE_REVOKED: grpc.status.PERMISSION_DENIED,
  POLICY_DENIED: grpc.status.PERMISSION_DENIED,
  GRANT_NOT_HELD: grpc.status.PERMISSION_DENIED,
  NOT_A_MEMBER: grpc.status.PERMISSION_DENIED,
  JOIN_TOKEN_REFUSED: grpc.status.PERMISSION_DENIED,
  CERTIFICATE_EXPIRED: grpc.status.UNAUTHENTICATED,
  ROLE_REVOKED: grpc.status.PERMISSION_DENIED,
  // Logins: the proof.
  TOKEN_INVALID: grpc.status.UNAUTHENTICATED,
  TOKEN_EXPIRED: grpc.status.UNAUTHENTICATED,
  TOKEN_NOT_YET_VALID: grpc.status.UNAUTHENTICATED,
  TOKEN_SIGNATURE_INVALID: grpc.status.UNAUTHENTICATED,
  TOKEN_ALGORITHM_REFUSED: grpc.status.UNAUTHENTICATED,
  TOKEN_ISSUER_MISMATCH: grpc.status.UNAUTHENTICATED,
  TOKEN_AUDIENCE_MISMATCH: grpc.status.UNAUTHENTICATED,
  TOKEN_KEY_UNKNOWN: grpc.status.UNAUTHENTICATED,
  LDAP_CREDENTIALS_INVALID: grpc.status.UNAUTHENTICATED,
  TOTP_REQUIRED: grpc.status.UNAUTHENTICATED,
  TOTP_INVALID: grpc.status.UNAUTHENTICATED,
  TOTP_REUSED: grpc.status.PERMISSION_DENIED,
  LOGIN_NOT_BOUND: grpc.status.PERMISSION_DENIED,
  ISSUER_UNREACHABLE: grpc.status.UNAVAILABLE,
  LDAP_UNREACHABLE: grpc.status.UNAVAILABLE,
  AUTH_METHOD_NOT_CONFIGURED: grpc.status.FAILED_PRECONDITION,
  ROLE_NOT_FOUND: grpc.status.NOT_FOUND,
  // Dynamic database credentials.
  DB_UNREACHABLE: grpc.status.UNAVAILABLE,
  DB_REFUSED: grpc.status.FAILED_PRECONDITION,
  DB_ROLE_NOT_FOUND: grpc.status.NOT_FOUND,
  LEASE_NOT_FOUND: grpc.status.NOT_FOUND,
  STATIC_ROLE_NOT_FOUND: grpc.status.NOT_FOUND,
  ROTATION_IN_PROGRESS: grpc.status.UNAVAILABLE,
  NAME_RESERVED: grpc.status.PERMISSION_DENIED,
  // What is asked.
  MALFORMED_REQUEST: grpc.status.INVALID_ARGUMENT,
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  INVALID_NAME: grpc.status.INVALID_ARGUMENT,
  INVALID_POLICY: grpc.status.INVALID_ARGUMENT,
  VALUE_TOO_LARGE: grpc.status.RESOURCE_EXHAUSTED,
  BATCH_TOO_LARGE: grpc.status.RESOURCE_EXHAUSTED,
  QUOTA_EXCEEDED: grpc.status.RESOURCE_EXHAUSTED,
  RATE_LIMITED: grpc.status.RESOURCE_EXHAUSTED,
  POLICY_NOT_FOUND: grpc.status.NOT_FOUND,
  UNKNOWN_POLICY: grpc.status.FAILED_PRECONDITION,
  MEMBER_NOT_FOUND: grpc.status.NOT_FOUND,
  // The state of this manager or of the cluster.
  NO_LEADER: grpc.status.UNAVAILABLE,
  LEADER_ADDRESS_UNKNOWN: grpc.status.UNAVAILABLE,
  JOIN_THROUGH_LEADER: grpc.status.FAILED_PRECONDITION,
  MANAGER_LOCKED: grpc.status.UNAVAILABLE,
  MANAGER_REMOVED: grpc.status.UNAVAILABLE,
  AUDIT_UNAVAILABLE: grpc.status.UNAVAILABLE,
  AUDIT_LOG_ALTERED: grpc.status.DATA_LOSS,
  DISK_FULL: grpc.status.UNAVAILABLE,
  CA_NOT_READY: grpc.status.UNAVAILABLE,
  JOIN_TOKEN_NOT_READY: grpc.status.UNAVAILABLE,
  ADDRESS_NOT_PROVEN: grpc.status.FAILED_PRECONDITION,
  NO_RECOVERY_KEY: grpc.status.FAILED_PRECONDITION,
  CA_ROTATION_IN_PROGRESS: grpc.status.FAILED_PRECONDITION,
  NO_CA_ROTATION: grpc.status.FAILED_PRECONDITION,
  MANAGERS_NOT_MOVED: grpc.status.FAILED_PRECONDITION,
  IDENTITIES_NOT_MOVED: grpc.status.FAILED_PRECONDITION,
  ALREADY_VOTER: grpc.status.FAILED_PRECONDITION,
  ALREADY_LEARNER: grpc.status.FAILED_PRECONDITION,
  LEARNER_BEHIND: grpc.status.FAILED_PRECONDITION,
  LAST_VOTER: grpc.status.FAILED_PRECONDITION,
  QUORUM_AT_RISK: grpc.status.FAILED_PRECONDITION,
  NO_TRANSFER_TARGET: grpc.status.FAILED_PRECONDITION,
  NOT_A_VOTER: grpc.status.FAILED_PRECONDITION,
  TRANSFER_TIMEOUT: grpc.status.UNAVAILABLE,
  INTERNAL: grpc.status.INTERNAL,
} as const satisfies Record<string, grpc.status>;
export type ServiceReason = keyof typeof SERVICE_REASONS;

/**
 * The reason of a state refusal that names no reason of its own (src/state/state-part.ts); most
 * do name one (SECRET_NOT_FOUND rather than NOT_FOUND).
 */
export const REFUSAL_CODE_REASONS: Readonly<Record<RefusalCode, string>> = {
  INVALID: 'INVALID_ARGUMENT',
  NOT_FOUND: 'NOT_FOUND',
  EXPIRED: 'VERSION_EXPIRED',
  DELETED: 'SECRET_DELETED',
  DESTROYED: 'VERSION_DESTROYED',
  CAS_MISMATCH: 'CAS_MISMATCH',
  EXISTS: 'ALREADY_EXISTS',
  LIMIT: 'LIMIT_EXCEEDED',
  DENIED: 'PERMISSION_DENIED',
  PRECONDITION: 'FAILED_PRECONDITION',
};

/**
 * A refusal with its gRPC status, a message that says what to do (never a stack or a secret), a
 * stable reason and facts for programs (ErrorInfo metadata; never a secret's value).
 */
export class ServiceError extends Error {
  override name = 'ServiceError';
  readonly status: grpc.status;
  readonly reason: string;
  readonly metadata: ErrorMetadata;

  /** Without a reason, the status's name stands for one: made so only outside the server (a joiner's errors). */
  constructor(status: grpc.status, message: string, reason?: string, metadata: ErrorMetadata = {}) {
    super(message);
    this.status = status;
    this.reason = reason ?? grpc.status[status] ?? 'UNKNOWN';
    this.metadata = metadata;
  }
}

/**
 * The same refusal (status, reason) said of a part of the request: its message framed by `prefix`
 * and `suffix`, `metadata` added (a batch of puts names the item a refusal is about).
 */
export function refusalAbout(
  error: ServiceError,
  prefix: string,
  suffix: string,
  metadata: ErrorMetadata,
): ServiceError {
  return new ServiceError(error.status, `${prefix}${error.message}${suffix}`, error.reason, {
    ...error.metadata,
    ...metadata,
  });
}

/** A refusal by its reason: the status is the reason's (SERVICE_REASONS). */
export function refuse(reason: ServiceReason, message: string, metadata: ErrorMetadata = {}): ServiceError {
  return new ServiceError(SERVICE_REASONS[reason], message, reason, metadata);
}

const REFUSAL_CODES: ReadonlySet<string> = new Set<RefusalCode>([
  'NOT_FOUND',
  'EXPIRED',
  'DELETED',
  'CAS_MISMATCH',
  'DESTROYED',
  'INVALID',
  'LIMIT',
  'DENIED',
  'EXISTS',
  'PRECONDITION',
]);

/** The gRPC status of each refusal code of the applied state (src/state/state-part.ts). */
export function refusalStatus(code: RefusalCode): grpc.status {
  switch (code) {
    case 'NOT_FOUND':
    case 'EXPIRED':
    case 'DELETED':
      return grpc.status.NOT_FOUND;
    case 'CAS_MISMATCH':
    case 'DESTROYED':
    case 'PRECONDITION':
      return grpc.status.FAILED_PRECONDITION;
    case 'INVALID':
      return grpc.status.INVALID_ARGUMENT;
    case 'LIMIT':
      return grpc.status.RESOURCE_EXHAUSTED;
    case 'DENIED':
      return grpc.status.PERMISSION_DENIED;
    case 'EXISTS':
      return grpc.status.ALREADY_EXISTS;
    default: {
      const unmapped: never = code;
      throw new TypeError(`no gRPC status for refusal code ${String(unmapped)}`);
    }
  }
}

/** What a refused request answers: status, message, reason and metadata (the trailers rpc.ts sends). */
export interface ErrorStatus {
  readonly code: grpc.status;
  readonly details: string;
  readonly reason: string;
  readonly metadata: ErrorMetadata;
}

/** An internal code as a reason: it already is one when it is UPPER_SNAKE (a bound on what travels). */
function reasonFrom(code: string, otherwise: string): string {
  return ERROR_REASON_PATTERN.test(code) ? code : otherwise;
}

/**
 * A state refusal's status. Its finer reason and metadata may come from the leader (a forwarded
 * proposal's result, msgpack): a reason is kept only if it is one of the refusal code's, metadata
 * only as lowerCamelCase keys to strings, at most ERROR_METADATA_ENTRIES_MAX.
 */
function refused(code: RefusalCode, details: string, reason: unknown, metadata: unknown): ErrorStatus {
  const known =
    typeof reason === 'string' &&
    Object.hasOwn(REFUSAL_REASON_CODES, reason) &&
    REFUSAL_REASON_CODES[reason as RefusalReason] === code;
  const facts: Record<string, string> = {};
  if (metadata !== null && typeof metadata === 'object')
    for (const [key, value] of Object.entries(metadata).slice(0, ERROR_METADATA_ENTRIES_MAX))
      if (ERROR_METADATA_KEY_PATTERN.test(key) && typeof value === 'string') facts[key] = value;
  return {
    code: refusalStatus(code),
    details,
    reason: known ? (reason as RefusalReason) : REFUSAL_CODE_REASONS[code],
    metadata: facts,
  };
}

/** The one place where internal errors become gRPC statuses and reasons. */
export function toStatus(error: unknown): ErrorStatus {
  const status = (code: grpc.status, details: string, reason: string, metadata: ErrorMetadata = {}) => ({
    code,
    details,
    reason,
    metadata,
  });
  if (error instanceof ServiceError) return status(error.status, error.message, error.reason, error.metadata);
  if (error instanceof RefusalError) return refused(error.code, error.message, error.reasonCode, error.metadata);
  if (error instanceof ProposalRefused) {
    // The applied state's refusals carry their own code; the barrier's and keyring operations' are preconditions.
    if (error.source === 'state' && REFUSAL_CODES.has(error.code))
      return refused(error.code as RefusalCode, error.message, error.reasonCode, error.metadata);
    return status(grpc.status.FAILED_PRECONDITION, error.message, reasonFrom(error.code, 'FAILED_PRECONDITION'));
  }
  if (error instanceof RaftError) {
    switch (error.code) {
      case 'NOT_LEADER':
      case 'TRANSFER_IN_PROGRESS':
        return status(
          grpc.status.UNAVAILABLE,
          `${error.message}; retry`,
          error.code,
          error.leader === 0 ? {} : { leaderId: String(error.leader) },
        );
      case 'ENTRY_TOO_LARGE':
      case 'PROPOSALS_BACKLOGGED':
        return status(grpc.status.RESOURCE_EXHAUSTED, error.message, error.code);
      default:
        return status(grpc.status.FAILED_PRECONDITION, error.message, error.code);
    }
  }
  if (error instanceof ReplicaError) {
    if (error.code === 'PROPOSAL_LOST')
      return status(grpc.status.ABORTED, `${error.message}; check before retrying`, error.code);
    return status(grpc.status.UNAVAILABLE, error.message, error.code);
  }
  if (error instanceof ManagerError) {
    if (error.code === 'MANAGER_LOCKED' || error.code === 'MANAGER_STOPPED' || error.code === 'NO_LEADER')
      return status(grpc.status.UNAVAILABLE, error.message, error.code);
    return status(grpc.status.FAILED_PRECONDITION, error.message, error.code);
  }
  if (error instanceof CryptoError) {
    if (error.code === 'KEY_USES_EXHAUSTED' || error.code === 'KEYRING_EMPTY')
      return status(grpc.status.UNAVAILABLE, error.message, error.code);
    return status(grpc.status.FAILED_PRECONDITION, error.message, error.code);
  }
  return status(grpc.status.INTERNAL, 'internal error; the manager logged it', 'INTERNAL');
}
