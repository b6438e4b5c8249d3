import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

// The Raft core must stay a pure state machine (STYLE.md): no IO, clocks, timers, randomness or
// async of its own, and no dependency on the layers around it.
const dir = join(import.meta.dirname, '../../src/raft');
const files = readdirSync(dir).filter((f) => f.endsWith('.ts'));

test('the Raft core imports only itself and the pure utilities', () => {
  assert.ok(files.length >= 5);
  const allowed = /^(\.\/[a-z-]+\.ts|\.\.\/util\/(assert|prng)\.ts)$/;
  for (const file of files) {
    const text = readFileSync(join(dir, file), 'utf8');
    // `from '…'` wherever the formatter breaks the import, plus side-effect and dynamic imports, either quote.
    for (const match of text.matchAll(/\b(?:from|import)\s*\(?\s*['"]([^'"]+)['"]/g)) {
      assert.match(match[1]!, allowed, `${file} imports ${match[1]}`);
    }
  }
});

test('the Raft core uses no clock, timer, global randomness or async code', () => {
  const forbidden = [
    /Date\.now/,
    /new Date\(/,
    /performance\.now/,
    /Math\.random/,
    /setTimeout|setInterval|setImmediate|queueMicrotask/,
    /\basync\b/,
    /\bawait\b/,
    /\bprocess\./,
  ];
  for (const file of files) {
    const code = readFileSync(join(dir, file), 'utf8').replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
    for (const pattern of forbidden) assert.doesNotMatch(code, pattern, `${file} uses ${pattern}`);
  }
});
