import { readFileSync } from 'node:fs';
import { type Command, Option } from 'commander';

// The client flags and the files they name, apart from the client itself: `coffer health` (a
// container healthcheck, started every few seconds) needs them without loading every service.

/** Client flags shared by every command that talks to a cluster. */
export function addClientOptions(command: Command): Command {
  return command
    .option('--addr <host:port,...>', 'managers to talk to (default: $COFFER_ADDR)')
    .option('--ca <file>', 'the cluster CA certificate (default: $COFFER_CA)')
    .option('--cert <file>', "this client's certificate (default: $COFFER_CERT)")
    .option('--key <file>', "this client's private key (default: $COFFER_KEY)")
    .addOption(outputOption());
}

/** `--output text|json`: anything else is refused by name before the command runs. */
export function outputOption(): Option {
  return new Option('--output <format>', 'text or json').choices(['text', 'json']).default('text');
}

export interface ClientFlags {
  addr?: string;
  ca?: string;
  cert?: string;
  key?: string;
  output: string;
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
