/**
 * The `coffer` command as the sources run it (tsx) and as the module-per-source build does
 * (dist/cli/main.js); an installed coffer runs the bundle through compiled-entry.ts. What it
 * runs is in run.ts.
 */
import { main } from './run.ts';

await main(process.argv);
