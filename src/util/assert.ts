/**
 * Invariant checks that crash loudly. A violated invariant means the process state can no longer
 * be trusted (TigerBeetle's rule): we stop rather than serve wrong data. Use these for conditions
 * that only a bug can break; validate outside input at the gateway with typed errors instead.
 */
export class AssertionError extends Error {
  override name = 'AssertionError';
  readonly code = 'ASSERTION_FAILED';
}

export function assert(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) {
    throw new AssertionError(typeof message === 'function' ? message() : message);
  }
}

/** Throws unless `value` is a non-negative safe integer (terms, indexes, counts). */
export function assertIndex(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new AssertionError(`${what} must be a non-negative safe integer: got ${String(value)}`);
  }
}

export function unreachable(value: never, what: string): never {
  throw new AssertionError(`unreachable ${what}: ${JSON.stringify(value)}`);
}
