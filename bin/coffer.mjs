#!/usr/bin/env node
// No V8 flags here: under any V8 flag, V8 refuses the code cache Node ships for its own modules,
// and every start compiles http2, tls, net and the rest again (about 80 ms of each start,
// docs/benchmarks.md, "A 32 MiB young generation", undone).
// The `coffer` command. Runs the compiled JavaScript in dist/ (`npm run build`; what the
// container image ships) when it is there and not older than the sources; otherwise the
// TypeScript sources through tsx (development: no build step needed, and a stale build is never
// run in place of newer sources).
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const compiled = join(root, 'dist', 'run', 'coffer.mjs');

/** The newest modification time of the files under `dir` (0 if it does not exist). */
function newestMs(dir) {
  if (!existsSync(dir)) return 0;
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestMs(path) : statSync(path).mtimeMs);
  }
  return newest;
}

if (existsSync(compiled) && statSync(compiled).mtimeMs >= newestMs(join(root, 'src'))) {
  await import(compiled);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../src/cli/main.ts');
}
