import { pino, type Logger, type LoggerOptions, type DestinationStream } from 'pino';
import { createRequire } from 'node:module';
import type PinoPretty from 'pino-pretty';

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
  /** json (one object per line, for machines) or pretty (for people); default: logFormat(). */
  format?: LogFormat;
}

export type LogFormat = 'json' | 'pretty';

/**
 * JSON unless a person is reading: pretty when stdout is a terminal. COFFER_LOG_FORMAT=json or
 * pretty decides instead.
 */
export function logFormat(env: NodeJS.ProcessEnv = process.env, isTerminal = process.stdout.isTTY === true): LogFormat {
  const chosen = env['COFFER_LOG_FORMAT'];
  if (chosen === 'json' || chosen === 'pretty') return chosen;
  return isTerminal ? 'pretty' : 'json';
}

let prettyLoaded: typeof PinoPretty | null = null;
/** pino-pretty, loaded when a logger prints for people: a manager writing JSON starts without it. */
function pretty(options: PinoPretty.PrettyOptions): ReturnType<typeof PinoPretty> {
  prettyLoaded ??= createRequire(import.meta.url)('pino-pretty') as typeof PinoPretty;
  return prettyLoaded(options);
}

export function createLogger(settings: LoggerSettings = {}): Logger {
  const options: LoggerOptions = {
    level: settings.level ?? process.env['COFFER_LOG_LEVEL'] ?? 'info',
    redact: { paths: redactPaths(), censor: REDACTION_CENSOR },
    base: settings.component === undefined ? {} : { component: settings.component },
  };
  const format = settings.format ?? logFormat();
  // Pretty printing formats lines pino has already redacted; it runs in this thread, in order.
  const destination =
    format === 'pretty'
      ? pretty({
          colorize: settings.destination === undefined && process.stdout.isTTY === true,
          sync: true,
          translateTime: 'SYS:HH:MM:ss.l',
          ignore: 'pid,hostname',
          ...(settings.destination === undefined ? {} : { destination: settings.destination }),
        })
      : settings.destination;
  return destination === undefined ? pino(options) : pino(options, destination);
}

export type { Logger };
