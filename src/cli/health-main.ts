/**
 * `coffer health` on its own (run.ts starts it for that command): the same command as in the
 * full command line (commands.ts lists it in `coffer --help`), with only the modules a check
 * needs, because a container healthcheck starts it every few seconds.
 */
import { Command } from 'commander';
import { healthCommand } from './health-command.ts';
import { printable } from './printable.ts';

const program = new Command('coffer').showHelpAfterError().addCommand(healthCommand());

program.parseAsync(process.argv).catch((error: unknown) => {
  // As commands.ts reports a failed command; a health check raises no ClientError.
  process.stderr.write(`coffer: ${printable(error instanceof Error ? error.message : String(error))}\n`);
  process.exit(1);
});
