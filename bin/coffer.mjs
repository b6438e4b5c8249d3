#!/usr/bin/env -S node --max-semi-space-size=32
// (The flag: a manager's young generation may grow to 32 MiB, see src/cli/node-flags.ts; `env -S`
// splits the line, as GNU and BSD env do.)
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
