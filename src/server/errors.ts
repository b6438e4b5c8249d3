import * as grpc from '@grpc/grpc-js';
import { CryptoError } from '../crypto/errors.ts';
import { ManagerError, ProposalRefused } from '../manager/errors.ts';
import { RaftError } from '../raft/errors.ts';
import { ReplicaError } from '../replica/replica.ts';
import { RefusalError, type RefusalCode } from '../state/state-part.ts';

/** A refusal with its gRPC status and a message that says what to do; never a stack or a secret. */
export class ServiceError extends Error {
  override name = 'ServiceError';
  readonly status: grpc.status;

  constructor(status: grpc.status, message: string) {
    super(message);
    this.status = status;
  }
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

/** The one place where internal error codes become gRPC statuses. */
export function toStatus(error: unknown): { code: grpc.status; details: string } {
  if (error instanceof ServiceError) return { code: error.status, details: error.message };
  if (error instanceof RefusalError) return { code: refusalStatus(error.code), details: error.message };
  if (error instanceof ProposalRefused) {
    // The applied state's refusals carry their own code; the barrier's and keyring operations' are preconditions.
    const known = error.source === 'state' && REFUSAL_CODES.has(error.code);
    return {
      code: known ? refusalStatus(error.code as RefusalCode) : grpc.status.FAILED_PRECONDITION,
      details: error.message,
    };
  }
  if (error instanceof RaftError) {
    switch (error.code) {
      case 'NOT_LEADER':
      case 'TRANSFER_IN_PROGRESS':
        return { code: grpc.status.UNAVAILABLE, details: `${error.message}; retry` };
      case 'ENTRY_TOO_LARGE':
      case 'PROPOSALS_BACKLOGGED':
        return { code: grpc.status.RESOURCE_EXHAUSTED, details: error.message };
      default:
        return { code: grpc.status.FAILED_PRECONDITION, details: error.message };
    }
  }
  if (error instanceof ReplicaError) {
    if (error.code === 'PROPOSAL_LOST')
      return { code: grpc.status.ABORTED, details: `${error.message}; check before retrying` };
    return { code: grpc.status.UNAVAILABLE, details: error.message };
  }
  if (error instanceof ManagerError) {
    if (error.code === 'MANAGER_LOCKED' || error.code === 'MANAGER_STOPPED' || error.code === 'NO_LEADER')
      return { code: grpc.status.UNAVAILABLE, details: error.message };
    return { code: grpc.status.FAILED_PRECONDITION, details: error.message };
  }
  if (error instanceof CryptoError) {
    if (error.code === 'KEY_USES_EXHAUSTED' || error.code === 'KEYRING_EMPTY')
      return { code: grpc.status.UNAVAILABLE, details: error.message };
    return { code: grpc.status.FAILED_PRECONDITION, details: error.message };
  }
  return { code: grpc.status.INTERNAL, details: 'internal error; the manager logged it' };
}
