import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { CofferClient } from '../client/client.ts';
import { printableJson } from './printable.ts';

/** Client flags shared by every command that talks to a cluster. */
export function addClientOptions(command: Command): Command {
  return command
    .option('--addr <host:port,...>', 'managers to talk to (default: $COFFER_ADDR)')
    .option('--ca <file>', 'the cluster CA certificate (default: $COFFER_CA)')
    .option('--cert <file>', "this client's certificate (default: $COFFER_CERT)")
    .option('--key <file>', "this client's private key (default: $COFFER_KEY)")
    .option('--output <format>', 'text or json', 'text');
}

export interface ClientFlags {
  addr?: string;
  ca?: string;
  cert?: string;
  key?: string;
  output: string;
}

/** A client from flags, falling back to COFFER_ADDR, COFFER_CA, COFFER_CERT and COFFER_KEY. */
export function clientFrom(flags: ClientFlags, env: NodeJS.ProcessEnv): CofferClient {
  return new CofferClient(clientMaterialFrom(flags, env));
}

/** The addresses and the PEM files a client needs, from flags or the environment. */
export function clientMaterialFrom(
  flags: ClientFlags,
  env: NodeJS.ProcessEnv,
): { addresses: string[]; caPem: string; certPem: string; keyPem: string } {
  const need = (flag: string | undefined, variable: string, what: string): string => {
    const value = flag ?? env[variable];
    if (value === undefined || value === '') throw new Error(`${what} is not set: pass --${what} or set ${variable}`);
    return value;
  };
  const read = (path: string, what: string): string => {
    try {
      return readFileSync(path, 'utf8');
    } catch {
      throw new Error(`cannot read the ${what} file ${path}`);
    }
  };
  return {
    addresses: need(flags.addr, 'COFFER_ADDR', 'addr')
      .split(',')
      .map((a) => a.trim())
      .filter((a) => a !== ''),
    caPem: read(need(flags.ca, 'COFFER_CA', 'ca'), 'CA certificate'),
    certPem: read(need(flags.cert, 'COFFER_CERT', 'cert'), 'certificate'),
    keyPem: read(need(flags.key, 'COFFER_KEY', 'key'), 'private key'),
  };
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
