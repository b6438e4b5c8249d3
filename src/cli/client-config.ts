import { CofferClient } from '../client/client.ts';
import { clientMaterialFrom, type ClientFlags } from './client-flags.ts';
import { printableJson } from './printable.ts';

/** A client from flags, falling back to COFFER_ADDR, COFFER_CA, COFFER_CERT and COFFER_KEY. */
export function clientFrom(flags: ClientFlags, env: NodeJS.ProcessEnv): CofferClient {
  return new CofferClient(clientMaterialFrom(flags, env));
}

/**
 * Prints a result as JSON (scripts) or with the given text formatter (people). The formatter
 * passes what others wrote through `printable`; JSON escapes it (the rest by printableJson).
 */
export function print(flags: ClientFlags, value: unknown, text: () => string): void {
  process.stdout.write(
    flags.output === 'json'
      ? `${printableJson(JSON.stringify(value, (_k, v: unknown) => (Buffer.isBuffer(v) ? v.toString('base64') : v)))}\n`
      : `${text()}\n`,
  );
}
