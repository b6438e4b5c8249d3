import { refuse, type ServiceError } from '../errors.ts';
import { DatabaseEngineError } from './postgres-engine.ts';

/**
 * A database engine failure as the client reads it (never with the admin URL's password):
 * DB_UNREACHABLE (UNAVAILABLE, retry), DB_REFUSED (FAILED_PRECONDITION, the database refused the
 * SQL), a template that cannot run INVALID_ARGUMENT. Anything else is not the engine's: thrown on.
 */
export function engineRefusal(error: unknown): ServiceError {
  if (error instanceof DatabaseEngineError) {
    if (error.code === 'DB_UNREACHABLE') return refuse('DB_UNREACHABLE', error.message);
    if (error.code === 'DB_REFUSED') return refuse('DB_REFUSED', error.message);
    return refuse('INVALID_ARGUMENT', error.message);
  }
  throw error;
}
