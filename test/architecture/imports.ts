import { readFileSync } from 'node:fs';
import { dirname, join, normalize } from 'node:path';

/** Relative imports of a file (static, dynamic and re-exports), resolved to paths under src/. */
export function importsOf(file: string, text = readFileSync(file, 'utf8')): string[] {
  const code = text.replace(/\/\*[\s\S]*?\*\/|^\s*\/\/.*$/gm, '');
  const specifiers = [...code.matchAll(/(?:\bfrom\s*|\bimport\s*\(\s*|^\s*import\s+)['"](\.[^'"]+)['"]/gm)].map(
    (m) => m[1]!,
  );
  return specifiers.map((s) => normalize(join(dirname(file), s)));
}
