import { pino, type Logger, type LoggerOptions, type DestinationStream } from 'pino';

/**
 * The one way Coffer makes loggers. Redaction is configured here, once, so no component can
 * forget it: any field with one of these names is replaced wherever it appears at the top level
 * or one or two objects deep. Components must still never log request bodies; redaction is the
 * second line of defence, not the first.
 */
export const REDACTED_KEYS = [
  'value',
  'values',
  'secret',
  'secrets',
  'data',
  'plaintext',
  'password',
  'token',
  'joinToken',
  'unlockKey',
  'rootKey',
  'key',
  'keys',
  'privateKey',
  'keyPem',
  'authorization',
] as const;

export const REDACTION_CENSOR = '[redacted]';

function redactPaths(): string[] {
  const paths: string[] = [];
  for (const key of REDACTED_KEYS) {
    paths.push(key, `*.${key}`, `*.*.${key}`);
  }
  return paths;
}

export interface LoggerSettings {
  level?: string;
  /** Component name, bound to every line (`component` field). */
  component?: string;
  /** Where lines go; stdout by default. Tests pass a buffer to inspect what was written. */
  destination?: DestinationStream;
}

export function createLogger(settings: LoggerSettings = {}): Logger {
  const options: LoggerOptions = {
    level: settings.level ?? process.env['COFFER_LOG_LEVEL'] ?? 'info',
    redact: { paths: redactPaths(), censor: REDACTION_CENSOR },
    base: settings.component === undefined ? {} : { component: settings.component },
  };
  return settings.destination === undefined ? pino(options) : pino(options, settings.destination);
}

export type { Logger };
