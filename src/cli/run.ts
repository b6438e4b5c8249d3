/**
 * What the `coffer` command runs (main.ts runs it from the sources; the build's entry from the
 * bundle, see code-cache.ts). `coffer health` starts differently: it is what a container
 * healthcheck runs, every few seconds on every manager, and loads only its own command
 * (health-main.ts: commander, grpc-js, the TLS checks), not every other command's modules, which
 * cost each check about half a second of CPU.
 */

/** Runs the command line `argv` (node's, as process.argv: the command's arguments from the third). */
export async function main(argv: readonly string[]): Promise<void> {
  const args = argv.slice(2);
  if (args[0] === 'health') {
    await import('./health-main.ts');
    return;
  }
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
