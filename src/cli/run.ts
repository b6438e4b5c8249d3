/**
 * What the `coffer` command runs (main.ts runs it from the sources; the build's entry from the
 * bundle, see code-cache.ts). Two commands start differently:
 *
 * - `coffer health` is what a container healthcheck runs, every few seconds on every manager: it
 *   loads only its own command (health-main.ts: commander, grpc-js, the TLS checks), not every
 *   other command's modules, which cost each check about half a second of CPU.
 * - A manager joining a cluster needs a new RSA key, 0.2-0.4 s of prime search on a slow core:
 *   for `join`, and for `server --join` while --data holds no manager yet, it is begun here, in
 *   the thread pool, before the commands' modules load (about 0.3 s), rather than after them.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startLeafKeyEarly } from '../crypto/rsa-key.ts';

/** Runs the command line `argv` (node's, as process.argv: the command's arguments from the third). */
export async function main(argv: readonly string[]): Promise<void> {
  const args = argv.slice(2);
  if (args[0] === 'health') {
    await import('./health-main.ts');
    return;
  }
  if (joiningManager(args)) startLeafKeyEarly();
  const { runCli } = await import('./commands.ts');
  await runCli(argv);
}

/**
 * Loads the modules a manager's start loads, and makes the API's services (no I/O): the build
 * calls it to make the bundle's code cache (code-cache.ts), so what it compiled is what a start compiles.
 */
export async function loadManagerModules(): Promise<void> {
  await import('./commands.ts');
  await import('../server/node.ts');
  await import('../server/auth/auth-service.ts');
  await import('../server/db/db-service.ts');
  await import('../server/leader-duties.ts');
  // The API's services, made from the schema compiled into the bundle: their making is compiled now too.
  (await import('../transport/proto.ts')).services();
}

/** Whether these arguments make a manager that joins a cluster (a wrong guess costs a key made in vain, no more). */
function joiningManager(args: readonly string[]): boolean {
  if (args[0] === 'join') return true;
  if (args[0] !== 'server' || !args.some((a) => a === '--join' || a.startsWith('--join='))) return false;
  const at = args.indexOf('--data');
  const data = at >= 0 ? args[at + 1] : args.find((a) => a.startsWith('--data='))?.slice('--data='.length);
  return data !== undefined && !existsSync(join(data, 'node.json'));
}
