import { spawn } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { Command } from 'commander';
import { clientFrom } from './client-config.ts';
import { addClientOptions, type ClientFlags } from './client-flags.ts';

const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * `coffer run --env VAR=NAME ... -- CMD ARGS`: reads the secrets, then starts CMD with them as
 * environment variables. They are written nowhere: not to disk, not to stdout, not to a log.
 */
export function runCommand(): Command {
  return addClientOptions(new Command('run'))
    .description('run a command with secrets as environment variables (written nowhere)')
    .requiredOption(
      '--env <VAR=NAME>',
      'set VAR to the secret NAME (repeatable; NAME@LABEL or NAME#VERSION pick one)',
      (value: string, all: string[]) => [...all, value],
      [] as string[],
    )
    .argument('<command...>', 'the command and its arguments, after --')
    .action(async (command: string[], flags: ClientFlags & { env: string[] }) => {
      const wanted = flags.env.map((pair) => {
        const at = pair.indexOf('=');
        const variable = pair.slice(0, at);
        const ref = pair.slice(at + 1);
        if (at <= 0 || !ENV_NAME.test(variable) || ref === '')
          throw new Error(`--env takes VAR=NAME, e.g. DB_PASSWORD=app/db/password; "${pair}" is not that`);
        const [name, label] = ref.split('@') as [string, string | undefined];
        const [plain, version] = name.split('#') as [string, string | undefined];
        if (version !== undefined && !/^[1-9]\d*$/.test(version))
          throw new Error(`--env ${pair}: a version after # is a number`);
        return {
          variable,
          name: plain,
          ...(label === undefined ? {} : { label }),
          ...(version === undefined ? {} : { version: Number(version) }),
        };
      });
      const client = clientFrom(flags, process.env);
      const env: NodeJS.ProcessEnv = { ...process.env };
      try {
        for (const w of wanted) {
          const reply = await client.get(w.name, {
            ...(w.label === undefined ? {} : { label: w.label }),
            ...(w.version === undefined ? {} : { version: w.version }),
          });
          env[w.variable] = reply.value.toString('utf8');
          reply.value.fill(0);
        }
      } finally {
        client.close();
      }
      const [program, ...args] = command as [string, ...string[]];
      const child = spawn(program, args, { env, stdio: 'inherit' });
      for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => child.kill(signal));
      const code = await new Promise<number>((resolve) => {
        child.on('error', (error) => {
          process.stderr.write(`coffer run: cannot start ${program}: ${error.message}\n`);
          resolve(127);
        });
        child.on('exit', (exitCode, signal) =>
          resolve(exitCode ?? (signal === null ? 1 : 128 + (osConstants.signals[signal] ?? 0))),
        );
      });
      process.exitCode = code;
    });
}
