import { Command, InvalidArgumentError } from 'commander';
import { HEALTH_CHECK_TIMEOUT_MS, checkHealth } from '../client/health-client.ts';
import { addClientOptions, clientMaterialFrom, type ClientFlags } from './client-flags.ts';
import { printable, printableJson } from './printable.ts';

/**
 * `coffer health`: the gRPC health check of each manager given (what a container healthcheck
 * runs). Exits 0 when every one is SERVING, 1 otherwise, saying which is not and why.
 */
export function healthCommand(): Command {
  return addClientOptions(new Command('health'))
    .description(
      'check the gRPC health of managers: exit 0 if every one is SERVING (unlocked, a leader known, caught up), 1 otherwise',
    )
    .option(
      '--timeout <ms>',
      'deadline of each check',
      (value: string) => {
        const ms = Number(value);
        if (!Number.isSafeInteger(ms) || ms < 1)
          throw new InvalidArgumentError('--timeout takes a whole number of milliseconds above 0');
        return ms;
      },
      HEALTH_CHECK_TIMEOUT_MS,
    )
    .action(async (flags: ClientFlags & { timeout: number }) => {
      const { addresses, ...pem } = clientMaterialFrom(flags, process.env);
      const answers = await Promise.all(
        addresses.map(async (address) => ({ address, ...(await checkHealth(address, pem, flags.timeout)) })),
      );
      if (flags.output === 'json') process.stdout.write(`${printableJson(JSON.stringify(answers))}\n`);
      for (const answer of answers) {
        if (answer.status === 'SERVING') {
          if (flags.output !== 'json') process.stdout.write(`${answer.address}: SERVING\n`);
        } else if (answer.status === 'UNREACHABLE') {
          process.stderr.write(
            `coffer: ${answer.address} is not healthy: cannot check it: ${printable(answer.detail)}\n`,
          );
        } else {
          process.stderr.write(
            `coffer: ${answer.address} is not healthy: ${printable(answer.status)} (locked, no leader known, still catching up, or removed from the cluster; its log says which)\n`,
          );
        }
      }
      if (answers.some((answer) => answer.status !== 'SERVING')) process.exitCode = 1;
    });
}
