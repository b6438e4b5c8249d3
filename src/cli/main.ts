/**
 * The `coffer` command line. The only module that reads argv or exits the process. Subcommands
 * arrive with the issues that build them (storage, transport, the secret service).
 */
import { parseArgs } from 'node:util';

const USAGE = `usage: coffer <command>

commands:
  dev        run a local cluster of managers (needs the secret service: not built yet)
  version    print the version

Today the Raft core and its simulator are built: run \`npm test\` and \`npm run sim\`.`;

function main(argv: string[]): number {
  const { positionals, values } = parseArgs({ args: argv, allowPositionals: true, strict: false, options: { help: { type: 'boolean', short: 'h' } } });
  const command = positionals[0];
  if (values.help === true || command === undefined || command === 'help') {
    console.log(USAGE);
    return command === undefined && values.help !== true ? 2 : 0;
  }
  switch (command) {
    case 'version':
      console.log('coffer 0.1.0');
      return 0;
    case 'dev':
      console.error(
        'coffer dev: the local cluster needs durable storage, the mutual-TLS transport and the secret service, ' +
          'which are not built yet; run `npm test` or `npm run sim` to exercise the Raft core',
      );
      return 1;
    default:
      console.error(`coffer: unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

process.exitCode = main(process.argv.slice(2));
